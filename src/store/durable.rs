//! Group commit: writes reach the write-ahead log at once (they are then safe from a process
//! crash), and one syncer thread makes them safe from a power cut by fsyncing the log for every
//! write made since its last fsync together.
//!
//! A request that wrote waits with [`Durable::wait`] before it is answered; while one fsync runs,
//! the writes of every other request gather for the next one, so the number of fsyncs per second
//! stays bounded by the disk's latency however many requests commit, and throughput does not
//! fall with it.

use std::{
    sync::{Arc, Weak},
    thread,
};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// What the syncer has made durable: the highest RocksDB sequence number covered by an fsync,
/// or the error that stopped it.
#[derive(Clone, Debug)]
enum Synced {
    Upto(u64),
    Failed(String),
}

/// The handle requests wait on; absent (every wait returns at once) with `sync_writes = false`.
pub struct Durable {
    shared: Option<Arc<Shared>>,
    /// The syncer thread, joined on close: while it fsyncs it holds the database open, and the
    /// database must be closed (its lock released) when `Db` is dropped.
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

struct Shared {
    /// The highest sequence number some waiter needs on disk, and whether the database closed.
    wanted: Mutex<(u64, bool)>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
}

impl Shared {
    /// Asks the syncer for everything up to sequence number `target` (wakes it if that is more
    /// than anyone asked for yet).
    fn want(&self, target: u64) {
        let mut wanted = self.wanted.lock();
        if wanted.0 < target {
            wanted.0 = target;
            self.wake.notify_one();
        }
    }
}

/// What the syncer thread does with the database: the sequence number of the last write, and
/// an fsync of the write-ahead log.
pub(super) trait Log: Send + Sync + 'static {
    fn last_sequence(&self) -> u64;
    fn sync(&self) -> Result<()>;
}

impl Durable {
    /// No group commit: writes are safe from a process crash only.
    pub(super) fn off() -> Self {
        Self {
            shared: None,
            thread: Mutex::new(None),
        }
    }

    /// Starts the syncer thread over `log`. It holds only a weak handle, and ends when the
    /// database is dropped (see [`Durable::close`]).
    pub(super) fn start<L: Log>(log: Weak<L>, start: u64) -> Result<Self> {
        let shared = Arc::new(Shared {
            wanted: Mutex::new((start, false)),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced::Upto(start)),
        });
        let worker = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("plait-wal-sync".to_owned())
            .spawn(move || run(&worker, &log))
            .map_err(|error| Error::Internal(format!("starting the log syncer: {error}")))?;
        Ok(Self {
            shared: Some(shared),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until every write made before the call (up to sequence number `target`) is on
    /// disk. Returns at once when nothing new was written since the last fsync.
    pub async fn wait(&self, target: u64) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut synced = shared.synced.subscribe();
        let reached = |state: &Synced| match state {
            Synced::Upto(done) => *done >= target,
            Synced::Failed(_) => true,
        };
        if !reached(&synced.borrow()) {
            shared.want(target);
            if synced.wait_for(reached).await.is_err() {
                return Err(Error::Internal("the log syncer stopped".to_owned()));
            }
        }
        let state = synced.borrow().clone();
        match state {
            Synced::Upto(_) => Ok(()),
            Synced::Failed(error) => Err(Error::Internal(format!(
                "the write-ahead log could not be synced: {error}"
            ))),
        }
    }

    /// The blocking form of [`Durable::wait`], for writes outside a request (start-up).
    pub fn wait_blocking(&self, target: u64) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut synced = shared.synced.subscribe();
        shared.want(target);
        loop {
            match &*synced.borrow_and_update() {
                Synced::Upto(done) if *done >= target => return Ok(()),
                Synced::Upto(_) => {}
                Synced::Failed(error) => {
                    return Err(Error::Internal(format!(
                        "the write-ahead log could not be synced: {error}"
                    )))
                }
            }
            // A watch receiver has no blocking wait; poll briefly (start-up only).
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Stops the syncer thread and waits for it (called when the database is dropped, before
    /// its handle is released, so the thread never holds the last one).
    pub(super) fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.wanted.lock().1 = true;
            shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// The syncer: sleeps until a waiter needs more than is on disk, then fsyncs everything written
/// so far at once. Writes that arrive during an fsync are covered by the next one.
fn run<L: Log>(shared: &Shared, log: &Weak<L>) {
    let mut done = match *shared.synced.borrow() {
        Synced::Upto(done) => done,
        Synced::Failed(_) => return,
    };
    loop {
        {
            let mut wanted = shared.wanted.lock();
            while wanted.0 <= done && !wanted.1 {
                shared.wake.wait(&mut wanted);
            }
            if wanted.1 {
                return;
            }
        }
        let Some(log) = log.upgrade() else { return };
        // Read before the fsync: every write up to here is in the log file already.
        let target = log.last_sequence();
        match log.sync() {
            Ok(()) => {
                done = target;
                shared.synced.send_replace(Synced::Upto(target));
            }
            Err(error) => {
                // After a failed fsync the kernel may have dropped the dirty pages: nothing
                // written since the last good fsync can be promised, so every later wait fails
                // and the operator must restart (RocksDB replays the log that did reach disk).
                tracing::error!(%error, "fsync of the write-ahead log failed; writes are no longer acknowledged");
                shared
                    .synced
                    .send_replace(Synced::Failed(error.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    struct FakeLog {
        written: AtomicU64,
        syncs: AtomicU64,
        fail: bool,
    }

    impl Log for FakeLog {
        fn last_sequence(&self) -> u64 {
            self.written.load(Ordering::SeqCst)
        }
        fn sync(&self) -> Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(Error::Internal("disk on fire".to_owned()));
            }
            Ok(())
        }
    }

    fn log(fail: bool) -> Arc<FakeLog> {
        Arc::new(FakeLog {
            written: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            fail,
        })
    }

    #[tokio::test]
    async fn concurrent_waiters_share_fsyncs_and_nothing_waits_without_writes() {
        let log = log(false);
        let durable = Arc::new(Durable::start(Arc::downgrade(&log), 0).unwrap());
        durable.wait(0).await.unwrap();
        assert_eq!(log.syncs.load(Ordering::SeqCst), 0, "nothing to sync");
        let mut waiters = Vec::new();
        for sequence in 1..=50 {
            log.written.store(sequence, Ordering::SeqCst);
            let durable = Arc::clone(&durable);
            waiters.push(tokio::spawn(async move { durable.wait(sequence).await }));
        }
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        let syncs = log.syncs.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&syncs),
            "50 waiters arriving within one fsync share at most two: {syncs}"
        );
        durable.wait(50).await.unwrap();
        assert_eq!(log.syncs.load(Ordering::SeqCst), syncs, "already on disk");
        durable.close();
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_every_later_wait() {
        let log = log(true);
        let durable = Durable::start(Arc::downgrade(&log), 0).unwrap();
        log.written.store(1, Ordering::SeqCst);
        assert!(durable.wait(1).await.is_err());
        log.written.store(2, Ordering::SeqCst);
        assert!(durable.wait(2).await.is_err());
        assert!(durable.wait_blocking(2).is_err());
    }

    #[test]
    fn off_never_waits() {
        let durable = Durable::off();
        durable.wait_blocking(u64::MAX).unwrap();
    }
}
