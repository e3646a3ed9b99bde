//! A synced room's `state` section (the state at the start of its timeline that the client has
//! not seen, with lazy-loaded members) and its room summary (member counts and heroes).

use std::collections::{BTreeSet, HashMap};

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    OwnedEventId, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::SyncContext;
use crate::{
    error::Result,
    service::{
        rooms::pdu::{client_event, Pdu},
        Services,
    },
};

/// The room state after the last event at or before `count`.
pub(crate) fn state_at_position(
    services: &Services,
    shortroomid: u64,
    count: u64,
) -> Result<Option<u64>> {
    let Some(entry) = services
        .rooms
        .timeline
        .iter_before(shortroomid, count.saturating_add(1))
        .next()
    else {
        return Ok(None);
    };
    let (_, pdu) = entry?;
    let short = services
        .rooms
        .short
        .get_shorteventid(&pdu.event_id)?
        .unwrap_or(0);
    Ok(services
        .rooms
        .state
        .get_event_state(short)?
        .map(|(_, after)| after))
}

/// The state a timeline starts from: the state before its first event (for a state event) or
/// after it (for any other: its state is the same).
pub(super) fn state_before_timeline(services: &Services, first: &Pdu) -> Result<Option<u64>> {
    let short = services
        .rooms
        .short
        .get_shorteventid(&first.event_id)?
        .unwrap_or(0);
    Ok(services
        .rooms
        .state
        .get_event_state(short)?
        .map(|(before, after)| {
            if first.state_key.is_some() {
                before
            } else {
                after
            }
        }))
}

/// The state snapshots a `state` section is computed from.
pub(super) struct Snapshots {
    /// The state at the start of the timeline.
    pub start: Option<u64>,
    /// The state at `since`, which the client has; `None` when it has nothing.
    pub seen: Option<u64>,
    /// The state at the end of the timeline, when it may hold changes the timeline leaves out.
    pub end: Option<u64>,
    /// Whether only lazy-loaded members are wanted (an incremental sync without a gap, whose
    /// other state changes are all in the timeline).
    pub members_only: bool,
}

/// The member events a sync with lazy-loaded members sends.
pub(super) struct LazyMembers {
    /// The members whose membership the response needs: the senders of its timeline events,
    /// the user, and the summary's heroes.
    pub wanted: BTreeSet<OwnedUserId>,
    /// The member events the device already holds (see `lazy.rs`): a wanted member's event is
    /// sent again only if the device does not hold it, or `include_redundant_members` is set.
    pub known: HashMap<OwnedUserId, OwnedEventId>,
    pub include_redundant: bool,
}

/// Each event's sender, for the members a lazy-loading sync wants.
pub(super) fn senders(events: &[(u64, Pdu)]) -> impl Iterator<Item = OwnedUserId> + '_ {
    events.iter().map(|(_, pdu)| pdu.sender.clone())
}

impl Snapshots {
    /// A room's `state` section: for each piece of state, the event at the start of the timeline
    /// (or, when the timeline shows no event for that piece of state but the state at its end
    /// differs, the event at the end: a change the timeline filter left out that the client
    /// would otherwise never learn of), unless the client saw it at `since` or the timeline
    /// holds it, filtered by the state filter.
    /// With lazy loading, member events go only for the wanted members, and those go whether or
    /// not they changed since `since` unless the device already holds them (spec, "Lazy-loading
    /// room members": the client may never have been sent a member who did not change).
    pub(super) fn state_section(
        &self,
        ctx: &SyncContext<'_>,
        room_id: &RoomId,
        events: &[(u64, Pdu)],
        lazy: Option<&LazyMembers>,
    ) -> Result<Vec<Value>> {
        let mut state = Vec::new();
        let Some(start) = self.start.filter(|hash| *hash != 0) else {
            return Ok(state);
        };
        let rooms = &ctx.services.rooms;
        let in_timeline: BTreeSet<_> = events.iter().map(|(_, pdu)| &pdu.event_id).collect();
        let timeline_keys = state_keys(ctx.services, events)?;
        let wanted_keys = wanted_member_keys(ctx.services, lazy)?;
        let seen = match self.seen {
            Some(seen) => Some(rooms.state.load(seen)?),
            None => None,
        };
        let start = rooms.state.load(start)?;
        let end = match self.end.filter(|hash| *hash != 0) {
            Some(end) => Some(rooms.state.load(end)?),
            None => None,
        };
        let keys: BTreeSet<u64> = if self.members_only {
            wanted_keys.keys().copied().collect()
        } else {
            start
                .keys()
                .chain(end.iter().flat_map(|end| end.keys()))
                .copied()
                .collect()
        };
        for key in keys {
            let at_end = end.as_ref().and_then(|end| end.get(&key));
            let Some(chosen) = pick(start.get(&key), at_end, timeline_keys.contains(&key)) else {
                continue;
            };
            let wanted_member = wanted_keys.get(&key);
            if wanted_member.is_none()
                && seen
                    .as_ref()
                    .is_some_and(|seen| seen.get(&key) == Some(&chosen))
            {
                continue;
            }
            let event_id = rooms.short.get_eventid(chosen)?;
            if in_timeline.contains(&event_id) {
                continue;
            }
            if let (Some(member), Some(lazy)) = (wanted_member, lazy) {
                if !lazy.include_redundant && lazy.known.get(*member) == Some(&event_id) {
                    continue;
                }
            }
            let Some(pdu) = rooms.timeline.get_pdu(&event_id)? else {
                continue;
            };
            let unwanted_member = lazy.is_some() && wanted_member.is_none();
            if unwanted_member && pdu.kind == TimelineEventType::RoomMember {
                continue;
            }
            if ctx.filters.state.matches(&pdu) {
                state.push(client_event(&pdu, room_id, None));
            }
        }
        Ok(state)
    }
}

/// Which event of a piece of state goes in the section: the one at the end of the timeline when
/// it differs from the one at its start and the timeline shows no event for that piece of
/// state, otherwise the one at the start; `None` when the piece of state is new at the end.
fn pick(at_start: Option<&u64>, at_end: Option<&u64>, in_timeline: bool) -> Option<u64> {
    match (at_start, at_end) {
        (_, Some(at_end)) if at_start != Some(at_end) && !in_timeline => Some(*at_end),
        (Some(at_start), _) => Some(*at_start),
        (None, _) => None,
    }
}

/// The short state keys of the state events among `events`.
fn state_keys(services: &Services, events: &[(u64, Pdu)]) -> Result<BTreeSet<u64>> {
    let mut keys = BTreeSet::new();
    for (_, pdu) in events {
        if let Some(state_key) = &pdu.state_key {
            let kind = StateEventType::from(pdu.kind.to_string());
            if let Some(short) = services.rooms.short.get_shortstatekey(&kind, state_key)? {
                keys.insert(short);
            }
        }
    }
    Ok(keys)
}

/// The short state keys of the wanted members' member events, with the member.
fn wanted_member_keys<'a>(
    services: &Services,
    lazy: Option<&'a LazyMembers>,
) -> Result<HashMap<u64, &'a OwnedUserId>> {
    let mut keys = HashMap::new();
    for member in lazy.iter().flat_map(|lazy| &lazy.wanted) {
        if let Some(short) = services
            .rooms
            .short
            .get_shortstatekey(&StateEventType::RoomMember, member.as_str())?
        {
            keys.insert(short, member);
        }
    }
    Ok(keys)
}

/// A room summary (spec, `RoomSummary`): the joined and invited member counts and, when the
/// room has neither a name nor a canonical alias, its heroes, which are also returned.
pub(crate) fn summary(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
) -> Result<(Value, Vec<OwnedUserId>)> {
    let members = services.rooms.members.iter_members(room_id, None)?;
    let count = |wanted: MembershipState| {
        members
            .iter()
            .filter(|(_, membership)| *membership == wanted)
            .count()
    };
    let mut summary = json!({
        "m.joined_member_count": count(MembershipState::Join),
        "m.invited_member_count": count(MembershipState::Invite),
    });
    if !is_unnamed(services, room_id)? {
        return Ok((summary, Vec::new()));
    }
    let heroes = heroes(services, room_id, user, &members)?;
    summary["m.heroes"] = json!(heroes);
    Ok((summary, heroes))
}

/// Whether the room has neither a non-empty `m.room.name` nor a non-empty canonical alias, the
/// case in which the summary names heroes.
fn is_unnamed(services: &Services, room_id: &RoomId) -> Result<bool> {
    for (kind, field) in [
        (StateEventType::RoomName, "name"),
        (StateEventType::RoomCanonicalAlias, "alias"),
    ] {
        let named = services
            .rooms
            .current_state_pdu(room_id, &kind, "")?
            .is_some_and(|pdu| {
                pdu.content_value()[field]
                    .as_str()
                    .is_some_and(|value| !value.is_empty())
            });
        if named {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The first five joined or invited members other than the user, by the stream position of
/// their current member event; when there are none, the first five who left or were banned.
fn heroes(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    members: &[(OwnedUserId, MembershipState)],
) -> Result<Vec<OwnedUserId>> {
    let mut present = Vec::new();
    let mut gone = Vec::new();
    for (member, membership) in members {
        if member == user {
            continue;
        }
        let bucket = match membership {
            MembershipState::Join | MembershipState::Invite => &mut present,
            MembershipState::Leave | MembershipState::Ban => &mut gone,
            _ => continue,
        };
        let position = services
            .rooms
            .members
            .get_user_room(member, room_id)?
            .map_or(u64::MAX, |membership| membership.count);
        bucket.push((position, member.clone()));
    }
    Ok(crate::service::rooms::join_state::pick_heroes(
        present, gone,
    ))
}
