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

/// Entries with their weights.
type Weighed<K, V> = HashMap<K, (V, usize)>;

/// Values read from the trees, by key, weighing at most `capacity` together (each weighs 1
/// unless made with [`WrittenCache::weighed`]; past it the cache starts over). A batch that changes what a key reads drops the key through [`WrittenCache::drop_after`]:
/// right after the batch is written, and under `Globals::write_with_count` before its stream
/// position is published. A reader stores what it read only if no key was dropped while it read
/// (`generation`). So no entry holds older data than the trees held when the entry was looked up,
/// and a response built on a published position sees everything up to it.
pub struct WrittenCache<K, V> {
    /// The entries with their weights, and the weights' total.
    entries: Mutex<(Weighed<K, V>, usize)>,
    generation: AtomicU64,
    capacity: usize,
    weigh: fn(&V) -> usize,
}

impl<K, V> WrittenCache<K, V>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::weighed(capacity, |_| 1)
    }

    /// A cache whose entries weigh what `weigh` says (bytes, say) instead of 1 each.
    pub fn weighed(capacity: usize, weigh: fn(&V) -> usize) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new((HashMap::new(), 0)),
            generation: AtomicU64::new(0),
            capacity,
            weigh,
        })
    }

    /// The cached value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .lock()
            .0
            .get(key)
            .map(|(value, _)| value.clone())
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
        let weight = (self.weigh)(&value);
        let mut guard = self.entries.lock();
        let (entries, total) = &mut *guard;
        if self.generation.load(Ordering::Acquire) != read_at {
            return;
        }
        if *total + weight > self.capacity {
            entries.clear();
            *total = 0;
        }
        *total += weight;
        if let Some((_, old)) = entries.insert(key, (value, weight)) {
            *total = total.saturating_sub(old);
        }
    }

    /// Drops `key` now, for a change already written.
    pub fn drop_now<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut guard = self.entries.lock();
        let (entries, total) = &mut *guard;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some((_, old)) = entries.remove(key) {
            *total = total.saturating_sub(old);
        }
    }

    /// Drops `key` once `batch` is written.
    pub fn drop_after(self: &Arc<Self>, key: K, batch: &mut Batch) {
        let cache = Arc::clone(self);
        batch.after_write(move || cache.drop_now(&key));
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
