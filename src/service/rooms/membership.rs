//! Member events that local users send for themselves or others (joins, leaves, invites, kicks,
//! bans), with the profile fields joins and knocks carry, and leaving every room when an account
//! is deactivated.

use ruma::{events::room::member::MembershipState, OwnedEventId, RoomId, UserId};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    service::{
        rooms::timeline::{create_and_commit, PduBuilder},
        Services,
    },
};

/// Sends a member event for `target` with `membership`, keeping profile fields on joins.
pub async fn set_membership(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
) -> Result<OwnedEventId> {
    let mut content = json!({ "membership": membership });
    if membership == "join" || membership == "knock" {
        add_profile(services, target, &mut content)?;
    }
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    send_member_event(services, room_id, sender, target, content).await
}

/// Sends a member event for `target` with the given content.
pub async fn send_member_event(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: Value,
) -> Result<OwnedEventId> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    let (event_id, _) = create_and_commit(
        services,
        room_id,
        sender,
        PduBuilder::state("m.room.member", target.as_str(), content),
        None,
    )
    .await?;
    Ok(event_id)
}

/// Adds the user's display name and avatar to member event content (joins and knocks carry them).
pub fn add_profile(services: &Services, user: &UserId, content: &mut Value) -> Result<()> {
    if let Some(profile) = services.users.get_profile(user)? {
        for field in ["displayname", "avatar_url"] {
            if let Some(value) = profile.get(field) {
                content[field] = value.clone();
            }
        }
    }
    Ok(())
}

/// Leaves every room `user` is joined or invited to, as the user, before their account is
/// deactivated; a room that refuses (the server notices room, a room this server left) is
/// skipped.
pub async fn leave_all(services: &Services, user: &UserId) -> Result<()> {
    for membership in services.rooms.members.iter_rooms(user)? {
        if matches!(
            membership.membership,
            MembershipState::Join | MembershipState::Invite
        ) {
            let left = set_membership(services, &membership.room_id, user, user, "leave", None);
            if let Err(error) = left.await {
                tracing::debug!(%error, room_id = %membership.room_id, "leaving a room on deactivation failed");
            }
        }
    }
    Ok(())
}
