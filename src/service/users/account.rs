//! Account operations that span services: registration, password login, password change and
//! deactivation, each with its user-interactive auth, and the admins' password reset (the admin
//! room and the Synapse admin API share it; their deactivation is `users/deactivation.rs`).

use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{
        device_lists,
        rate_limits::Limit,
        uiaa,
        users::{
            self,
            devices::{self, NewDevice},
            Tokens,
        },
        Services,
    },
    util,
};

/// Longest password accepted at registration, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 512;

/// A registration request.
pub struct Registration {
    /// The wanted localpart; a random one when absent.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The first device; `None` registers without logging in (`inhibit_login`).
    pub device: Option<NewDevice>,
    /// The submitted user-interactive auth stage.
    pub auth: Option<Value>,
    /// The client's address, for the registration rate limit.
    pub client_ip: Option<std::net::IpAddr>,
}

/// A logged-in device: the user, the device and its tokens.
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub tokens: Tokens,
}

/// The user ID for a localpart of this server, unless it is reserved.
pub fn user_for_localpart(services: &Services, localpart: &str) -> Result<OwnedUserId> {
    let user_id = users::local_user_id(services.globals.server_name(), localpart)?;
    services
        .server_notices
        .check_registration(&services.config, &user_id)?;
    Ok(user_id)
}

/// `M_USER_IN_USE` when the account exists.
pub fn check_available(services: &Services, user_id: &UserId) -> Result<()> {
    if services.users.exists(user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    Ok(())
}

/// Registers an account after user-interactive auth (the flows the registration mode allows),
/// and logs its first device in unless `device` is `None`. Returns the user and the session.
pub async fn register(
    services: &Services,
    registration: Registration,
) -> Result<(OwnedUserId, Option<Session>)> {
    uiaa::registration_flows(services)?;
    // Only a registration that completes spends a token (a flow takes several requests), but a
    // client out of tokens is told so at once.
    services
        .rate_limits
        .check_address(Limit::Registration, registration.client_ip)?;
    let localpart = registration
        .username
        .unwrap_or_else(|| util::random_string(12));
    let user_id = user_for_localpart(services, &localpart.to_lowercase())?;
    check_available(services, &user_id)?;
    services
        .appservices
        .check_user_not_exclusive(&user_id, None)?;
    let password = registration.password;
    if password
        .as_ref()
        .is_some_and(|password| password.len() > MAX_PASSWORD_BYTES)
    {
        return Err(Error::bad_json("password too long"));
    }
    uiaa::check_registration(services, registration.auth.as_ref()).await?;
    // Another registration may have taken the name while this client went through the flow.
    check_available(services, &user_id)?;
    services
        .rate_limits
        .take_address(Limit::Registration, registration.client_ip)?;
    let password_hash = match password {
        Some(password) => services.users.passwords.hash(password).await?,
        None => String::new(),
    };
    uiaa::spend_registration_token(services, registration.auth.as_ref())?;
    services
        .users
        .create_hashed(&user_id, &password_hash, None, false)?;
    services.admin.on_registered(&services.users, &user_id)?;
    tracing::info!(user = %user_id, "registered");
    let Some(device) = registration.device else {
        return Ok((user_id, None));
    };
    let (device_id, tokens) = services.users.create_device(
        &user_id,
        device.device_id,
        device.display_name,
        device.refreshable,
        services.config.refreshable_token_lifetime_ms,
    )?;
    // Starts the user's device list chain, so that every later update names a prev_id.
    device_lists::announce_device(services, &user_id, device_id.as_str())?;
    let session = Session {
        user_id: user_id.clone(),
        device_id,
        tokens,
    };
    Ok((user_id, Some(session)))
}

/// Logs a device in with a password, `name` being a full user ID or a localpart (see
/// [`verify_password`]).
pub async fn log_in_with_password(
    services: &Services,
    name: &str,
    password: &str,
    device: NewDevice,
) -> Result<Session> {
    let user_id = verify_password(services, name, password).await?;
    let (device_id, tokens) = devices::log_in(services, &user_id, device)?;
    Ok(Session {
        user_id,
        device_id,
        tokens,
    })
}

/// The local account `name` (a full user ID or a localpart) when `password` is its password.
/// `M_FORBIDDEN` for a wrong password or an unknown account, which take the same time (a hash is
/// checked either way); `M_USER_DEACTIVATED` only with the right password of a deactivated one.
pub async fn verify_password(
    services: &Services,
    name: &str,
    password: &str,
) -> Result<OwnedUserId> {
    let user_id = if name.starts_with('@') {
        OwnedUserId::try_from(name.to_lowercase())
            .map_err(|_| Error::invalid_param("invalid user ID"))?
    } else {
        user_for_localpart(services, &name.to_lowercase())
            .map_err(|_| Error::forbidden("invalid username or password"))?
    };
    // Guessing one account's password is slow from however many addresses: its failed logins
    // are counted before the password is checked, and spent only when it is wrong.
    services
        .rate_limits
        .check_failures(Limit::LoginFailedAttempts, &user_id)?;
    // A user of another server has no password here: the check runs against no hash.
    let matches = services.users.password_matches(&user_id, password).await?;
    if !matches || user_id.server_name() != services.globals.server_name() {
        services
            .rate_limits
            .record_failure(Limit::LoginFailedAttempts, &user_id);
        return Err(Error::forbidden("invalid username or password"));
    }
    if services.users.is_deactivated(&user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserDeactivated,
            "this account was deactivated",
        ));
    }
    Ok(user_id)
}

/// Changes the password after user-interactive auth with the old one; with `logout_devices`,
/// removes every device but `device_id`.
pub async fn change_password(
    services: &Services,
    (user_id, device_id): (&UserId, &str),
    new_password: &str,
    logout_devices: bool,
    auth: Option<&Value>,
) -> Result<()> {
    uiaa::check_password(services, auth, user_id).await?;
    services.users.set_password(user_id, new_password).await?;
    if logout_devices {
        devices::remove_all(services, user_id, Some(device_id))?;
    }
    Ok(())
}

/// Deactivates an account that has left its rooms: announces the deletion of each device,
/// removes the pushers, the password, the devices and their tokens.
pub fn deactivate(services: &Services, user_id: &UserId) -> Result<()> {
    for device in services.users.iter_devices(user_id)? {
        device_lists::delete_device(services, user_id, device.device_id.as_str())?;
    }
    services.push.pushers.delete_user_pushers(user_id)?;
    services.users.deactivate(user_id)
}

/// Sets a password an admin chose, without the old one; with `logout_devices`, every device is
/// logged out.
pub async fn reset_password(
    services: &Services,
    user_id: &UserId,
    new_password: &str,
    logout_devices: bool,
) -> Result<()> {
    services.users.set_password(user_id, new_password).await?;
    if logout_devices {
        devices::remove_all(services, user_id, None)?;
    }
    Ok(())
}
