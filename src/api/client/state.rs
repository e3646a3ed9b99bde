//! Room state reads and writes.

use std::sync::Arc;

use ruma::events::StateEventType;
use serde_json::{json, Value};

use super::{readable_state, require_joined};
use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        rooms::{
            create,
            pdu::client_event,
            power,
            timeline::{create_and_commit, PduBuilder},
        },
        Services,
    },
};

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
///
/// Members read the current state, former members the state when they left.
pub async fn get_state_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let hash = readable_state(&services, &room_id, ctx.user())?.shortstatehash;
    let events: Vec<Value> = services
        .rooms
        .state_pdus(hash)?
        .iter()
        .map(|pdu| client_event(pdu, &room_id, None))
        .collect();
    Ok(Value::Array(events))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
///
/// `format=event` returns the whole event instead of its content.
pub async fn get_state_event_for_key(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let hash = readable_state(&services, &room_id, ctx.user())?.shortstatehash;
    let event_type = StateEventType::from(ctx.param(1));
    let pdu = services
        .rooms
        .state_pdu(hash, &event_type, ctx.param(2))?
        .ok_or_else(|| {
            Error::not_found(format!(
                "no {event_type} state with key {:?} in {room_id}",
                ctx.param(2)
            ))
        })?;
    if ctx.query("format") == Some("event") {
        return Ok(client_event(&pdu, &room_id, None));
    }
    Ok(pdu.content_value())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    require_joined(&services, &room_id, ctx.user())?;
    let event_type = ctx.param(1).to_owned();
    if event_type.is_empty() || event_type.len() > 255 {
        return Err(Error::invalid_param("invalid event type"));
    }
    if event_type == "m.room.create" {
        return Err(Error::bad_json(
            "m.room.create cannot be sent to an existing room",
        ));
    }
    if event_type == "m.room.power_levels" {
        if let Some(users) = ctx.body.get("users") {
            let creators = power::privileged_creators(&services, &room_id)?;
            create::reject_creators_in_users(users, &creators)?;
        }
    }
    if event_type == "m.room.canonical_alias" {
        for alias in ctx.body.get("alias").into_iter().chain(
            ctx.body
                .get("alt_aliases")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        ) {
            let alias = alias
                .as_str()
                .and_then(|alias| ruma::OwnedRoomAliasId::try_from(alias).ok())
                .ok_or_else(|| Error::invalid_param("invalid alias"))?;
            if alias.server_name() == services.globals.server_name()
                && services.rooms.alias.get(&alias)?.map(|(room, _)| room) != Some(room_id.clone())
            {
                return Err(Error::matrix(
                    ruma::api::error::ErrorKind::BadAlias,
                    format!("alias {alias} does not point to this room"),
                ));
            }
        }
    }
    let mut content = ctx.body.clone();
    if event_type == "m.room.member"
        && ctx.param(2) == ctx.user().as_str()
        && content["membership"] == "join"
    {
        // A joined member's join → join needs no authoriser, so one that names no user is
        // ignored (the spec's auth rules never read it there) rather than refused.
        let names_user = content["join_authorised_via_users_server"]
            .as_str()
            .is_some_and(|user| <&ruma::UserId>::try_from(user).is_ok());
        if let (false, Some(object)) = (names_user, content.as_object_mut()) {
            object.remove("join_authorised_via_users_server");
        }
    }
    // The same sender setting the same content again changes nothing: the answer is the event
    // already in force, and no new event is sent (clients retry state changes freely).
    if let Some(current) = services.rooms.current_state_pdu(
        &room_id,
        &StateEventType::from(event_type.as_str()),
        ctx.param(2),
    )? {
        if current.sender == ctx.user() && current.content_value() == content {
            return Ok(json!({ "event_id": current.event_id }));
        }
    }
    let (event_id, _) = create_and_commit(
        &services,
        &room_id,
        ctx.user(),
        PduBuilder::state(event_type.as_str(), ctx.param(2), content),
        None,
    )
    .await?;
    Ok(json!({ "event_id": event_id }))
}
