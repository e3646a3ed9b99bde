//! [`WrittenCache`]: an in-memory copy of something read from the trees, which the batches that
//! change it keep right.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

use super::Batch;
use crate::error::Result;

/// Values read from the trees, by key, at most `capacity` of them (past it the cache starts
/// over). A batch that changes what a key reads drops the key through [`WrittenCache::drop_after`]:
/// right after the batch is written, and under `Globals::write_with_count` before its stream
/// position is published. A reader stores what it read only if no key was dropped while it read
/// (`generation`). So no entry holds older data than the trees held when the entry was looked up,
/// and a response built on a published position sees everything up to it.
pub struct WrittenCache<K, V> {
    entries: Mutex<HashMap<K, V>>,
    generation: AtomicU64,
    capacity: usize,
}

impl<K, V> WrittenCache<K, V>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            capacity,
        })
    }

    /// The cached value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().get(key).cloned()
    }

    /// The cached value of `key`, else what `read` reads from the trees (stored unless a key was
    /// dropped meanwhile).
    pub fn get_or_read<Q>(&self, key: &Q, read: impl FnOnce() -> Result<V>) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let read_at = self.read_started();
        let value = read()?;
        self.store(key.to_owned(), value.clone(), read_at);
        Ok(value)
    }

    /// To be taken before reading the trees for [`WrittenCache::store`].
    pub fn read_started(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores what a reader read from the trees since `read_at` ([`WrittenCache::read_started`]),
    /// unless a key was dropped in between.
    pub fn store(&self, key: K, value: V, read_at: u64) {
        let mut entries = self.entries.lock();
        if self.generation.load(Ordering::Acquire) != read_at {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// Drops `key` once `batch` is written.
    pub fn drop_after(self: &Arc<Self>, key: K, batch: &mut Batch) {
        let cache = Arc::clone(self);
        batch.after_write(move || {
            let mut entries = cache.entries.lock();
            cache.generation.fetch_add(1, Ordering::AcqRel);
            entries.remove(&key);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let tree = db.tree("useridfilterid_filter");
        let cache: Arc<WrittenCache<String, Option<Vec<u8>>>> = WrittenCache::new(2);
        let read = || tree.get(b"k");
        assert_eq!(cache.get_or_read("k", read).unwrap(), None);
        assert_eq!(cache.get("k"), Some(None), "kept");

        // A reader starts, a batch changing the key is written, the reader stores what it read.
        let read_at = cache.read_started();
        let stale = tree.get(b"k").unwrap();
        let mut batch = Batch::default();
        batch.insert(&tree, b"k", b"v");
        cache.drop_after("k".to_owned(), &mut batch);
        assert_eq!(cache.get("k"), Some(None), "dropped only once written");
        db.write(batch).unwrap();
        assert_eq!(cache.get("k"), None, "dropped");
        cache.store("k".to_owned(), stale, read_at);
        assert_eq!(cache.get("k"), None, "the older read is not kept");
        assert_eq!(cache.get_or_read("k", read).unwrap(), Some(b"v".to_vec()));

        // A batch that fails to write drops nothing.
        let mut batch = Batch::default();
        batch.insert_at_count(&tree, b"x", b"y");
        cache.drop_after("k".to_owned(), &mut batch);
        assert!(db.write(batch).is_err());
        assert_eq!(cache.get("k"), Some(Some(b"v".to_vec())));

        // Past the capacity the cache starts over.
        for key in ["a", "b"] {
            let read_at = cache.read_started();
            cache.store(key.to_owned(), None, read_at);
        }
        assert_eq!(cache.get("k"), None);
        assert_eq!(cache.get("b"), Some(None));
    }
}
