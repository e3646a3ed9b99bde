//! This server as a room's policy server: what it checks before it signs an event
//! (`docs/policy_servers.md` describes the policy for operators).

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedServerName, ServerName};
use serde_json::Value;

use super::{is_exempt, policy_of_content, sign_redacted, EVENT_TYPE};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{incoming, version::rules_for},
        Services,
    },
};

/// Content fields whose text is searched for `policy_server_forbidden_text`.
const TEXT_FIELDS: &[&str] = &["body", "formatted_body", "name", "topic", "displayname"];

/// Judges an event as this room's policy server and, when it passes, returns the
/// `ed25519:policy_server` signature over its redacted form. `origin` is the asking server (none
/// when this server asks itself for a local event).
///
/// Errors, in the order checked: `M_UNRECOGNIZED` (not a policy server), `M_BAD_JSON` (no room,
/// a malformed PDU, or the exempt `m.room.policy` state event), `M_NOT_FOUND` (unknown room, or
/// its `m.room.policy` names another server or key, or no local user is joined), `M_FORBIDDEN`
/// as [`Error::forbidden`] (the asking server is denied by the room's ACL) and
/// [`Error::Refused`] (the policy refuses the event).
pub fn sign_as_policy_server(
    services: &Services,
    origin: Option<&ServerName>,
    value: &Value,
) -> Result<String> {
    let Some(key) = services.policy.signing_key() else {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::Unrecognized,
            "this server is not a policy server",
        ));
    };
    let room_id = value
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("pdu without room_id"))?;
    let room_id = OwnedRoomId::try_from(room_id)
        .map_err(|_| Error::bad_json("pdu with an invalid room_id"))?;
    let (_, version) = services.rooms.room_version(&room_id)?;
    let rules = rules_for(&version)?;
    let own_name = services.globals.server_name();
    let names_us = services
        .rooms
        .current_state_pdu(&room_id, &EVENT_TYPE.into(), "")?
        .and_then(|event| policy_of_content(&event.content_value()))
        .is_some_and(|policy| {
            policy.via == own_name
                && services
                    .policy
                    .public_key()
                    .is_some_and(|ours| policy.public_key.encode() == ours)
        });
    if !names_us
        || !services
            .rooms
            .members
            .servers_in_room(&room_id)?
            .contains(own_name)
    {
        return Err(Error::not_found(format!(
            "this server is not the policy server of {room_id}"
        )));
    }
    if let Some(origin) = origin {
        if !incoming::server_allowed(services, &room_id, origin)? {
            return Err(Error::forbidden(format!(
                "{origin} is denied by the server ACL of {room_id}"
            )));
        }
    }
    // Over 65536 bytes of canonical JSON is `413 M_TOO_LARGE`, anything else malformed
    // `M_BAD_JSON`.
    let parsed = incoming::parse_pdu(value, &room_id, &rules)?;
    let pdu = incoming::to_pdu(&parsed.event_id, &parsed.object)
        .map_err(|error| Error::bad_json(format!("malformed pdu: {error}")))?;
    if is_exempt(&parsed.object) {
        return Err(Error::bad_json(
            "the m.room.policy state event is never sent to the policy server",
        ));
    }
    judge(services, &room_id, &pdu)?;
    sign_redacted(key, own_name, &parsed.object, &rules)
}

/// The policy itself: the sender's (and a membership change's target's) server and user ID
/// against the deny globs, the text against the
/// forbidden substrings, and (when `policy_server_require_membership`) the sender's membership in
/// this server's view of the room.
fn judge(
    services: &Services,
    room_id: &ruma::RoomId,
    pdu: &crate::service::rooms::pdu::Pdu,
) -> Result<()> {
    let config = &services.config;
    let sender = pdu.sender.as_str();
    // The users an event speaks for: its sender, and the target of an invite, join or knock, so
    // that a denied user can neither send nor be brought in by someone else (kicking or banning
    // them stays possible).
    let mut users = vec![pdu.sender.clone()];
    let membership = pdu.content_value()["membership"].clone();
    let brings_in = ["invite", "join", "knock"]
        .iter()
        .any(|kind| membership == *kind);
    if pdu.kind == ruma::events::TimelineEventType::RoomMember && brings_in {
        if let Some(target) = pdu
            .state_key
            .as_deref()
            .and_then(|key| ruma::OwnedUserId::try_from(key).ok())
        {
            users.push(target);
        }
    }
    for user in &users {
        let server: OwnedServerName = user.server_name().to_owned();
        if config
            .policy_server_deny_servers
            .iter()
            .any(|glob| glob_matches(glob, server.as_str()))
        {
            return Err(Error::Refused(format!(
                "users of {server} are not accepted in this room"
            )));
        }
        if config
            .policy_server_deny_users
            .iter()
            .any(|glob| glob_matches(glob, user.as_str()))
        {
            return Err(Error::Refused(format!(
                "{user} is not accepted in this room"
            )));
        }
    }
    let content = pdu.content_value();
    for field in TEXT_FIELDS {
        let Some(text) = content.get(*field).and_then(Value::as_str) else {
            continue;
        };
        let text = text.to_lowercase();
        if config
            .policy_server_forbidden_text
            .iter()
            .any(|needle| !needle.is_empty() && text.contains(&needle.to_lowercase()))
        {
            return Err(Error::Refused(
                "the event contains text this room does not accept".to_owned(),
            ));
        }
    }
    if config.policy_server_require_membership {
        let own_membership = pdu.kind == ruma::events::TimelineEventType::RoomMember
            && pdu.state_key.as_deref() == Some(sender);
        let joined = services
            .rooms
            .members
            .get_membership(room_id, &pdu.sender)?
            == Some(MembershipState::Join);
        if !own_membership && !joined {
            return Err(Error::Refused(format!(
                "{sender} is not joined to {room_id}"
            )));
        }
    }
    Ok(())
}

/// Matches `*` (any run of characters) and `?` (one character), like server ACL globs; linear in
/// the text for each star, so hostile globs cost nothing much.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((star_g, star_t)) = star {
            g = star_g + 1;
            t = star_t + 1;
            star = Some((star_g, star_t + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}
