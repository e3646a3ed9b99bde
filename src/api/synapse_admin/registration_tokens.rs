//! Synapse admin API handlers for registration tokens (`docs/admin_api.md`, "Registration
//! tokens"): each checks that the caller is an admin and calls one operation of
//! `service::registration_tokens`.

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        registration_tokens::{NewToken, TokenLimits},
        synapse_admin::{parse_flag, Admin},
        Services,
    },
};

/// `GET /_synapse/admin/v1/registration_tokens`
///
/// Every token; with `valid=true` only the valid ones, with `valid=false` only the others.
pub async fn list_tokens(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    let valid = parse_flag("valid", ctx.query("valid"))?;
    let tokens = services.registration_tokens.iter_tokens(valid)?;
    Ok(json!({ "registration_tokens": tokens }))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`
pub async fn get_token(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    let token = services.registration_tokens.get_existing(ctx.param(0))?;
    to_json(token)
}

/// `POST /_synapse/admin/v1/registration_tokens/new`
///
/// Creates a token (`token`, or a random one of `length` characters) with `uses_allowed` and
/// `expiry_time`.
pub async fn create_token(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    let token = services
        .registration_tokens
        .create(NewToken::from_body(&ctx.body)?)?;
    to_json(token)
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`
///
/// Changes `uses_allowed` and `expiry_time` (a field left out stays, `null` removes the limit).
pub async fn update_token(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    let limits = TokenLimits::from_body(&ctx.body)?;
    let token = services.registration_tokens.update(ctx.param(0), limits)?;
    to_json(token)
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`
pub async fn delete_token(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Admin::check(&services, ctx.user())?;
    services.registration_tokens.delete(ctx.param(0))?;
    Ok(json!({}))
}

fn to_json(token: impl serde::Serialize) -> HandlerResult {
    serde_json::to_value(token).map_err(Error::internal)
}
