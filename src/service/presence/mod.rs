//! Presence: each user's state (online, unavailable, offline), status message and last activity;
//! the presence stream that `/sync` reads; local changes sent to other servers as `m.presence`
//! EDUs, and remote users' presence received in them.
//!
//! Activity lives in memory: a request moves the user's last-active time without a write.
//! RocksDB is written when the state or the status message changes (a new stream position, so
//! `/sync` tokens need no presence part of their own), and once at shutdown so that last-active
//! times survive a restart.
//!
//! Each user's state, status message and last activity (`userid_presence`), and the presence stream (`presencecount_userid`, one entry per user at the global stream position of their last change, so sync tokens stay `s<count>`).
//! Activity is kept in memory; RocksDB is written only when the state or status message changes, and once at shutdown for last-active times.
//! Privacy rule: a user sees their own presence and that of users who share a joined room (`presence::shares_room`, one scan of the other user's memberships); `GET /presence` answers others with 403.
//! `/sync?set_presence=online|unavailable` sets the state and holds the user online while the sync is open; `offline` changes nothing; an `unavailable` device does not override another device that synced as `online` in the last minute.
//! Timeouts: a local user with no request and no open sync for `presence_offline_timeout_ms` (default 5 minutes) goes offline; a remote user whose server sent nothing for 30 minutes goes offline here; local users who stay online are sent again every 25 minutes (constants in `presence/timer.rs`).
//! The server cannot tell an idle user from an active one while a client syncs, so it does not move users to `unavailable` by itself; clients report idleness with `set_presence=unavailable` or `PUT`.
//! Local changes are queued as `m.presence` EDUs, in the change's batch, for the servers that share a room with the user (`servers_in_room` of each joined room, cached); incoming EDUs apply only to users of the origin server who are joined to a room here.

mod timer;
mod update;
mod visible;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use self::{
    timer::run,
    update::{receive_edu, set_local, start_sync, SyncGuard},
    visible::{add_joiners, shares_room, sync_events},
};
use crate::{
    config::Config,
    error::{Error, Result},
    store::{key, Db, Tree},
    util,
};

/// Longest `status_msg` accepted from a client or another server, in bytes.
pub const MAX_STATUS_MSG_BYTES: usize = 1024;

/// How reachable a user is: the spec's `presence` enum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Online,
    Unavailable,
    #[default]
    Offline,
}

impl State {
    /// Parses the spec's spelling; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Self::Online),
            "unavailable" => Some(Self::Unavailable),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }

    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Unavailable => "unavailable",
            Self::Offline => "offline",
        }
    }
}

/// One user's presence, in memory; [`Record`] is its stored form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub state: State,
    pub status_msg: Option<String>,
    /// Last activity, ms since the epoch; 0 when never seen.
    pub last_active: u64,
    /// Last contact, ms since the epoch: a local user's last request or end of sync, or the last
    /// update from a remote user's server. The timeouts count from here.
    pub last_seen: u64,
    /// A remote user's `currently_active` as their server sent it (computed for local users).
    pub currently_active: bool,
    /// Stream position of the last change; 0 before the first.
    pub count: u64,
    /// Syncs of a local user in progress; a user does not time out while one is open.
    pub syncing: u32,
    /// The device of the last sync that asked for `online`, and when (ms), so that an idle
    /// device's `unavailable` does not override another device that is in use.
    pub online_device: Option<String>,
    pub online_at: u64,
    /// When a local user's presence was last queued for other servers (ms; memory only).
    pub last_federated: u64,
}

/// The stored form of an [`Entry`] (JSON after the stream position).
#[derive(Serialize, Deserialize)]
struct Record {
    presence: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_msg: Option<String>,
    #[serde(default)]
    last_active_ts: u64,
    #[serde(default)]
    last_seen_ts: u64,
    #[serde(default)]
    currently_active: bool,
}

/// Owns `userid_presence` (user ID → stream position u64 of the last change, JSON record) and
/// `presencecount_userid` (stream position u64 → user ID; one entry per user, its last change),
/// and the in-memory entries: every user not offline, and local users seen since start.
pub struct Presence {
    db: Arc<Db>,
    userid_presence: Tree,
    presencecount_userid: Tree,
    users: Mutex<HashMap<OwnedUserId, Entry>>,
    server_name: OwnedServerName,
    /// Local users with no request and no sync for this long go offline (ms).
    offline_timeout_ms: u64,
}

impl Presence {
    /// Opens the trees and loads everyone who was not offline.
    pub fn open(db: &Arc<Db>, config: &Config) -> Result<Self> {
        let presence = Self {
            db: Arc::clone(db),
            userid_presence: db.tree("userid_presence"),
            presencecount_userid: db.tree("presencecount_userid"),
            users: Mutex::new(HashMap::new()),
            server_name: config.server_name().to_owned(),
            offline_timeout_ms: config.presence_offline_timeout_ms,
        };
        let now = util::now_millis();
        let mut users = HashMap::new();
        for entry in presence.userid_presence.iter_from(&[], false) {
            let (user, value) = entry?;
            let user = std::str::from_utf8(&user)
                .ok()
                .and_then(|user| OwnedUserId::try_from(user).ok())
                .ok_or_else(|| Error::corrupt("userid_presence", "invalid user ID"))?;
            let mut entry = decode(&value)?;
            if entry.state == State::Offline {
                continue;
            }
            // Remote servers refresh their users well within the remote timeout, so a restart
            // counts as contact; local users keep their stored last contact and go offline on
            // the first tick if it is stale.
            if !presence.is_local(&user) {
                entry.last_seen = now;
            }
            users.insert(user, entry);
        }
        *presence.users.lock() = users;
        Ok(presence)
    }

    /// Whether a user belongs to this server.
    pub fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name
    }

    /// Records activity of a local user (any authenticated request): memory only.
    pub fn touch(&self, user: &UserId) -> Result<()> {
        let now = util::now_millis();
        self.with_entry(user, |entry| {
            entry.last_active = now;
            entry.last_seen = now;
        })
    }

    /// A user's presence: from memory, else as stored.
    pub fn get(&self, user: &UserId) -> Result<Option<Entry>> {
        if let Some(entry) = self.users.lock().get(user) {
            return Ok(Some(entry.clone()));
        }
        self.load(user)
    }

    /// Whether a user is known to be online or unavailable.
    pub fn is_present(&self, user: &UserId) -> bool {
        self.users
            .lock()
            .get(user)
            .is_some_and(|entry| entry.state != State::Offline)
    }

    /// Users whose presence changed after stream position `since`, up to `until`.
    pub fn iter_changed(&self, since: u64, until: u64) -> Result<Vec<OwnedUserId>> {
        let mut users = Vec::new();
        let start = key::u64_bytes(since.saturating_add(1));
        for entry in self.presencecount_userid.iter_from(&start, false) {
            let (count, user) = entry?;
            if key::read_u64(&count).is_none_or(|count| count > until) {
                break;
            }
            let user = std::str::from_utf8(&user)
                .ok()
                .and_then(|user| OwnedUserId::try_from(user).ok())
                .ok_or_else(|| Error::corrupt("presencecount_userid", "invalid user ID"))?;
            users.push(user);
        }
        Ok(users)
    }

    /// The content of an `m.presence` event.
    pub fn content(&self, user: &UserId, entry: &Entry, now: u64) -> Value {
        let mut content = json!({
            "presence": entry.state.as_str(),
            "currently_active": self.currently_active(user, entry, now),
        });
        if entry.last_active != 0 {
            content["last_active_ago"] = json!(now.saturating_sub(entry.last_active));
        }
        if let Some(status_msg) = &entry.status_msg {
            content["status_msg"] = json!(status_msg);
        }
        content
    }

    /// The `m.presence` EDU that tells other servers about a local user.
    fn edu(&self, user: &UserId, entry: &Entry, now: u64) -> Value {
        let mut update = json!({
            "user_id": user,
            "presence": entry.state.as_str(),
            "last_active_ago": now.saturating_sub(entry.last_active),
            "currently_active": self.currently_active(user, entry, now),
        });
        if let Some(status_msg) = &entry.status_msg {
            update["status_msg"] = json!(status_msg);
        }
        json!({ "edu_type": "m.presence", "content": { "push": [update] } })
    }

    /// A local user is currently active while online and seen within the offline timeout: the
    /// spec lets clients trust this flag until an update says otherwise, and the timeout is when
    /// this server sends that update.
    pub fn currently_active(&self, user: &UserId, entry: &Entry, now: u64) -> bool {
        entry.state == State::Online
            && if self.is_local(user) {
                now.saturating_sub(entry.last_active) < self.offline_timeout_ms
            } else {
                entry.currently_active
            }
    }

    /// Runs `f` on a user's in-memory entry, loading it from storage on first use.
    fn with_entry<R>(&self, user: &UserId, f: impl FnOnce(&mut Entry) -> R) -> Result<R> {
        if let Some(entry) = self.users.lock().get_mut(user) {
            return Ok(f(entry));
        }
        let loaded = self.load(user)?.unwrap_or_default();
        let mut users = self.users.lock();
        Ok(f(users.entry(user.to_owned()).or_insert(loaded)))
    }

    fn load(&self, user: &UserId) -> Result<Option<Entry>> {
        self.userid_presence
            .get(user.as_bytes())?
            .map(|value| decode(&value))
            .transpose()
    }
}

fn encode(entry: &Entry) -> Result<Vec<u8>> {
    let record = Record {
        presence: entry.state,
        status_msg: entry.status_msg.clone(),
        last_active_ts: entry.last_active,
        last_seen_ts: entry.last_seen,
        currently_active: entry.currently_active,
    };
    let mut value = key::u64_bytes(entry.count).to_vec();
    value.extend_from_slice(&serde_json::to_vec(&record).map_err(Error::internal)?);
    Ok(value)
}

fn decode(value: &[u8]) -> Result<Entry> {
    let count =
        key::read_u64(value).ok_or_else(|| Error::corrupt("userid_presence", "short value"))?;
    let record: Record =
        serde_json::from_slice(&value[8..]).map_err(|e| Error::corrupt("userid_presence", e))?;
    Ok(Entry {
        state: record.presence,
        status_msg: record.status_msg,
        last_active: record.last_active_ts,
        last_seen: record.last_seen_ts,
        currently_active: record.currently_active,
        count,
        ..Entry::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_only_the_spec_spellings() {
        for state in [State::Online, State::Unavailable, State::Offline] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("busy"), None);
        assert_eq!(State::parse("Online"), None);
    }

    #[test]
    fn records_round_trip_without_memory_only_fields() {
        let entry = Entry {
            state: State::Unavailable,
            status_msg: Some("lunch".to_owned()),
            last_active: 5,
            last_seen: 7,
            currently_active: false,
            count: 42,
            syncing: 3,
            online_device: Some("D".to_owned()),
            online_at: 9,
            last_federated: 11,
        };
        let back = decode(&encode(&entry).unwrap()).unwrap();
        assert_eq!(
            back,
            Entry {
                syncing: 0,
                online_device: None,
                online_at: 0,
                last_federated: 0,
                ..entry
            }
        );
        assert!(decode(b"short").is_err());
    }
}
