//! Accounts as the Synapse admin API shows and changes them: the user list and its search, an
//! account's details, creating and modifying one, deactivation, password resets, sessions,
//! devices and joined rooms. The account rules themselves are `service::users`'.

use ruma::UserId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, PageRequest};
use crate::{
    error::{Error, Result},
    service::{
        users::account::{self, MAX_PASSWORD_BYTES},
        users::deactivation,
        Services,
    },
};

/// The filters of the user list, as sent.
pub struct UserQuery<'a> {
    pub page: PageRequest,
    /// Matches the localpart or the display name (case-insensitive).
    pub name: Option<&'a str>,
    /// Matches anywhere in the user ID; ignored when `name` is given, as Synapse does.
    pub user_id: Option<&'a str>,
    /// `Some(true)`: deactivated accounts only, `Some(false)`: none, `None`: both (v2 lists
    /// them only with `deactivated=true`, v3 filters as this field says).
    pub deactivated: Option<bool>,
    /// `Some(true)`: admins only, `Some(false)`: no admins.
    pub admins: Option<bool>,
    /// Whether locked accounts are listed (Synapse's default is no).
    pub locked: bool,
    /// The field to sort by (`name` by default), then by name.
    pub order_by: Option<&'a str>,
    /// Reverses the order (`dir=b`).
    pub backwards: bool,
}

/// The fields the user list may be sorted by (Synapse's `order_by`).
const ORDER_FIELDS: [&str; 10] = [
    "name",
    "is_guest",
    "admin",
    "user_type",
    "deactivated",
    "shadow_banned",
    "displayname",
    "avatar_url",
    "creation_ts",
    "last_seen_ts",
];

/// What `PUT /v2/users/{userId}` may set; a field left out is left as it is. Other fields
/// Synapse knows (`threepids`, `external_ids`, `user_type`) are accepted and ignored: Plait keeps
/// no third-party IDs, SSO mappings or user types.
#[derive(Debug, Default, Deserialize)]
pub struct UserChanges {
    pub password: Option<String>,
    /// Whether a new password logs out every device (default yes).
    pub logout_devices: Option<bool>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
}

/// One page of local accounts in the order asked (user ID order by default), with the total
/// that match and the offset of the next page.
pub fn list(services: &Services, _admin: &Admin, query: &UserQuery<'_>) -> Result<Value> {
    let order_by = query.order_by.unwrap_or("name");
    if !ORDER_FIELDS.contains(&order_by) {
        return Err(Error::invalid_param(format!(
            "unknown order_by {order_by}: one of {}",
            ORDER_FIELDS.join(", ")
        )));
    }
    let name = query.name.map(str::to_lowercase);
    let mut users = Vec::new();
    for user_id in services.users.iter_user_ids() {
        let user_id = user_id?;
        if let Some(wanted) = query.deactivated {
            if services.users.is_deactivated(&user_id)? != wanted {
                continue;
            }
        }
        if !query.locked && services.admin.flags.is_locked(&user_id) {
            continue;
        }
        if let Some(admins) = query.admins {
            if services.users.is_admin(&user_id)? != admins {
                continue;
            }
        }
        let info = summary(services, &user_id)?;
        let matches = match (&name, query.user_id) {
            (Some(name), _) => {
                let display = info["displayname"].as_str().unwrap_or("").to_lowercase();
                user_id.localpart().contains(name.as_str()) || display.contains(name.as_str())
            }
            (None, Some(part)) => user_id.as_str().contains(part),
            (None, None) => true,
        };
        if matches {
            users.push(info);
        }
    }
    sort_users(&mut users, order_by, query.backwards);
    let total = users.len();
    let (page, next) = query.page.take(users);
    let mut answer = json!({ "users": page, "total": total });
    if let Some(next) = next {
        answer["next_token"] = json!(next.to_string());
    }
    Ok(answer)
}

/// Sorts list entries by `field` then by name (nulls first, as in Synapse's database), reversed
/// when `backwards`.
fn sort_users(users: &mut [Value], field: &str, backwards: bool) {
    let rank = |value: &Value| match value {
        Value::Null => (0, 0, String::new()),
        Value::Bool(flag) => (1, i64::from(*flag), String::new()),
        Value::Number(number) => (1, number.as_i64().unwrap_or(0), String::new()),
        other => (1, 0, other.as_str().unwrap_or_default().to_owned()),
    };
    users.sort_by(|a, b| {
        rank(&a[field])
            .cmp(&rank(&b[field]))
            .then_with(|| a["name"].as_str().cmp(&b["name"].as_str()))
    });
    if backwards {
        users.reverse();
    }
}

/// An account's details; `M_NOT_FOUND` for an unknown one, `M_INVALID_PARAM` for a user of
/// another server.
pub fn get(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<Value> {
    local_account(services, user_id)?;
    details(services, user_id)
}

/// Creates the account, or changes the one that exists, and returns its details and whether it
/// was created. A new password logs out every device unless `logout_devices` is false;
/// `deactivated: true` leaves every room first; reactivating needs a new password; an admin may
/// not take their own admin flag away.
pub async fn put(
    services: &Services,
    admin: &Admin,
    user_id: &UserId,
    changes: UserChanges,
) -> Result<(Value, bool)> {
    check_local(services, user_id)?;
    if let Some(password) = &changes.password {
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid_param("invalid password"));
        }
    }
    if changes.admin == Some(false) && user_id == admin.user_id() {
        return Err(Error::invalid_param("an admin may not demote themselves"));
    }
    let created = !services.users.exists(user_id)?;
    if created {
        create(services, user_id, &changes).await?;
    } else {
        modify(services, user_id, &changes).await?;
    }
    if let Some(avatar_url) = changes.avatar_url {
        // An empty URL removes the avatar, as in Synapse.
        let value = (!avatar_url.is_empty()).then(|| Value::from(avatar_url));
        services
            .users
            .set_profile_field(user_id, "avatar_url", value)?;
    }
    Ok((details(services, user_id)?, created))
}

/// A new account from a `PUT`: the name must be one registration would accept.
async fn create(services: &Services, user_id: &UserId, changes: &UserChanges) -> Result<()> {
    account::user_for_localpart(services, user_id.localpart())?;
    let hash = match &changes.password {
        Some(password) => services.users.passwords.hash(password.clone()).await?,
        None => String::new(),
    };
    services
        .users
        .create_hashed(user_id, &hash, changes.displayname.as_deref(), false)?;
    if changes.admin == Some(true) {
        // As every new admin: invited to the admin room.
        crate::service::admin::room::make_admin(services, user_id).await?;
    }
    if changes.deactivated == Some(true) {
        account::deactivate(services, user_id)?;
    }
    if changes.locked == Some(true) {
        services.admin.flags.set_locked(user_id, true)?;
    }
    tracing::info!(user = %user_id, "account created through the admin API");
    Ok(())
}

/// The changes of a `PUT` to an existing account, in the order Synapse applies them.
async fn modify(services: &Services, user_id: &UserId, changes: &UserChanges) -> Result<()> {
    let deactivated = services.users.is_deactivated(user_id)?;
    if changes.deactivated == Some(false) && deactivated && changes.password.is_none() {
        return Err(Error::missing_param(
            "a password is needed to reactivate an account",
        ));
    }
    if let Some(password) = &changes.password {
        let logout_devices = changes.logout_devices.unwrap_or(true);
        account::reset_password(services, user_id, password, logout_devices).await?;
    }
    if let Some(display_name) = &changes.displayname {
        // An empty name removes it, as in Synapse.
        let value = (!display_name.is_empty()).then(|| Value::from(display_name.as_str()));
        services
            .users
            .set_profile_field(user_id, "displayname", value)?;
    }
    // Through the admin room's operations, so that admins are invited to it and kicked from it.
    match changes.admin {
        Some(true) if !services.users.is_admin(user_id)? => {
            crate::service::admin::room::make_admin(services, user_id).await?;
        }
        Some(false) if services.users.is_admin(user_id)? => {
            crate::service::admin::room::remove_admin(services, user_id).await?;
        }
        _ => {}
    }
    match changes.deactivated {
        Some(true) if !deactivated => deactivate_account(services, user_id, false).await?,
        Some(false) if deactivated => services.users.reactivate(user_id)?,
        _ => {}
    }
    if let Some(locked) = changes.locked {
        services.admin.flags.set_locked(user_id, locked)?;
    }
    Ok(())
}

/// Deactivates a local account: it leaves every room, loses its devices and pushers, and can
/// no longer log in; with `erase`, its display name and avatar are removed too.
pub async fn deactivate(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    erase: bool,
) -> Result<()> {
    local_account(services, user_id)?;
    deactivate_account(services, user_id, erase).await
}

async fn deactivate_account(services: &Services, user_id: &UserId, erase: bool) -> Result<()> {
    deactivation::leave_and_deactivate(services, user_id, erase).await?;
    tracing::info!(user = %user_id, erase, "account deactivated through the admin API");
    Ok(())
}

/// Sets a new password; with `logout_devices` (default yes) every device is logged out.
pub async fn reset_password(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    new_password: &str,
    logout_devices: bool,
) -> Result<()> {
    local_account(services, user_id)?;
    if new_password.is_empty() || new_password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param("invalid password"));
    }
    account::reset_password(services, user_id, new_password, logout_devices).await
}

/// The account's sessions: per device, its last connection (address and time).
pub fn whois(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<Value> {
    local_account(services, user_id)?;
    let mut sessions = serde_json::Map::new();
    for device in services.users.iter_devices(user_id)? {
        let connection = json!({
            "ip": device.last_seen_ip,
            "last_seen": device.last_seen_ts,
            "user_agent": null,
        });
        sessions.insert(
            device.device_id.to_string(),
            json!({ "sessions": [{ "connections": [connection] }] }),
        );
    }
    Ok(json!({ "user_id": user_id, "devices": sessions }))
}

/// The account's devices with their last use, and how many there are.
pub fn devices(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<Value> {
    local_account(services, user_id)?;
    let devices: Vec<Value> = services
        .users
        .iter_devices(user_id)?
        .into_iter()
        .map(|device| {
            json!({
                "device_id": device.device_id,
                "display_name": device.display_name,
                "last_seen_ip": device.last_seen_ip,
                "last_seen_ts": device.last_seen_ts,
                "last_seen_user_agent": null,
                "user_id": user_id,
            })
        })
        .collect();
    Ok(json!({ "total": devices.len(), "devices": devices }))
}

/// The rooms a user (of this server or, as far as this server knows, another) is joined to.
pub fn joined_rooms(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<Value> {
    if user_id.server_name() == services.globals.server_name() {
        local_account(services, user_id)?;
    }
    let rooms = services.rooms.members.iter_joined_rooms(user_id)?;
    Ok(json!({ "total": rooms.len(), "joined_rooms": rooms }))
}

/// `M_INVALID_PARAM` for a user of another server.
fn check_local(services: &Services, user_id: &UserId) -> Result<()> {
    if user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "{user_id} is not a user of this server"
        )));
    }
    Ok(())
}

/// `M_INVALID_PARAM` for a user of another server, `M_NOT_FOUND` for an unknown account.
pub(super) fn local_account(services: &Services, user_id: &UserId) -> Result<()> {
    check_local(services, user_id)?;
    if !services.users.exists(user_id)? {
        return Err(Error::not_found(format!("user {user_id} not found")));
    }
    Ok(())
}

/// The fields of an account in the user list.
fn summary(services: &Services, user_id: &UserId) -> Result<Value> {
    let profile = services.users.get_profile(user_id)?.unwrap_or_default();
    let last_seen = services
        .users
        .iter_devices(user_id)?
        .iter()
        .filter_map(|device| device.last_seen_ts)
        .max();
    Ok(json!({
        "name": user_id,
        "displayname": profile.get("displayname"),
        "avatar_url": profile.get("avatar_url"),
        "admin": services.users.is_admin(user_id)?,
        "deactivated": services.users.is_deactivated(user_id)?,
        "is_guest": false,
        "user_type": null,
        "erased": false,
        "shadow_banned": false,
        "locked": services.admin.flags.is_locked(user_id),
        "creation_ts": null,
        "last_seen_ts": last_seen,
    }))
}

/// The fields of one account's details: the summary and the lists Synapse adds.
fn details(services: &Services, user_id: &UserId) -> Result<Value> {
    let mut info = summary(services, user_id)?;
    info["threepids"] = json!([]);
    info["external_ids"] = json!([]);
    info["appservice_id"] = Value::Null;
    info["suspended"] = json!(services.admin.flags.is_suspended(user_id));
    Ok(info)
}
