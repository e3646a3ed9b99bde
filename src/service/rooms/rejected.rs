//! Events received over federation that failed the auth rules (server-server API, "Rejection").
//! They are remembered so that an event citing one as an auth event is refused without asking
//! again, and so that later events citing one as a prev event still find a state: a rejected
//! event leaves the room's state as it was before it.
//!
//! Received events that failed their auth checks (`eventid_rejected`: event ID → reason), kept by `incoming` (checks 4 and 5 and `store_outliers`) when the failure is final (every auth event stored or itself rejected, or the origin, asked through `/event_auth`, answered without them): such an event is never fetched or checked again, an event citing it as an auth event is rejected, and one whose prev events' state is known gets that state as its own (before and after), so that later events naming it as a prev event are checked "as normal, except not updating with the rejected event" (server-server API, "Rejection").

use std::sync::Arc;

use ruma::{room_version_rules::RoomVersionRules, EventId};

use super::{incoming, pdu::Pdu, state::StateSet, Rooms};
use crate::{
    error::{Error, Result},
    service::Services,
    store::{Batch, Db, Tree},
};

/// Owns `eventid_rejected` (event ID → why it was rejected, UTF-8).
pub struct Rejected {
    eventid_rejected: Tree,
}

impl Rejected {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            eventid_rejected: db.tree("eventid_rejected"),
        }
    }

    /// Whether the event was received and rejected.
    pub fn is_rejected(&self, event_id: &EventId) -> Result<bool> {
        self.eventid_rejected.contains(event_id.as_bytes())
    }

    /// Remembers that an event was rejected. With `state_before` (a snapshot), the event also
    /// gets that snapshot as its state before and after, so that it can be a prev event.
    pub fn mark(
        &self,
        rooms: &Rooms,
        db: &Db,
        event_id: &EventId,
        reason: &str,
        state_before: Option<u64>,
    ) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(
            &self.eventid_rejected,
            event_id.as_bytes(),
            reason.as_bytes(),
        );
        if let Some(before) = state_before {
            let short = rooms.short.shorteventid_in_batch(event_id, &mut batch)?;
            rooms
                .state
                .set_event_state(short, before, before, &mut batch);
        }
        db.write(batch)
    }
}

/// Whether each of an event's auth events is stored or known to be rejected: only then is a
/// failed auth check final (an unknown auth event may still arrive).
pub(super) fn auth_events_settled(services: &Services, pdu: &Pdu) -> Result<bool> {
    for auth_id in &pdu.auth_events {
        if !services.rooms.timeline.has_event(auth_id)?
            && !services.rooms.rejected.is_rejected(auth_id)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remembers an event its auth events refuse (check 4), when that is final: every auth event is
/// stored or rejected, or (`unobtainable`) the event's origin was asked for the missing ones and
/// did not give them. The event gets a state as its own, so that later events may build on it:
/// `fetched` (the state fetched before it) or else its prev events' state, where known.
pub(super) fn reject_by_auth_events(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    error: &Error,
    unobtainable: bool,
    fetched: Option<&StateSet>,
) -> Result<()> {
    if !unobtainable && !auth_events_settled(services, pdu)? {
        return Ok(());
    }
    let rooms = &services.rooms;
    let mut state = None;
    if let Some(room_id) = pdu.room() {
        let lock = rooms.timeline.room_lock(&room_id);
        let _guard = lock.lock();
        let before = match fetched {
            Some(fetched) => Some(fetched.clone()),
            None if incoming::prev_events_known(services, pdu)? => {
                Some(incoming::state_after_prev_events(services, rules, pdu)?)
            }
            None => None,
        };
        if let Some(before) = before {
            state = Some(
                incoming::store_state(
                    services,
                    &before,
                    incoming::first_prev_state(services, pdu)?,
                )?
                .unwrap_or(0),
            );
        }
    }
    rooms.rejected.mark(
        rooms,
        &services.db,
        &pdu.event_id,
        &error.to_string(),
        state,
    )
}
