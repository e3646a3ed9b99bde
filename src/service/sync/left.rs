//! A room the user left, was kicked or banned from, in `/sync`'s `leave` section: its timeline
//! up to the departure, and, when that timeline is limited, the state at its start.

use ruma::{events::StateEventType, RoomId};
use serde_json::{json, Value};

use super::{
    state::{self, LazyMembers, Snapshots},
    SyncContext,
};
use crate::{
    error::Result,
    service::rooms::{
        pdu::{client_event, Pdu},
        visibility,
    },
};

/// The room's entry in `rooms.leave`; `left_at` is the stream position of the departure.
pub(super) fn left_room(ctx: &SyncContext<'_>, room_id: &RoomId, left_at: u64) -> Result<Value> {
    let services = ctx.services;
    let shortroomid = services.rooms.short.get_shortroomid(room_id)?;
    let (events, limited) = match shortroomid {
        Some(shortroomid) => timeline_until(ctx, shortroomid, left_at)?,
        None => (Vec::new(), false),
    };
    let viewer = ctx.viewer();
    let mut timeline: Vec<Value> = events
        .iter()
        .map(|(_, pdu)| client_event(pdu, room_id, viewer))
        .collect();
    if timeline.is_empty() && !services.rooms.exists(room_id)? {
        // A room this server was never in (a refused knock, a withdrawn invite): the member
        // event that ended the membership, kept with the room's stripped state.
        if let Some(event) = outside_membership_event(ctx, room_id)? {
            timeline.push(client_event(&event, room_id, viewer));
        }
    }
    let state = match (limited, shortroomid) {
        (true, Some(shortroomid)) => state_at_start(ctx, room_id, shortroomid, left_at, &events)?,
        _ => Vec::new(),
    };
    Ok(
        json!({ "timeline": { "events": timeline, "limited": limited }, "state": { "events": state }, "account_data": { "events": [] } }),
    )
}

/// The newest `limit` events after `since` up to the departure at `left_at` that pass the
/// timeline filter and are not from ignored users, oldest first, and whether there were more.
fn timeline_until(
    ctx: &SyncContext<'_>,
    shortroomid: u64,
    left_at: u64,
) -> Result<(Vec<(u64, Pdu)>, bool)> {
    let limit = ctx.filters.limit();
    let mut events = Vec::new();
    let mut limited = false;
    let entries = ctx
        .services
        .rooms
        .timeline
        .iter_before(shortroomid, left_at.saturating_add(1));
    for entry in entries {
        let (count, pdu) = entry?;
        if count <= ctx.since {
            break;
        }
        if events.len() >= limit {
            limited = true;
            break;
        }
        if ctx.filters.timeline.matches(&pdu) && !visibility::ignored(&ctx.ignored, &pdu) {
            events.push((count, pdu));
        }
    }
    events.reverse();
    Ok((events, limited))
}

/// A timeline that does not reach back to `since` comes with the state at its start (as it
/// was before the user left) that the client has not seen, less what the timeline shows.
fn state_at_start(
    ctx: &SyncContext<'_>,
    room_id: &RoomId,
    shortroomid: u64,
    left_at: u64,
    events: &[(u64, Pdu)],
) -> Result<Vec<Value>> {
    let services = ctx.services;
    let was_member = visibility::readable_state(services, room_id, ctx.request.user)?
        .is_some_and(|readable| readable.until.is_some());
    if !was_member {
        return Ok(Vec::new());
    }
    let snapshots = Snapshots {
        start: match events.first() {
            Some((_, first)) => state::state_before_timeline(services, first)?,
            None => state::state_at_position(services, shortroomid, left_at)?,
        },
        seen: match ctx.request.since {
            Some(_) => state::state_at_position(services, shortroomid, ctx.since)?,
            None => None,
        },
        end: None,
        members_only: false,
    };
    // The member events of the timeline's senders go along whether or not they changed.
    let lazy = ctx.filters.lazy_members().then(|| LazyMembers {
        wanted: state::senders(events)
            .chain([ctx.request.user.to_owned()])
            .collect(),
        known: Default::default(),
        include_redundant: true,
    });
    snapshots.state_section(ctx, room_id, events, lazy.as_ref())
}

/// Whether the user's leave or ban was someone else's doing (a kick or ban): such rooms are in
/// an initial sync's leave section even without `include_leave`, as Synapse does, so that a
/// client learns of its removal.
pub(super) fn removed_by_other(ctx: &SyncContext<'_>, room_id: &RoomId) -> Result<bool> {
    let user = ctx.request.user;
    let current = ctx
        .services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomMember, user.as_str())?
        .filter(|pdu| {
            matches!(
                pdu.content_value()["membership"].as_str(),
                Some("leave" | "ban")
            )
        });
    let event = match current {
        Some(pdu) => Some(pdu),
        None => outside_membership_event(ctx, room_id)?,
    };
    Ok(event.is_some_and(|pdu| pdu.sender != user))
}

/// The user's own member event stored with the stripped state of a room this server is not in.
fn outside_membership_event(ctx: &SyncContext<'_>, room_id: &RoomId) -> Result<Option<Pdu>> {
    let (services, user) = (ctx.services, ctx.request.user);
    let Some(state) = services.rooms.handshakes.get_invite_state(user, room_id)? else {
        return Ok(None);
    };
    let event_id = state
        .iter()
        .rev()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == user.as_str())
        .and_then(|event| event["event_id"].as_str())
        .and_then(|id| ruma::OwnedEventId::try_from(id).ok());
    match event_id {
        Some(event_id) => services.rooms.timeline.get_pdu(&event_id),
        None => Ok(None),
    }
}
