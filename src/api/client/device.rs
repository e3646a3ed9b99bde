//! Device management.

use std::sync::Arc;

use ruma::{
    api::client::device::{self, get_device, get_devices, update_device},
    MilliSecondsSinceUnixEpoch, UInt,
};

use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        appservice::accounts as appservice_accounts,
        users::{devices, Device},
        Services,
    },
};

fn device_response(device: Device) -> device::Device {
    let mut response = device::Device::new(device.device_id);
    response.display_name = device.display_name;
    response.last_seen_ip = device.last_seen_ip;
    response.last_seen_ts = device
        .last_seen_ts
        .and_then(|ts| UInt::new(ts).map(MilliSecondsSinceUnixEpoch));
    response
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(
    services: Arc<Services>,
    ctx: Ctx,
    _request: get_devices::v3::Request,
) -> Result<get_devices::v3::Response> {
    let devices = services.users.iter_devices(ctx.user())?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(device_response).collect(),
    ))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_device::v3::Request,
) -> Result<get_device::v3::Response> {
    let device_id = request.device_id;
    let device = services
        .users
        .get_device(ctx.user(), device_id.as_str())?
        .ok_or_else(|| Error::not_found(format!("device {device_id} not found")))?;
    Ok(get_device::v3::Response::new(device_response(device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
///
/// A missing or null `display_name` removes the name. An appservice creates the device of its
/// user when it does not exist (MSC4190; deviation: answered 200, not 201).
pub async fn update_device(
    services: Arc<Services>,
    ctx: Ctx,
    request: update_device::v3::Request,
) -> Result<update_device::v3::Response> {
    if ctx.appservice.is_some() {
        let (device_id, name) = (request.device_id.as_str(), request.display_name);
        appservice_accounts::put_device(&services, ctx.user(), device_id, name)?;
        return Ok(update_device::v3::Response::new());
    }
    devices::rename(
        &services,
        ctx.user(),
        request.device_id.as_str(),
        request.display_name,
    )?;
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
///
/// UIA with `m.login.password`, but for an appservice (MSC4190).
/// Untyped: ruma's `AuthData::Password` requires `identifier`, so a password stage with the
/// legacy top-level `user` (which clients and our tests send) would be `400 M_BAD_JSON`.
pub async fn delete_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    if ctx.appservice.is_some() {
        appservice_accounts::delete_devices(&services, ctx.user(), &[ctx.param(0)])?;
        return Ok(json!({}));
    }
    devices::delete_one(&services, ctx.user(), ctx.param(0), ctx.body.get("auth")).await?;
    Ok(json!({}))
}

/// The body of `/delete_devices`.
#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
}

/// `POST /_matrix/client/v3/delete_devices`
///
/// UIA with `m.login.password`, but for an appservice (MSC4190).
/// Untyped: ruma refuses the legacy password stage, as for [`delete_device`].
pub async fn delete_devices(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body: DeleteDevicesBody = ctx.body_as()?;
    let device_ids: Vec<&str> = body.devices.iter().map(String::as_str).collect();
    if ctx.appservice.is_some() {
        appservice_accounts::delete_devices(&services, ctx.user(), &device_ids)?;
        return Ok(json!({}));
    }
    devices::delete_many(&services, ctx.user(), &device_ids, ctx.body.get("auth")).await?;
    Ok(json!({}))
}
