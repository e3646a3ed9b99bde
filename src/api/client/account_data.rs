//! Account data (global and per room) and filters.

use std::sync::Arc;

use serde_json::json;

use super::check_owner;
use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{account_data, notify::Topic, Services},
};

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    if ctx.param(1) == crate::service::push::rules::ACCOUNT_DATA_TYPE {
        let ruleset = services.push.get_rules(&services, ctx.user())?;
        return crate::service::push::rules::to_account_data(&ruleset);
    }
    services
        .account_data
        .get(ctx.user(), None, ctx.param(1))?
        .ok_or_else(|| Error::not_found(format!("no account data of type {}", ctx.param(1))))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
///
/// `m.ignored_user_list` is checked first (see [`account_data::validate_ignored_user_list`]);
/// the next `/sync` applies a changed list.
pub async fn set_global_account_data(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    if ctx.param(1) == "m.fully_read" || ctx.param(1) == "m.push_rules" {
        return Err(Error::bad_json(format!(
            "{} cannot be set through this endpoint",
            ctx.param(1)
        )));
    }
    if ctx.param(1) == account_data::IGNORED_USER_LIST {
        account_data::validate_ignored_user_list(ctx.user(), &ctx.body)?;
    }
    services
        .account_data
        .set(&services.globals, ctx.user(), None, ctx.param(1), &ctx.body)?;
    services.notifier.wake(Topic::User(ctx.user().to_string()));
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    let room_id = ctx.room_param(1)?;
    services
        .account_data
        .get(ctx.user(), Some(&room_id), ctx.param(2))?
        .ok_or_else(|| Error::not_found(format!("no account data of type {}", ctx.param(2))))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    let room_id = ctx.room_param(1)?;
    if ctx.param(2) == "m.fully_read" || ctx.param(2) == "m.push_rules" {
        return Err(Error::bad_json(format!(
            "{} cannot be set through this endpoint",
            ctx.param(2)
        )));
    }
    services.account_data.set(
        &services.globals,
        ctx.user(),
        Some(&room_id),
        ctx.param(2),
        &ctx.body,
    )?;
    services.notifier.wake(Topic::User(ctx.user().to_string()));
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    for field in ["event_fields", "account_data", "presence", "room"] {
        if let Some(value) = ctx.body.get(field) {
            let ok = if field == "event_fields" {
                value.is_array()
            } else {
                value.is_object()
            };
            if !ok {
                return Err(Error::bad_json(format!(
                    "filter field {field} has the wrong type"
                )));
            }
        }
    }
    // Every field must have its spec type (room IDs in `rooms`, user IDs in `senders`, strings
    // in `types` and so on); ruma's definition checks them all.
    serde_json::from_value::<ruma::api::client::filter::FilterDefinition>(ctx.body.clone())
        .map_err(|error| Error::bad_json(format!("invalid filter: {error}")))?;
    Ok(json!({ "filter_id": services.users.create_filter(ctx.user(), &ctx.body)? }))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    services
        .users
        .get_filter(ctx.user(), ctx.param(1))?
        .ok_or_else(|| Error::not_found(format!("filter {} not found", ctx.param(1))))
}
