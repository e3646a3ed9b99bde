//! Checks 1 to 6 of "Checks performed on receipt of a PDU" (server-server API) as functions of
//! their own, shared by every way a received event enters a room: `/send` and the other pushes
//! (`incoming::handle`), backfill, and the answer to our own `send_join`.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{PublicKeyMap, Verified},
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId,
};
use serde_json::Value;

use crate::{
    crypto,
    error::{Error, Result},
    service::{
        rooms::{pdu::Pdu, state::StateSet},
        server_keys, Services,
    },
};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65536;

/// A received event after checks 1 to 3: its canonical object (without `event_id`, redacted when
/// its content hash did not match) and its [`Pdu`].
pub struct Checked {
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
}

/// Checks 1 to 3 (format, signatures, content hash) of a received event, with its ID; `None`
/// when the timeline holds it already. An event rejected before is refused again.
pub async fn check_received(
    services: &Services,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    value: &Value,
) -> Result<(OwnedEventId, Option<Checked>)> {
    let parsed = parse_pdu(value, room_id, rules)?;
    let rooms = &services.rooms;
    if rooms.timeline.get_pdu_id(&parsed.event_id)?.is_some() {
        return Ok((parsed.event_id, None));
    }
    if rooms.rejected.is_rejected(&parsed.event_id)? {
        return Err(Error::forbidden(format!(
            "event {} was rejected before",
            parsed.event_id
        )));
    }
    let object = verify_pdu(services, &parsed, rules).await?;
    let pdu = to_pdu(&parsed.event_id, &object)?;
    Ok((parsed.event_id, Some(Checked { object, pdu })))
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
pub(in crate::service::rooms) fn check_against_state(
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
