//! The auth rules of the room version, applied through ruma's implementation, and state
//! resolution v2 for diverging prev_events.
//!
//! Ruma's auth rules (state-independent with auth events, state-dependent with the state before the event) and state resolution v2 (v2.1 for room version 12, whose result can hold an event of the conflicted subgraph that no input state set has; `incoming::state::resolve_sets` gives such an event its short IDs then).

use std::collections::HashSet;

use ruma::{events::StateEventType, room_version_rules::RoomVersionRules, state_res, OwnedEventId};

use super::pdu::Pdu;
use crate::{
    error::{Error, Result},
    service::Services,
};

/// Checks a local event against the auth rules: the state-independent rules with its auth events,
/// then the state-dependent rules with the state before it. A failure is `M_FORBIDDEN` with the reason.
/// A member event is also checked against a story room's audience rule (`service::stories`).
pub fn check_local_event(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state_before: Option<u64>,
) -> Result<()> {
    let rooms = &services.rooms;
    let fetch_event = |event_id: &ruma::EventId| rooms.timeline.get_pdu(event_id).ok().flatten();
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|reason| Error::forbidden(format!("event not allowed: {reason}")))?;
    let fetch_state = |event_type: &StateEventType, state_key: &str| -> Option<Pdu> {
        let hash = state_before?;
        let event_id = rooms.state_event_id(hash, event_type, state_key).ok()??;
        rooms.timeline.get_pdu(&event_id).ok()?
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|reason| Error::forbidden(format!("event not allowed: {reason}")))?;
    match &pdu.room_id {
        Some(room_id) => services.stories.check_new_member(services, room_id, pdu),
        None => Ok(()),
    }
}

/// The full auth chain of a set of events: every event reachable through `auth_events`.
pub fn auth_chain(
    services: &Services,
    start: impl IntoIterator<Item = OwnedEventId>,
) -> Result<HashSet<OwnedEventId>> {
    auth_chain_with(services, start, None)
}

/// The full auth chain of a set of events, where `pending` is an event that is not stored yet.
fn auth_chain_with(
    services: &Services,
    start: impl IntoIterator<Item = OwnedEventId>,
    pending: Option<&Pdu>,
) -> Result<HashSet<OwnedEventId>> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = start.into_iter().collect();
    while let Some(event_id) = todo.pop() {
        let auth_events = match pending.filter(|pdu| pdu.event_id == event_id) {
            Some(pdu) => pdu.auth_events.clone(),
            None => match services.rooms.timeline.get_pdu(&event_id)? {
                Some(pdu) => pdu.auth_events,
                None => continue,
            },
        };
        for auth in auth_events {
            if seen.insert(auth.clone()) {
                todo.push(auth);
            }
        }
    }
    Ok(seen)
}

/// Resolves several state maps (one per diverging branch) with the room version's algorithm.
/// `pending` is an event that the states may contain but that is not stored yet (the event
/// being received): resolution must see it like any other.
pub fn resolve(
    services: &Services,
    rules: &RoomVersionRules,
    states: &[state_res::StateMap<OwnedEventId>],
    pending: Option<&Pdu>,
) -> Result<state_res::StateMap<OwnedEventId>> {
    let mut chains = Vec::with_capacity(states.len());
    for state in states {
        let chain = auth_chain_with(services, state.values().cloned(), pending)?;
        chains.push(chain.into_iter().collect());
    }
    let timeline = &services.rooms.timeline;
    let fetch = |event_id: &ruma::EventId| match pending.filter(|pdu| pdu.event_id == event_id) {
        Some(pdu) => Some(pdu.clone()),
        None => timeline.get_pdu(event_id).ok().flatten(),
    };
    let state_res_rules = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| Error::internal("room version without state resolution v2"))?;
    let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
        // The conflicted state subgraph: events on auth paths between conflicted events. Using the
        // conflicted events' full auth chains is a superset that state resolution tolerates.
        let starts = conflicted.values().flatten().cloned();
        auth_chain_with(services, starts, pending)
            .ok()
            .map(|chain| {
                chain
                    .into_iter()
                    .chain(conflicted.values().flatten().cloned())
                    .collect()
            })
    };
    state_res::resolve(
        &rules.authorization,
        state_res_rules,
        states.iter(),
        chains,
        fetch,
        subgraph,
    )
    .map_err(|error| Error::internal(format!("state resolution failed: {error}")))
}
