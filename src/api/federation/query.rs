//! Queries: profiles and room aliases of this server's users and rooms.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedUserId};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::Services,
};

/// `GET /_matrix/federation/v1/query/profile`
pub async fn get_profile_information(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user = ctx
        .query("user_id")
        .ok_or_else(|| Error::missing_param("missing user_id"))?;
    let user = OwnedUserId::try_from(user)
        .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))?;
    if user.server_name() != services.globals.server_name() || !services.users.exists(&user)? {
        return Err(Error::not_found(format!("user {user} not found")));
    }
    let profile = services.users.get_profile(&user)?.unwrap_or_default();
    let mut answer = json!({});
    for field in ["displayname", "avatar_url"] {
        let wanted = ctx.query("field").is_none_or(|asked| asked == field);
        if let (true, Some(value)) = (wanted, profile.get(field)) {
            answer[field] = value.clone();
        }
    }
    Ok(answer)
}

/// `GET /_matrix/federation/v1/query/directory`
pub async fn get_room_information(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let alias = ctx
        .query("room_alias")
        .ok_or_else(|| Error::missing_param("missing room_alias"))?;
    let alias = OwnedRoomAliasId::try_from(alias)
        .map_err(|_| Error::invalid_param(format!("invalid alias {alias}")))?;
    let (room_id, _) = services
        .rooms
        .alias
        .get(&alias)?
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    let servers: Vec<Value> = services
        .rooms
        .members
        .servers_in_room(&room_id)?
        .iter()
        .map(|server| json!(server))
        .collect();
    Ok(json!({ "room_id": room_id, "servers": servers }))
}

/// `GET /_matrix/federation/v1/query/{queryType}`
///
/// The generic query: `profile` and `directory` answer as their own routes do (the router sends
/// those two paths there directly; this covers a type that reaches the generic route anyway). Any
/// other type is `404 M_NOT_FOUND`, as Synapse answers a query type it has no handler for.
pub async fn query_info(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    match ctx.param(0) {
        "profile" => get_profile_information(services, ctx).await,
        "directory" => get_room_information(services, ctx).await,
        other => Err(Error::not_found(format!("no query of type {other}"))),
    }
}

/// `GET /_matrix/federation/v1/publicRooms` and `POST` with a filter: this server's directory.
pub async fn get_public_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let request = crate::api::PublicRoomsRequest::from_ctx(&ctx)?;
    crate::service::rooms::alias::public_rooms(
        &services,
        request.limit,
        request.since,
        request.term.as_deref(),
    )
}

/// `GET /_matrix/federation/v1/openid/userinfo`
///
/// Not signed with `X-Matrix`: the caller is whoever holds a token from
/// `/user/{userId}/openid/request_token`. An unknown or expired token is `401 M_UNKNOWN_TOKEN`.
pub async fn get_openid_userinfo(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let token = ctx
        .query("access_token")
        .ok_or_else(|| Error::missing_param("missing access_token"))?;
    let user = services.users.find_openid_token(token)?.ok_or_else(|| {
        Error::matrix(
            ruma::api::error::ErrorKind::UnknownToken(crate::api::ctx::unknown_token_data(false)),
            "unknown or expired OpenID token",
        )
    })?;
    Ok(json!({ "sub": user }))
}
