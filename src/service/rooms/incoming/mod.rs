//! Receiving PDUs from other servers: the spec's checks in the order it lists them, then the one
//! commit path.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{PublicKeyMap, Verified},
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, ServerName,
};
use serde_json::{json, Value};

use super::{
    pdu::Pdu,
    state::StateSet,
    timeline::{commit, CommitInput, SendTo},
    version::rules_for,
};
use crate::{
    crypto,
    error::{Error, Result},
    service::{policy, server_keys, Services},
};

mod reject;
mod state;

use self::state::resolve_current;
pub(super) use self::state::{
    fetch_state_before, first_prev_state, state_after_prev_events, store_state,
};
pub use self::state::{resolve_sets, state_set_of};
pub use super::pdu::federation_value;
pub use crate::federation::encode;

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65536;
/// How many missing events one `/get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// How deep the recursion through missing prev events goes before falling back to `/state_ids`:
/// events answered by `/get_missing_events` do not start another one; a gap before them is
/// filled with the state (as Synapse does, and as Complement's `/get_missing_events` handlers,
/// which answer only for the event that was pushed, expect).
const MAX_MISSING_DEPTH: usize = 1;

/// What became of a received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the timeline (now or before).
    Accepted,
    /// Kept, but not in the timeline: it passed the checks against its own state but not against
    /// the room's current state, or the room's policy server does not recommend it. The text says
    /// why.
    SoftFailed(String),
}

/// A received PDU after the format checks: its ID and its canonical object (without `event_id`).
pub struct Parsed {
    pub event_id: OwnedEventId,
    pub object: CanonicalJsonObject,
}

/// Format checks (server-server API, "Checks performed on receipt of a PDU", check 1): canonical
/// JSON, the size limit, the room, and the event ID the room version gives it.
pub fn parse_pdu(value: &Value, room_id: &RoomId, rules: &RoomVersionRules) -> Result<Parsed> {
    let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(value.clone())
    else {
        return Err(Error::bad_json("pdu is not a canonical JSON object"));
    };
    object.remove("unsigned");
    let size = CanonicalJsonValue::Object(object.clone()).to_string().len();
    if size > MAX_PDU_BYTES {
        return Err(Error::matrix(
            ErrorKind::TooLarge,
            format!("pdu of {size} bytes exceeds {MAX_PDU_BYTES}"),
        ));
    }
    let event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => OwnedEventId::try_from(id.as_str())
                .map_err(|_| Error::bad_json("invalid event_id"))?,
            _ => return Err(Error::bad_json("pdu without event_id")),
        },
        _ => {
            object.remove("event_id");
            crypto::reference_event_id(&object, rules)
                .map_err(|error| Error::bad_json(format!("pdu: {error}")))?
        }
    };
    let claimed_room = match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) => Some(id.clone()),
        _ => None,
    };
    let is_create = matches!(object.get("type"), Some(CanonicalJsonValue::String(kind)) if kind == "m.room.create");
    let in_room = match claimed_room {
        Some(claimed) => claimed == room_id.as_str(),
        // Room versions whose room ID is the create event's ID leave `room_id` out of it.
        None => {
            is_create
                && rules.authorization.room_create_event_id_as_room_id
                && room_id.as_str()[1..] == event_id.as_str()[1..]
        }
    };
    if !in_room {
        return Err(Error::bad_json(format!(
            "pdu {event_id} is not in {room_id}"
        )));
    }
    Ok(Parsed { event_id, object })
}

/// Signature and hash checks (checks 2 and 3): every server the room version requires must have
/// signed the redacted event with a key valid when it was sent; an event whose content does not
/// match its hash is kept in redacted form.
pub async fn verify_pdu(
    services: &Services,
    parsed: &Parsed,
    rules: &RoomVersionRules,
) -> Result<CanonicalJsonObject> {
    // Signatures cover the object as sent: `event_id` is part of it only in room versions 1
    // and 2, where `parse_pdu` kept it.
    let object = parsed.object.clone();
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|error| Error::forbidden(format!("pdu signatures: {error}")))?;
    let sent_at = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => 0,
    };
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => signatures.clone(),
        _ => return Err(Error::forbidden("pdu without signatures")),
    };
    let mut key_map = PublicKeyMap::new();
    for server in &servers {
        let key_ids: Vec<String> = match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
            _ => return Err(Error::forbidden(format!("pdu not signed by {server}"))),
        };
        let mut keys = BTreeMap::new();
        for key_id in key_ids.iter().filter(|id| id.starts_with("ed25519:")) {
            let found = services
                .server_keys
                .get_keys(
                    &services.federation,
                    &services.globals,
                    server,
                    Some(key_id),
                    sent_at.min(crate::util::now_millis()),
                )
                .await?;
            if let Some(public) = found.get(key_id) {
                keys.insert(key_id.clone(), public.clone());
            }
        }
        if keys.is_empty() {
            return Err(Error::forbidden(format!(
                "no valid key of {server} for pdu {}",
                parsed.event_id
            )));
        }
        key_map.insert(server.to_string(), server_keys::to_key_set(&keys)?);
    }
    let verified = crypto::verify_event(&key_map, &object, rules)
        .map_err(|error| Error::forbidden(format!("pdu {}: {error}", parsed.event_id)))?;
    let mut object = parsed.object.clone();
    if verified == Verified::Signatures {
        tracing::warn!(event_id = %parsed.event_id, "content hash mismatch; keeping the redacted event");
        object = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|error| Error::bad_json(format!("pdu cannot be redacted: {error}")))?;
    }
    Ok(object)
}

/// Turns a verified object into a [`Pdu`] (with its event ID).
pub fn to_pdu(event_id: &EventId, object: &CanonicalJsonObject) -> Result<Pdu> {
    let mut with_id = object.clone();
    with_id.insert(
        "event_id".into(),
        CanonicalJsonValue::String(event_id.to_string()),
    );
    Pdu::from_object(&with_id)
}

/// Auth check against the event's own auth events (check 4): they must be known, and the event
/// must pass the auth rules with them as the state.
pub fn check_against_auth_events(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<()> {
    let timeline = &services.rooms.timeline;
    let mut auth_state: HashMap<(StateEventType, String), Pdu> = HashMap::new();
    let mut auth_ids = pdu.auth_events.clone();
    // From room version 12 the create event is not listed: the room ID names it.
    if rules.authorization.room_create_event_id_as_room_id
        && pdu.kind != TimelineEventType::RoomCreate
    {
        if let Some(room_id) = &pdu.room_id {
            let create_id = OwnedEventId::try_from(format!("${}", &room_id.as_str()[1..]))
                .map_err(|_| Error::bad_json("room ID does not name a create event"))?;
            auth_ids.push(create_id);
        }
    }
    for auth_id in &auth_ids {
        if services.rooms.rejected.is_rejected(auth_id)? {
            return Err(Error::forbidden(format!(
                "auth event {auth_id} was rejected"
            )));
        }
        let auth_event = timeline
            .get_pdu(auth_id)?
            .ok_or_else(|| Error::forbidden(format!("auth event {auth_id} is unknown")))?;
        if auth_event.room_id.is_some() && auth_event.room_id != pdu.room_id {
            return Err(Error::forbidden(format!(
                "auth event {auth_id} is in another room"
            )));
        }
        let Some(state_key) = auth_event.state_key.clone() else {
            return Err(Error::forbidden(format!(
                "auth event {auth_id} is not state"
            )));
        };
        let slot = (StateEventType::from(auth_event.kind.to_string()), state_key);
        if auth_state.insert(slot, auth_event).is_some() {
            return Err(Error::forbidden("two auth events for one state key"));
        }
    }
    let fetch_event = |event_id: &EventId| timeline.get_pdu(event_id).ok().flatten();
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|reason| Error::forbidden(format!("event not allowed: {reason}")))?;
    let fetch_state = |event_type: &StateEventType, state_key: &str| {
        auth_state
            .get(&(event_type.clone(), state_key.to_owned()))
            .cloned()
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state).map_err(
        |reason| Error::forbidden(format!("event not allowed by its auth events: {reason}")),
    )
}

/// Auth check against a full state set (checks 5 and 6).
pub(super) fn check_against_state(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateSet,
) -> Result<()> {
    let rooms = &services.rooms;
    let fetch_state = |event_type: &StateEventType, state_key: &str| -> Option<Pdu> {
        let short = rooms
            .short
            .get_shortstatekey(event_type, state_key)
            .ok()??;
        let shortevent = state.get(&short)?;
        let event_id = rooms.short.get_eventid(*shortevent).ok()?;
        rooms.timeline.get_pdu(&event_id).ok()?
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|reason| Error::forbidden(format!("event not allowed: {reason}")))
}

/// Stores verified events that have no place in the timeline (auth chains, state from a join),
/// after checking each against its own auth events, oldest first. Events that fail are dropped.
pub async fn store_outliers(
    services: &Services,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    values: &[Value],
) -> Result<Vec<OwnedEventId>> {
    let mut verified = Vec::new();
    for value in values {
        let Ok(parsed) = parse_pdu(value, room_id, rules) else {
            continue;
        };
        if services.rooms.timeline.has_event(&parsed.event_id)? {
            verified.push((parsed.event_id, None));
            continue;
        }
        if services.rooms.rejected.is_rejected(&parsed.event_id)? {
            continue;
        }
        match verify_pdu(services, &parsed, rules).await {
            Ok(object) => verified.push((parsed.event_id, Some(object))),
            Err(error) => {
                tracing::warn!(event_id = %parsed.event_id, %error, "dropping an invalid event")
            }
        }
    }
    // Oldest first, so that each event's auth events are stored before it is checked.
    let mut pending: Vec<(OwnedEventId, CanonicalJsonObject, Pdu)> = Vec::new();
    let mut stored = Vec::new();
    for (event_id, object) in verified {
        match object {
            Some(object) => {
                let pdu = to_pdu(&event_id, &object)?;
                pending.push((event_id, object, pdu));
            }
            None => stored.push(event_id),
        }
    }
    pending.sort_by_key(|(_, _, pdu)| pdu.depth);
    for (event_id, mut object, pdu) in pending {
        if let Err(error) = check_against_auth_events(services, rules, &pdu) {
            tracing::warn!(%event_id, %error, "dropping an event its auth events reject");
            if super::rejected::auth_events_settled(services, &pdu)? {
                services.rooms.rejected.mark(
                    &services.rooms.short,
                    &services.rooms.state,
                    &event_id,
                    &error.to_string(),
                    None,
                )?;
            }
            continue;
        }
        object.insert(
            "event_id".into(),
            CanonicalJsonValue::String(event_id.to_string()),
        );
        services
            .rooms
            .timeline
            .add_outliers(std::slice::from_ref(&object), &services.db)?;
        stored.push(event_id);
    }
    Ok(stored)
}

/// Fetches the auth events of `pdu` that this server lacks, with their auth chain, from `origin`
/// (`/event_auth`). Answers whether a failed check against the auth events is final: true when
/// none was missing or `origin` answered (an origin that cannot give the auth chain of its own
/// event has had its chance), false when it could not be reached (the events may come later).
pub(super) async fn fetch_missing_auth(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<bool> {
    let mut missing = false;
    for auth_id in &pdu.auth_events {
        if !services.rooms.timeline.has_event(auth_id)?
            && !services.rooms.rejected.is_rejected(auth_id)?
        {
            missing = true;
        }
    }
    if !missing {
        return Ok(true);
    }
    let answer = services
        .federation_request(
            origin,
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                encode(room_id.as_str()),
                encode(pdu.event_id.as_str())
            ),
            None,
        )
        .await;
    match answer {
        Ok(answer) => {
            let chain = answer["auth_chain"].as_array().cloned().unwrap_or_default();
            store_outliers(services, room_id, rules, &chain).await?;
            Ok(true)
        }
        Err(error) => {
            tracing::debug!(event_id = %pdu.event_id, %error, "no auth chain from the origin");
            Ok(origin_answered(&error))
        }
    }
}

/// Whether a failed federation request got an answer from the other server (a `4xx` status), as
/// opposed to finding no server or a failing one.
fn origin_answered(error: &Error) -> bool {
    match error {
        Error::Matrix { .. } => true,
        Error::Remote { source, .. } => source
            .downcast_ref::<crate::federation::RemoteError>()
            .is_some_and(|remote| (400..500).contains(&remote.status)),
        _ => false,
    }
}

/// Handles one PDU from `origin` for `room_id` (server-server API, "Checks performed on receipt
/// of a PDU"), in the spec's order:
/// 1. format: valid canonical JSON under 65536 bytes, in this room, with the ID its room version
///    gives it ([`parse_pdu`]);
/// 2. signatures of every server the room version requires ([`verify_pdu`]);
/// 3. content hash: on mismatch the event is redacted and processing goes on;
/// 4. auth against its own auth events, fetched from `origin` if unknown (`/event_auth`);
/// 5. auth against the state before it: the state after its prev events (resolved with state
///    resolution v2 when there are several), missing prev events being fetched with
///    `/get_missing_events`, or, when a gap remains, the state after each missing prev event
///    with `/state_ids`;
/// 6. auth against the room's current state: failing only this is a soft failure, and the event
///    is kept out of the timeline;
/// 7. in a room that uses a policy server, a valid signature of it (asked for once more when
///    missing or invalid, `service::policy::check_received`): without one, a soft failure too.
///
/// Then it is committed, with the room's current state the resolution of every forward
/// extremity's state.
///
/// What is missing is fetched before any check, prev events first: the state that fills a gap
/// in the graph usually holds the unknown auth events too, so `/event_auth` is asked only for
/// what is still missing after it (Synapse's order, which Complement's requests expect). An event
/// that fails check 4 or 5 for good is remembered as rejected (see `rooms::rejected`), and its
/// `Err` names the reason.
#[tracing::instrument(skip_all, fields(room_id = %room_id, origin = %origin))]
pub async fn handle(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    value: &Value,
    send_to: SendTo<'_>,
) -> Result<(OwnedEventId, Outcome)> {
    handle_with_depth(services, origin, room_id, value, send_to, 0).await
}

async fn handle_with_depth(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    value: &Value,
    send_to: SendTo<'_>,
    depth: usize,
) -> Result<(OwnedEventId, Outcome)> {
    let rooms = &services.rooms;
    let (shortroomid, version) = rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;

    // 1. Format.
    let parsed = parse_pdu(value, room_id, &rules)?;
    if rooms.timeline.get_pdu_id(&parsed.event_id)?.is_some() {
        return Ok((parsed.event_id, Outcome::Accepted));
    }
    if rooms.rejected.is_rejected(&parsed.event_id)? {
        return Err(Error::forbidden(format!(
            "event {} was rejected before",
            parsed.event_id
        )));
    }
    // 2–3. Signatures and content hash.
    let mut object = verify_pdu(services, &parsed, &rules).await?;
    let pdu = to_pdu(&parsed.event_id, &object)?;
    // 4. Auth events, at once when they are all here (a forged event costs no fetching).
    let auth_known = super::rejected::auth_events_settled(services, &pdu)?;
    if auth_known {
        check_or_reject_by_auth_events(services, &rules, &pdu, true, None)?;
    }
    // Prev events: fetch what is missing, or else the state before the event (for check 5),
    // then the auth events the state did not bring (for check 4).
    let mut fetched_state = None;
    if !prev_events_known(services, &pdu)? {
        if depth < MAX_MISSING_DEPTH {
            fetch_missing_prev_events(services, origin, room_id, &pdu, depth).await;
        }
        if !prev_events_known(services, &pdu)? {
            fetched_state =
                Some(fetch_state_before(services, origin, room_id, &rules, &pdu).await?);
        }
    }
    if !auth_known {
        let auth_final = fetch_missing_auth(services, origin, room_id, &rules, &pdu).await?;
        check_or_reject_by_auth_events(services, &rules, &pdu, auth_final, fetched_state.as_ref())?;
    }

    // 7 (asked before the lock, since it may need a request): the policy server's signature.
    let recommended = policy::check_received(services, room_id, &rules, &mut object).await;

    let lock = rooms.timeline.room_lock(room_id);
    let _guard = lock.lock();
    if rooms.timeline.get_pdu_id(&parsed.event_id)?.is_some() {
        return Ok((parsed.event_id, Outcome::Accepted));
    }
    // 5. The state before the event.
    let state_before = match fetched_state {
        Some(state) => state,
        None => state_after_prev_events(services, &rules, &pdu)?,
    };
    if let Err(error) = check_against_state(services, &rules, &pdu, &state_before) {
        let before_hash = store_state(services, &state_before, first_prev_state(services, &pdu)?)?;
        rooms.rejected.mark(
            &rooms.short,
            &rooms.state,
            &pdu.event_id,
            &error.to_string(),
            Some(before_hash.unwrap_or(0)),
        )?;
        return Err(error);
    }

    // 6. Current state, and 7. the policy server: a failure of either is a soft failure.
    let current_hash = rooms.state.get_room_state(shortroomid)?;
    let current = match current_hash {
        Some(hash) => rooms.state.load(hash)?,
        None => Default::default(),
    };
    let soft_failure = match check_against_state(services, &rules, &pdu, &current) {
        Err(error) => Some(error.shareable()),
        Ok(()) => recommended.err().map(|error| {
            format!(
                "the room's policy server does not recommend the event: {}",
                error.shareable()
            )
        }),
    };
    if let Some(error) = soft_failure {
        tracing::info!(event_id = %pdu.event_id, %error, "soft-failing an event");
        let mut stored = object.clone();
        stored.insert(
            "event_id".into(),
            CanonicalJsonValue::String(pdu.event_id.to_string()),
        );
        rooms
            .timeline
            .add_outliers(std::slice::from_ref(&stored), &services.db)?;
        return Ok((parsed.event_id, Outcome::SoftFailed(error)));
    }

    let before_hash = store_state(services, &state_before, first_prev_state(services, &pdu)?)?;
    let current_state = resolve_current(services, &rules, shortroomid, &pdu, &state_before)?;
    commit(
        services,
        CommitInput {
            room_id,
            object,
            pdu,
            state_before: before_hash,
            transaction: None,
            send_to,
            current_state,
        },
    )?;
    Ok((parsed.event_id, Outcome::Accepted))
}

/// Check 4, remembering an event that fails it for good as rejected (`final_failure` says that
/// its unknown auth events, if any, cannot be had); `state_before` is the state fetched for it
/// when its prev events are not here.
fn check_or_reject_by_auth_events(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    final_failure: bool,
    state_before: Option<&StateSet>,
) -> Result<()> {
    let Err(error) = check_against_auth_events(services, rules, pdu) else {
        return Ok(());
    };
    reject::reject_by_auth_events(services, rules, pdu, &error, final_failure, state_before)?;
    Err(error)
}

pub(super) fn prev_events_known(services: &Services, pdu: &Pdu) -> Result<bool> {
    for prev in &pdu.prev_events {
        let Some(short) = services.rooms.short.get_shorteventid(prev)? else {
            return Ok(false);
        };
        if services.rooms.state.get_event_state(short)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn fetch_missing_prev_events(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    pdu: &Pdu,
    depth: usize,
) {
    let Ok(shortroomid) = services.rooms.short.get_or_create_shortroomid(room_id) else {
        return;
    };
    let earliest = services
        .rooms
        .timeline
        .extremities(shortroomid)
        .unwrap_or_default();
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [pdu.event_id],
        "limit": MISSING_EVENTS_LIMIT,
        "min_depth": 0,
    });
    let answer = services
        .federation_request(
            origin,
            http::Method::POST,
            &format!(
                "/_matrix/federation/v1/get_missing_events/{}",
                encode(room_id.as_str())
            ),
            Some(&body),
        )
        .await;
    let Ok(answer) = answer else {
        return;
    };
    let mut events = answer["events"].as_array().cloned().unwrap_or_default();
    events.sort_by_key(|event| event["depth"].as_u64().unwrap_or(0));
    for event in events {
        let result = Box::pin(handle_with_depth(
            services,
            origin,
            room_id,
            &event,
            SendTo::Nobody,
            depth + 1,
        ))
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, "a missing event could not be added");
        }
    }
}

/// Whether a server may take part in a room under its `m.room.server_acl` (current state).
pub fn server_allowed(services: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    let Some(acl) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomServerAcl, "")?
    else {
        return Ok(true);
    };
    let Ok(content) = serde_json::from_str::<
        ruma::events::room::server_acl::RoomServerAclEventContent,
    >(acl.content.get()) else {
        return Ok(true);
    };
    Ok(content.is_allowed(server))
}
