//! Stripped state: the room state that goes with an invite or a knock, sent to other servers as
//! full PDUs (spec v1.16, MSC4311), checked when it arrives, and shown to clients before they join.
//!
//! Owns no tree: `handshake` stores what arrives, `sync` serves it.
//!
//! The stripped state of invites and knocks (spec v1.16, MSC4311). Sent to other servers (`invite_room_state`, `knock_room_state`) as full signed PDUs with the create event; received entries are checked (format, room, signatures and hashes, `incoming::parse_pdu` and `verify_pdu`) and kept in the form clients see: stripped to `type`, `state_key`, `sender` and `content`, except the create event of a room version 12 room, shown whole so that a client can check the room ID (Complement expects its `origin_server_ts`). For a knock, entries that fail are dropped; for an invite they are kept stripped and logged as a warning, as the spec allows while servers migrate. Owns no tree.

use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, CanonicalJsonObject, RoomId,
};
use serde_json::{json, Map, Value};

use super::{incoming, pdu::Pdu};
use crate::{error::Result, service::Services};

/// The state events shown to a user before joining, in the order of the client-server API's
/// "Stripped state" list; the create event is required there since v1.16.
pub const STATE_TYPES: [StateEventType; 7] = [
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomEncryption,
    StateEventType::RoomTopic,
];

/// Whether the state arrived with an invite or answered a knock: the spec treats failures apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    Invite,
    Knock,
}

/// `invite_room_state` or `knock_room_state` for another server: the room's current events of
/// [`STATE_TYPES`] as full signed PDUs in the room version's federation format. Since v1.16 the
/// server-server API requires that form (and the create event), so that the receiver can check
/// that the state belongs to the room (in room version 12 the room ID is the create event's hash).
pub fn for_federation(services: &Services, room_id: &RoomId) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    for kind in &STATE_TYPES {
        let Some(pdu) = services.rooms.current_state_pdu(room_id, kind, "")? else {
            continue;
        };
        if let Some(object) = services.rooms.timeline.get_federation_pdu(&pdu.event_id)? {
            events.push(Value::Object(to_map(object)));
        }
    }
    Ok(events)
}

/// A local state event as a client sees it before joining: see [`client_form`].
pub fn client_event(services: &Services, pdu: &Pdu, rules: &RoomVersionRules) -> Result<Value> {
    if shows_full(rules, &pdu.kind.to_string()) {
        if let Some(object) = services.rooms.timeline.get_federation_pdu(&pdu.event_id)? {
            return Ok(Value::Object(to_map(object)));
        }
    }
    Ok(pdu.to_stripped_value())
}

/// What this server keeps of the `invite_room_state` or `knock_room_state` another server sent,
/// in the form its clients see (spec v1.16: never passed through as received).
///
/// Each entry must be a PDU of the room in the room version's format whose signatures and hashes
/// check ("Validating hashes and signatures on received events"). For a knock, entries that fail
/// are dropped, as the spec asks. For an invite the spec asks for `400 M_INVALID_PARAM`, but lets
/// servers only warn while their peers migrate (and Synapse 1.163 still only warns), so entries
/// that fail are kept in stripped form and a warning is logged; a missing create event too.
pub async fn receive(
    services: &Services,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    received: Option<&Value>,
    arrived: Arrived,
) -> Vec<Value> {
    let entries = received
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kept = Vec::new();
    let mut failures = Vec::new();
    for entry in &entries {
        let checked = match incoming::parse_pdu(entry, room_id, rules) {
            Ok(parsed) => incoming::verify_pdu(services, &parsed, rules).await,
            Err(error) => Err(error),
        };
        match checked {
            Ok(object) => kept.push(client_form(&Value::Object(to_map(object)), rules)),
            Err(error) => {
                failures.push(error.to_string());
                if arrived == Arrived::Invite {
                    if let Some(stripped) = stripped(entry) {
                        kept.push(stripped);
                    }
                }
            }
        }
    }
    let has_create = entries
        .iter()
        .any(|entry| entry["type"] == "m.room.create" && entry["state_key"] == "");
    if !has_create {
        failures.push("no m.room.create event".to_owned());
    }
    if !failures.is_empty() {
        tracing::warn!(
            %room_id,
            ?arrived,
            failures = %failures.join("; "),
            "the room state sent with an invite or knock fails validation (spec v1.16)"
        );
    }
    kept
}

/// The form a client sees of a checked PDU: stripped to `type`, `state_key`, `sender` and
/// `content` (client-server API, "Stripped state"), except the create event of a room version
/// whose room ID is that event's hash, which is shown whole, so that a client can check the
/// room ID and see the creator's server (MSC4311's aim; Complement's
/// `TestMSC4311FullCreateEventOnStrippedState` asks for its `origin_server_ts`). The schema
/// requires the four keys and does not forbid others.
fn client_form(pdu: &Value, rules: &RoomVersionRules) -> Value {
    let kind = pdu["type"].as_str().unwrap_or_default();
    if shows_full(rules, kind) {
        return pdu.clone();
    }
    stripped(pdu).unwrap_or(Value::Null)
}

/// Whether a state event of `kind` is shown to clients whole (see [`client_form`]).
fn shows_full(rules: &RoomVersionRules, kind: &str) -> bool {
    kind == "m.room.create" && rules.authorization.room_create_event_id_as_room_id
}

/// The stripped form of an event, if it has the four keys with the right types.
fn stripped(event: &Value) -> Option<Value> {
    let kind = event["type"].as_str()?;
    let state_key = event["state_key"].as_str()?;
    let sender = event["sender"].as_str()?;
    let content = event["content"].as_object()?;
    Some(json!({ "type": kind, "state_key": state_key, "sender": sender, "content": content }))
}

fn to_map(object: CanonicalJsonObject) -> Map<String, Value> {
    object
        .into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect()
}
