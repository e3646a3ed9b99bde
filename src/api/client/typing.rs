//! Typing notifications.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};

use super::require_joined;
use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{typing, Services},
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
///
/// Only for the user themselves, in a room they are joined to. `timeout` is capped at
/// `typing::MAX_TIMEOUT` (60 s) and defaults to 30 s when a client omits it; the typing ends by
/// itself when it runs out.
/// Untyped: ruma's request needs `timeout` with `typing: true`, which Synapse and we default.
pub async fn create_typing_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let user_id = ctx.user_param(1)?;
    ctx.require_self(&user_id, "set the typing state of")?;
    let typing = ctx
        .body
        .get("typing")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_json("typing must be a boolean"))?;
    let timeout = match ctx.body.get("timeout") {
        None | Some(Value::Null) => typing::DEFAULT_TIMEOUT,
        Some(value) => Duration::from_millis(
            value
                .as_u64()
                .ok_or_else(|| Error::bad_json("timeout must be a non-negative integer"))?,
        ),
    };
    require_joined(&services, &room_id, ctx.user())?;
    typing::set_typing(&services, &room_id, ctx.user(), typing.then_some(timeout))?;
    Ok(json!({}))
}
