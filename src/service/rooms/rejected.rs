//! Events received over federation that failed the auth rules (server-server API, "Rejection").
//! They are remembered so that an event citing one as an auth event is refused without asking
//! again, and so that later events citing one as a prev event still find a state: a rejected
//! event leaves the room's state as it was before it.
//!
//! Received events that failed their auth checks (`eventid_rejected`: event ID → reason), kept by `incoming` (checks 4 and 5 and `store_outliers`) when the failure is final (every auth event stored or itself rejected, or the origin, asked through `/event_auth`, answered without them): such an event is never fetched or checked again, an event citing it as an auth event is rejected, and one whose prev events' state is known gets that state as its own (before and after), so that later events naming it as a prev event are checked "as normal, except not updating with the rejected event" (server-server API, "Rejection").
//! `rooms/rejected` only stores the verdict; the decision and the state a rejected event gets are the pipeline's (`incoming/reject.rs`), so `rejected` imports nothing above the state.

use std::sync::Arc;

use ruma::EventId;

use super::{pdu::Pdu, short::ShortIds, state::RoomState};
use crate::{
    error::Result,
    service::Services,
    store::{Batch, Db, Tree},
};

/// Owns `eventid_rejected` (event ID → why it was rejected, UTF-8).
pub struct Rejected {
    db: Arc<Db>,
    eventid_rejected: Tree,
}

impl Rejected {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
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
        short: &ShortIds,
        state: &RoomState,
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
            let shorteventid = short.shorteventid_in_batch(event_id, &mut batch)?;
            state.set_event_state(shorteventid, before, before, &mut batch);
        }
        self.db.write(batch)
    }
}

/// Whether each of an event's auth events is stored or known to be rejected: only then is a
/// failed auth check final (an unknown auth event may still arrive).
pub fn auth_events_settled(services: &Services, pdu: &Pdu) -> Result<bool> {
    for auth_id in &pdu.auth_events {
        if !services.rooms.timeline.has_event(auth_id)?
            && !services.rooms.rejected.is_rejected(auth_id)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}
