//! The request context handed to handlers: the authenticated user, path parameters, query and body.

use std::collections::HashMap;

use http::request::Parts;
use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::Services,
    util,
};

/// Which authentication an endpoint requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No access token is looked at.
    None,
    /// An access token is required.
    Required,
    /// An access token is used when present.
    Optional,
    /// A server-server request signed with `X-Matrix`.
    Server,
}

/// A parsed request.
pub struct Ctx {
    /// The authenticated origin server of a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    pub user: Option<OwnedUserId>,
    pub device: Option<OwnedDeviceId>,
    pub params: Vec<String>,
    pub query: HashMap<String, String>,
    /// The query string as sent, for parameters that repeat.
    pub raw_query: String,
    pub body: Value,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The unread body, on raw routes only (see [`super::raw_route`]); in a mutex so that the
    /// context stays `Sync` while handlers hold it across awaits.
    pub raw_body: parking_lot::Mutex<Option<axum::body::Body>>,
}

pub(super) fn build(
    services: &Services,
    auth: Auth,
    params: Vec<String>,
    parts: &Parts,
    body: Value,
) -> Result<Ctx> {
    let query: HashMap<String, String> =
        parts.uri.query().map(url_decode_pairs).unwrap_or_default();
    let mut ctx = Ctx {
        origin: None,
        user: None,
        device: None,
        params,
        query,
        raw_query: parts.uri.query().unwrap_or("").to_owned(),
        body,
        headers: parts.headers.clone(),
        raw_body: parking_lot::Mutex::new(None),
    };
    if auth == Auth::None || auth == Auth::Server {
        return Ok(ctx);
    }
    let header_token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = header_token.or_else(|| ctx.query.get("access_token").cloned());
    let Some(token) = token else {
        if auth == Auth::Required {
            return Err(Error::matrix(
                ErrorKind::MissingToken,
                "missing access token",
            ));
        }
        return Ok(ctx);
    };
    let unknown = |soft_logout| {
        Error::matrix(
            ErrorKind::UnknownToken(unknown_token_data(soft_logout)),
            "unknown access token",
        )
    };
    let session = services
        .users
        .find_token(&token)?
        .ok_or_else(|| unknown(false))?;
    if session
        .expires_at
        .is_some_and(|expiry| expiry <= util::now_millis())
    {
        return Err(unknown(true));
    }
    ctx.user = Some(session.user_id);
    ctx.device = Some(session.device_id);
    Ok(ctx)
}

/// The `M_UNKNOWN_TOKEN` details, with `soft_logout` for expired (not revoked) tokens.
pub fn unknown_token_data(soft_logout: bool) -> ruma::api::error::UnknownTokenErrorData {
    let mut data = ruma::api::error::UnknownTokenErrorData::new();
    data.soft_logout = soft_logout;
    data
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

/// Decodes `%XX` escapes and `+` as space.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    None => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Ctx {
    /// The authenticated user; only call on routes with [`Auth::Required`].
    pub fn user(&self) -> &UserId {
        self.user.as_deref().expect("route requires authentication")
    }

    /// The authenticated device.
    pub fn device(&self) -> &str {
        self.device
            .as_deref()
            .map(|device| device.as_str())
            .expect("route requires authentication")
    }

    /// The authenticated origin server; only call on routes with [`Auth::Server`].
    pub fn origin(&self) -> &ruma::ServerName {
        self.origin
            .as_deref()
            .expect("route requires server authentication")
    }

    /// Path parameter `index`.
    pub fn param(&self, index: usize) -> &str {
        self.params.get(index).map(String::as_str).unwrap_or("")
    }

    /// Path parameter `index` as a room ID.
    pub fn room_param(&self, index: usize) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(self.param(index))
            .map_err(|_| Error::invalid_param(format!("invalid room ID {}", self.param(index))))
    }

    /// Path parameter `index` as a user ID.
    pub fn user_param(&self, index: usize) -> Result<OwnedUserId> {
        OwnedUserId::try_from(self.param(index))
            .map_err(|_| Error::invalid_param(format!("invalid user ID {}", self.param(index))))
    }

    /// The body as a typed struct; shape errors are `M_BAD_JSON`.
    pub fn body_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.body.clone())
            .map_err(|error| Error::bad_json(format!("invalid request body: {error}")))
    }

    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("%21room%3Ax"), "!room:x");
        assert_eq!(super::percent_decode("a+b%"), "a b%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }
}
