//! A joined room in `/sync`: its timeline since the last sync (or, for a room new to the
//! client, its recent history), the state the client lacks, the room summary and the
//! ephemeral events.

use ruma::{
    events::{StateEventType, TimelineEventType},
    OwnedUserId, RoomId,
};
use serde_json::{json, Value};

use super::{
    state::{self, LazyMembers, Snapshots},
    StateAfter, SyncContext,
};
use crate::{
    error::Result,
    service::{
        receipts,
        rooms::{
            members::RoomMembership,
            pdu::Pdu,
            relations::bundle::serve_event_at,
            timeline::{is_backfilled, read::TopoPos},
            visibility::{self, user_can_see},
        },
    },
};

/// The room's entry in `rooms.join`, or `None` when nothing in it changed since `since`.
pub(super) fn joined_room(
    ctx: &SyncContext<'_>,
    membership: &RoomMembership,
) -> Result<Option<Value>> {
    let services = ctx.services;
    let room_id: &RoomId = &membership.room_id;
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(None);
    };
    let room = JoinedRoom::new(ctx, membership, shortroomid);
    let timeline = room.timeline()?;
    let ephemeral = ephemeral_events(ctx, room_id, room.initial)?;
    if timeline.events.is_empty() && ephemeral.is_empty() && !room.initial {
        return Ok(None);
    }
    let events = serve(ctx, membership, &timeline)?;
    // The summary changes only with member, name and canonical alias events, so it is sent only
    // then (a limited timeline may have left them out) and on initial syncs; clients keep the
    // last values they saw.
    let (summary, heroes) = if room.initial || timeline.limited || timeline.summary_changed {
        state::summary(services, room_id, ctx.request.user)?
    } else {
        (json!({}), Vec::new())
    };
    let state = room.state(&timeline, &heroes)?;
    let (unread, unread_threads) =
        crate::service::push::sync_unread(services, ctx.request.user, room_id, ctx.request.filter)?;
    let mut entry = json!({
        "timeline": {
            "events": events,
            "limited": timeline.limited,
            "prev_batch": timeline.prev_batch(ctx.next()),
        },
        "state": { "events": state },
        "ephemeral": { "events": ephemeral },
        "account_data": { "events": [] },
        "summary": summary,
        "unread_notifications": unread,
    });
    if let Some(threads) = unread_threads {
        entry["unread_thread_notifications"] = threads;
    }
    Ok(Some(entry))
}

/// A room's timeline as `/sync` serves it, for sliding sync (`service::sliding`): the same
/// scan, visibility and event format, from the context's `since` (none: the room's recent
/// history) with its filter's limit.
pub(crate) struct ServedTimeline {
    /// The events as clients get them, oldest first.
    pub events: Vec<Value>,
    /// Each event's stream position, in the same order.
    pub counts: Vec<u64>,
    pub limited: bool,
    pub prev_batch: String,
}

/// The timeline of a room the user is (or was) in, built as `joined_room` builds it.
pub(crate) fn served_timeline(
    ctx: &SyncContext<'_>,
    membership: &RoomMembership,
) -> Result<ServedTimeline> {
    let Some(shortroomid) = ctx
        .services
        .rooms
        .short
        .get_shortroomid(&membership.room_id)?
    else {
        return Ok(ServedTimeline {
            events: Vec::new(),
            counts: Vec::new(),
            limited: false,
            prev_batch: format!("s{}", ctx.next()),
        });
    };
    let timeline = JoinedRoom::new(ctx, membership, shortroomid).timeline()?;
    Ok(ServedTimeline {
        events: serve(ctx, membership, &timeline)?,
        counts: timeline.events.iter().map(|(count, _)| *count).collect(),
        limited: timeline.limited,
        prev_batch: timeline.prev_batch(ctx.next()),
    })
}

/// A timeline's events in the client format, with the fields only the syncing device sees.
fn serve(
    ctx: &SyncContext<'_>,
    membership: &RoomMembership,
    timeline: &Timeline,
) -> Result<Vec<Value>> {
    let viewer = (ctx.request.user, ctx.request.device);
    timeline
        .events
        .iter()
        .map(|(count, pdu)| {
            serve_event_at(
                ctx.services,
                (pdu, *count),
                &membership.room_id,
                viewer,
                membership,
            )
        })
        .collect()
}

/// One joined room being synced.
struct JoinedRoom<'a> {
    ctx: &'a SyncContext<'a>,
    membership: &'a RoomMembership,
    shortroomid: u64,
    /// Whether the user joined since `since`.
    ///
    /// A room joined since the last sync is new to the client: like every room of an initial
    /// sync it gets its full state and recent history from before `since`, and its timeline is
    /// `limited` unless it reaches back to the room's creation, so that the client pages back
    /// over the rest (as Synapse does; Complement's "Newly joined room has correct timeline in
    /// incremental sync").
    newly_joined: bool,
    /// Whether the client gets the room as on an initial sync (no `since`, `full_state`, or
    /// newly joined): full state, summary and its own membership.
    initial: bool,
}

/// A joined room's timeline batch.
struct Timeline {
    /// The newest `limit` shown events after the timeline's start, oldest first.
    events: Vec<(u64, Pdu)>,
    limited: bool,
    /// Whether a scanned event, shown or not, changed the members or the room's name: the
    /// summary is sent then.
    summary_changed: bool,
    /// Whether the events were taken in DAG order (an initial sync) rather than stream order.
    topological: bool,
}

impl<'a> JoinedRoom<'a> {
    fn new(ctx: &'a SyncContext<'a>, membership: &'a RoomMembership, shortroomid: u64) -> Self {
        let since = ctx.request.since;
        let newly_joined = since.is_some() && membership.count > ctx.since;
        Self {
            ctx,
            membership,
            shortroomid,
            newly_joined,
            initial: since.is_none() || ctx.request.full_state || newly_joined,
        }
    }

    /// The timeline: the newest `limit` shown events after `since` (for a newly joined room,
    /// from the room's start), ending at the newest gap (`timeline/gaps.rs`) as a limited one.
    fn timeline(&self) -> Result<Timeline> {
        let ctx = self.ctx;
        let timeline_since = if self.newly_joined { 0 } else { ctx.since };
        let limit = ctx.filters.limit();
        let topological = ctx.request.since.is_none();
        let mut timeline = Timeline {
            events: Vec::new(),
            limited: false,
            summary_changed: false,
            topological,
        };
        // Read once the first event is scanned, so that a quiet room costs no seek for it.
        let mut gap = None;
        for entry in self.entries(topological) {
            let (count, pdu) = entry?;
            if count <= timeline_since {
                break;
            }
            let newest_gap = match gap {
                Some(known) => known,
                None => *gap.insert(ctx.services.rooms.timeline.newest_gap(
                    self.shortroomid,
                    timeline_since,
                    ctx.next(),
                )?),
            };
            if newest_gap.is_some_and(|gap_count| count < gap_count) {
                timeline.limited = true;
                break;
            }
            timeline.summary_changed |= changes_summary(&pdu);
            if !self.shows(count, &pdu)? {
                continue;
            }
            if timeline.events.len() == limit {
                timeline.limited = true;
                break;
            }
            timeline.events.push((count, pdu));
        }
        timeline.events.reverse();
        if self.newly_joined
            && timeline
                .events
                .first()
                .is_none_or(|(_, first)| first.kind != TimelineEventType::RoomCreate)
        {
            timeline.limited = true;
        }
        Ok(timeline)
    }

    /// The room's events from the newest back, with their stream positions.
    ///
    /// An initial sync shows the room's recent history as its DAG orders it (by depth, as
    /// `/messages` pages it), as Synapse does: an event received late but early in the DAG is
    /// not among the newest there, and a state change it brought goes in `state` (Complement's
    /// TestSyncOmitsStateChangeOnFilteredEvents). Incremental syncs go by stream position, so
    /// that whatever arrived since `since` is shown.
    fn entries(&self, topological: bool) -> Box<dyn Iterator<Item = Result<(u64, Pdu)>> + 'a> {
        let timeline = &self.ctx.services.rooms.timeline;
        let next = self.ctx.next();
        if !topological {
            return Box::new(timeline.iter_before(self.shortroomid, next.saturating_add(1)));
        }
        let top = TopoPos {
            depth: u64::MAX,
            count: u64::MAX,
        };
        Box::new(
            timeline
                .iter_topo(self.shortroomid, top, true)
                .map(|entry| entry.map(|(position, pdu)| (position.count, pdu)))
                .filter(move |entry| {
                    !matches!(entry, Ok((count, _)) if *count > next && !is_backfilled(*count))
                }),
        )
    }

    /// Whether the timeline shows an event: it passes the timeline filter, its sender is not
    /// ignored, and the user may see it.
    fn shows(&self, count: u64, pdu: &Pdu) -> Result<bool> {
        let ctx = self.ctx;
        Ok(ctx.filters.timeline.matches(pdu)
            && !visibility::ignored(&ctx.ignored, pdu)
            && user_can_see(
                ctx.services,
                ctx.request.user,
                Some(self.membership),
                count,
                pdu,
            )?)
    }

    /// The `state` section: everything at the start of the timeline that the client has not
    /// seen; without a gap that is at most the members a lazy-loading client was not sent yet.
    fn state(&self, timeline: &Timeline, heroes: &[OwnedUserId]) -> Result<Vec<Value>> {
        let ctx = self.ctx;
        let services = ctx.services;
        let events = &timeline.events;
        let full = self.initial || timeline.limited;
        if !full && (!ctx.filters.lazy_members() || (events.is_empty() && heroes.is_empty())) {
            return Ok(Vec::new());
        }
        let lazy = self.lazy_members(timeline, heroes);
        let start = match events.first() {
            Some((_, first)) => state::state_before_timeline(services, first)?,
            None => services.rooms.state.get_room_state(self.shortroomid)?,
        };
        let snapshots = if full {
            Snapshots {
                start,
                seen: if self.initial {
                    None
                } else {
                    state::state_at_position(services, self.shortroomid, ctx.since)?
                },
                end: state::state_at_position(services, self.shortroomid, ctx.next())?,
                members_only: false,
            }
        } else {
            Snapshots {
                start,
                seen: None,
                end: None,
                members_only: true,
            }
        };
        snapshots.state_section(ctx, &self.membership.room_id, events, lazy.as_ref())
    }

    /// The members a lazy-loading sync sends: the timeline's senders, the summary's heroes, and
    /// the user's own membership with the full state and after a gap (otherwise the client has
    /// it from its last sync).
    fn lazy_members(&self, timeline: &Timeline, heroes: &[OwnedUserId]) -> Option<LazyMembers> {
        let ctx = self.ctx;
        let request = ctx.request;
        ctx.filters.lazy_members().then(|| {
            let own = (self.initial || timeline.limited).then(|| request.user.to_owned());
            LazyMembers {
                wanted: state::senders(&timeline.events)
                    .chain(own)
                    .chain(heroes.iter().cloned())
                    .collect(),
                known: if self.initial {
                    Default::default()
                } else {
                    ctx.services.sent_members.known(
                        request.user,
                        request.device,
                        &self.membership.room_id,
                    )
                },
                include_redundant: ctx.filters.include_redundant_members(),
            }
        })
    }
}

impl Timeline {
    /// The token `/messages` pages back from.
    fn prev_batch(&self, next: u64) -> String {
        match self.events.first() {
            // A timeline from the room's creation leaves nothing to page back to; its token is
            // the sync's position, as Synapse's is, so that `/members?at=` with it answers the
            // members the client knows at the end of this sync (Complement's
            // TestGetRoomMembersAtPoint).
            Some((_, first)) if first.kind == TimelineEventType::RoomCreate => format!("s{next}"),
            // A topological timeline's token is its first event's place in the DAG.
            Some((count, first)) if self.topological => format!("t{}_{count}", first.depth),
            // The stream just before the first event: `/messages` goes back from there.
            Some((count, _)) => format!("s{}", count.saturating_sub(1)),
            None => format!("s{next}"),
        }
    }
}

/// Whether an event changes what the room summary shows: a member, name or canonical alias
/// event.
fn changes_summary(pdu: &Pdu) -> bool {
    pdu.state_key.is_some()
        && matches!(
            pdu.kind,
            TimelineEventType::RoomMember
                | TimelineEventType::RoomName
                | TimelineEventType::RoomCanonicalAlias
        )
}

/// The member events of a joined room's entry as (member, event ID), its state first and then
/// its timeline in order, so that a member's last one comes last.
pub(super) fn member_events(room: &Value) -> Vec<(String, String)> {
    let mut members = Vec::new();
    for section in [
        "state",
        StateAfter::Stable.field(),
        StateAfter::Unstable.field(),
        "timeline",
    ] {
        for event in room[section]["events"].as_array().into_iter().flatten() {
            if event["type"] != StateEventType::RoomMember.to_string() {
                continue;
            }
            if let (Some(member), Some(event_id)) =
                (event["state_key"].as_str(), event["event_id"].as_str())
            {
                members.push((member.to_owned(), event_id.to_owned()));
            }
        }
    }
    members
}

/// A joined room's typing and receipt events: its typists when they changed after the token's
/// typing position, and the receipts set after `since` up to `next` (on an initial sync, the
/// current typists if any and every current receipt). Private receipts reach only their owner.
fn ephemeral_events(ctx: &SyncContext<'_>, room_id: &RoomId, initial: bool) -> Result<Vec<Value>> {
    let (services, filter) = (ctx.services, &ctx.filters.ephemeral);
    let mut events = Vec::new();
    if !filter.room_allowed(room_id.as_str()) {
        return Ok(events);
    }
    let since = ctx.request.since.filter(|_| !initial);
    if filter.matches_type("m.typing") {
        if let Some(mut users) = services
            .typing
            .get_changed(room_id, since.map(|token| token.typing))
        {
            users.retain(|user| !ctx.ignored.contains(user));
            events.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
    }
    if filter.matches_type("m.receipt") {
        let receipts =
            services
                .receipts
                .iter_since(room_id, since.map(|token| token.count), ctx.next())?;
        events.extend(receipts::sync_events(&receipts, ctx.request.user));
    }
    Ok(events)
}
