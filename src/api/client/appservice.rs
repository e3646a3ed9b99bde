//! Client-server endpoints only appservices use: the ping and the appservice room directory;
//! and [`appservice_of`], which `/register` and `/login` use to find the appservice of a
//! request with type `m.login.application_service` (those routes take no access token).

use std::{sync::Arc, time::Duration};

use ruma::api::{
    client::{
        appservice::{request_ping, set_room_visibility},
        room::Visibility,
    },
    error::ErrorKind,
};

use crate::{
    api::{ctx::unknown_token_data, Ctx},
    error::{Error, Result},
    service::{
        appservice::{accounts, Appservice},
        Services,
    },
};

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
///
/// Only with the `as_token` of `appserviceId` (`403 M_FORBIDDEN` otherwise); calls the
/// appservice's `POST /_matrix/app/v1/ping` and answers how long that took. Errors as the spec
/// lists them: `M_URL_NOT_SET`, `502 M_BAD_STATUS`, `502 M_CONNECTION_FAILED`,
/// `504 M_CONNECTION_TIMEOUT`.
pub async fn request_ping(
    services: Arc<Services>,
    ctx: Ctx,
    request: request_ping::v1::Request,
) -> Result<request_ping::v1::Response> {
    let caller = require_appservice(&ctx)?;
    let transaction_id = request.transaction_id.map(|id| id.to_string());
    let millis = accounts::ping(&services, caller, &request.appservice_id, transaction_id).await?;
    Ok(request_ping::v1::Response::new(Duration::from_millis(
        millis,
    )))
}

/// `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`
///
/// Publishes or hides a room in the room directory for an appservice. Deviation: the network
/// is not recorded, so the room is listed in the server's one directory (Synapse keeps one list
/// per network, filtered by `third_party_instance_id`).
pub async fn set_room_visibility(
    services: Arc<Services>,
    ctx: Ctx,
    request: set_room_visibility::v3::Request,
) -> Result<set_room_visibility::v3::Response> {
    require_appservice(&ctx)?;
    if !services.rooms.exists(&request.room_id)? {
        return Err(Error::not_found(format!(
            "room {} not found",
            request.room_id
        )));
    }
    let public = request.visibility == Visibility::Public;
    services.rooms.alias.set_public(&request.room_id, public)?;
    Ok(set_room_visibility::v3::Response::new())
}

/// The `origin_server_ts` of an event an appservice sends with `?ts=` (spec v1.19,
/// "Timestamp massaging"); `None` for anyone else, who cannot set it.
pub fn timestamp(ctx: &Ctx) -> Result<Option<u64>> {
    match (&ctx.appservice, ctx.query("ts")) {
        (Some(_), Some(ts)) => ts
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid_param(format!("invalid ts {ts}"))),
        _ => Ok(None),
    }
}

/// The appservice of an authenticated request; `403 M_FORBIDDEN` for a user's access token.
fn require_appservice(ctx: &Ctx) -> Result<&Appservice> {
    ctx.appservice
        .as_deref()
        .ok_or_else(|| Error::forbidden("only an appservice may use this endpoint"))
}

/// The appservice whose `as_token` a request on an unauthenticated route carries (the
/// `Authorization` header or `access_token`): `401 M_MISSING_TOKEN` without one,
/// `401 M_UNKNOWN_TOKEN` for another token.
pub fn appservice_of(services: &Services, ctx: &Ctx) -> Result<Arc<Appservice>> {
    let token = ctx
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or_else(|| ctx.query("access_token"))
        .ok_or_else(|| Error::matrix(ErrorKind::MissingToken, "missing access token"))?;
    services.appservices.find_by_token(token).ok_or_else(|| {
        Error::matrix(
            ErrorKind::UnknownToken(unknown_token_data(false)),
            "unknown access token",
        )
    })
}
