//! Who sees whose presence: a user sees their own and that of users who share a joined room
//! with them (client-server API, "Presence": "sent to interested parties where users share a
//! room membership"); and the `presence` section of `/sync` built on that rule.

use std::collections::{BTreeSet, HashSet};

use ruma::{events::room::member::MembershipState, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

use super::State;
use crate::{
    error::Result,
    service::{
        filter::RoomEventFilter,
        privacy::{self, Subject, Viewer},
        Services,
    },
    util,
};

/// Whether `other` is joined to one of `joined` (the viewer's joined rooms). One scan of
/// `other`'s memberships: the cost follows how many rooms they are in, not the rooms' sizes.
pub fn shares_room(services: &Services, other: &UserId, joined: &HashSet<&RoomId>) -> Result<bool> {
    Ok(services
        .rooms
        .members
        .iter_rooms(other)?
        .iter()
        .any(|membership| {
            membership.membership == MembershipState::Join && joined.contains(&*membership.room_id)
        }))
}

/// The `m.presence` events for a sync of `user`, whose joined rooms are `joined`:
/// - incremental (`since`): users whose presence changed after `since` up to `next`, plus the
///   members who are not offline of `newly_joined` rooms (new to this user even if unchanged;
///   this reads those rooms' member lists, as their full state is sent anyway);
/// - initial: the members of the joined rooms who are not offline, and the user.
///
/// Each is kept only if it is the user or shares a joined room (true by construction for room
/// members), the candidate's privacy settings show the user their presence (and the candidate
/// does not ignore the user), and it passes the sync filter's
/// `presence` part (`types`, `not_types`, `senders`, `not_senders`, `limit`).
pub fn sync_events(
    services: &Services,
    user: &UserId,
    (joined, newly_joined): (&HashSet<&RoomId>, &[&RoomId]),
    since: Option<u64>,
    next: u64,
    filter: Option<&Value>,
) -> Result<Vec<Value>> {
    let filter = RoomEventFilter::from_value(filter.unwrap_or(&Value::Null));
    if filter.limit == Some(0) || !filter.matches_type("m.presence") {
        return Ok(Vec::new());
    }
    let presence = &services.presence;
    let mut candidates = BTreeSet::new();
    // An initial sync looks at the members of the user's rooms (what sync reads anyway), not at
    // every user of the server who is online: the cost follows the user's rooms.
    let rooms_to_scan: Vec<&RoomId> = match since {
        Some(since) => {
            candidates.extend(presence.iter_changed(since, next)?);
            newly_joined.to_vec()
        }
        None => {
            candidates.insert(user.to_owned());
            joined.iter().copied().collect()
        }
    };
    for room_id in rooms_to_scan {
        for (member, _) in services
            .rooms
            .members
            .iter_members(room_id, Some(MembershipState::Join))?
        {
            if presence.is_present(&member) {
                candidates.insert(member);
            }
        }
    }
    let now = util::now_millis();
    let mut events = Vec::new();
    for candidate in candidates {
        if !filter.matches_sender(candidate.as_str()) {
            continue;
        }
        let Some(entry) = presence.get(&candidate)? else {
            continue;
        };
        if since.is_none() && entry.state == State::Offline && candidate != user {
            continue;
        }
        if since.is_some() && candidate != user && !shares_room(services, &candidate, joined)? {
            continue;
        }
        if !privacy::may_see(services, &candidate, Viewer::User(user), Subject::LastSeen)? {
            continue;
        }
        events.push(json!({
            "type": "m.presence",
            "sender": candidate,
            "content": presence.content(&candidate, &entry, now),
        }));
        if filter.limit.is_some_and(|limit| events.len() >= limit) {
            break;
        }
    }
    Ok(events)
}

/// Adds to a sync's presence `events` those of `joiners` (users who newly joined one of the
/// syncing user's rooms) who are not offline and not listed yet, within the sync filter's
/// `presence` part.
pub fn add_joiners(
    services: &Services,
    viewer: &UserId,
    events: &mut Vec<Value>,
    joiners: BTreeSet<OwnedUserId>,
    filter: Option<&Value>,
) -> Result<()> {
    let filter = RoomEventFilter::from_value(filter.unwrap_or(&Value::Null));
    if filter.limit == Some(0) || !filter.matches_type("m.presence") {
        return Ok(());
    }
    let now = util::now_millis();
    for joiner in joiners {
        if filter.limit.is_some_and(|limit| events.len() >= limit) {
            break;
        }
        if !filter.matches_sender(joiner.as_str())
            || events
                .iter()
                .any(|event| event["sender"] == joiner.as_str())
        {
            continue;
        }
        let Some(entry) = services.presence.get(&joiner)? else {
            continue;
        };
        if entry.state == State::Offline
            || !privacy::may_see(services, &joiner, Viewer::User(viewer), Subject::LastSeen)?
        {
            continue;
        }
        events.push(json!({
            "type": "m.presence",
            "sender": joiner,
            "content": services.presence.content(&joiner, &entry, now),
        }));
    }
    Ok(())
}
