//! Pushers and their delivery: each user's pushers, the queue of notifications waiting for
//! each pusher (written in the commit batch, so a restart loses nothing), and the worker that
//! posts them to the push gateways' `/_matrix/push/v1/notify` with exponential backoff.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

use super::Notification;
use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Batch, Db, Entry, Tree},
};

/// The path every HTTP pusher's URL must have (push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The first retry delay after a failed delivery; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// A notification a gateway has refused to take for this long is dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// A pusher as the client set it, and the device whose session set it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pusher {
    /// The pusher as `GET /pushers` lists it.
    pub pusher: Map<String, Value>,
    pub device_id: String,
}

impl Pusher {
    fn field(&self, name: &str) -> &str {
        self.pusher.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// One queued delivery.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    room_id: OwnedRoomId,
}

/// Owns `userpusher_pusher` (user ID 0xff app ID 0xff pushkey → JSON [`Pusher`]) and
/// `pushercount_push` (user ID 0xff app ID 0xff pushkey 0xff stream position u64 → JSON room of
/// the queued notification).
pub struct Pushers {
    userpusher_pusher: Tree,
    pushercount_push: Tree,
    /// Each user's pusher keys, so that a commit finds them without a scan.
    by_user: Mutex<HashMap<OwnedUserId, Arc<Vec<Vec<u8>>>>>,
    /// Delivery state per pusher key: when to try again, the current delay, the first failure.
    backoff: Mutex<HashMap<Vec<u8>, (Instant, Duration, Instant)>>,
    wake: Notify,
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
        count: u64,
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
            queue_key.extend_from_slice(&key::u64_bytes(count));
            batch.insert(&self.pushercount_push, &queue_key, &json);
        }
        Ok(())
    }

    /// Wakes the delivery worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Checks an HTTP pusher's URL: absolute, `https` (or `http` when the config allows it), with
/// the path `/_matrix/push/v1/notify`.
pub fn check_url(url: &str, allow_http: bool) -> Result<()> {
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
    Ok(())
}

/// The delivery worker: sends each pusher's queue in order, one notification at a time; a
/// failure delays that pusher (exponential backoff), a pushkey the gateway rejects removes the
/// pusher. Stops when `stop` turns true.
pub async fn run(services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Plait/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "the push sender cannot start");
            return;
        }
    };
    loop {
        let next_attempt = match deliver_due(&services, &client).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "push delivery failed");
                Some(Instant::now() + FIRST_BACKOFF)
            }
        };
        let sleep = next_attempt
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = services.push.pushers.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass over the queue: delivers what is due; returns the next time a delayed pusher is due.
/// The pass seeks from pusher to pusher, so a pusher whose gateway is down costs one read
/// however long its queue is.
async fn deliver_due(services: &Services, client: &reqwest::Client) -> Result<Option<Instant>> {
    let pushers = &services.push.pushers;
    let mut next: Option<Instant> = None;
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let Some(entry) = pushers.pushercount_push.iter_from(&cursor, false).next() else {
            break;
        };
        let (queue_key, value) = entry?;
        let Some(split) = queue_key.len().checked_sub(9) else {
            cursor = queue_key.to_vec();
            cursor.push(0);
            continue;
        };
        let pusher_key = queue_key[..split].to_vec();
        let count = key::read_u64(&queue_key[split + 1..]).unwrap_or_default();
        // The first key after every queue entry of this pusher.
        let mut past_pusher = queue_key[..=split].to_vec();
        past_pusher.extend_from_slice(&[0xff; 9]);
        let now = Instant::now();
        let due = pushers
            .backoff
            .lock()
            .get(&pusher_key)
            .map(|(at, _, _)| *at);
        if let Some(at) = due.filter(|at| *at > now) {
            next = Some(next.map_or(at, |next: Instant| next.min(at)));
            cursor = past_pusher;
            continue;
        }
        match deliver(services, client, &pusher_key, count, &value).await {
            Ok(Delivery::Done) => {
                pushers.pushercount_push.remove(&queue_key)?;
                pushers.backoff.lock().remove(&pusher_key);
                cursor = queue_key.to_vec();
            }
            Ok(Delivery::Rejected) | Ok(Delivery::NoPusher) => cursor = past_pusher,
            Err(error) => {
                tracing::warn!(%error, "a push gateway failed; trying again later");
                let mut backoff = pushers.backoff.lock();
                let (at, delay, first) =
                    backoff
                        .entry(pusher_key.clone())
                        .or_insert((now, FIRST_BACKOFF / 2, now));
                *delay = (*delay * 2).min(MAX_BACKOFF);
                *at = now + *delay;
                let (at, first) = (*at, *first);
                drop(backoff);
                if now.duration_since(first) > GIVE_UP_AFTER {
                    tracing::warn!("dropping a push a gateway refused for a day");
                    pushers.pushercount_push.remove(&queue_key)?;
                }
                next = Some(next.map_or(at, |next: Instant| next.min(at)));
                cursor = past_pusher;
            }
        }
    }
    Ok(next)
}

enum Delivery {
    Done,
    /// The gateway rejected the pushkey; the pusher is gone.
    Rejected,
    /// The pusher was deleted meanwhile; its queue went with it.
    NoPusher,
}

async fn deliver(
    services: &Services,
    client: &reqwest::Client,
    pusher_key: &[u8],
    count: u64,
    value: &[u8],
) -> Result<Delivery> {
    let pushers = &services.push.pushers;
    let Some(stored) = pushers.userpusher_pusher.get(pusher_key)? else {
        // A queue entry left by a pusher removed between the scan and now.
        let mut queue_key = pusher_key.to_vec();
        queue_key.push(key::SEP);
        queue_key.extend_from_slice(&key::u64_bytes(count));
        pushers.pushercount_push.remove(&queue_key)?;
        return Ok(Delivery::NoPusher);
    };
    let pusher: Pusher =
        serde_json::from_slice(&stored).map_err(|e| Error::corrupt("userpusher_pusher", e))?;
    let queued: Queued =
        serde_json::from_slice(value).map_err(|e| Error::corrupt("pushercount_push", e))?;
    let user_id = OwnedUserId::try_from(
        String::from_utf8_lossy(key::split(pusher_key).next().unwrap_or_default()).as_ref(),
    )
    .map_err(|e| Error::corrupt("userpusher_pusher", e))?;
    let body = notify_body(services, &user_id, &pusher, &queued.room_id, count)?;
    let Some(body) = body else {
        return Ok(Delivery::Done);
    };
    let url = pusher.pusher["data"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|error| Error::Internal(format!("push gateway {url}: {error}")))?;
    if !response.status().is_success() {
        return Err(Error::Internal(format!(
            "push gateway {url} answered {}",
            response.status()
        )));
    }
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let pushkey = pusher.field("pushkey");
    let rejected = answer["rejected"]
        .as_array()
        .is_some_and(|keys| keys.iter().any(|key| key.as_str() == Some(pushkey)));
    if rejected {
        tracing::info!(%user_id, "a push gateway rejected a pushkey; removing the pusher");
        pushers.delete_pusher(&user_id, pusher.field("app_id"), pushkey)?;
        return Ok(Delivery::Rejected);
    }
    Ok(Delivery::Done)
}

/// The push gateway request for one notification (push gateway API, `POST
/// /_matrix/push/v1/notify`); `None` when the notification or its event is gone.
fn notify_body(
    services: &Services,
    user_id: &UserId,
    pusher: &Pusher,
    room_id: &RoomId,
    count: u64,
) -> Result<Option<Value>> {
    let mut room_key = super::Push::room_prefix(user_id, room_id);
    room_key.extend_from_slice(&key::u64_bytes(count));
    let Some(stored) = services.push.userroomcount_notification.get(&room_key)? else {
        return Ok(None);
    };
    let notification: Notification = serde_json::from_slice(&stored)
        .map_err(|e| Error::corrupt("userroomcount_notification", e))?;
    let Some(pdu) = services.rooms.timeline.get_pdu(&notification.event_id)? else {
        return Ok(None);
    };
    let mut tweaks = Map::new();
    for action in &notification.actions {
        if let ruma::push::Action::SetTweak(tweak) = action {
            if let Ok(Value::Object(tweak)) = serde_json::to_value(tweak) {
                if let Some(Value::String(name)) = tweak.get("set_tweak") {
                    let value = tweak.get("value").cloned().unwrap_or(Value::Bool(true));
                    tweaks.insert(name.clone(), value);
                }
            }
        }
    }
    let mut data = pusher.pusher.get("data").cloned().unwrap_or(json!({}));
    if let Some(data) = data.as_object_mut() {
        data.remove("url");
    }
    let event_id_only = data["format"] == json!("event_id_only");
    let unread = super::unread::total_unread(services, user_id)?;
    let prio = if tweaks.contains_key("sound") || notification.highlight {
        "high"
    } else {
        "low"
    };
    let mut body = json!({
        "event_id": pdu.event_id,
        "room_id": room_id,
        "counts": { "unread": unread },
        "prio": prio,
        "devices": [{
            "app_id": pusher.field("app_id"),
            "pushkey": pusher.field("pushkey"),
            "data": data,
            "tweaks": tweaks,
        }],
    });
    if !event_id_only {
        body["type"] = json!(pdu.kind);
        body["sender"] = json!(pdu.sender);
        body["content"] = serde_json::from_str(pdu.content.get()).unwrap_or(Value::Null);
        body["user_is_target"] = json!(pdu.state_key.as_deref() == Some(user_id.as_str()));
        if let Some(name) = services
            .rooms
            .current_state_pdu(room_id, &ruma::events::StateEventType::RoomName, "")?
            .and_then(|pdu| pdu.content_value()["name"].as_str().map(str::to_owned))
        {
            body["room_name"] = json!(name);
        }
        if let Some(name) = services
            .rooms
            .current_state_pdu(
                room_id,
                &ruma::events::StateEventType::RoomMember,
                pdu.sender.as_str(),
            )?
            .and_then(|member| {
                member.content_value()["displayname"]
                    .as_str()
                    .map(str::to_owned)
            })
        {
            body["sender_display_name"] = json!(name);
        }
    }
    Ok(Some(json!({ "notification": body })))
}
