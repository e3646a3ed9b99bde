//! Send-to-device messaging.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedServerName, OwnedUserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Error,
    http::{Ctx, HandlerResult},
    service::{to_device, Services},
    util,
};

/// Most devices one request may address, counting each device a `*` expands to.
const MAX_DEVICES_PER_REQUEST: usize = 10_000;

/// Largest content of one message in bytes: what fits in a federation EDU (64 KiB) with room
/// for the envelope.
const MAX_CONTENT_BYTES: usize = 60 * 1024;

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
///
/// `messages` maps user IDs to device IDs (or `*` for every device) to contents. A transaction
/// ID already used by this device is answered with `{}` and nothing is sent again. Local
/// devices get the message in their inbox; each remote server gets one `m.direct_to_device`
/// EDU. Unknown local devices are skipped.
pub async fn send_event_to_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let sender = ctx.user();
    let sender_device = ctx.device();
    let event_type = ctx.param(0);
    let txn_id = ctx.param(1);
    if services.to_device.has_txn(sender, sender_device, txn_id)? {
        return Ok(json!({}));
    }
    let messages = ctx
        .body
        .get("messages")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("messages must be an object"))?;
    let mut deliveries = Vec::new();
    let mut remote: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
    for (user, devices) in messages {
        let user_id = OwnedUserId::try_from(user.as_str())
            .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))?;
        let devices = devices
            .as_object()
            .ok_or_else(|| Error::bad_json(format!("messages for {user} must be an object")))?;
        for content in devices.values() {
            if !content.is_object() {
                return Err(Error::bad_json("each message content must be an object"));
            }
            if content.to_string().len() > MAX_CONTENT_BYTES {
                return Err(Error::matrix(
                    ruma::api::error::ErrorKind::TooLarge,
                    format!("a message to {user} is over {MAX_CONTENT_BYTES} bytes"),
                ));
            }
        }
        if user_id.server_name() != services.globals.server_name() {
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user.clone(), Value::Object(devices.clone()));
            continue;
        }
        deliveries.extend(to_device::expand_local(
            &services, sender, event_type, &user_id, devices,
        )?);
    }
    let remote_count: usize = remote.values().map(Map::len).sum();
    if deliveries.len() + remote_count > MAX_DEVICES_PER_REQUEST {
        return Err(Error::invalid_param(format!(
            "one request may address at most {MAX_DEVICES_PER_REQUEST} devices"
        )));
    }
    let destinations: Vec<OwnedServerName> = remote.keys().cloned().collect();
    services.globals.write_with_count(|batch, count| {
        services
            .to_device
            .add_in_batch(batch, count, (sender, sender_device, txn_id), &deliveries);
        for (server, users) in &remote {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": event_type,
                    "message_id": util::random_string(16),
                    "messages": users,
                },
            });
            services
                .sending
                .queue_edu_in_batch(batch, std::slice::from_ref(server), count, &edu);
        }
        Ok(())
    })?;
    to_device::wake_recipients(&services, &deliveries);
    services.sending.wake(&destinations);
    Ok(json!({}))
}
