//! Gaps in a room's timeline: events received after history this server never got (their prev
//! events arrived neither before nor with them, and their state came from another server).
//! `/sync` ends a timeline batch at the newest gap and marks it `limited`, so that a client does
//! not show the events on either side of the gap as adjacent and can page back with
//! `prev_batch` (`/messages` backfills the missing part).

use super::Timeline;
use crate::{
    error::Result,
    service::{rooms::pdu::Pdu, Services},
    store::{key, Batch},
};

impl Timeline {
    /// Marks `pdu` in `batch` (at its stream position) as the first event after a gap when one
    /// of its prev events is neither in the timeline nor rejected. The first event of a room on
    /// this server (`had_extremities` false, as for a join over federation) starts the timeline
    /// instead. A soft-failed prev event counts as missing: the client never saw it either.
    pub(super) fn note_gap(
        &self,
        services: &Services,
        shortroomid: u64,
        pdu: &Pdu,
        had_extremities: bool,
        batch: &mut Batch,
    ) -> Result<()> {
        if !had_extremities {
            return Ok(());
        }
        for prev in &pdu.prev_events {
            if self.eventid_pduid.contains(prev.as_bytes())?
                || services.rooms.rejected.is_rejected(prev)?
            {
                continue;
            }
            batch.insert_at_count(&self.roomcount_gap, &key::u64_bytes(shortroomid), b"");
            break;
        }
        Ok(())
    }

    /// The stream position of the newest event after a gap in `(since, upto]`, if any.
    pub fn newest_gap(&self, shortroomid: u64, since: u64, upto: u64) -> Result<Option<u64>> {
        let mut start = key::u64_bytes(shortroomid).to_vec();
        start.extend_from_slice(&upto.to_be_bytes());
        let Some(entry) = self.roomcount_gap.iter_from(&start, true).next() else {
            return Ok(None);
        };
        let (db_key, _) = entry?;
        let room = db_key.get(..8).and_then(key::read_u64);
        let count = db_key.get(8..).and_then(key::read_u64);
        Ok(match (room, count) {
            (Some(room), Some(count)) if room == shortroomid && count > since => Some(count),
            _ => None,
        })
    }
}
