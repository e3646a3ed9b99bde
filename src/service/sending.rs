//! The federation sender: a persisted queue of PDUs and EDUs per destination, and one worker per
//! destination that sends them as transactions (at most 50 PDUs and 100 EDUs each, one in flight),
//! backing off exponentially while the destination fails.
//!
//! The per-destination queue, written in the commit batch (a 200 means the event is also queued for every server in the room; several EDUs queued by one write sit behind its position with an index), one worker per destination, transactions of at most 50 PDUs and 100 EDUs whose ID is the first queued position (so a retry is idempotent), exponential backoff up to an hour, cut short (and started over) when the destination sends us any request its signature authenticates (`http/x_matrix.rs` calls `Sending::heard_from`), as Synapse does for the servers that contact it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{EventId, OwnedServerName, ServerName};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Batch, Db, Tree},
    util,
};

/// Limits of one transaction (server-server API, "Transactions").
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// First and longest wait after a failed transaction.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Wake-ups of one destination's worker.
#[derive(Default)]
struct Destination {
    /// Something was queued.
    queued: Notify,
    /// The destination talked to us, so it is probably back: retry now instead of waiting.
    heard_from: Notify,
    /// The worker is waiting out a back-off; only then does `heard_from` wake it (a wake-up
    /// stored while it is sending would cut its next back-off short for no reason).
    backing_off: AtomicBool,
    /// What the admins see of the destination's health.
    health: Mutex<Health>,
}

/// A destination's sending health, in the terms of Synapse's destinations admin API (times in
/// ms since the epoch).
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// When the current run of failures began (`None` while sends succeed).
    pub failure_ts: Option<u64>,
    /// When the last failed attempt was (0 after a success).
    pub retry_last_ts: u64,
    /// How long the worker waits after that attempt (0 when it is not backing off).
    pub retry_interval_ms: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When a transaction last went through.
    pub last_success_ts: Option<u64>,
}

/// A destination as the admins see it.
#[derive(Clone, Debug)]
pub struct DestinationInfo {
    pub server: OwnedServerName,
    pub health: Health,
    /// Items waiting in its queue.
    pub queued: u64,
}

/// A destination announced to the sender's supervisor.
type NewDestination = (OwnedServerName, Arc<Destination>);

/// The oldest queued items of a destination: their queue keys, PDU event IDs and EDUs.
struct QueuedBatch {
    /// The transaction ID: the queue positions of the first and last items, so that a retry of
    /// the same items reuses it and a transaction with other items never does (a receiver that
    /// already answered an ID answers again without reading the body).
    txn_id: String,
    keys: Vec<Vec<u8>>,
    pdus: Vec<String>,
    edus: Vec<Value>,
}

/// Owns `servercount_outgoing` (destination 0xff count u64, then an index u16 for the second and
/// later EDUs one write queues → JSON `{"pdu": event ID}` or `{"edu": {...}}`); the count is the
/// stream position of the write that queued it.
pub struct Sending {
    db: Arc<Db>,
    servercount_outgoing: Tree,
    destinations: Mutex<HashMap<OwnedServerName, Arc<Destination>>>,
    new_destinations: mpsc::UnboundedSender<NewDestination>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<NewDestination>>>,
}

impl Sending {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        let (new_destinations, receiver) = mpsc::unbounded_channel();
        Self {
            db: Arc::clone(db),
            servercount_outgoing: db.tree("servercount_outgoing"),
            destinations: Mutex::new(HashMap::new()),
            new_destinations,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Queues a PDU for each destination in the batch that commits it, so that an acknowledged
    /// event is never left unsent by a crash.
    pub fn queue_pdu_in_batch(
        &self,
        batch: &mut Batch,
        destinations: &[OwnedServerName],
        count: u64,
        event_id: &EventId,
    ) {
        let value = json!({ "pdu": event_id }).to_string();
        for destination in destinations {
            let entry = key::join(&[destination.as_bytes(), &key::u64_bytes(count)]);
            batch.insert(&self.servercount_outgoing, &entry, value.as_bytes());
        }
    }

    /// Queues an EDU for each destination in the batch that carries stream position `count`.
    pub fn queue_edu_in_batch(
        &self,
        batch: &mut Batch,
        destinations: &[OwnedServerName],
        count: u64,
        edu: &Value,
    ) {
        let value = json!({ "edu": edu }).to_string();
        for destination in destinations {
            let entry = key::join(&[destination.as_bytes(), &key::u64_bytes(count)]);
            batch.insert(&self.servercount_outgoing, &entry, value.as_bytes());
        }
    }

    /// Queues several EDUs for each destination in the batch that carries stream position `count`
    /// (after anything else queued at `count`: the entries get the index 1, 2, … behind it), in
    /// the order given.
    pub fn queue_edus_in_batch(
        &self,
        batch: &mut Batch,
        destinations: &[OwnedServerName],
        count: u64,
        edus: &[Value],
    ) {
        for (index, edu) in (1..=u16::MAX).zip(edus) {
            let value = json!({ "edu": edu }).to_string();
            for destination in destinations {
                let mut entry = key::join(&[destination.as_bytes(), &key::u64_bytes(count)]);
                entry.extend_from_slice(&index.to_be_bytes());
                batch.insert(&self.servercount_outgoing, &entry, value.as_bytes());
            }
        }
    }

    /// Wakes the workers of destinations that have something new queued.
    pub fn wake(&self, destinations: &[OwnedServerName]) {
        for destination in destinations {
            self.destination(destination).queued.notify_one();
        }
    }

    /// Tells the worker of a server that the server is reachable again: it sent us a request
    /// that its signature authenticates (any federation request, not only a transaction). A
    /// worker backing off retries at once, with its back-off started over.
    pub fn heard_from(&self, server: &ServerName) {
        if let Some(destination) = self.destinations.lock().get(server) {
            if destination.backing_off.load(Ordering::Acquire) {
                destination.heard_from.notify_one();
            }
        }
    }

    /// Every destination sent to since start-up or still queued for, but `own` (this server,
    /// which the room fan-out may name and nothing is ever sent to), in name order, with its
    /// health and queue depth.
    pub fn iter_destinations(&self, own: &ServerName) -> Result<Vec<DestinationInfo>> {
        let mut known: std::collections::BTreeMap<OwnedServerName, DestinationInfo> = self
            .destinations
            .lock()
            .iter()
            .map(|(server, destination)| {
                let info = DestinationInfo {
                    server: server.clone(),
                    health: destination.health.lock().clone(),
                    queued: 0,
                };
                (server.clone(), info)
            })
            .collect();
        for (name, depth) in self.queue_depths()? {
            let Ok(server) = OwnedServerName::try_from(name) else {
                continue;
            };
            known
                .entry(server.clone())
                .or_insert_with(|| DestinationInfo {
                    server,
                    health: Health::default(),
                    queued: 0,
                })
                .queued = depth;
        }
        known.remove(own);
        Ok(known.into_values().collect())
    }

    /// One destination (not `own`), when it was sent to since start-up or has something queued.
    pub fn get_destination(
        &self,
        own: &ServerName,
        server: &ServerName,
    ) -> Result<Option<DestinationInfo>> {
        Ok(self
            .iter_destinations(own)?
            .into_iter()
            .find(|info| info.server == server))
    }

    /// Cuts a destination's back-off short: its worker retries at once. Answers whether it was
    /// backing off.
    pub fn retry_now(&self, server: &ServerName) -> bool {
        let Some(destination) = self.destinations.lock().get(server).cloned() else {
            return false;
        };
        if !destination.backing_off.load(Ordering::Acquire) {
            return false;
        }
        destination.heard_from.notify_one();
        true
    }

    fn destination(&self, server: &ServerName) -> Arc<Destination> {
        let mut destinations = self.destinations.lock();
        if let Some(existing) = destinations.get(server) {
            return Arc::clone(existing);
        }
        let created = Arc::new(Destination::default());
        destinations.insert(server.to_owned(), Arc::clone(&created));
        let _ = self
            .new_destinations
            .send((server.to_owned(), Arc::clone(&created)));
        created
    }

    /// The oldest queued items of a destination, within the limits of one transaction, after the
    /// queue key `after` (the last one sent) when given.
    ///
    /// Queue entries are written in stream order (under the commit lock), so nothing can appear
    /// behind a key already sent: seeking past it skips the deleted entries that a scan from the
    /// start of the prefix would walk over on every transaction of a long burst.
    fn load_batch(&self, server: &ServerName, after: Option<&[u8]>) -> Result<QueuedBatch> {
        let prefix = key::prefix(&[server.as_bytes()]);
        let start = match after {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            None => prefix.clone(),
        };
        let (mut keys, mut pdus, mut edus) = (Vec::new(), Vec::new(), Vec::new());
        for entry in self.servercount_outgoing.iter_from(&start, false) {
            let (entry_key, value) = entry?;
            if !entry_key.starts_with(&prefix) {
                break;
            }
            let value: Value = serde_json::from_slice(&value)
                .map_err(|e| Error::corrupt("servercount_outgoing", e))?;
            if let Some(event_id) = value["pdu"].as_str() {
                if pdus.len() == MAX_PDUS {
                    break;
                }
                pdus.push(event_id.to_owned());
            } else if let Some(edu) = value.get("edu") {
                if edus.len() == MAX_EDUS {
                    break;
                }
                edus.push(edu.clone());
            }
            keys.push(entry_key.to_vec());
        }
        let txn_id = match (keys.first(), keys.last()) {
            (Some(first), Some(last)) => transaction_id(&prefix, first, last),
            _ => String::new(),
        };
        Ok(QueuedBatch {
            txn_id,
            keys,
            pdus,
            edus,
        })
    }

    /// Items queued per destination (a scan of the whole queue, for metrics).
    pub fn queue_depths(&self) -> Result<Vec<(String, u64)>> {
        let mut depths: Vec<(String, u64)> = Vec::new();
        for entry in self.servercount_outgoing.iter_from(&[], false) {
            let (entry_key, _) = entry?;
            let name = key::split(&entry_key).next().unwrap_or_default();
            match depths.last_mut() {
                Some((last, depth)) if last.as_bytes() == name => *depth += 1,
                _ => depths.push((String::from_utf8_lossy(name).into_owned(), 1)),
            }
        }
        Ok(depths)
    }

    fn pending_destinations(&self) -> Result<Vec<OwnedServerName>> {
        let mut servers = Vec::new();
        let mut start = Vec::new();
        loop {
            let Some(entry) = self.servercount_outgoing.iter_from(&start, false).next() else {
                break;
            };
            let (entry_key, _) = entry?;
            let name = key::split(&entry_key).next().unwrap_or_default();
            let server = OwnedServerName::try_from(String::from_utf8_lossy(name).as_ref())
                .map_err(|e| Error::corrupt("servercount_outgoing", e))?;
            servers.push(server);
            // Skip past every key of this destination.
            // (Keys are name 0xff count; nothing of this destination sorts after name 0xff ×10.)
            start = name.to_vec();
            start.extend_from_slice(&[key::SEP; 10]);
        }
        Ok(servers)
    }
}

/// Runs the sender until `shutdown` flips: one worker per destination, started for everything
/// still queued from before a restart and for each destination that gets something queued.
pub async fn run(services: Arc<Services>, shutdown: watch::Receiver<bool>) {
    let Some(mut receiver) = services.sending.receiver.lock().take() else {
        return;
    };
    match services.sending.pending_destinations() {
        Ok(pending) => {
            for server in pending {
                services.sending.destination(&server).queued.notify_one();
            }
        }
        Err(error) => tracing::error!(%error, "reading the federation queue failed"),
    }
    let mut workers = tokio::task::JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            received = receiver.recv() => {
                let Some((server, destination)) = received else { break };
                workers.spawn(destination_worker(
                    Arc::clone(&services),
                    server,
                    destination,
                    shutdown.clone(),
                ));
            }
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    while workers.join_next().await.is_some() {}
}

#[tracing::instrument(skip_all, fields(destination = %server))]
async fn destination_worker(
    services: Arc<Services>,
    server: OwnedServerName,
    destination: Arc<Destination>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // The last queue key sent and dequeued: the next batch starts after it.
    let mut sent_up_to: Option<Vec<u8>> = None;
    // A transaction that failed is retried with exactly its items until it goes through.
    let mut retry: Option<QueuedBatch> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let queued = match retry.take() {
            Some(queued) => queued,
            None => match services.sending.load_batch(&server, sent_up_to.as_deref()) {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "reading the federation queue failed");
                    return;
                }
            },
        };
        if queued.keys.is_empty() {
            tokio::select! {
                () = destination.queued.notified() => continue,
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
        let sent = attempt(&services, &server, &destination, &queued, failures).await;
        let keys = &queued.keys;
        match sent {
            Ok(()) => {
                failures = 0;
                let mut batch = Batch::default();
                for entry in keys {
                    batch.remove(&services.sending.servercount_outgoing, entry);
                }
                if let Err(error) = services.sending.db.write(batch) {
                    tracing::error!(%error, "dequeuing a sent transaction failed");
                    return;
                }
                sent_up_to = keys.last().cloned();
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures.min(12));
                tracing::warn!(%error, failures, wait_secs = wait.as_secs(), "transaction failed; backing off");
                retry = Some(queued);
                destination.backing_off.store(true, Ordering::Release);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = destination.heard_from.notified() => {
                        tracing::info!("the destination contacted us; retrying now");
                        failures = 0;
                    }
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                }
                destination.backing_off.store(false, Ordering::Release);
            }
        }
    }
}

/// Sends a batch as one transaction and records the outcome (metrics, health); a server the
/// admins denied gets nothing, and its batch counts as sent so that the queue is dropped.
async fn attempt(
    services: &Services,
    server: &ServerName,
    destination: &Destination,
    queued: &QueuedBatch,
    failures: u32,
) -> Result<()> {
    if services.admin.blocks.is_server_denied(server) {
        tracing::debug!("the destination is denied; dropping its queued items");
        return Ok(());
    }
    let sent = send_transaction(
        services,
        server,
        &queued.txn_id,
        &queued.pdus,
        queued.edus.clone(),
    )
    .await;
    services.metrics.transaction(server, sent.is_ok());
    record_health(destination, sent.as_ref().err(), failures);
    sent
}

/// Records the outcome of an attempt in the destination's health; `failures` counts the
/// failures before this one.
fn record_health(destination: &Destination, error: Option<&Error>, failures: u32) {
    let now = util::now_millis();
    let mut health = destination.health.lock();
    match error {
        None => {
            *health = Health {
                last_success_ts: Some(now),
                ..Health::default()
            };
        }
        Some(error) => {
            health.failure_ts.get_or_insert(now);
            health.retry_last_ts = now;
            health.retry_interval_ms =
                u64::try_from(backoff(failures + 1).as_millis()).unwrap_or(u64::MAX);
            health.failures = failures + 1;
            health.last_error = Some(error.to_string());
        }
    }
}

/// How long to wait after the `failures`-th failure in a row: doubling from
/// [`BACKOFF_START`] up to [`BACKOFF_MAX`].
fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(2u32.saturating_pow(failures.clamp(1, 13) - 1))
        .min(BACKOFF_MAX)
}

/// A transaction's ID from its first and last queue keys (after the destination prefix): the
/// first item's stream position, then the last key's position and index in hex. Two loads of the
/// queue from one start give the same ID only when they hold the same items, so a transaction
/// reloaded after a restart with more items than a sent one is not taken for its retry.
fn transaction_id(prefix: &[u8], first: &[u8], last: &[u8]) -> String {
    let first_count = first
        .get(prefix.len()..)
        .and_then(key::read_u64)
        .unwrap_or(0);
    let last_hex: String = last
        .get(prefix.len()..)
        .unwrap_or_default()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{first_count}.{last_hex}")
}

/// Sends one transaction under `txn_id` ([`transaction_id`]), so a retry after a lost answer
/// reuses it and the receiver can drop the duplicate.
#[tracing::instrument(skip_all, fields(pdus = pdu_ids.len(), edus = edus.len()))]
async fn send_transaction(
    services: &Services,
    server: &ServerName,
    txn_id: &str,
    pdu_ids: &[String],
    edus: Vec<Value>,
) -> Result<()> {
    let mut pdus = Vec::with_capacity(pdu_ids.len());
    for event_id in pdu_ids {
        let Ok(event_id) = ruma::OwnedEventId::try_from(event_id.as_str()) else {
            continue;
        };
        if let Some(pdu) = services.rooms.timeline.get_federation_pdu(&event_id)? {
            pdus.push(pdu);
        }
    }
    // Nothing leaves the server before it is on disk here (group commit).
    services.globals.durable().await?;
    let body = json!({
        "origin": services.globals.server_name(),
        "origin_server_ts": util::now_millis(),
        "pdus": pdus,
        "edus": edus,
    });
    let answer = services
        .federation_request(
            server,
            http::Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn_id}"),
            Some(&body),
        )
        .await?;
    tracing::debug!(txn_id, "transaction delivered");
    for (event_id, result) in answer["pdus"].as_object().into_iter().flatten() {
        if let Some(error) = result.get("error") {
            tracing::warn!(%event_id, %error, "destination rejected an event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use futures_util::FutureExt;
    use ruma::OwnedServerName;

    use super::{transaction_id, Sending};
    use crate::store::{key, Db};

    #[test]
    fn a_request_from_a_server_wakes_its_worker_only_while_it_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let sending = Sending::open(&db);
        let server = OwnedServerName::try_from("remote.example").unwrap();
        // A server nothing was ever queued for has no worker to wake.
        sending.heard_from(&server);
        assert!(sending.destinations.lock().is_empty());

        let destination = sending.destination(&server);
        // A worker that is sending, or idle, is not woken later by an old contact.
        sending.heard_from(&server);
        assert!(destination.heard_from.notified().now_or_never().is_none());
        // A worker waiting out a back-off is, even if the contact comes before it waits.
        destination.backing_off.store(true, Ordering::Release);
        sending.heard_from(&server);
        assert!(destination.heard_from.notified().now_or_never().is_some());
        assert!(destination.heard_from.notified().now_or_never().is_none());
    }

    fn queue_key(prefix: &[u8], count: u64, index: Option<u16>) -> Vec<u8> {
        let mut entry = prefix.to_vec();
        entry.extend_from_slice(&key::u64_bytes(count));
        if let Some(index) = index {
            entry.extend_from_slice(&index.to_be_bytes());
        }
        entry
    }

    #[test]
    fn transaction_ids_differ_whenever_the_items_differ() {
        let prefix = key::prefix(&[b"example.org"]);
        let first = queue_key(&prefix, 7, None);
        let short = transaction_id(&prefix, &first, &queue_key(&prefix, 9, None));
        assert_eq!(
            short,
            transaction_id(&prefix, &first, &queue_key(&prefix, 9, None)),
            "a retry of the same items keeps its ID"
        );
        assert!(short.starts_with("7."), "{short}");
        let longer = transaction_id(&prefix, &first, &queue_key(&prefix, 12, None));
        let indexed = transaction_id(&prefix, &first, &queue_key(&prefix, 9, Some(1)));
        assert_ne!(short, longer);
        assert_ne!(short, indexed);
        assert!(longer.chars().all(|c| c.is_ascii_hexdigit() || c == '.'));
    }
}
