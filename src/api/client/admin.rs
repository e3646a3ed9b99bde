//! The client-server API's account moderation for server admins (spec v1.18, "Account
//! moderation"): locking and suspending local accounts, through
//! `service::synapse_admin::moderation`.

use std::sync::Arc;

use ruma::api::client::admin::{is_user_locked, is_user_suspended, lock_user, suspend_user};

use crate::{
    api::Ctx,
    error::Result,
    service::{
        synapse_admin::{
            moderation::{self, AccountFlag},
            Admin,
        },
        Services,
    },
};

/// `GET /_matrix/client/v1/admin/lock/{userId}`
///
/// Server admins only (`403 M_FORBIDDEN`); see `moderation::get_flag` for the other errors.
pub async fn is_user_locked(
    services: Arc<Services>,
    ctx: Ctx,
    request: is_user_locked::v1::Request,
) -> Result<is_user_locked::v1::Response> {
    let admin = Admin::check(&services, ctx.user())?;
    let locked = moderation::get_flag(&services, &admin, &request.user_id, AccountFlag::Locked)?;
    Ok(is_user_locked::v1::Response::new(locked))
}

/// `PUT /_matrix/client/v1/admin/lock/{userId}`
///
/// Server admins only; another server admin cannot be locked (`403 M_FORBIDDEN`).
pub async fn lock_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: lock_user::v1::Request,
) -> Result<lock_user::v1::Response> {
    let admin = Admin::check(&services, ctx.user())?;
    let (user_id, on) = (&request.user_id, request.locked);
    let locked = moderation::set_flag(&services, &admin, user_id, AccountFlag::Locked, on)?;
    Ok(lock_user::v1::Response::new(locked))
}

/// `GET /_matrix/client/v1/admin/suspend/{userId}`
///
/// Server admins only (`403 M_FORBIDDEN`); see `moderation::get_flag` for the other errors.
pub async fn is_user_suspended(
    services: Arc<Services>,
    ctx: Ctx,
    request: is_user_suspended::v1::Request,
) -> Result<is_user_suspended::v1::Response> {
    let admin = Admin::check(&services, ctx.user())?;
    let flag = AccountFlag::Suspended;
    let suspended = moderation::get_flag(&services, &admin, &request.user_id, flag)?;
    Ok(is_user_suspended::v1::Response::new(suspended))
}

/// `PUT /_matrix/client/v1/admin/suspend/{userId}`
///
/// Server admins only; another server admin cannot be suspended (`403 M_FORBIDDEN`).
pub async fn suspend_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: suspend_user::v1::Request,
) -> Result<suspend_user::v1::Response> {
    let admin = Admin::check(&services, ctx.user())?;
    let (user_id, on) = (&request.user_id, request.suspended);
    let suspended = moderation::set_flag(&services, &admin, user_id, AccountFlag::Suspended, on)?;
    Ok(suspend_user::v1::Response::new(suspended))
}
