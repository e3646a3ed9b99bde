//! Spaces: the hierarchy of rooms below a space.

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        rooms::spaces::{self, WalkPosition, WalkRequest},
        Services,
    },
};

/// A non-negative integer query parameter, capped at `max`; `M_INVALID_PARAM` otherwise.
fn count_param(ctx: &Ctx, name: &str, default: usize, max: usize, minimum: usize) -> Result<usize> {
    match ctx.query(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|value| *value >= minimum as u64)
            .map(|value| usize::try_from(value).unwrap_or(max).min(max))
            .ok_or_else(|| {
                Error::invalid_param(format!("{name} must be an integer of at least {minimum}"))
            }),
    }
}

/// `suggested_only`: `true` or `false` (the default); `M_INVALID_PARAM` otherwise.
pub fn suggested_only(ctx: &Ctx) -> Result<bool> {
    match ctx.query("suggested_only") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Error::invalid_param("suggested_only must be true or false")),
    }
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
///
/// Depth-first from the room, each space's children in the spec's order; rooms the user may not
/// see are left out (the requested one is `403`). `limit` is capped at 50 and `max_depth` at 50;
/// `next_batch` carries the walk's position, and a `from` with other `suggested_only` or
/// `max_depth` is `400 M_INVALID_PARAM`.
/// Untyped: ruma's `RoomSummary` leaves out `join_rule` when it is `public` (`spaces::hierarchy_walks_depth_first_with_paging_depth_and_suggestions` checks it), and drops the fields it does not know from the summaries other servers sent.
pub async fn get_hierarchy(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let suggested_only = suggested_only(&ctx)?;
    let limit = count_param(&ctx, "limit", spaces::MAX_LIMIT, spaces::MAX_LIMIT, 1)?;
    let max_depth = count_param(&ctx, "max_depth", spaces::MAX_DEPTH, spaces::MAX_DEPTH, 0)?;
    let from = ctx
        .query("from")
        .map(|token| WalkPosition::from_token(token, &room_id, suggested_only, max_depth))
        .transpose()?;
    let request = WalkRequest {
        user: ctx.user(),
        room_id: &room_id,
        suggested_only,
        max_depth,
        limit,
    };
    let (rooms, next) = spaces::walk(&services, &request, from).await?;
    let mut answer = json!({ "rooms": rooms });
    if let Some(next) = next {
        answer["next_batch"] = json!(next.to_token());
    }
    Ok(answer)
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (and MSC3266's unstable
/// `/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary`)
///
/// Token optional: without one, only rooms anyone may see (see `rooms::room_summary`).
/// The request is ruma's; the answer is written here, since ruma's leaves out a `public`
/// `join_rule` (its default), which clients then have to assume.
pub async fn get_room_summary(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request: ruma::api::client::room::get_summary::v1::Request = ctx.parse()?;
    let (mut summary, membership) = crate::service::rooms::room_summary::room_summary(
        &services,
        ctx.user.as_deref(),
        request.room_id_or_alias.as_str(),
        request.via,
    )
    .await?;
    if let Some(membership) = membership {
        summary["membership"] = json!(membership.as_str());
    }
    Ok(summary)
}
