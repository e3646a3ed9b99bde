//! Rooms as the Synapse admin API shows them: the room list with its search and orders, one
//! room's details, its members, its current state and its messages, all read without the
//! visibility rules that bind members (an admin sees every room this server has state of).

use std::cmp::Ordering;

use ruma::{events::StateEventType, RoomId};
use serde_json::{json, Value};

use super::{parse_dir, Admin, PageRequest};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            history::{format_token, parse_token},
            pdu::client_event,
            timeline::read::TopoPos,
        },
        Services,
    },
};

/// The orders of the room list, with whether each sorts largest first (Synapse's choice).
const ORDERS: &[(&str, bool)] = &[
    ("name", false),
    ("canonical_alias", false),
    ("joined_members", true),
    ("joined_local_members", true),
    ("version", true),
    ("creator", false),
    ("encryption", false),
    ("federatable", false),
    ("public", false),
    ("join_rules", false),
    ("guest_access", false),
    ("history_visibility", false),
    ("state_events", true),
];

/// The filters and order of the room list, as sent.
pub struct RoomQuery<'a> {
    pub page: PageRequest,
    pub order_by: Option<&'a str>,
    pub dir: Option<&'a str>,
    /// Matches the name or the canonical alias's localpart (case-insensitive) or the room ID.
    pub search_term: Option<&'a str>,
}

/// One page of the rooms this server has state of, ordered and filtered as asked.
pub fn list(services: &Services, _admin: &Admin, query: &RoomQuery<'_>) -> Result<Value> {
    let order = match query.order_by.unwrap_or("name") {
        "alphabetical" => "name",
        "size" => "joined_members",
        other => other,
    };
    let largest_first = ORDERS
        .iter()
        .find(|(name, _)| *name == order)
        .map(|(_, largest_first)| *largest_first)
        .ok_or_else(|| Error::invalid_param(format!("unknown order_by {order}")))?;
    let backwards = parse_dir(query.dir, false)?;
    let term = query.search_term.map(str::to_lowercase);
    let mut rooms = Vec::new();
    for room_id in services.rooms.short.iter_room_ids() {
        let room_id = room_id?;
        let Some(room) = summary(services, &room_id)? else {
            continue;
        };
        if term.as_ref().is_none_or(|term| matches_term(&room, term)) {
            rooms.push(room);
        }
    }
    rooms.sort_by(|a, b| {
        let by_field = compare(&a[order], &b[order]);
        let by_field = if largest_first != backwards {
            by_field.reverse()
        } else {
            by_field
        };
        by_field.then_with(|| compare(&a["room_id"], &b["room_id"]))
    });
    let total = rooms.len();
    let page = query.page;
    let (rooms, next) = page.take(rooms);
    let mut answer = json!({ "rooms": rooms, "offset": page.from, "total_rooms": total });
    if let Some(next) = next {
        answer["next_batch"] = json!(next);
    }
    if page.from > 0 {
        answer["prev_batch"] = json!(page.from.saturating_sub(page.limit));
    }
    Ok(answer)
}

/// One room's details: the list's fields with topic, avatar and room type.
pub fn get(services: &Services, _admin: &Admin, room_id: &RoomId) -> Result<Value> {
    let mut room = summary(services, room_id)?.ok_or_else(|| unknown(room_id))?;
    room["topic"] = state_field(services, room_id, StateEventType::RoomTopic, "topic")?;
    room["avatar"] = state_field(services, room_id, StateEventType::RoomAvatar, "url")?;
    room["forgotten"] = json!(false);
    Ok(room)
}

/// The users joined to a room.
pub fn members(services: &Services, _admin: &Admin, room_id: &RoomId) -> Result<Value> {
    known(services, room_id)?;
    let joined = services.rooms.members.iter_members(
        room_id,
        Some(ruma::events::room::member::MembershipState::Join),
    )?;
    let members: Vec<_> = joined.into_iter().map(|(user_id, _)| user_id).collect();
    Ok(json!({ "total": members.len(), "members": members }))
}

/// A room's current state events, in client form.
pub fn state(services: &Services, _admin: &Admin, room_id: &RoomId) -> Result<Value> {
    let hash = known(services, room_id)?;
    let events: Vec<Value> = services
        .rooms
        .state_pdus(hash)?
        .iter()
        .map(|pdu| client_event(pdu, room_id, None))
        .collect();
    Ok(json!({ "state": events }))
}

/// What a page of the admin `/messages` asks for, as sent.
pub struct MessagesQuery<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// `f` (the default, as Synapse's admin API has it) or `b`.
    pub dir: Option<&'a str>,
    pub limit: Option<&'a str>,
}

/// A page of a room's events in topological order with the client `/messages` tokens, every
/// event included (no visibility rules, no filter).
pub fn messages(
    services: &Services,
    _admin: &Admin,
    room_id: &RoomId,
    query: &MessagesQuery<'_>,
) -> Result<Value> {
    known(services, room_id)?;
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| unknown(room_id))?;
    let backwards = parse_dir(query.dir, false)?;
    let limit = match query.limit {
        None => 10,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| Error::invalid_param(format!("invalid limit {text}")))?
            .min(1000),
    };
    let from = match query.from {
        Some(token) => parse_token(services, shortroomid, token)?,
        None if backwards => TopoPos {
            depth: u64::MAX,
            count: u64::MAX,
        },
        None => TopoPos { depth: 0, count: 0 },
    };
    let to = query
        .to
        .map(|token| parse_token(services, shortroomid, token))
        .transpose()?;
    let mut chunk = Vec::new();
    let mut last = None;
    for entry in services
        .rooms
        .timeline
        .iter_topo(shortroomid, from, backwards)
    {
        let (position, pdu) = entry?;
        let past_to = to.is_some_and(|to| {
            if backwards {
                position < to
            } else {
                position >= to
            }
        });
        if past_to || chunk.len() >= limit {
            break;
        }
        last = Some(position);
        chunk.push(client_event(&pdu, room_id, None));
    }
    let start = query.from.map_or_else(|| format_token(from), str::to_owned);
    let mut answer = json!({ "chunk": chunk, "start": start });
    if let Some(last) = last {
        answer["end"] = json!(format_token(last));
    }
    Ok(answer)
}

/// The fields of a room in the list, or `None` for a room this server has no state of.
fn summary(services: &Services, room_id: &RoomId) -> Result<Option<Value>> {
    let rooms = &services.rooms;
    let Some(hash) = rooms.current_state_hash(room_id)? else {
        return Ok(None);
    };
    let field = |kind, name| state_field(services, room_id, kind, name);
    let create = rooms.current_state_pdu(room_id, &StateEventType::RoomCreate, "")?;
    let create_content = create.as_ref().map(|pdu| pdu.content_value());
    let joined = rooms.members.iter_members(
        room_id,
        Some(ruma::events::room::member::MembershipState::Join),
    )?;
    let server_name = services.globals.server_name();
    let local = joined
        .iter()
        .filter(|(user_id, _)| user_id.server_name() == server_name)
        .count();
    let (_, version) = rooms.room_version(room_id)?;
    Ok(Some(json!({
        "room_id": room_id,
        "name": field(StateEventType::RoomName, "name")?,
        "canonical_alias": field(StateEventType::RoomCanonicalAlias, "alias")?,
        "joined_members": joined.len(),
        "joined_local_members": local,
        "version": version,
        "creator": create.as_ref().map(|pdu| pdu.sender.clone()),
        "encryption": field(StateEventType::RoomEncryption, "algorithm")?,
        "federatable": create_content
            .as_ref()
            .and_then(|content| content.get("m.federate"))
            .and_then(Value::as_bool)
            .unwrap_or(true),
        "public": rooms.alias.is_public(room_id)?,
        "join_rules": field(StateEventType::RoomJoinRules, "join_rule")?,
        "guest_access": field(StateEventType::RoomGuestAccess, "guest_access")?,
        "history_visibility": field(StateEventType::RoomHistoryVisibility, "history_visibility")?,
        "state_events": rooms.state.load(hash)?.len(),
        "room_type": create_content
            .as_ref()
            .and_then(|content| content.get("type"))
            .cloned(),
    })))
}

/// Whether a room's summary matches a (lower-cased) search term.
fn matches_term(room: &Value, term: &str) -> bool {
    let name = room["name"].as_str().unwrap_or("").to_lowercase();
    let alias_localpart = room["canonical_alias"]
        .as_str()
        .and_then(|alias| alias.split(':').next())
        .unwrap_or("")
        .to_lowercase();
    let room_id = room["room_id"].as_str().unwrap_or("");
    name.contains(term) || alias_localpart.contains(term) || room_id.contains(term)
}

/// Orders two summary fields: numbers by value, strings and booleans as such, nulls last.
pub(super) fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

/// One field of a current state event's content (`null` when absent).
pub fn state_field(
    services: &Services,
    room_id: &RoomId,
    kind: StateEventType,
    field: &str,
) -> Result<Value> {
    Ok(services
        .rooms
        .current_state_pdu(room_id, &kind, "")?
        .and_then(|pdu| pdu.content_value().get(field).cloned())
        .unwrap_or(Value::Null))
}

/// The room's current state snapshot; `M_NOT_FOUND` for a room this server has no state of.
fn known(services: &Services, room_id: &RoomId) -> Result<u64> {
    services
        .rooms
        .current_state_hash(room_id)?
        .ok_or_else(|| unknown(room_id))
}

fn unknown(room_id: &RoomId) -> Error {
    Error::not_found(format!("room {room_id} not found"))
}
