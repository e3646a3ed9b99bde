//! A room's `required_state` in sliding sync: the pieces of state a list or room subscription
//! asks for as `[type, state_key]`, with `*` for any type or key, `$ME` for the user's own state
//! key and `$LAZY` (member events only) for the senders of the timeline sent with it.
//! A wanted piece of state the client saw that has left the room's state comes as a stub.

use std::collections::BTreeSet;

use ruma::{
    events::{StateEventType, TimelineEventType},
    OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    error::Result,
    service::{
        rooms::{pdu::client_event, state::StateSet},
        sync::state::state_at_position,
        Services,
    },
};

/// What a room's `required_state` asks for.
pub struct Wanted<'a> {
    pub entries: &'a [(String, String)],
    pub user: &'a UserId,
    /// The senders of the timeline sent with the state, for `$LAZY`.
    pub senders: BTreeSet<OwnedUserId>,
}

impl Wanted<'_> {
    /// Whether an entry names `(kind, state_key)`.
    fn wants(&self, kind: &str, state_key: &str) -> bool {
        self.entries.iter().any(|(wanted_kind, wanted_key)| {
            (wanted_kind == "*" || wanted_kind == kind)
                && (wanted_key == "*"
                    || wanted_key == state_key
                    || (wanted_key == "$ME" && state_key == self.user.as_str())
                    || (wanted_key == "$LAZY"
                        && kind == StateEventType::RoomMember.to_string()
                        && self.senders.iter().any(|sender| sender == state_key)))
        })
    }

    /// Whether every entry names one piece of state, so that it can be looked up directly.
    fn exact_keys(&self) -> Option<Vec<(StateEventType, String)>> {
        let mut keys = Vec::new();
        for (kind, state_key) in self.entries {
            if kind == "*" || state_key == "*" {
                return None;
            }
            let kind = StateEventType::from(kind.as_str());
            match state_key.as_str() {
                "$ME" => keys.push((kind, self.user.to_string())),
                "$LAZY" => keys.extend(
                    self.senders
                        .iter()
                        .map(|sender| (kind.clone(), sender.to_string())),
                ),
                _ => keys.push((kind, state_key.clone())),
            }
        }
        Some(keys)
    }
}

/// The wanted pieces of a room's current state: all of them when `since` is `None` (the room is
/// new to the connection), otherwise those that changed after stream position `since`, plus
/// the `$LAZY` members (sent again: the spec allows redundant member events).
pub fn required_state(
    services: &Services,
    room_id: &RoomId,
    shortroomid: u64,
    wanted: &Wanted<'_>,
    since: Option<u64>,
) -> Result<Vec<Value>> {
    let rooms = &services.rooms;
    if wanted.entries.is_empty() {
        return Ok(Vec::new());
    }
    let Some(current) = rooms.state.get_room_state(shortroomid)? else {
        return Ok(Vec::new());
    };
    let current = rooms.state.load(current)?;
    let seen = match since {
        Some(since) => match state_at_position(services, shortroomid, since)? {
            Some(hash) => Some(rooms.state.load(hash)?),
            None => None,
        },
        None => None,
    };
    let unchanged = |short: u64, event: u64| {
        seen.as_ref()
            .is_some_and(|seen| seen.get(&short) == Some(&event))
    };
    let mut shorteventids = Vec::new();
    if let Some(keys) = wanted.exact_keys() {
        for (kind, state_key) in keys {
            let Some(short) = rooms.short.get_shortstatekey(&kind, &state_key)? else {
                continue;
            };
            if let Some(event) = current.get(&short) {
                let lazy_member = kind == StateEventType::RoomMember
                    && wanted.senders.iter().any(|sender| sender == &state_key);
                if lazy_member || !unchanged(short, *event) {
                    shorteventids.push(*event);
                }
            }
        }
    } else {
        for (short, event) in current.iter() {
            let (kind, state_key) = rooms.short.get_statekey(*short)?;
            if !wanted.wants(&kind.to_string(), &state_key) {
                continue;
            }
            let lazy_member = kind == StateEventType::RoomMember
                && wanted.senders.iter().any(|sender| sender == &state_key);
            if lazy_member || !unchanged(*short, *event) {
                shorteventids.push(*event);
            }
        }
    }
    shorteventids.sort_unstable();
    shorteventids.dedup();
    let mut events = Vec::with_capacity(shorteventids.len());
    for short in shorteventids {
        let event_id = rooms.short.get_eventid(short)?;
        if let Some(pdu) = rooms.timeline.get_pdu(&event_id)? {
            events.push(client_event(&pdu, room_id, None));
        }
    }
    if let Some(seen) = &seen {
        events.extend(removed_stubs(services, wanted, seen, &current)?);
    }
    Ok(events)
}

/// A stub (`type` and `state_key`, no `content`: MSC4186's `StateStub`) for each wanted piece of
/// state the client saw that is no longer in the room's state, e.g. after a state reset.
fn removed_stubs(
    services: &Services,
    wanted: &Wanted<'_>,
    seen: &StateSet,
    current: &StateSet,
) -> Result<Vec<Value>> {
    let mut stubs = Vec::new();
    for short in seen.keys().filter(|short| !current.contains_key(short)) {
        let (kind, state_key) = services.rooms.short.get_statekey(*short)?;
        if wanted.wants(&kind.to_string(), &state_key) {
            stubs.push(json!({ "type": kind.to_string(), "state_key": state_key }));
        }
    }
    Ok(stubs)
}

/// Whether `(kind, state_key)` is a valid `required_state` entry: `$LAZY` only for members.
pub fn is_valid_entry(kind: &str, state_key: &str) -> bool {
    state_key != "$LAZY" || kind == TimelineEventType::RoomMember.to_string() || kind == "*"
}

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;

    #[test]
    fn entries_match_wildcards_me_and_lazy() {
        let entries = vec![
            ("m.room.name".to_owned(), String::new()),
            ("m.room.member".to_owned(), "$LAZY".to_owned()),
            ("m.room.member".to_owned(), "$ME".to_owned()),
            ("org.example".to_owned(), "*".to_owned()),
        ];
        let wanted = Wanted {
            entries: &entries,
            user: &owned_user_id!("@alice:localhost"),
            senders: [owned_user_id!("@bob:localhost")].into(),
        };
        assert!(wanted.wants("m.room.name", ""));
        assert!(!wanted.wants("m.room.topic", ""));
        assert!(wanted.wants("m.room.member", "@alice:localhost"));
        assert!(wanted.wants("m.room.member", "@bob:localhost"));
        assert!(!wanted.wants("m.room.member", "@carol:localhost"));
        assert!(wanted.wants("org.example", "anything"));
        assert!(wanted.exact_keys().is_none());
        let exact = &entries[..3];
        let wanted = Wanted {
            entries: exact,
            ..wanted
        };
        assert_eq!(wanted.exact_keys().unwrap().len(), 3);
        assert!(!is_valid_entry("m.room.name", "$LAZY"));
        assert!(is_valid_entry("m.room.member", "$LAZY"));
    }
}
