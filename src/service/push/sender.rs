//! The push sender: the worker that posts each pusher's queued notifications to its push
//! gateway's `/_matrix/push/v1/notify`, with exponential backoff, and removes pushers whose
//! pushkey the gateway rejects.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{
    pushers::{Pusher, Queued},
    Notification,
};
use crate::{
    error::{Error, Result},
    service::Services,
    store::key,
};

/// The first retry delay after a failed delivery; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// A notification a gateway has refused to take for this long is dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

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
