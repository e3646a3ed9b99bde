//! Jump to date: the event of a room closest to a timestamp (`/timestamp_to_event`).

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        rooms::{timestamps, visibility},
        Services,
    },
};

/// The `ts` and `dir` query parameters of both `timestamp_to_event` endpoints: the timestamp
/// and whether to look forwards.
pub fn ts_and_dir(ctx: &Ctx) -> Result<(u64, bool)> {
    let ts = ctx
        .query("ts")
        .ok_or_else(|| Error::missing_param("missing ts"))?;
    let ts = ts.parse::<u64>().map_err(|_| {
        Error::invalid_param(format!("ts must be a timestamp in milliseconds, not {ts}"))
    })?;
    let forwards = match ctx.query("dir") {
        Some("f") => true,
        Some("b") => false,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "dir must be f or b, not {other}"
            )))
        }
        None => return Err(Error::missing_param("missing dir")),
    };
    Ok((ts, forwards))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
///
/// The closest event the user may see at or after (`dir=f`) or at or before (`dir=b`) `ts`.
/// Only members, former members and anyone in a `world_readable` room may ask (`403` otherwise,
/// as Synapse answers). When this server's history may have a hole on that side of the event it
/// found (or it found none), other servers of the room are asked (see
/// [`timestamps::find`]). `404 M_NOT_FOUND` when there is no such event.
pub async fn get_event_by_timestamp(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let (ts, forwards) = ts_and_dir(&ctx)?;
    if visibility::readable_state(&services, &room_id, ctx.user())?.is_none() {
        return Err(Error::forbidden(format!(
            "{} may not read {room_id}",
            ctx.user()
        )));
    }
    let found = timestamps::find(&services, &room_id, ctx.user(), ts, forwards)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "no event from {ts} {}",
                if forwards { "forwards" } else { "backwards" }
            ))
        })?;
    Ok(json!({ "event_id": found.event_id, "origin_server_ts": found.origin_server_ts }))
}
