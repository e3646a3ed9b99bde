//! Delayed events (MSC4140, unstable prefix `org.matrix.msc4140`): scheduling through the
//! `org.matrix.msc4140.delay` query parameter of `PUT …/send` and `PUT …/state`, the sender's
//! list, and cancel, restart and send.

use std::sync::Arc;

use ruma::{serde::Raw, RoomId};
use serde_json::{json, Value};

use super::message::parse_content;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        delayed_events::{send_early, Action, NewDelayed},
        rate_limits::{self, Limit},
        Services,
    },
};

/// The query parameter that makes a send delayed.
const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// The delay a send asks for, in ms (`None`: an ordinary send); a negative or non-numeric
/// delay is `400 M_INVALID_PARAM`.
fn requested_delay(ctx: &Ctx) -> Result<Option<u64>> {
    ctx.query(DELAY_PARAM)
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                Error::invalid_param(format!("{DELAY_PARAM} must be a whole number of ms"))
            })
        })
        .transpose()
}

/// When the request asks for a delay (`org.matrix.msc4140.delay`), schedules the send of the
/// authenticated user and answers its `delay_id`; `None` when it asks for none. Makes at once
/// the checks an ordinary send makes (suspension, rate limit, membership, event type); power is
/// checked when it fires.
pub fn schedule_if_requested<T>(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
    (event_type, state_key): (String, Option<String>),
    body: &Raw<T>,
) -> Result<Option<Value>> {
    let Some(delay_ms) = requested_delay(ctx)? else {
        return Ok(None);
    };
    let content = parse_content(body)?;
    services.admin.flags.check_not_suspended(ctx.user())?;
    rate_limits::take_for(services, Limit::Message, ctx.user())?;
    super::require_joined(services, room_id, ctx.user())?;
    if event_type.is_empty() || event_type.len() > 255 || event_type == "m.room.create" {
        return Err(Error::invalid_param("invalid event type"));
    }
    let event = NewDelayed {
        room_id: room_id.to_owned(),
        event_type,
        state_key,
        content,
    };
    let max_ms = services.config.max_event_delay_duration_ms;
    let delay_id = services
        .delayed_events
        .schedule(ctx.user(), event, delay_ms, max_ms)?;
    Ok(Some(json!({ "delay_id": delay_id })))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`
///
/// The user's pending delayed events (`delayed_events`, in due order) and those that ended in
/// the last day (`finalised`, each with `outcome`, `reason`, and the `error` or `event_id`).
pub async fn get_delayed_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (pending, finalised) = services.delayed_events.list(ctx.user())?;
    Ok(json!({ "delayed_events": pending, "finalised": finalised }))
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}`
///
/// The action (`cancel`, `restart`, `send`) in the body's `action`, as the first drafts and
/// matrix-js-sdk send it.
pub async fn update_delayed_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let action = ctx.body["action"]
        .as_str()
        .ok_or_else(|| Error::missing_param("action is required"))?;
    update(&services, &ctx, Action::parse(action)?).await
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}`
///
/// The action in the path, as the MSC's later drafts have it.
pub async fn update_delayed_event_by_path(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let action = Action::parse(ctx.param(1))?;
    update(&services, &ctx, action).await
}

async fn update(services: &Services, ctx: &Ctx, action: Action) -> HandlerResult {
    let delay_id = ctx.param(0);
    match action {
        Action::Send => send_early(services, ctx.user(), delay_id).await?,
        _ => {
            services
                .delayed_events
                .update(ctx.user(), delay_id, action)?;
        }
    }
    Ok(json!({}))
}
