//! Building `/sync` responses from stream positions: joined, invited and left rooms with their
//! timelines, state deltas and ephemeral events (typing, receipts), account data and presence.
//! Non-state events, typing and invites of users the syncing user ignores are left out.

mod joined;
mod lazy;
mod state;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

pub use self::lazy::SentMembers;
use crate::{
    error::Result,
    service::{
        filter::RoomEventFilter,
        notify::{Topic, Waiter},
        presence,
        rooms::{
            members::RoomMembership,
            pdu::{client_event, Pdu},
            prejoin_state, visibility,
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
    let next_batch = SyncToken {
        count: next,
        typing: next_typing,
    };
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
    let lazy = timeline_filter.lazy_load_members || state_filter.lazy_load_members;
    services.sent_members.begin(
        request.user,
        request.device,
        request.since,
        request.full_state,
    );
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
                let room = joined::joined_room(
                    services,
                    request,
                    membership,
                    (since, next),
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
    if lazy {
        let mut sent = lazy::Sent::default();
        for (room_id, room) in &join {
            let Ok(room_id) = OwnedRoomId::try_from(room_id.as_str()) else {
                continue;
            };
            for (member, event_id) in joined::member_events(room) {
                if let (Ok(member), Ok(event_id)) = (
                    OwnedUserId::try_from(member),
                    ruma::OwnedEventId::try_from(event_id),
                ) {
                    sent.add(&room_id, member, event_id);
                }
            }
        }
        services
            .sent_members
            .record(request.user, request.device, next_batch, sent);
    }
    let has_updates = !join.is_empty()
        || !invite.is_empty()
        || !leave.is_empty()
        || !knock.is_empty()
        || !global_account_data.is_empty()
        || !presence.is_empty()
        || e2ee_updates;
    let mut response = json!({
        "next_batch": next_batch.to_string(),
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
            let (timeline_filter, state_filter) = filters;
            let snapshots = state::Snapshots {
                start: match events.first() {
                    Some((_, first)) => state::state_before_timeline(services, first)?,
                    None => state::state_at_position(services, shortroomid, left_at)?,
                },
                seen: match request.since {
                    Some(_) => state::state_at_position(services, shortroomid, since)?,
                    None => None,
                },
                end: None,
                members_only: false,
            };
            // The member events of the timeline's senders go along whether or not they changed.
            let lazy =
                (timeline_filter.lazy_load_members || state_filter.lazy_load_members).then(|| {
                    state::LazyMembers {
                        wanted: events
                            .iter()
                            .map(|(_, pdu)| pdu.sender.clone())
                            .chain([request.user.to_owned()])
                            .collect(),
                        known: Default::default(),
                        include_redundant: true,
                    }
                });
            state = state::state_section(
                services,
                room_id,
                &snapshots,
                &events,
                state_filter,
                lazy.as_ref(),
            )?;
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
    let rules = crate::service::rooms::version::rules_for(&version)?;
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
