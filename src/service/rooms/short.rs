//! Numeric short IDs for event IDs, room IDs, state keys and state snapshots, so that state sets
//! and indexes store 8-byte numbers instead of strings.
//!
//! Numeric short IDs for events, rooms, state keys and state snapshots.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use ruma::{events::StateEventType, EventId, OwnedEventId, OwnedRoomId, RoomId};

use crate::{
    error::{Error, Result},
    service::stats::{Counter, Counters},
    store::{key, Batch, Db, Tree},
};

/// Owns `eventid_shorteventid` (event ID → u64), `shorteventid_eventid` (u64 → event ID),
/// `roomid_shortroomid` (room ID → u64), `shortroomid_roomid` (u64 → room ID),
/// `statekey_shortstatekey` (type 0xff state_key → u64) and `shortstatekey_statekey` (the reverse).
/// All short IDs, including state snapshot hashes, come from one counter, recovered on open as the
/// largest ID in any reverse tree.
pub struct ShortIds {
    eventid_shorteventid: Tree,
    shorteventid_eventid: Tree,
    roomid_shortroomid: Tree,
    shortroomid_roomid: Tree,
    statekey_shortstatekey: Tree,
    shortstatekey_statekey: Tree,
    next: AtomicU64,
    /// The `Rooms` counter of `server stats`, written with each new room.
    counters: Counters,
    create_lock: Mutex<()>,
    room_cache: Mutex<HashMap<OwnedRoomId, u64>>,
    statekey_cache: Mutex<HashMap<(StateEventType, String), u64>>,
}

impl ShortIds {
    /// Opens the trees and recovers the counter; `extra` lists other trees keyed by short IDs.
    pub fn open(db: &Arc<Db>, extra: &[&Tree]) -> Result<Self> {
        let shorteventid_eventid = db.tree("shorteventid_eventid");
        let shortroomid_roomid = db.tree("shortroomid_roomid");
        let shortstatekey_statekey = db.tree("shortstatekey_statekey");
        let mut max = 0;
        for tree in [
            &shorteventid_eventid,
            &shortroomid_roomid,
            &shortstatekey_statekey,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            if let Some(entry) = tree.iter_from(&[0xff; 9], true).next() {
                max = max.max(key::read_u64(&entry?.0).unwrap_or(0));
            }
        }
        Ok(Self {
            eventid_shorteventid: db.tree("eventid_shorteventid"),
            shorteventid_eventid,
            roomid_shortroomid: db.tree("roomid_shortroomid"),
            shortroomid_roomid,
            statekey_shortstatekey: db.tree("statekey_shortstatekey"),
            shortstatekey_statekey,
            next: AtomicU64::new(max + 1),
            counters: Counters::open(db),
            create_lock: Mutex::new(()),
            room_cache: Mutex::new(HashMap::new()),
            statekey_cache: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh short ID that no tree uses yet.
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// The short ID of an event, if it has one.
    pub fn get_shorteventid(&self, event_id: &EventId) -> Result<Option<u64>> {
        Ok(self
            .eventid_shorteventid
            .get(event_id.as_bytes())?
            .and_then(|bytes| key::read_u64(&bytes)))
    }

    /// The short ID of an event, adding the mapping to `batch` when it is new.
    pub fn shorteventid_in_batch(&self, event_id: &EventId, batch: &mut Batch) -> Result<u64> {
        if let Some(short) = self.get_shorteventid(event_id)? {
            return Ok(short);
        }
        let short = self.allocate();
        batch.insert(
            &self.eventid_shorteventid,
            event_id.as_bytes(),
            &key::u64_bytes(short),
        );
        batch.insert(
            &self.shorteventid_eventid,
            &key::u64_bytes(short),
            event_id.as_bytes(),
        );
        Ok(short)
    }

    /// The short ID of an event, created (and written at once) when missing: for an event that
    /// enters a state snapshot outside the commit of the event itself.
    pub fn get_or_create_shorteventid(&self, event_id: &EventId) -> Result<u64> {
        if let Some(short) = self.get_shorteventid(event_id)? {
            return Ok(short);
        }
        let _guard = self.create_lock.lock();
        let mut batch = Batch::default();
        let short = self.shorteventid_in_batch(event_id, &mut batch)?;
        self.eventid_shorteventid.db().write(batch)?;
        Ok(short)
    }

    /// The event ID behind a short ID.
    pub fn get_eventid(&self, short: u64) -> Result<OwnedEventId> {
        let bytes = self
            .shorteventid_eventid
            .get(&key::u64_bytes(short))?
            .ok_or_else(|| Error::corrupt("shorteventid_eventid", short))?;
        let text =
            String::from_utf8(bytes).map_err(|e| Error::corrupt("shorteventid_eventid", e))?;
        OwnedEventId::try_from(text).map_err(|e| Error::corrupt("shorteventid_eventid", e))
    }

    /// The short ID of a room, if the server knows the room.
    pub fn get_shortroomid(&self, room_id: &RoomId) -> Result<Option<u64>> {
        if let Some(short) = self.room_cache.lock().get(room_id) {
            return Ok(Some(*short));
        }
        let short = self
            .roomid_shortroomid
            .get(room_id.as_bytes())?
            .and_then(|bytes| key::read_u64(&bytes));
        if let Some(short) = short {
            self.room_cache.lock().insert(room_id.to_owned(), short);
        }
        Ok(short)
    }

    /// Every room with a short ID, in room ID order: the rooms this server has or had state of,
    /// and rooms it only heard of (callers check for state).
    pub fn iter_room_ids(&self) -> impl Iterator<Item = Result<OwnedRoomId>> + '_ {
        self.roomid_shortroomid.iter_prefix(b"").map(|entry| {
            let (room_key, _) = entry?;
            let text = String::from_utf8(room_key.to_vec())
                .map_err(|e| Error::corrupt("roomid_shortroomid", e))?;
            OwnedRoomId::try_from(text).map_err(|e| Error::corrupt("roomid_shortroomid", e))
        })
    }

    /// The short ID of a room, created (and written at once) when missing.
    pub fn get_or_create_shortroomid(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(short) = self.get_shortroomid(room_id)? {
            return Ok(short);
        }
        let _guard = self.create_lock.lock();
        if let Some(short) = self.get_shortroomid(room_id)? {
            return Ok(short);
        }
        let short = self.allocate();
        let mut batch = Batch::default();
        batch.insert(
            &self.roomid_shortroomid,
            room_id.as_bytes(),
            &key::u64_bytes(short),
        );
        batch.insert(
            &self.shortroomid_roomid,
            &key::u64_bytes(short),
            room_id.as_bytes(),
        );
        // Counted under the create lock, which every new room takes.
        self.counters.add_in_batch(Counter::Rooms, 1, &mut batch)?;
        self.roomid_shortroomid.db().write(batch)?;
        Ok(short)
    }

    /// The short ID of a (type, state_key) pair, if any event used it.
    pub fn get_shortstatekey(
        &self,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<u64>> {
        let cache_key = (event_type.clone(), state_key.to_owned());
        if let Some(short) = self.statekey_cache.lock().get(&cache_key) {
            return Ok(Some(*short));
        }
        let db_key = key::join(&[event_type.to_string().as_bytes(), state_key.as_bytes()]);
        let short = self
            .statekey_shortstatekey
            .get(&db_key)?
            .and_then(|bytes| key::read_u64(&bytes));
        if let Some(short) = short {
            let mut cache = self.statekey_cache.lock();
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(cache_key, short);
        }
        Ok(short)
    }

    /// The short ID of a (type, state_key) pair, created (and written at once) when missing.
    pub fn get_or_create_shortstatekey(
        &self,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<u64> {
        if let Some(short) = self.get_shortstatekey(event_type, state_key)? {
            return Ok(short);
        }
        let _guard = self.create_lock.lock();
        if let Some(short) = self.get_shortstatekey(event_type, state_key)? {
            return Ok(short);
        }
        let short = self.allocate();
        let db_key = key::join(&[event_type.to_string().as_bytes(), state_key.as_bytes()]);
        let mut batch = Batch::default();
        batch.insert(
            &self.statekey_shortstatekey,
            &db_key,
            &key::u64_bytes(short),
        );
        batch.insert(
            &self.shortstatekey_statekey,
            &key::u64_bytes(short),
            &db_key,
        );
        self.statekey_shortstatekey.db().write(batch)?;
        Ok(short)
    }

    /// The (type, state_key) pair of a short state key.
    pub fn get_statekey(&self, short: u64) -> Result<(StateEventType, String)> {
        let bytes = self
            .shortstatekey_statekey
            .get(&key::u64_bytes(short))?
            .ok_or_else(|| Error::corrupt("shortstatekey_statekey", format!("missing {short}")))?;
        let mut parts = key::split(&bytes);
        let event_type = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let state_key = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        Ok((StateEventType::from(event_type), state_key))
    }
}
