//! Presence: a user's own state and status message, and other users' presence.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
    RoomId,
};

use crate::{
    api::Ctx,
    error::{Error, Result},
    service::{
        presence::{self, State, MAX_STATUS_MSG_BYTES},
        privacy, Services,
    },
    util,
};

/// `PUT /_matrix/client/v3/presence/{userId}/status`
///
/// Sets the caller's own presence (`M_FORBIDDEN` for anyone else) and status message; a missing
/// `status_msg` clears it. Counts as activity. A body that does not match the schema (no
/// `presence`, a value outside the enum, a `status_msg` over 1024 bytes) is `M_BAD_JSON`.
pub async fn set_presence(
    services: Arc<Services>,
    ctx: Ctx,
    request: set_presence::v3::Request,
) -> Result<set_presence::v3::Response> {
    ctx.require_self(&request.user_id, "set the presence of")?;
    let state = State::parse(request.presence.as_str()).ok_or_else(|| {
        Error::bad_json("presence must be one of online, unavailable and offline")
    })?;
    if request
        .status_msg
        .as_ref()
        .is_some_and(|text| text.len() > MAX_STATUS_MSG_BYTES)
    {
        return Err(Error::bad_json(format!(
            "status_msg is longer than {MAX_STATUS_MSG_BYTES} bytes"
        )));
    }
    let device = ctx.device();
    presence::set_local(
        &services,
        &request.user_id,
        device,
        state,
        request.status_msg,
    )?;
    Ok(set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
///
/// The caller's own presence, or that of a user who shares a joined room with the caller
/// (`M_FORBIDDEN` otherwise, as the spec's security considerations publish presence to room
/// members only). `M_NOT_FOUND` for a local user who does not exist and a remote user this
/// server has never seen in a room. A user without stored presence is `offline`.
pub async fn get_presence(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_presence::v3::Request,
) -> Result<get_presence::v3::Response> {
    let user_id = request.user_id;
    let requester = ctx.user();
    if user_id != requester {
        let known = if services.presence.is_local(&user_id) {
            services.users.exists(&user_id)?
        } else {
            !services.rooms.members.iter_rooms(&user_id)?.is_empty()
        };
        if !known {
            return Err(Error::not_found(format!("user {user_id} is unknown")));
        }
        let rooms = services.rooms.members.iter_joined_rooms(requester)?;
        let joined: HashSet<&RoomId> = rooms.iter().map(|room_id| &**room_id).collect();
        if !presence::shares_room(&services, &user_id, &joined)? {
            return Err(Error::forbidden(format!(
                "you share no room with {user_id}, so you may not see their presence"
            )));
        }
        if !privacy::may_see(
            &services,
            &user_id,
            privacy::Viewer::User(requester),
            privacy::Subject::LastSeen,
        )? {
            return Err(Error::forbidden(format!(
                "{user_id} does not show you their presence"
            )));
        }
    }
    let entry = services.presence.get(&user_id)?.unwrap_or_default();
    let now = util::now_millis();
    let mut response = get_presence::v3::Response::new(PresenceState::from(entry.state.as_str()));
    response.currently_active = Some(services.presence.currently_active(&user_id, &entry, now));
    response.last_active_ago = (entry.last_active != 0)
        .then(|| Duration::from_millis(now.saturating_sub(entry.last_active)));
    response.status_msg = entry.status_msg;
    Ok(response)
}
