//! The stories index: each story room's current stories by stream position, and what is
//! constant about a room for the listing (whether it is a story room, its owner, its lifetime).
//!
//! `storyroomcount_ts` gets one key per message the owner of a story room sends, from a step of
//! `timeline::commit`'s batch (live events only: the listing never showed backfilled ones); the
//! step of a redaction removes its target's key, and so does the retention purge. A listing
//! reads a room's keys newest first and stops at the first expired one, so its cost is one seek
//! per room plus the stories themselves. An admin purge leaves keys whose events are gone;
//! readers skip them.
//!
//! The room facts are cached in memory: the create event never changes, and a room's
//! `m.room.retention` event drops its entry (a commit effect). A reader that looked the facts
//! up while such an event was being committed does not cache what it read (a
//! `store::WrittenCache`), so the cache never keeps an old lifetime.

use std::sync::Arc;

use ruma::{
    events::{StateEventType, TimelineEventType},
    OwnedRoomId, OwnedUserId, RoomId,
};

use crate::{
    error::Result,
    service::{
        rooms::{pdu::Pdu, retention},
        Services,
    },
    store::{key, Batch, Db, Tree, WrittenCache},
};

/// Past this many rooms the cache of room facts starts again (each entry is a few dozen bytes).
const MAX_CACHED_ROOMS: usize = 200_000;
/// The key that says the index holds the stories of a database from before it existed.
const FILLED_MARKER: &[u8] = b"filled";

/// What the listing needs of a story room, constant for the room (the lifetime until its next
/// `m.room.retention` event).
#[derive(Clone, Debug)]
pub struct StoryRoom {
    pub shortroomid: u64,
    /// The sender of the room's create event.
    pub owner: OwnedUserId,
    /// The room's `max_lifetime` in ms (`retention::max_lifetime`).
    pub lifetime: Option<u64>,
}

/// The index and the room facts.
pub struct Stories {
    /// `shortroomid, stream position` (big-endian u64s) → `origin_server_ts` (big-endian u64):
    /// the messages of story rooms' owners, until redacted or purged.
    storyroomcount_ts: Tree,
    /// Per room: `Some` for a story room, `None` for any other room.
    facts: Arc<WrittenCache<OwnedRoomId, Option<StoryRoom>>>,
    /// Each story room's current stories, for the listing.
    pub current: Arc<super::current::Current>,
}

impl Stories {
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            storyroomcount_ts: db.tree("storyroomcount_ts"),
            facts: WrittenCache::new(MAX_CACHED_ROOMS),
            current: super::current::new(),
        }
    }

    /// The facts of a story room; `None` for another room or one this server has no create
    /// event of.
    pub fn story_room(&self, services: &Services, room_id: &RoomId) -> Result<Option<StoryRoom>> {
        if let Some(facts) = self.facts.get(room_id) {
            return Ok(facts);
        }
        let read_at = self.facts.read_started();
        let rooms = &services.rooms;
        let Some(create) = rooms.current_state_pdu(room_id, &StateEventType::RoomCreate, "")?
        else {
            return Ok(None);
        };
        let facts = if create.content_value()["type"] == retention::STORY_ROOM_TYPE {
            let Some(shortroomid) = rooms.short.get_shortroomid(room_id)? else {
                return Ok(None);
            };
            Some(StoryRoom {
                shortroomid,
                owner: create.sender,
                lifetime: retention::max_lifetime(services, room_id)?,
            })
        } else {
            None
        };
        self.facts.store(room_id.to_owned(), facts.clone(), read_at);
        Ok(facts)
    }

    /// A step of `timeline::commit` (live events): indexes a message of a story room's owner,
    /// and removes the target of a redaction in a story room from the index.
    pub fn index_in_batch(
        &self,
        services: &Services,
        room_id: &RoomId,
        pdu: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        let message = pdu.kind == TimelineEventType::RoomMessage && pdu.state_key.is_none();
        let redaction = pdu.kind == TimelineEventType::RoomRedaction;
        if !message && !redaction {
            return Ok(());
        }
        let Some(room) = self.story_room(services, room_id)? else {
            return Ok(());
        };
        if message && pdu.sender == room.owner {
            let ts = u64::from(pdu.origin_server_ts.get());
            batch.insert_at_count(
                &self.storyroomcount_ts,
                &key::u64_bytes(room.shortroomid),
                &key::u64_bytes(ts),
            );
        }
        if let Some(target) = pdu.redacts_id().filter(|_| redaction) {
            let timeline = &services.rooms.timeline;
            if let Some(pdu_id) = timeline.get_pdu_id(&target)? {
                if pdu_id.shortroomid == room.shortroomid {
                    self.remove_in_batch(pdu_id.shortroomid, pdu_id.count, batch);
                }
            }
        }
        Ok(())
    }

    /// Removes an event's key (the retention purge deleting it).
    pub fn remove_in_batch(&self, shortroomid: u64, count: u64, batch: &mut Batch) {
        batch.remove(&self.storyroomcount_ts, &story_key(shortroomid, count));
    }

    /// An effect of `timeline::commit`: a room's `m.room.retention` event drops its facts and
    /// its current stories; a message or a redaction in a story room drops its current stories.
    pub fn after_commit(&self, room_id: &RoomId, pdu: &Pdu) {
        if pdu.state_key.as_deref() == Some("")
            && pdu.kind.to_string() == retention::RETENTION_EVENT
        {
            self.facts.drop_now(room_id);
            self.current.drop_now(room_id);
            return;
        }
        let changes_stories = matches!(
            pdu.kind,
            TimelineEventType::RoomMessage | TimelineEventType::RoomRedaction
        );
        // `index_in_batch` looked the facts up; should they have left the cache since, the
        // room counts as a story room.
        let other_room = self.facts.get(room_id).is_some_and(|facts| facts.is_none());
        if changes_stories && !other_room {
            self.current.drop_now(room_id);
        }
    }

    /// A story room's indexed stories younger than its lifetime at `now`, newest first, as
    /// (stream position, timestamp).
    pub fn iter_current(
        &self,
        room: &StoryRoom,
        now: u64,
    ) -> impl Iterator<Item = Result<(u64, u64)>> + '_ {
        let prefix = key::u64_bytes(room.shortroomid);
        let lifetime = room.lifetime;
        self.storyroomcount_ts
            .iter_from(&story_key(room.shortroomid, u64::MAX), true)
            .map_while(move |entry| match entry {
                Ok((entry, value)) => {
                    let count = entry
                        .strip_prefix(&prefix)
                        .filter(|rest| rest.len() == 8)
                        .and_then(key::read_u64)?;
                    let ts = key::read_u64(&value)?;
                    let expired = lifetime.is_some_and(|ms| ts.saturating_add(ms) <= now);
                    (!expired).then_some(Ok((count, ts)))
                }
                Err(error) => Some(Err(error)),
            })
    }

    /// Indexes the stories of a database written before the index existed: once (a marker key
    /// says it is done), each story room's owner messages among its newest
    /// [`super::MAX_LISTED`] live events.
    pub fn fill_if_needed(&self, services: &Services) -> Result<()> {
        if self.storyroomcount_ts.contains(FILLED_MARKER)? {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut indexed = 0usize;
        for room_id in services.rooms.short.iter_room_ids() {
            let room_id = room_id?;
            let Some(room) = self.story_room(services, &room_id)? else {
                continue;
            };
            let timeline = &services.rooms.timeline;
            let base = crate::service::rooms::timeline::BACKFILL_BASE;
            for entry in timeline
                .iter_before(room.shortroomid, base)
                .take(super::MAX_LISTED)
            {
                let (count, pdu) = entry?;
                if pdu.kind == TimelineEventType::RoomMessage
                    && pdu.state_key.is_none()
                    && pdu.sender == room.owner
                {
                    let ts = u64::from(pdu.origin_server_ts.get());
                    batch.insert(
                        &self.storyroomcount_ts,
                        &story_key(room.shortroomid, count),
                        &key::u64_bytes(ts),
                    );
                    indexed += 1;
                }
            }
        }
        batch.insert(&self.storyroomcount_ts, FILLED_MARKER, b"");
        self.storyroomcount_ts.db().write(batch)?;
        if indexed > 0 {
            tracing::info!(indexed, "indexed existing stories");
        }
        Ok(())
    }
}

/// A story's key: the room and the stream position, big-endian.
fn story_key(shortroomid: u64, count: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&key::u64_bytes(shortroomid));
    bytes[8..].copy_from_slice(&key::u64_bytes(count));
    bytes
}
