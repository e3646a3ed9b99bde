//! Endpoint handlers: parse the request, call services, build the response.

pub mod client;
pub mod ctx;
pub mod federation;
pub mod synapse_admin;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::Value;

pub use self::ctx::{Auth, Ctx, HandlerResult, RawResult};
use crate::error::Error;

/// A JSON response with a status other than 200 (a JSON handler's body is always sent with 200).
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A page request of the public room directory, from the query string or a JSON body.
pub struct PublicRoomsRequest {
    pub limit: usize,
    pub since: usize,
    pub term: Option<String>,
}

impl PublicRoomsRequest {
    /// Reads `limit`, `since` and `filter.generic_search_term` (body first, then query).
    pub fn from_ctx(ctx: &Ctx) -> Result<Self, Error> {
        let limit = ctx
            .body
            .get("limit")
            .and_then(Value::as_u64)
            .or_else(|| ctx.query("limit").and_then(|limit| limit.parse().ok()))
            .filter(|limit| *limit > 0)
            .unwrap_or(100)
            .min(500) as usize;
        let since = ctx
            .body
            .get("since")
            .and_then(Value::as_str)
            .or(ctx.query("since"))
            .map(|since| {
                since
                    .parse::<usize>()
                    .map_err(|_| Error::invalid_param("invalid since token"))
            })
            .transpose()?
            .unwrap_or(0);
        let term = ctx
            .body
            .pointer("/filter/generic_search_term")
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        Ok(Self { limit, since, term })
    }
}
