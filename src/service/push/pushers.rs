//! Pushers: each user's pushers and the queue of notifications waiting for each pusher
//! (written in the commit batch, so a restart loses nothing); `sender` delivers the queue.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::{
    config::Config,
    error::{Error, Result},
    store::{key, Batch, Db, Entry, Tree},
};

/// The path every HTTP pusher's URL must have (push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// A pusher as the client set it, and the device whose session set it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pusher {
    /// The pusher as `GET /pushers` lists it.
    pub pusher: Map<String, Value>,
    pub device_id: String,
}

impl Pusher {
    pub(super) fn field(&self, name: &str) -> &str {
        self.pusher.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// One queued delivery.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Queued {
    pub(super) room_id: OwnedRoomId,
}

/// Owns `userpusher_pusher` (user ID 0xff app ID 0xff pushkey → JSON [`Pusher`]) and
/// `pushercount_push` (user ID 0xff app ID 0xff pushkey 0xff stream position u64 → JSON room of
/// the queued notification).
pub struct Pushers {
    pub(super) userpusher_pusher: Tree,
    pub(super) pushercount_push: Tree,
    /// Each user's pusher keys, so that a commit finds them without a scan.
    by_user: Mutex<HashMap<OwnedUserId, Arc<Vec<Vec<u8>>>>>,
    /// Delivery state per pusher key: when to try again, the current delay, the first failure.
    pub(super) backoff: Mutex<HashMap<Vec<u8>, (Instant, Duration, Instant)>>,
    pub(super) wake: Notify,
}

impl Pushers {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            userpusher_pusher: db.tree("userpusher_pusher"),
            pushercount_push: db.tree("pushercount_push"),
            by_user: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    fn pusher_key(user_id: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
        key::join(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
    }

    /// A user's pushers.
    pub fn iter_pushers(&self, user_id: &UserId) -> Result<Vec<Pusher>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        self.userpusher_pusher
            .iter_prefix(&prefix)
            .map(|entry| {
                let (_, value) = entry?;
                serde_json::from_slice(&value).map_err(|e| Error::corrupt("userpusher_pusher", e))
            })
            .collect()
    }

    fn user_keys(&self, user_id: &UserId) -> Result<Arc<Vec<Vec<u8>>>> {
        if let Some(keys) = self.by_user.lock().get(user_id) {
            return Ok(Arc::clone(keys));
        }
        let prefix = key::prefix(&[user_id.as_bytes()]);
        let keys: Vec<Vec<u8>> = self
            .userpusher_pusher
            .iter_prefix(&prefix)
            .map(|entry| entry.map(|(db_key, _)| db_key.to_vec()))
            .collect::<Result<_>>()?;
        let keys = Arc::new(keys);
        self.by_user
            .lock()
            .insert(user_id.to_owned(), Arc::clone(&keys));
        Ok(keys)
    }

    /// Creates or replaces a pusher. Unless `append`, the same app ID and pushkey of other
    /// users are removed (spec: `POST /pushers/set`).
    pub fn set_pusher(&self, user_id: &UserId, pusher: &Pusher, append: bool) -> Result<()> {
        let (app_id, pushkey) = (pusher.field("app_id"), pusher.field("pushkey"));
        if !append {
            for (db_key, _) in self.iter_all()? {
                let mut parts = key::split(&db_key);
                let (owner, other_app, other_key) = (parts.next(), parts.next(), parts.next());
                if owner != Some(user_id.as_bytes())
                    && other_app == Some(app_id.as_bytes())
                    && other_key == Some(pushkey.as_bytes())
                {
                    let owner = String::from_utf8_lossy(owner.unwrap_or_default()).into_owned();
                    if let Ok(owner) = OwnedUserId::try_from(owner) {
                        self.delete_pusher(&owner, app_id, pushkey)?;
                    }
                }
            }
        }
        let json = serde_json::to_vec(pusher).map_err(Error::internal)?;
        self.userpusher_pusher
            .insert(&Self::pusher_key(user_id, app_id, pushkey), &json)?;
        self.by_user.lock().remove(user_id);
        Ok(())
    }

    fn iter_all(&self) -> Result<Vec<Entry>> {
        self.userpusher_pusher.iter_from(b"", false).collect()
    }

    /// Removes a pusher and its queue; `false` if there was none.
    pub fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        let pusher_key = Self::pusher_key(user_id, app_id, pushkey);
        if !self.userpusher_pusher.contains(&pusher_key)? {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.remove(&self.userpusher_pusher, &pusher_key);
        let mut queue_prefix = pusher_key.clone();
        queue_prefix.push(key::SEP);
        for entry in self.pushercount_push.iter_prefix(&queue_prefix) {
            let (db_key, _) = entry?;
            batch.remove(&self.pushercount_push, &db_key);
        }
        self.userpusher_pusher.db().write(batch)?;
        self.by_user.lock().remove(user_id);
        self.backoff.lock().remove(&pusher_key);
        Ok(true)
    }

    /// Removes the pushers a device's sessions set (when the device is deleted or logged out).
    pub fn delete_device_pushers(&self, user_id: &UserId, device_id: &str) -> Result<()> {
        for pusher in self.iter_pushers(user_id)? {
            if pusher.device_id == device_id {
                self.delete_pusher(user_id, pusher.field("app_id"), pusher.field("pushkey"))?;
            }
        }
        Ok(())
    }

    /// Removes every pusher of a user (when the account is deactivated).
    pub fn delete_user_pushers(&self, user_id: &UserId) -> Result<()> {
        for pusher in self.iter_pushers(user_id)? {
            self.delete_pusher(user_id, pusher.field("app_id"), pusher.field("pushkey"))?;
        }
        Ok(())
    }

    /// Queues a notification at stream position `count` for each of the user's pushers.
    pub(super) fn queue_in_batch(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        batch: &mut Batch,
    ) -> Result<()> {
        let keys = self.user_keys(user_id)?;
        if keys.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_vec(&Queued {
            room_id: room_id.to_owned(),
        })
        .map_err(Error::internal)?;
        for pusher_key in keys.iter() {
            let mut queue_key = pusher_key.clone();
            queue_key.push(key::SEP);
            batch.insert_at_count(&self.pushercount_push, &queue_key, &json);
        }
        Ok(())
    }

    /// Wakes the delivery worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Checks an HTTP pusher's URL: absolute, `https` (or `http` when the config allows it), with
/// the path `/_matrix/push/v1/notify`, and unless `http` is allowed (tests, development) not an
/// IP address in `url_preview_ip_denylist` (a host name is checked when the sender resolves it).
pub fn check_url(url: &str, config: &Config) -> Result<()> {
    let allow_http = config.push_gateway_allow_http;
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| Error::invalid_param(format!("pusher url {url} is not a valid URL")))?;
    let scheme_ok = parsed.scheme() == "https" || (allow_http && parsed.scheme() == "http");
    if !scheme_ok || parsed.host_str().is_none() {
        return Err(Error::invalid_param(format!(
            "pusher url {url} must be an https URL"
        )));
    }
    if parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "pusher url {url} must have the path {NOTIFY_PATH}"
        )));
    }
    let literal = parsed
        .host_str()
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|host| host.parse::<std::net::IpAddr>().ok());
    if let Some(ip) = literal {
        if !super::sender::gateway_policy(config).permits(ip) {
            return Err(Error::invalid_param(format!(
                "pusher url {url} names an address this server does not connect to"
            )));
        }
    }
    Ok(())
}
