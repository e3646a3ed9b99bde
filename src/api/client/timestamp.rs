//! Jump to date: the event of a room closest to a timestamp (`/timestamp_to_event`).

use std::sync::Arc;

use ruma::{
    api::{client::room::get_event_by_timestamp, Direction},
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    api::Ctx,
    error::{Error, Result},
    service::{
        rooms::{timestamps, visibility},
        Services,
    },
};

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
///
/// The closest event the user may see at or after (`dir=f`) or at or before (`dir=b`) `ts`.
/// Only members, former members and anyone in a `world_readable` room may ask (`403` otherwise,
/// as Synapse answers). When this server's history may have a hole on that side of the event it
/// found (or it found none), other servers of the room are asked (see
/// [`timestamps::find`]). `404 M_NOT_FOUND` when there is no such event.
pub async fn get_event_by_timestamp(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let room_id = &request.room_id;
    if visibility::readable_state(&services, room_id, ctx.user())?.is_none() {
        return Err(Error::forbidden(format!(
            "{} may not read {room_id}",
            ctx.user()
        )));
    }
    let ts = u64::from(request.ts.get());
    let forwards = request.dir == Direction::Forward;
    let found = timestamps::find(&services, room_id, ctx.user(), ts, forwards)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "no event from {ts} {}",
                if forwards { "forwards" } else { "backwards" }
            ))
        })?;
    Ok(get_event_by_timestamp::v1::Response::new(
        found.event_id,
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(found.origin_server_ts)),
    ))
}
