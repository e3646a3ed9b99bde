//! A joined room in `/sync`: its timeline since the last sync (or, for a room new to the
//! client, its recent history), the state the client lacks, the room summary and the
//! ephemeral events.

use ruma::{
    events::{StateEventType, TimelineEventType},
    RoomId,
};
use serde_json::{json, Value};

use super::{
    state::{self, LazyMembers, Snapshots},
    SyncRequest,
};
use crate::{
    error::Result,
    service::{
        filter::RoomEventFilter,
        receipts,
        rooms::{
            members::RoomMembership,
            pdu::Pdu,
            relations::bundle::serve_event,
            timeline::{is_backfilled, read::TopoPos},
            visibility::{self, user_can_see},
        },
        Services,
    },
};

/// The room's entry in `rooms.join`, or `None` when nothing in it changed since `since`.
///
/// A room joined since the last sync is new to the client: like every room of an initial sync
/// it gets its full state and recent history from before `since`, and its timeline is
/// `limited` unless it reaches back to the room's creation, so that the client pages back over
/// the rest (as Synapse does; Complement's "Newly joined room has correct timeline in
/// incremental sync").
pub(super) fn joined_room(
    services: &Services,
    request: &SyncRequest<'_>,
    membership: &RoomMembership,
    (since, next): (u64, u64),
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
    let newly_joined = request.since.is_some() && membership.count > since;
    let initial = request.since.is_none() || request.full_state || newly_joined;
    let timeline_since = if newly_joined { 0 } else { since };
    // A limit of 0 is allowed: the room then comes with its state and an empty timeline.
    let limit = timeline_filter.limit.unwrap_or(10).min(1000);
    // The newest `limit` matching events after `timeline_since`, oldest first.
    let ignored = services.account_data.ignored_users(request.user)?;
    let mut events: Vec<(u64, Pdu)> = Vec::new();
    let mut limited = false;
    // Whether a scanned event, shown or not, changed the members or the room's name: the
    // summary is sent then.
    let mut summary_changed = false;
    // The batch ends at the newest gap in the timeline (`timeline/gaps.rs`), as a limited one.
    let mut gap = None;
    // An initial sync shows the room's recent history as its DAG orders it (by depth, as
    // `/messages` pages it), as Synapse does: an event received late but early in the DAG is
    // not among the newest there, and a state change it brought goes in `state` (Complement's
    // TestSyncOmitsStateChangeOnFilteredEvents). Incremental syncs go by stream position, so
    // that whatever arrived since `since` is shown.
    let topological = request.since.is_none();
    let entries: Box<dyn Iterator<Item = Result<(u64, Pdu)>>> = if topological {
        let top = TopoPos {
            depth: u64::MAX,
            count: u64::MAX,
        };
        Box::new(
            services
                .rooms
                .timeline
                .iter_topo(shortroomid, top, true)
                .map(|entry| entry.map(|(position, pdu)| (position.count, pdu)))
                .filter(|entry| {
                    !matches!(entry, Ok((count, _)) if *count > next && !is_backfilled(*count))
                }),
        )
    } else {
        Box::new(
            services
                .rooms
                .timeline
                .iter_before(shortroomid, next.saturating_add(1)),
        )
    };
    for entry in entries {
        let (count, pdu) = entry?;
        if count <= timeline_since {
            break;
        }
        let newest_gap = match gap {
            Some(known) => known,
            None => *gap.insert(services.rooms.timeline.newest_gap(
                shortroomid,
                timeline_since,
                next,
            )?),
        };
        if newest_gap.is_some_and(|gap_count| count < gap_count) {
            limited = true;
            break;
        }
        summary_changed |= pdu.state_key.is_some()
            && matches!(
                pdu.kind,
                TimelineEventType::RoomMember
                    | TimelineEventType::RoomName
                    | TimelineEventType::RoomCanonicalAlias
            );
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
    if newly_joined
        && events
            .first()
            .is_none_or(|(_, first)| first.kind != TimelineEventType::RoomCreate)
    {
        limited = true;
    }
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
        // A timeline from the room's creation leaves nothing to page back to; its token is the
        // sync's position, as Synapse's is, so that `/members?at=` with it answers the members
        // the client knows at the end of this sync (Complement's TestGetRoomMembersAtPoint).
        Some((_, first)) if first.kind == TimelineEventType::RoomCreate => format!("s{next}"),
        // A topological timeline's token is its first event's place in the DAG.
        Some((count, first)) if topological => format!("t{}_{count}", first.depth),
        // The stream just before the first event: `/messages` goes back from there.
        Some((count, _)) => format!("s{}", count.saturating_sub(1)),
        None => format!("s{next}"),
    };

    // The summary changes only with member, name and canonical alias events, so it is sent only
    // then (a limited timeline may have left them out) and on initial syncs; clients keep the
    // last values they saw.
    let (summary, heroes) = if initial || limited || summary_changed {
        state::summary(services, room_id, request.user)?
    } else {
        (json!({}), Vec::new())
    };
    let lazy = (timeline_filter.lazy_load_members || state_filter.lazy_load_members).then(|| {
        // The user's own membership goes with the full state and after a gap; otherwise the
        // client has it from its last sync.
        let own = (initial || limited).then(|| request.user.to_owned());
        let wanted = events
            .iter()
            .map(|(_, pdu)| pdu.sender.clone())
            .chain(own)
            .chain(heroes.iter().cloned())
            .collect();
        LazyMembers {
            wanted,
            known: if initial {
                Default::default()
            } else {
                services
                    .sent_members
                    .known(request.user, request.device, room_id)
            },
            include_redundant: timeline_filter.include_redundant_members
                || state_filter.include_redundant_members,
        }
    });
    let start = match events.first() {
        Some((_, first)) => state::state_before_timeline(services, first)?,
        None => services.rooms.state.get_room_state(shortroomid)?,
    };
    // State: everything at the start of the timeline that the client has not seen; without a
    // gap that is at most the members a lazy-loading client was not sent yet.
    let snapshots = if initial || limited {
        Some(Snapshots {
            start,
            seen: if initial {
                None
            } else {
                state::state_at_position(services, shortroomid, since)?
            },
            end: state::state_at_position(services, shortroomid, next)?,
            members_only: false,
        })
    } else {
        lazy.as_ref()
            .filter(|_| !events.is_empty() || !heroes.is_empty())
            .map(|_| Snapshots {
                start,
                seen: None,
                end: None,
                members_only: true,
            })
    };
    let state = match snapshots {
        Some(snapshots) => state::state_section(
            services,
            room_id,
            &snapshots,
            &events,
            state_filter,
            lazy.as_ref(),
        )?,
        None => Vec::new(),
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

/// The member events of a joined room's entry as (member, event ID), its state first and then
/// its timeline in order, so that a member's last one comes last.
pub(super) fn member_events(room: &Value) -> Vec<(String, String)> {
    let mut members = Vec::new();
    for section in ["state", "timeline"] {
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
