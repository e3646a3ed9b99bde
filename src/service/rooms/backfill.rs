//! Backfill (spec, server-server API, "Backfilling and retrieving missing events"): history this
//! server never received (before it joined a room, or while none of its users was in it) is
//! fetched from the other servers in the room when a client paginates into it.
//!
//! The timeline records its backward extremities, the prev events it names but does not hold
//! (`Timeline::backward_extremities`). [`fill_gaps`] asks a server of the room for the events
//! before the ones a `/messages` page would cross, checks each like any event received (format,
//! signatures, content hash, auth events, and auth against the state before it, fetched with
//! `/state_ids` where its prev events are unknown) and writes it through the one pipeline,
//! `timeline::commit` in `Mode::History`, which places it in history without touching the
//! room's present. A gap no server could fill is not asked for again until its back-off has passed.
//!
//! `fill_gaps`, called by `/messages` going backwards when a page would cross a backward extremity (up to 11 rounds a page): one `/backfill` request of 100 events to a server of the room (ACL permitting, up to 5 tried), each event checked like a received one (format, signatures, hash, auth events, and auth against the state before it, from `/state_ids` when its prev events are unknown) and written oldest first; a gap no server could fill backs off (30 s doubling to an hour, in memory). One async lock per room keeps two pages from fetching the same history; it is held across the requests, which is why it is not the room lock.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{room_version_rules::RoomVersionRules, OwnedEventId, OwnedRoomId, RoomId, ServerName};
use serde_json::Value;

use super::{
    incoming,
    timeline::{Mode, SendTo},
    version::rules_for,
};
use crate::federation::encode;
use crate::{error::Result, service::Services};

/// How many events one `/backfill` request asks for (Synapse asks for as many).
const BATCH: usize = 100;
/// How many backward extremities one request starts from.
const MAX_START_EVENTS: usize = 5;
/// How many servers are asked before a gap counts as unfillable for now.
const MAX_SERVERS: usize = 5;
/// The most events taken from one answer (a server may send more than asked).
const MAX_ANSWER_EVENTS: usize = 2 * BATCH;
/// The first wait before an unfillable gap is asked for again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What backfill remembers between requests: one lock per room, so that two pages do not fetch
/// the same history at once, and the gaps no server could fill.
#[derive(Default)]
pub struct Backfill {
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    failed: Mutex<HashMap<OwnedEventId, (Instant, Duration)>>,
}

impl Backfill {
    fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_locks
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    fn backing_off(&self, event_id: &OwnedEventId) -> bool {
        self.failed
            .lock()
            .get(event_id)
            .is_some_and(|(retry_at, _)| Instant::now() < *retry_at)
    }

    fn record_failure(&self, gaps: &[OwnedEventId]) {
        let mut failed = self.failed.lock();
        for gap in gaps {
            let wait = failed
                .get(gap)
                .map_or(FIRST_BACKOFF, |(_, wait)| (*wait * 2).min(MAX_BACKOFF));
            failed.insert(gap.clone(), (Instant::now() + wait, wait));
        }
    }
}

/// Fetches the history missing behind the events of a room down to `lowest_depth` (a page of
/// `/messages` going back that far would cross it) and returns how many events were added.
/// Nothing to fetch, or no server able to give it, is 0; the caller's page is then complete.
#[tracing::instrument(skip(services), fields(room_id = %room_id))]
pub async fn fill_gaps(
    services: &Services,
    room_id: &RoomId,
    shortroomid: u64,
    lowest_depth: u64,
) -> Result<usize> {
    let backfill = &services.rooms.backfill;
    let lock = backfill.room_lock(room_id);
    let _guard = lock.lock().await;
    // A gap is the missing event behind an event at depth `depth`: it is shallower than that.
    let mut gaps: Vec<(OwnedEventId, u64)> = services
        .rooms
        .timeline
        .backward_extremities(shortroomid)?
        .into_iter()
        .filter(|(event_id, depth)| {
            depth.saturating_sub(1) >= lowest_depth && !backfill.backing_off(event_id)
        })
        .collect();
    if gaps.is_empty() {
        return Ok(0);
    }
    gaps.sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
    let gaps: Vec<OwnedEventId> = gaps
        .into_iter()
        .take(MAX_START_EVENTS)
        .map(|(event_id, _)| event_id)
        .collect();
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    for server in servers_to_ask(services, room_id)? {
        match backfill_from(services, &server, room_id, &rules, &gaps).await {
            Ok(0) => {}
            Ok(added) => return Ok(added),
            Err(error) => tracing::info!(%server, %error, "backfill request failed"),
        }
    }
    backfill.record_failure(&gaps);
    Ok(0)
}

/// The servers to ask: those with joined members (the room's ACL allowing them), then the one in
/// the room ID.
pub(super) fn servers_to_ask(
    services: &Services,
    room_id: &RoomId,
) -> Result<Vec<ruma::OwnedServerName>> {
    let own = services.globals.server_name();
    let mut servers = services
        .rooms
        .members
        .servers_in_room_except(room_id, own)?;
    if let Some(server) = room_id.server_name() {
        if server != own && !servers.iter().any(|known| known == server) {
            servers.push(server.to_owned());
        }
    }
    let mut allowed = Vec::new();
    for server in servers {
        if incoming::server_allowed(services, room_id, &server)? {
            allowed.push(server);
        }
    }
    allowed.truncate(MAX_SERVERS);
    Ok(allowed)
}

/// Fetches one event of a room from `server` with `/event` (the event that server's
/// `timestamp_to_event` named) and adds it to history like a backfilled one, so that a client can
/// take `/context` and paginate from it. An event the timeline holds already is left alone.
pub async fn fetch_event(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
) -> Result<()> {
    if services.rooms.timeline.get_pdu_id(event_id)?.is_some() {
        return Ok(());
    }
    let lock = services.rooms.backfill.room_lock(room_id);
    let _guard = lock.lock().await;
    let path = format!("/_matrix/federation/v1/event/{}", encode(event_id.as_str()));
    let answer = services
        .federation_request(server, http::Method::GET, &path, None)
        .await?;
    let event = answer["pdus"].get(0).cloned().unwrap_or(Value::Null);
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    let parsed = incoming::parse_pdu(&event, room_id, &rules)?;
    if parsed.event_id != event_id {
        return Err(crate::error::Error::bad_json(format!(
            "{server} answered another event than {event_id}"
        )));
    }
    add_event(services, server, room_id, &rules, &event).await?;
    Ok(())
}

/// One `/backfill` request to `server` and the events of its answer added oldest first.
async fn backfill_from(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    gaps: &[OwnedEventId],
) -> Result<usize> {
    let mut path = format!(
        "/_matrix/federation/v1/backfill/{}?limit={BATCH}",
        encode(room_id.as_str())
    );
    for gap in gaps {
        path.push_str("&v=");
        path.push_str(&encode(gap.as_str()));
    }
    let answer = services
        .federation_request(server, http::Method::GET, &path, None)
        .await?;
    let mut events: Vec<Value> = answer["pdus"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ANSWER_EVENTS)
        .cloned()
        .collect();
    // Oldest first, so that each event's prev events are in place before it.
    events.sort_by_key(|event| event["depth"].as_u64().unwrap_or(0));
    let mut added = 0;
    for event in &events {
        match add_event(services, server, room_id, rules, event).await {
            Ok(true) => added += 1,
            Ok(false) => {}
            Err(error) => tracing::info!(%server, %error, "a backfilled event was refused"),
        }
    }
    Ok(added)
}

/// Checks one backfilled event like any received one (checks 1 to 5, `incoming::checks`) and
/// writes it into history through the one pipeline. `false` when it is in the timeline already.
async fn add_event(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    value: &Value,
) -> Result<bool> {
    let timeline = &services.rooms.timeline;
    let (event_id, checked) = incoming::check_received(services, room_id, rules, value).await?;
    let Some(incoming::Checked { object, pdu }) = checked else {
        return Ok(false);
    };
    incoming::fetch_missing_auth(services, origin, room_id, rules, &pdu).await?;
    incoming::check_against_auth_events(services, rules, &pdu)?;
    // The oldest event of a batch has prev events nobody here holds: the state before it comes
    // from `origin`. The others follow from the events just added.
    let fetched_state = if incoming::prev_events_known(services, &pdu)? {
        None
    } else {
        Some(incoming::fetch_state_before(services, origin, room_id, rules, &pdu).await?)
    };
    let lock = timeline.room_lock(room_id);
    let _guard = lock.lock();
    if timeline.get_pdu_id(&event_id)?.is_some() {
        return Ok(false);
    }
    let state_before = incoming::state_before(services, rules, &pdu, fetched_state)?;
    incoming::check_against_state(services, rules, &pdu, &state_before)?;
    let checked = incoming::Checked { object, pdu };
    let history = (SendTo::Nobody, Mode::History);
    incoming::commit_received(services, room_id, checked, state_before, history, None)?;
    Ok(true)
}
