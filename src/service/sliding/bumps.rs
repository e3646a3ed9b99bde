//! Each room's `bump_stamp` (the stream position of its newest bump event), kept in memory so
//! that ranking a user's rooms costs no read per room.
//!
//! The commit pipeline reports every live event here (`note_event`, a step of
//! `timeline::steps::AT_COUNT`) under the global commit lock, before its stream position is
//! published: a response built on position `next` therefore finds every bump event up to `next`
//! already noted. A room is read from its timeline only the first time it is ranked after a
//! start (`stamp`), and the scan's result is merged so that it never undoes a newer note.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::events::TimelineEventType;

use crate::{error::Result, service::Services};

/// How many events back a room's newest bump event is looked for, at most, when it is first
/// ranked; a room whose recent events hold no bump keeps the oldest of them as its stamp.
const MAX_BUMP_SCAN: usize = 1000;

/// Per short room ID, the stream position of the room's newest bump event. A room missing here
/// has not been ranked since the start and has had no bump event since.
#[derive(Default)]
pub struct Bumps {
    stamps: Mutex<HashMap<u64, u64>>,
}

impl Bumps {
    /// Notes a live event committed at `count` (called under the commit lock, so positions come
    /// in order). Only a bump event changes a stamp; a room without a stamp gets one from its
    /// bump event alone, which is by definition its newest.
    pub fn note_event(&self, shortroomid: u64, count: u64, kind: &TimelineEventType) {
        if !is_bump(kind) {
            return;
        }
        let mut stamps = self.stamps.lock();
        let stamp = stamps.entry(shortroomid).or_insert(count);
        *stamp = (*stamp).max(count);
    }

    /// The stamps of `rooms` (short room IDs) as of stream position `next`, read from memory;
    /// only a room not ranked since the start (or one with a bump committed after `next`, while
    /// the response is built) is read from its timeline.
    pub fn stamps(&self, services: &Services, rooms: &[u64], next: u64) -> Result<Vec<u64>> {
        let known: Vec<Option<u64>> = {
            let stamps = self.stamps.lock();
            rooms
                .iter()
                .map(|room| stamps.get(room).copied().filter(|stamp| *stamp <= next))
                .collect()
        };
        let mut result = Vec::with_capacity(rooms.len());
        for (room, known) in rooms.iter().zip(known) {
            let stamp = match known {
                Some(stamp) => stamp,
                None => self.scan(services, *room, next)?,
            };
            result.push(stamp);
        }
        Ok(result)
    }

    /// Reads a room's stamp as of `next` from its timeline, and keeps it unless a newer bump
    /// was noted meanwhile.
    fn scan(&self, services: &Services, shortroomid: u64, next: u64) -> Result<u64> {
        let mut oldest_scanned = 0;
        let mut found = None;
        let timeline = &services.rooms.timeline;
        for entry in timeline
            .iter_before(shortroomid, next.saturating_add(1))
            .take(MAX_BUMP_SCAN)
        {
            let (count, pdu) = entry?;
            oldest_scanned = count;
            if is_bump(&pdu.kind) {
                found = Some(count);
                break;
            }
        }
        let stamp = found.unwrap_or(oldest_scanned);
        let mut stamps = self.stamps.lock();
        let kept = stamps.entry(shortroomid).or_insert(stamp);
        if *kept > next {
            // A bump committed after `next`: the kept stamp is the newer one, this response
            // still reports the room as of `next`.
            return Ok(stamp);
        }
        *kept = (*kept).max(stamp);
        Ok(*kept)
    }
}

/// Whether an event moves its room up the list (MSC4186's default bump event types).
pub(super) fn is_bump(kind: &TimelineEventType) -> bool {
    matches!(
        kind,
        TimelineEventType::RoomCreate
            | TimelineEventType::RoomMessage
            | TimelineEventType::RoomEncrypted
            | TimelineEventType::Sticker
            | TimelineEventType::CallInvite
    ) || matches!(
        // By name: ruma has variants for these only under unstable features, which the server
        // build does not enable (the tests' matrix-sdk does, so a variant would compile there).
        kind.to_string().as_str(),
        "m.poll.start"
            | "org.matrix.msc3381.poll.start"
            | "m.beacon"
            | "org.matrix.msc3672.beacon"
            | "org.matrix.msc3401.call"
    )
}
