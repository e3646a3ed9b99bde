//! Device management.

use std::sync::Arc;

use serde_json::{json, Value};

use super::account::check_uiaa;
use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{device_lists, users::Device, Services},
};

fn device_json(user: &ruma::UserId, device: &Device) -> Value {
    let _ = user;
    json!({ "device_id": device.device_id, "display_name": device.display_name, "last_seen_ts": device.last_seen_ts, "last_seen_ip": device.last_seen_ip })
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let devices: Vec<Value> = services
        .users
        .iter_devices(ctx.user())?
        .iter()
        .map(|device| device_json(ctx.user(), device))
        .collect();
    Ok(json!({ "devices": devices }))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let device = services
        .users
        .get_device(ctx.user(), ctx.param(0))?
        .ok_or_else(|| Error::not_found(format!("device {} not found", ctx.param(0))))?;
    Ok(device_json(ctx.user(), &device))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let name = match ctx.body.get("display_name") {
        Some(Value::String(name)) => Some(name.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(Error::bad_json("display_name must be a string")),
    };
    services
        .users
        .set_device_display_name(ctx.user(), ctx.param(0), name)?;
    // Other users see the name in key queries and device lists, so the change is announced.
    device_lists::announce_device(&services, ctx.user(), ctx.param(0))?;
    Ok(json!({}))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
///
/// UIA with `m.login.password`.
pub async fn delete_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    if services
        .users
        .get_device(ctx.user(), ctx.param(0))?
        .is_none()
    {
        return Err(Error::not_found(format!(
            "device {} not found",
            ctx.param(0)
        )));
    }
    check_uiaa(
        &services,
        ctx.body.get("auth"),
        &[&["m.login.password"]],
        Some(ctx.user()),
    )?;
    device_lists::delete_device(&services, ctx.user(), ctx.param(0))?;
    services
        .push
        .pushers
        .delete_device_pushers(ctx.user(), ctx.param(0))?;
    services.users.remove_device(ctx.user(), ctx.param(0))?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/delete_devices`
///
/// UIA with `m.login.password`.
pub async fn delete_devices(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let devices: Vec<String> =
        serde_json::from_value(ctx.body.get("devices").cloned().unwrap_or(Value::Null))
            .map_err(|_| Error::bad_json("devices must be a list of IDs"))?;
    check_uiaa(
        &services,
        ctx.body.get("auth"),
        &[&["m.login.password"]],
        Some(ctx.user()),
    )?;
    for device in devices {
        device_lists::delete_device(&services, ctx.user(), &device)?;
        services
            .push
            .pushers
            .delete_device_pushers(ctx.user(), &device)?;
        services.users.remove_device(ctx.user(), &device)?;
    }
    Ok(json!({}))
}
