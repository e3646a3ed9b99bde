//! The push sender: the worker that posts each pusher's queued notifications to its push
//! gateway's `/_matrix/push/v1/notify`, with exponential backoff, and removes pushers whose
//! pushkey the gateway rejects. Pushers are served side by side (one request in flight per
//! pusher, so each pusher's notifications stay in order), a gateway's answer is read up to
//! [`MAX_ANSWER_BYTES`], and a gateway is never reached at an address `ip_range_denylist`
//! refuses, nor, unless `push_gateway_allow_http` is set, at one in `url_preview_ip_denylist`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};
use tokio::{sync::watch, task::JoinSet};

use super::{
    pushers::{Pusher, Queued},
    Notification,
};
use crate::{
    config::{Config, IpPolicy},
    error::{Error, Result},
    federation::guard::{self, GuardedResolver},
    service::{rooms::pdu::Pdu, Services},
    store::key,
};

/// The first retry delay after a failed delivery; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// A notification a gateway has refused to take for this long is dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Most deliveries in flight at once (each to a different pusher).
const MAX_IN_FLIGHT: usize = 32;
/// The largest gateway answer read; a gateway answers with a short list of rejected pushkeys.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One delivery's outcome, with the pusher and queue entry it was for.
type Finished = (Vec<u8>, Vec<u8>, Result<Delivery>);

/// The delivery worker: starts the first queued notification of every due pusher (up to
/// [`MAX_IN_FLIGHT`] at once), and the next one when a delivery ends; a failure delays that
/// pusher (exponential backoff), a pushkey the gateway rejects removes the pusher. Stops when
/// `stop` turns true (deliveries still in flight are dropped and stay queued).
pub async fn run(services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("Plait/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver::new(gateway_policy(
            &services.config,
        ))));
    let client = match builder.build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "the push sender cannot start");
            return;
        }
    };
    let mut in_flight: JoinSet<Finished> = JoinSet::new();
    // The pusher of each running task, to free it even when the task panicked.
    let mut tasks: HashMap<tokio::task::Id, Vec<u8>> = HashMap::new();
    loop {
        let busy: HashSet<Vec<u8>> = tasks.values().cloned().collect();
        let next_attempt = match start_due(&services, &client, &busy) {
            Ok((next, started)) => {
                for (pusher_key, delivery) in started {
                    let id = in_flight.spawn(delivery).id();
                    tasks.insert(id, pusher_key);
                }
                next
            }
            Err(error) => {
                tracing::error!(%error, "push delivery failed");
                Some(Instant::now() + FIRST_BACKOFF)
            }
        };
        let sleep = next_attempt
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                match joined {
                    Ok((id, (pusher_key, queue_key, outcome))) => {
                        tasks.remove(&id);
                        if let Err(error) = finish(&services, &pusher_key, &queue_key, outcome) {
                            tracing::error!(%error, "push delivery failed");
                        }
                    }
                    Err(error) => {
                        tasks.remove(&error.id());
                        tracing::error!(%error, "a push delivery task failed");
                    }
                }
            }
            _ = services.push.pushers.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// A delivery ready to run: the pusher it is for and the request future.
type Started = (
    Vec<u8>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Finished> + Send>>,
);

/// One pass over the queue: a delivery of the first notification of every pusher that is due
/// and has none in flight (`busy`); also returns the next time a delayed pusher is due. The
/// pass seeks from pusher to pusher, so a pusher whose gateway is down costs one read however
/// long its queue is.
fn start_due(
    services: &Arc<Services>,
    client: &reqwest::Client,
    busy: &HashSet<Vec<u8>>,
) -> Result<(Option<Instant>, Vec<Started>)> {
    let pushers = &services.push.pushers;
    let mut next: Option<Instant> = None;
    let mut started: Vec<Started> = Vec::new();
    let mut cursor: Vec<u8> = Vec::new();
    while busy.len() + started.len() < MAX_IN_FLIGHT {
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
        cursor = past_pusher;
        if busy.contains(&pusher_key) {
            continue;
        }
        let due = pushers
            .backoff
            .lock()
            .get(&pusher_key)
            .map(|(at, _, _)| *at);
        if let Some(at) = due.filter(|at| *at > Instant::now()) {
            next = Some(next.map_or(at, |next: Instant| next.min(at)));
            continue;
        }
        let services = Arc::clone(services);
        let client = client.clone();
        let queue_key = queue_key.to_vec();
        let value = value.to_vec();
        let key_for_task = pusher_key.clone();
        started.push((
            pusher_key,
            Box::pin(async move {
                let outcome = deliver(&services, &client, &key_for_task, count, &value).await;
                (key_for_task, queue_key, outcome)
            }),
        ));
    }
    Ok((next, started))
}

/// Applies a delivery's outcome: a delivered notification leaves the queue and clears the
/// pusher's backoff; a failure doubles it, and drops the notification after a day of failures.
fn finish(
    services: &Services,
    pusher_key: &[u8],
    queue_key: &[u8],
    outcome: Result<Delivery>,
) -> Result<()> {
    let pushers = &services.push.pushers;
    match outcome {
        Ok(Delivery::Done) => {
            pushers.pushercount_push.remove(queue_key)?;
            pushers.backoff.lock().remove(pusher_key);
        }
        Ok(Delivery::Rejected) | Ok(Delivery::NoPusher) => {}
        Err(error) => {
            tracing::warn!(%error, "a push gateway failed; trying again later");
            let now = Instant::now();
            let mut backoff = pushers.backoff.lock();
            let (at, delay, first) =
                backoff
                    .entry(pusher_key.to_vec())
                    .or_insert((now, FIRST_BACKOFF / 2, now));
            *delay = (*delay * 2).min(MAX_BACKOFF);
            *at = now + *delay;
            let first = *first;
            drop(backoff);
            if now.duration_since(first) > GIVE_UP_AFTER {
                tracing::warn!("dropping a push a gateway refused for a day");
                pushers.pushercount_push.remove(queue_key)?;
            }
        }
    }
    Ok(())
}

/// Where push gateways may be: `ip_range_denylist` less `ip_range_allowlist`, and outside
/// `url_preview_ip_denylist` unless `push_gateway_allow_http` is set (gateways on loopback in
/// tests). Names are checked by the client's resolver, IP literals by `check_url` when the
/// pusher is set and again before each delivery.
pub fn gateway_policy(config: &Config) -> IpPolicy {
    if config.push_gateway_allow_http {
        config.outbound_ip_policy()
    } else {
        config.user_url_ip_policy()
    }
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
    // A push names an event that must still exist after a power cut (group commit).
    services.globals.durable().await?;
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
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|parsed| parsed.host_str().map(str::to_owned))
        .unwrap_or_default();
    guard::check_host(&gateway_policy(&services.config), &host)
        .map_err(|error| Error::Internal(format!("push gateway {url}: {error}")))?;
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|error| {
            Error::Internal(format!(
                "push gateway {url}: {}",
                crate::error::with_sources(&error)
            ))
        })?;
    if !response.status().is_success() {
        return Err(Error::Internal(format!(
            "push gateway {url} answered {}",
            response.status()
        )));
    }
    let answer: Value =
        serde_json::from_slice(&read_capped(response).await?).unwrap_or(Value::Null);
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

/// A gateway answer's body, cut off after [`MAX_ANSWER_BYTES`] (an answer that long is not
/// one a gateway gives, and reads as no rejected pushkey).
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| Error::Internal(format!("push gateway answer: {error}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(Vec::new());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
    let tweaks = tweaks_of(&notification);
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
        add_event_details(services, user_id, room_id, &pdu, &mut body)?;
    }
    Ok(Some(json!({ "notification": body })))
}

/// The tweaks a notification's actions set, by name (a tweak without a value is `true`).
fn tweaks_of(notification: &Notification) -> Map<String, Value> {
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
    tweaks
}

/// The event's fields of a notification whose pusher does not ask for `event_id_only`: type,
/// sender, content, whether the user is the target, and the room's and the sender's names.
fn add_event_details(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    pdu: &Pdu,
    body: &mut Value,
) -> Result<()> {
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
    Ok(())
}
