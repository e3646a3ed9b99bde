//! Synapse admin API handlers for rooms (`docs/admin_api.md`, "Rooms"): each parses the request
//! and calls one operation of `service::synapse_admin::rooms` as a checked admin.

use std::sync::Arc;

use crate::{
    api::{Ctx, HandlerResult},
    service::{
        synapse_admin::{
            rooms::{self, MessagesQuery, RoomQuery},
            Admin, PageRequest,
        },
        Services,
    },
};

/// `GET /_synapse/admin/v1/rooms`
///
/// A page of rooms (`from`, `limit`), in `order_by` order (`dir`), matching `search_term`.
pub async fn list_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let query = RoomQuery {
        page: PageRequest::parse(ctx.query("from"), ctx.query("limit"))?,
        order_by: ctx.query("order_by"),
        dir: ctx.query("dir"),
        search_term: ctx.query("search_term"),
    };
    rooms::list(&services, &admin, &query)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`
pub async fn get_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    rooms::get(&services, &admin, &ctx.room_param(0)?)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`
pub async fn room_members(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    rooms::members(&services, &admin, &ctx.room_param(0)?)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`
pub async fn room_state(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    rooms::state(&services, &admin, &ctx.room_param(0)?)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`
///
/// A page of the room's events with the client `/messages` tokens (`from`, `to`, `dir`, default
/// `f`, `limit`, default 10); every event, whatever its visibility. `filter` is not read.
pub async fn room_messages(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = Admin::check(&services, ctx.user())?;
    let query = MessagesQuery {
        from: ctx.query("from"),
        to: ctx.query("to"),
        dir: ctx.query("dir"),
        limit: ctx.query("limit"),
    };
    rooms::messages(&services, &admin, &ctx.room_param(0)?, &query)
}
