//! Room aliases and the public room directory.

use std::sync::Arc;

use ruma::{events::StateEventType, OwnedRoomAliasId};
use serde_json::{json, Value};

use super::{message::power_level, require_joined};
use crate::{
    error::Error,
    http::{Ctx, HandlerResult},
    service::Services,
};

fn alias_param(ctx: &Ctx) -> Result<OwnedRoomAliasId, Error> {
    OwnedRoomAliasId::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid alias {}", ctx.param(0))))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let alias = alias_param(&ctx)?;
    let (room_id, _) = services
        .rooms
        .alias
        .get(&alias)?
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    Ok(json!({ "room_id": room_id, "servers": [services.globals.server_name()] }))
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let alias = alias_param(&ctx)?;
    if alias.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param("aliases must be on this server"));
    }
    let room_id = ctx
        .body
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing room_id"))?;
    let room_id = ruma::OwnedRoomId::try_from(room_id)
        .map_err(|_| Error::invalid_param("invalid room_id"))?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    if services.rooms.alias.get(&alias)?.is_some() {
        return Err(Error::Conflict(format!("alias {alias} already exists")));
    }
    services.rooms.alias.set(&alias, &room_id, ctx.user())?;
    Ok(json!({}))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
///
/// Allowed for the alias's creator and for room members with the power to change `m.room.canonical_alias`.
pub async fn delete_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let alias = alias_param(&ctx)?;
    let (room_id, creator) = services
        .rooms
        .alias
        .get(&alias)?
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    if creator != ctx.user() {
        let needed = services
            .rooms
            .current_state_pdu(&room_id, &StateEventType::RoomPowerLevels, "")?
            .and_then(|levels| {
                levels
                    .content_value()
                    .pointer("/events/m.room.canonical_alias")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(50);
        if !services.rooms.members.is_joined(&room_id, ctx.user())?
            || power_level(&services, &room_id, ctx.user())? < needed
        {
            return Err(Error::forbidden("you may not delete this alias"));
        }
    }
    services.rooms.alias.remove(&alias, &room_id)?;
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn get_room_aliases(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    require_joined(&services, &room_id, ctx.user())?;
    Ok(json!({ "aliases": services.rooms.alias.iter_room_aliases(&room_id)? }))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    let visibility = if services.rooms.alias.is_public(&room_id)? {
        "public"
    } else {
        "private"
    };
    Ok(json!({ "visibility": visibility }))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_room_visibility(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    require_joined(&services, &room_id, ctx.user())?;
    let public = match ctx.body.get("visibility").and_then(Value::as_str) {
        Some("public") => true,
        Some("private") | None => false,
        Some(_) => return Err(Error::invalid_param("visibility must be public or private")),
    };
    services.rooms.alias.set_public(&room_id, public)?;
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/publicRooms` and `POST` with a filter.
///
/// `since` tokens are offsets into the list; `generic_search_term` matches name, topic and alias.
pub async fn get_public_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let limit = ctx
        .body
        .get("limit")
        .and_then(Value::as_u64)
        .or_else(|| ctx.query("limit").and_then(|limit| limit.parse().ok()))
        .unwrap_or(100)
        .min(500) as usize;
    let since = ctx
        .body
        .get("since")
        .and_then(Value::as_str)
        .or(ctx.query("since"))
        .map(|since| {
            since
                .parse::<usize>()
                .map_err(|_| Error::invalid_param("invalid since token"))
        })
        .transpose()?
        .unwrap_or(0);
    let term = ctx
        .body
        .pointer("/filter/generic_search_term")
        .and_then(Value::as_str)
        .map(str::to_lowercase);
    let mut rooms = Vec::new();
    for room_id in services.rooms.alias.iter_public()? {
        let state = |kind: StateEventType, field: &str| -> Option<Value> {
            services
                .rooms
                .current_state_pdu(&room_id, &kind, "")
                .ok()
                .flatten()
                .and_then(|pdu| pdu.content_value().get(field).cloned())
        };
        let name = state(StateEventType::RoomName, "name");
        let topic = state(StateEventType::RoomTopic, "topic");
        let alias = state(StateEventType::RoomCanonicalAlias, "alias");
        if let Some(term) = &term {
            let haystack = format!(
                "{} {} {}",
                name.as_ref().and_then(Value::as_str).unwrap_or(""),
                topic.as_ref().and_then(Value::as_str).unwrap_or(""),
                alias.as_ref().and_then(Value::as_str).unwrap_or("")
            )
            .to_lowercase();
            if !haystack.contains(term.as_str()) {
                continue;
            }
        }
        let joined = services
            .rooms
            .members
            .iter_members(
                &room_id,
                Some(ruma::events::room::member::MembershipState::Join),
            )?
            .len();
        let join_rule =
            state(StateEventType::RoomJoinRules, "join_rule").unwrap_or(json!("public"));
        let mut chunk = json!({
            "room_id": room_id, "num_joined_members": joined, "world_readable": false, "guest_can_join": false, "join_rule": join_rule
        });
        for (field, value) in [
            ("name", name),
            ("topic", topic),
            ("canonical_alias", alias),
            ("avatar_url", state(StateEventType::RoomAvatar, "url")),
        ] {
            if let Some(value) = value {
                chunk[field] = value;
            }
        }
        rooms.push(chunk);
    }
    let total = rooms.len();
    let page: Vec<Value> = rooms.into_iter().skip(since).take(limit).collect();
    let mut response = json!({ "chunk": page, "total_room_count_estimate": total });
    if since + limit < total {
        response["next_batch"] = json!((since + limit).to_string());
    }
    if since > 0 {
        response["prev_batch"] = json!(since.saturating_sub(limit).to_string());
    }
    Ok(response)
}
