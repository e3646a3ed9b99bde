//! How admin commands name users and rooms: a user by full ID or by localpart, a room by ID or
//! by local alias, each checked to be one the command can act on.

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId};

use super::room::server_user;
use crate::{
    error::{Error, Result},
    service::{users::local_user_id, Services},
};

/// A user named by full ID (of any server) or by localpart (of this one); a local one must
/// exist and not be the server's own user.
pub(super) fn user_id_of(services: &Services, name: &str) -> Result<OwnedUserId> {
    let user_id = parse_user(services, name)?;
    if user_id.server_name() == services.globals.server_name() {
        return local_user(services, user_id.as_str());
    }
    Ok(user_id)
}

/// An existing local account named by full ID or localpart, other than the server's own user.
pub(super) fn local_user(services: &Services, name: &str) -> Result<OwnedUserId> {
    let user_id = parse_user(services, name)?;
    if user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "{user_id} is not a local user"
        )));
    }
    if !services.users.exists(&user_id)? {
        return Err(Error::not_found(format!("user {user_id} does not exist")));
    }
    if user_id == server_user(services)? {
        return Err(Error::forbidden(format!(
            "{user_id} is the server's own user"
        )));
    }
    Ok(user_id)
}

/// A room named by ID or by a local alias.
pub(super) fn resolve_room(services: &Services, name: &str) -> Result<OwnedRoomId> {
    if name.starts_with('#') {
        let alias = OwnedRoomAliasId::try_from(name)
            .map_err(|_| Error::invalid_param(format!("invalid room alias {name}")))?;
        return services
            .rooms
            .alias
            .get(&alias)?
            .map(|(room_id, _)| room_id)
            .ok_or_else(|| Error::not_found(format!("alias {alias} not found")));
    }
    OwnedRoomId::try_from(name)
        .map_err(|_| Error::invalid_param(format!("invalid room ID or alias {name}")))
}

/// A full user ID, or a localpart of this server.
fn parse_user(services: &Services, name: &str) -> Result<OwnedUserId> {
    if name.starts_with('@') {
        return OwnedUserId::try_from(name)
            .map_err(|_| Error::invalid_param(format!("invalid user ID {name}")));
    }
    local_user_id(services.globals.server_name(), &name.to_lowercase())
}
