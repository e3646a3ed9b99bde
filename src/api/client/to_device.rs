//! Send-to-device messaging.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{to_device, Services},
};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
///
/// `messages` maps user IDs to device IDs (or `*` for every device) to contents; see
/// [`to_device::send`]. A transaction ID already used by this device is answered with `{}` and
/// nothing is sent again.
/// Untyped: ruma's request refuses an invalid user ID in `messages` as `M_BAD_JSON`, tests
/// expect `M_INVALID_PARAM`.
pub async fn send_event_to_device(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let messages = ctx
        .body
        .get("messages")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("messages must be an object"))?;
    let request = to_device::Send {
        sender: ctx.user(),
        sender_device: ctx.device(),
        event_type: ctx.param(0),
        txn_id: ctx.param(1),
        messages,
    };
    to_device::send(&services, request)?;
    Ok(json!({}))
}
