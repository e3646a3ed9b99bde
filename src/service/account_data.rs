//! Global and per-room account data, with the stream position of each change for `/sync`, and
//! the ignore list each user keeps in `m.ignored_user_list` (cached in memory).
//!
//! Global and per-room account data, each entry stamped with a stream position; `update` serialises read-modify-write changes (room tags, `m.tag`, changed one tag at a time by `api/client/tags.rs`).
//! It also keeps each user's ignore list (`m.ignored_user_list`, validated on `PUT`: an object keyed by user IDs, never oneself) in memory after the first read, dropped when the list is set; sync, `/messages`, `/context`, search and to-device delivery read it from there.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::globals::Globals,
    store::{key, Db, Tree},
};

/// Owns `userroomidtype_accountdata` (user ID 0xff room ID or empty 0xff type → stream position u64, JSON content).
pub struct AccountData {
    userroomidtype_accountdata: Tree,
    /// Serialises read-modify-write updates ([`AccountData::update`]), such as room tags.
    update_lock: Mutex<()>,
    /// Each user's ignored users, read once from `m.ignored_user_list` and dropped when it is set.
    ignored: Mutex<HashMap<OwnedUserId, Arc<HashSet<OwnedUserId>>>>,
}

/// The global account data type that lists the users someone ignores.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// Most users one ignore list may hold.
pub const MAX_IGNORED_USERS: usize = 10_000;

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
            userroomidtype_accountdata: db.tree("userroomidtype_accountdata"),
            update_lock: Mutex::new(()),
            ignored: Mutex::new(HashMap::new()),
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
        let count = globals.write_with_count(|batch, count| {
            let mut value = key::u64_bytes(count).to_vec();
            value.extend_from_slice(&json);
            batch.insert(&self.userroomidtype_accountdata, &db_key, &value);
            Ok(())
        })?;
        if room_id.is_none() && kind == IGNORED_USER_LIST {
            self.ignored.lock().remove(user_id);
        }
        Ok(count)
    }

    /// Replaces an entry with what `change` makes of the current content, with no other update
    /// in between; `change` returning `None` leaves the entry as it is.
    pub fn update(
        &self,
        globals: &Globals,
        (user_id, room_id, kind): (&UserId, Option<&RoomId>, &str),
        change: impl FnOnce(Option<Value>) -> Result<Option<Value>>,
    ) -> Result<()> {
        let _guard = self.update_lock.lock();
        if let Some(content) = change(self.get(user_id, room_id, kind)?)? {
            self.set(globals, user_id, room_id, kind, &content)?;
        }
        Ok(())
    }

    /// The users `user_id` ignores (spec, "Ignoring Users"), from memory after the first read.
    pub fn ignored_users(&self, user_id: &UserId) -> Result<Arc<HashSet<OwnedUserId>>> {
        // The cache stays locked across the read, so that a change written meanwhile (whose
        // invalidation waits for this lock) cannot be overwritten by the older value read here.
        let mut cache = self.ignored.lock();
        if let Some(ignored) = cache.get(user_id) {
            return Ok(Arc::clone(ignored));
        }
        let ignored: HashSet<OwnedUserId> = self
            .get(user_id, None, IGNORED_USER_LIST)?
            .as_ref()
            .and_then(|content| content.get("ignored_users"))
            .and_then(Value::as_object)
            .map(|users| {
                users
                    .keys()
                    .filter_map(|user| OwnedUserId::try_from(user.as_str()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let ignored = Arc::new(ignored);
        cache.insert(user_id.to_owned(), Arc::clone(&ignored));
        Ok(ignored)
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

/// Checks an `m.ignored_user_list` before it is stored: `ignored_users` must be an object keyed
/// by valid user IDs (`M_BAD_JSON` otherwise, as for any malformed body), of at most
/// [`MAX_IGNORED_USERS`] entries, and a user may not ignore themself (`M_INVALID_PARAM`, since
/// the spec defines no effect for it and Plait would otherwise hide the user's own messages).
pub fn validate_ignored_user_list(user_id: &UserId, content: &Value) -> Result<()> {
    let users = content
        .get("ignored_users")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("ignored_users must be an object"))?;
    if users.len() > MAX_IGNORED_USERS {
        return Err(Error::invalid_param(format!(
            "at most {MAX_IGNORED_USERS} users can be ignored"
        )));
    }
    for (user, details) in users {
        let ignored = <&UserId>::try_from(user.as_str())
            .map_err(|_| Error::bad_json(format!("{user} in ignored_users is not a user ID")))?;
        if !details.is_object() {
            return Err(Error::bad_json(format!(
                "ignored_users value for {user} must be an object"
            )));
        }
        if ignored == user_id {
            return Err(Error::invalid_param("you cannot ignore yourself"));
        }
    }
    Ok(())
}
