//! The request context handed to handlers (the authenticated user or server, path parameters,
//! query and body), what handlers return, and the one typed-request extractor: [`Ctx::parse`]
//! turns a request into the ruma request type of its endpoint. `http/` builds the context.

use std::collections::HashMap;

use ruma::{
    api::{
        error::{DeserializationError, ErrorKind, FromHttpRequestError},
        IncomingRequest,
    },
    OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// What a JSON handler returns: a JSON body sent with 200.
pub type HandlerResult = Result<Value>;
/// What a raw handler returns: a whole response (media bytes with their headers).
pub type RawResult = Result<axum::response::Response>;

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
    /// The appservice whose `as_token` authenticated the request.
    pub appservice: Option<std::sync::Arc<crate::service::appservice::Appservice>>,
    /// The client's address: the peer's, or for a trusted reverse proxy the one it forwards
    /// (`http::listener::ClientAddr`); `None` only for a request that came through no listener.
    pub client_ip: Option<std::net::IpAddr>,
    /// Path parameters, percent-decoded, in the order of the path template.
    pub params: Vec<String>,
    pub query: HashMap<String, String>,
    /// The query string as sent, for parameters that repeat.
    pub raw_query: String,
    pub body: Value,
    /// The body as sent (empty on raw routes), for [`Ctx::parse`].
    pub body_bytes: bytes::Bytes,
    /// The request method and URI, for [`Ctx::parse`].
    pub method: http::Method,
    pub uri: http::Uri,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The unread body, on raw routes only; in a mutex so that the context stays `Sync` while
    /// handlers hold it across awaits.
    pub raw_body: parking_lot::Mutex<Option<axum::body::Body>>,
}

/// The `M_UNKNOWN_TOKEN` details, with `soft_logout` for expired (not revoked) tokens.
pub fn unknown_token_data(soft_logout: bool) -> ruma::api::error::UnknownTokenErrorData {
    let mut data = ruma::api::error::UnknownTokenErrorData::new();
    data.soft_logout = soft_logout;
    data
}

/// The body length a request declares in `Content-Length`, when it declares a readable one: the
/// limits refuse an over-long body on it before reading any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
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

    /// Fails with `M_FORBIDDEN` unless `user_id` is the authenticated user: `action` names what
    /// only users themselves may do (`"set the presence of"`).
    pub fn require_self(&self, user_id: &UserId, action: &str) -> Result<()> {
        if user_id != self.user() {
            return Err(Error::forbidden(format!("cannot {action} {user_id}")));
        }
        Ok(())
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

    /// The request as the ruma request type `R` of its endpoint: the one extractor of typed
    /// handlers (`http::typed` calls it). An empty body counts as `{}`, as Synapse reads it.
    /// Errors: a body of the wrong shape is `M_BAD_JSON`, a missing query parameter
    /// `M_MISSING_PARAM`, a bad query parameter or path identifier `M_INVALID_PARAM`.
    pub fn parse<R: IncomingRequest>(&self) -> Result<R> {
        let empty = self.body_bytes.iter().all(u8::is_ascii_whitespace);
        let body: &[u8] = if empty { b"{}" } else { &self.body_bytes };
        let mut request = http::Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .body(body)
            .map_err(|error| Error::Internal(format!("rebuilding a request: {error}")))?;
        *request.headers_mut() = self.headers.clone();
        R::try_from_http_request(request, &self.params).map_err(request_error)
    }
}

/// The Matrix error for a request ruma could not parse.
fn request_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Query(error)) => {
            let message = error.to_string();
            if message.starts_with("missing field") {
                Error::matrix(ErrorKind::MissingParam, format!("invalid query: {message}"))
            } else {
                Error::invalid_param(format!("invalid query: {message}"))
            }
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(error)) => {
            Error::invalid_param(format!("invalid identifier: {error}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Header(error)) => {
            Error::matrix(ErrorKind::MissingParam, format!("invalid header: {error}"))
        }
        other => Error::bad_json(format!("invalid request: {other}")),
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
