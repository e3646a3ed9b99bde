//! Counters kept at write time for the admin's `server stats`, so that reading them costs a few
//! point reads whatever the size of the server.
//!
//! Each counter has one writer, the service that makes the change it counts, which adds to it in
//! the batch of that change while holding the lock that serialises every change of that kind
//! (named on each [`Counter`]): a counter is read, added to and written back in the change's
//! batch, so that it is as durable as the change and never ahead of or behind the data.

use std::sync::Arc;

use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// The UTC day (days since the Unix epoch) of a time in ms since the epoch.
pub fn day_of(millis: u64) -> u32 {
    u32::try_from(millis / DAY_MS).unwrap_or(u32::MAX)
}

/// One whole-server counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Local accounts, deactivated ones and the server's own user included (`Users`, under its
    /// count lock).
    Accounts,
    /// Deactivated local accounts (`Users`, under its count lock).
    Deactivated,
    /// Rooms with a short ID: every room the server knows (`ShortIds`, under its create lock).
    Rooms,
    /// Events in room timelines, history included (the timeline's commit, under the global
    /// commit lock).
    Events,
    /// Timeline events sent by local users (as [`Counter::Events`]).
    LocalEvents,
    /// Media records with content, local uploads and cached remote files (`Media`, under its
    /// upload lock).
    MediaFiles,
    /// The bytes of those media files.
    MediaBytes,
}

impl Counter {
    fn name(self) -> &'static [u8] {
        match self {
            Counter::Accounts => b"accounts",
            Counter::Deactivated => b"deactivated",
            Counter::Rooms => b"rooms",
            Counter::Events => b"events",
            Counter::LocalEvents => b"local_events",
            Counter::MediaFiles => b"media_files",
            Counter::MediaBytes => b"media_bytes",
        }
    }
}

/// A counter per UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayCounter {
    /// `m.room.message` and `m.room.encrypted` events committed live that day (the commit lock).
    Messages,
    /// Local users whose last activity was that day (the activity lock): the users active in the
    /// last N days are the sum of the last N days.
    LastActive,
}

impl DayCounter {
    fn name(self) -> &'static [u8] {
        match self {
            DayCounter::Messages => b"messages",
            DayCounter::LastActive => b"last_active",
        }
    }
}

/// Key kinds of `counterkey_value`.
const COUNT: &[u8] = b"c";
const DAY: &[u8] = b"d";
const PEER: &[u8] = b"p";
const ACTIVE: &[u8] = b"a";
/// Present once the counters match the data (written when they were built, see `stats::build`).
const BUILT: &[u8] = b"built";

/// A handle on `counterkey_value`: `c` 0xff name → u64 (a [`Counter`]), `d` 0xff name 0xff day
/// u32 → u64 (a [`DayCounter`]), `p` 0xff server name → empty (a federation peer), `a` 0xff user
/// ID → day u32 (a local user's last active day) and `built` → empty. The peers are counted
/// in memory (see `stats::Peers`). Each service that counts
/// holds one and writes only its own counters.
#[derive(Clone)]
pub struct Counters {
    tree: Tree,
}

impl Counters {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            tree: db.tree("counterkey_value"),
        }
    }

    /// The value of a counter.
    pub fn get(&self, counter: Counter) -> Result<u64> {
        self.read(&key::join(&[COUNT, counter.name()]))
    }

    /// Adds `delta` to a counter in `batch`. The caller holds the counter's lock until the batch
    /// is written, and adds to each counter at most once per batch.
    pub fn add_in_batch(&self, counter: Counter, delta: i64, batch: &mut Batch) -> Result<()> {
        self.add_key(&key::join(&[COUNT, counter.name()]), delta, batch)
    }

    /// The value of a day counter on `day`.
    pub fn get_day(&self, counter: DayCounter, day: u32) -> Result<u64> {
        self.read(&day_key(counter, day))
    }

    /// The sum of a day counter over the `days` days up to and including `today`.
    pub fn sum_days(&self, counter: DayCounter, today: u32, days: u32) -> Result<u64> {
        let first = today.saturating_sub(days.saturating_sub(1));
        let end = day_key(counter, today);
        let mut sum = 0;
        for entry in self.tree.iter_from(&day_key(counter, first), false) {
            let (entry_key, value) = entry?;
            if *entry_key > *end {
                break;
            }
            sum += decode(&value)?;
        }
        Ok(sum)
    }

    /// Adds `delta` to a day counter in `batch`, as [`Counters::add_in_batch`].
    pub fn add_day_in_batch(
        &self,
        counter: DayCounter,
        day: u32,
        delta: i64,
        batch: &mut Batch,
    ) -> Result<()> {
        self.add_key(&day_key(counter, day), delta, batch)
    }

    /// Records a federation peer in `batch`.
    pub fn add_peer_in_batch(&self, server: &[u8], batch: &mut Batch) {
        batch.insert(&self.tree, &key::join(&[PEER, server]), b"");
    }

    /// Every known federation peer (a few thousand at most: read once, at start-up).
    pub fn peers(&self) -> Result<Vec<Vec<u8>>> {
        let prefix = key::prefix(&[PEER]);
        self.tree
            .iter_prefix(&prefix)
            .map(|entry| Ok(entry?.0[prefix.len()..].to_vec()))
            .collect()
    }

    /// A local user's last active day.
    pub fn get_last_active(&self, user: &[u8]) -> Result<Option<u32>> {
        let Some(bytes) = self.tree.get(&key::join(&[ACTIVE, user]))? else {
            return Ok(None);
        };
        let bytes: [u8; 4] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt("counterkey_value", "short day"))?;
        Ok(Some(u32::from_be_bytes(bytes)))
    }

    /// Sets a local user's last active day in `batch`.
    pub fn set_last_active_in_batch(&self, user: &[u8], day: u32, batch: &mut Batch) {
        batch.insert(&self.tree, &key::join(&[ACTIVE, user]), &day.to_be_bytes());
    }

    /// Whether the counters were built for this database.
    pub fn is_built(&self) -> Result<bool> {
        self.tree.contains(BUILT)
    }

    /// Marks the counters built, in the batch that writes their first values.
    pub fn set_built_in_batch(&self, batch: &mut Batch) {
        batch.insert(&self.tree, BUILT, b"");
    }

    /// Sets a counter outright in `batch` (building the counters of an older database).
    pub fn set_in_batch(&self, counter: Counter, value: u64, batch: &mut Batch) {
        let counter_key = key::join(&[COUNT, counter.name()]);
        batch.insert(&self.tree, &counter_key, &value.to_be_bytes());
    }

    /// The tree, for writing batches.
    pub fn db(&self) -> &Db {
        self.tree.db()
    }

    fn read(&self, counter_key: &[u8]) -> Result<u64> {
        match self.tree.get(counter_key)? {
            Some(bytes) => decode(&bytes),
            None => Ok(0),
        }
    }

    fn add_key(&self, counter_key: &[u8], delta: i64, batch: &mut Batch) -> Result<()> {
        let value = self.read(counter_key)?.saturating_add_signed(delta);
        batch.insert(&self.tree, counter_key, &value.to_be_bytes());
        Ok(())
    }
}

fn day_key(counter: DayCounter, day: u32) -> Vec<u8> {
    key::join(&[DAY, counter.name(), &day.to_be_bytes()])
}

fn decode(bytes: &[u8]) -> Result<u64> {
    key::read_u64(bytes).ok_or_else(|| Error::corrupt("counterkey_value", "short counter"))
}
