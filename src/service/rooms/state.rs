//! Room state as shared snapshots: each snapshot is a delta over a parent, so a state event costs
//! one small record instead of a copy of the whole room state.
//!
//! State snapshots as deltas over a parent (at most 24 deep, then a full snapshot), and the state before and after each event.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;

use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// A full state set: short state key → short event ID.
pub type StateSet = BTreeMap<u64, u64>;

/// Longest chain of deltas before a snapshot is stored in full, bounding the cost of a load.
const MAX_DELTA_DEPTH: u64 = 24;
/// How many materialised snapshots stay in memory.
const CACHE_ENTRIES: usize = 512;

/// Owns `shortstatehash_statediff` (u64 → parent u64, depth u64, count of added u64, added pairs,
/// removed pairs; pairs are 16 bytes: short state key, short event ID), `shorteventid_shortstatehash`
/// (u64 → state before u64, state after u64) and `roomid_shortstatehash` (short room ID u64 → current u64).
pub struct RoomState {
    shortstatehash_statediff: Tree,
    shorteventid_shortstatehash: Tree,
    roomid_shortstatehash: Tree,
    cache: Mutex<HashMap<u64, (u64, Arc<StateSet>)>>,
}

impl RoomState {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            shortstatehash_statediff: db.tree("shortstatehash_statediff"),
            shorteventid_shortstatehash: db.tree("shorteventid_shortstatehash"),
            roomid_shortstatehash: db.tree("roomid_shortstatehash"),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tree whose keys are short IDs, for counter recovery.
    pub fn snapshot_tree(&self) -> &Tree {
        &self.shortstatehash_statediff
    }

    /// The full state set of a snapshot.
    pub fn load(&self, shortstatehash: u64) -> Result<Arc<StateSet>> {
        Ok(self.load_with_depth(shortstatehash)?.1)
    }

    fn load_with_depth(&self, shortstatehash: u64) -> Result<(u64, Arc<StateSet>)> {
        if let Some(hit) = self.cache.lock().get(&shortstatehash) {
            return Ok(hit.clone());
        }
        let bytes = self
            .shortstatehash_statediff
            .get(&key::u64_bytes(shortstatehash))?
            .ok_or_else(|| {
                Error::corrupt(
                    "shortstatehash_statediff",
                    format!("missing snapshot {shortstatehash}"),
                )
            })?;
        let (parent, depth, added, removed) = decode_diff(&bytes)?;
        let mut set = if parent == 0 {
            StateSet::new()
        } else {
            (*self.load(parent)?).clone()
        };
        for (state_key, _) in removed {
            set.remove(&state_key);
        }
        set.extend(added);
        let entry = (depth, Arc::new(set));
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(shortstatehash, entry.clone());
        Ok(entry)
    }

    /// Stores `set` as a new snapshot (a delta over `parent` when that stays cheap) in `batch` and
    /// returns its short hash; `new_id` is a fresh short ID.
    pub fn store_snapshot(
        &self,
        new_id: u64,
        parent: Option<u64>,
        set: StateSet,
        batch: &mut Batch,
    ) -> Result<u64> {
        let (parent_id, depth, added, removed) = match parent {
            Some(parent_id) => {
                let (parent_depth, parent_set) = self.load_with_depth(parent_id)?;
                if parent_depth + 1 > MAX_DELTA_DEPTH {
                    (
                        0,
                        0,
                        set.iter().map(|(k, v)| (*k, *v)).collect(),
                        Vec::new(),
                    )
                } else {
                    let added: Vec<_> = set
                        .iter()
                        .filter(|(k, v)| parent_set.get(k) != Some(v))
                        .map(|(k, v)| (*k, *v))
                        .collect();
                    let removed: Vec<_> = parent_set
                        .iter()
                        .filter(|(k, _)| !set.contains_key(k))
                        .map(|(k, v)| (*k, *v))
                        .collect();
                    (parent_id, parent_depth + 1, added, removed)
                }
            }
            None => (
                0,
                0,
                set.iter().map(|(k, v)| (*k, *v)).collect(),
                Vec::new(),
            ),
        };
        batch.insert(
            &self.shortstatehash_statediff,
            &key::u64_bytes(new_id),
            &encode_diff(parent_id, depth, &added, &removed),
        );
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(new_id, (depth, Arc::new(set)));
        Ok(new_id)
    }

    /// Records the state before and after an event.
    pub fn set_event_state(&self, shorteventid: u64, before: u64, after: u64, batch: &mut Batch) {
        let mut value = key::u64_bytes(before).to_vec();
        value.extend_from_slice(&key::u64_bytes(after));
        batch.insert(
            &self.shorteventid_shortstatehash,
            &key::u64_bytes(shorteventid),
            &value,
        );
    }

    /// The state snapshots before and after an event.
    pub fn get_event_state(&self, shorteventid: u64) -> Result<Option<(u64, u64)>> {
        let Some(bytes) = self
            .shorteventid_shortstatehash
            .get(&key::u64_bytes(shorteventid))?
        else {
            return Ok(None);
        };
        match (
            key::read_u64(&bytes),
            bytes.get(8..).and_then(key::read_u64),
        ) {
            (Some(before), Some(after)) => Ok(Some((before, after))),
            _ => Err(Error::corrupt("shorteventid_shortstatehash", "short value")),
        }
    }

    /// The current state snapshot of a room.
    pub fn get_room_state(&self, shortroomid: u64) -> Result<Option<u64>> {
        Ok(self
            .roomid_shortstatehash
            .get(&key::u64_bytes(shortroomid))?
            .and_then(|bytes| key::read_u64(&bytes)))
    }

    /// Sets the current state snapshot of a room.
    pub fn set_room_state(&self, shortroomid: u64, shortstatehash: u64, batch: &mut Batch) {
        batch.insert(
            &self.roomid_shortstatehash,
            &key::u64_bytes(shortroomid),
            &key::u64_bytes(shortstatehash),
        );
    }
}

fn encode_diff(parent: u64, depth: u64, added: &[(u64, u64)], removed: &[(u64, u64)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24 + 16 * (added.len() + removed.len()));
    bytes.extend_from_slice(&parent.to_be_bytes());
    bytes.extend_from_slice(&depth.to_be_bytes());
    bytes.extend_from_slice(&(added.len() as u64).to_be_bytes());
    for (state_key, event) in added.iter().chain(removed) {
        bytes.extend_from_slice(&state_key.to_be_bytes());
        bytes.extend_from_slice(&event.to_be_bytes());
    }
    bytes
}

type Diff = (u64, u64, Vec<(u64, u64)>, Vec<(u64, u64)>);

fn decode_diff(bytes: &[u8]) -> Result<Diff> {
    let corrupt = || Error::corrupt("shortstatehash_statediff", "truncated diff");
    let parent = key::read_u64(bytes).ok_or_else(corrupt)?;
    let depth = bytes.get(8..).and_then(key::read_u64).ok_or_else(corrupt)?;
    let added_count = bytes
        .get(16..)
        .and_then(key::read_u64)
        .ok_or_else(corrupt)? as usize;
    let pairs = bytes.get(24..).ok_or_else(corrupt)?;
    if pairs.len() % 16 != 0 || pairs.len() / 16 < added_count {
        return Err(corrupt());
    }
    let mut all = pairs.chunks_exact(16).map(|chunk| {
        (
            key::read_u64(chunk).unwrap_or(0),
            key::read_u64(&chunk[8..]).unwrap_or(0),
        )
    });
    let added = all.by_ref().take(added_count).collect();
    let removed = all.collect();
    Ok((parent, depth, added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_rebuild_the_same_sets_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let state = RoomState::open(&db);
        let mut batch = Batch::default();
        let mut set = StateSet::new();
        set.insert(1, 10);
        set.insert(2, 20);
        let first = state
            .store_snapshot(100, None, set.clone(), &mut batch)
            .unwrap();
        let mut second_set = set.clone();
        second_set.insert(2, 21);
        second_set.remove(&1);
        second_set.insert(3, 30);
        let second = state
            .store_snapshot(101, Some(first), second_set.clone(), &mut batch)
            .unwrap();
        db.write(batch).unwrap();
        drop(state);
        let reopened = RoomState::open(&db);
        assert_eq!(*reopened.load(first).unwrap(), set);
        assert_eq!(*reopened.load(second).unwrap(), second_set);
        let stored = reopened
            .snapshot_tree()
            .get(&key::u64_bytes(second))
            .unwrap()
            .unwrap();
        assert_eq!(stored.len(), 24 + 16 * 3, "the child stores only its delta");
    }

    #[test]
    fn long_chains_are_cut_by_a_full_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let state = RoomState::open(&db);
        let mut parent = None;
        let mut set = StateSet::new();
        let mut batch = Batch::default();
        for id in 1..=(MAX_DELTA_DEPTH + 3) {
            set.insert(id, id);
            parent = Some(
                state
                    .store_snapshot(1000 + id, parent, set.clone(), &mut batch)
                    .unwrap(),
            );
        }
        db.write(batch).unwrap();
        let (depth, loaded) = RoomState::open(&db)
            .load_with_depth(parent.unwrap())
            .unwrap();
        assert!(depth <= MAX_DELTA_DEPTH);
        assert_eq!(*loaded, set);
        assert!(decode_diff(&[1, 2, 3]).is_err());
    }
}
