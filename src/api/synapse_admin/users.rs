//! Synapse admin API handlers for accounts (`docs/admin_api.md`, "Users"): each parses the
//! request and calls one operation of `service::synapse_admin::users` as a checked admin.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        synapse_admin::{
            parse_dir, parse_flag,
            users::{self, UserChanges, UserQuery},
            Admin, PageRequest,
        },
        Services,
    },
};

/// `GET /_synapse/admin/v1/server_version`
///
/// The server's version. Open to anyone, as in Synapse: admin tools read it before logging in.
pub async fn server_version(_services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(json!({ "server_version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /_synapse/admin/v2/users`
///
/// A page of local accounts (`from`, `limit`), searched by `name` (localpart or display name)
/// or `user_id`, with deactivated accounts only when `deactivated=true`, locked ones only when
/// `locked=true`, `admins` to keep only admins or no admins, sorted by `order_by` and `dir`.
/// `guests` is accepted; Plait has no guests.
pub async fn list_users(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let deactivated = parse_flag("deactivated", ctx.query("deactivated"))?;
    // v2: deactivated accounts are left out unless asked for, and then listed with the others.
    let deactivated = (deactivated != Some(true)).then_some(false);
    list(&services, &ctx, deactivated)
}

/// `GET /_synapse/admin/v3/users`
///
/// As v2, but `deactivated=true` lists only deactivated accounts, `false` none, and without it
/// both.
pub async fn list_users_v3(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let deactivated = parse_flag("deactivated", ctx.query("deactivated"))?;
    list(&services, &ctx, deactivated)
}

fn list(services: &Services, ctx: &Ctx, deactivated: Option<bool>) -> HandlerResult {
    let admin = Admin::check(services, ctx.user())?;
    parse_flag("guests", ctx.query("guests"))?;
    let query = UserQuery {
        page: PageRequest::parse(ctx.query("from"), ctx.query("limit"))?,
        name: ctx.query("name"),
        user_id: ctx.query("user_id"),
        deactivated,
        admins: parse_flag("admins", ctx.query("admins"))?,
        locked: parse_flag("locked", ctx.query("locked"))?.unwrap_or(false),
        order_by: ctx.query("order_by"),
        backwards: parse_dir(ctx.query("dir"), false)?,
    };
    users::list(services, &admin, &query)
}

/// `GET /_synapse/admin/v2/users/{userId}`
pub async fn get_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    users::get(&services, &admin, &ctx.user_param(0)?)
}

/// `PUT /_synapse/admin/v2/users/{userId}`
///
/// Creates or modifies a local account (`password`, `logout_devices`, `displayname`,
/// `avatar_url`, `admin`, `deactivated`, `locked`; `threepids`, `external_ids` and `user_type`
/// are ignored). Deviation: answers 200 when it creates the account too, where Synapse answers
/// 201.
pub async fn put_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let changes: UserChanges = ctx.body_as()?;
    let (details, _created) = users::put(&services, &admin, &ctx.user_param(0)?, changes).await?;
    Ok(details)
}

#[derive(Deserialize)]
struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`
///
/// Deactivates a local account; `erase` also removes its display name and avatar.
pub async fn deactivate(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let body: DeactivateBody = ctx.body_as()?;
    users::deactivate(&services, &admin, &ctx.user_param(0)?, body.erase).await?;
    Ok(json!({ "id_server_unbind_result": "success" }))
}

#[derive(Deserialize)]
struct ResetPasswordBody {
    new_password: Option<String>,
    logout_devices: Option<bool>,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`
///
/// Sets `new_password`; `logout_devices` (default true) logs every device out.
pub async fn reset_password(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let body: ResetPasswordBody = ctx.body_as()?;
    let logout = body.logout_devices.unwrap_or(true);
    let new_password = body
        .new_password
        .ok_or_else(|| Error::missing_param("new_password is required"))?;
    let user_id = ctx.user_param(0)?;
    users::reset_password(&services, &admin, &user_id, &new_password, logout).await?;
    Ok(json!({}))
}

/// `GET /_synapse/admin/v1/whois/{userId}`
///
/// The account's devices with their last address and time (no user agents: Plait keeps none).
pub async fn whois(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    users::whois(&services, &admin, &ctx.user_param(0)?)
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`
pub async fn list_devices(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    users::devices(&services, &admin, &ctx.user_param(0)?)
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`
pub async fn joined_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    users::joined_rooms(&services, &admin, &ctx.user_param(0)?)
}
