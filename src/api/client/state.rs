//! Room state reads and writes.

use std::sync::Arc;

use ruma::{
    api::client::state::{
        get_state_event_for_key::{self, v3::StateEventFormat},
        get_state_events, send_state_event,
    },
    serde::Raw,
    RoomId,
};
use serde_json::Value;

use super::{delayed_events, message::parse_content, readable_state, require_joined};
use crate::{
    api::{client::appservice, Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        rate_limits::{self, Limit},
        rooms::{
            create,
            pdu::client_event,
            power, retention,
            timeline::{create_and_commit, PduBuilder},
        },
        Services,
    },
};

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
///
/// Members read the current state, former members the state when they left.
pub async fn get_state_events(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_state_events::v3::Request,
) -> Result<get_state_events::v3::Response> {
    let room_id = &request.room_id;
    let hash = readable_state(&services, room_id, ctx.user())?.shortstatehash;
    let events = services
        .rooms
        .state_pdus(hash)?
        .iter()
        .map(|pdu| raw(&client_event(pdu, room_id, None)))
        .collect::<Result<_>>()?;
    Ok(get_state_events::v3::Response::new(events))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`, also without the
/// state key
///
/// `format=event` returns the whole event instead of its content; any other `format` is the
/// content.
pub async fn get_state_event_for_key(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_state_event_for_key::v3::Request,
) -> Result<get_state_event_for_key::v3::Response> {
    let room_id = &request.room_id;
    let hash = readable_state(&services, room_id, ctx.user())?.shortstatehash;
    let (event_type, state_key) = (&request.event_type, &request.state_key);
    let pdu = services
        .rooms
        .state_pdu(hash, event_type, state_key)?
        .ok_or_else(|| {
            Error::not_found(format!(
                "no {event_type} state with key {state_key:?} in {room_id}"
            ))
        })?;
    let event_or_content = match request.format {
        StateEventFormat::Event => raw::<Value>(&client_event(&pdu, room_id, None))?.into_json(),
        _ => pdu.content,
    };
    Ok(get_state_event_for_key::v3::Response::new(event_or_content))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`, also without the
/// state key, with or without `org.matrix.msc4140.delay`
///
/// With a delay, the state event is scheduled (MSC4140) and the answer is its `delay_id`;
/// without, it is [`send_state_event`].
/// Untyped: ruma's response has no `delay_id` without its `unstable-msc4140` feature.
pub async fn send_state_event_or_delay(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request = ctx.parse::<send_state_event::v3::Request>()?;
    let event_type = (
        request.event_type.to_string(),
        Some(request.state_key.clone()),
    );
    if let Some(answer) = delayed_events::schedule_if_requested(
        &services,
        &ctx,
        &request.room_id,
        event_type,
        &request.body,
    )? {
        return Ok(answer);
    }
    let response = send_state_event(services, ctx, request).await?;
    Ok(serde_json::json!({ "event_id": response.event_id }))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`, also without the
/// state key, without a delay
///
/// The content is sent as the client wrote it. Setting the content the same sender already set
/// sends nothing and answers with the event in force.
/// A suspended account gets `403 M_USER_SUSPENDED` (spec v1.18, "Account suspension").
pub async fn send_state_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: send_state_event::v3::Request,
) -> Result<send_state_event::v3::Response> {
    let room_id = &request.room_id;
    services.admin.flags.check_not_suspended(ctx.user())?;
    rate_limits::take_for(&services, Limit::Message, ctx.user())?;
    require_joined(&services, room_id, ctx.user())?;
    let event_type = request.event_type.to_string();
    if event_type.is_empty() || event_type.len() > 255 {
        return Err(Error::invalid_param("invalid event type"));
    }
    if event_type == "m.room.create" {
        return Err(Error::bad_json(
            "m.room.create cannot be sent to an existing room",
        ));
    }
    let mut content = parse_content(&request.body)?;
    check_content(&services, room_id, &event_type, &content)?;
    let state_key = request.state_key.as_str();
    if event_type == "m.room.member"
        && state_key == ctx.user().as_str()
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
    if let Some(current) =
        services
            .rooms
            .current_state_pdu(room_id, &request.event_type, state_key)?
    {
        if current.sender == ctx.user() && current.content_value() == content {
            return Ok(send_state_event::v3::Response::new(current.event_id));
        }
    }
    let mut builder = PduBuilder::state(request.event_type, state_key, content);
    builder.origin_server_ts = appservice::timestamp(&ctx)?;
    let (event_id, _) = create_and_commit(&services, room_id, ctx.user(), builder, None).await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

/// The checks of a state event's content before the auth rules: room creators get no power
/// level in `users` (from room version 12), and a local alias in `m.room.canonical_alias` must
/// point to this room (`M_BAD_ALIAS`), and a retention policy names sane lifetimes.
fn check_content(
    services: &Services,
    room_id: &RoomId,
    event_type: &str,
    content: &Value,
) -> Result<()> {
    if event_type == "m.room.power_levels" {
        if let Some(users) = content.get("users") {
            let creators = power::privileged_creators(services, room_id)?;
            create::reject_creators_in_users(users, &creators)?;
        }
    }
    if event_type == retention::RETENTION_EVENT {
        retention::check_policy(content)?;
    }
    if event_type == "m.room.canonical_alias" {
        for alias in content.get("alias").into_iter().chain(
            content
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
                && services
                    .rooms
                    .alias
                    .get(&alias)?
                    .map(|(room, _)| room)
                    .as_deref()
                    != Some(room_id)
            {
                return Err(Error::matrix(
                    ruma::api::error::ErrorKind::BadAlias,
                    format!("alias {alias} does not point to this room"),
                ));
            }
        }
    }
    Ok(())
}

/// An event as ruma's raw JSON.
fn raw<T>(event: &Value) -> Result<Raw<T>> {
    serde_json::value::to_raw_value(event)
        .map(Raw::from_json)
        .map_err(Error::internal)
}
