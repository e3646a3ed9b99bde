//! History visibility: whether a user may see an event, from the room's
//! `m.room.history_visibility` and the user's membership at that event
//! (spec, client-server API, "Room history visibility").

use ruma::{events::StateEventType, UserId};
use serde_json::Value;

use super::{members::RoomMembership, pdu::Pdu, Rooms};
use crate::{error::Result, service::Services};

/// Whether `user` may see `pdu` (stored at stream position `count`), given the user's current
/// membership in its room.
///
/// While the user is joined, everything after their join is visible whatever the setting, so
/// only older events (and users who are not joined) pay for a state lookup.
pub fn user_can_see(
    services: &Services,
    user: &UserId,
    membership: Option<&RoomMembership>,
    count: u64,
    pdu: &Pdu,
) -> Result<bool> {
    let joined_now = membership
        .is_some_and(|m| m.membership == ruma::events::room::member::MembershipState::Join);
    if joined_now && membership.is_some_and(|m| count >= m.count) {
        return Ok(true);
    }
    let rooms = &services.rooms;
    let Some(shorteventid) = rooms.short.get_shorteventid(&pdu.event_id)? else {
        return Ok(false);
    };
    let Some((_, after)) = rooms.state.get_event_state(shorteventid)? else {
        // Events without recorded state are message events sent before any state: none exist
        // in rooms created here, so refusing is the safe answer.
        return Ok(false);
    };
    let visibility = history_visibility(rooms, after)?;
    if visibility == "world_readable" {
        return Ok(true);
    }
    let membership_then = state_field(
        rooms,
        after,
        StateEventType::RoomMember,
        user.as_str(),
        "membership",
    )?;
    Ok(match visibility.as_str() {
        "joined" => membership_then.as_deref() == Some("join"),
        "invited" => matches!(membership_then.as_deref(), Some("join" | "invite")),
        // "shared" and unknown values: visible to current members, and to former members for
        // the time they were joined.
        _ => joined_now || membership_then.as_deref() == Some("join"),
    })
}

/// The `history_visibility` setting in a state snapshot (`shared` when unset).
fn history_visibility(rooms: &Rooms, shortstatehash: u64) -> Result<String> {
    Ok(state_field(
        rooms,
        shortstatehash,
        StateEventType::RoomHistoryVisibility,
        "",
        "history_visibility",
    )?
    .unwrap_or_else(|| "shared".to_owned()))
}

/// A string field of the content of a state event in a snapshot.
fn state_field(
    rooms: &Rooms,
    shortstatehash: u64,
    kind: StateEventType,
    state_key: &str,
    field: &str,
) -> Result<Option<String>> {
    Ok(rooms
        .state_pdu(shortstatehash, &kind, state_key)?
        .and_then(|event| {
            event
                .content_value()
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        }))
}

/// Whether another server may see an event (for `/event`, `/backfill`, `/get_missing_events`):
/// when the history is world readable, or when one of its users was a member at the event as the
/// history visibility requires ("shared" also lets in a server that is in the room now).
pub fn server_can_see(services: &Services, server: &ruma::ServerName, pdu: &Pdu) -> Result<bool> {
    let rooms = &services.rooms;
    let Some(shorteventid) = rooms.short.get_shorteventid(&pdu.event_id)? else {
        return Ok(false);
    };
    let Some((_, after)) = rooms.state.get_event_state(shorteventid)? else {
        // Outliers (state and auth events) carry no history.
        return Ok(true);
    };
    let visibility = history_visibility(rooms, after)?;
    if visibility == "world_readable" {
        return Ok(true);
    }
    if visibility == "shared" {
        if let Some(room_id) = &pdu.room_id {
            if rooms.members.servers_in_room(room_id)?.contains(server) {
                return Ok(true);
            }
        }
    }
    let state = rooms.state.load(after)?;
    for (shortstatekey, shortevent) in state.iter() {
        let (kind, state_key) = rooms.short.get_statekey(*shortstatekey)?;
        if kind != StateEventType::RoomMember || !state_key.ends_with(&format!(":{server}")) {
            continue;
        }
        let Some(member) = rooms
            .timeline
            .get_pdu(&rooms.short.get_eventid(*shortevent)?)?
        else {
            continue;
        };
        let membership = member.content_value()["membership"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let allowed = match visibility.as_str() {
            "invited" => membership == "join" || membership == "invite",
            _ => membership == "join",
        };
        if allowed {
            return Ok(true);
        }
    }
    Ok(false)
}
