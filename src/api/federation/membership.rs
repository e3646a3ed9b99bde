//! Membership handshakes, resident side: `make_join`/`send_join`, `make_knock`/`send_knock`,
//! `make_leave`/`send_leave`, and invites for this server's users. The rules are in
//! [`resident`].

use std::sync::Arc;

use ruma::{
    api::federation::membership::{
        create_invite, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event, RawStrippedState,
    },
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, ServerName,
};
use serde_json::{
    json,
    value::{to_raw_value, RawValue},
    Value,
};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{invite_links, rooms::resident, Services},
};

/// The room and event of a `send_*` or `invite` path.
fn room_and_event(ctx: &Ctx) -> Result<(OwnedRoomId, OwnedEventId)> {
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    Ok((ctx.room_param(0)?, event_id))
}

/// A PDU of a request body as JSON, for the checks of [`resident`].
fn pdu_value(pdu: &RawValue) -> Result<Value> {
    serde_json::from_str(pdu.get())
        .map_err(|error| Error::bad_json(format!("invalid PDU: {error}")))
}

/// A `make_*` template for the room and user: the room version and the event.
fn make_membership(
    services: &Services,
    origin: &ServerName,
    (room_id, user): (OwnedRoomId, OwnedUserId),
    membership: &str,
    accepted: &[RoomVersionId],
) -> Result<(RoomVersionId, Box<RawValue>)> {
    let accepted: Vec<String> = accepted.iter().map(|ver| ver.as_str().to_owned()).collect();
    let (version, event) =
        resident::make_membership(services, origin, &room_id, &user, membership, &accepted)?;
    Ok((version, to_raw_value(&event).map_err(Error::internal)?))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
///
/// Without `ver`, only room version 1 is accepted, as the spec has it.
pub async fn create_join_event_template(
    services: Arc<Services>,
    ctx: Ctx,
    request: prepare_join_event::v1::Request,
) -> Result<prepare_join_event::v1::Response> {
    let path = (request.room_id, request.user_id);
    let (version, event) = make_membership(&services, ctx.origin(), path, "join", &request.ver)?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn create_leave_event_template(
    services: Arc<Services>,
    ctx: Ctx,
    request: prepare_leave_event::v1::Request,
) -> Result<prepare_leave_event::v1::Response> {
    let path = (request.room_id, request.user_id);
    let (version, event) = make_membership(&services, ctx.origin(), path, "leave", &[])?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn create_knock_event_template(
    services: Arc<Services>,
    ctx: Ctx,
    request: prepare_knock_event::v1::Request,
) -> Result<prepare_knock_event::v1::Response> {
    let path = (request.room_id, request.user_id);
    let (version, event) = make_membership(&services, ctx.origin(), path, "knock", &request.ver)?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
///
/// See [`resident::send_join`]; `omit_members` must be `true` or `false`.
/// Untyped: ruma's `RoomState` has no `origin`, and leaves out `members_omitted` when it is
/// `false`; Synapse answers both, and so do we.
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
pub async fn create_leave_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: create_leave_event::v2::Request,
) -> Result<create_leave_event::v2::Response> {
    resident::send_membership(
        &services,
        ctx.origin(),
        &request.room_id,
        &request.event_id,
        &pdu_value(&request.pdu)?,
        "leave",
    )
    .await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}`
///
/// The version-1 form, removed from the spec but still sent by older servers (and tested by
/// Complement): the same checks and answer as v2, wrapped as `[200, answer]`.
/// Untyped: ruma has no type for the version-1 form (nor for the v2 answer, see
/// [`create_join_event`]).
pub async fn create_join_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let answer = create_join_event(services, ctx).await?;
    Ok(json!([200, answer]))
}

/// `PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}`
///
/// The version-1 form of `send_leave` (see [`create_join_event_v1`]): `[200, {}]`.
/// Untyped: ruma has no type for the version-1 form; its body is v2's, read with v2's type.
pub async fn create_leave_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request = ctx.parse::<create_leave_event::v2::Request>()?;
    create_leave_event(services, ctx, request).await?;
    Ok(json!([200, {}]))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
///
/// Answers the stripped state the knocking user's client shows while the knock is pending.
/// A knock whose reason carries an invite link's code is answered with an invite
/// (`docs/invite_links.md`).
pub async fn create_knock_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: create_knock_event::v1::Request,
) -> Result<create_knock_event::v1::Response> {
    let state = invite_links::send_knock(
        &services,
        ctx.origin(),
        &request.room_id,
        &request.event_id,
        &pdu_value(&request.pdu)?,
    )
    .await?;
    let state = state
        .into_iter()
        .map(serde_json::from_value::<RawStrippedState>)
        .collect::<serde_json::Result<_>>()
        .map_err(Error::internal)?;
    Ok(create_knock_event::v1::Response::new(state))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
///
/// An invite for one of this server's users (see [`resident::receive_invite`]).
pub async fn create_invite(
    services: Arc<Services>,
    ctx: Ctx,
    request: create_invite::v2::Request,
) -> Result<create_invite::v2::Response> {
    let invite_state = serde_json::to_value(&request.invite_room_state).map_err(Error::internal)?;
    let signed = resident::receive_invite(
        &services,
        ctx.origin(),
        &request.room_id,
        &request.event_id,
        request.room_version,
        &pdu_value(&request.event)?,
        Some(&invite_state),
    )
    .await?;
    Ok(create_invite::v2::Response::new(
        to_raw_value(&signed).map_err(Error::internal)?,
    ))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`
///
/// The deprecated version-1 form: the body is the invite event itself, with the stripped state in
/// its `unsigned.invite_room_state`, and the room version is 1 or 2 (the spec has the receiver
/// assume so; a room this server knows at version 2 is taken as such). The checks and the
/// signature are those of v2; the answer is `[200, {"event": ...}]`.
/// Untyped: ruma's v1 request keeps only some fields of the event (not its hashes, signatures,
/// auth and prev events), which the checks need whole.
pub async fn create_invite_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (room_id, event_id) = room_and_event(&ctx)?;
    let version = match services.rooms.room_version(&room_id) {
        Ok((_, RoomVersionId::V2)) => RoomVersionId::V2,
        _ => RoomVersionId::V1,
    };
    let invite_state = ctx
        .body
        .get("unsigned")
        .and_then(|unsigned| unsigned.get("invite_room_state"));
    let signed = resident::receive_invite(
        &services,
        ctx.origin(),
        &room_id,
        &event_id,
        version,
        &ctx.body,
        invite_state,
    )
    .await?;
    Ok(json!([200, { "event": signed }]))
}
