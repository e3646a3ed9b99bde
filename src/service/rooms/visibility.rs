//! History visibility: whether a user may see an event, from the room's
//! `m.room.history_visibility` and the user's membership at that event
//! (spec, client-server API, "Room history visibility"), and the events hidden from a user who
//! ignores their sender.
//!
//! History visibility per event (`shared`, `invited`, `joined`, `world_readable`) from the state after the event; events after the viewer's current join skip the lookup, so sync's hot path pays nothing (backfilled events, whose positions are above every live one, always take the lookup).

use std::collections::{HashMap, HashSet};

use ruma::{events::StateEventType, OwnedUserId, UserId};
use serde_json::Value;

use super::{members::RoomMembership, pdu::Pdu, timeline::is_backfilled, Rooms};
use crate::{error::Result, service::Services};

/// Whether `user` may see `pdu` (stored at stream position `count`), given the user's current
/// membership in its room.
///
/// While the user is joined, everything after their join is visible whatever the setting, so
/// only older events (and users who are not joined) pay for a state lookup. Backfilled events
/// have stream positions above every live one, so they always take the state lookup.
pub fn user_can_see(
    services: &Services,
    user: &UserId,
    membership: Option<&RoomMembership>,
    count: u64,
    pdu: &Pdu,
) -> Result<bool> {
    let joined_now = membership
        .is_some_and(|m| m.membership == ruma::events::room::member::MembershipState::Join);
    if joined_now && !is_backfilled(count) && membership.is_some_and(|m| count >= m.count) {
        return Ok(true);
    }
    // A user always sees the events about their own membership (their leave, kick or ban
    // included), whatever the history visibility says of the time around them.
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(user.as_str())
    {
        return Ok(true);
    }
    let Some(shorteventid) = services.rooms.short.get_shorteventid(&pdu.event_id)? else {
        return Ok(false);
    };
    user_can_see_short(
        services,
        user,
        membership,
        (count, shorteventid),
        &mut HashMap::new(),
    )
}

/// [`user_can_see`] for an event known by its stream position and short ID. `by_state`
/// remembers the answer per state snapshot for this user and membership, so that checking many
/// events of one room (a search) reads each snapshot's visibility once.
pub fn user_can_see_short(
    services: &Services,
    user: &UserId,
    membership: Option<&RoomMembership>,
    (count, shorteventid): (u64, u64),
    by_state: &mut HashMap<u64, bool>,
) -> Result<bool> {
    let joined_now = membership
        .is_some_and(|m| m.membership == ruma::events::room::member::MembershipState::Join);
    if joined_now && !is_backfilled(count) && membership.is_some_and(|m| count >= m.count) {
        return Ok(true);
    }
    let rooms = &services.rooms;
    let Some((_, after)) = rooms.state.get_event_state(shorteventid)? else {
        // Events without recorded state are message events sent before any state: none exist
        // in rooms created here, so refusing is the safe answer.
        return Ok(false);
    };
    if let Some(visible) = by_state.get(&after) {
        return Ok(*visible);
    }
    let visible = visible_in_state(rooms, user, joined_now, after)?;
    by_state.insert(after, visible);
    Ok(visible)
}

/// Whether the state after an event lets `user` see it.
fn visible_in_state(rooms: &Rooms, user: &UserId, joined_now: bool, after: u64) -> Result<bool> {
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

/// [`membership_at`] for an event at stream position `count`, given the viewer's latest
/// membership in the room: no read when the event is after that membership change.
pub fn membership_at_position(
    services: &Services,
    user: &UserId,
    room_id: &ruma::RoomId,
    (pdu, count): (&Pdu, u64),
    latest: &RoomMembership,
) -> Result<Option<String>> {
    let own_member_event = pdu.kind == ruma::events::TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(user.as_str());
    if !own_member_event && !is_backfilled(count) && count >= latest.count {
        return Ok(Some(latest.membership.to_string()));
    }
    membership_at(services, user, room_id, pdu)
}

/// The viewer's membership at an event, with any change the event itself makes
/// (`unsigned.membership`, spec v1.11): `leave` when they had no member event then, `None` for
/// an event stored without state (an outlier), where there is nothing to answer from.
///
/// An event after the user's latest membership change (by stream position) has that membership,
/// so only older events and backfilled ones pay for a state lookup.
pub fn membership_at(
    services: &Services,
    user: &UserId,
    room_id: &ruma::RoomId,
    pdu: &Pdu,
) -> Result<Option<String>> {
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(user.as_str())
    {
        let membership = pdu.content_value()["membership"]
            .as_str()
            .map(str::to_owned);
        return Ok(Some(membership.unwrap_or_else(|| "leave".to_owned())));
    }
    let rooms = &services.rooms;
    let Some(position) = rooms.timeline.get_pdu_id(&pdu.event_id)? else {
        return Ok(None);
    };
    if !is_backfilled(position.count) {
        if let Some(latest) = rooms.members.get_user_room(user, room_id)? {
            if position.count >= latest.count {
                return Ok(Some(latest.membership.to_string()));
            }
        }
    }
    let Some(shorteventid) = rooms.short.get_shorteventid(&pdu.event_id)? else {
        return Ok(None);
    };
    let Some((_, after)) = rooms.state.get_event_state(shorteventid)? else {
        return Ok(None);
    };
    Ok(Some(
        state_field(
            rooms,
            after,
            StateEventType::RoomMember,
            user.as_str(),
            "membership",
        )?
        .unwrap_or_else(|| "leave".to_owned()),
    ))
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
        if let Some(room_id) = pdu.room() {
            if rooms.members.servers_in_room(&room_id)?.contains(server) {
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

/// The room state a user may read, and up to which stream position.
pub struct ReadableState {
    /// The snapshot: the current state, or the state when a former member left.
    pub shortstatehash: u64,
    /// For a former member, the stream position of their leave (or ban): nothing later is theirs.
    pub until: Option<u64>,
}

impl ReadableState {
    /// Whether an event at stream position `count` comes after a former member's departure.
    /// A backfilled event's position says nothing of its time: the history visibility at the
    /// event decides for it alone.
    pub fn after_departure(&self, count: u64) -> bool {
        self.until
            .is_some_and(|until| count > until && !is_backfilled(count))
    }
}

/// The state `user` may read in a room: the current state while joined or when the room is
/// `world_readable`, and the state as it was when they left for a former member (left, kicked or
/// banned while joined). `None` for anyone else, including a user who only rejected an invite.
pub fn readable_state(
    services: &Services,
    room_id: &ruma::RoomId,
    user: &UserId,
) -> Result<Option<ReadableState>> {
    use ruma::events::room::member::MembershipState;
    let rooms = &services.rooms;
    let Some(current) = rooms.current_state_hash(room_id)? else {
        return Ok(None);
    };
    let current_state = ReadableState {
        shortstatehash: current,
        until: None,
    };
    match rooms.members.get_user_room(user, room_id)? {
        Some(m) if m.membership == MembershipState::Join => return Ok(Some(current_state)),
        Some(m) if matches!(m.membership, MembershipState::Leave | MembershipState::Ban) => {
            if let Some(state) = state_at_departure(services, current, user, m.count)? {
                return Ok(Some(state));
            }
        }
        _ => {}
    }
    if history_visibility(rooms, current)? == "world_readable" {
        return Ok(Some(current_state));
    }
    Ok(None)
}

/// The state after a user's leave or ban, if they were joined just before it.
fn state_at_departure(
    services: &Services,
    current: u64,
    user: &UserId,
    count: u64,
) -> Result<Option<ReadableState>> {
    let rooms = &services.rooms;
    let Some(event_id) =
        rooms.state_event_id(current, &StateEventType::RoomMember, user.as_str())?
    else {
        return Ok(None);
    };
    let Some(short) = rooms.short.get_shorteventid(&event_id)? else {
        return Ok(None);
    };
    let Some((before, after)) = rooms.state.get_event_state(short)? else {
        return Ok(None);
    };
    let before_membership = match before {
        0 => None,
        before => state_field(
            rooms,
            before,
            StateEventType::RoomMember,
            user.as_str(),
            "membership",
        )?,
    };
    Ok(
        (before_membership.as_deref() == Some("join")).then_some(ReadableState {
            shortstatehash: after,
            until: Some(count),
        }),
    )
}

/// Whether an event is hidden from a user because they ignore its sender: everything but state
/// events, which the spec ("Ignoring Users") still sends so that the room looks the same.
pub fn ignored(ignored_users: &HashSet<OwnedUserId>, pdu: &Pdu) -> bool {
    pdu.state_key.is_none() && ignored_users.contains(&pdu.sender)
}
