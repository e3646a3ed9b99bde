//! Queries: profiles and room aliases of this server's users and rooms.

use std::sync::Arc;

use ruma::api::federation::{
    openid::get_openid_userinfo,
    query::{get_custom_information, get_profile_information, get_room_information},
};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{privacy, Services},
};

/// `GET /_matrix/federation/v1/query/profile`
///
/// `displayname` and `avatar_url` of a local user, or the one `field` asks for.
pub async fn get_profile_information(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_profile_information::v1::Request,
) -> Result<get_profile_information::v1::Response> {
    let user = request.user_id;
    if user.server_name() != services.globals.server_name() || !services.users.exists(&user)? {
        return Err(Error::not_found(format!("user {user} not found")));
    }
    let profile =
        privacy::visible_profile(&services, &user, privacy::Viewer::Anonymous)?.unwrap_or_default();
    let mut response = get_profile_information::v1::Response::new();
    for field in ["displayname", "avatar_url"] {
        let wanted = request
            .field
            .as_ref()
            .is_none_or(|asked| asked.as_str() == field);
        if let (true, Some(value)) = (wanted, profile.get(field)) {
            response.set(field.to_owned(), value.clone());
        }
    }
    Ok(response)
}

/// `GET /_matrix/federation/v1/query/directory`
pub async fn get_room_information(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_room_information::v1::Request,
) -> Result<get_room_information::v1::Response> {
    let alias = request.room_alias;
    let (room_id, _) = services
        .rooms
        .alias
        .get(&alias)?
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    let servers = services.rooms.members.servers_in_room(&room_id)?;
    Ok(get_room_information::v1::Response::new(
        room_id,
        servers.iter().cloned().collect(),
    ))
}

/// `GET /_matrix/federation/v1/query/{queryType}`
///
/// The generic query: `profile` and `directory` answer as their own routes do (the router sends
/// those two paths there directly; this covers a type that reaches the generic route anyway). Any
/// other type is `404 M_NOT_FOUND`, as Synapse answers a query type it has no handler for.
pub async fn query_info(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_custom_information::v1::Request,
) -> Result<get_custom_information::v1::Response> {
    let body = match request.query_type.as_str() {
        "profile" => {
            let request = ctx.parse()?;
            let response = get_profile_information(services, ctx, request).await?;
            serde_json::to_value(response.into_iter().collect::<serde_json::Map<_, _>>())
        }
        "directory" => {
            let request = ctx.parse()?;
            let response = get_room_information(services, ctx, request).await?;
            Ok(serde_json::json!({ "room_id": response.room_id, "servers": response.servers }))
        }
        other => return Err(Error::not_found(format!("no query of type {other}"))),
    };
    Ok(get_custom_information::v1::Response::new(
        body.map_err(Error::internal)?,
    ))
}

/// `GET /_matrix/federation/v1/publicRooms` and `POST` with a filter: this server's directory.
/// Untyped: ruma's `PublicRoomsChunk` leaves out `join_rule` when it is `public`.
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
pub async fn get_openid_userinfo(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_openid_userinfo::v1::Request,
) -> Result<get_openid_userinfo::v1::Response> {
    let user = services
        .users
        .find_openid_token(&request.access_token)?
        .ok_or_else(|| {
            Error::matrix(
                ruma::api::error::ErrorKind::UnknownToken(crate::api::ctx::unknown_token_data(
                    false,
                )),
                "unknown or expired OpenID token",
            )
        })?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
