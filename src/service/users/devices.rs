//! A user's devices as a whole: logging a device in, renaming and removing devices, with what
//! each of those means for keys, inboxes, pushers and other users' device lists.

use ruma::{OwnedDeviceId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{device_lists, uiaa, users::Tokens, Services},
};

/// What a client asks of the device it logs in with.
pub struct NewDevice {
    pub device_id: Option<OwnedDeviceId>,
    pub display_name: Option<String>,
    /// Whether the client wants a refresh token.
    pub refreshable: bool,
}

/// Creates a device (or issues new tokens to a known one) and announces a new device, or a new
/// name of a known one, to everyone who shares a room with the user, here and on other servers.
pub fn log_in(
    services: &Services,
    user_id: &UserId,
    new: NewDevice,
) -> Result<(OwnedDeviceId, Tokens)> {
    let known = match &new.device_id {
        Some(device_id) => services.users.get_device(user_id, device_id.as_str())?,
        None => None,
    };
    let (device_id, tokens) = services.users.create_device(
        user_id,
        new.device_id,
        new.display_name,
        new.refreshable,
        services.config.refreshable_token_lifetime_ms,
    )?;
    let renamed = match &known {
        Some(known) => services
            .users
            .get_device(user_id, device_id.as_str())?
            .is_some_and(|device| device.display_name != known.display_name),
        None => false,
    };
    if known.is_none() || renamed {
        device_lists::announce_device(services, user_id, device_id.as_str())?;
    }
    Ok((device_id, tokens))
}

/// Renames a device (`None` removes the name) and announces it: other users see the name in key
/// queries and device lists.
pub fn rename(
    services: &Services,
    user_id: &UserId,
    device_id: &str,
    display_name: Option<String>,
) -> Result<()> {
    services
        .users
        .set_device_display_name(user_id, device_id, display_name)?;
    device_lists::announce_device(services, user_id, device_id)
}

/// Removes a device: its keys and inbox (announcing the deletion), its pushers, and the device
/// with its tokens. Removing an unknown device changes nothing but is announced like any other.
pub fn remove(services: &Services, user_id: &UserId, device_id: &str) -> Result<()> {
    device_lists::delete_device(services, user_id, device_id)?;
    services
        .push
        .pushers
        .delete_device_pushers(user_id, device_id)?;
    services.users.remove_device(user_id, device_id)
}

/// Removes every device of a user except `keep`.
pub fn remove_all(services: &Services, user_id: &UserId, keep: Option<&str>) -> Result<()> {
    for device in services.users.iter_devices(user_id)? {
        if Some(device.device_id.as_str()) != keep {
            remove(services, user_id, device.device_id.as_str())?;
        }
    }
    Ok(())
}

/// `DELETE /devices/{deviceId}`: after user-interactive auth with the user's password, removes a
/// known device (`M_NOT_FOUND` for an unknown one, before any auth).
pub async fn delete_one(
    services: &Services,
    user_id: &UserId,
    device_id: &str,
    auth: Option<&Value>,
) -> Result<()> {
    if services.users.get_device(user_id, device_id)?.is_none() {
        return Err(Error::not_found(format!("device {device_id} not found")));
    }
    delete_many(services, user_id, &[device_id], auth).await
}

/// `POST /delete_devices`: after user-interactive auth with the user's password, removes each
/// device listed.
pub async fn delete_many(
    services: &Services,
    user_id: &UserId,
    device_ids: &[&str],
    auth: Option<&Value>,
) -> Result<()> {
    uiaa::check_password(services, auth, user_id).await?;
    for device_id in device_ids {
        remove(services, user_id, device_id)?;
    }
    Ok(())
}
