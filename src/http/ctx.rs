//! Builds the request context ([`Ctx`], owned by `api/`) from a request: access-token
//! authentication from the headers (before the body is read) and query parsing.

use std::{collections::HashMap, sync::Arc};

use http::request::Parts;
use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId};
use serde_json::Value;

use crate::{
    api::ctx::{percent_decode, unknown_token_data, Auth, Ctx},
    error::{Error, Result},
    service::{appservice::Appservice, Services},
    util,
};

/// A request's user and device, from its access token (the `Authorization` header or the
/// `access_token` query parameter): read from the headers alone, before any of the body; and
/// the appservice, when the token is an appservice's `as_token`.
pub(super) type Session = Option<(OwnedUserId, OwnedDeviceId, Option<Arc<Appservice>>)>;

/// Authenticates a request as `auth` asks, from its headers and query alone.
pub(super) fn authenticate(services: &Services, auth: Auth, parts: &Parts) -> Result<Session> {
    if auth == Auth::None || auth == Auth::Server {
        return Ok(None);
    }
    let header_token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query_token = || {
        parts
            .uri
            .query()
            .map(url_decode_pairs)
            .and_then(|mut query| query.remove("access_token"))
    };
    let Some(token) = header_token.or_else(query_token) else {
        if auth == Auth::Required {
            return Err(Error::matrix(
                ErrorKind::MissingToken,
                "missing access token",
            ));
        }
        return Ok(None);
    };
    let unknown = |soft_logout| {
        Error::matrix(
            ErrorKind::UnknownToken(unknown_token_data(soft_logout)),
            "unknown access token",
        )
    };
    let Some(session) = services.users.find_token(&token)? else {
        let appservice = services
            .appservices
            .find_by_token(&token)
            .ok_or_else(|| unknown(false))?;
        return appservice_session(services, appservice, parts).map(Some);
    };
    if session
        .expires_at
        .is_some_and(|expiry| expiry <= util::now_millis())
    {
        return Err(unknown(true));
    }
    if services.admin.flags.is_locked(&session.user_id) && !is_logout(parts.uri.path()) {
        // Spec v1.18, "Account locking": every request but the two logouts, with soft_logout.
        return Err(Error::matrix(
            ErrorKind::UserLocked,
            format!("{} is locked", session.user_id),
        ));
    }
    services.stats.activity.record(&session.user_id)?;
    Ok(Some((session.user_id, session.device_id, None)))
}

/// The session of a request made with an appservice's `as_token`: the user it acts as
/// (`user_id`) and the device (`device_id`, or MSC3202's prefixed name).
fn appservice_session(
    services: &Services,
    appservice: Arc<Appservice>,
    parts: &Parts,
) -> Result<(OwnedUserId, OwnedDeviceId, Option<Arc<Appservice>>)> {
    let query = parts.uri.query().map(url_decode_pairs).unwrap_or_default();
    let device = query
        .get("device_id")
        .or_else(|| query.get("org.matrix.msc3202.device_id"));
    let (user, device) = services.appservices.acting_as(
        &services.users,
        &appservice,
        query.get("user_id").map(String::as_str),
        device.map(String::as_str),
    )?;
    Ok((user, device, Some(appservice)))
}

/// Whether a path is `POST /logout` or `POST /logout/all` (any version), which a locked
/// account may still use.
fn is_logout(path: &str) -> bool {
    path.strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest == "logout" || rest == "logout/all")
}

/// The context of an authenticated request with its body.
pub(super) fn build(
    session: Session,
    params: Vec<String>,
    parts: &Parts,
    (body, body_bytes): (Value, bytes::Bytes),
) -> Ctx {
    let query: HashMap<String, String> =
        parts.uri.query().map(url_decode_pairs).unwrap_or_default();
    let (user, device, appservice) = match session {
        Some((user, device, appservice)) => (Some(user), Some(device), appservice),
        None => (None, None, None),
    };
    Ctx {
        origin: None,
        user,
        device,
        appservice,
        client_ip: parts
            .extensions
            .get::<super::listener::ClientAddr>()
            .map(|client| client.0),
        params,
        query,
        raw_query: parts.uri.query().unwrap_or("").to_owned(),
        body,
        body_bytes,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        raw_body: parking_lot::Mutex::new(None),
    }
}

fn url_decode_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_logout;

    #[test]
    fn only_the_two_logouts_are_open_to_locked_accounts() {
        for (path, expected) in [
            ("/_matrix/client/v3/logout", true),
            ("/_matrix/client/r0/logout/all", true),
            ("/_matrix/client/v3/logout/other", false),
            ("/_matrix/client/v3/account/whoami", false),
            ("/_synapse/admin/v1/logout", false),
            ("/_matrix/client/v3/rooms/logout", false),
        ] {
            assert_eq!(is_logout(path), expected, "{path}");
        }
    }
}
