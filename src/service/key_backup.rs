//! Server-side backups of room keys: versions with their algorithm and auth data, and the
//! encrypted session keys of each version.
//!
//! Server-side room-key backups: versions (numbered by stream position, so a deleted version is never reused) with algorithm and auth data, and each version's session keys; a stored key is replaced only by a better one, and every change of a version's keys gives it a new etag.

use std::{collections::BTreeMap, sync::Arc};

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::globals::Globals,
    store::{key, Batch, Db, Tree},
};

/// Owns `useridversion_backup` (user ID 0xff version u64 → JSON [`Backup`]) and
/// `userversionroomsession_backupkey` (user ID 0xff version u64 0xff room ID 0xff session ID →
/// JSON `KeyBackupData`). Versions are stream positions, so a deleted version is never reused.
pub struct KeyBackup {
    db: Arc<Db>,
    useridversion_backup: Tree,
    userversionroomsession_backupkey: Tree,
}

/// One backup version.
#[derive(Clone, Serialize, Deserialize)]
pub struct Backup {
    pub algorithm: String,
    pub auth_data: Value,
    /// Changes whenever the version's keys change.
    pub etag: u64,
}

/// Stored keys by room ID, then session ID.
pub type RoomKeys = BTreeMap<String, BTreeMap<String, Value>>;

fn version_key(user_id: &UserId, version: u64) -> Vec<u8> {
    key::join(&[user_id.as_bytes(), &key::u64_bytes(version)])
}

/// Whether `new` should replace `old` (client-server API, "Server-side key backups": a verified
/// key beats an unverified one, then the lower `first_message_index`, then the lower
/// `forwarded_count`).
fn is_better(new: &Value, old: &Value) -> bool {
    let rank = |data: &Value| {
        (
            !data["is_verified"].as_bool().unwrap_or(false),
            data["first_message_index"].as_u64().unwrap_or(u64::MAX),
            data["forwarded_count"].as_u64().unwrap_or(u64::MAX),
        )
    };
    rank(new) < rank(old)
}

impl KeyBackup {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
            useridversion_backup: db.tree("useridversion_backup"),
            userversionroomsession_backupkey: db.tree("userversionroomsession_backupkey"),
        }
    }

    /// Creates a version and returns it.
    pub fn create_version(
        &self,
        globals: &Globals,
        user_id: &UserId,
        algorithm: String,
        auth_data: Value,
    ) -> Result<u64> {
        globals.write_with_count(|batch, count| {
            let backup = Backup {
                algorithm,
                auth_data,
                etag: count,
            };
            self.put_version_in_batch(batch, user_id, count, &backup)
        })
    }

    fn put_version_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        version: u64,
        backup: &Backup,
    ) -> Result<()> {
        let value = serde_json::to_vec(backup).map_err(Error::internal)?;
        batch.insert(
            &self.useridversion_backup,
            &version_key(user_id, version),
            &value,
        );
        Ok(())
    }

    /// One version.
    pub fn get_version(&self, user_id: &UserId, version: u64) -> Result<Option<Backup>> {
        self.useridversion_backup
            .get(&version_key(user_id, version))?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("useridversion_backup", e))
            })
            .transpose()
    }

    /// The newest version.
    pub fn get_latest_version(&self, user_id: &UserId) -> Result<Option<(u64, Backup)>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        let Some(entry) = self.useridversion_backup.iter_prefix(&prefix).last() else {
            return Ok(None);
        };
        let (db_key, value) = entry?;
        let version = key::read_u64(&db_key[prefix.len()..])
            .ok_or_else(|| Error::corrupt("useridversion_backup", "short key"))?;
        let backup = serde_json::from_slice(&value)
            .map_err(|e| Error::corrupt("useridversion_backup", e))?;
        Ok(Some((version, backup)))
    }

    /// Replaces a version's auth data (the algorithm cannot change).
    pub fn update_version(&self, user_id: &UserId, version: u64, auth_data: Value) -> Result<()> {
        let mut backup = self
            .get_version(user_id, version)?
            .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
        backup.auth_data = auth_data;
        let mut batch = Batch::default();
        self.put_version_in_batch(&mut batch, user_id, version, &backup)?;
        self.db.write(batch)
    }
    /// Fails with `M_NOT_FOUND` unless the user has backup `version`.
    pub fn require_version(&self, user_id: &UserId, version: u64) -> Result<()> {
        match self.get_version(user_id, version)? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!(
                "unknown backup version {version}"
            ))),
        }
    }

    /// Deletes a version with its keys.
    pub fn delete_version(&self, user_id: &UserId, version: u64) -> Result<()> {
        let mut batch = Batch::default();
        batch.remove(&self.useridversion_backup, &version_key(user_id, version));
        let prefix = key::prefix(&[user_id.as_bytes(), &key::u64_bytes(version)]);
        for entry in self.userversionroomsession_backupkey.iter_prefix(&prefix) {
            batch.remove(&self.userversionroomsession_backupkey, &entry?.0);
        }
        self.db.write(batch)
    }

    /// How many keys a version holds.
    pub fn count_keys(&self, user_id: &UserId, version: u64) -> Result<usize> {
        let prefix = key::prefix(&[user_id.as_bytes(), &key::u64_bytes(version)]);
        Ok(self
            .userversionroomsession_backupkey
            .iter_prefix(&prefix)
            .count())
    }

    /// Stores keys in an existing version, keeping a stored key that is better than the new
    /// one, and gives the version a new etag.
    pub fn put_keys(
        &self,
        globals: &Globals,
        user_id: &UserId,
        version: u64,
        keys: &RoomKeys,
    ) -> Result<()> {
        globals.write_with_count(|batch, count| {
            let mut backup = self
                .get_version(user_id, version)?
                .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
            for (room_id, sessions) in keys {
                for (session_id, data) in sessions {
                    let db_key = key::join(&[
                        user_id.as_bytes(),
                        &key::u64_bytes(version),
                        room_id.as_bytes(),
                        session_id.as_bytes(),
                    ]);
                    if let Some(old) = self.userversionroomsession_backupkey.get(&db_key)? {
                        let old: Value = serde_json::from_slice(&old)
                            .map_err(|e| Error::corrupt("userversionroomsession_backupkey", e))?;
                        if !is_better(data, &old) {
                            continue;
                        }
                    }
                    batch.insert(
                        &self.userversionroomsession_backupkey,
                        &db_key,
                        data.to_string().as_bytes(),
                    );
                }
            }
            backup.etag = count;
            self.put_version_in_batch(batch, user_id, version, &backup)
        })?;
        Ok(())
    }

    fn keys_prefix(
        user_id: &UserId,
        version: u64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Vec<u8> {
        let version = key::u64_bytes(version);
        let mut parts: Vec<&[u8]> = vec![user_id.as_bytes(), &version];
        parts.extend(room_id.map(str::as_bytes));
        parts.extend(session_id.map(str::as_bytes));
        match session_id {
            Some(_) => key::join(&parts),
            None => key::prefix(&parts),
        }
    }

    /// Stored keys of a version, all of them or those of one room or one session.
    pub fn get_keys(
        &self,
        user_id: &UserId,
        version: u64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<RoomKeys> {
        let version_prefix = key::prefix(&[user_id.as_bytes(), &key::u64_bytes(version)]);
        let prefix = Self::keys_prefix(user_id, version, room_id, session_id);
        let mut keys = RoomKeys::new();
        for entry in self.userversionroomsession_backupkey.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let mut parts = key::split(&db_key[version_prefix.len()..]);
            let room = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let session = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            if session_id.is_some_and(|wanted| wanted != session) {
                continue;
            }
            let data = serde_json::from_slice(&value)
                .map_err(|e| Error::corrupt("userversionroomsession_backupkey", e))?;
            keys.entry(room).or_default().insert(session, data);
        }
        Ok(keys)
    }

    /// Deletes keys of a version (all, one room's or one session) and gives it a new etag.
    pub fn delete_keys(
        &self,
        globals: &Globals,
        user_id: &UserId,
        version: u64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<()> {
        let prefix = Self::keys_prefix(user_id, version, room_id, session_id);
        globals.write_with_count(|batch, count| {
            let mut backup = self
                .get_version(user_id, version)?
                .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
            if session_id.is_some() {
                batch.remove(&self.userversionroomsession_backupkey, &prefix);
            } else {
                for entry in self.userversionroomsession_backupkey.iter_prefix(&prefix) {
                    batch.remove(&self.userversionroomsession_backupkey, &entry?.0);
                }
            }
            backup.etag = count;
            self.put_version_in_batch(batch, user_id, version, &backup)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::is_better;

    #[test]
    fn verified_keys_then_earlier_indexes_then_fewer_forwards_win() {
        let key = |verified: bool, index: u64, forwards: u64| json!({ "is_verified": verified, "first_message_index": index, "forwarded_count": forwards });
        assert!(is_better(&key(true, 9, 9), &key(false, 0, 0)));
        assert!(!is_better(&key(false, 0, 0), &key(true, 9, 9)));
        assert!(is_better(&key(false, 1, 9), &key(false, 2, 0)));
        assert!(is_better(&key(false, 1, 0), &key(false, 1, 1)));
        assert!(!is_better(&key(false, 1, 1), &key(false, 1, 1)));
    }
}
