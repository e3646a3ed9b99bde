//! Client-server API handlers, one file per spec area.
//!
//! One file per spec area; each handler's doc comment starts with `METHOD /path`.
//! Most handlers take ruma's request type through `http::typed`; the untyped ones say why in an
//! `Untyped:` line of their doc (see docs/ARCHITECTURE.md, "Departures"). The spec-map test keeps
//! the route table honest against the spec's endpoint list.
//! `api/synapse_admin.rs` and `api/synapse_admin/` hold the Synapse admin API endpoints Plait serves (`docs/admin_api.md`).

pub mod account;
pub mod account_data;
pub mod admin;
pub mod alias;
pub mod appservice;
pub mod backup;
pub mod calls;
pub mod cross_signing;
pub mod dehydrated;
pub mod delayed_events;
pub mod device;
pub mod discovery;
pub mod invite_links;
pub mod keys;
pub mod media;
pub mod membership;
pub mod message;
pub mod oauth;
pub mod presence;
pub mod profile;
pub mod push_rules;
pub mod pushers;
pub mod receipt;
pub mod relations;
pub mod report;
pub mod room;
pub mod search;
pub mod sliding_sync;
pub mod space;
pub mod state;
pub mod stories;
pub mod sync;
pub mod tags;
pub mod thirdparty;
pub mod timestamp;
pub mod to_device;
pub mod typing;
pub mod upgrade;
pub mod user_directory;
pub mod voip;

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value};

use crate::{
    api::Ctx,
    error::{Error, Result},
    service::{rooms::visibility, Services},
};

/// An optional object field of a request body; anything but an object or null is `M_BAD_JSON`.
pub fn object_field(body: &Value, field: &str) -> Result<Option<Map<String, Value>>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object.clone())),
        Some(_) => Err(Error::bad_json(format!("{field} must be an object"))),
    }
}

/// Fails with `M_FORBIDDEN` unless the user of path parameter 0 is the caller: one may read and
/// write only one's own account data and tags.
pub fn check_owner(ctx: &Ctx) -> Result<()> {
    if ctx.user_param(0)? != ctx.user() {
        return Err(Error::forbidden("cannot access another user's data"));
    }
    Ok(())
}

/// Fails with `M_FORBIDDEN` unless `user` is joined to `room`.
pub fn require_joined(services: &Services, room_id: &RoomId, user: &UserId) -> Result<()> {
    if services.rooms.members.is_joined(room_id, user)? {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "{user} is not joined to {room_id}"
        )))
    }
}

/// The state `user` may read in a room (see [`visibility::readable_state`]); `M_FORBIDDEN` when
/// there is none.
pub fn readable_state(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
) -> Result<visibility::ReadableState> {
    visibility::readable_state(services, room_id, user)?.ok_or_else(|| {
        Error::forbidden(format!(
            "{user} is not a member of {room_id} and was not one before"
        ))
    })
}

/// Resolves a room ID or a local alias.
pub fn resolve_room(services: &Services, id_or_alias: &str) -> Result<OwnedRoomId> {
    if id_or_alias.starts_with('#') {
        let alias = ruma::OwnedRoomAliasId::try_from(id_or_alias)
            .map_err(|_| Error::invalid_param(format!("invalid alias {id_or_alias}")))?;
        return services
            .rooms
            .alias
            .get(&alias)?
            .map(|(room, _)| room)
            .ok_or_else(|| Error::not_found(format!("alias {alias} not found")));
    }
    OwnedRoomId::try_from(id_or_alias)
        .map_err(|_| Error::invalid_param(format!("invalid room ID or alias {id_or_alias}")))
}

/// The public base URL: `client_base_url`, else the listener's address.
pub fn base_url(services: &Services) -> String {
    services
        .config
        .client_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", services.config.listen))
}

/// A small server-rendered HTML page (no script; the content security policy allows none):
/// the OAuth forms and the invite-link page.
pub fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let document = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>body{{font-family:sans-serif;max-width:26em;margin:2em auto;padding:0 1em}}\
         label{{display:block;margin:.8em 0}}input{{display:block;width:100%;padding:.4em}}\
         .problem{{color:#a00}}button{{padding:.5em 1.2em}}</style></head><body>\n{body}\n</body></html>\n",
        escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        document,
    )
        .into_response()
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            character => out.push(character),
        }
    }
    out
}
