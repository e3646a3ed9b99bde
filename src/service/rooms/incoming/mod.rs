//! Receiving PDUs from other servers: the spec's checks in the order it lists them
//! (`checks.rs`), what is missing fetched from the origin (`fetch.rs`, `state.rs`), then the one
//! commit pipeline.
//!
//! (`checks.rs`: checks 1 to 6 as functions of their own; `fetch.rs`: missing prev and auth events and outliers; `state.rs`: the state before an event and the current state after it) received PDUs (format, signatures with keys valid when the event was sent, content hash with redaction on mismatch, missing prev events fetched first with `/get_missing_events` (one level: events it answers do not start another) and otherwise the state after each missing prev event with `/state_ids` plus the prev event itself, then auth events still unknown with `/event_auth`, state before the event resolved across prev events, soft-fail against current state); the room's current state after an event that leaves other extremities is the resolution of all of them.
//! `commit_received` hands an event that passed its checks to `timeline::commit` with its state before as a set, so the snapshot is written in the event's batch (as a delta over its first prev event's state); only a rejected event's state is stored on its own (`store_state`).
//! Outliers (auth chains, join state, soft-failed events) live in `eventid_outlierpdu`, found by `get_pdu` but not in the timeline.

use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, OwnedEventId, RoomId, ServerName,
};
use serde_json::Value;

use super::{
    pdu::Pdu,
    state::StateSet,
    timeline::{commit, CommitInput, Mode, SendTo},
    version::rules_for,
};
use crate::{
    error::Result,
    service::{policy, Services},
};

mod checks;
mod fetch;
mod reject;
mod state;

pub(super) use self::checks::check_against_state;
pub use self::checks::{
    check_against_auth_events, check_received, parse_pdu, to_pdu, verify_pdu, Checked, Parsed,
    MAX_PDU_BYTES,
};
pub use self::fetch::store_outliers;
pub(super) use self::fetch::{fetch_missing_auth, prev_events_known};
use self::fetch::{fetch_missing_prev_events, MAX_MISSING_DEPTH};
use self::state::resolve_current;
pub(super) use self::state::{
    fetch_state_before, first_prev_state, state_after_prev_events, store_state,
};
pub use self::state::{resolve_sets, state_set_of};

/// What became of a received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the timeline (now or before).
    Accepted,
    /// Kept, but not in the timeline: it passed the checks against its own state but not against
    /// the room's current state, or the room's policy server does not recommend it. The text says
    /// why.
    SoftFailed(String),
}

/// Handles one PDU from `origin` for `room_id` (server-server API, "Checks performed on receipt
/// of a PDU"), in the spec's order:
/// 1. format: valid canonical JSON under 65536 bytes, in this room, with the ID its room version
///    gives it ([`parse_pdu`]);
/// 2. signatures of every server the room version requires ([`verify_pdu`]);
/// 3. content hash: on mismatch the event is redacted and processing goes on;
/// 4. auth against its own auth events, fetched from `origin` if unknown (`/event_auth`);
/// 5. auth against the state before it: the state after its prev events (resolved with state
///    resolution v2 when there are several), missing prev events being fetched with
///    `/get_missing_events`, or, when a gap remains, the state after each missing prev event
///    with `/state_ids`;
/// 6. auth against the room's current state: failing only this is a soft failure, and the event
///    is kept out of the timeline;
/// 7. in a room that uses a policy server, a valid signature of it (asked for once more when
///    missing or invalid, `service::policy::check_received`): without one, a soft failure too.
///
/// Then it is committed through the one pipeline (`timeline::commit`), its state before it in the
/// same batch, with the room's current state the resolution of every forward extremity's state.
///
/// What is missing is fetched before any check, prev events first: the state that fills a gap
/// in the graph usually holds the unknown auth events too, so `/event_auth` is asked only for
/// what is still missing after it (Synapse's order, which Complement's requests expect). An event
/// that fails check 4 or 5 for good is remembered as rejected (see `rooms::rejected`), and its
/// `Err` names the reason.
#[tracing::instrument(skip_all, fields(room_id = %room_id, origin = %origin))]
pub async fn handle(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    value: &Value,
    send_to: SendTo<'_>,
) -> Result<(OwnedEventId, Outcome)> {
    handle_with_depth(services, origin, room_id, value, send_to, 0).await
}

async fn handle_with_depth(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    value: &Value,
    send_to: SendTo<'_>,
    depth: usize,
) -> Result<(OwnedEventId, Outcome)> {
    let rooms = &services.rooms;
    let (shortroomid, version) = rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    // 1–3. Format, signatures and content hash.
    let (event_id, checked) = check_received(services, room_id, &rules, value).await?;
    let Some(Checked { mut object, pdu }) = checked else {
        return Ok((event_id, Outcome::Accepted));
    };
    // 4, with what is missing for 5.
    let fetched_state =
        fetch_and_check_auth(services, origin, room_id, &rules, &pdu, depth).await?;
    // 7 (asked before the lock, since it may need a request): the policy server's signature.
    let recommended = policy::check_received(services, room_id, &rules, &mut object).await;

    let lock = rooms.timeline.room_lock(room_id);
    let _guard = lock.lock();
    if rooms.timeline.get_pdu_id(&event_id)?.is_some() {
        return Ok((event_id, Outcome::Accepted));
    }
    // 5. The state before the event.
    let state_before = state_before(services, &rules, &pdu, fetched_state)?;
    if let Err(error) = check_against_state(services, &rules, &pdu, &state_before) {
        let before_hash = store_state(services, &state_before, first_prev_state(services, &pdu)?)?;
        let reason = error.to_string();
        let state = Some(before_hash.unwrap_or(0));
        rooms
            .rejected
            .mark(&rooms.short, &rooms.state, &event_id, &reason, state)?;
        return Err(error);
    }
    // 6. Current state, and 7. the policy server: a failure of either is a soft failure.
    if let Some(error) = soft_failure(services, &rules, shortroomid, &pdu, recommended)? {
        tracing::info!(%event_id, %error, "soft-failing an event");
        rooms.timeline.add_outlier(&event_id, &object)?;
        return Ok((event_id, Outcome::SoftFailed(error)));
    }
    let current_state = resolve_current(services, &rules, shortroomid, &pdu, &state_before)?;
    let checked = Checked { object, pdu };
    commit_received(
        services,
        room_id,
        checked,
        state_before,
        (send_to, Mode::Live),
        current_state,
    )?;
    Ok((event_id, Outcome::Accepted))
}

/// Writes a received event that passed its checks through the one pipeline (`timeline::commit`),
/// with the state before it in the same batch (a delta over the state after its first prev
/// event): for `/send` and the other pushes, backfill (`Mode::History`) and our own join.
/// `current_state` is the room's current state after it, when other forward extremities stay.
/// The caller holds the room lock.
pub(in crate::service::rooms) fn commit_received(
    services: &Services,
    room_id: &RoomId,
    Checked { object, pdu }: Checked,
    state_before: StateSet,
    (send_to, mode): (SendTo<'_>, Mode),
    current_state: Option<StateSet>,
) -> Result<u64> {
    let parent = first_prev_state(services, &pdu)?;
    let mut input = CommitInput::received(
        room_id,
        (object, pdu),
        (state_before, parent),
        send_to,
        mode,
    );
    input.current_state = current_state;
    commit(services, input)
}

/// Check 4 and what check 5 needs: prev events that are missing are fetched, or else the state
/// before the event (returned), then the auth events the state did not bring. The auth check
/// runs at once when every auth event is here (a forged event costs no fetching).
async fn fetch_and_check_auth(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    depth: usize,
) -> Result<Option<StateSet>> {
    let auth_known = super::rejected::auth_events_settled(services, pdu)?;
    if auth_known {
        check_or_reject_by_auth_events(services, rules, pdu, true, None)?;
    }
    let mut fetched_state = None;
    if !prev_events_known(services, pdu)? {
        if depth < MAX_MISSING_DEPTH {
            fetch_missing_prev_events(services, origin, room_id, pdu, depth).await;
        }
        if !prev_events_known(services, pdu)? {
            fetched_state = Some(fetch_state_before(services, origin, room_id, rules, pdu).await?);
        }
    }
    if !auth_known {
        let auth_final = fetch_missing_auth(services, origin, room_id, rules, pdu).await?;
        check_or_reject_by_auth_events(services, rules, pdu, auth_final, fetched_state.as_ref())?;
    }
    Ok(fetched_state)
}

/// The state before a received event: the state fetched for it when its prev events were
/// missing, else the state after its prev events. The caller holds the room lock.
pub(in crate::service::rooms) fn state_before(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    fetched: Option<StateSet>,
) -> Result<StateSet> {
    match fetched {
        Some(state) => Ok(state),
        None => state_after_prev_events(services, rules, pdu),
    }
}

/// Checks 6 and 7: why the event is soft-failed, if it is: it fails the auth rules against the
/// room's current state, or the room's policy server does not recommend it.
fn soft_failure(
    services: &Services,
    rules: &RoomVersionRules,
    shortroomid: u64,
    pdu: &Pdu,
    recommended: Result<()>,
) -> Result<Option<String>> {
    let state = &services.rooms.state;
    let current = match state.get_room_state(shortroomid)? {
        Some(hash) => state.load(hash)?,
        None => Default::default(),
    };
    Ok(match check_against_state(services, rules, pdu, &current) {
        Err(error) => Some(error.shareable()),
        Ok(()) => recommended.err().map(|error| {
            format!(
                "the room's policy server does not recommend the event: {}",
                error.shareable()
            )
        }),
    })
}

/// Check 4, remembering an event that fails it for good as rejected (`final_failure` says that
/// its unknown auth events, if any, cannot be had); `state_before` is the state fetched for it
/// when its prev events are not here.
fn check_or_reject_by_auth_events(
    services: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    final_failure: bool,
    state_before: Option<&StateSet>,
) -> Result<()> {
    let Err(error) = check_against_auth_events(services, rules, pdu) else {
        return Ok(());
    };
    reject::reject_by_auth_events(services, rules, pdu, &error, final_failure, state_before)?;
    Err(error)
}

/// Whether a server may take part in a room under its `m.room.server_acl` (current state).
pub fn server_allowed(services: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    let Some(acl) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomServerAcl, "")?
    else {
        return Ok(true);
    };
    let Ok(content) = serde_json::from_str::<
        ruma::events::room::server_acl::RoomServerAclEventContent,
    >(acl.content.get()) else {
        return Ok(true);
    };
    Ok(content.is_allowed(server))
}
