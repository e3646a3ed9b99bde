//! Events older than the timeline's start, added by backfill, and the backward extremities
//! (events the timeline names as prev events but does not hold) that tell where history is
//! missing.
//!
//! A backfilled event gets a stream position from the top half of the `u64` range
//! ([`BACKFILL_BASE`] and above, counting down from `u64::MAX`). Every stream reader (`/sync`,
//! device lists, sync tokens) scans below the current stream position, which never reaches that
//! range, so history that is new to this server but old in the room never shows up as new
//! events; `/messages` and `/context` walk the topological index (depth first), where a
//! backfilled event sits at its depth like any other.

use ruma::{events::TimelineEventType, CanonicalJsonObject, OwnedEventId, RoomId};
use serde_json::Value;

use super::{read, stored_json, topo_key, PduId, Timeline};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::Pdu, Services},
    store::{key, Batch},
};

/// The lowest stream position a backfilled event can have.
pub const BACKFILL_BASE: u64 = 1 << 63;

/// Whether a stream position belongs to a backfilled event.
pub fn is_backfilled(count: u64) -> bool {
    count >= BACKFILL_BASE
}

impl Timeline {
    /// Records in `batch` that `pdu` is in the timeline now: it stops being a backward extremity,
    /// and those of its prev events that the timeline does not hold become one.
    pub(super) fn note_backward_extremities(
        &self,
        shortroomid: u64,
        pdu: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        batch.remove(
            &self.roomeventid_backwardextremity,
            &extremity_key(shortroomid, &pdu.event_id),
        );
        for prev in &pdu.prev_events {
            if self.eventid_pduid.contains(prev.as_bytes())? {
                continue;
            }
            let entry = extremity_key(shortroomid, prev);
            let known = self
                .roomeventid_backwardextremity
                .get(&entry)?
                .and_then(|bytes| key::read_u64(&bytes))
                .unwrap_or(0);
            let depth = u64::from(pdu.depth).max(known);
            batch.insert(
                &self.roomeventid_backwardextremity,
                &entry,
                &key::u64_bytes(depth),
            );
        }
        Ok(())
    }

    /// A room's backward extremities, each with the depth of the deepest event naming it (the
    /// missing event itself is shallower). Entries whose event has since reached the timeline
    /// are left out.
    pub fn backward_extremities(&self, shortroomid: u64) -> Result<Vec<(OwnedEventId, u64)>> {
        let prefix = key::u64_bytes(shortroomid);
        let mut found = Vec::new();
        for entry in self.roomeventid_backwardextremity.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let Some(id) = db_key
                .get(8..)
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .and_then(|text| OwnedEventId::try_from(text).ok())
            else {
                continue;
            };
            if self.eventid_pduid.contains(id.as_bytes())? {
                continue;
            }
            found.push((id, key::read_u64(&value).unwrap_or(0)));
        }
        Ok(found)
    }
}

fn extremity_key(shortroomid: u64, event_id: &ruma::EventId) -> Vec<u8> {
    let mut entry = key::u64_bytes(shortroomid).to_vec();
    entry.extend_from_slice(event_id.as_bytes());
    entry
}

/// Writes one backfilled event into the timeline in one batch: the event at a stream position of
/// the backfill range, its state, its place in the topological, search and relation indexes,
/// and the redaction it makes. It leaves the room's current state, forward extremities and
/// membership index alone, wakes nobody, queues nothing for other servers and makes no
/// notification: the event is history, not news.
///
/// The caller holds the room lock and has run the auth checks against the state before it.
pub fn commit_backfilled(
    services: &Services,
    room_id: &RoomId,
    object: CanonicalJsonObject,
    pdu: &Pdu,
    state_before: Option<u64>,
) -> Result<u64> {
    let rooms = &services.rooms;
    let timeline = &rooms.timeline;
    let shortroomid = rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::internal("backfilling a room without a short ID"))?;
    let mut batch = Batch::default();
    let shorteventid = rooms
        .short
        .shorteventid_in_batch(&pdu.event_id, &mut batch)?;
    let mut unsigned = Value::Object(Default::default());
    let state_after = super::state_after_event(
        services,
        pdu,
        shorteventid,
        state_before,
        &mut unsigned,
        &mut batch,
    )?;
    if let Some(after) = state_after {
        rooms
            .state
            .set_event_state(shorteventid, state_before.unwrap_or(0), after, &mut batch);
    }
    batch.remove(&timeline.eventid_outlierpdu, pdu.event_id.as_bytes());
    timeline.note_backward_extremities(shortroomid, pdu, &mut batch)?;
    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            read::redact_in_batch(services, room_id, &target, pdu, &mut batch)?;
        }
    }
    let json = stored_json(object, pdu, unsigned)?;
    rooms
        .search
        .index_in_batch((shortroomid, shorteventid), pdu, &mut batch);
    rooms
        .relations
        .index_in_batch(shortroomid, pdu, true, &mut batch)?;
    rooms
        .timestamps
        .index_at_count(shortroomid, pdu, &mut batch);
    let stream = services
        .globals
        .write_with_count(|batch_with_count, stream| {
            // Counting down from the top: each later backfill reaches further into the past.
            let count = u64::MAX - stream;
            batch.set_count(count);
            let pdu_id = PduId { shortroomid, count };
            batch.insert(&timeline.pduid_pdu, &pdu_id.to_bytes(), &json);
            batch.insert(
                &timeline.eventid_pduid,
                pdu.event_id.as_bytes(),
                &pdu_id.to_bytes(),
            );
            batch.insert(
                &timeline.roomtopo_pduid,
                &topo_key(shortroomid, pdu, count),
                b"",
            );
            batch_with_count.append(std::mem::take(&mut batch));
            Ok(())
        })?;
    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            timeline.pdu_cache.lock().remove(&target);
        }
    }
    Ok(u64::MAX - stream)
}
