//! Synapse admin API handlers for moderating accounts (`docs/admin_api.md`, "Users"):
//! login-as and rate-limit overrides, each one operation of `service::synapse_admin::moderation`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    service::{
        synapse_admin::{moderation, Admin},
        Services,
    },
};

#[derive(Deserialize)]
struct LoginAsBody {
    valid_until_ms: Option<u64>,
}

/// `POST /_synapse/admin/v1/users/{userId}/login`
///
/// An access token for the user (not the admin themselves), until `valid_until_ms` if given.
/// Deviation: the token has a device of its own, which the user can see and log out.
pub async fn login_as(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let body: LoginAsBody = ctx.body_as()?;
    let user_id = ctx.user_param(0)?;
    let token = moderation::login_as(&services, &admin, &user_id, body.valid_until_ms)?;
    Ok(json!({ "access_token": token }))
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`
///
/// `{}` without an override, else its `messages_per_second` and `burst_count`.
pub async fn get_override_ratelimit(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::get_rate_override(&services, &admin, &ctx.user_param(0)?)
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`
///
/// Sets the override (`messages_per_second` 0 is no limit); answers it.
pub async fn set_override_ratelimit(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::set_rate_override(&services, &admin, &ctx.user_param(0)?, &ctx.body)
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`
pub async fn delete_override_ratelimit(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::delete_rate_override(&services, &admin, &ctx.user_param(0)?)?;
    Ok(json!({}))
}
