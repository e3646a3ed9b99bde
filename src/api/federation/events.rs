//! Reading a room over federation: single events, state at an event, auth chains, missing
//! events and backfill. Each needs the asking server to be allowed by the room's ACL and to be
//! able to see the events by the history visibility.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{
            get_event, get_event_by_timestamp, get_missing_events, get_room_state,
            get_room_state_ids,
        },
    },
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName,
};
use serde_json::value::{to_raw_value, RawValue};

use crate::{
    api::Ctx,
    error::{Error, Result},
    service::{
        rooms::{auth, incoming, pdu::Pdu, timestamps, visibility},
        Services,
    },
};

/// Largest `limit` honoured by `/backfill` and `/get_missing_events`.
const MAX_LIMIT: usize = 100;

fn require_access(services: &Services, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    if !incoming::server_allowed(services, room_id, origin)? {
        return Err(Error::forbidden("the room's server ACL denies this server"));
    }
    if !services
        .rooms
        .members
        .servers_in_room(room_id)?
        .contains(origin)
    {
        return Err(Error::forbidden(format!("{origin} is not in {room_id}")));
    }
    Ok(())
}

/// A stored event in its federation form, passed on as the JSON it is.
fn raw_pdu(object: &CanonicalJsonObject) -> Result<Box<RawValue>> {
    to_raw_value(object).map_err(Error::internal)
}

fn federation_pdus(
    services: &Services,
    ids: impl IntoIterator<Item = OwnedEventId>,
) -> Result<Vec<Box<RawValue>>> {
    let mut pdus = Vec::new();
    for event_id in ids {
        if let Some(pdu) = services.rooms.timeline.get_federation_pdu(&event_id)? {
            pdus.push(raw_pdu(&pdu)?);
        }
    }
    Ok(pdus)
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_event::v1::Request,
) -> Result<get_event::v1::Response> {
    let event_id = request.event_id;
    let not_found = || Error::not_found(format!("event {event_id} not found"));
    let pdu = services
        .rooms
        .timeline
        .get_pdu(&event_id)?
        .ok_or_else(not_found)?;
    let room_id = pdu.room_id.clone().ok_or_else(not_found)?;
    if !incoming::server_allowed(&services, &room_id, ctx.origin())?
        || !visibility::server_can_see(&services, ctx.origin(), &pdu)?
    {
        return Err(Error::forbidden(format!(
            "{} may not see {event_id}",
            ctx.origin()
        )));
    }
    let object = services
        .rooms
        .timeline
        .get_federation_pdu(&event_id)?
        .ok_or_else(not_found)?;
    Ok(get_event::v1::Response::new(
        services.globals.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        raw_pdu(&object)?,
    ))
}

/// The state before `event_id` and its auth chain.
fn state_at(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
    require_access(services, room_id, origin)?;
    let rooms = &services.rooms;
    let short = rooms
        .short
        .get_shorteventid(event_id)?
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    let (hash, _) = rooms
        .state
        .get_event_state(short)?
        .ok_or_else(|| Error::not_found(format!("no state known at {event_id}")))?;
    // Snapshot 0 is the empty state before a room's create event.
    let state: Vec<OwnedEventId> = if hash == 0 {
        Vec::new()
    } else {
        rooms
            .state_pdus(hash)?
            .into_iter()
            .map(|pdu| pdu.event_id)
            .collect()
    };
    let chain = auth::auth_chain(services, state.iter().cloned())?;
    Ok((state, chain.into_iter().collect()))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
pub async fn get_room_state_ids(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_room_state_ids::v1::Request,
) -> Result<get_room_state_ids::v1::Response> {
    let (state, chain) = state_at(&services, ctx.origin(), &request.room_id, &request.event_id)?;
    Ok(get_room_state_ids::v1::Response::new(chain, state))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
pub async fn get_room_state(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_room_state::v1::Request,
) -> Result<get_room_state::v1::Response> {
    let (state, chain) = state_at(&services, ctx.origin(), &request.room_id, &request.event_id)?;
    Ok(get_room_state::v1::Response::new(
        federation_pdus(&services, chain)?,
        federation_pdus(&services, state)?,
    ))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_authorization(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_event_authorization::v1::Request,
) -> Result<get_event_authorization::v1::Response> {
    let (room_id, event_id) = (request.room_id, request.event_id);
    require_access(&services, &room_id, ctx.origin())?;
    let pdu = services
        .rooms
        .timeline
        .get_pdu(&event_id)?
        .filter(|pdu| pdu.is_in_room(&room_id))
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    let chain = auth::auth_chain(&services, pdu.auth_events.iter().cloned())?;
    let mut ids: Vec<OwnedEventId> = pdu.auth_events.clone();
    ids.extend(chain.into_iter().filter(|id| !pdu.auth_events.contains(id)));
    // From room version 12 the create event authorises every event without being listed in
    // `auth_events` (its ID is the room ID's): it belongs to every auth chain all the same.
    if room_id.server_name().is_none() && pdu.kind != ruma::events::TimelineEventType::RoomCreate {
        if let Ok(create) = OwnedEventId::try_from(format!("${}", &room_id.as_str()[1..])) {
            if !ids.contains(&create) {
                ids.push(create);
            }
        }
    }
    Ok(get_event_authorization::v1::Response::new(federation_pdus(
        &services, ids,
    )?))
}

fn visible(services: &Services, origin: &ServerName, pdu: &Pdu) -> bool {
    visibility::server_can_see(services, origin, pdu).unwrap_or(false)
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
///
/// Walks back from `latest_events` through prev events, stopping at `earliest_events`, and
/// answers up to `limit` events, oldest first. An event the asking server may not see by the
/// history visibility is answered redacted rather than left out, so that the asker can still
/// link its graph (as Synapse does; the spec leaves the form open).
pub async fn get_missing_events(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_missing_events::v1::Request,
) -> Result<get_missing_events::v1::Response> {
    let room_id = request.room_id;
    require_access(&services, &room_id, ctx.origin())?;
    let earliest: HashSet<OwnedEventId> = request.earliest_events.into_iter().collect();
    let latest = request.latest_events;
    let limit = usize::try_from(u64::from(request.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let min_depth = u64::from(request.min_depth);
    let mut found = Vec::new();
    let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
    let mut queue: Vec<OwnedEventId> = Vec::new();
    for event_id in &latest {
        if let Some(pdu) = services.rooms.timeline.get_pdu(event_id)? {
            queue.extend(pdu.prev_events.iter().cloned());
        }
    }
    while let Some(event_id) = queue.pop() {
        if found.len() >= limit {
            break;
        }
        if earliest.contains(&event_id) || !seen.insert(event_id.clone()) {
            continue;
        }
        let Some(pdu) = services.rooms.timeline.get_pdu(&event_id)? else {
            continue;
        };
        if !pdu.is_in_room(&room_id) || u64::from(pdu.depth) < min_depth {
            continue;
        }
        let redact = !visible(&services, ctx.origin(), &pdu);
        queue.extend(pdu.prev_events.iter().cloned());
        found.push((pdu, redact));
    }
    found.sort_by_key(|(pdu, _)| pdu.depth);
    let timeline = &services.rooms.timeline;
    let mut events = Vec::with_capacity(found.len());
    for (pdu, redact) in found {
        let object = if redact {
            timeline.get_federation_pdu_redacted(&pdu.event_id)?
        } else {
            timeline.get_federation_pdu(&pdu.event_id)?
        };
        if let Some(object) = object {
            events.push(raw_pdu(&object)?);
        }
    }
    Ok(get_missing_events::v1::Response::new(events))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
///
/// Events before (and including) the `v` events, deepest first through prev events, up to
/// `limit`. Events the asking server may not see are left out, and the walk does not go on
/// through them.
pub async fn get_backfill(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_backfill::v1::Request,
) -> Result<get_backfill::v1::Response> {
    let room_id = request.room_id;
    require_access(&services, &room_id, ctx.origin())?;
    let limit = usize::try_from(u64::from(request.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    // Deepest first through prev events, so that a page is the most recent history before `v`.
    let mut seen = HashSet::new();
    let mut queue = std::collections::BinaryHeap::new();
    let mut push = |queue: &mut std::collections::BinaryHeap<(u64, OwnedEventId)>,
                    event_id: OwnedEventId|
     -> Result<()> {
        if seen.len() < limit * 8 && seen.insert(event_id.clone()) {
            if let Some(pdu) = services.rooms.timeline.get_pdu(&event_id)? {
                queue.push((u64::from(pdu.depth), event_id));
            }
        }
        Ok(())
    };
    for event_id in request.v {
        push(&mut queue, event_id)?;
    }
    let mut found = Vec::new();
    while let Some((_, event_id)) = queue.pop() {
        if found.len() >= limit {
            break;
        }
        let Some(pdu) = services.rooms.timeline.get_pdu(&event_id)? else {
            continue;
        };
        if !pdu.is_in_room(&room_id) || !visible(&services, ctx.origin(), &pdu) {
            continue;
        }
        for prev in &pdu.prev_events {
            push(&mut queue, prev.clone())?;
        }
        found.push(pdu.event_id);
    }
    Ok(get_backfill::v1::Response::new(
        services.globals.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        federation_pdus(&services, found)?,
    ))
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`
///
/// The closest event of this server's timeline at or after (`dir=f`) or at or before (`dir=b`)
/// `ts` that the asking server may see; this server does not ask others on its behalf.
/// `404 M_NOT_FOUND` when there is none.
pub async fn get_event_by_timestamp(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let room_id = request.room_id;
    require_access(&services, &room_id, ctx.origin())?;
    let asker = timestamps::Asker::Server(ctx.origin());
    let ts = u64::from(request.ts.get());
    let forwards = request.dir == ruma::api::Direction::Forward;
    let (found, _) = timestamps::find_local(&services, &room_id, asker, ts, forwards)?
        .ok_or_else(|| Error::not_found(format!("no event from {ts} in {room_id}")))?;
    Ok(get_event_by_timestamp::v1::Response::new(
        found.event_id,
        ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(found.origin_server_ts)),
    ))
}
