//! Invite links (`docs/invite_links.md`): making, listing and revoking a room's links, redeeming
//! one, and the link's server-rendered page (plain HTML, no script).

use std::sync::Arc;

use http::StatusCode;
use ruma::api::error::ErrorKind;
use serde_json::{json, Value};

use crate::{
    api::{
        client::{base_url, escape, html},
        Ctx, HandlerResult, RawResult,
    },
    error::Error,
    service::{
        invite_links::{self, InviteLink, LinkLimits},
        Services,
    },
};

/// The URL a link's page is served at.
fn link_url(services: &Services, code: &str) -> String {
    format!(
        "{}/_plait/client/v1/invite_links/{code}",
        base_url(services).trim_end_matches('/')
    )
}

/// `POST /_plait/client/v1/rooms/{roomId}/invite_links`
///
/// Makes a link for a member who may invite; the body may set `expires_in_ms` and `max_uses`.
/// Answers the link with its `code` and `url`, which are shown this once.
/// Untyped: a Plait endpoint, with no ruma request type.
pub async fn create_invite_link(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let limits = LinkLimits::from_body(&ctx.body)?;
    let (code, link) = invite_links::create(&services, &room_id, ctx.user(), limits)?;
    let mut answer = link.to_value();
    answer["url"] = json!(link_url(&services, &code));
    answer["code"] = json!(code);
    Ok(answer)
}

/// `GET /_plait/client/v1/rooms/{roomId}/invite_links`
///
/// The room's links (without codes), for a member who may invite.
/// Untyped: a Plait endpoint, with no ruma request type.
pub async fn get_invite_links(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let links = invite_links::list(&services, &room_id, ctx.user())?;
    let links: Vec<Value> = links.iter().map(InviteLink::to_value).collect();
    Ok(json!({ "invite_links": links }))
}

/// `DELETE /_plait/client/v1/rooms/{roomId}/invite_links/{code}`
///
/// Revokes a link, named by its code or its `id`, for a member who may invite.
/// Untyped: a Plait endpoint, with no ruma request type.
pub async fn delete_invite_link(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    invite_links::revoke(&services, &room_id, ctx.user(), ctx.param(1))?;
    Ok(json!({}))
}

/// `POST /_plait/client/v1/invite_links/{code}/join`
///
/// Redeems a link: an invite from the link's creator, then the join (and for a space, its
/// restricted child rooms). Answers `room_id`.
/// Untyped: a Plait endpoint, with no ruma request type.
pub async fn join_invite_link(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = invite_links::redeem(&services, ctx.param(0), ctx.user()).await?;
    Ok(json!({ "room_id": room_id }))
}

/// What the page tells users of other servers: how to knock with the code where the room's join
/// rule allows knocking (the knock is answered with an invite), and otherwise that the code is
/// not for them.
fn remote_users_text(summary: &Value, room: &str, code: &str) -> String {
    if matches!(
        summary["join_rule"].as_str(),
        Some("knock" | "knock_restricted")
    ) {
        format!(
            "<p>On another server, knock on {room} with the reason <code>{}</code>: \
             the knock is answered with an invite.</p>",
            escape(code)
        )
    } else {
        "<p>This room does not allow knocking, so users of other servers cannot use this \
         link's code: they join as the room's join rule lets them, or ask a member for an \
         invite.</p>"
            .to_owned()
    }
}

/// `GET /_plait/client/v1/invite_links/{code}`
///
/// The link's page for a browser: the room's name, avatar, topic and member count, with links
/// to open it in Element and matrix.to, and how users of other servers knock with the code.
/// An unusable link gets a page saying so, with the status its error has.
pub async fn invite_link_page(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let code = ctx.param(0);
    let (link, summary) = match invite_links::page_summary(&services, code) {
        Ok(found) => found,
        Err(Error::Matrix { kind, message }) => {
            let status = if matches!(kind, ErrorKind::Forbidden) {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::NOT_FOUND
            };
            let body = format!("<h1>Invite link</h1><p>{}</p>", escape(&message));
            return Ok(html(status, "Invite link", &body));
        }
        Err(error) => return Err(error),
    };
    let name = summary["name"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| link.room_id.to_string());
    let room = escape(link.room_id.as_str());
    let mut body = format!("<h1>{}</h1>", escape(&name));
    if let Some(avatar) = summary["avatar_url"].as_str() {
        if let Some(path) = avatar.strip_prefix("mxc://") {
            body.push_str(&format!(
                "<p><img alt=\"\" width=\"96\" height=\"96\" src=\"{}/_matrix/media/v3/thumbnail/{}?width=96&amp;height=96\"></p>",
                escape(base_url(&services).trim_end_matches('/')),
                escape(path)
            ));
        }
    }
    if let Some(topic) = summary["topic"].as_str() {
        body.push_str(&format!("<p>{}</p>", escape(topic)));
    }
    let members = summary["num_joined_members"].as_u64().unwrap_or(0);
    let server = escape(services.globals.server_name().as_str());
    body.push_str(&format!(
        "<p>{members} members</p>\
         <p><a href=\"https://app.element.io/#/room/{room}\">Open in Element</a> · \
         <a href=\"https://matrix.to/#/{room}?via={server}\">Open with matrix.to</a></p>\
         <p>On this server, your app joins with this link's code.</p>"
    ));
    body.push_str(&remote_users_text(&summary, &room, code));
    Ok(html(StatusCode::OK, &name, &body))
}
