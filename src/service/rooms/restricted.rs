//! Restricted joins (join rules `restricted` and `knock_restricted`, room versions 8 and up):
//! whether a user qualifies through membership of an allowed room, and which local user with
//! invite power authorises the join (`join_authorised_via_users_server`).
//!
//! Restricted and `knock_restricted` joins: a user qualifies by being joined to an allowed room this server is in, and the authoriser is the local joined user with the most power at or above the invite level; a local join carries `join_authorised_via_users_server`, and when no local user may invite the join goes through another server of the room (`handshake::join_remote`, whose answer is then received through `incoming::handle` since the room's state is already here); `make_join` answers `M_UNABLE_TO_GRANT_JOIN` (no local authoriser) or `M_UNABLE_TO_AUTHORISE_JOIN` (in none of the allowed rooms), and `send_join` countersigns only for a user who still qualifies.

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::Value;

use super::{power::PowerLevels, version::rules_for};
use crate::{error::Result, service::Services};

/// What this server can say about a user joining a room.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinCheck {
    /// The room is not restricted, or the user is already joined or invited: no authoriser.
    Unrestricted,
    /// The user is in an allowed room and this local user, joined with invite power, vouches.
    Authorised(OwnedUserId),
    /// The user is in an allowed room, but no local user may invite (`M_UNABLE_TO_GRANT_JOIN`).
    NoLocalAuthoriser,
    /// This server is in none of the allowed rooms, so it cannot tell
    /// (`M_UNABLE_TO_AUTHORISE_JOIN`).
    Unverifiable,
    /// The user is in none of the allowed rooms this server is in (`M_FORBIDDEN`).
    NotAllowed,
}

/// The rooms of an `allow` list of join rules content: valid `m.room_membership` entries only
/// (anything else in the list is ignored, and a list that is not an array allows nothing).
pub fn allowed_rooms(join_rules: &Value) -> Vec<OwnedRoomId> {
    join_rules["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["type"] == "m.room_membership")
        .filter_map(|entry| entry["room_id"].as_str())
        .filter_map(|room| OwnedRoomId::try_from(room).ok())
        .collect()
}

/// Whether join rules content restricts joins in a room of the given version.
pub fn is_restricted(
    join_rules: &Value,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> bool {
    match join_rules["join_rule"].as_str() {
        Some("restricted") => rules.authorization.restricted_join_rule,
        Some("knock_restricted") => rules.authorization.knock_restricted_join_rule,
        _ => false,
    }
}

/// Checks a join of `user` to a room this server is in, against the room's current state.
pub fn check_join(services: &Services, room_id: &RoomId, user: &UserId) -> Result<JoinCheck> {
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    let Some(join_rules) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomJoinRules, "")?
    else {
        return Ok(JoinCheck::Unrestricted);
    };
    let join_rules = join_rules.content_value();
    if !is_restricted(&join_rules, &rules) {
        return Ok(JoinCheck::Unrestricted);
    }
    if matches!(
        services.rooms.members.get_membership(room_id, user)?,
        Some(MembershipState::Join | MembershipState::Invite)
    ) {
        return Ok(JoinCheck::Unrestricted);
    }
    let allowed = allowed_rooms(&join_rules);
    let own = services.globals.server_name();
    let mut known = false;
    let mut qualifies = false;
    for room in &allowed {
        // Only the membership of a room this server is in is current knowledge.
        if !services.rooms.members.servers_in_room(room)?.contains(own) {
            continue;
        }
        known = true;
        if services.rooms.members.is_joined(room, user)? {
            qualifies = true;
            break;
        }
    }
    if !qualifies {
        // An allow list naming no room lets nobody in by membership, which any server can
        // tell; a local user's memberships are always known here.
        return Ok(
            if known || allowed.is_empty() || user.server_name() == own {
                JoinCheck::NotAllowed
            } else {
                JoinCheck::Unverifiable
            },
        );
    }
    Ok(match local_authoriser(services, room_id)? {
        Some(authoriser) => JoinCheck::Authorised(authoriser),
        None => JoinCheck::NoLocalAuthoriser,
    })
}

/// A local user joined to the room whose power reaches the invite level, the most powerful first
/// (ties broken by user ID, so the choice is stable).
fn local_authoriser(services: &Services, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
    let levels = PowerLevels::load(services, room_id)?;
    let needed = levels.action_level("invite");
    let own = services.globals.server_name();
    let mut candidates: Vec<(i64, OwnedUserId)> = services
        .rooms
        .members
        .iter_members(room_id, Some(MembershipState::Join))?
        .into_iter()
        .map(|(member, _)| member)
        .filter(|member| member.server_name() == own)
        .map(|member| (levels.user_level(&member), member))
        .filter(|(level, _)| *level >= needed)
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(candidates.into_iter().next().map(|(_, member)| member))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn allow_lists_keep_only_valid_room_memberships() {
        let rooms = allowed_rooms(&json!({"join_rule": "restricted", "allow": [
            {"type": "m.room_membership", "room_id": "!a:x"},
            {"type": "m.room_membership", "room_id": "not a room"},
            {"type": "m.other", "room_id": "!b:x"},
            "invalid",
        ]}));
        assert_eq!(rooms, vec![OwnedRoomId::try_from("!a:x").unwrap()]);
        assert!(allowed_rooms(&json!({"allow": "invalid"})).is_empty());
    }

    #[test]
    fn restriction_depends_on_the_room_version() {
        let v7 = rules_for(&ruma::RoomVersionId::V7).unwrap();
        let v8 = rules_for(&ruma::RoomVersionId::V8).unwrap();
        let v10 = rules_for(&ruma::RoomVersionId::V10).unwrap();
        let restricted = json!({"join_rule": "restricted"});
        let knock_restricted = json!({"join_rule": "knock_restricted"});
        assert!(!is_restricted(&restricted, &v7));
        assert!(is_restricted(&restricted, &v8));
        assert!(!is_restricted(&knock_restricted, &v8));
        assert!(is_restricted(&knock_restricted, &v10));
        assert!(!is_restricted(&json!({"join_rule": "public"}), &v10));
    }
}
