//! The one place that turns an [`Error`] into a Matrix error response: errcode and HTTP status.

use axum::response::{IntoResponse, Response};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use serde_json::{json, Value};

use crate::error::Error;

/// The HTTP status of a Matrix error kind, as the spec pairs them.
pub fn status_of(kind: &ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Forbidden
        | ErrorKind::GuestAccessForbidden
        | ErrorKind::UserDeactivated
        | ErrorKind::ThreepidDenied
        | ErrorKind::CannotLeaveServerNoticeRoom
        | ErrorKind::UserSuspended
        | ErrorKind::WrongRoomKeysVersion(_) => StatusCode::FORBIDDEN,
        ErrorKind::UnknownToken(_)
        | ErrorKind::MissingToken
        | ErrorKind::Unauthorized
        | ErrorKind::UserLocked => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
        ErrorKind::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::CannotOverwriteMedia => StatusCode::CONFLICT,
        ErrorKind::NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::UserInUse
        | ErrorKind::RoomInUse
        | ErrorKind::InvalidUsername
        | ErrorKind::Exclusive => StatusCode::BAD_REQUEST,
        ErrorKind::DuplicateAnnotation => StatusCode::BAD_REQUEST,
        ErrorKind::BadStatus(_) | ErrorKind::ConnectionFailed => StatusCode::BAD_GATEWAY,
        ErrorKind::ConnectionTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A complete error body for a kind and message, including kind-specific fields.
pub fn body_of(kind: &ErrorKind, message: &str) -> Value {
    let mut body = json!({ "errcode": kind.errcode().to_string(), "error": message });
    match kind {
        ErrorKind::UnknownToken(data) => body["soft_logout"] = json!(data.soft_logout),
        // Spec v1.18, "Account locking": a locked account is soft-logged-out.
        ErrorKind::UserLocked => body["soft_logout"] = json!(true),
        ErrorKind::IncompatibleRoomVersion(data) => body["room_version"] = json!(data.room_version),
        ErrorKind::BadStatus(data) => {
            body["status"] = json!(data.status.map(|status| status.as_u16()));
            body["body"] = json!(data.body);
        }
        ErrorKind::WrongRoomKeysVersion(data) => {
            body["current_version"] = json!(data.current_version)
        }
        ErrorKind::LimitExceeded(_) => {
            if let Some(delay) = retry_delay(kind) {
                body["retry_after_ms"] =
                    json!(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            }
        }
        _ => {}
    }
    body
}

/// How long a rate-limited client should wait: at least a millisecond, so that `retry_after_ms`
/// is never 0 while the limit holds.
fn retry_delay(kind: &ErrorKind) -> Option<Duration> {
    match kind {
        ErrorKind::LimitExceeded(LimitExceededErrorData {
            retry_after: Some(RetryAfter::Delay(delay)),
            ..
        }) => Some((*delay).max(Duration::from_millis(1))),
        _ => None,
    }
}

/// A response with a status and a JSON body.
pub use crate::api::json_response;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix { kind, message } => {
                let mut response = json_response(status_of(&kind), &body_of(&kind, &message));
                if let Some(delay) = retry_delay(&kind) {
                    // Whole seconds, rounded up (RFC 9110, "Retry-After").
                    let seconds = delay.as_millis().div_ceil(1000);
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds as u64));
                }
                response
            }
            Error::Conflict(message) => json_response(
                StatusCode::CONFLICT,
                &json!({ "errcode": "M_UNKNOWN", "error": message }),
            ),
            Error::Refused(message) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "errcode": "M_FORBIDDEN", "error": message }),
            ),
            Error::RequestTimeout(message) => json_response(
                StatusCode::REQUEST_TIMEOUT,
                &json!({ "errcode": "M_UNKNOWN", "error": message }),
            ),
            Error::Uiaa(info) => json_response(StatusCode::UNAUTHORIZED, &info),
            Error::Remote { server, source } => {
                tracing::warn!(
                    %server,
                    error = %crate::error::with_sources(source.as_ref()),
                    "remote server failed"
                );
                json_response(
                    StatusCode::BAD_GATEWAY,
                    &json!({ "errcode": "M_UNKNOWN", "error": "a remote server failed" }),
                )
            }
            other => {
                tracing::error!(error = %other, "request failed");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({ "errcode": "M_UNKNOWN", "error": "internal server error" }),
                )
            }
        }
    }
}
