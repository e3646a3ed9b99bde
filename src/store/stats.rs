//! Sizes of the trees on disk, for metrics and the admin's statistics.

use super::{Db, TREES};
use crate::error::Result;

impl Db {
    /// Each tree's name with the bytes of its table files (RocksDB's
    /// `rocksdb.total-sst-files-size`: what is flushed, not what is still in the memtable).
    pub fn tree_sizes(&self) -> Result<Vec<(&'static str, u64)>> {
        TREES
            .iter()
            .map(|name| {
                let size = self
                    .db
                    .property_int_value_cf(self.cf(name), "rocksdb.total-sst-files-size")?
                    .unwrap_or(0);
                Ok((*name, size))
            })
            .collect()
    }
}
