//! Deleting a room's events for server admins: old history (`purge-history`, Synapse's
//! `purge_history`), or every event of a room being deleted (`rooms delete --purge`).
//!
//! An event is taken out of the timeline's stream and topological indexes, its event-ID index,
//! the parsed-event cache, and the search and relation indexes, in one batch under the room
//! lock, so `/messages`, `/sync`, `/context`, search and relations no longer find it. The
//! timestamp index keeps its entry (its readers skip positions without an event), and the
//! short event ID and state snapshots stay: state is made of short IDs, and other rooms' state
//! may share snapshots.

use std::collections::BTreeSet;

use ruma::{events::TimelineEventType, RoomId, ServerName};

use crate::{
    error::{Error, Result},
    service::{
        rooms::{pdu::Pdu, timeline::BACKFILL_BASE},
        stats::Counter,
        Services,
    },
    store::{key, Batch},
};

/// Which events a history purge deletes.
#[derive(Clone, Copy, Debug)]
pub struct HistoryPurge<'a> {
    /// Events sent before this time (ms since the epoch) are deleted.
    pub before_ts: u64,
    /// When set, events of this server's users are kept (Synapse's default for its API).
    pub keep_from: Option<&'a ServerName>,
}

/// Deletes a room's events sent before `purge.before_ts`, except state events (the room's
/// state must stay whole), the room's newest event (its forward extremity) and, with
/// `keep_from`, that server's users' events. Answers how many were deleted;
/// `M_NOT_FOUND` for a room this server does not know.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn purge_history(
    services: &Services,
    room_id: &RoomId,
    purge: HistoryPurge<'_>,
) -> Result<usize> {
    let shortroomid = known_room(services, room_id)?;
    let newest = newest_count(services, shortroomid)?;
    delete_events(services, room_id, shortroomid, |count, pdu| {
        pdu.state_key.is_none()
            && Some(count) != newest
            && u64::from(pdu.origin_server_ts.get()) < purge.before_ts
            && purge
                .keep_from
                .is_none_or(|server| pdu.sender.server_name() != server)
    })
}

/// Deletes every event of a room but the member events of this server's users (their clients'
/// syncs still read their leave), for a room being deleted after its local users left.
/// Answers how many were deleted.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn purge_room(services: &Services, room_id: &RoomId) -> Result<usize> {
    let shortroomid = known_room(services, room_id)?;
    let server_name = services.globals.server_name();
    delete_events(services, room_id, shortroomid, |_, pdu| {
        let local_member = pdu.kind == TimelineEventType::RoomMember
            && pdu
                .state_key
                .as_deref()
                .and_then(|key| ruma::UserId::parse(key).ok())
                .is_some_and(|user| user.server_name() == server_name);
        !local_member
    })
}

/// The short ID of a room this server has events of; `M_NOT_FOUND` otherwise.
fn known_room(services: &Services, room_id: &RoomId) -> Result<u64> {
    services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} is unknown to this server")))
}

/// The stream position of the room's newest event in live order (not backfilled history).
pub(super) fn newest_count(services: &Services, shortroomid: u64) -> Result<Option<u64>> {
    match services
        .rooms
        .timeline
        .iter_before(shortroomid, BACKFILL_BASE)
        .next()
    {
        Some(entry) => Ok(Some(entry?.0)),
        None => Ok(None),
    }
}

/// Deletes the room's events that `doomed` picks (given the stream position and event), in
/// one batch written under the room lock; answers how many.
fn delete_events(
    services: &Services,
    room_id: &RoomId,
    shortroomid: u64,
    doomed: impl Fn(u64, &Pdu) -> bool,
) -> Result<usize> {
    let timeline = &services.rooms.timeline;
    let lock = timeline.room_lock(room_id);
    let _guard = lock.lock();
    let mut doomed_events = Vec::new();
    for entry in timeline.iter_before(shortroomid, u64::MAX) {
        let (count, pdu) = entry?;
        if doomed(count, &pdu) {
            doomed_events.push((count, pdu));
        }
    }
    let leaving: BTreeSet<u64> = doomed_events.iter().map(|(count, _)| *count).collect();
    let mut batch = Batch::default();
    for (count, pdu) in &doomed_events {
        remove_in_batch(services, shortroomid, *count, pdu, &leaving, &mut batch)?;
    }
    let deleted: Vec<Pdu> = doomed_events.into_iter().map(|(_, pdu)| pdu).collect();
    write_deleted(services, batch, &deleted)?;
    Ok(deleted.len())
}

/// Takes one timeline event out of the stream and topological indexes, its event-ID index and
/// the search and relation indexes, in `batch` (the caller holds the room lock). `leaving` holds
/// the stream positions of every event `batch` removes.
pub(super) fn remove_in_batch(
    services: &Services,
    shortroomid: u64,
    count: u64,
    pdu: &Pdu,
    leaving: &BTreeSet<u64>,
    batch: &mut Batch,
) -> Result<()> {
    let rooms = &services.rooms;
    let timeline = &rooms.timeline;
    let position = [key::u64_bytes(shortroomid), key::u64_bytes(count)].concat();
    batch.remove(&timeline.pduid_pdu, &position);
    batch.remove(&timeline.eventid_pduid, pdu.event_id.as_bytes());
    let topo = [
        key::u64_bytes(shortroomid),
        key::u64_bytes(u64::from(pdu.depth)),
        key::u64_bytes(count),
    ]
    .concat();
    batch.remove(&timeline.roomtopo_pduid, &topo);
    let content = pdu.content_value();
    rooms
        .search
        .remove_in_batch((shortroomid, count), &pdu.kind.to_string(), &content, batch);
    rooms
        .relations
        .unindex_in_batch(shortroomid, &content, count, leaving, batch)
}

/// Writes a batch that removed `deleted` (each through [`remove_in_batch`]) with the event
/// counters of `server stats` lowered to match, and drops them from the parsed-event cache (and
/// their rooms' current stories from the stories listing's).
pub(super) fn write_deleted(services: &Services, mut batch: Batch, deleted: &[Pdu]) -> Result<()> {
    let timeline = &services.rooms.timeline;
    let server_name = services.globals.server_name();
    let local = deleted
        .iter()
        .filter(|pdu| pdu.sender.server_name() == server_name)
        .count();
    {
        // The event counters of `server stats` go down in the same batch, under the commit lock
        // that every other writer of them holds (taken after the room lock, as commits do).
        let _commit = services.globals.commit_lock.lock();
        let negative = |n: usize| -i64::try_from(n).unwrap_or(i64::MAX);
        services
            .stats
            .add_in_batch(Counter::Events, negative(deleted.len()), &mut batch)?;
        services
            .stats
            .add_in_batch(Counter::LocalEvents, negative(local), &mut batch)?;
        timeline.write(batch)?;
    }
    let mut cache = timeline.pdu_cache.lock();
    for pdu in deleted {
        cache.remove(&pdu.event_id);
    }
    drop(cache);
    let mut rooms: Vec<&RoomId> = deleted
        .iter()
        .filter_map(|pdu| pdu.room_id.as_deref())
        .collect();
    rooms.dedup();
    for room_id in rooms {
        services.stories.current.drop_now(room_id);
    }
    tracing::info!(deleted = deleted.len(), "purged events");
    Ok(())
}
