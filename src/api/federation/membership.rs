//! Membership handshakes, resident side: `make_join`/`send_join`, `make_knock`/`send_knock`,
//! `make_leave`/`send_leave`, and invites for this server's users. The rules are in
//! [`resident`].

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, RoomVersionId};
use serde_json::{json, Value};

use crate::{
    api::{ctx::percent_decode, Ctx, HandlerResult},
    error::{Error, Result},
    service::{rooms::resident, Services},
};

/// The room and event of a `send_*` or `invite` path.
fn room_and_event(ctx: &Ctx) -> Result<(OwnedRoomId, OwnedEventId)> {
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    Ok((ctx.room_param(0)?, event_id))
}

/// A `make_*` template for the path's room and user.
fn make_membership(services: &Services, ctx: &Ctx, membership: &str) -> HandlerResult {
    let (room_id, user) = (ctx.room_param(0)?, ctx.user_param(1)?);
    // `ver` repeats, so it is read from the raw query.
    let accepted: Vec<String> = ctx
        .raw_query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ver="))
        .map(percent_decode)
        .collect();
    let (version, event) = resident::make_membership(
        services,
        ctx.origin(),
        &room_id,
        &user,
        membership,
        &accepted,
    )?;
    Ok(json!({ "room_version": version, "event": event }))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn create_join_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "join")
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn create_leave_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "leave")
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn create_knock_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "knock")
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
///
/// See [`resident::send_join`]; `omit_members` must be `true` or `false`.
pub async fn create_join_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let omit_members = match ctx.query("omit_members") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "omit_members must be true or false, not {other}"
            )))
        }
    };
    let (room_id, event_id) = room_and_event(&ctx)?;
    resident::send_join(
        &services,
        ctx.origin(),
        &room_id,
        &event_id,
        &ctx.body,
        omit_members,
    )
    .await
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn create_leave_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (room_id, event_id) = room_and_event(&ctx)?;
    resident::send_membership(
        &services,
        ctx.origin(),
        &room_id,
        &event_id,
        &ctx.body,
        "leave",
    )
    .await?;
    Ok(json!({}))
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}`
///
/// The version-1 form, removed from the spec but still sent by older servers (and tested by
/// Complement): the same checks and answer as v2, wrapped as `[200, answer]`.
pub async fn create_join_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let answer = create_join_event(services, ctx).await?;
    Ok(json!([200, answer]))
}

/// `PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}`
///
/// The version-1 form of `send_leave` (see [`create_join_event_v1`]): `[200, {}]`.
pub async fn create_leave_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let answer = create_leave_event(services, ctx).await?;
    Ok(json!([200, answer]))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
///
/// Answers the stripped state the knocking user's client shows while the knock is pending.
pub async fn create_knock_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (room_id, event_id) = room_and_event(&ctx)?;
    let state =
        resident::send_knock(&services, ctx.origin(), &room_id, &event_id, &ctx.body).await?;
    Ok(json!({ "knock_room_state": state }))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
///
/// An invite for one of this server's users (see [`resident::receive_invite`]).
pub async fn create_invite(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = ctx
        .body
        .get("room_version")
        .and_then(Value::as_str)
        .and_then(|version| RoomVersionId::try_from(version).ok())
        .ok_or_else(|| Error::bad_json("missing room_version"))?;
    let event = ctx.body.get("event").cloned().unwrap_or(Value::Null);
    let invite_state = ctx.body.get("invite_room_state");
    let signed = invite(&services, &ctx, version, &event, invite_state).await?;
    Ok(json!({ "event": signed }))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`
///
/// The deprecated version-1 form: the body is the invite event itself, with the stripped state in
/// its `unsigned.invite_room_state`, and the room version is 1 or 2 (the spec has the receiver
/// assume so; a room this server knows at version 2 is taken as such). The checks and the
/// signature are those of v2; the answer is `[200, {"event": ...}]`.
pub async fn create_invite_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let version = match services.rooms.room_version(&room_id) {
        Ok((_, RoomVersionId::V2)) => RoomVersionId::V2,
        _ => RoomVersionId::V1,
    };
    let invite_state = ctx
        .body
        .get("unsigned")
        .and_then(|unsigned| unsigned.get("invite_room_state"));
    let signed = invite(&services, &ctx, version, &ctx.body, invite_state).await?;
    Ok(json!([200, { "event": signed }]))
}

/// The invite of the path's room and event, signed by this server.
async fn invite(
    services: &Services,
    ctx: &Ctx,
    version: RoomVersionId,
    event: &Value,
    invite_state: Option<&Value>,
) -> Result<Value> {
    let (room_id, event_id) = room_and_event(ctx)?;
    resident::receive_invite(
        services,
        ctx.origin(),
        &room_id,
        &event_id,
        version,
        event,
        invite_state,
    )
    .await
}
