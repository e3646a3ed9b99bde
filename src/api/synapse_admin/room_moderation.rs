//! Synapse admin API handlers for room moderation (`docs/admin_api.md`, "Room moderation"):
//! deleting rooms, purging history and blocking rooms, federation destinations, and media; each parses the request and calls one
//! operation of `service::synapse_admin::room_moderation` as a checked admin.

use std::sync::Arc;

use serde_json::Value;

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        synapse_admin::{destinations, media, room_moderation as moderation, Admin, PageRequest},
        Services,
    },
};

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`
///
/// Starts deleting the room in the background (`block`, `purge`, default `true`, and
/// `new_room_user_id` with `room_name` and `message`); answers `delete_id`. The body must be an
/// object (at least `{}`); an unknown room is `404 M_NOT_FOUND`.
pub async fn delete_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let room_id = ctx.room_param(0)?;
    moderation::start_delete(&services, &admin, &room_id, ctx.body_as()?)
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`
///
/// Deletes the room as v2 does (the same body) but answers once done, with what v2's status
/// calls `shutdown_room`; a room unknown here can only be blocked.
pub async fn delete_room_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let room_id = ctx.room_param(0)?;
    moderation::delete_now(&services, &admin, &room_id, ctx.body_as()?).await
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`
pub async fn delete_status_by_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::delete_status_by_room(&services, &admin, &ctx.room_param(0)?)
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
pub async fn delete_status_by_id(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::delete_status_by_id(&services, &admin, ctx.param(0))
}

/// `POST /_synapse/admin/v1/purge_history/{roomId}`
///
/// Starts purging history up to `purge_up_to_event_id` or `purge_up_to_ts`; answers `purge_id`.
pub async fn purge_history(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let room_id = ctx.room_param(0)?;
    moderation::start_purge(&services, &admin, &room_id, None, ctx.body_as()?)
}

/// `POST /_synapse/admin/v1/purge_history/{roomId}/{eventId}`
///
/// As without the event, purging up to the path's event.
pub async fn purge_history_to_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let room_id = ctx.room_param(0)?;
    let event_id = ruma::OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param(format!("invalid event ID {}", ctx.param(1))))?;
    moderation::start_purge(&services, &admin, &room_id, Some(event_id), ctx.body_as()?)
}

/// `GET /_synapse/admin/v1/purge_history_status/{purgeId}`
pub async fn purge_history_status(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::purge_status(&services, &admin, ctx.param(0))
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block`
///
/// Blocks (`"block": true`) or unblocks a room, known here or not.
pub async fn set_room_block(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let block = ctx
        .body
        .get("block")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_json("block must be true or false"))?;
    moderation::set_block(&services, &admin, &ctx.room_param(0)?, block)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn get_room_block(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    moderation::get_block(&services, &admin, &ctx.room_param(0)?)
}

/// `GET /_synapse/admin/v1/federation/destinations`
///
/// The servers sent to since start-up or queued for (`from`, `limit`, `order_by`, `dir`).
/// `last_successful_stream_ordering` is always `null`.
pub async fn list_destinations(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let page = PageRequest::parse(ctx.query("from"), ctx.query("limit"))?;
    destinations::list(
        &services,
        &admin,
        page,
        ctx.query("order_by"),
        ctx.query("dir"),
    )
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}`
pub async fn get_destination(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    destinations::get(&services, &admin, &server_param(&ctx)?)
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}/rooms`
///
/// The rooms shared with the destination (`from`, `limit`, `dir`), in room ID order;
/// `stream_ordering` is always `null`.
pub async fn destination_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let page = PageRequest::parse(ctx.query("from"), ctx.query("limit"))?;
    let server = server_param(&ctx)?;
    destinations::rooms(&services, &admin, &server, page, ctx.query("dir"))
}

/// `POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`
///
/// Retries a destination being backed off from now.
pub async fn reset_connection(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    destinations::reset_connection(&services, &admin, &server_param(&ctx)?)
}

fn server_param(ctx: &Ctx) -> Result<ruma::OwnedServerName, Error> {
    ruma::OwnedServerName::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid server name {}", ctx.param(0))))
}

/// `GET /_synapse/admin/v1/users/{userId}/media`
///
/// A page (`from`, `limit`) of a local user's uploads in `order_by` order (`dir`); newest first
/// when neither is given.
pub async fn list_user_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let page = PageRequest::parse(ctx.query("from"), ctx.query("limit"))?;
    let order = media_order(&ctx);
    media::list_user_media(&services, &admin, &ctx.user_param(0)?, page, &order)
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`
///
/// Deletes a page (`limit`, default 100) of a local user's uploads, in the list's order.
pub async fn delete_user_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let page = PageRequest::parse(ctx.query("from"), ctx.query("limit"))?;
    let order = media_order(&ctx);
    media::delete_user_media(&services, &admin, &ctx.user_param(0)?, page, &order).await
}

fn media_order(ctx: &Ctx) -> media::MediaOrder<'_> {
    media::MediaOrder {
        order_by: ctx.query("order_by"),
        dir: ctx.query("dir"),
    }
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`
///
/// Also served at the older `POST /_synapse/admin/v1/quarantine_media/{roomId}`.
pub async fn quarantine_room_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    media::quarantine_room_media(&services, &admin, &ctx.room_param(0)?)
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`
pub async fn quarantine_user_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    media::quarantine_user_media(&services, &admin, &ctx.user_param(0)?)
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`
pub async fn delete_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    media::delete(&services, &admin, &media_server(&ctx)?, ctx.param(1)).await
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`
///
/// The item is `404` to everyone but server admins, and never fetched again.
pub async fn quarantine_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    media::set_quarantine(&services, &admin, &media_server(&ctx)?, ctx.param(1), true)
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`
pub async fn unquarantine_media(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    media::set_quarantine(&services, &admin, &media_server(&ctx)?, ctx.param(1), false)
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`
///
/// Deletes other servers' media cached before `before_ts` (required, ms since the epoch).
pub async fn purge_media_cache(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let before_ts = ctx
        .query("before_ts")
        .ok_or_else(|| Error::missing_param("before_ts is required"))?
        .parse::<u64>()
        .map_err(|_| Error::invalid_param("before_ts must be a non-negative integer"))?;
    media::purge_cache(&services, &admin, before_ts).await
}

fn media_server(ctx: &Ctx) -> Result<ruma::OwnedServerName, Error> {
    ruma::OwnedServerName::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid server name {}", ctx.param(0))))
}
