//! What a received event needs that this server lacks, fetched from its origin: missing prev
//! events (`/get_missing_events`), missing auth events (`/event_auth`), and the verified events
//! that have no place in the timeline (auth chains, state), stored as outliers.

use ruma::{
    room_version_rules::RoomVersionRules, CanonicalJsonObject, OwnedEventId, RoomId, ServerName,
};
use serde_json::{json, Value};

use super::{check_against_auth_events, handle_with_depth, parse_pdu, to_pdu, verify_pdu};
use crate::federation::encode;
use crate::{
    error::{Error, Result},
    service::{
        rooms::{pdu::Pdu, rejected, timeline::SendTo},
        Services,
    },
};

/// How many missing events one `/get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// How deep the recursion through missing prev events goes before falling back to `/state_ids`:
/// events answered by `/get_missing_events` do not start another one; a gap before them is
/// filled with the state (as Synapse does, and as Complement's `/get_missing_events` handlers,
/// which answer only for the event that was pushed, expect).
pub(super) const MAX_MISSING_DEPTH: usize = 1;

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
    for (event_id, object, pdu) in pending {
        if let Err(error) = check_against_auth_events(services, rules, &pdu) {
            tracing::warn!(%event_id, %error, "dropping an event its auth events reject");
            if rejected::auth_events_settled(services, &pdu)? {
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
        services.rooms.timeline.add_outlier(&event_id, &object)?;
        stored.push(event_id);
    }
    Ok(stored)
}

/// Fetches the auth events of `pdu` that this server lacks, with their auth chain, from `origin`
/// (`/event_auth`). Answers whether a failed check against the auth events is final: true when
/// none was missing or `origin` answered (an origin that cannot give the auth chain of its own
/// event has had its chance), false when it could not be reached (the events may come later).
pub(in crate::service::rooms) async fn fetch_missing_auth(
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

pub(in crate::service::rooms) fn prev_events_known(services: &Services, pdu: &Pdu) -> Result<bool> {
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

pub(super) async fn fetch_missing_prev_events(
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
