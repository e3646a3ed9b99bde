//! End-to-end encryption over federation: the resident side of `/user/keys/query`,
//! `/user/keys/claim` and `/user/devices/{userId}`. The EDUs that carry device list updates,
//! signing key updates and to-device messages are the service's
//! (`service::device_lists::edus`).

use std::{collections::BTreeMap, sync::Arc};

use ruma::{api::federation::keys::claim_keys, OwnedUserId};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{device_lists, Services},
};

/// The entries of a `{user ID: T}` request body field that name users of this server; others
/// are left out of the answer.
fn local_users<T: serde::de::DeserializeOwned>(
    services: &Services,
    body: &Value,
    field: &str,
) -> Result<BTreeMap<OwnedUserId, T>> {
    let wanted = body
        .get(field)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json(format!("{field} must be an object")))?;
    let mut users = BTreeMap::new();
    for (user, value) in wanted {
        let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        if user_id.server_name() != services.globals.server_name() {
            continue;
        }
        let parsed = serde_json::from_value(value.clone())
            .map_err(|_| Error::bad_json(format!("invalid {field} entry for {user}")))?;
        users.insert(user_id, parsed);
    }
    Ok(users)
}

/// `POST /_matrix/federation/v1/user/keys/query`
///
/// Device keys, master and self-signing keys of local users (user-signing keys never leave
/// the server).
/// Untyped: ruma's response leaves out `master_keys` and `self_signing_keys` when they are empty,
/// where we answer `{}`.
pub async fn get_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let wanted = local_users::<Vec<String>>(&services, &ctx.body, "device_keys")?;
    Ok(Value::Object(device_lists::query_local(
        &services, None, &wanted,
    )?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`
///
/// One one-time key (or fallback key) per local device asked for; users of other servers are
/// left out.
pub async fn claim_keys(
    services: Arc<Services>,
    _ctx: Ctx,
    request: claim_keys::v1::Request,
) -> Result<claim_keys::v1::Response> {
    let server_name = services.globals.server_name();
    let wanted: BTreeMap<OwnedUserId, BTreeMap<String, String>> = request
        .one_time_keys
        .into_iter()
        .filter(|(user_id, _)| user_id.server_name() == server_name)
        .map(|(user_id, devices)| {
            let devices = devices
                .into_iter()
                .map(|(device_id, algorithm)| (device_id.to_string(), algorithm.to_string()))
                .collect();
            (user_id, devices)
        })
        .collect();
    let claimed = device_lists::claim_local(&services, &wanted)?;
    let one_time_keys = serde_json::from_value(Value::Object(claimed)).map_err(Error::internal)?;
    Ok(claim_keys::v1::Response::new(one_time_keys))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
///
/// Every device of a local user with its keys and display name; `stream_id` is the one of the
/// user's last `m.device_list_update`, so that the asking server can tell which updates the
/// list already holds.
/// Untyped: ruma's `UserDevice` requires `keys`, where a device without keys is listed here
/// without them.
pub async fn get_devices(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user_id = ctx.user_param(0)?;
    if user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "{user_id} is not a local user"
        )));
    }
    if !services.users.exists(&user_id)? {
        return Err(Error::not_found(format!("unknown user {user_id}")));
    }
    // Read before the devices, so that the list is at least as new as the stream_id it claims.
    let stream_id = services.keys.get_device_list_id(&user_id)?.unwrap_or(0);
    let keys = services.keys.iter_device_keys(&user_id)?;
    let mut devices = Vec::new();
    for device in services.users.iter_devices(&user_id)? {
        let mut entry = json!({ "device_id": device.device_id });
        if let Some(device_keys) = keys.get(device.device_id.as_str()) {
            entry["keys"] = device_keys.clone();
        }
        if let Some(name) = device.display_name {
            entry["device_display_name"] = json!(name);
        }
        devices.push(entry);
    }
    let mut response = json!({
        "user_id": user_id,
        "stream_id": stream_id,
        "devices": devices,
    });
    for (kind, field) in [
        ("master", "master_key"),
        ("self_signing", "self_signing_key"),
    ] {
        if let Some(key) = services.keys.get_cross_signing_key(&user_id, kind)? {
            response[field] = key;
        }
    }
    Ok(response)
}
