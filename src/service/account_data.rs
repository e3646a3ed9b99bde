//! Global and per-room account data, with the stream position of each change for `/sync`.

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::globals::Globals,
    store::{key, Db, Tree},
};

/// Owns `userroomidtype_accountdata` (user ID 0xff room ID or empty 0xff type → stream position u64, JSON content).
pub struct AccountData {
    db: Arc<Db>,
    userroomidtype_accountdata: Tree,
}

/// One account data entry that changed.
pub struct Entry {
    pub room_id: Option<OwnedRoomId>,
    pub kind: String,
    pub content: Value,
}

impl AccountData {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
            userroomidtype_accountdata: db.tree("userroomidtype_accountdata"),
        }
    }

    fn db_key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Vec<u8> {
        key::join(&[
            user_id.as_bytes(),
            room_id.map(RoomId::as_bytes).unwrap_or_default(),
            kind.as_bytes(),
        ])
    }

    /// Stores an entry at a new stream position.
    pub fn set(
        &self,
        globals: &Globals,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: &Value,
    ) -> Result<u64> {
        let db_key = Self::db_key(user_id, room_id, kind);
        let json = serde_json::to_vec(content).map_err(Error::internal)?;
        globals.write_with_count(&self.db, |batch, count| {
            let mut value = key::u64_bytes(count).to_vec();
            value.extend_from_slice(&json);
            batch.insert(&self.userroomidtype_accountdata, &db_key, &value);
            Ok(())
        })
    }

    /// One entry's content.
    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Value>> {
        let Some(bytes) = self
            .userroomidtype_accountdata
            .get(&Self::db_key(user_id, room_id, kind))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.get(8..).unwrap_or_default())
            .map(Some)
            .map_err(|e| Error::corrupt("userroomidtype_accountdata", e))
    }

    /// Entries of a user changed after stream position `since`.
    pub fn iter_changed(&self, user_id: &UserId, since: u64) -> Result<Vec<Entry>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        let mut entries = Vec::new();
        for entry in self.userroomidtype_accountdata.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            if key::read_u64(&value).unwrap_or(0) <= since {
                continue;
            }
            let mut parts = key::split(&db_key[prefix.len()..]);
            let room = parts.next().unwrap_or_default();
            let kind = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let room_id = if room.is_empty() {
                None
            } else {
                Some(
                    OwnedRoomId::try_from(String::from_utf8_lossy(room).as_ref())
                        .map_err(|e| Error::corrupt("userroomidtype_accountdata", e))?,
                )
            };
            let content = serde_json::from_slice(&value[8..])
                .map_err(|e| Error::corrupt("userroomidtype_accountdata", e))?;
            entries.push(Entry {
                room_id,
                kind,
                content,
            });
        }
        Ok(entries)
    }
}
