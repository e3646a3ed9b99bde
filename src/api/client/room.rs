//! Room creation.

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    service::{
        rooms::create::{self, NewRoom},
        Services,
    },
};

/// `POST /_matrix/client/v3/createRoom`
///
/// Creates the room (see [`create::create`] for the rules and the order of events); the body is
/// read as [`NewRoom`].
/// A suspended account gets `403 M_USER_SUSPENDED` (spec v1.18, "Account suspension").
/// Untyped: ruma refuses a `room_version` that is not a valid identifier (empty, over 32 characters, other than letters, digits, `.` and `-`) as `M_BAD_JSON`, where the spec's answer, kept here, is `M_UNSUPPORTED_ROOM_VERSION`.
pub async fn create_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    services.admin.flags.check_not_suspended(ctx.user())?;
    let request: NewRoom = ctx.body_as()?;
    let room_id = create::create(&services, ctx.user(), request).await?;
    Ok(json!({ "room_id": room_id }))
}
