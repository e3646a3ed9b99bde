//! Global and per-room account data, with the stream position of each change for `/sync`, and
//! the entries hot paths read parsed (ignore list, `m.direct`, privacy settings), cached in memory.
//!
//! Global and per-room account data, each entry stamped with a stream position; `update` serialises read-modify-write changes (room tags, `m.tag`, changed one tag at a time by `api/client/tags.rs`).
//! It also keeps each user's ignore list (`m.ignored_user_list`, validated on `PUT`: an object keyed by user IDs, never oneself) in memory after the first read, dropped when the list is set; sync, `/messages`, `/context`, search and to-device delivery read it from there.
//! `m.direct` and the privacy settings (`io.plait.privacy`, see `service::privacy`) are kept parsed the same way.

use std::{
    any::Any,
    collections::{HashMap, HashSet},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{
        globals::Globals,
        privacy::{self, Settings},
    },
    store::{key, Db, Tree},
};

/// Owns `userroomidtype_accountdata` (user ID 0xff room ID or empty 0xff type → stream position u64, JSON content).
pub struct AccountData {
    userroomidtype_accountdata: Tree,
    /// Serialises read-modify-write updates ([`AccountData::update`]), such as room tags.
    update_lock: Mutex<()>,
    /// Global entries that hot paths read parsed (`m.ignored_user_list`, `m.direct`,
    /// `io.plait.privacy`), by type and user: read once, dropped when the entry is set.
    parsed: Mutex<ParsedCache>,
}

/// Parsed entries by type and user (each type has its own parsed form).
type ParsedCache = HashMap<&'static str, HashMap<OwnedUserId, Arc<dyn Any + Send + Sync>>>;

/// The global account data type that lists the users someone ignores.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The global account data type that lists someone's direct-message rooms by the other user.
pub const DIRECT: &str = "m.direct";

/// `m.direct` parsed: the other user → the rooms listed for them.
pub type DirectRooms = HashMap<OwnedUserId, Vec<OwnedRoomId>>;

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
            parsed: Mutex::new(HashMap::new()),
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
        if room_id.is_none() {
            if let Some(users) = self.parsed.lock().get_mut(kind) {
                users.remove(user_id);
            }
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
        self.parsed(user_id, IGNORED_USER_LIST, |content| {
            content
                .and_then(|content| content.get("ignored_users"))
                .and_then(Value::as_object)
                .map(|users| {
                    users
                        .keys()
                        .filter_map(|user| OwnedUserId::try_from(user.as_str()).ok())
                        .collect::<HashSet<_>>()
                })
                .unwrap_or_default()
        })
    }

    /// A user's privacy settings (`service::privacy`), from memory after the first read.
    pub fn privacy(&self, user_id: &UserId) -> Result<Settings> {
        let settings = self.parsed(user_id, privacy::ACCOUNT_DATA_TYPE, Settings::from_content)?;
        Ok(*settings)
    }

    /// A user's direct-message rooms by the other user (`m.direct`), from memory after the first
    /// read; entries that are not user IDs or room IDs are left out.
    pub fn direct_rooms(&self, user_id: &UserId) -> Result<Arc<DirectRooms>> {
        self.parsed(user_id, DIRECT, |content| {
            let mut direct = DirectRooms::new();
            let entries = content.and_then(Value::as_object).into_iter().flatten();
            for (other, rooms) in entries {
                let Ok(other) = OwnedUserId::try_from(other.as_str()) else {
                    continue;
                };
                let rooms = rooms.as_array().into_iter().flatten();
                let rooms = rooms.filter_map(|room| OwnedRoomId::try_from(room.as_str()?).ok());
                direct.insert(other, rooms.collect());
            }
            direct
        })
    }

    /// A global entry in its parsed form, from the cache or read and parsed with `parse`.
    fn parsed<T: Any + Send + Sync>(
        &self,
        user_id: &UserId,
        kind: &'static str,
        parse: impl FnOnce(Option<&Value>) -> T,
    ) -> Result<Arc<T>> {
        // The cache stays locked across the read, so that a change written meanwhile (whose
        // invalidation waits for this lock) cannot be overwritten by the older value read here.
        let mut cache = self.parsed.lock();
        let users = cache.entry(kind).or_default();
        if let Some(found) = users.get(user_id) {
            if let Ok(found) = Arc::clone(found).downcast::<T>() {
                return Ok(found);
            }
        }
        let parsed = Arc::new(parse(self.get(user_id, None, kind)?.as_ref()));
        users.insert(
            user_id.to_owned(),
            Arc::clone(&parsed) as Arc<dyn Any + Send + Sync>,
        );
        Ok(parsed)
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
