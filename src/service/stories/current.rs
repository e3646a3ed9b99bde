//! Each story room's current stories, kept in memory for the listing: the stream position,
//! timestamp, event ID and content of every unredacted story that was younger than the room's
//! lifetime when the entry was read from the index (the listing leaves out those that expired
//! since). A room's entry is read on its first listing (one seek into the index and one event
//! read per story) and dropped once a change to its stories is written: a story or a redaction
//! in the room (a commit effect), its retention policy, or a purge of its events. A reader that
//! read the index while such a change was being written does not keep what it read (the
//! generation counter), so an entry never outlives the change.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde_json::Value;

/// Past this many bytes of story content, the entries start again (contents are a few hundred
/// bytes each, and a story room lists at most [`super::MAX_LISTED`] of them).
const MAX_CACHED_BYTES: usize = 32 << 20;

/// One current story.
#[derive(Debug)]
pub struct Story {
    /// The stream position.
    pub count: u64,
    pub origin_server_ts: u64,
    pub event_id: OwnedEventId,
    pub content: Value,
}

/// A room's stories and the bytes of their contents.
type Entry = (Arc<Vec<Story>>, usize);

/// The entries and their upkeep.
#[derive(Default)]
pub struct Current {
    /// Per story room: its stories, newest first; and the bytes of all the entries' contents.
    rooms: Mutex<(HashMap<OwnedRoomId, Entry>, usize)>,
    /// Counts the entries dropped, so that a reader racing a drop does not keep an old entry.
    generation: AtomicU64,
}

impl Current {
    /// A room's entry, if one is kept.
    pub fn get(&self, room_id: &RoomId) -> Option<Arc<Vec<Story>>> {
        self.rooms
            .lock()
            .0
            .get(room_id)
            .map(|(stories, _)| Arc::clone(stories))
    }

    /// The generation before a reader reads the index; [`Self::keep`] takes it back.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps what a reader read since `generation`, unless an entry was dropped meanwhile.
    pub fn keep(&self, room_id: &RoomId, generation: u64, stories: Arc<Vec<Story>>) {
        let bytes: usize = stories
            .iter()
            .map(|story| story.content.to_string().len() + 64)
            .sum();
        let mut guard = self.rooms.lock();
        let (rooms, total) = &mut *guard;
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if *total + bytes > MAX_CACHED_BYTES {
            rooms.clear();
            *total = 0;
        }
        *total += bytes;
        if let Some((_, old)) = rooms.insert(room_id.to_owned(), (stories, bytes)) {
            *total = total.saturating_sub(old);
        }
    }

    /// Drops a room's entry, once a change to its stories is written.
    pub fn forget(&self, room_id: &RoomId) {
        let mut guard = self.rooms.lock();
        let (rooms, total) = &mut *guard;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some((_, old)) = rooms.remove(room_id) {
            *total = total.saturating_sub(old);
        }
    }
}
