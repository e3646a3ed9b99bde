//! The appservice sender: one worker per appservice, beside the federation and push senders,
//! that sends its queue as `PUT /_matrix/app/v1/transactions/{txnId}` with
//! `Authorization: Bearer hs_token`, one transaction in flight, retrying the same transaction
//! (same ID, same events) with exponential back-off until the appservice answers 200; and the
//! requests the homeserver makes of an appservice (ping, user and alias queries).

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use ruma::api::error::{BadStatusErrorData, ErrorKind};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::{extras, queue::QueuedEvents, Appservice};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu, Services},
};

/// How long one request to an appservice may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest wait after a failed transaction.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wake-ups of the workers, and the channel that asks the supervisor for a new one.
pub(super) struct Workers {
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
    new: mpsc::UnboundedSender<String>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Default for Workers {
    fn default() -> Self {
        let (new, receiver) = mpsc::unbounded_channel();
        Self {
            wakeups: Mutex::default(),
            new,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Workers {
    /// Starts the worker of `id` unless it runs.
    pub(super) fn start(&self, id: &str) {
        let mut wakeups = self.wakeups.lock();
        if let Some(wakeup) = wakeups.get(id) {
            wakeup.notify_one();
            return;
        }
        wakeups.insert(id.to_owned(), Arc::new(Notify::new()));
        let _ = self.new.send(id.to_owned());
    }

    pub(super) fn wake(&self, id: &str) {
        if let Some(wakeup) = self.wakeups.lock().get(id) {
            wakeup.notify_one();
        }
    }

    pub(super) fn wake_all(&self) {
        for wakeup in self.wakeups.lock().values() {
            wakeup.notify_one();
        }
    }

    fn wakeup(&self, id: &str) -> Arc<Notify> {
        Arc::clone(self.wakeups.lock().entry(id.to_owned()).or_default())
    }
}

/// Runs the sender until `shutdown` flips: a worker for each registered appservice with a URL,
/// and one for each registered later.
pub async fn run(services: Arc<Services>, shutdown: watch::Receiver<bool>) {
    let appservices = &services.appservices;
    let Some(mut receiver) = appservices.workers.receiver.lock().take() else {
        return;
    };
    for id in appservices.ids_to_serve() {
        appservices.workers.start(&id);
    }
    let mut workers = tokio::task::JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            received = receiver.recv() => {
                let Some(id) = received else { break };
                workers.spawn(worker(Arc::clone(&services), id, shutdown.clone()));
            }
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Sends one appservice's queue, one transaction at a time, until shutdown or until the
/// appservice is unregistered (its queue is dropped then).
#[tracing::instrument(skip_all, fields(appservice = %id))]
async fn worker(services: Arc<Services>, id: String, mut shutdown: watch::Receiver<bool>) {
    let appservices = &services.appservices;
    let wakeup = appservices.workers.wakeup(&id);
    let mut sent_up_to: Option<Vec<u8>> = None;
    let mut retry: Option<QueuedEvents> = None;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(appservice) = appservices.registry().get(&id).cloned() else {
            appservices.workers.wakeups.lock().remove(&id);
            if let Err(error) = appservices.drop_queue(&id) {
                tracing::error!(%error, "dropping an unregistered appservice's queue failed");
            }
            return;
        };
        let queued = match retry.take() {
            Some(queued) => queued,
            None => {
                let loaded = appservices.load(&id, sent_up_to.as_deref());
                let marked = loaded.and_then(|queued| {
                    appservices.mark_in_flight(&id, &queued)?;
                    Ok(queued)
                });
                match marked {
                    Ok(queued) => queued,
                    Err(error) => {
                        tracing::error!(%error, "reading the appservice queue failed");
                        return;
                    }
                }
            }
        };
        if queued.keys.is_empty() {
            tokio::select! {
                () = wakeup.notified() => continue,
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
        match send_transaction(&services, &appservice, &queued).await {
            Ok(()) => {
                failures = 0;
                if let Err(error) = appservices.dequeue(&id, &queued.keys) {
                    tracing::error!(%error, "dequeuing a sent appservice transaction failed");
                    return;
                }
                sent_up_to = queued.keys.last().cloned();
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                tracing::warn!(%error, failures, wait_ms = wait.as_millis() as u64, "appservice transaction failed; backing off");
                retry = Some(queued);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                }
            }
        }
    }
}

/// How long to wait after the `failures`-th failure in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(2u32.saturating_pow(failures.clamp(1, 16) - 1))
        .min(BACKOFF_MAX)
}

/// Sends one transaction; anything but a 200 is a failure.
async fn send_transaction(
    services: &Services,
    appservice: &Appservice,
    queued: &QueuedEvents,
) -> Result<()> {
    let mut events = Vec::with_capacity(queued.events.len());
    let mut rooms = Vec::new();
    for (room_id, event_id) in &queued.events {
        if let Some(pdu) = services.rooms.timeline.get_pdu(event_id)? {
            events.push(pdu::client_event(&pdu, room_id, None));
            rooms.push(room_id.clone());
        }
    }
    let fields = extras::transaction_fields(services, appservice, &queued.extras, &rooms)?;
    // Ephemeral events and device lists the appservice turned out not to be interested in.
    if events.is_empty() && fields.is_empty() {
        return Ok(());
    }
    // Nothing leaves the server before it is on disk here (group commit).
    services.globals.durable().await?;
    let path = format!("/_matrix/app/v1/transactions/{}", queued.txn_id);
    let mut body = fields;
    body.insert("events".into(), json!(events));
    let body = Value::Object(body);
    request(services, appservice, http::Method::PUT, &path, Some(&body)).await?;
    tracing::debug!(txn_id = %queued.txn_id, events = events.len(), "transaction delivered");
    Ok(())
}

/// One request to an appservice with its `hs_token`; errors name what went wrong in the terms
/// of the ping endpoint (`M_URL_NOT_SET`, `M_CONNECTION_TIMEOUT`, `M_CONNECTION_FAILED`,
/// `M_BAD_STATUS`).
pub(super) async fn request(
    services: &Services,
    appservice: &Appservice,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let Some(url) = &appservice.registration.url else {
        return Err(Error::matrix(
            ErrorKind::UrlNotSet,
            format!("appservice {} has no URL", appservice.id()),
        ));
    };
    let url = format!("{}{path}", url.trim_end_matches('/'));
    let mut builder = services
        .appservices
        .client
        .request(method, &url)
        .bearer_auth(&appservice.registration.hs_token);
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|error| {
        let kind = if error.is_timeout() {
            ErrorKind::ConnectionTimeout
        } else {
            ErrorKind::ConnectionFailed
        };
        Error::matrix(kind, format!("appservice {}: {error}", appservice.id()))
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let mut data = BadStatusErrorData::new();
        data.status = Some(status);
        data.body = Some(text);
        return Err(Error::matrix(
            ErrorKind::BadStatus(data),
            format!("appservice {} answered {status}", appservice.id()),
        ));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Object(Default::default())))
}

/// Asks the appservices whose user namespaces hold `user_id` whether it exists
/// (`GET /_matrix/app/v1/users/{userId}`), so that one can create it on demand; answers whether
/// one said yes and the user exists now. An appservice that fails counts as a no.
pub async fn query_user(services: &Services, user_id: &ruma::UserId) -> Result<bool> {
    let path = format!(
        "/_matrix/app/v1/users/{}",
        crate::federation::encode(user_id.as_str())
    );
    let registry = services.appservices.registry();
    for (appservice, _) in &registry.appservices {
        if !appservice.users.is_match(user_id.as_str()) {
            continue;
        }
        let asked = request(services, appservice, http::Method::GET, &path, None).await;
        if asked.is_ok() && services.users.exists(user_id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Asks the appservices whose alias namespaces hold `alias` whether it exists
/// (`GET /_matrix/app/v1/rooms/{roomAlias}`), so that one can create the room on demand;
/// answers whether one said yes. An appservice that fails counts as a no.
pub async fn query_alias(services: &Services, alias: &ruma::RoomAliasId) -> Result<bool> {
    let path = format!(
        "/_matrix/app/v1/rooms/{}",
        crate::federation::encode(alias.as_str())
    );
    let registry = services.appservices.registry();
    for (appservice, _) in &registry.appservices {
        if !appservice.aliases.is_match(alias.as_str()) {
            continue;
        }
        if request(services, appservice, http::Method::GET, &path, None)
            .await
            .is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
