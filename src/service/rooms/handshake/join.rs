//! Joining a room on other servers (`make_join`/`send_join`): the join is signed here, and the
//! `send_join` answer is received like any event from another server, through the checks of
//! `incoming` and the one commit pipeline.

use ruma::{events::TimelineEventType, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::Value;

use super::{encode, is_resident, request_path, Signed};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            incoming,
            timeline::{Mode, SendTo},
            version::rules_for,
        },
        Services,
    },
};

/// Joins through one server with a join signed here: `send_join`, then the answer is received
/// (the room's state and auth chain stored, the join checked and committed on top of that
/// state).
pub(super) async fn join_through(
    services: &Services,
    server: &ServerName,
    join: Signed<'_>,
) -> Result<OwnedEventId> {
    let Signed {
        room_id,
        version,
        object,
        event_id,
    } = join;
    let rules = rules_for(&version)?;
    let path = request_path("v2/send_join", room_id, &encode(event_id.as_str()));
    let body = serde_json::to_value(&object).map_err(Error::internal)?;
    let answer = services
        .federation_request(server, http::Method::PUT, &path, Some(&body))
        .await?;
    // A restricted join comes back countersigned by the resident server.
    let event = match answer.get("event") {
        Some(event) if event.is_object() => event.clone(),
        _ => crate::service::rooms::pdu::federation_value(&object, &rules)?,
    };
    if is_resident(services, room_id)? {
        // A restricted join this server could not authorise itself (no local user may invite):
        // the room's state is here already, so the join is received like any other event.
        incoming::handle(services, server, room_id, &event, SendTo::Nobody).await?;
    } else {
        let joined = Joined {
            room_id,
            version: &version,
            event_id: &event_id,
        };
        joined.receive(services, &answer, &event).await?;
    }
    Ok(event_id)
}

/// Our join to a room this server is not in, as the resident server answered it.
struct Joined<'a> {
    room_id: &'a RoomId,
    version: &'a RoomVersionId,
    event_id: &'a OwnedEventId,
}

impl Joined<'_> {
    /// Takes in a `send_join` answer: the room's state and auth chain are stored as outliers
    /// (each verified and checked against its auth events), then the join event goes through
    /// checks 1 to 5 of any received event, with the answered state as the state before it, and
    /// is committed with that state in one batch.
    async fn receive(&self, services: &Services, answer: &Value, event: &Value) -> Result<()> {
        let room_id = self.room_id;
        let rooms = &services.rooms;
        let rules = rules_for(self.version)?;
        let shortroomid = rooms.short.get_or_create_shortroomid(room_id)?;
        rooms.timeline.set_room_version(shortroomid, self.version)?;
        let state_ids = self.store_state_and_auth_chain(services, answer).await?;
        // Checks 1 to 3: format, signatures, content hash.
        let (event_id, checked) =
            incoming::check_received(services, room_id, &rules, event).await?;
        if event_id != *self.event_id {
            return Err(Error::forbidden("send_join returned another event"));
        }
        let Some(incoming::Checked { object, pdu }) = checked else {
            return Ok(());
        };
        // Check 4: its auth events, which came with the answer.
        incoming::check_against_auth_events(services, &rules, &pdu)?;
        let lock = rooms.timeline.room_lock(room_id);
        let _guard = lock.lock();
        let state_before = incoming::state_set_of(services, &state_ids)?;
        if state_before.is_empty() {
            return Err(Error::forbidden("send_join answered no room state"));
        }
        // Check 5: the state before it, which the resident server answered.
        incoming::check_against_state(services, &rules, &pdu, &state_before)?;
        index_members(services, room_id, &state_ids)?;
        // The resident server sends our join to the rest of the room.
        let live = (SendTo::Nobody, Mode::Live);
        let checked = incoming::Checked { object, pdu };
        incoming::commit_received(services, room_id, checked, state_before, live, None)?;
        Ok(())
    }

    /// Stores the answer's state and auth chain as outliers and returns the IDs of the state
    /// events that passed their checks.
    async fn store_state_and_auth_chain(
        &self,
        services: &Services,
        answer: &Value,
    ) -> Result<Vec<OwnedEventId>> {
        let rules = rules_for(self.version)?;
        let mut events: Vec<Value> = answer["auth_chain"].as_array().cloned().unwrap_or_default();
        let state: Vec<Value> = answer["state"].as_array().cloned().unwrap_or_default();
        events.extend(state.iter().cloned());
        incoming::store_outliers(services, self.room_id, &rules, &events).await?;
        let mut state_ids = Vec::new();
        for value in &state {
            if let Ok(parsed) = incoming::parse_pdu(value, self.room_id, &rules) {
                if services.rooms.timeline.has_event(&parsed.event_id)? {
                    state_ids.push(parsed.event_id);
                }
            }
        }
        Ok(state_ids)
    }
}

/// Indexes the memberships of a room's state received in a join before the join is committed:
/// the join's device list updates go to the servers of the room's members (see
/// `Members::index_received_state`).
fn index_members(services: &Services, room_id: &RoomId, state_ids: &[OwnedEventId]) -> Result<()> {
    let mut members = Vec::new();
    for event_id in state_ids {
        if let Some(pdu) = services.rooms.timeline.get_pdu(event_id)? {
            if pdu.kind == TimelineEventType::RoomMember {
                members.push(pdu);
            }
        }
    }
    let index = &services.rooms.members;
    index.index_received_state(&services.globals, room_id, &members)
}
