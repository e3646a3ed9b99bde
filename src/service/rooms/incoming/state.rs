//! The state before a received event: fetched from its origin when its prev events are unknown
//! (the state after each of them through `/state_ids`), the state after its prev events
//! resolved with state resolution v2 when there are several, stored as a snapshot shared with
//! (or a delta over) its first prev event's, and the room's current state once the event leaves
//! other forward extremities in place.

use std::collections::{HashMap, HashSet};

use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, state_res, EventId, OwnedEventId,
    RoomId, ServerName,
};

use super::store_outliers;
use crate::federation::encode;
use crate::{
    error::{Error, Result},
    service::{
        rooms::{auth, pdu::Pdu, state::StateSet},
        Services,
    },
};

/// How many unknown prev events of one event get their state fetched one by one; beyond that
/// the state before the event itself is asked for, in one request.
const MAX_PREV_STATE_FETCHES: usize = 5;

/// The state before an event whose prev events are not all here: the state after each prev
/// event (as known here, or fetched from `origin` with [`fetch_state_after`]), resolved like the
/// states of known prev events. With many unknown prev events, `origin` is asked for the state
/// before the event itself.
pub(in crate::service::rooms) async fn fetch_state_before(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<StateSet> {
    let rooms = &services.rooms;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for prev in &pdu.prev_events {
        let state = match rooms.short.get_shorteventid(prev)? {
            Some(short) => rooms.state.get_event_state(short)?,
            None => None,
        };
        match state {
            Some((_, after)) => known.push((*rooms.state.load(after)?).clone()),
            None => unknown.push(prev),
        }
    }
    if unknown.len() > MAX_PREV_STATE_FETCHES {
        return fetch_state_ids(services, origin, room_id, rules, &pdu.event_id, None).await;
    }
    let mut sets = known;
    for prev in unknown {
        sets.push(fetch_state_after(services, origin, room_id, rules, prev).await?);
    }
    resolve_sets(services, rules, sets, None)
}

/// The state after an event this server lacks: the state before it from `origin`
/// (`/state_ids`), with the event itself when it is a state event that passes its auth checks
/// (a rejected event leaves the state as it was).
async fn fetch_state_after(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    event_id: &EventId,
) -> Result<StateSet> {
    let mut set =
        fetch_state_ids(services, origin, room_id, rules, event_id, Some(event_id)).await?;
    let rooms = &services.rooms;
    if let Some(event) = rooms.timeline.get_pdu(event_id)? {
        if let Some(state_key) = &event.state_key {
            let shortstatekey = rooms.short.get_or_create_shortstatekey(
                &StateEventType::from(event.kind.to_string()),
                state_key,
            )?;
            let shorteventid = rooms.short.get_or_create_shorteventid(event_id)?;
            set.insert(shortstatekey, shorteventid);
        }
    }
    Ok(set)
}

/// The state before `at` from `origin` (`/state_ids`): the events of it and of its auth chain
/// that are unknown here (and `also`) are fetched one by one (`/event`; one that cannot be had
/// is left out) and stored as outliers after their auth checks; the state set holds the state
/// events that are stored.
async fn fetch_state_ids(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    at: &EventId,
    also: Option<&EventId>,
) -> Result<StateSet> {
    let answer = services
        .federation_request(
            origin,
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                encode(room_id.as_str()),
                encode(at.as_str())
            ),
            None,
        )
        .await?;
    let ids: Vec<OwnedEventId> = answer["pdu_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(answer["auth_chain_ids"].as_array().into_iter().flatten())
        .filter_map(|id| id.as_str().and_then(|id| OwnedEventId::try_from(id).ok()))
        .chain(also.map(ToOwned::to_owned))
        .collect();
    let mut unknown = Vec::new();
    for event_id in ids {
        if !services.rooms.timeline.has_event(&event_id)?
            && !services.rooms.rejected.is_rejected(&event_id)?
            && !unknown.contains(&event_id)
        {
            unknown.push(event_id);
        }
    }
    let mut fetched = Vec::new();
    for event_id in unknown {
        let answer = services
            .federation_request(
                origin,
                http::Method::GET,
                &format!("/_matrix/federation/v1/event/{}", encode(event_id.as_str())),
                None,
            )
            .await;
        match answer {
            Ok(answer) => fetched.extend(answer["pdus"].as_array().cloned().unwrap_or_default()),
            // The events that depend on it fail their auth checks and are left out.
            Err(error) => tracing::debug!(%event_id, %error, "a state event could not be had"),
        }
    }
    store_outliers(services, room_id, rules, &fetched).await?;
    let state_ids: Vec<OwnedEventId> = answer["pdu_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str().and_then(|id| OwnedEventId::try_from(id).ok()))
        .collect();
    state_set_of(services, &state_ids)
}

/// A state set from a list of state event IDs (unknown events are left out).
pub fn state_set_of(services: &Services, event_ids: &[OwnedEventId]) -> Result<StateSet> {
    let rooms = &services.rooms;
    let mut set = StateSet::new();
    for event_id in event_ids {
        let Some(pdu) = rooms.timeline.get_pdu(event_id)? else {
            continue;
        };
        let Some(state_key) = &pdu.state_key else {
            continue;
        };
        let shortstatekey = rooms
            .short
            .get_or_create_shortstatekey(&StateEventType::from(pdu.kind.to_string()), state_key)?;
        let shorteventid = rooms.short.get_or_create_shorteventid(event_id)?;
        set.insert(shortstatekey, shorteventid);
    }
    Ok(set)
}

/// The snapshot after an event's first prev event, if its state is known.
pub(in crate::service::rooms) fn first_prev_state(
    services: &Services,
    pdu: &Pdu,
) -> Result<Option<u64>> {
    let Some(prev) = pdu.prev_events.first() else {
        return Ok(None);
    };
    let Some(short) = services.rooms.short.get_shorteventid(prev)? else {
        return Ok(None);
    };
    Ok(services
        .rooms
        .state
        .get_event_state(short)?
        .map(|(_, after)| after)
        .filter(|after| *after != 0))
}

/// The state after an event's prev events: one prev event's state as it is, several resolved.
pub(in crate::service::rooms) fn state_after_prev_events(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<StateSet> {
    let rooms = &services.rooms;
    let mut sets = Vec::new();
    for prev in &pdu.prev_events {
        let short = rooms
            .short
            .get_shorteventid(prev)?
            .ok_or_else(|| Error::internal("prev event without short ID"))?;
        let (_, after) = rooms
            .state
            .get_event_state(short)?
            .ok_or_else(|| Error::internal("prev event without state"))?;
        sets.push((*rooms.state.load(after)?).clone());
    }
    resolve_sets(services, rules, sets, None)
}

/// Resolves state sets with state resolution v2 (a single set is returned as it is). `pending`
/// is the event being received when the sets contain it: it is not stored yet.
pub fn resolve_sets(
    services: &Services,
    rules: &RoomVersionRules,
    mut sets: Vec<StateSet>,
    pending: Option<&Pdu>,
) -> Result<StateSet> {
    sets.dedup();
    if sets.len() <= 1 {
        return Ok(sets.pop().unwrap_or_default());
    }
    let rooms = &services.rooms;
    let mut maps = Vec::with_capacity(sets.len());
    // Resolution picks among the events of the sets: their short IDs are known already.
    let mut shorts = HashMap::new();
    for set in &sets {
        let mut map = state_res::StateMap::new();
        for (shortstatekey, shorteventid) in set {
            let (event_type, state_key) = rooms.short.get_statekey(*shortstatekey)?;
            let event_id = rooms.short.get_eventid(*shorteventid)?;
            shorts.insert(event_id.clone(), (*shortstatekey, *shorteventid));
            map.insert((event_type, state_key), event_id);
        }
        maps.push(map);
    }
    let resolved = auth::resolve(services, rules, &maps, pending)?;
    resolved
        .into_iter()
        .map(
            |((event_type, state_key), event_id)| match shorts.get(&event_id) {
                Some(pair) => Ok(*pair),
                // Resolution v2.1 (room version 12) also considers the conflicted subgraph, the
                // events between conflicted ones, and may pick one that no set holds.
                None => Ok((
                    rooms
                        .short
                        .get_or_create_shortstatekey(&event_type, &state_key)?,
                    rooms.short.get_or_create_shorteventid(&event_id)?,
                )),
            },
        )
        .collect()
}

/// Stores a state set as a snapshot and returns its short hash: for a rejected event, which
/// keeps the state before it (an accepted event's is written by `timeline::commit`, in the
/// event's batch). The snapshot is shared with `parent` (the state after the first prev event)
/// when it is the same, and stored as a delta over it otherwise.
pub(in crate::service::rooms) fn store_state(
    services: &Services,
    set: &StateSet,
    parent: Option<u64>,
) -> Result<Option<u64>> {
    if set.is_empty() {
        return Ok(None);
    }
    let rooms = &services.rooms;
    if let Some(parent) = parent {
        if *rooms.state.load(parent)? == *set {
            return Ok(Some(parent));
        }
    }
    let mut batch = crate::store::Batch::default();
    let hash =
        rooms
            .state
            .store_snapshot(rooms.short.allocate(), parent, set.clone(), &mut batch)?;
    rooms.timeline.write(batch)?;
    Ok(Some(hash))
}

/// The room's current state after the event: the state after it, resolved with the state of
/// every forward extremity it does not replace.
pub(super) fn resolve_current(
    services: &Services,
    rules: &RoomVersionRules,
    shortroomid: u64,
    pdu: &Pdu,
    state_before: &StateSet,
) -> Result<Option<StateSet>> {
    let rooms = &services.rooms;
    let prev: HashSet<&OwnedEventId> = pdu.prev_events.iter().collect();
    let others: Vec<OwnedEventId> = rooms
        .timeline
        .extremities(shortroomid)?
        .into_iter()
        .filter(|extremity| !prev.contains(extremity))
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let mut after = state_before.clone();
    if let Some(state_key) = &pdu.state_key {
        let shortstatekey = rooms
            .short
            .get_or_create_shortstatekey(&StateEventType::from(pdu.kind.to_string()), state_key)?;
        let shorteventid = rooms.short.get_or_create_shorteventid(&pdu.event_id)?;
        after.insert(shortstatekey, shorteventid);
    }
    let mut sets = vec![after];
    for extremity in others {
        let Some(short) = rooms.short.get_shorteventid(&extremity)? else {
            continue;
        };
        if let Some((_, state)) = rooms.state.get_event_state(short)? {
            sets.push((*rooms.state.load(state)?).clone());
        }
    }
    resolve_sets(services, rules, sets, Some(pdu)).map(Some)
}
