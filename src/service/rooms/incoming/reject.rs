//! Check 4's failure made final: an event its auth events refuse is remembered as rejected
//! (`rooms::rejected`), with the state it would have had, so that later events may build on it.

use ruma::room_version_rules::RoomVersionRules;

use super::state;
use crate::{
    error::{Error, Result},
    service::{
        rooms::{pdu::Pdu, rejected, state::StateSet},
        Services,
    },
};

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
    if !unobtainable && !rejected::auth_events_settled(services, pdu)? {
        return Ok(());
    }
    let rooms = &services.rooms;
    let mut state = None;
    if let Some(room_id) = pdu.room() {
        let lock = rooms.timeline.room_lock(&room_id);
        let _guard = lock.lock();
        let before = match fetched {
            Some(fetched) => Some(fetched.clone()),
            None if super::prev_events_known(services, pdu)? => {
                Some(state::state_after_prev_events(services, rules, pdu)?)
            }
            None => None,
        };
        if let Some(before) = before {
            state = Some(
                state::store_state(services, &before, state::first_prev_state(services, pdu)?)?
                    .unwrap_or(0),
            );
        }
    }
    rooms.rejected.mark(
        &rooms.short,
        &rooms.state,
        &pdu.event_id,
        &error.to_string(),
        state,
    )
}
