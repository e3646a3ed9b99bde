//! Invited and knocked rooms in `/sync`: the stripped state the user sees of a room they are
//! not in yet.

use ruma::{events::StateEventType, RoomId};
use serde_json::{json, Value};

use super::SyncContext;
use crate::{
    error::Result,
    service::rooms::{handshake, prejoin_state},
};

/// The room's entry in `rooms.invite`, or `None` when the invite comes from a user the invitee
/// ignores: such invites are not shown (spec, "Ignoring Users"), though the invite itself stands.
pub(crate) fn invited_room(ctx: &SyncContext<'_>, room_id: &RoomId) -> Result<Option<Value>> {
    let events = stripped_state(ctx, room_id)?;
    if invited_by_ignored(ctx, &events) {
        return Ok(None);
    }
    Ok(Some(json!({ "invite_state": { "events": events } })))
}

/// The room's entry in `rooms.knock`.
pub(crate) fn knocked_room(ctx: &SyncContext<'_>, room_id: &RoomId) -> Result<Value> {
    let events = stripped_state(ctx, room_id)?;
    Ok(json!({ "knock_state": { "events": events } }))
}

/// Whether the invite in a room's stripped state comes from a user the invitee ignores.
fn invited_by_ignored(ctx: &SyncContext<'_>, stripped: &[Value]) -> bool {
    if ctx.ignored.is_empty() {
        return false;
    }
    let user = ctx.request.user;
    stripped
        .iter()
        .filter(|event| event["type"] == "m.room.member" && event["state_key"] == user.as_str())
        .filter_map(|event| event["sender"].as_str())
        .any(|sender| ctx.ignored.iter().any(|ignored| ignored.as_str() == sender))
}

/// The stripped state an invitee sees: create, join rules, name, avatar, alias, encryption, topic
/// and their own member event (see `prejoin_state` for the create event's form).
/// Invites from other servers carry their own stripped state, which is all there is when this
/// server is not in the room (its copy of the room's state, if any, may be long out of date).
fn stripped_state(ctx: &SyncContext<'_>, room_id: &RoomId) -> Result<Vec<Value>> {
    let (services, user) = (ctx.services, ctx.request.user);
    if let Some(state) = services.rooms.handshakes.get_invite_state(user, room_id)? {
        if !handshake::is_resident(services, room_id)? {
            return Ok(state);
        }
    }
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = crate::service::rooms::version::rules_for(&version)?;
    let kinds = prejoin_state::STATE_TYPES.iter().map(|kind| (kind, ""));
    let mut events = Vec::new();
    for (kind, state_key) in kinds.chain([(&StateEventType::RoomMember, user.as_str())]) {
        if let Some(pdu) = services.rooms.current_state_pdu(room_id, kind, state_key)? {
            events.push(prejoin_state::client_event(services, &pdu, &rules)?);
        }
    }
    Ok(events)
}
