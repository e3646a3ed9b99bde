//! RocksDB: opening the database, named trees (column families), write batches and key encoding.
//!
//! Services see only [`Tree`], [`Batch`] and ordered scans, so that another ordered key-value
//! engine could back the same trees. Nothing here knows the Matrix rules.
//!
//! RocksDB: `Db::open` with every tree (column family) in `store::TREES` and memtable and log sizes for a chat server (why: "Storage footprint" in `docs/performance.md`), `Tree` (get, insert, remove, prefix and ranged scans), `Batch` (atomic writes) and big-endian key encoding in `store::key`.
//! Departure: RocksDB is the system library (Debian's `librocksdb-dev`, linked from its static archive, see `build.rs`) through `ROCKSDB_LIB_DIR` and `ROCKSDB_STATIC` in `.cargo/config.toml`.
//! Why: compiling RocksDB's C++ took most of a 43-minute clean build on 2 cores; with the system library a clean build of every dependency takes about 5 minutes, which keeps CI inside its 90 minutes with Complement and Synapse interop still to come.

mod backup;
mod cache;
mod durable;
pub mod key;
mod stats;

use std::{path::Path, sync::Arc};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::error::{Error, Result};

pub use backup::{list_backups, restore_backup, verify_backup, BackupCheck, BackupInfo};
pub use cache::WrittenCache;
pub use durable::Durable;

/// Every tree the server uses. A service declares the ones it owns next to its code; the list
/// here is what the database creates on open.
pub const TREES: &[&str] = &[
    "global",
    "userid_password",
    "userid_profile",
    "userid_deactivated",
    "userid_admin",
    "adminkey_value",
    "userdeviceid_device",
    "tokenhash_session",
    "refreshhash_session",
    "useridfilterid_filter",
    "userroomidtype_accountdata",
    "userdevicetxnid_eventid",
    "eventid_shorteventid",
    "shorteventid_eventid",
    "roomid_shortroomid",
    "shortroomid_roomid",
    "statekey_shortstatekey",
    "shortstatekey_statekey",
    "shortstatehash_statediff",
    "shorteventid_shortstatehash",
    "roomid_shortstatehash",
    "roomid_extremities",
    "pduid_pdu",
    "eventid_pduid",
    "roomtopo_pduid",
    "roomtsdepthcount_",
    "roomuserid_membership",
    "roomid_membershipcount",
    "userroomid_membership",
    "alias_roomid",
    "roomidalias_",
    "publicroomid_",
    "roomid_info",
    "servernamekeyid_key",
    "servername_keydocument",
    "eventid_outlierpdu",
    "roomeventid_backwardextremity",
    "roomcount_gap",
    "servertxnid_response",
    "servercount_outgoing",
    "userroomid_invitestate",
    "roomuserreceipt_count",
    "roomcount_receipt",
    "userid_presence",
    "presencecount_userid",
    "userdeviceid_devicekeys",
    "userdevicekeyid_onetimekey",
    "userdevicealgorithm_fallbackkey",
    "useridkind_crosssigningkey",
    "countuserid_keychange",
    "userid_keychangecount",
    "userid_devicelistid",
    "userid_remotedevicelist",
    "userdeviceid_remotedevice",
    "userdevicecount_todevice",
    "userid_dehydrateddevice",
    "oauthclientid_client",
    "oauthcodehash_grant",
    "userdeviceid_todevicemark",
    "senderdevicetxnid_todevice",
    "useridversion_backup",
    "userversionroomsession_backupkey",
    "openidhash_user",
    "userroomid_forgotten",
    "parentreltypecount_child",
    "roomcount_threadroot",
    "roomwordcount_posting",
    "userroomcount_notification",
    "userroomthread_unreadcount",
    "usercount_notification",
    "userpusher_pusher",
    "pushercount_push",
    "mediaid_media",
    "useridmediaid_pending",
    "thumbkey_thumbnail",
    "url_preview",
    "eventid_rejected",
    "policyserver_key",
    "userid_servernoticeroom",
    "registrationtoken_info",
    "appserviceid_registration",
    "appserviceidcount_outgoing",
    "reportid_report",
    "counterkey_value",
    "roomcallkey_call",
    "roomgroupcall_session",
    "userstartcall_",
    "delayid_delayed",
    "duedelayid_",
    "userdelayid_",
    "roomstatedelayid_",
    "invitelink_info",
    "roomid_invitelink",
    "storyroomcount_ts",
];

/// Memtable size of one tree at most: a tree's writes are flushed to a table file once this
/// much has gathered (a few thousand events for `pduid_pdu`). It also sets the write-ahead log's
/// preallocation (1.1 × this).
const TREE_WRITE_BUFFER_BYTES: usize = 8 << 20;

/// The database's memory budget of [`Db::open`] (the server's comes from `database_memory_mb`).
const DEFAULT_MEMORY_BUDGET_BYTES: usize = 64 << 20;

/// Write-ahead log files together: past this, the trees that keep the oldest log alive are
/// flushed so that it can be deleted (rarely written trees would otherwise pin old logs).
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// Space reserved ahead for the MANIFEST (the log of table files), 4 MiB by default; it grows
/// by a few hundred bytes per flush or compaction.
const MANIFEST_PREALLOCATION_BYTES: usize = 1 << 20;

/// Past this, RocksDB starts a new MANIFEST from a snapshot of the table files (1 GiB by
/// default): start-up replays the whole MANIFEST, so it bounds that replay after a long run.
const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// RocksDB's own text log (`LOG`, with per-tree statistics every ten minutes): a new file past
/// this size, and this many old ones kept (by default one file that grows until the next
/// start, and a thousand old ones).
const INFO_LOG_BYTES: usize = 4 << 20;
const INFO_LOGS_KEPT: usize = 4;

/// Trees whose values are overwritten at the same size many times over (an unread counter per
/// member of a room, rewritten by every event that notifies them): their memtable updates a key
/// in place instead of adding a version per write, so that a read or scan of a counter does not
/// skip over thousands of older versions. Readers of these trees take no snapshots.
const IN_PLACE_TREES: &[&str] = &["userroomthread_unreadcount"];

/// The open database.
pub struct Db {
    db: Arc<DB>,
    /// Writes go to the write-ahead log without an fsync; [`Durable`] fsyncs them in groups.
    write_options: WriteOptions,
    durable: Durable,
}

impl durable::Log for DB {
    fn last_sequence(&self) -> u64 {
        self.latest_sequence_number()
    }

    fn sync(&self) -> Result<()> {
        Ok(self.flush_wal(true)?)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.durable.close();
    }
}

impl Db {
    /// Opens (or creates) the database at `path` with every tree in [`TREES`] and the default
    /// memory budget.
    pub fn open(path: &Path, sync_writes: bool) -> Result<Arc<Self>> {
        Self::open_with_budget(path, sync_writes, DEFAULT_MEMORY_BUDGET_BYTES)
    }

    /// Opens the database with `memory_budget` bytes for RocksDB's caches: half for the
    /// memtables of all trees together (one write-buffer manager: past it, the largest memtable
    /// is flushed), half for one block cache shared by every tree, which also holds the tables'
    /// index and filter blocks, so that neither grows with the number of trees or table files.
    pub fn open_with_budget(
        path: &Path,
        sync_writes: bool,
        memory_budget: usize,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(path)
            .map_err(|error| Error::Internal(format!("creating {}: {error}", path.display())))?;
        let write_buffers = memory_budget / 2;
        let cache = Cache::new_lru_cache(memory_budget - write_buffers)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_open_files(512);
        options.increase_parallelism(2);
        // One thread writes at a time anyway (`Globals::write_with_count` serialises commits),
        // and in-place memtable updates (`IN_PLACE_TREES`) require it.
        options.set_allow_concurrent_memtable_write(false);
        // Sized for a chat server rather than RocksDB's bulk-load defaults (see "Storage
        // footprint" and "Memory" in docs/performance.md). RocksDB preallocates each write-ahead
        // log file at 1.1 × the largest memtable, capped by the totals below, and the MANIFEST
        // at 4 MiB, so the defaults (64 MiB memtables, no caps) made an empty database take 76 MB
        // on disk; and each tree had its own 8 MiB block cache and 64 MiB memtables. Every write
        // still goes to the log before it is acknowledged (and is fsynced before the answer with
        // `sync_writes`); these only decide how soon memtables are flushed and what is cached.
        options.set_db_write_buffer_size(write_buffers);
        options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        options.set_manifest_preallocation_size(MANIFEST_PREALLOCATION_BYTES);
        options.set_max_manifest_file_size(MAX_MANIFEST_BYTES);
        options.set_max_log_file_size(INFO_LOG_BYTES);
        options.set_keep_log_file_num(INFO_LOGS_KEPT);
        let tree_write_buffer = (write_buffers / 4).clamp(1 << 20, TREE_WRITE_BUFFER_BYTES);
        let mut tables = BlockBasedOptions::default();
        tables.set_block_cache(&cache);
        tables.set_cache_index_and_filter_blocks(true);
        tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // RocksDB always opens the `default` column family (unused here); it is listed so that it
        // gets the small memtable too, since the largest memtable sets the log's preallocation.
        let descriptors = TREES.iter().chain(&["default"]).map(|name| {
            let mut tree_options = Options::default();
            tree_options.set_write_buffer_size(tree_write_buffer);
            tree_options.set_block_based_table_factory(&tables);
            if IN_PLACE_TREES.contains(name) {
                tree_options.set_inplace_update_support(true);
                // RocksDB's default, 10,000 striped locks per memtable, cost 1.5 MiB of idle
                // memory; writes are serialised already and readers rarely meet.
                tree_options.set_inplace_update_locks(64);
            }
            ColumnFamilyDescriptor::new(*name, tree_options)
        });
        let db = DB::open_cf_descriptors(&options, path, descriptors).map_err(|error| {
            if is_lock_error(&error) {
                Error::DatabaseInUse {
                    path: path.to_owned(),
                }
            } else {
                Error::from(error)
            }
        })?;
        let db = Arc::new(db);
        let durable = match sync_writes {
            true => Durable::start(Arc::downgrade(&db), db.latest_sequence_number())?,
            false => Durable::off(),
        };
        Ok(Arc::new(Self {
            db,
            write_options: WriteOptions::default(),
            durable,
        }))
    }

    /// Waits until every write made so far is on disk (with `sync_writes`; at once without):
    /// what a request awaits before it is answered, so that a `200` survives a power cut.
    /// Concurrent waiters share one fsync (group commit, see [`Durable`]).
    pub async fn durable(&self) -> Result<()> {
        self.durable.wait(self.db.latest_sequence_number()).await
    }

    /// [`Db::durable`] for a thread that may block (start-up).
    pub fn durable_blocking(&self) -> Result<()> {
        self.durable.wait_blocking(self.db.latest_sequence_number())
    }

    /// A handle on one named tree.
    pub fn tree(self: &Arc<Self>, name: &'static str) -> Tree {
        assert!(
            TREES.contains(&name),
            "tree {name} is not declared in store::TREES"
        );
        Tree {
            db: Arc::clone(self),
            name,
        }
    }

    /// Writes a batch atomically: all of it lands in the write-ahead log together or none does.
    /// On return it is safe from a process crash; [`Db::durable`] waits until it is on disk.
    pub fn write(&self, batch: Batch) -> Result<()> {
        if batch.ops.iter().any(|op| op.awaits_count) {
            return Err(Error::Internal(
                "a batch was written before its stream position was set".to_owned(),
            ));
        }
        let mut write_batch = WriteBatch::default();
        for op in batch.ops {
            let cf = self.cf(op.tree);
            match op.value {
                Some(value) => write_batch.put_cf(cf, op.key, value),
                None => write_batch.delete_cf(cf, op.key),
            }
        }
        self.db.write_opt(write_batch, &self.write_options)?;
        for run in batch.after_write {
            run();
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every tree in TREES is created on open")
    }
}

/// Whether opening failed because another process holds the database's `LOCK` file: RocksDB
/// reports it as an I/O error naming that file ("While lock file: …/LOCK: Resource temporarily
/// unavailable", or "lock hold by current process" within one process).
fn is_lock_error(error: &rocksdb::Error) -> bool {
    let message = error.as_ref();
    error.kind() == rocksdb::ErrorKind::IOError
        && (message.contains("/LOCK") || message.contains("lock hold by"))
}

/// A key and its value, as scans return them.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// One named, ordered key-value tree.
#[derive(Clone)]
pub struct Tree {
    db: Arc<Db>,
    name: &'static str,
}

impl Tree {
    /// The database the tree belongs to, for writing batches.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The tree's name, used in [`Error::Corrupt`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value stored at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.db.get_cf(self.db.cf(self.name), key)?)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .db
            .db
            .get_pinned_cf(self.db.cf(self.name), key)?
            .is_some())
    }

    /// Writes one key on its own (use a [`Batch`] when several writes belong together).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(self, key, value);
        self.db.write(batch)
    }

    /// Removes one key on its own.
    pub fn remove(&self, key: &[u8]) -> Result<()> {
        let mut batch = Batch::default();
        batch.remove(self, key);
        self.db.write(batch)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn iter_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = Result<Entry>> + 'a {
        self.iter_from(prefix, false)
            .take_while(move |entry| match entry {
                Ok((key, _)) => key.starts_with(prefix),
                Err(_) => true,
            })
    }

    /// Entries from `start` onwards (forwards), or from `start` downwards (backwards, `start` included if present).
    pub fn iter_from<'a>(
        &'a self,
        start: &[u8],
        backwards: bool,
    ) -> impl Iterator<Item = Result<Entry>> + 'a {
        let direction = if backwards {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        self.db
            .db
            .iterator_cf(self.db.cf(self.name), IteratorMode::From(start, direction))
            .map(|entry| entry.map_err(Error::from))
    }
}

struct Op {
    tree: &'static str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    /// The key still lacks its last 8 bytes: the stream position [`Batch::set_count`] appends.
    awaits_count: bool,
}

/// What runs once a batch is written (see [`Batch::after_write`]).
type AfterWrite = Box<dyn FnOnce() + Send + Sync>;

/// Writes that must land together; applied by [`Db::write`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    after_write: Vec<AfterWrite>,
}

impl Batch {
    /// Queues `key = value` in `tree`.
    pub fn insert(&mut self, tree: &Tree, key: &[u8], value: &[u8]) {
        self.ops.push(Op {
            tree: tree.name,
            key: key.to_vec(),
            value: Some(value.to_vec()),
            awaits_count: false,
        });
    }

    /// Queues `prefix ++ count = value` in `tree`, where `count` is the stream position that
    /// [`Batch::set_count`] gives later (big-endian). Everything about the write but the
    /// position is thus prepared before the commit lock is taken.
    pub fn insert_at_count(&mut self, tree: &Tree, prefix: &[u8], value: &[u8]) {
        self.ops.push(Op {
            tree: tree.name,
            key: prefix.to_vec(),
            value: Some(value.to_vec()),
            awaits_count: true,
        });
    }

    /// Completes every key queued with [`Batch::insert_at_count`] with `count`.
    pub fn set_count(&mut self, count: u64) {
        for op in self.ops.iter_mut().filter(|op| op.awaits_count) {
            op.key.extend_from_slice(&count.to_be_bytes());
            op.awaits_count = false;
        }
    }

    /// Queues the removal of `key` from `tree`.
    pub fn remove(&mut self, tree: &Tree, key: &[u8]) {
        self.ops.push(Op {
            tree: tree.name,
            key: key.to_vec(),
            value: None,
            awaits_count: false,
        });
    }

    /// Runs `run` right after the batch is written, if it is: where a cache of what the batch
    /// changes is dropped, so that no reader can fill it again from the older data (see
    /// `rooms::members`). Under `Globals::write_with_count` it runs before the batch's stream
    /// position is published.
    pub fn after_write(&mut self, run: impl FnOnce() + Send + Sync + 'static) {
        self.after_write.push(Box::new(run));
    }

    /// Moves every write of `other` to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        self.ops.append(&mut other.ops);
        self.after_write.append(&mut other.after_write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_keys_wait_for_their_stream_position() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let tree = db.tree("pduid_pdu");
        let mut batch = Batch::default();
        batch.insert_at_count(&tree, b"p", b"v");
        assert!(db.write(batch).is_err(), "no position yet");
        assert_eq!(tree.get(b"p").unwrap(), None);
        let mut batch = Batch::default();
        batch.insert_at_count(&tree, b"p", b"v");
        batch.set_count(7);
        db.write(batch).unwrap();
        let mut expected = b"p".to_vec();
        expected.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(tree.get(&expected).unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn manifest_and_info_log_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let _db = Db::open(dir.path(), false).unwrap();
        // RocksDB writes the options in force to an OPTIONS file on every open.
        let options = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.to_string_lossy().contains("OPTIONS-"))
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(options).unwrap();
        for setting in [
            format!("max_manifest_file_size={MAX_MANIFEST_BYTES}"),
            format!("max_log_file_size={INFO_LOG_BYTES}"),
            format!("keep_log_file_num={INFO_LOGS_KEPT}"),
            format!("max_total_wal_size={MAX_TOTAL_WAL_BYTES}"),
        ] {
            assert!(text.contains(&setting), "{setting} not in OPTIONS");
        }
    }

    #[test]
    fn batch_writes_land_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), false).unwrap();
            let tree = db.tree("global");
            let mut batch = Batch::default();
            batch.insert(&tree, b"a", b"1");
            batch.insert(&tree, b"b", b"2");
            batch.remove(&tree, b"a");
            db.write(batch).unwrap();
        }
        let db = Db::open(dir.path(), false).unwrap();
        let tree = db.tree("global");
        assert_eq!(tree.get(b"a").unwrap(), None);
        assert_eq!(tree.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn prefix_scans_stop_at_the_prefix_and_backwards_scans_include_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let tree = db.tree("global");
        for key in [&b"a1"[..], b"a2", b"b1"] {
            tree.insert(key, b"").unwrap();
        }
        let keys: Vec<_> = tree
            .iter_prefix(b"a")
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(
            keys,
            vec![
                b"a1".to_vec().into_boxed_slice(),
                b"a2".to_vec().into_boxed_slice()
            ]
        );
        let back: Vec<_> = tree
            .iter_from(b"a2", true)
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(back.len(), 2);
        assert_eq!(&*back[0], b"a2");
    }
}
