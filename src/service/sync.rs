//! Building `/sync` responses from stream positions: joined, invited and left rooms with their
//! timelines, state deltas and ephemeral events (typing, receipts), account data and presence.
//! Non-state events, typing and invites of users the syncing user ignores are left out.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::{
        filter::RoomEventFilter,
        notify::{Topic, Waiter},
        presence, receipts,
        rooms::{
            members::RoomMembership,
            pdu::Pdu,
            prejoin_state,
            relations::bundle::serve_event,
            timeline::read::client_event,
            visibility::{self, user_can_see},
        },
        Services,
    },
};

/// A sync position: the global stream position (timeline, state, membership, account data,
/// receipts) and the typing position, which lives in memory (see `service::typing`).
///
/// Written `s{count}_{typing}`. The older `s{count}` form still parses, with typing position 0:
/// a client that never saw typing, told of every room whose typists changed in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub count: u64,
    pub typing: u64,
}

impl SyncToken {
    /// Parses `s{count}_{typing}`, `s{count}` or a bare count.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix('s').unwrap_or(token);
        let (count, typing) = match rest.split_once('_') {
            Some((count, typing)) => (count, typing.parse().ok()?),
            None => (rest, 0),
        };
        Some(Self {
            count: count.parse().ok()?,
            typing,
        })
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "s{}_{}", self.count, self.typing)
    }
}

/// What a sync request asked for.
pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: &'a Value,
}

/// Builds the response and subscribes to everything that can change it, in an order that
/// misses nothing: the user's topic first (membership changes wake it), then one read of the
/// user's rooms, then those rooms' topics; anything committed before a room's subscription is
/// already in the response, which is built last.
pub fn subscribe_and_build(
    services: &Services,
    request: &SyncRequest<'_>,
) -> Result<(Value, bool, Waiter)> {
    let mut waiter = services
        .notifier
        .subscribe([Topic::User(request.user.to_string())]);
    let mut memberships = services.rooms.members.iter_rooms(request.user)?;
    services.notifier.add(
        &mut waiter,
        memberships
            .iter()
            .map(|membership| Topic::Room(membership.room_id.to_string())),
    );
    if request.since.is_some() {
        // A room forgotten since the last sync still reports its leave (once: `build` only
        // shows departures after `since`).
        memberships.extend(services.rooms.members.iter_forgotten(request.user)?);
    }
    let (response, has_updates) = build(services, request, memberships)?;
    Ok((response, has_updates, waiter))
}

/// The response for everything after `since` up to the current position; returns it with
/// a flag saying whether it has anything a long-poll should return for.
fn build(
    services: &Services,
    request: &SyncRequest<'_>,
    memberships: Vec<RoomMembership>,
) -> Result<(Value, bool)> {
    let next = services.globals.current_count();
    let next_typing = services.typing.current();
    let since = request.since.map_or(0, |token| token.count);
    let room_filter = request.filter.get("room").cloned().unwrap_or(Value::Null);
    let timeline_filter =
        RoomEventFilter::from_value(room_filter.get("timeline").unwrap_or(&Value::Null));
    let state_filter =
        RoomEventFilter::from_value(room_filter.get("state").unwrap_or(&Value::Null));
    let ephemeral_filter =
        RoomEventFilter::from_value(room_filter.get("ephemeral").unwrap_or(&Value::Null));
    let include_leave = room_filter
        .get("include_leave")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let room_allowed = RoomEventFilter::from_value(&room_filter);
    // A limit of 0 is allowed: the rooms then come with their state and an empty timeline.
    let limit = timeline_filter.limit.unwrap_or(10).min(1000);

    let joined_now = |membership: &&RoomMembership| membership.membership == MembershipState::Join;
    let joined: HashSet<&RoomId> = memberships
        .iter()
        .filter(joined_now)
        .map(|membership| membership.room_id.as_ref())
        .collect();
    let newly_joined: Vec<&RoomId> = memberships
        .iter()
        .filter(|membership| {
            joined_now(membership)
                && request
                    .since
                    .is_some_and(|since| membership.count > since.count)
        })
        .map(|membership| membership.room_id.as_ref())
        .collect();
    let presence = presence::sync_events(
        services,
        request.user,
        (&joined, &newly_joined),
        request.since.map(|token| token.count),
        next,
        request.filter.get("presence"),
    )?;

    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();
    for membership in &memberships {
        let room_id = &membership.room_id;
        if !room_allowed.room_allowed(room_id.as_str()) {
            continue;
        }
        match membership.membership {
            MembershipState::Join => {
                // A room joined since the last sync gets its full state, like an initial sync.
                let full =
                    request.since.is_none() || request.full_state || membership.count > since;
                let room = joined_room(
                    services,
                    request,
                    membership,
                    (since, next),
                    limit,
                    full,
                    (&timeline_filter, &state_filter, &ephemeral_filter),
                )?;
                if let Some(room) = room {
                    join.insert(room_id.to_string(), room);
                }
            }
            MembershipState::Invite if membership.count > since => {
                let events = stripped_state(services, room_id, request.user)?;
                if !invited_by_ignored(services, request.user, &events)? {
                    invite.insert(
                        room_id.to_string(),
                        json!({ "invite_state": { "events": events } }),
                    );
                }
            }
            MembershipState::Knock if membership.count > since => {
                knock.insert(room_id.to_string(), json!({ "knock_state": { "events": stripped_state(services, room_id, request.user)? } }));
            }
            MembershipState::Leave | MembershipState::Ban
                if membership.count > since
                    && (request.since.is_some()
                        || include_leave
                        || removed_by_other(services, room_id, request.user)?) =>
            {
                let room = left_room(
                    services,
                    request,
                    room_id,
                    since,
                    membership.count,
                    limit,
                    (&timeline_filter, &state_filter),
                )?;
                leave.insert(room_id.to_string(), room);
            }
            _ => {}
        }
    }

    let mut global_account_data = Vec::new();
    let mut room_account_data: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    for entry in services.account_data.iter_changed(request.user, since)? {
        let event = json!({ "type": entry.kind, "content": entry.content });
        match entry.room_id {
            Some(room_id) => room_account_data.entry(room_id).or_default().push(event),
            None => global_account_data.push(event),
        }
    }
    if request.since.is_none()
        && !global_account_data
            .iter()
            .any(|event| event["type"] == "m.push_rules")
    {
        global_account_data.extend(crate::service::push::initial_sync_rules(
            services,
            request.user,
        )?);
    }
    for (room_id, events) in room_account_data {
        if let Some(room) = join.get_mut(room_id.as_str()) {
            room["account_data"] = json!({ "events": events });
        } else if request.since.is_some() {
            join.insert(room_id.to_string(), json!({ "account_data": { "events": events }, "timeline": { "events": [], "limited": false }, "state": { "events": [] }, "ephemeral": { "events": [] }, "unread_notifications": {} }));
        }
    }

    // Members who joined one of the user's rooms since the last sync are new to the user: their
    // presence comes along even if it did not change (read from this response, not the rooms).
    let mut presence = presence;
    if request.since.is_some() {
        let joiners = newly_joined_members(&join, request.user);
        presence::add_joiners(
            services,
            &mut presence,
            joiners,
            request.filter.get("presence"),
        )?;
    }

    let (e2ee, e2ee_updates) = crate::service::device_lists::sync_fields(
        services,
        (request.user, request.device),
        request.since.map(|token| token.count),
        next,
    )?;
    let has_updates = !join.is_empty()
        || !invite.is_empty()
        || !leave.is_empty()
        || !knock.is_empty()
        || !global_account_data.is_empty()
        || !presence.is_empty()
        || e2ee_updates;
    let mut response = json!({
        "next_batch": SyncToken { count: next, typing: next_typing }.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence },
    });
    if let Some(fields) = response.as_object_mut() {
        fields.extend(e2ee);
    }
    Ok((response, has_updates))
}

/// The users whose join appears in the timeline or state of the joined rooms of a response.
fn newly_joined_members(join: &Map<String, Value>, user: &UserId) -> BTreeSet<OwnedUserId> {
    let mut joiners = BTreeSet::new();
    for room in join.values() {
        for section in ["timeline", "state"] {
            for event in room[section]["events"].as_array().into_iter().flatten() {
                if event["type"] == "m.room.member" && event["content"]["membership"] == "join" {
                    if let Some(member) = event["state_key"]
                        .as_str()
                        .and_then(|member| OwnedUserId::try_from(member).ok())
                    {
                        if member != user {
                            joiners.insert(member);
                        }
                    }
                }
            }
        }
    }
    joiners
}

fn joined_room(
    services: &Services,
    request: &SyncRequest<'_>,
    membership: &RoomMembership,
    (since, next): (u64, u64),
    limit: usize,
    initial: bool,
    (timeline_filter, state_filter, ephemeral_filter): (
        &RoomEventFilter,
        &RoomEventFilter,
        &RoomEventFilter,
    ),
) -> Result<Option<Value>> {
    let room_id: &RoomId = &membership.room_id;
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(None);
    };
    // The newest `limit` matching events after `since`, oldest first.
    let ignored = services.account_data.ignored_users(request.user)?;
    let mut events: Vec<(u64, Pdu)> = Vec::new();
    let mut limited = false;
    // The batch ends at the newest gap in the timeline (`timeline/gaps.rs`), as a limited one.
    let mut gap = None;
    for entry in services
        .rooms
        .timeline
        .iter_before(shortroomid, next.saturating_add(1))
    {
        let (count, pdu) = entry?;
        if count <= since {
            break;
        }
        let newest_gap = match gap {
            Some(known) => known,
            None => *gap.insert(
                services
                    .rooms
                    .timeline
                    .newest_gap(shortroomid, since, next)?,
            ),
        };
        if newest_gap.is_some_and(|gap_count| count < gap_count) {
            limited = true;
            break;
        }
        if !timeline_filter.matches(&pdu)
            || visibility::ignored(&ignored, &pdu)
            || !user_can_see(services, request.user, Some(membership), count, &pdu)?
        {
            continue;
        }
        if events.len() == limit {
            limited = true;
            break;
        }
        events.push((count, pdu));
    }
    events.reverse();
    let ephemeral = ephemeral_events(services, request, room_id, initial, next, ephemeral_filter)?;
    if events.is_empty() && ephemeral.is_empty() && !initial {
        return Ok(None);
    }
    let viewer = Some((request.user, request.device));
    let timeline: Vec<Value> = events
        .iter()
        .map(|(_, pdu)| serve_event(services, pdu, room_id, viewer))
        .collect::<Result<_>>()?;
    let prev_batch = match events.first() {
        // The stream just before the first event: `/messages` goes back from there.
        Some((count, _)) => format!("s{}", count.saturating_sub(1)),
        None => format!("s{next}"),
    };

    // State: everything at the start of the timeline that the client has not seen.
    let state = if initial || limited {
        let seen = if initial {
            None
        } else {
            state_at_position(services, shortroomid, since)?
        };
        let start = match events.first() {
            Some((_, first)) => state_before_timeline(services, first)?,
            None => services.rooms.state.get_room_state(shortroomid)?,
        };
        state_section(
            services,
            request,
            room_id,
            (start, seen),
            &events,
            (timeline_filter, state_filter),
        )?
    } else {
        Vec::new()
    };
    // The member counts change only with member events, so they are counted and sent only then
    // and on initial syncs; clients keep the last values they saw.
    let membership_changed = initial
        || events
            .iter()
            .any(|(_, pdu)| pdu.kind == ruma::events::TimelineEventType::RoomMember);
    let summary = if membership_changed {
        let members = &services.rooms.members;
        let joined = members
            .iter_members(room_id, Some(MembershipState::Join))?
            .len();
        let invited = members
            .iter_members(room_id, Some(MembershipState::Invite))?
            .len();
        json!({ "m.joined_member_count": joined, "m.invited_member_count": invited })
    } else {
        json!({})
    };
    let (unread, unread_threads) =
        crate::service::push::sync_unread(services, request.user, room_id, request.filter)?;
    let mut room = json!({
        "timeline": { "events": timeline, "limited": limited, "prev_batch": prev_batch },
        "state": { "events": state },
        "ephemeral": { "events": ephemeral },
        "account_data": { "events": [] },
        "summary": summary,
        "unread_notifications": unread,
    });
    if let Some(threads) = unread_threads {
        room["unread_thread_notifications"] = threads;
    }
    Ok(Some(room))
}

/// A joined room's typing and receipt events: its typists when they changed after the token's
/// typing position, and the receipts set after `since` up to `next` (on an initial sync, the
/// current typists if any and every current receipt). Private receipts reach only their owner.
fn ephemeral_events(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    initial: bool,
    next: u64,
    filter: &RoomEventFilter,
) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    if !filter.room_allowed(room_id.as_str()) {
        return Ok(events);
    }
    let since = request.since.filter(|_| !initial);
    if filter.matches_type("m.typing") {
        if let Some(mut users) = services
            .typing
            .get_changed(room_id, since.map(|token| token.typing))
        {
            let ignored = services.account_data.ignored_users(request.user)?;
            users.retain(|user| !ignored.contains(user));
            events.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
    }
    if filter.matches_type("m.receipt") {
        let receipts =
            services
                .receipts
                .iter_since(room_id, since.map(|token| token.count), next)?;
        events.extend(receipts::sync_events(&receipts, request.user));
    }
    Ok(events)
}

/// The room state after the last event at or before `count`.
fn state_at_position(services: &Services, shortroomid: u64, count: u64) -> Result<Option<u64>> {
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
fn state_before_timeline(services: &Services, first: &Pdu) -> Result<Option<u64>> {
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

/// A room's `state` section: the events of snapshot `start` (the start of the timeline) that
/// differ from snapshot `seen` (the state at `since`; `None` sends all), less the timeline's own
/// events, filtered by the state filter, and with lazy loading only the members who sent a
/// timeline event, and the user.
fn state_section(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    (start, seen): (Option<u64>, Option<u64>),
    events: &[(u64, Pdu)],
    (timeline_filter, state_filter): (&RoomEventFilter, &RoomEventFilter),
) -> Result<Vec<Value>> {
    let mut state = Vec::new();
    let Some(start) = start.filter(|hash| *hash != 0) else {
        return Ok(state);
    };
    let in_timeline: BTreeSet<_> = events.iter().map(|(_, pdu)| pdu.event_id.clone()).collect();
    let senders: BTreeSet<_> = events
        .iter()
        .map(|(_, pdu)| pdu.sender.to_string())
        .chain([request.user.to_string()])
        .collect();
    let lazy = timeline_filter.lazy_load_members || state_filter.lazy_load_members;
    let seen_set = match seen {
        Some(seen) => Some(services.rooms.state.load(seen)?),
        None => None,
    };
    let current = services.rooms.state.load(start)?;
    for (shortstatekey, shorteventid) in current.iter() {
        if seen_set
            .as_ref()
            .is_some_and(|seen| seen.get(shortstatekey) == Some(shorteventid))
        {
            continue;
        }
        let event_id = services.rooms.short.get_eventid(*shorteventid)?;
        if in_timeline.contains(&event_id) {
            continue;
        }
        let Some(pdu) = services.rooms.timeline.get_pdu(&event_id)? else {
            continue;
        };
        if lazy
            && pdu.kind == ruma::events::TimelineEventType::RoomMember
            && !senders.contains(pdu.state_key.as_deref().unwrap_or(""))
        {
            continue;
        }
        if state_filter.matches(&pdu) {
            state.push(client_event(&pdu, room_id, None));
        }
    }
    Ok(state)
}

fn left_room(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    since: u64,
    left_at: u64,
    limit: usize,
    filters: (&RoomEventFilter, &RoomEventFilter),
) -> Result<Value> {
    let mut events: Vec<(u64, Pdu)> = Vec::new();
    let mut limited = false;
    let ignored = services.account_data.ignored_users(request.user)?;
    let shortroomid = services.rooms.short.get_shortroomid(room_id)?;
    if let Some(shortroomid) = shortroomid {
        for entry in services
            .rooms
            .timeline
            .iter_before(shortroomid, left_at.saturating_add(1))
        {
            let (count, pdu) = entry?;
            if count <= since {
                break;
            }
            if events.len() >= limit {
                limited = true;
                break;
            }
            if filters.0.matches(&pdu) && !visibility::ignored(&ignored, &pdu) {
                events.push((count, pdu));
            }
        }
    }
    events.reverse();
    let viewer = Some((request.user, request.device));
    let mut timeline: Vec<Value> = events
        .iter()
        .map(|(_, pdu)| client_event(pdu, room_id, viewer))
        .collect();
    if timeline.is_empty() && !services.rooms.exists(room_id)? {
        // A room this server was never in (a refused knock, a withdrawn invite): the member
        // event that ended the membership, kept with the room's stripped state.
        if let Some(event) = outside_membership_event(services, room_id, request.user)? {
            timeline.push(client_event(&event, room_id, viewer));
        }
    }
    // A timeline that does not reach back to `since` comes with the state at its start (as it
    // was before the user left) that the client has not seen, less what the timeline shows.
    let mut state = Vec::new();
    if let (true, Some(shortroomid)) = (limited, shortroomid) {
        let was_member =
            crate::service::rooms::visibility::readable_state(services, room_id, request.user)?
                .is_some_and(|readable| readable.until.is_some());
        if was_member {
            let seen = match request.since {
                Some(_) => state_at_position(services, shortroomid, since)?,
                None => None,
            };
            let start = match events.first() {
                Some((_, first)) => state_before_timeline(services, first)?,
                None => state_at_position(services, shortroomid, left_at)?,
            };
            state = state_section(services, request, room_id, (start, seen), &events, filters)?;
        }
    }
    Ok(
        json!({ "timeline": { "events": timeline, "limited": limited }, "state": { "events": state }, "account_data": { "events": [] } }),
    )
}

/// Whether the user's leave or ban was someone else's doing (a kick or ban): such rooms are in
/// an initial sync's leave section even without `include_leave`, as Synapse does, so that a
/// client learns of its removal.
fn removed_by_other(services: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    use ruma::events::StateEventType;
    let current = services
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
        None => outside_membership_event(services, room_id, user)?,
    };
    Ok(event.is_some_and(|pdu| pdu.sender != user))
}

/// The user's own member event stored with the stripped state of a room this server is not in.
fn outside_membership_event(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<crate::service::rooms::pdu::Pdu>> {
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

/// Whether the invite in a room's stripped state comes from a user the invitee ignores; such
/// invites are not shown (spec, "Ignoring Users"), though the invite itself stands.
fn invited_by_ignored(services: &Services, user: &UserId, stripped: &[Value]) -> Result<bool> {
    let ignored = services.account_data.ignored_users(user)?;
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(stripped
        .iter()
        .filter(|event| event["type"] == "m.room.member" && event["state_key"] == user.as_str())
        .filter_map(|event| event["sender"].as_str())
        .any(|sender| ignored.iter().any(|ignored| ignored.as_str() == sender)))
}

/// The stripped state an invitee sees: create, join rules, name, avatar, alias, encryption, topic
/// and their own member event (see `prejoin_state` for the create event's form).
/// Invites from other servers carry their own stripped state, which is all there is when this
/// server is not in the room (its copy of the room's state, if any, may be long out of date).
fn stripped_state(services: &Services, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
    use ruma::events::StateEventType as T;
    if let Some(state) = services.rooms.handshakes.get_invite_state(user, room_id)? {
        if !crate::service::rooms::handshake::is_resident(services, room_id)? {
            return Ok(state);
        }
    }
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = crate::service::rooms::timeline::rules_for(&version)?;
    let kinds = prejoin_state::STATE_TYPES.iter().map(|kind| (kind, ""));
    let mut events = Vec::new();
    for (kind, state_key) in kinds.chain([(&T::RoomMember, user.as_str())]) {
        if let Some(pdu) = services.rooms.current_state_pdu(room_id, kind, state_key)? {
            events.push(prejoin_state::client_event(services, &pdu, &rules)?);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn sync_tokens_round_trip_and_old_ones_still_parse() {
        let token = SyncToken {
            count: 42,
            typing: 1001,
        };
        assert_eq!(token.to_string(), "s42_1001");
        assert_eq!(SyncToken::parse("s42_1001"), Some(token));
        let old = SyncToken {
            count: 42,
            typing: 0,
        };
        assert_eq!(SyncToken::parse("s42"), Some(old));
        assert_eq!(SyncToken::parse("42"), Some(old));
        for bad in ["", "s", "s42_", "s_1", "sx_1", "s1_2_3", "t1_2"] {
            assert_eq!(SyncToken::parse(bad), None, "{bad}");
        }
    }
}
