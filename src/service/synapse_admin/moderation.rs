//! Account moderation as Synapse's admin API does it: logging in as a user (`login-as`) and a
//! user's rate-limit override (`override_ratelimit`), kept by the admin service as the admin
//! room's `users ratelimit` sets it.

use ruma::UserId;
use serde_json::{json, Value};

use super::{users::local_account, Admin};
use crate::{
    error::{Error, Result},
    service::{admin::account_flags::RateOverride, Services},
    util,
};

/// An access token for `user_id` on a new device named after the admin, expiring at
/// `valid_until_ms` when given. Deviation: Synapse makes no device; here the device shows in the
/// user's device list, and logging it out ends the token.
pub fn login_as(
    services: &Services,
    admin: &Admin,
    user_id: &UserId,
    valid_until_ms: Option<u64>,
) -> Result<String> {
    local_account(services, user_id)?;
    if user_id == admin.user_id() {
        return Err(Error::invalid_param(
            "an admin cannot use login-as to log in as themselves",
        ));
    }
    if services.users.is_deactivated(user_id)? {
        return Err(Error::invalid_param(format!("{user_id} is deactivated")));
    }
    if valid_until_ms.is_some_and(|until| until <= util::now_millis()) {
        return Err(Error::invalid_param("valid_until_ms is in the past"));
    }
    let name = format!("login-as by {}", admin.user_id());
    let (_, tokens) = services
        .users
        .create_device(user_id, None, Some(name), false, 0)?;
    if let Some(until) = valid_until_ms {
        services
            .users
            .set_token_expiry(&tokens.access_token, until)?;
    }
    tracing::info!(admin = %admin.user_id(), user = %user_id, "an admin logged in as a user");
    Ok(tokens.access_token)
}

/// The user's override in Synapse's shape: `{}` without one, `messages_per_second` and
/// `burst_count` (both 0 for no limit) with one.
pub fn get_rate_override(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<Value> {
    local_account(services, user_id)?;
    let message = services.config.rate_limits.message;
    Ok(match services.admin.flags.get_rate_override(user_id) {
        None => json!({}),
        Some(RateOverride::Unlimited) => json!({ "messages_per_second": 0, "burst_count": 0 }),
        Some(RateOverride::Scaled {
            rate_factor,
            burst_factor,
        }) => json!({
            "messages_per_second": (rate_factor * message.per_second).round() as u64,
            "burst_count": (burst_factor * f64::from(message.burst)).round() as u64,
        }),
    })
}

/// Sets the override from `messages_per_second` and `burst_count` (non-negative integers,
/// default 0; a rate of 0 is no limit): the message limit's rate and burst become these, and the
/// other per-user limits are scaled alike.
pub fn set_rate_override(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    body: &Value,
) -> Result<Value> {
    local_account(services, user_id)?;
    let number = |field: &str| match body.get(field) {
        None => Ok(0),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| Error::invalid_param(format!("{field} must be a non-negative integer"))),
    };
    let (per_second, burst) = (number("messages_per_second")?, number("burst_count")?);
    let message = services.config.rate_limits.message;
    let rate = if per_second == 0 {
        RateOverride::Unlimited
    } else {
        RateOverride::Scaled {
            rate_factor: per_second as f64 / message.per_second,
            burst_factor: burst.max(1) as f64 / f64::from(message.burst.max(1)),
        }
    };
    services
        .admin
        .flags
        .set_rate_override(user_id, Some(rate))?;
    Ok(json!({ "messages_per_second": per_second, "burst_count": burst }))
}

/// Removes the override.
pub fn delete_rate_override(services: &Services, _admin: &Admin, user_id: &UserId) -> Result<()> {
    local_account(services, user_id)?;
    services.admin.flags.set_rate_override(user_id, None)
}

/// What an admin locks or suspends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountFlag {
    Locked,
    Suspended,
}

/// Whether a local account is locked or suspended (spec v1.18, `GET /admin/lock` and
/// `/admin/suspend`): `400 M_INVALID_PARAM` for a user of another server, `404 M_NOT_FOUND`
/// for an unknown or deactivated account.
pub fn get_flag(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    flag: AccountFlag,
) -> Result<bool> {
    active_account(services, user_id)?;
    Ok(match flag {
        AccountFlag::Locked => services.admin.flags.is_locked(user_id),
        AccountFlag::Suspended => services.admin.flags.is_suspended(user_id),
    })
}

/// Locks, unlocks, suspends or unsuspends a local account (spec v1.18, `PUT /admin/lock` and
/// `/admin/suspend`), with `get_flag`'s errors and `403 M_FORBIDDEN` for a server admin.
pub fn set_flag(
    services: &Services,
    _admin: &Admin,
    user_id: &UserId,
    flag: AccountFlag,
    on: bool,
) -> Result<bool> {
    active_account(services, user_id)?;
    if services.users.is_admin(user_id)? {
        return Err(Error::forbidden(format!(
            "{user_id} is a server admin and cannot be locked or suspended"
        )));
    }
    match flag {
        AccountFlag::Locked => services.admin.flags.set_locked(user_id, on)?,
        AccountFlag::Suspended => services.admin.flags.set_suspended(user_id, on)?,
    };
    Ok(on)
}

/// `local_account`, and `M_NOT_FOUND` for a deactivated one too.
fn active_account(services: &Services, user_id: &UserId) -> Result<()> {
    local_account(services, user_id)?;
    if services.users.is_deactivated(user_id)? {
        return Err(Error::not_found(format!("user {user_id} is deactivated")));
    }
    Ok(())
}
