//! The accounts of appservices: their senders (made once when a registration is loaded), users
//! registered with `m.login.application_service` (no user-interactive auth, no rate limit,
//! only inside the namespace), their logins, and the ping.

use ruma::{api::error::ErrorKind, OwnedUserId, UserId};
use serde_json::json;

use super::{sender, Appservice};
use crate::{
    error::{Error, Result},
    service::{
        users::{
            self,
            account::Session,
            devices::{self, NewDevice},
        },
        Services,
    },
};

/// Creates the sender account of every appservice that has none yet.
pub fn create_senders(services: &Services) -> Result<()> {
    for (appservice, _) in &services.appservices.registry().appservices {
        create_sender(services, appservice)?;
    }
    Ok(())
}

/// Creates an appservice's sender account unless it exists.
pub fn create_sender(services: &Services, appservice: &Appservice) -> Result<()> {
    if !services.users.exists(&appservice.sender)? {
        services
            .users
            .create_hashed(&appservice.sender, "", None, false)?;
        tracing::info!(user = %appservice.sender, appservice = appservice.id(), "appservice sender created");
    }
    Ok(())
}

/// Registers `username` (a localpart or a full ID of this server) for an appservice: it must
/// be in the appservice's user namespace (`M_EXCLUSIVE` otherwise, as the spec asks) and free
/// (`M_USER_IN_USE`). Logs a device in unless `device` is `None`.
pub fn register(
    services: &Services,
    appservice: &Appservice,
    username: &str,
    device: Option<NewDevice>,
) -> Result<(OwnedUserId, Option<Session>)> {
    let localpart = match username.strip_prefix('@') {
        Some(_) => OwnedUserId::try_from(username)
            .map_err(|_| Error::invalid_param(format!("invalid user ID {username}")))?
            .localpart()
            .to_owned(),
        None => username.to_owned(),
    };
    let user_id = users::local_user_id(services.globals.server_name(), &localpart.to_lowercase())?;
    if !appservice.is_user_match(&user_id) {
        return Err(Error::matrix(
            ErrorKind::Exclusive,
            format!(
                "{user_id} is not in the namespace of appservice {}",
                appservice.id()
            ),
        ));
    }
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    services.users.create_hashed(&user_id, "", None, false)?;
    tracing::info!(user = %user_id, appservice = appservice.id(), "registered by an appservice");
    let Some(device) = device else {
        return Ok((user_id, None));
    };
    let (device_id, tokens) = devices::log_in(services, &user_id, device)?;
    Ok((
        user_id.clone(),
        Some(Session {
            user_id,
            device_id,
            tokens,
        }),
    ))
}

/// Logs a device of an appservice user in (`m.login.application_service`): the user must be in
/// the namespace and exist.
pub fn log_in(
    services: &Services,
    appservice: &Appservice,
    user_id: &UserId,
    device: NewDevice,
) -> Result<Session> {
    if !appservice.is_user_match(user_id) || user_id.server_name() != services.globals.server_name()
    {
        return Err(Error::forbidden(format!(
            "{user_id} is not in the namespace of appservice {}",
            appservice.id()
        )));
    }
    if !services.users.exists(user_id)? {
        return Err(Error::forbidden(format!("{user_id} does not exist")));
    }
    let (device_id, tokens) = devices::log_in(services, user_id, device)?;
    Ok(Session {
        user_id: user_id.to_owned(),
        device_id,
        tokens,
    })
}

/// Pings appservice `id` on behalf of `caller` (which must be that appservice): calls its
/// `POST /_matrix/app/v1/ping` and answers how long it took, in milliseconds.
pub async fn ping(
    services: &Services,
    caller: &Appservice,
    id: &str,
    transaction_id: Option<String>,
) -> Result<u64> {
    if caller.id() != id {
        return Err(Error::forbidden(format!(
            "the access token does not belong to appservice {id}"
        )));
    }
    let body = match transaction_id {
        Some(transaction_id) => json!({ "transaction_id": transaction_id }),
        None => json!({}),
    };
    let started = std::time::Instant::now();
    sender::request(
        services,
        caller,
        http::Method::POST,
        "/_matrix/app/v1/ping",
        Some(&body),
    )
    .await?;
    Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// MSC4190: an appservice creates a device of one of its users with
/// `PUT /devices/{deviceId}`, without logging it in (the device's access token is random and
/// never handed out), or renames it when it exists. Answers whether it was created.
pub fn put_device(
    services: &Services,
    user_id: &UserId,
    device_id: &str,
    display_name: Option<String>,
) -> Result<bool> {
    if services.users.get_device(user_id, device_id)?.is_some() {
        devices::rename(services, user_id, device_id, display_name)?;
        return Ok(false);
    }
    let device = NewDevice {
        device_id: Some(device_id.into()),
        display_name,
        refreshable: false,
    };
    devices::log_in(services, user_id, device)?;
    Ok(true)
}

/// MSC4190: an appservice deletes devices of one of its users without user-interactive auth.
pub fn delete_devices(services: &Services, user_id: &UserId, device_ids: &[&str]) -> Result<()> {
    for device_id in device_ids {
        if services.users.get_device(user_id, device_id)?.is_none() {
            return Err(Error::not_found(format!("device {device_id} not found")));
        }
    }
    for device_id in device_ids {
        devices::remove(services, user_id, device_id)?;
    }
    Ok(())
}
