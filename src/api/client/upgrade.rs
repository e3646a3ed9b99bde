//! Room upgrades: a room of a new version replaces an old one (see [`upgrade::upgrade`]).

use std::sync::Arc;

use ruma::api::client::room::upgrade_room;

use crate::{
    api::Ctx,
    error::Result,
    service::{rooms::upgrade, Services},
};

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
///
/// Upgrades the room to `new_version` (see [`upgrade::upgrade`] for the rules).
pub async fn upgrade_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: upgrade_room::v3::Request,
) -> Result<upgrade_room::v3::Response> {
    let replacement_room = upgrade::upgrade(
        &services,
        &request.room_id,
        ctx.user(),
        request.new_version.as_str(),
        &request.additional_creators,
    )
    .await?;
    Ok(upgrade_room::v3::Response::new(replacement_room))
}
