//! Delayed events (MSC4140) and the scheduled messages built on them: an event a user sends
//! now that this server sends into the room later, when its delay runs out without a
//! `restart`, or at once on `send`, unless it is cancelled first.
//!
//! Durable: every delayed event is in `delayid_delayed`, and `duedelayid_` orders the pending
//! ones by due time. One timer task ([`run`]) sleeps until the earliest due time or until a
//! schedule, restart or send wakes it, so pending events cost nothing per request. After a
//! restart the pending ones are found again in the tree, and those already due fire at once.
//! A due event is sent through the normal local path (`timeline::create_and_commit`) as its
//! sender, so the room's auth rules judge it with the sender's membership and power at firing
//! time; a refusal is kept in the list as a finalised event with the error.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            pdu::Pdu,
            timeline::{create_and_commit, PduBuilder},
        },
        Services,
    },
    store::{key, Batch, Db, Tree},
    util,
};

/// How long finalised delayed events stay in their sender's list.
const FINALISED_KEPT_MS: u64 = 24 * 60 * 60 * 1000;
/// Due events sent at the same time at most (each waits for its room's turn).
const CONCURRENT_SENDS: usize = 64;

/// Owns `delayid_delayed` (delay ID → JSON [`Delayed`]), `duedelayid_` (due time in ms, 8 bytes
/// big-endian, ++ delay ID → empty: the pending ones in due order), `userdelayid_` (user ID 0xff
/// delay ID → empty) and `roomstatedelayid_` (room ID 0xff event type 0xff state key 0xff delay
/// ID → empty: pending delayed state events, for their cancellation when others set the state).
pub struct DelayedEvents {
    delayid_delayed: Tree,
    duedelayid_: Tree,
    userdelayid_: Tree,
    roomstatedelayid_: Tree,
    /// Held while a delayed event changes state, so that a restart, a cancel and the timer never
    /// act on one event at once.
    write: parking_lot::Mutex<()>,
    /// Wakes the timer when the earliest due time may have moved closer.
    wake: tokio::sync::Notify,
}

/// A delayed event as the list shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delayed {
    pub delay_id: String,
    pub room_id: OwnedRoomId,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// The delay in ms.
    pub delay: u64,
    /// When the delay last (re)started, in ms since the epoch.
    pub running_since: u64,
    pub content: Value,
    /// The sender (not shown: the list is the sender's own).
    #[serde(skip_serializing, default)]
    pub user_id: Option<OwnedUserId>,
    /// How it ended, once it has.
    #[serde(skip_serializing, default)]
    pub finalised: Option<Finalised>,
}

/// The end of a delayed event, in the list's `finalised` entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finalised {
    /// `send` or `cancel`.
    pub outcome: String,
    /// `delay` (its time came), `action` (the sender asked) or `error` (sending failed, or
    /// another user set the state it would have set).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<OwnedEventId>,
    pub origin_server_ts: u64,
}

/// What a user asks of one of their delayed events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Restart,
    Send,
}

impl Action {
    pub fn parse(action: &str) -> Result<Self> {
        match action {
            "cancel" => Ok(Self::Cancel),
            "restart" => Ok(Self::Restart),
            "send" => Ok(Self::Send),
            _ => Err(Error::invalid_param(format!("unknown action {action:?}"))),
        }
    }
}

/// The event to send later: room, type, state key for a state event, content.
pub struct NewDelayed {
    pub room_id: OwnedRoomId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: Value,
}

impl DelayedEvents {
    pub fn open(db: &Arc<Db>) -> Result<Self> {
        let delayed = Self {
            delayid_delayed: db.tree("delayid_delayed"),
            duedelayid_: db.tree("duedelayid_"),
            userdelayid_: db.tree("userdelayid_"),
            roomstatedelayid_: db.tree("roomstatedelayid_"),
            write: parking_lot::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        };
        delayed.requeue_interrupted()?;
        Ok(delayed)
    }

    /// Puts back in the due order the pending events whose sending a stop interrupted (taken
    /// off the order, not yet finalised): they fire at once after a restart.
    fn requeue_interrupted(&self) -> Result<()> {
        let mut batch = Batch::default();
        for entry in self.delayid_delayed.iter_from(&[], false) {
            let (_, value) = entry?;
            let delayed = decode(&value)?;
            if delayed.finalised.is_none() {
                let due = due_key(delayed.running_since + delayed.delay, &delayed.delay_id);
                batch.insert(&self.duedelayid_, &due, b"");
            }
        }
        self.delayid_delayed.db().write(batch)
    }

    /// Schedules `event` from `user` to be sent after `delay_ms`, which must be within
    /// `max_ms` (0: delayed events are off); returns its delay ID.
    pub fn schedule(
        &self,
        user: &UserId,
        event: NewDelayed,
        delay_ms: u64,
        max_ms: u64,
    ) -> Result<String> {
        if max_ms == 0 {
            return Err(Error::custom(
                "M_UNRECOGNIZED",
                "delayed events are turned off on this server",
            ));
        }
        if delay_ms > max_ms {
            return Err(Error::custom(
                "ORG.MATRIX.MSC4140_MAX_DELAY_EXCEEDED",
                format!("the delay {delay_ms} ms exceeds the maximum of {max_ms} ms"),
            ));
        }
        let delayed = Delayed {
            delay_id: format!("pld_{}", util::random_string(20)),
            room_id: event.room_id,
            event_type: event.event_type,
            state_key: event.state_key,
            delay: delay_ms,
            running_since: util::now_millis(),
            content: event.content,
            user_id: Some(user.to_owned()),
            finalised: None,
        };
        let mut batch = Batch::default();
        batch.insert(
            &self.userdelayid_,
            &key::join(&[user.as_bytes(), delayed.delay_id.as_bytes()]),
            b"",
        );
        if let Some(state_key) = &delayed.state_key {
            batch.insert(
                &self.roomstatedelayid_,
                &state_index_key(&delayed, state_key),
                b"",
            );
        }
        self.put(&delayed, &mut batch)?;
        batch.insert(&self.duedelayid_, &due_key_of(&delayed), b"");
        self.delayid_delayed.db().write(batch)?;
        self.wake.notify_one();
        Ok(delayed.delay_id)
    }

    /// `user`'s delayed events: the pending ones in due order, and those finalised in the last
    /// day with how they ended (older ones are forgotten here).
    pub fn list(&self, user: &UserId) -> Result<(Vec<Delayed>, Vec<Value>)> {
        let (mut pending, mut finalised) = (Vec::new(), Vec::new());
        let prefix = key::prefix(&[user.as_bytes()]);
        let mut forget = Batch::default();
        let now = util::now_millis();
        for entry in self.userdelayid_.iter_prefix(&prefix) {
            let (index_key, _) = entry?;
            let delay_id = &index_key[prefix.len()..];
            let Some(delayed) = self.get(delay_id)? else {
                continue;
            };
            match &delayed.finalised {
                None => pending.push(delayed),
                Some(end) if end.origin_server_ts + FINALISED_KEPT_MS < now => {
                    forget.remove(&self.userdelayid_, &index_key);
                    forget.remove(&self.delayid_delayed, delay_id);
                }
                Some(end) => {
                    let mut shown = serde_json::to_value(end).map_err(Error::internal)?;
                    shown["delayed_event"] =
                        serde_json::to_value(&delayed).map_err(Error::internal)?;
                    finalised.push(shown);
                }
            }
        }
        self.delayid_delayed.db().write(forget)?;
        pending.sort_by_key(|delayed| delayed.running_since + delayed.delay);
        Ok((pending, finalised))
    }

    /// Cancels or restarts `user`'s pending delayed event `delay_id`; for a send, takes it off
    /// the due order and returns it for [`send_now`]. Someone else's or an unknown ID is
    /// `404 M_NOT_FOUND`, as is one that has ended.
    pub fn update(&self, user: &UserId, delay_id: &str, action: Action) -> Result<Option<Delayed>> {
        let _write = self.write.lock();
        let delayed = self
            .get(delay_id.as_bytes())?
            .filter(|delayed| delayed.user_id.as_deref() == Some(user))
            .filter(|delayed| delayed.finalised.is_none())
            .ok_or_else(|| Error::not_found(format!("no pending delayed event {delay_id}")))?;
        let mut batch = Batch::default();
        batch.remove(&self.duedelayid_, &due_key_of(&delayed));
        let result = match action {
            Action::Restart => {
                let restarted = Delayed {
                    running_since: util::now_millis(),
                    ..delayed
                };
                self.put(&restarted, &mut batch)?;
                batch.insert(&self.duedelayid_, &due_key_of(&restarted), b"");
                None
            }
            Action::Cancel => {
                self.finalise_in(delayed, ending("cancel", "action"), &mut batch)?;
                None
            }
            Action::Send => Some(delayed),
        };
        self.delayid_delayed.db().write(batch)?;
        self.wake.notify_one();
        Ok(result)
    }

    /// Cancels the pending delayed state events of other users for the state `pdu` sets: the
    /// state they would overwrite has changed hands (MSC4140, "Delayed state events").
    pub fn cancel_overwritten(&self, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        let Some(state_key) = &pdu.state_key else {
            return Ok(());
        };
        let event_type = pdu.kind.to_string();
        let prefix = key::prefix(&[
            room_id.as_bytes(),
            event_type.as_bytes(),
            state_key.as_bytes(),
        ]);
        let _write = self.write.lock();
        let mut batch = Batch::default();
        for entry in self.roomstatedelayid_.iter_prefix(&prefix) {
            let (index_key, _) = entry?;
            let Some(delayed) = self.get(&index_key[prefix.len()..])? else {
                continue;
            };
            if delayed.user_id.as_deref() == Some(&*pdu.sender) || delayed.finalised.is_some() {
                continue;
            }
            batch.remove(&self.duedelayid_, &due_key_of(&delayed));
            let error = json!({
                "errcode": "M_FORBIDDEN",
                "error": format!("{} set this state in the meantime", pdu.sender),
            });
            let mut end = ending("cancel", "error");
            end.error = Some(error);
            self.finalise_in(delayed, end, &mut batch)?;
        }
        self.delayid_delayed.db().write(batch)
    }

    /// The earliest pending due time with its delay ID.
    fn next_due(&self) -> Result<Option<(u64, String)>> {
        let Some(entry) = self.duedelayid_.iter_from(&[], false).next() else {
            return Ok(None);
        };
        let (due_key, _) = entry?;
        let due =
            key::read_u64(&due_key).ok_or_else(|| Error::corrupt("duedelayid_", "short key"))?;
        let delay_id = String::from_utf8_lossy(&due_key[8..]).into_owned();
        Ok(Some((due, delay_id)))
    }

    /// Takes a due event off the due order for sending; `None` if it was restarted, sent or
    /// cancelled meanwhile.
    fn take_due(&self, due: u64, delay_id: &str) -> Result<Option<Delayed>> {
        let _write = self.write.lock();
        let taken = self.get(delay_id.as_bytes())?.filter(|delayed| {
            delayed.finalised.is_none() && delayed.running_since + delayed.delay == due
        });
        // A restarted event's old key is stale: it goes either way.
        self.duedelayid_.remove(&due_key(due, delay_id))?;
        Ok(taken)
    }

    /// Records how a delayed event that was taken off the due order ended.
    fn finalise(&self, delayed: Delayed, end: Finalised) -> Result<()> {
        let _write = self.write.lock();
        let mut batch = Batch::default();
        self.finalise_in(delayed, end, &mut batch)?;
        self.delayid_delayed.db().write(batch)
    }

    fn finalise_in(&self, mut delayed: Delayed, end: Finalised, batch: &mut Batch) -> Result<()> {
        if let Some(state_key) = &delayed.state_key {
            batch.remove(
                &self.roomstatedelayid_,
                &state_index_key(&delayed, state_key),
            );
        }
        delayed.finalised = Some(end);
        self.put(&delayed, batch)
    }

    fn get(&self, delay_id: &[u8]) -> Result<Option<Delayed>> {
        self.delayid_delayed
            .get(delay_id)?
            .map(|value| decode(&value))
            .transpose()
    }

    fn put(&self, delayed: &Delayed, batch: &mut Batch) -> Result<()> {
        let stored = stored_json(delayed)?;
        batch.insert(&self.delayid_delayed, delayed.delay_id.as_bytes(), &stored);
        Ok(())
    }
}

/// The stored form: the listed fields with the sender and the end.
fn stored_json(delayed: &Delayed) -> Result<Vec<u8>> {
    let mut value = serde_json::to_value(delayed).map_err(Error::internal)?;
    value["user_id"] = json!(delayed.user_id);
    if let Some(end) = &delayed.finalised {
        value["finalised"] = serde_json::to_value(end).map_err(Error::internal)?;
    }
    serde_json::to_vec(&value).map_err(Error::internal)
}

fn decode(value: &[u8]) -> Result<Delayed> {
    serde_json::from_slice(value).map_err(|error| Error::corrupt("delayid_delayed", error))
}

fn due_key(due: u64, delay_id: &str) -> Vec<u8> {
    let mut due_key = key::u64_bytes(due).to_vec();
    due_key.extend_from_slice(delay_id.as_bytes());
    due_key
}

fn due_key_of(delayed: &Delayed) -> Vec<u8> {
    due_key(delayed.running_since + delayed.delay, &delayed.delay_id)
}

fn state_index_key(delayed: &Delayed, state_key: &str) -> Vec<u8> {
    key::join(&[
        delayed.room_id.as_bytes(),
        delayed.event_type.as_bytes(),
        state_key.as_bytes(),
        delayed.delay_id.as_bytes(),
    ])
}

fn ending(outcome: &str, reason: &str) -> Finalised {
    Finalised {
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
        error: None,
        event_id: None,
        origin_server_ts: util::now_millis(),
    }
}

/// Sends a delayed event now, as its sender, and records the outcome (`reason`: `delay` or
/// `action`). A refusal (the sender left, or lacks the power) is recorded, not returned.
pub async fn send_now(services: &Services, delayed: Delayed, reason: &str) -> Result<()> {
    let sent = match delayed.user_id.clone() {
        Some(user) => send_as(services, &user, &delayed).await,
        None => Err(Error::internal("a delayed event without its sender")),
    };
    let end = match sent {
        Ok(event_id) => Finalised {
            event_id: Some(event_id),
            ..ending("send", reason)
        },
        Err(error) => Finalised {
            error: Some(error_json(&error)),
            ..ending("cancel", "error")
        },
    };
    services.delayed_events.finalise(delayed, end)
}

async fn send_as(services: &Services, user: &UserId, delayed: &Delayed) -> Result<OwnedEventId> {
    let content = delayed.content.clone();
    let builder = match &delayed.state_key {
        Some(state_key) => PduBuilder::state(delayed.event_type.as_str(), state_key, content),
        None => PduBuilder::timeline(delayed.event_type.as_str(), content),
    };
    let (event_id, _) = create_and_commit(services, &delayed.room_id, user, builder, None).await?;
    Ok(event_id)
}

/// The `error` of a failed send: the Matrix error the sender would have got.
fn error_json(error: &Error) -> Value {
    match error {
        Error::Matrix { kind, message } => json!({
            "errcode": kind.errcode().to_string(),
            "error": message,
        }),
        _ => json!({ "errcode": "M_UNKNOWN", "error": "internal error" }),
    }
}

/// The timer: sends each delayed event when it is due, sleeping until the earliest due time or
/// until woken by a change; stops when `stop` turns true.
pub async fn run(services: Arc<Services>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let sends = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SENDS));
    loop {
        let wait = match services.delayed_events.next_due() {
            Ok(Some((due, delay_id))) if due <= util::now_millis() => {
                match services.delayed_events.take_due(due, &delay_id) {
                    Ok(Some(delayed)) => spawn_send(&services, &sends, delayed).await,
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "taking a due delayed event"),
                }
                continue;
            }
            Ok(Some((due, _))) => Duration::from_millis(due.saturating_sub(util::now_millis())),
            Ok(None) => Duration::from_secs(3600),
            Err(error) => {
                tracing::error!(%error, "reading the due delayed events");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = services.delayed_events.wake.notified() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Sends `delayed` on its own task, once one of the concurrent sends is free.
async fn spawn_send(
    services: &Arc<Services>,
    sends: &Arc<tokio::sync::Semaphore>,
    delayed: Delayed,
) {
    let Ok(permit) = Arc::clone(sends).acquire_owned().await else {
        return;
    };
    let services = Arc::clone(services);
    tokio::spawn(async move {
        if let Err(error) = send_now(&services, delayed, "delay").await {
            tracing::error!(%error, "finalising a delayed event");
        }
        drop(permit);
    });
}

/// Sends a user's delayed event at once (`POST …/delayed_events/{delay_id}/send`).
pub async fn send_early(services: &Services, user: &UserId, delay_id: &str) -> Result<()> {
    if let Some(delayed) = services
        .delayed_events
        .update(user, delay_id, Action::Send)?
    {
        send_now(services, delayed, "action").await?;
    }
    Ok(())
}
