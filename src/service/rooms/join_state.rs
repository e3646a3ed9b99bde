//! What a resident server answers to `send_join`: the state before the join and the auth chain,
//! either whole or, when the joining server asks with `omit_members`, without most member events
//! (MSC3706, the spec's partial-state join since v1.6).
//!
//! The resident side's `send_join` answer: the state before the join, the auth chains of the join and of that state, and the servers with joined members before it; with `omit_members` (partial-state joins) it keeps the non-member state, the joiner's own earlier membership and, when the room has no name or canonical alias, the heroes' member events (first five joined or invited by stream position, else those who left), and leaves out of `auth_chain` what `state` holds. Owns no tree; Plait's own joins still ask for the full state.

use std::collections::{BTreeSet, HashSet};

use ruma::{events::TimelineEventType, CanonicalJsonObject, OwnedEventId, OwnedServerName, UserId};

use super::{auth, pdu::Pdu};
use crate::{
    error::{Error, Result},
    service::Services,
};

/// How many heroes the client-server spec's room summary names.
const HEROES: usize = 5;

/// The parts of a `send_join` answer that depend on the room.
pub struct JoinState {
    pub state: Vec<CanonicalJsonObject>,
    pub auth_chain: Vec<CanonicalJsonObject>,
    pub members_omitted: bool,
    /// Servers with a joined member in the state before the join.
    pub servers_in_room: Vec<OwnedServerName>,
}

/// The state before the accepted `join` and the auth chains it needs.
///
/// With `omit_members`, `state` keeps every non-member event, the joining user's own earlier
/// membership (an invite, say: it authorises the join) and, when the room has no name and no
/// canonical alias, the members a client names the room after (the heroes of the room summary);
/// `auth_chain` then holds the auth chains of the join and of what `state` keeps, less the events
/// already in `state`, as the spec allows.
pub fn for_send_join(services: &Services, join: &Pdu, omit_members: bool) -> Result<JoinState> {
    let rooms = &services.rooms;
    let not_accepted = || Error::forbidden("the join was not accepted");
    let short = rooms
        .short
        .get_shorteventid(&join.event_id)?
        .ok_or_else(not_accepted)?;
    let (before, _) = rooms
        .state
        .get_event_state(short)?
        .ok_or_else(not_accepted)?;
    let state = rooms.state_pdus(before)?;
    let servers_in_room = joined_servers(&state);
    let kept: Vec<&Pdu> = if omit_members {
        let heroes = if is_unnamed(&state) {
            heroes(services, &state, &join.sender)?
        } else {
            HashSet::new()
        };
        state
            .iter()
            .filter(|pdu| {
                pdu.kind != TimelineEventType::RoomMember
                    || pdu.state_key.as_deref() == Some(join.sender.as_str())
                    || pdu
                        .state_key
                        .as_deref()
                        .is_some_and(|key| heroes.contains(key))
            })
            .collect()
    } else {
        state.iter().collect()
    };
    let kept_ids: HashSet<&OwnedEventId> = kept.iter().map(|pdu| &pdu.event_id).collect();
    let mut chain = auth::auth_chain(
        services,
        kept.iter()
            .map(|pdu| pdu.event_id.clone())
            .chain([join.event_id.clone()]),
    )?;
    if omit_members {
        chain.retain(|event_id| !kept_ids.contains(event_id));
    }
    Ok(JoinState {
        state: federation_pdus(services, kept.iter().map(|pdu| &pdu.event_id))?,
        auth_chain: federation_pdus(services, chain.iter())?,
        members_omitted: omit_members,
        servers_in_room,
    })
}

/// The stored federation form of each event that has one.
fn federation_pdus<'a>(
    services: &Services,
    event_ids: impl Iterator<Item = &'a OwnedEventId>,
) -> Result<Vec<CanonicalJsonObject>> {
    let mut pdus = Vec::new();
    for event_id in event_ids {
        if let Some(pdu) = services.rooms.timeline.get_federation_pdu(event_id)? {
            pdus.push(pdu);
        }
    }
    Ok(pdus)
}

fn membership(pdu: &Pdu) -> Option<String> {
    (pdu.kind == TimelineEventType::RoomMember)
        .then(|| {
            pdu.content_value()["membership"]
                .as_str()
                .map(str::to_owned)
        })
        .flatten()
}

fn joined_servers(state: &[Pdu]) -> Vec<OwnedServerName> {
    let servers: BTreeSet<OwnedServerName> = state
        .iter()
        .filter(|pdu| membership(pdu).as_deref() == Some("join"))
        .filter_map(|pdu| pdu.state_key.as_deref())
        .filter_map(|key| <&UserId>::try_from(key).ok())
        .map(|user| user.server_name().to_owned())
        .collect();
    servers.into_iter().collect()
}

/// Whether the room has neither a non-empty `m.room.name` nor a non-empty canonical alias, the
/// case in which the spec has the heroes' member events sent along.
fn is_unnamed(state: &[Pdu]) -> bool {
    !state.iter().any(|pdu| {
        let field = match pdu.kind {
            TimelineEventType::RoomName => "name",
            TimelineEventType::RoomCanonicalAlias => "alias",
            _ => return false,
        };
        pdu.state_key.as_deref() == Some("")
            && pdu.content_value()[field]
                .as_str()
                .is_some_and(|value| !value.is_empty())
    })
}

/// The room summary's heroes as the joining user would see them: the first five joined or
/// invited members other than the user, by the stream position of their member event here;
/// when there are none, the first five who left or were banned.
fn heroes(services: &Services, state: &[Pdu], joiner: &UserId) -> Result<HashSet<String>> {
    let mut present = Vec::new();
    let mut gone = Vec::new();
    for pdu in state {
        let Some(key) = pdu.state_key.as_deref() else {
            continue;
        };
        if key == joiner.as_str() {
            continue;
        }
        let bucket = match membership(pdu).as_deref() {
            Some("join" | "invite") => &mut present,
            Some("leave" | "ban") => &mut gone,
            _ => continue,
        };
        // Member events known only as outliers have no stream position; they come last.
        let position = services
            .rooms
            .timeline
            .get_pdu_id(&pdu.event_id)?
            .map_or(u64::MAX, |pdu_id| pdu_id.count);
        bucket.push((position, key.to_owned()));
    }
    Ok(pick_heroes(present, gone).into_iter().collect())
}

/// The spec's choice of heroes from members ranked by the stream position of their member
/// event: the first five joined or invited (`present`), or, when there are none, the first
/// five who left or were banned (`gone`). Shared by `send_join`'s answer and `/sync`'s summary,
/// so both name the same heroes.
pub fn pick_heroes<T: Ord>(present: Vec<(u64, T)>, gone: Vec<(u64, T)>) -> Vec<T> {
    let mut chosen = if present.is_empty() { gone } else { present };
    chosen.sort();
    chosen
        .into_iter()
        .take(HEROES)
        .map(|(_, member)| member)
        .collect()
}
