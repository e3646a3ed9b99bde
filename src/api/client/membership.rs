//! Membership: join, invite, leave, forget, kick, ban, unban, and member lists.

use std::sync::Arc;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedEventId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{require_joined, resolve_room};
use crate::{
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{
        rooms::timeline::{create_and_commit, read::client_event, PduBuilder},
        Services,
    },
};

/// Sends a member event for `target` with `membership`, keeping profile fields on joins.
pub fn set_membership(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
) -> Result<OwnedEventId> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    let mut content = json!({ "membership": membership });
    if membership == "join" {
        if let Some(profile) = services.users.get_profile(target)? {
            for field in ["displayname", "avatar_url"] {
                if let Some(value) = profile.get(field) {
                    content[field] = value.clone();
                }
            }
        }
    }
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    let (event_id, _) = create_and_commit(
        services,
        room_id,
        sender,
        PduBuilder::state("m.room.member", target.as_str(), content),
        None,
    )?;
    Ok(event_id)
}

fn reason(ctx: &Ctx) -> Option<String> {
    ctx.body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn target(ctx: &Ctx) -> Result<ruma::OwnedUserId> {
    let user = ctx
        .body
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing user_id"))?;
    ruma::OwnedUserId::try_from(user)
        .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_room_by_id_or_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = resolve_room(&services, ctx.param(0))?;
    join(&services, &ctx, &room_id)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    join(&services, &ctx, &room_id)
}

fn join(services: &Services, ctx: &Ctx, room_id: &RoomId) -> HandlerResult {
    if services.rooms.members.is_joined(room_id, ctx.user())? {
        return Ok(json!({ "room_id": room_id }));
    }
    set_membership(
        services,
        room_id,
        ctx.user(),
        ctx.user(),
        "join",
        reason(ctx).as_deref(),
    )?;
    Ok(json!({ "room_id": room_id }))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let invitee = target(&ctx)?;
    if invitee.server_name() == services.globals.server_name()
        && !services.users.exists(&invitee)?
    {
        return Err(Error::not_found(format!("user {invitee} does not exist")));
    }
    if services.rooms.members.get_membership(&room_id, &invitee)? == Some(MembershipState::Invite) {
        return Ok(json!({}));
    }
    set_membership(
        &services,
        &room_id,
        ctx.user(),
        &invitee,
        "invite",
        reason(&ctx).as_deref(),
    )?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    match services
        .rooms
        .members
        .get_membership(&room_id, ctx.user())?
    {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            set_membership(
                &services,
                &room_id,
                ctx.user(),
                ctx.user(),
                "leave",
                reason(&ctx).as_deref(),
            )?;
            Ok(json!({}))
        }
        Some(_) => Ok(json!({})),
        None => Err(Error::forbidden(format!(
            "{} is not in room {room_id}",
            ctx.user()
        ))),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    match services
        .rooms
        .members
        .get_membership(&room_id, ctx.user())?
    {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            Err(Error::matrix(
                ruma::api::error::ErrorKind::Unknown,
                "leave the room before forgetting it",
            ))
        }
        _ => {
            services.rooms.members.forget(&room_id, ctx.user())?;
            Ok(json!({}))
        }
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let target = target(&ctx)?;
    match services.rooms.members.get_membership(&room_id, &target)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => {
            return Err(Error::forbidden(format!(
                "{target} is not in room {room_id}"
            )))
        }
    }
    set_membership(
        &services,
        &room_id,
        ctx.user(),
        &target,
        "leave",
        reason(&ctx).as_deref(),
    )?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    set_membership(
        &services,
        &room_id,
        ctx.user(),
        &target(&ctx)?,
        "ban",
        reason(&ctx).as_deref(),
    )?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let target = target(&ctx)?;
    if services.rooms.members.get_membership(&room_id, &target)? != Some(MembershipState::Ban) {
        return Err(Error::forbidden(format!(
            "{target} is not banned from {room_id}"
        )));
    }
    set_membership(
        &services,
        &room_id,
        ctx.user(),
        &target,
        "leave",
        reason(&ctx).as_deref(),
    )?;
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let rooms: Vec<_> = services.rooms.members.iter_joined_rooms(ctx.user())?;
    Ok(json!({ "joined_rooms": rooms }))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
///
/// Filters `membership` and `not_membership` apply; `at` is not supported (current state is served).
pub async fn get_member_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    require_joined(&services, &room_id, ctx.user())?;
    let only = ctx.query("membership");
    let not = ctx.query("not_membership");
    let mut chunk = Vec::new();
    for (user, membership) in services.rooms.members.iter_members(&room_id, None)? {
        if only.is_some_and(|wanted| wanted != membership.as_str())
            || not.is_some_and(|unwanted| unwanted == membership.as_str())
        {
            continue;
        }
        if let Some(pdu) = services.rooms.current_state_pdu(
            &room_id,
            &StateEventType::RoomMember,
            user.as_str(),
        )? {
            chunk.push(client_event(&pdu, &room_id, None));
        }
    }
    Ok(json!({ "chunk": chunk }))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    require_joined(&services, &room_id, ctx.user())?;
    let mut joined = serde_json::Map::new();
    for (user, _) in services
        .rooms
        .members
        .iter_members(&room_id, Some(MembershipState::Join))?
    {
        let content = services
            .rooms
            .current_state_pdu(&room_id, &StateEventType::RoomMember, user.as_str())?
            .map(|pdu| pdu.content_value())
            .unwrap_or_default();
        joined.insert(user.to_string(), json!({ "display_name": content.get("displayname"), "avatar_url": content.get("avatar_url") }));
    }
    Ok(json!({ "joined": joined }))
}
