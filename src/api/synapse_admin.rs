//! The parts of Synapse's admin API that Plait serves (`docs/admin_api.md`): shared-secret
//! registration and server notices here, accounts in `synapse_admin/users.rs`, rooms in
//! `synapse_admin/rooms.rs`, room deletion, purges and blocks in `synapse_admin/moderation.rs`,
//! registration tokens in
//! `synapse_admin/registration_tokens.rs` and event reports in `synapse_admin/reports.rs`. Synapse's admin API has no ruma types: every handler is untyped.

pub mod moderation;
pub mod registration_tokens;
pub mod reports;
pub mod room_moderation;
pub mod rooms;
pub mod users;

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    service::{
        server_notices,
        shared_secret::{self, SharedSecretRequest},
        Services,
    },
};

/// `GET /_synapse/admin/v1/register`
///
/// A single-use nonce for shared-secret registration, valid for a minute; `400 M_UNKNOWN` while
/// `registration_shared_secret` is unset.
/// Untyped: Synapse's admin API has no ruma types.
pub async fn get_register_nonce(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    let nonce = services.shared_secret.new_nonce(&services.config)?;
    Ok(json!({ "nonce": nonce }))
}

/// `POST /_synapse/admin/v1/register`
///
/// Creates an account (a server admin when `admin` is true) from a request signed with the
/// shared secret, and logs it in; see `service::shared_secret::register` for the checks.
/// Untyped: Synapse's admin API has no ruma types.
pub async fn shared_secret_register(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request: SharedSecretRequest = ctx.body_as()?;
    let registered = shared_secret::register(&services, request).await?;
    Ok(json!({
        "user_id": registered.user_id,
        "access_token": registered.access_token,
        "device_id": registered.device_id,
        "home_server": services.globals.server_name(),
    }))
}

/// `POST /_synapse/admin/v1/send_server_notice`
///
/// Server admins only. Sends `content` to `user_id`'s server notices room.
/// Untyped: Synapse's admin API has no ruma types.
pub async fn send_server_notice(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let event_id = server_notices::send(&services, ctx.user(), &ctx.body, None).await?;
    Ok(json!({ "event_id": event_id }))
}

/// `PUT /_synapse/admin/v1/send_server_notice/{txnId}`
///
/// As the `POST` form; a repeat of the admin device's transaction returns the first event's ID.
/// Untyped: Synapse's admin API has no ruma types.
pub async fn send_server_notice_txn(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let transaction = Some((ctx.device(), ctx.param(0)));
    let event_id = server_notices::send(&services, ctx.user(), &ctx.body, transaction).await?;
    Ok(json!({ "event_id": event_id }))
}
