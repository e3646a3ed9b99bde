//! Power levels as the auth rules read them: a user's level, the level an action or event needs,
//! and the privileged creators of room version 12. Read-only over the room's current state.
//!
//! Power levels as the auth rules read them (a user's level, the level an action or event needs, version 12's privileged creators); read-only over current state, used by restricted joins, upgrades and the power-level checks of `api/client/state.rs`.

use ruma::{events::StateEventType, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::version::rules_for;
use crate::{error::Result, service::Services};

/// The level of a privileged creator (room version 12): above any level an event can name.
pub const CREATOR_LEVEL: i64 = i64::MAX;

/// A room's current power levels, with its creators.
pub struct PowerLevels {
    content: Value,
    has_event: bool,
    create_sender: Option<OwnedUserId>,
    /// Creators whose power is infinite (room version 12); empty for earlier versions.
    pub creators: Vec<OwnedUserId>,
}

/// A power level value: an integer, or in older room versions a string holding one.
fn level_of(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
}

/// The creators of a room whose version privileges them (version 12): the create event's sender
/// and its `additional_creators`; empty for other versions.
pub fn privileged_creators(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    if !rules.authorization.explicitly_privilege_room_creators {
        return Ok(Vec::new());
    }
    creators(services, room_id)
}

/// A room's creators whatever its version: the create event's sender and its
/// `additional_creators` (empty when the create event is unknown here).
pub fn creators(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    let Some(create) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomCreate, "")?
    else {
        return Ok(Vec::new());
    };
    let mut creators = vec![create.sender.clone()];
    for creator in create.content_value()["additional_creators"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(user) = creator
            .as_str()
            .and_then(|text| OwnedUserId::try_from(text).ok())
        {
            creators.push(user);
        }
    }
    Ok(creators)
}

impl PowerLevels {
    /// The current power levels of a room (`M_NOT_FOUND` for an unknown room).
    pub fn load(services: &Services, room_id: &RoomId) -> Result<Self> {
        let creators = privileged_creators(services, room_id)?;
        let event =
            services
                .rooms
                .current_state_pdu(room_id, &StateEventType::RoomPowerLevels, "")?;
        let create_sender = services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomCreate, "")?
            .map(|create| create.sender);
        Ok(Self {
            has_event: event.is_some(),
            content: event.map(|pdu| pdu.content_value()).unwrap_or(Value::Null),
            create_sender,
            creators,
        })
    }

    /// The content of the power levels event (`null` when the room has none).
    pub fn content(&self) -> &Value {
        &self.content
    }

    /// A user's level: creators of a version 12 room are above every level; without a power
    /// levels event the room's creator has 100 and everyone else 0 (the spec's defaults).
    pub fn user_level(&self, user: &UserId) -> i64 {
        if self.creators.iter().any(|creator| creator == user) {
            return CREATOR_LEVEL;
        }
        if !self.has_event {
            return if self.create_sender.as_deref() == Some(user) {
                100
            } else {
                0
            };
        }
        self.content["users"]
            .get(user.as_str())
            .and_then(level_of)
            .or_else(|| level_of(&self.content["users_default"]))
            .unwrap_or(0)
    }

    /// The level an action of the power levels event needs (`invite`, `kick`, `ban`, `redact`).
    pub fn action_level(&self, action: &str) -> i64 {
        let default = if action == "invite" { 0 } else { 50 };
        level_of(&self.content[action]).unwrap_or(default)
    }

    /// The level needed to send an event of `kind` (a state event when `is_state`).
    pub fn event_level(&self, kind: &str, is_state: bool) -> i64 {
        if let Some(level) = self.content["events"].get(kind).and_then(level_of) {
            return level;
        }
        let (field, default) = if is_state {
            ("state_default", if self.has_event { 50 } else { 0 })
        } else {
            ("events_default", 0)
        };
        level_of(&self.content[field]).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn levels(content: Value, creators: &[&str]) -> PowerLevels {
        PowerLevels {
            has_event: !content.is_null(),
            content,
            create_sender: Some(OwnedUserId::try_from("@creator:x").unwrap()),
            creators: creators
                .iter()
                .map(|user| OwnedUserId::try_from(*user).unwrap())
                .collect(),
        }
    }

    fn user(text: &str) -> OwnedUserId {
        OwnedUserId::try_from(text).unwrap()
    }

    #[test]
    fn levels_follow_the_spec_defaults() {
        let pl = levels(
            json!({"users": {"@a:x": 100, "@b:x": "50"}, "users_default": 5, "invite": 50,
                   "events": {"m.room.tombstone": 150}, "state_default": 60}),
            &[],
        );
        assert_eq!(pl.user_level(&user("@a:x")), 100);
        assert_eq!(pl.user_level(&user("@b:x")), 50);
        assert_eq!(pl.user_level(&user("@c:x")), 5);
        assert_eq!(pl.action_level("invite"), 50);
        assert_eq!(pl.action_level("ban"), 50);
        assert_eq!(pl.event_level("m.room.tombstone", true), 150);
        assert_eq!(pl.event_level("m.room.topic", true), 60);
        assert_eq!(pl.event_level("m.room.message", false), 0);
    }

    #[test]
    fn creators_outrank_everyone_and_no_event_means_creator_100() {
        let pl = levels(json!({"users": {}}), &["@creator:x"]);
        assert_eq!(pl.user_level(&user("@creator:x")), CREATOR_LEVEL);
        let none = levels(Value::Null, &[]);
        assert_eq!(none.user_level(&user("@creator:x")), 100);
        assert_eq!(none.user_level(&user("@other:x")), 0);
        assert_eq!(none.action_level("invite"), 0);
        assert_eq!(none.event_level("m.room.name", true), 0);
    }
}
