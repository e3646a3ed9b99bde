//! Spaces: a room's hierarchy for another server.

use std::sync::Arc;

use crate::{
    api::client::space::suggested_only,
    api::{Ctx, HandlerResult},
    service::{rooms::spaces, Services},
};

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`
///
/// The room's summary with its links, the summaries of the children this server is in and the
/// asking server may see, and the children it may not; `404 M_NOT_FOUND` for a room this server
/// is not in or the asking server may not see.
/// Untyped: ruma's `RoomSummary` leaves out `join_rule` when it is `public`.
pub async fn get_hierarchy(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    spaces::federation_hierarchy(&services, ctx.origin(), &room_id, suggested_only(&ctx)?)
}
