//! Federation destinations as Synapse's admin API shows them: the list with its orders, one
//! destination, the rooms shared with one, and cutting a back-off short (`Sending`'s health of each destination).

use ruma::ServerName;
use serde_json::{json, Value};

use super::{parse_dir, Admin, PageRequest};
use crate::{
    error::{Error, Result},
    service::{sending::DestinationInfo, Services},
};

/// The orders of the list (Synapse's `order_by`).
const ORDERS: &[&str] = &[
    "destination",
    "retry_last_ts",
    "retry_interval",
    "failure_ts",
    "last_successful_stream_ordering",
];

fn to_json(info: &DestinationInfo) -> Value {
    json!({
        "destination": info.server,
        "retry_last_ts": info.health.retry_last_ts,
        "retry_interval": info.health.retry_interval_ms,
        "failure_ts": info.health.failure_ts,
        // Plait does not track which stream position each destination received.
        "last_successful_stream_ordering": Value::Null,
    })
}

/// A page of the destinations (`from`, `limit`) in `order_by` order (`dir`).
pub fn list(
    services: &Services,
    _admin: &Admin,
    page: PageRequest,
    order_by: Option<&str>,
    dir: Option<&str>,
) -> Result<Value> {
    let order = order_by.unwrap_or("destination");
    if !ORDERS.contains(&order) {
        return Err(Error::invalid_param(format!("unknown order_by {order}")));
    }
    let backwards = parse_dir(dir, false)?;
    let mut destinations: Vec<Value> = services
        .sending
        .iter_destinations(services.globals.server_name())?
        .iter()
        .map(to_json)
        .collect();
    destinations.sort_by(|a, b| {
        let key = |value: &Value| value[order].as_u64().unwrap_or(0);
        key(a)
            .cmp(&key(b))
            .then_with(|| a["destination"].as_str().cmp(&b["destination"].as_str()))
    });
    if backwards {
        destinations.reverse();
    }
    let total = destinations.len();
    let (destinations, next) = page.take(destinations);
    let mut answer = json!({ "destinations": destinations, "total": total });
    if let Some(next) = next {
        answer["next_token"] = json!(next.to_string());
    }
    Ok(answer)
}

/// One destination; `M_NOT_FOUND` for a server not sent to since start-up nor queued for.
pub fn get(services: &Services, _admin: &Admin, server: &ServerName) -> Result<Value> {
    let info = known(services, server)?;
    Ok(to_json(&info))
}

/// Retries a destination now; `M_NOT_FOUND` for an unknown one, `400` for one that is not being
/// backed off from (as Synapse answers).
pub fn reset_connection(services: &Services, _admin: &Admin, server: &ServerName) -> Result<Value> {
    known(services, server)?;
    if !services.sending.retry_now(server) {
        return Err(Error::invalid_param(format!(
            "the retry timing of {server} does not need to be reset"
        )));
    }
    Ok(json!({}))
}

/// The rooms this server shares with a known destination (where it has a joined member), a page
/// (`from`, `limit`) in room ID order (`dir`); `M_NOT_FOUND` for an unknown destination.
/// `stream_ordering` is always `null`: Plait does not track what each destination received.
pub fn rooms(
    services: &Services,
    _admin: &Admin,
    server: &ServerName,
    page: PageRequest,
    dir: Option<&str>,
) -> Result<Value> {
    known(services, server)?;
    let members = &services.rooms.members;
    let mut rooms = Vec::new();
    for room_id in services.rooms.short.iter_room_ids() {
        let room_id = room_id?;
        if members.servers_in_room(&room_id)?.contains(server) {
            rooms.push(room_id);
        }
    }
    rooms.sort();
    if parse_dir(dir, false)? {
        rooms.reverse();
    }
    let total = rooms.len();
    let (rooms, next) = page.take(rooms);
    let rooms: Vec<Value> = rooms
        .iter()
        .map(|room_id| json!({ "room_id": room_id, "stream_ordering": Value::Null }))
        .collect();
    let mut answer = json!({ "rooms": rooms, "total": total });
    if let Some(next) = next {
        answer["next_token"] = json!(next.to_string());
    }
    Ok(answer)
}

fn known(services: &Services, server: &ServerName) -> Result<DestinationInfo> {
    services
        .sending
        .get_destination(services.globals.server_name(), server)?
        .ok_or_else(|| Error::not_found(format!("unknown destination {server}")))
}
