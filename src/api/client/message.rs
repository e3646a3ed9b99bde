//! Sending and reading room events: send, get, /messages, /context and redaction.

use std::sync::Arc;

use ruma::{
    api::client::{message::send_message_event, room::get_room_event},
    serde::Raw,
    OwnedEventId, RoomId,
};
use serde_json::{json, Value};

use super::{delayed_events, require_joined};
use crate::{
    api::{client::appservice, Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        filter::RoomEventFilter,
        rate_limits::{self, Limit},
        rooms::{
            history,
            power::PowerLevels,
            relations::{bundle::serve_event, check_client_relation},
            timeline::{create_and_commit, PduBuilder},
            visibility::user_can_see,
        },
        Services,
    },
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` with or without
/// `org.matrix.msc4140.delay`
///
/// With a delay, the event is scheduled (MSC4140) and the answer is its `delay_id`; without,
/// it is [`send_message_event`].
/// Untyped: ruma's response has no `delay_id` without its `unstable-msc4140` feature.
pub async fn send_message_event_or_delay(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request = ctx.parse::<send_message_event::v3::Request>()?;
    let event_type = (request.event_type.to_string(), None);
    if let Some(answer) = delayed_events::schedule_if_requested(
        &services,
        &ctx,
        &request.room_id,
        event_type,
        &request.body,
    )? {
        return Ok(answer);
    }
    let response = send_message_event(services, ctx, request).await?;
    Ok(json!({ "event_id": response.event_id }))
}

/// An event's content as the client wrote it; `M_BAD_JSON` when it is not JSON.
pub fn parse_content<T>(body: &Raw<T>) -> Result<Value> {
    body.deserialize_as_unchecked()
        .map_err(|error| Error::bad_json(format!("invalid content: {error}")))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` without a delay
///
/// Idempotent per device and transaction ID: a repeat returns the first event's ID (and is not
/// counted by the `rate_limits.message` limit, which a new event is). The content
/// is sent as the client wrote it; an `m.room.redaction` goes through the checks of `/redact`.
/// A suspended account gets `403 M_USER_SUSPENDED` for anything but a redaction (spec v1.18).
pub async fn send_message_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: send_message_event::v3::Request,
) -> Result<send_message_event::v3::Response> {
    let room_id = &request.room_id;
    let event_type = request.event_type.to_string();
    let txn_id = request.txn_id.as_str();
    if event_type.is_empty() || event_type.len() > 255 || txn_id.len() > 255 {
        return Err(Error::invalid_param("invalid event type or transaction ID"));
    }
    if event_type != "m.room.redaction" {
        // Spec v1.18, "Account suspension": a suspended user may redact, not send.
        services.admin.flags.check_not_suspended(ctx.user())?;
    }
    if let Some(event_id) = sent_before(&services, &ctx, room_id, txn_id)? {
        return Ok(send_message_event::v3::Response::new(event_id));
    }
    rate_limits::take_for(&services, Limit::Message, ctx.user())?;
    require_joined(&services, room_id, ctx.user())?;
    let content = parse_content(&request.body)?;
    let event_id = if event_type == "m.room.redaction" {
        let target = content
            .get("redacts")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("redactions need redacts"))?;
        let target =
            OwnedEventId::try_from(target).map_err(|_| Error::invalid_param("invalid redacts"))?;
        redact_event(&services, &ctx, room_id, target, content, txn_id).await?
    } else {
        check_client_relation(&services, room_id, ctx.user(), &event_type, &content)?;
        let mut builder = PduBuilder::timeline(request.event_type, content);
        builder.origin_server_ts = appservice::timestamp(&ctx)?;
        create_and_commit(
            &services,
            room_id,
            ctx.user(),
            builder,
            Some((ctx.device(), txn_id)),
        )
        .await?
        .0
    };
    Ok(send_message_event::v3::Response::new(event_id))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
///
/// Only the sender or a user with the `redact` power level may redact; the target's content is
/// pruned in storage by the room version's redaction algorithm. A user with the `redact` level
/// may also redact an event this server does not have (the redaction is sent all the same);
/// for anyone else an unknown event is `404 M_NOT_FOUND`. A suspended account may redact only
/// its own events (`403 M_USER_SUSPENDED`).
/// Untyped: ruma's request keeps only a string `reason` of the body, where the redaction's
/// content is the body as sent.
pub async fn redact(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let target = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let txn_id = ctx.param(2);
    if let Some(event_id) = sent_before(&services, &ctx, &room_id, txn_id)? {
        return Ok(json!({ "event_id": event_id }));
    }
    rate_limits::take_for(&services, Limit::Message, ctx.user())?;
    require_joined(&services, &room_id, ctx.user())?;
    let mut content = ctx.body.clone();
    content["redacts"] = json!(target);
    let event_id = redact_event(&services, &ctx, &room_id, target, content, txn_id).await?;
    Ok(json!({ "event_id": event_id }))
}

/// The event this device already sent with `txn_id`, which a repeated request answers again.
fn sent_before(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
    txn_id: &str,
) -> Result<Option<OwnedEventId>> {
    services
        .rooms
        .timeline
        .get_transaction(ctx.user().as_str(), ctx.device(), room_id, txn_id)
}

/// Sends a redaction of `target` with `content`, after checking that the sender may redact it.
async fn redact_event(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
    target: OwnedEventId,
    content: Value,
    txn_id: &str,
) -> Result<OwnedEventId> {
    let levels = PowerLevels::load(services, room_id)?;
    let may_redact_others = levels.user_level(ctx.user()) >= levels.action_level("redact");
    match services.rooms.timeline.get_pdu(&target)? {
        Some(original) => {
            if original
                .room_id
                .as_deref()
                .is_some_and(|room| room != room_id)
            {
                return Err(Error::not_found(format!(
                    "event {target} not found in {room_id}"
                )));
            }
            if original.sender != ctx.user() && !may_redact_others {
                return Err(Error::forbidden("you may not redact other users' events"));
            }
            if original.sender != ctx.user() {
                services.admin.flags.check_not_suspended(ctx.user())?;
            }
        }
        // A user with the redact level may redact an event this server has not seen (it may
        // still arrive from another server); anyone else could only redact their own events,
        // which this server would have.
        None if may_redact_others => services.admin.flags.check_not_suspended(ctx.user())?,
        None => return Err(Error::not_found(format!("event {target} not found"))),
    }
    let builder = PduBuilder {
        kind: "m.room.redaction".into(),
        content,
        state_key: None,
        redacts: Some(target),
        origin_server_ts: appservice::timestamp(ctx)?,
    };
    let (event_id, _) = create_and_commit(
        services,
        room_id,
        ctx.user(),
        builder,
        Some((ctx.device(), txn_id)),
    )
    .await?;
    Ok(event_id)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_room_event::v3::Request,
) -> Result<get_room_event::v3::Response> {
    let (room_id, event_id) = (&request.room_id, &request.event_id);
    // No membership check of its own: an event the user may not see is `404` like a missing one
    // (members, former members and anyone in a `world_readable` room are sorted out below).
    let pdu = services
        .rooms
        .timeline
        .get_pdu(event_id)?
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    if pdu.room_id.as_deref().is_some_and(|room| room != room_id) {
        return Err(Error::not_found(format!(
            "event {event_id} not found in {room_id}"
        )));
    }
    let count = services
        .rooms
        .timeline
        .get_pdu_id(event_id)?
        .map_or(0, |id| id.count);
    let membership = services.rooms.members.get_user_room(ctx.user(), room_id)?;
    if !user_can_see(&services, ctx.user(), membership.as_ref(), count, &pdu)? {
        return Err(Error::not_found(format!("event {event_id} not found")));
    }
    let event = serve_event(&services, &pdu, room_id, Some((ctx.user(), ctx.device())))?;
    let event = serde_json::value::to_raw_value(&event).map_err(Error::internal)?;
    Ok(get_room_event::v3::Response::new(Raw::from_json(event)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
///
/// A page of the room's events (see [`history::messages`]).
/// Untyped: ruma's request needs `dir` and parses `limit` and `filter` before the handler, where
/// a caller who may not read the room gets 403 whatever they hold (test
/// `rooms::knocking_asks_to_join_and_is_answered_with_an_invite_or_a_kick` sends no `dir`).
pub async fn get_message_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let request = history::MessagesRequest {
        from: ctx.query("from"),
        to: ctx.query("to"),
        dir: ctx.query("dir"),
        limit: ctx.query("limit"),
        filter: ctx.query("filter"),
    };
    let viewer = (ctx.user(), ctx.device());
    let page = history::messages(&services, viewer, &room_id, request).await?;
    let mut response = json!({ "chunk": page.chunk, "start": page.start });
    if let Some(end) = page.end {
        response["end"] = json!(end);
    }
    if let Some(state) = page.state {
        response["state"] = json!(state);
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
///
/// The events around one event (see [`history::context`]). A `limit` or `filter` that does not
/// parse is ignored, as before the conversion of this handler.
/// Untyped: ruma's request refuses a `limit` or `filter` that does not parse, and its response
/// leaves out `events_before`, `events_after` and `state` when they are empty.
pub async fn get_context(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let event_id = ctx.param(1);
    let limit = ctx
        .query("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .unwrap_or(10);
    let filter = ctx
        .query("filter")
        .and_then(|text| serde_json::from_str(text).ok())
        .map(|value: Value| RoomEventFilter::from_value(&value))
        .unwrap_or_default();
    let viewer = (ctx.user(), ctx.device());
    let context = history::context(&services, viewer, &room_id, event_id, limit, &filter)?;
    Ok(json!({
        "event": context.event,
        "events_before": context.before, "events_after": context.after,
        "start": context.start, "end": context.end,
        "state": context.state
    }))
}
