//! End-to-end encryption over federation: the resident side of `/user/keys/query`,
//! `/user/keys/claim` and `/user/devices/{userId}`, and the EDUs that carry device list
//! updates, signing key updates and to-device messages.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{OwnedUserId, ServerName};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{
        device_lists::{self, remote},
        to_device, Services,
    },
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
pub async fn get_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let wanted = local_users::<Vec<String>>(&services, &ctx.body, "device_keys")?;
    Ok(Value::Object(device_lists::query_local(
        &services, None, &wanted,
    )?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn claim_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let wanted = local_users::<BTreeMap<String, String>>(&services, &ctx.body, "one_time_keys")?;
    Ok(json!({ "one_time_keys": device_lists::claim_local(&services, &wanted)? }))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
///
/// Every device of a local user with its keys and display name; `stream_id` is the one of the
/// user's last `m.device_list_update`, so that the asking server can tell which updates the
/// list already holds.
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

/// Acts on the EDUs of a received transaction that concern encryption; other EDU types are
/// left to their own handlers. A bad EDU is skipped: the spec gives no way to reject one.
/// Device lists that an update could not be applied to are fetched again in the background.
pub fn receive_edus(services: &Arc<Services>, origin: &ServerName, edus: &[Value]) {
    let mut resync = BTreeSet::new();
    for edu in edus {
        let content = &edu["content"];
        let result = match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.device_list_update") => origin_user(origin, &content["user_id"])
                .and_then(|user_id| {
                    let stale = remote::receive_device_list_update(services, &user_id, content)?;
                    Ok(stale.then_some(user_id))
                })
                .map(|stale| resync.extend(stale)),
            Some("m.signing_key_update") => {
                origin_user(origin, &content["user_id"]).and_then(|user_id| {
                    remote::receive_signing_key_update(services, &user_id, content)
                })
            }
            Some("m.direct_to_device") => direct_to_device(services, origin, content),
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(%origin, %error, "ignored an encryption EDU");
        }
    }
    for user_id in resync {
        let services = Arc::clone(services);
        tokio::spawn(async move {
            if let Err(error) = remote::resync(&services, &user_id).await {
                tracing::warn!(%user_id, %error, "fetching a remote device list failed");
            }
        });
    }
}

/// The user an EDU speaks for, who must belong to the origin server.
fn origin_user(origin: &ServerName, value: &Value) -> Result<OwnedUserId> {
    let user_id = value
        .as_str()
        .and_then(|user| OwnedUserId::try_from(user).ok())
        .ok_or_else(|| Error::bad_json("the EDU names no valid user"))?;
    if user_id.server_name() != origin {
        return Err(Error::forbidden(format!(
            "{origin} cannot speak for {user_id}"
        )));
    }
    Ok(user_id)
}

/// `m.direct_to_device`: messages for local devices, delivered once per `message_id`.
fn direct_to_device(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let sender = origin_user(origin, &content["sender"])?;
    let event_type = content["type"]
        .as_str()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs a type"))?;
    let message_id = content["message_id"]
        .as_str()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs a message_id"))?;
    if services.to_device.has_txn(&sender, "", message_id)? {
        return Ok(());
    }
    let messages = content["messages"]
        .as_object()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs messages"))?;
    let mut deliveries = Vec::new();
    for (user, devices) in messages {
        let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        let Some(devices) = devices.as_object() else {
            continue;
        };
        if user_id.server_name() != services.globals.server_name() {
            continue;
        }
        deliveries.extend(to_device::expand_local(
            services, &sender, event_type, &user_id, devices,
        )?);
    }
    services.globals.write_with_count(|batch, count| {
        services
            .to_device
            .add_in_batch(batch, count, (&sender, "", message_id), &deliveries);
        Ok(())
    })?;
    to_device::wake_recipients(services, &deliveries);
    Ok(())
}
