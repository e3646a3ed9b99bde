//! Receipts and read markers.

use std::sync::Arc;

use ruma::{api::client::read_marker::set_read_marker, OwnedEventId, RoomId, UserId};
use serde_json::{json, Value};

use super::require_joined;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        notify::Topic,
        receipts::{self, Receipt, ReceiptType},
        rooms::visibility::user_can_see,
        Services,
    },
    util,
};

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
///
/// `m.read` and `m.read.private` receipts (optionally threaded: `thread_id` is `main` or an event
/// ID), and `m.fully_read`, which sets the read marker like `/read_markers`. An unknown type or a
/// bad `thread_id` is `400 M_INVALID_PARAM`; an event the user cannot see in the room is
/// `404 M_NOT_FOUND`. Deviation: a `thread_id` is not checked against the event's relations.
/// Untyped: ruma refuses a `thread_id` that is not a string, or a `$` one that is not an event
/// ID, as `M_BAD_JSON` (tests expect `M_INVALID_PARAM`), and accepts any other string.
pub async fn create_receipt(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let receipt_type = ctx.param(1);
    let event_id = event_id_param(ctx.param(2))?;
    let kind =
        match receipt_type {
            "m.fully_read" => None,
            other => Some(ReceiptType::parse(other).ok_or_else(|| {
                Error::invalid_param(format!("unknown receipt type {receipt_type}"))
            })?),
        };
    let thread_id = match ctx.body.get("thread_id") {
        None => None,
        Some(Value::String(thread_id)) if receipts::is_valid_thread_id(thread_id) => {
            Some(thread_id.clone())
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "thread_id must be `main` or an event ID",
            ))
        }
    };
    if kind.is_none() && thread_id.is_some() {
        return Err(Error::invalid_param("m.fully_read takes no thread_id"));
    }
    require_joined(&services, &room_id, ctx.user())?;
    require_visible(&services, &room_id, ctx.user(), &event_id)?;
    match kind {
        None => set_fully_read(&services, &room_id, ctx.user(), &event_id)?,
        Some(kind) => {
            let receipt = Receipt {
                user_id: ctx.user().to_owned(),
                kind,
                event_id,
                ts: util::now_millis(),
                thread_id,
            };
            receipts::set_receipt(&services, &room_id, &receipt)?;
        }
    }
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
///
/// Sets any of `m.fully_read` (room account data of that type), `m.read` and `m.read.private`
/// (unthreaded receipts). Every named event is checked before anything is written; a value that
/// is not an event ID is `400 M_BAD_JSON`.
pub async fn set_read_marker(
    services: Arc<Services>,
    ctx: Ctx,
    request: set_read_marker::v3::Request,
) -> Result<set_read_marker::v3::Response> {
    let room_id = request.room_id;
    require_joined(&services, &room_id, ctx.user())?;
    for event_id in [
        &request.fully_read,
        &request.read_receipt,
        &request.private_read_receipt,
    ]
    .into_iter()
    .flatten()
    {
        require_visible(&services, &room_id, ctx.user(), event_id)?;
    }
    if let Some(event_id) = &request.fully_read {
        set_fully_read(&services, &room_id, ctx.user(), event_id)?;
    }
    for (kind, event_id) in [
        (ReceiptType::Read, request.read_receipt),
        (ReceiptType::ReadPrivate, request.private_read_receipt),
    ] {
        if let Some(event_id) = event_id {
            let receipt = Receipt {
                user_id: ctx.user().to_owned(),
                kind,
                event_id,
                ts: util::now_millis(),
                thread_id: None,
            };
            receipts::set_receipt(&services, &room_id, &receipt)?;
        }
    }
    Ok(set_read_marker::v3::Response::new())
}

fn event_id_param(text: &str) -> Result<OwnedEventId> {
    OwnedEventId::try_from(text)
        .map_err(|_| Error::invalid_param(format!("invalid event ID {text}")))
}

/// Fails with `M_NOT_FOUND` unless the event is in the room's timeline and the user may see it.
fn require_visible(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    event_id: &OwnedEventId,
) -> Result<()> {
    let not_found = || Error::not_found(format!("event {event_id} not found in {room_id}"));
    let timeline = &services.rooms.timeline;
    let Some(pdu_id) = timeline.get_pdu_id(event_id)? else {
        return Err(not_found());
    };
    if services.rooms.short.get_shortroomid(room_id)? != Some(pdu_id.shortroomid) {
        return Err(not_found());
    }
    let Some(pdu) = timeline.get_pdu_at(pdu_id)? else {
        return Err(not_found());
    };
    let membership = services.rooms.members.get_user_room(user_id, room_id)?;
    if !user_can_see(services, user_id, membership.as_ref(), pdu_id.count, &pdu)? {
        return Err(not_found());
    }
    Ok(())
}

/// Moves the user's read marker: room account data `m.fully_read`, which clients cannot set
/// directly (spec, "Fully read markers").
fn set_fully_read(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    event_id: &OwnedEventId,
) -> Result<()> {
    services.account_data.set(
        &services.globals,
        user_id,
        Some(room_id),
        "m.fully_read",
        &json!({ "event_id": event_id }),
    )?;
    services.notifier.wake(Topic::User(user_id.to_string()));
    Ok(())
}
