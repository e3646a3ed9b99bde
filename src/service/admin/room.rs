//! The admin room itself: the server's own user, the room made once at start-up, and admins
//! invited when made and kicked when removed.

use ruma::{events::room::member::MembershipState, OwnedRoomAliasId, OwnedUserId, UserId};

use super::queue;
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            create::{self, NewRoom},
            membership,
        },
        users::local_user_id,
        Services,
    },
};

/// The alias localpart of the admin room.
const ROOM_ALIAS: &str = "admins";

/// The server's own user: `admin_user` on this server.
pub fn server_user(services: &Services) -> Result<OwnedUserId> {
    local_user_id(services.globals.server_name(), &services.config.admin_user)
}

/// At start-up: creates the server user and the admin room (inviting the admins there are) unless
/// they exist, and settles whether the next registration is the first.
pub async fn start(services: &Services) -> Result<()> {
    let sender = server_user(services)?;
    if !services.users.exists(&sender)? {
        services
            .users
            .create_hashed(&sender, "", Some("Plait"), false)?;
        tracing::info!(user = %sender, "created the server user");
    }
    let admin = &services.admin;
    let notices_localpart = &services.config.server_notices_localpart;
    let existing = services
        .users
        .iter_user_ids()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .find(|user_id| *user_id != sender && user_id.localpart() != notices_localpart.as_str());
    admin.settle_first_user(existing.as_deref())?;
    if admin.get_room().is_some() {
        return Ok(());
    }
    let alias =
        OwnedRoomAliasId::try_from(format!("#{ROOM_ALIAS}:{}", services.globals.server_name()))
            .map_err(Error::internal)?;
    let alias_free = services.rooms.alias.get(&alias)?.is_none();
    if !alias_free {
        tracing::warn!(%alias, "the admin room's alias is taken; the room is made without it");
    }
    let request = NewRoom {
        preset: Some("private_chat".to_owned()),
        name: Some("Admins".to_owned()),
        topic: Some(format!(
            "Server admin commands: send `{} help`",
            queue::PREFIX
        )),
        room_alias_name: alias_free.then(|| ROOM_ALIAS.to_owned()),
        invite: services.users.iter_admins()?,
        ..NewRoom::default()
    };
    let room_id = create::create(services, &sender, request).await?;
    admin.set_room(&room_id)?;
    tracing::info!(%room_id, "created the admin room");
    Ok(())
}

/// Makes a local account a server admin and invites it to the admin room (unless it is joined or
/// invited already).
pub async fn make_admin(services: &Services, user_id: &UserId) -> Result<()> {
    services.users.set_admin(user_id, true)?;
    tracing::info!(user = %user_id, "made a server admin");
    set_membership(services, user_id, false).await
}

/// Makes a server admin an ordinary user and kicks them from the admin room (when joined or
/// invited).
pub async fn remove_admin(services: &Services, user_id: &UserId) -> Result<()> {
    services.users.set_admin(user_id, false)?;
    tracing::info!(user = %user_id, "removed a server admin");
    set_membership(services, user_id, true).await
}

/// Invites a user to the admin room unless they are in it (joined or invited), or with `kick`
/// kicks them when they are; nothing before the room exists.
async fn set_membership(services: &Services, user_id: &UserId, kick: bool) -> Result<()> {
    let Some(room_id) = services.admin.get_room() else {
        return Ok(());
    };
    let membership = services.rooms.members.get_membership(&room_id, user_id)?;
    let in_room = matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite)
    );
    let (membership, reason) = match (kick, in_room) {
        (false, false) => ("invite", None),
        (true, true) => ("leave", Some("no longer a server admin")),
        _ => return Ok(()),
    };
    let sender = server_user(services)?;
    membership::set_membership(services, &room_id, &sender, user_id, membership, reason).await?;
    Ok(())
}
