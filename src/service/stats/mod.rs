//! The server's statistics as counters kept at write time (`counters.rs`), the users' activity
//! by day (`activity.rs`) and the federation peers, read by the admin's `server stats` in a few
//! point reads whatever the number of users, rooms or events.
//!
//! The counters live in `counterkey_value`. Each has one writer, the service whose change it
//! counts, which adds to it in that change's batch: accounts (`Users`), rooms (`ShortIds`),
//! events and messages (the timeline's commit, through its step `count_event`, which calls
//! [`Stats::count_event_in_batch`]), media (`Media`).
//! [`build`] counts an older database once, at start-up.

mod activity;
pub mod counters;

use std::{collections::HashSet, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedServerName, ServerName};

pub use self::{
    activity::Activity,
    counters::{day_of, Counter, Counters, DayCounter},
};
use crate::{
    error::Result,
    service::Services,
    store::{Batch, Db},
    util,
};

/// The statistics service.
pub struct Stats {
    counters: Counters,
    /// Local users' activity by day.
    pub activity: Activity,
    /// The federation peers (read from the tree at start-up); held while a new peer is written.
    peers: Mutex<HashSet<OwnedServerName>>,
    db: Arc<Db>,
}

/// A reading of every statistic.
#[derive(Debug)]
pub struct Snapshot {
    /// Local accounts, the server's own user included.
    pub accounts: u64,
    pub deactivated: u64,
    /// Local users active in the last 1, 7 and 30 days (today included).
    pub active: [u64; 3],
    pub rooms: u64,
    pub events: u64,
    pub local_events: u64,
    pub messages_today: u64,
    pub media_files: u64,
    pub media_bytes: u64,
    pub peers: u64,
    /// Bytes of table files per tree, largest first, empty trees left out.
    pub tree_sizes: Vec<(&'static str, u64)>,
}

impl Stats {
    /// Opens the tree and reads the federation peers.
    pub fn open(db: &Arc<Db>) -> Result<Self> {
        let counters = Counters::open(db);
        let peers = counters
            .peers()?
            .into_iter()
            .filter_map(|name| {
                OwnedServerName::try_from(String::from_utf8_lossy(&name).as_ref()).ok()
            })
            .collect();
        Ok(Self {
            activity: Activity::new(counters.clone()),
            counters,
            peers: Mutex::new(peers),
            db: Arc::clone(db),
        })
    }

    /// Every statistic, from the counters and RocksDB's properties.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let counters = &self.counters;
        let today = day_of(util::now_millis());
        let mut tree_sizes: Vec<_> = self
            .db
            .tree_sizes()?
            .into_iter()
            .filter(|(_, size)| *size > 0)
            .collect();
        tree_sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        Ok(Snapshot {
            accounts: counters.get(Counter::Accounts)?,
            deactivated: counters.get(Counter::Deactivated)?,
            active: [
                self.activity.active_in(today, 1)?,
                self.activity.active_in(today, 7)?,
                self.activity.active_in(today, 30)?,
            ],
            rooms: counters.get(Counter::Rooms)?,
            events: counters.get(Counter::Events)?,
            local_events: counters.get(Counter::LocalEvents)?,
            messages_today: counters.get_day(DayCounter::Messages, today)?,
            media_files: counters.get(Counter::MediaFiles)?,
            media_bytes: counters.get(Counter::MediaBytes)?,
            peers: self.peers.lock().len() as u64,
            tree_sizes,
        })
    }

    /// Records a server that sent us a signed request as a federation peer.
    pub fn heard_from(&self, server: &ServerName) -> Result<()> {
        let mut peers = self.peers.lock();
        if peers.contains(server) {
            return Ok(());
        }
        let mut batch = Batch::default();
        self.counters
            .add_peer_in_batch(server.as_bytes(), &mut batch);
        self.counters.db().write(batch)?;
        peers.insert(server.to_owned());
        Ok(())
    }

    /// Adds `delta` to a counter in `batch`, for writers outside the counted services (a purge
    /// taking events away). The caller holds the counter's lock (see [`Counter`]) until the
    /// batch is written.
    pub fn add_in_batch(&self, counter: Counter, delta: i64, batch: &mut Batch) -> Result<()> {
        self.counters.add_in_batch(counter, delta, batch)
    }

    /// Counts a timeline event in its batch (the timeline's commit step, under the global
    /// commit lock, which serialises every writer of these counters): the event, whether a
    /// local user sent it, whether it is a message committed live today, and the servers it is
    /// queued for that were no peers yet. Those count as peers from now on: should the batch
    /// fail, they are written with a later event or request (the set of peers only grows).
    pub fn count_event_in_batch(
        &self,
        local: bool,
        message: bool,
        destinations: &[OwnedServerName],
        batch: &mut Batch,
    ) -> Result<()> {
        let counters = &self.counters;
        counters.add_in_batch(Counter::Events, 1, batch)?;
        if local {
            counters.add_in_batch(Counter::LocalEvents, 1, batch)?;
        }
        if message {
            let today = day_of(util::now_millis());
            counters.add_day_in_batch(DayCounter::Messages, today, 1, batch)?;
        }
        let mut peers = self.peers.lock();
        for server in destinations {
            if peers.insert(server.clone()) {
                counters.add_peer_in_batch(server.as_bytes(), batch);
            }
        }
        Ok(())
    }
}

/// Counts a database from before the counters existed, once: accounts, rooms, events and media
/// (messages of today and federation peers start from zero, activity from the devices' last use).
pub fn build(services: &Services) -> Result<()> {
    let counters = &services.stats.counters;
    if counters.is_built()? {
        return Ok(());
    }
    let mut batch = Batch::default();
    let (mut accounts, mut deactivated) = (0, 0);
    let today = day_of(util::now_millis());
    let mut last_active = std::collections::BTreeMap::<u32, u64>::new();
    for user_id in services.users.iter_user_ids() {
        let user_id = user_id?;
        accounts += 1;
        if services.users.is_deactivated(&user_id)? {
            deactivated += 1;
        }
        let last_seen = services
            .users
            .iter_devices(&user_id)?
            .iter()
            .filter_map(|device| device.last_seen_ts)
            .max();
        if let Some(day) = last_seen.map(day_of).filter(|day| *day <= today) {
            *last_active.entry(day).or_default() += 1;
            counters.set_last_active_in_batch(user_id.as_bytes(), day, &mut batch);
        }
    }
    for (day, users) in last_active {
        let delta = i64::try_from(users).unwrap_or(i64::MAX);
        counters.add_day_in_batch(DayCounter::LastActive, day, delta, &mut batch)?;
    }
    let rooms = services.rooms.short.iter_room_ids().count() as u64;
    let (mut events, mut local_events) = (0, 0);
    for entry in services.rooms.timeline.iter_all() {
        let (_, pdu) = entry?;
        events += 1;
        if pdu.sender.server_name() == services.globals.server_name() {
            local_events += 1;
        }
    }
    let (media_files, media_bytes) = services.media.count_stored()?;
    for (counter, value) in [
        (Counter::Accounts, accounts),
        (Counter::Deactivated, deactivated),
        (Counter::Rooms, rooms),
        (Counter::Events, events),
        (Counter::LocalEvents, local_events),
        (Counter::MediaFiles, media_files),
        (Counter::MediaBytes, media_bytes),
    ] {
        counters.set_in_batch(counter, value, &mut batch);
    }
    counters.set_built_in_batch(&mut batch);
    counters.db().write(batch)?;
    tracing::info!(accounts, rooms, events, "statistics counters built");
    Ok(())
}
