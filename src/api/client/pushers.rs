//! Pushers (`/pushers`, `/pushers/set`) and the notification list (`/notifications`).

use std::sync::Arc;

use ruma::api::client::push::{get_notifications, get_pushers};
use serde_json::{json, Map, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        push::{self, pushers::Pusher},
        Services,
    },
};

/// The longest `app_id` (characters) and `pushkey` (bytes) the spec allows.
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;

/// `GET /_matrix/client/v3/pushers`
///
/// The user's pushers as they were set (only `http` ones are accepted, so ruma's `Pusher` reads
/// each stored one back field for field).
pub async fn get_pushers(
    services: Arc<Services>,
    ctx: Ctx,
    _request: get_pushers::v3::Request,
) -> Result<get_pushers::v3::Response> {
    let pushers = services
        .push
        .pushers
        .iter_pushers(ctx.user())?
        .into_iter()
        .map(|pusher| {
            serde_json::from_value(Value::Object(pusher.pusher))
                .map_err(|error| Error::corrupt("userpusher_pusher", error))
        })
        .collect::<Result<_>>()?;
    Ok(get_pushers::v3::Response::new(pushers))
}

fn string_field<'a>(body: &'a Value, name: &str) -> Result<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json(format!("{name} must be a string")))
}

/// `POST /_matrix/client/v3/pushers/set`
///
/// `kind: null` deletes the user's pusher with this `app_id` and `pushkey`; `http` creates or
/// replaces it (and, unless `append`, removes other users' pushers with the same `app_id` and
/// `pushkey`). An `http` pusher needs `data.url`, an `https` URL (plain `http` only with
/// `push_gateway_allow_http`) whose path is `/_matrix/push/v1/notify`, else `400
/// M_INVALID_PARAM`. Deviation: `email` pushers are refused with `400 M_INVALID_PARAM`, since
/// the server sends no email. Missing or mistyped fields are `400 M_BAD_JSON`. A pusher belongs
/// to the device whose session set it and is removed with that device (logout, deletion, a
/// password change that logs out other devices), as Synapse does.
/// Untyped: ruma refuses an `http` pusher without `data.url` as `M_BAD_JSON`, not `M_INVALID_PARAM`.
pub async fn set_pusher(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body = &ctx.body;
    let app_id = string_field(body, "app_id")?;
    let pushkey = string_field(body, "pushkey")?;
    if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::invalid_param("app_id has 1 to 64 characters"));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::invalid_param("pushkey has 1 to 512 bytes"));
    }
    let pushers = &services.push.pushers;
    match body.get("kind") {
        Some(Value::Null) => {
            pushers.delete_pusher(ctx.user(), app_id, pushkey)?;
            return Ok(json!({}));
        }
        Some(Value::String(kind)) if kind == "http" => {}
        Some(Value::String(kind)) if kind == "email" => {
            return Err(Error::invalid_param(
                "email pushers are not supported by this server",
            ))
        }
        Some(Value::String(kind)) => {
            return Err(Error::invalid_param(format!("unknown pusher kind {kind}")))
        }
        _ => return Err(Error::bad_json("kind must be a string or null")),
    }
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("data must be an object"))?;
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_param("an http pusher needs data.url"))?;
    push::pushers::check_url(url, &services.config)?;
    if let Some(format) = data.get("format") {
        if format != "event_id_only" {
            return Err(Error::invalid_param(
                "the only data.format is event_id_only",
            ));
        }
    }
    let mut pusher = Map::new();
    for name in [
        "kind",
        "app_id",
        "pushkey",
        "app_display_name",
        "device_display_name",
        "lang",
    ] {
        pusher.insert(name.to_owned(), json!(string_field(body, name)?));
    }
    if let Some(tag) = body.get("profile_tag") {
        if !tag.is_string() {
            return Err(Error::bad_json("profile_tag must be a string"));
        }
        pusher.insert("profile_tag".to_owned(), tag.clone());
    }
    pusher.insert("data".to_owned(), Value::Object(data.clone()));
    let append = match body.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(append)) => *append,
        Some(_) => return Err(Error::bad_json("append must be a boolean")),
    };
    let pusher = Pusher {
        pusher,
        device_id: ctx.device().to_owned(),
    };
    pushers.set_pusher(ctx.user(), &pusher, append)?;
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/notifications`
///
/// The user's notifications, newest first: `from` (a `next_token`), `limit` (default 50, at
/// most 1000) and `only=highlight`. A bad `from` or `limit` is `400 M_INVALID_PARAM`.
pub async fn get_notifications(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_notifications::v3::Request,
) -> Result<get_notifications::v3::Response> {
    let from = match request.from.as_deref() {
        None | Some("") => None,
        Some(from) => Some(
            from.parse::<u64>()
                .map_err(|_| Error::invalid_param(format!("invalid from token {from}")))?,
        ),
    };
    let limit = request
        .limit
        .map_or(50, |limit| {
            usize::try_from(u64::from(limit)).unwrap_or(usize::MAX)
        })
        .clamp(1, 1000);
    let only_highlight = request.only.is_some_and(|only| only.contains("highlight"));
    let page = push::iter_notifications(&services, ctx.user(), from, limit, only_highlight)?;
    let notifications = page
        .notifications
        .into_iter()
        .map(|notification| serde_json::from_value(notification).map_err(Error::internal))
        .collect::<Result<_>>()?;
    let mut response = get_notifications::v3::Response::new(notifications);
    response.next_token = page.next_token.map(|next| next.to_string());
    Ok(response)
}
