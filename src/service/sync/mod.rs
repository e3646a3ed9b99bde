//! Building `/sync` responses from stream positions: joined, invited and left rooms with their
//! timelines, state deltas and ephemeral events (typing, receipts), account data and presence.
//! Non-state events, typing and invites of users the syncing user ignores are left out.
//!
//! `build` reads the request once into a [`SyncContext`] and passes it to one step per room:
//! `joined.rs`, `left.rs` and `invited.rs` (invites and knocks). `state.rs` computes a room's
//! `state` section and summary; `lazy.rs` remembers the member events each device holds.
//!
//! A room's `state` section (`sync/state.rs`) is the state at the start of its timeline that the client has not seen, plus, where the state at the end of the timeline holds a change the timeline filter left out, that change.
//! With lazy-loaded members it carries the members of the timeline's senders and of the summary's heroes that the device does not hold: `SentMembers` (`sync/lazy.rs`, memory only) records per device the member events each response carried, and counts them as held once the device syncs from that response's `next_batch`; after a restart members are sent again, which the spec allows.
//! The room summary (joined and invited counts, heroes for a room without name or canonical alias) is sent on initial syncs and whenever member, name or alias events or a gap lie in the synced range.
//! A room joined since the last sync is treated like an initial sync: full state, a timeline reaching back before `since`, `limited` unless it starts at the room's creation.
//!
//! Builds `/sync` responses from stream positions; its token `s{count}_{typing}` (`SyncToken`) carries the global stream position and the typing position (the older `s{count}` still parses, as typing position 0).
//! `sync::build` reads the request once into a `SyncContext` (positions, parsed filter, the user's ignore list) and passes it to one step per room: `sync/joined.rs` (a `JoinedRoom` per room: timeline scan, ephemeral events, summary, state), `sync/left.rs` and `sync/invited.rs` (invites and knocks); account data, presence and the end-to-end fields are added in `build`.

pub(crate) mod invited;
pub(crate) mod joined;
mod lazy;
mod left;
pub(crate) mod state;
pub mod state_after;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

pub use self::lazy::SentMembers;
pub use self::state_after::StateAfter;
use crate::{
    error::Result,
    service::{
        filter::RoomEventFilter,
        notify::{Topic, Waiter},
        presence,
        rooms::members::RoomMembership,
        Services,
    },
};

use crate::service::globals::SyncToken;

/// What a sync request asked for.
pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: &'a Value,
    /// `state_after` in place of `state` (MSC4222, `state_after.rs`).
    pub state_after: Option<StateAfter>,
}

/// Builds the response and subscribes to everything that can change it, in an order that
/// misses nothing: the user's topic first (membership changes wake it), then one read of the
/// user's rooms, then those rooms' topics; anything committed before a room's subscription is
/// already in the response, which is built last.
pub fn subscribe_and_build(
    services: &Services,
    request: &SyncRequest<'_>,
) -> Result<(Value, bool, Waiter)> {
    let (waiter, mut memberships) = subscribe(services, request.user)?;
    if request.since.is_some() {
        // A room forgotten since the last sync still reports its leave (once: `build` only
        // shows departures after `since`).
        memberships.extend(services.rooms.members.iter_forgotten(request.user)?);
    }
    let (response, has_updates) = build(services, request, memberships)?;
    Ok((response, has_updates, waiter))
}

/// Subscribes to a user's topic, then to the topics of the rooms they have a membership in
/// (read after the user's subscription, so that a join in between wakes it).
pub(crate) fn subscribe(
    services: &Services,
    user: &UserId,
) -> Result<(Waiter, Vec<RoomMembership>)> {
    let mut waiter = services.notifier.subscribe([Topic::User(user.to_string())]);
    let memberships = services.rooms.members.iter_rooms(user)?;
    services.notifier.add(
        &mut waiter,
        memberships
            .iter()
            .map(|membership| Topic::Room(membership.room_id.to_string())),
    );
    Ok((waiter, memberships))
}

/// For an incremental sync whose `since` is the current position of every stream: the waiter
/// to wait on before anything is built, since nothing can be in a response yet (everything a
/// response shows, typing aside, is stored at a stream position, and typing has its own).
/// `None` when there may be news, or for initial and full-state syncs, which answer at once.
/// A client that long-polls right after its last answer (every client, when the server is busy)
/// then costs one subscription instead of a response built only to be thrown away.
pub fn subscribe_if_caught_up(
    services: &Services,
    request: &SyncRequest<'_>,
) -> Result<Option<Waiter>> {
    let Some(since) = request.since.filter(|_| !request.full_state) else {
        return Ok(None);
    };
    let caught_up = || {
        since.count == services.globals.current_count() && since.typing == services.typing.current()
    };
    if !caught_up() {
        return Ok(None);
    }
    let (waiter, _) = subscribe(services, request.user)?;
    // Checked again after subscribing: a commit in between has woken nobody we listen for.
    Ok(caught_up().then_some(waiter))
}

/// One response being built: the request, the positions it spans and its parsed filter, read
/// once and shared by the step of every room.
pub(crate) struct SyncContext<'a> {
    services: &'a Services,
    request: &'a SyncRequest<'a>,
    /// The stream position of `since`, 0 without one.
    since: u64,
    /// The response's `next_batch`; it covers the stream up to `next_batch.count`.
    next_batch: SyncToken,
    filters: Filters,
    /// The users the syncing user ignores.
    ignored: Arc<HashSet<OwnedUserId>>,
}

impl<'a> SyncContext<'a> {
    pub(crate) fn new(services: &'a Services, request: &'a SyncRequest<'a>) -> Result<Self> {
        Ok(Self {
            services,
            request,
            since: request.since.map_or(0, |token| token.count),
            next_batch: SyncToken {
                count: services.globals.current_count(),
                typing: services.typing.current(),
            },
            filters: Filters::parse(request.filter),
            ignored: services.account_data.ignored_users(request.user)?,
        })
    }

    /// The current stream position, where the response ends.
    pub(crate) fn next(&self) -> u64 {
        self.next_batch.count
    }

    /// The syncing device, for the `unsigned` fields only it may see.
    fn viewer(&self) -> Option<(&UserId, &str)> {
        Some((self.request.user, self.request.device))
    }
}

/// The parts of the sync filter's `room` filter.
struct Filters {
    timeline: RoomEventFilter,
    state: RoomEventFilter,
    ephemeral: RoomEventFilter,
    /// The `room` filter itself, for its `rooms` and `not_rooms`.
    rooms: RoomEventFilter,
    include_leave: bool,
}

impl Filters {
    fn parse(filter: &Value) -> Self {
        let room = filter.get("room").unwrap_or(&Value::Null);
        let part = |name| RoomEventFilter::from_value(room.get(name).unwrap_or(&Value::Null));
        Self {
            timeline: part("timeline"),
            state: part("state"),
            ephemeral: part("ephemeral"),
            rooms: RoomEventFilter::from_value(room),
            include_leave: room
                .get("include_leave")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// Whether member events are lazy-loaded (either filter may ask for it).
    fn lazy_members(&self) -> bool {
        self.timeline.lazy_load_members || self.state.lazy_load_members
    }

    fn include_redundant_members(&self) -> bool {
        self.timeline.include_redundant_members || self.state.include_redundant_members
    }

    /// The most timeline events per room. A limit of 0 is allowed: the rooms then come with
    /// their state and an empty timeline.
    fn limit(&self) -> usize {
        self.timeline.limit.unwrap_or(10).min(1000)
    }
}

/// The `rooms` sections of a response, by room ID.
#[derive(Default)]
struct Rooms {
    join: Map<String, Value>,
    invite: Map<String, Value>,
    leave: Map<String, Value>,
    knock: Map<String, Value>,
}

/// The response for everything after `since` up to the current position; returns it with
/// a flag saying whether it has anything a long-poll should return for.
fn build(
    services: &Services,
    request: &SyncRequest<'_>,
    memberships: Vec<RoomMembership>,
) -> Result<(Value, bool)> {
    let ctx = SyncContext::new(services, request)?;
    services.sent_members.begin(
        request.user,
        request.device,
        request.since,
        request.full_state,
    );
    let mut presence = presence_events(&ctx, &memberships)?;
    let mut rooms = rooms(&ctx, &memberships)?;
    let global_account_data = account_data(&ctx, &mut rooms.join)?;
    state_after::apply(&ctx, &mut rooms, &memberships)?;
    // Members who joined one of the user's rooms since the last sync are new to the user: their
    // presence comes along even if it did not change (read from this response, not the rooms).
    if request.since.is_some() {
        let joiners = newly_joined_members(&rooms.join, request.user);
        presence::add_joiners(
            services,
            request.user,
            &mut presence,
            joiners,
            request.filter.get("presence"),
        )?;
    }
    let (e2ee, e2ee_updates) = crate::service::device_lists::sync_fields(
        services,
        (request.user, request.device),
        request.since.map(|token| token.count),
        ctx.next(),
    )?;
    if ctx.filters.lazy_members() {
        record_sent_members(&ctx, &rooms.join);
    }
    let has_updates = !rooms.join.is_empty()
        || !rooms.invite.is_empty()
        || !rooms.leave.is_empty()
        || !rooms.knock.is_empty()
        || !global_account_data.is_empty()
        || !presence.is_empty()
        || e2ee_updates;
    let Rooms {
        join,
        invite,
        leave,
        knock,
    } = rooms;
    let mut response = json!({
        "next_batch": ctx.next_batch.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence },
    });
    if let Some(fields) = response.as_object_mut() {
        fields.extend(e2ee);
    }
    Ok((response, has_updates))
}

/// The presence events of the users who share a joined room with the user (see
/// `presence::sync_events`; rooms joined since `since` bring their members' presence along).
fn presence_events(ctx: &SyncContext<'_>, memberships: &[RoomMembership]) -> Result<Vec<Value>> {
    let joined_now = |membership: &&RoomMembership| membership.membership == MembershipState::Join;
    let joined: HashSet<&RoomId> = memberships
        .iter()
        .filter(joined_now)
        .map(|membership| membership.room_id.as_ref())
        .collect();
    let since = ctx.request.since.map(|token| token.count);
    let newly_joined: Vec<&RoomId> = memberships
        .iter()
        .filter(|membership| {
            joined_now(membership) && since.is_some_and(|since| membership.count > since)
        })
        .map(|membership| membership.room_id.as_ref())
        .collect();
    presence::sync_events(
        ctx.services,
        ctx.request.user,
        (&joined, &newly_joined),
        since,
        ctx.next(),
        ctx.request.filter.get("presence"),
    )
}

/// Each room the room filter lets through, in the section of the user's membership: every
/// joined room with news, and invites, knocks and departures after `since` (on an initial sync,
/// departures only with `include_leave` or when someone else removed the user).
fn rooms(ctx: &SyncContext<'_>, memberships: &[RoomMembership]) -> Result<Rooms> {
    let mut rooms = Rooms::default();
    for membership in memberships {
        let room_id = &membership.room_id;
        if !ctx.filters.rooms.room_allowed(room_id.as_str()) {
            continue;
        }
        let changed = membership.count > ctx.since;
        match membership.membership {
            MembershipState::Join => {
                if let Some(room) = joined::joined_room(ctx, membership)? {
                    rooms.join.insert(room_id.to_string(), room);
                }
            }
            MembershipState::Invite if changed => {
                if let Some(room) = invited::invited_room(ctx, room_id)? {
                    rooms.invite.insert(room_id.to_string(), room);
                }
            }
            MembershipState::Knock if changed => {
                let room = invited::knocked_room(ctx, room_id)?;
                rooms.knock.insert(room_id.to_string(), room);
            }
            MembershipState::Leave | MembershipState::Ban
                if changed
                    && (ctx.request.since.is_some()
                        || ctx.filters.include_leave
                        || left::removed_by_other(ctx, room_id)?) =>
            {
                let room = left::left_room(ctx, room_id, membership.count)?;
                rooms.leave.insert(room_id.to_string(), room);
            }
            _ => {}
        }
    }
    Ok(rooms)
}

/// The global account data changed since `since` (on an initial sync with the push rules, the
/// server's defaults for a user who never changed one); room account data goes into `join`,
/// where an incremental sync adds a room that has nothing else to report.
fn account_data(ctx: &SyncContext<'_>, join: &mut Map<String, Value>) -> Result<Vec<Value>> {
    let (services, user) = (ctx.services, ctx.request.user);
    let mut global = Vec::new();
    let mut by_room: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    for entry in services.account_data.iter_changed(user, ctx.since)? {
        let event = json!({ "type": entry.kind, "content": entry.content });
        match entry.room_id {
            Some(room_id) => by_room.entry(room_id).or_default().push(event),
            None => global.push(event),
        }
    }
    if ctx.request.since.is_none() && !global.iter().any(|event| event["type"] == "m.push_rules") {
        global.extend(crate::service::push::initial_sync_rules(services, user)?);
    }
    for (room_id, events) in by_room {
        if let Some(room) = join.get_mut(room_id.as_str()) {
            room["account_data"] = json!({ "events": events });
        } else if ctx.request.since.is_some() {
            join.insert(room_id.to_string(), json!({ "account_data": { "events": events }, "timeline": { "events": [], "limited": false }, "state": { "events": [] }, "ephemeral": { "events": [] }, "unread_notifications": {} }));
        }
    }
    Ok(global)
}

/// Records the member events the joined rooms of a lazy-loading response carry, so that the
/// device's next syncs do not send them again (`lazy.rs`).
fn record_sent_members(ctx: &SyncContext<'_>, join: &Map<String, Value>) {
    let mut sent = lazy::Sent::default();
    for (room_id, room) in join {
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
    let request = ctx.request;
    ctx.services
        .sent_members
        .record(request.user, request.device, ctx.next_batch, sent);
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
