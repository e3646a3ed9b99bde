//! Reporting content: users report events, rooms and users to this server's admins, who read
//! the reports through Synapse's admin API (`service::reports`).

use std::sync::Arc;

use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use crate::{
    api::Ctx,
    error::Result,
    service::{reports, Services},
};

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
///
/// Only members may report an event of their room; anyone else, or an event the room does not
/// hold, gets `404 M_NOT_FOUND`.
pub async fn report_content(
    services: Arc<Services>,
    ctx: Ctx,
    request: report_content::v3::Request,
) -> Result<report_content::v3::Response> {
    let target = (&*request.room_id, &*request.event_id);
    reports::report_event(&services, ctx.user(), target, request.reason)?;
    Ok(report_content::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
///
/// Anyone may report a room this server knows; `404 M_NOT_FOUND` for another.
pub async fn report_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: report_room::v3::Request,
) -> Result<report_room::v3::Response> {
    reports::report_room(&services, ctx.user(), &request.room_id, request.reason)?;
    Ok(report_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/users/{userId}/report`
///
/// Anyone may report a user; `404 M_NOT_FOUND` for an unknown account of this server (users of
/// other servers are taken on trust).
pub async fn report_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: report_user::v3::Request,
) -> Result<report_user::v3::Response> {
    reports::report_user(&services, ctx.user(), &request.user_id, request.reason)?;
    Ok(report_user::v3::Response::new())
}
