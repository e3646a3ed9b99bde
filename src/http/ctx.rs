//! Builds the request context ([`Ctx`], owned by `api/`) from a request: query parsing and
//! access-token authentication.

use std::collections::HashMap;

use http::request::Parts;
use ruma::api::error::ErrorKind;
use serde_json::Value;

use crate::{
    api::ctx::{percent_decode, unknown_token_data, Auth, Ctx},
    error::{Error, Result},
    service::Services,
    util,
};

pub(super) fn build(
    services: &Services,
    auth: Auth,
    params: Vec<String>,
    parts: &Parts,
    (body, body_bytes): (Value, bytes::Bytes),
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
        body_bytes,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
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
