//! Account data (global and per room) and filters.

use std::sync::Arc;

use ruma::{
    api::client::config::{get_global_account_data, set_global_account_data},
    serde::Raw,
};
use serde_json::{json, Value};

use super::check_owner;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{account_data, notify::Topic, privacy, Services},
};

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response> {
    ctx.require_self(&request.user_id, "read the account data of")?;
    let event_type = request.event_type.to_string();
    let content = if event_type == crate::service::push::rules::ACCOUNT_DATA_TYPE {
        let ruleset = services.push.get_rules(&services, ctx.user())?;
        crate::service::push::rules::to_account_data(&ruleset)?
    } else {
        services
            .account_data
            .get(ctx.user(), None, &event_type)?
            .ok_or_else(|| Error::not_found(format!("no account data of type {event_type}")))?
    };
    Ok(get_global_account_data::v3::Response::new(raw(&content)?))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
///
/// `m.ignored_user_list` is checked first (see [`account_data::validate_ignored_user_list`]);
/// the next `/sync` applies a changed list.
pub async fn set_global_account_data(
    services: Arc<Services>,
    ctx: Ctx,
    request: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response> {
    ctx.require_self(&request.user_id, "set the account data of")?;
    let event_type = request.event_type.to_string();
    if event_type == "m.fully_read" || event_type == "m.push_rules" {
        return Err(Error::bad_json(format!(
            "{event_type} cannot be set through this endpoint"
        )));
    }
    let content: Value = request
        .data
        .deserialize_as_unchecked()
        .map_err(|error| Error::bad_json(error.to_string()))?;
    if event_type == account_data::IGNORED_USER_LIST {
        account_data::validate_ignored_user_list(ctx.user(), &content)?;
    }
    if event_type == privacy::PRIVACY {
        privacy::check_settings(&content)?;
    }
    services
        .account_data
        .set(&services.globals, ctx.user(), None, &event_type, &content)?;
    services.notifier.wake(Topic::User(ctx.user().to_string()));
    Ok(set_global_account_data::v3::Response::new())
}

/// Account data content as the raw JSON of a ruma response.
fn raw<T>(content: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(content).map_err(Error::internal)?,
    ))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
///
/// Untyped: ruma's `RoomAccountDataEventType` turns an alias into its main type (`m.space_order`
/// into `org.matrix.msc3230.space_order` when ruma has `unstable-msc3230`, as the test build
/// has through matrix-sdk), so data would be kept under another type than the client named.
pub async fn get_room_account_data(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    let room_id = ctx.room_param(1)?;
    services
        .account_data
        .get(ctx.user(), Some(&room_id), ctx.param(2))?
        .ok_or_else(|| Error::not_found(format!("no account data of type {}", ctx.param(2))))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
///
/// Untyped: ruma renames an aliased event type, as for [`get_room_account_data`].
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
///
/// The filter is stored as sent, and [`get_filter`] returns it so.
/// Untyped: ruma's request holds only the parsed `FilterDefinition`, which leaves out fields at
/// their default (`"include_leave": false`, `"event_format": "client"`) and unknown ones, and
/// reads an array for `room`, `presence` or `account_data` as an object (serde reads a struct
/// from a sequence) where we answer `M_BAD_JSON`.
pub async fn create_filter(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    // `Users::create_filter` checks it (`filter::validate`, as for inline `/sync` filters).
    Ok(json!({ "filter_id": services.users.create_filter(ctx.user(), &ctx.body)? }))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
///
/// Untyped: ruma's response is a `FilterDefinition`, which would not give the filter back as it
/// was sent (see [`create_filter`]); clients such as matrix-js-sdk compare it with their own to
/// decide whether to reuse a filter ID.
pub async fn get_filter(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    services
        .users
        .get_filter(ctx.user(), ctx.param(1))?
        .ok_or_else(|| Error::not_found(format!("filter {} not found", ctx.param(1))))
}
