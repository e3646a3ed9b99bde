//! Room aliases and the public room directory.

use std::sync::Arc;

use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::get_room_visibility,
        room::{aliases, Visibility},
    },
    RoomId, UserId,
};
use serde_json::{json, Value};

use super::require_joined;
use crate::api::PublicRoomsRequest;
use crate::service::appservice::sender as appservice_sender;
use crate::service::rooms::{alias as directory, power::PowerLevels};
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::Services,
};

/// Whether `user` has the level to send `m.room.canonical_alias` (its entry in `events`, or 50),
/// which it needs to delete an alias someone else made.
fn may_edit_canonical_alias(services: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    let levels = PowerLevels::load(services, room_id)?;
    let needed = levels
        .content()
        .pointer("/events/m.room.canonical_alias")
        .and_then(Value::as_i64)
        .unwrap_or(50);
    Ok(levels.user_level(user) >= needed)
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
///
/// An alias of another server is asked of that server (`/query/directory`); an unknown local
/// alias in an appservice's namespace is asked of that appservice first (it may create it).
pub async fn get_alias(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_alias::v3::Request,
) -> Result<get_alias::v3::Response> {
    let alias = request.room_alias;
    if alias.server_name() != services.globals.server_name() {
        let (room_id, servers) = directory::resolve_remote(&services, &alias).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    let mut found = services.rooms.alias.get(&alias)?;
    if found.is_none() && appservice_sender::query_alias(&services, &alias).await? {
        found = services.rooms.alias.get(&alias)?;
    }
    let (room_id, _) = found.ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    let servers = vec![services.globals.server_name().to_owned()];
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
///
/// A `room_id` that is not a room ID is `400 M_BAD_JSON`; an alias in an appservice's exclusive
/// namespace is `400 M_EXCLUSIVE` for anyone but that appservice.
pub async fn create_alias(
    services: Arc<Services>,
    ctx: Ctx,
    request: create_alias::v3::Request,
) -> Result<create_alias::v3::Response> {
    let alias = request.room_alias;
    if alias.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param("aliases must be on this server"));
    }
    let room_id = request.room_id;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    if services.rooms.alias.get(&alias)?.is_some() {
        return Err(Error::Conflict(format!("alias {alias} already exists")));
    }
    let appservices = &services.appservices;
    appservices.check_alias_not_exclusive(&alias, ctx.appservice.as_deref())?;
    services.rooms.alias.set(&alias, &room_id, ctx.user())?;
    Ok(create_alias::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
///
/// Allowed for the alias's creator and for room members with the power to change `m.room.canonical_alias`.
/// An alias the room's `m.room.canonical_alias` names is taken out of it (by the deleting user,
/// when they may send that event).
pub async fn delete_alias(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_alias::v3::Request,
) -> Result<delete_alias::v3::Response> {
    let alias = request.room_alias;
    let (room_id, creator) = services
        .rooms
        .alias
        .get(&alias)?
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    if creator != ctx.user()
        && (!services.rooms.members.is_joined(&room_id, ctx.user())?
            || !may_edit_canonical_alias(&services, &room_id, ctx.user())?)
    {
        return Err(Error::forbidden("you may not delete this alias"));
    }
    services.rooms.alias.remove(&alias, &room_id)?;
    directory::remove_from_canonical_alias(&services, &room_id, &alias, ctx.user()).await?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn get_room_aliases(
    services: Arc<Services>,
    ctx: Ctx,
    request: aliases::v3::Request,
) -> Result<aliases::v3::Response> {
    require_joined(&services, &request.room_id, ctx.user())?;
    let aliases = services.rooms.alias.iter_room_aliases(&request.room_id)?;
    Ok(aliases::v3::Response::new(aliases))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_room_visibility::v3::Request,
) -> Result<get_room_visibility::v3::Response> {
    let room_id = request.room_id;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    let visibility = if services.rooms.alias.is_public(&room_id)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
///
/// Untyped: ruma's request requires `visibility`, which the spec makes optional.
pub async fn set_room_visibility(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found(format!("room {room_id} not found")));
    }
    require_joined(&services, &room_id, ctx.user())?;
    let public = match ctx.body.get("visibility").and_then(Value::as_str) {
        // The spec: "Defaults to `public`."
        Some("public") | None => true,
        Some("private") => false,
        Some(_) => return Err(Error::invalid_param("visibility must be public or private")),
    };
    services.rooms.alias.set_public(&room_id, public)?;
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/publicRooms` and `POST` with a filter.
///
/// `server` asks another server's directory over federation. `since` tokens are offsets into
/// the list; `generic_search_term` matches name, topic and alias.
/// Untyped: ruma's `PublicRoomsChunk` leaves out `join_rule` when it is `public`, and a page from another server is passed on as that server sent it.
pub async fn get_public_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request = PublicRoomsRequest::from_ctx(&ctx)?;
    match ctx.query("server") {
        Some(server) if server != services.globals.server_name().as_str() => {
            let server = ruma::OwnedServerName::try_from(server)
                .map_err(|_| Error::invalid_param(format!("invalid server name {server}")))?;
            let path = "/_matrix/federation/v1/publicRooms";
            // A filter needs the POST form; a plain page is a GET.
            let Some(term) = &request.term else {
                let query = format!("{path}?limit={}&since={}", request.limit, request.since);
                return services
                    .federation_request(&server, http::Method::GET, &query, None)
                    .await;
            };
            let mut body =
                json!({ "limit": request.limit, "filter": { "generic_search_term": term } });
            if request.since > 0 {
                body["since"] = json!(request.since.to_string());
            }
            services
                .federation_request(&server, http::Method::POST, path, Some(&body))
                .await
        }
        _ => directory::public_rooms(
            &services,
            request.limit,
            request.since,
            request.term.as_deref(),
        ),
    }
}
