//! Each story room's current stories, kept in memory for the listing: the stream position,
//! timestamp, event ID and content of every unredacted story that was younger than the room's
//! lifetime when the entry was read from the index (the listing leaves out those that expired
//! since). A room's entry is read on its first listing (one seek into the index and one event
//! read per story) and dropped once a change to its stories is written: a story or a redaction
//! in the room (a commit effect), its retention policy, or a purge of its events. A reader that
//! read the index while such a change was being written does not keep what it read (the
//! generation counter), so an entry never outlives the change.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::Value;

use crate::store::WrittenCache;

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

/// Per story room: its stories, newest first, weighed by the bytes of their contents.
pub type Current = WrittenCache<OwnedRoomId, Arc<Vec<Story>>>;

/// The entries, empty.
pub fn new() -> Arc<Current> {
    WrittenCache::weighed(MAX_CACHED_BYTES, |stories| {
        stories
            .iter()
            .map(|story| story.content.to_string().len() + 64)
            .sum()
    })
}
