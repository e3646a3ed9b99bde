//! Events older than the timeline's start, added by backfill, and the backward extremities
//! (events the timeline names as prev events but does not hold) that tell where history is
//! missing.
//!
//! Backfilled events go through the one pipeline (`pipeline::commit`) in `Mode::History`.
//! A backfilled event gets a stream position from the top half of the `u64` range
//! ([`BACKFILL_BASE`] and above, counting down from `u64::MAX`). Every stream reader (`/sync`,
//! device lists, sync tokens) scans below the current stream position, which never reaches that
//! range, so history that is new to this server but old in the room never shows up as new
//! events; `/messages` and `/context` walk the topological index (depth first), where a
//! backfilled event sits at its depth like any other.

use ruma::OwnedEventId;

use super::Timeline;
use crate::{
    error::Result,
    service::rooms::pdu::Pdu,
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
