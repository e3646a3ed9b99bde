//! Membership: join, invite, leave, forget, kick, ban, unban, and member lists.
//! A `reason` that is not a string is `400 M_BAD_JSON` (ruma's requests, and the join's own
//! check), except on `/invite`, which leaves it out.

use std::sync::Arc;

use ruma::{
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, joined_rooms, kick_user, leave_room,
            unban_user,
        },
    },
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    OwnedRoomAliasId, OwnedRoomId, OwnedRoomOrAliasId, OwnedServerName, RoomId, RoomOrAliasId,
};
use serde_json::{json, Value};

use super::{readable_state, require_joined, resolve_room};
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        rate_limits::{self, Limit},
        rooms::{
            alias as directory,
            handshake::{self, Handshake},
            history::parse_token,
            membership::{add_profile, send_member_event, set_membership},
            pdu::client_event,
            restricted::{self, JoinCheck},
            third_party,
            visibility::ReadableState,
        },
        Services,
    },
};

/// The content of a join asked for by a client: the user's profile, then whatever the request body
/// adds (its `reason`, and custom keys, which Synapse also keeps), except the keys the server
/// controls.
fn join_content(services: &Services, ctx: &Ctx) -> Result<Value> {
    const RESERVED: [&str; 3] = [
        "membership",
        "third_party_signed",
        "join_authorised_via_users_server",
    ];
    let mut content = json!({});
    add_profile(services, ctx.user(), &mut content)?;
    if let Some(body) = ctx.body.as_object() {
        for (key, value) in body {
            if !RESERVED.contains(&key.as_str()) {
                content[key] = value.clone();
            }
        }
    }
    if content
        .get("reason")
        .is_some_and(|reason| !reason.is_string())
    {
        return Err(Error::bad_json("reason must be a string"));
    }
    Ok(content)
}

fn reason(ctx: &Ctx) -> Option<String> {
    ctx.body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn target(ctx: &Ctx) -> Result<ruma::OwnedUserId> {
    let user = ctx
        .body
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing user_id"))?;
    ruma::OwnedUserId::try_from(user)
        .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))
}

/// The servers a client named for a join (`via`, and the older `server_name`).
fn named_servers(ctx: &Ctx) -> Vec<OwnedServerName> {
    ctx.raw_query
        .split('&')
        .filter_map(|pair| {
            pair.strip_prefix("via=")
                .or_else(|| pair.strip_prefix("server_name="))
        })
        .filter_map(|name| OwnedServerName::try_from(crate::api::ctx::percent_decode(name)).ok())
        .collect()
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
///
/// An alias of another server is resolved with its `/query/directory`; a room this server is not
/// in is joined over federation through the servers named, the inviter's, and the alias's.
/// Joins count against `rate_limits.joins` (as on `/rooms/{roomId}/join` and `/knock`).
/// Joins, knocks and invites of a suspended account get `403 M_USER_SUSPENDED` (spec v1.18).
/// A room a server admin blocked is `403 M_FORBIDDEN` (here, on `/rooms/{roomId}/join` and `/knock`).
/// Untyped: ruma's request drops the body's custom keys, which the join event keeps as Synapse does (`rooms::messages_state_redaction_and_context`).
pub async fn join_room_by_id_or_alias(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let id_or_alias = OwnedRoomOrAliasId::try_from(ctx.param(0))
        .map_err(|_| Error::invalid_param(format!("invalid room ID or alias {}", ctx.param(0))))?;
    let (room_id, servers) = room_and_servers(&services, &id_or_alias, named_servers(&ctx)).await?;
    join(&services, &ctx, &room_id, servers).await
}

/// The room of a `{roomIdOrAlias}` path parameter and the servers to reach it through: those
/// the client named and, for an alias of another server, the ones its directory answered.
async fn room_and_servers(
    services: &Services,
    id_or_alias: &RoomOrAliasId,
    mut servers: Vec<OwnedServerName>,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    let room_id = match OwnedRoomAliasId::try_from(id_or_alias.to_owned()) {
        Ok(alias) if alias.server_name() != services.globals.server_name() => {
            let (room_id, alias_servers) = directory::resolve_remote(services, &alias).await?;
            servers.extend(alias_servers);
            room_id
        }
        Ok(alias) => resolve_room(services, alias.as_str())?,
        Err(room_id) => room_id,
    };
    Ok((room_id, servers))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
///
/// Asks to be let into a room whose join rule is `knock` (or `knock_restricted`); a room this
/// server is not in is knocked on over federation, like a join, through the servers of `via`
/// (or of the older `server_name` when there is no `via`).
pub async fn knock_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: knock_room::v3::Request,
) -> Result<knock_room::v3::Response> {
    services.admin.flags.check_not_suspended(ctx.user())?;
    rate_limits::take_for(&services, Limit::Join, ctx.user())?;
    let (room_id, servers) =
        room_and_servers(&services, &request.room_id_or_alias, request.via).await?;
    services.admin.blocks.check_room(&room_id)?;
    let reason = request.reason.as_deref();
    if !handshake::is_resident(&services, &room_id)? {
        let candidates = handshake::candidate_servers(&services, &room_id, ctx.user(), servers)?;
        if candidates
            .iter()
            .any(|server| server != services.globals.server_name())
        {
            let mut extra = json!({});
            add_profile(&services, ctx.user(), &mut extra)?;
            if let Some(reason) = reason {
                extra["reason"] = json!(reason);
            }
            Handshake::Knock
                .through(&services, &room_id, ctx.user(), &candidates, extra)
                .await?;
            return Ok(knock_room::v3::Response::new(room_id));
        }
    }
    set_membership(&services, &room_id, ctx.user(), ctx.user(), "knock", reason).await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
///
/// Untyped: ruma's request drops the body's custom keys, which the join event keeps as Synapse does (`rooms::messages_state_redaction_and_context`), and has no `via` or `server_name`, which are read here as on `/join/{roomIdOrAlias}`.
pub async fn join_room_by_id(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let servers = named_servers(&ctx);
    join(&services, &ctx, &room_id, servers).await
}

async fn join(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
    servers: Vec<OwnedServerName>,
) -> HandlerResult {
    if services.rooms.members.is_joined(room_id, ctx.user())? {
        return Ok(json!({ "room_id": room_id }));
    }
    // A suspended user may still join their server notices room, where the admins write to them
    // (the spec recommends keeping that channel open).
    if services.server_notices.get_room(ctx.user())?.as_deref() != Some(room_id) {
        services.admin.flags.check_not_suspended(ctx.user())?;
    }
    services.admin.blocks.check_room(room_id)?;
    rate_limits::take_for(services, Limit::Join, ctx.user())?;
    if !handshake::is_resident(services, room_id)? {
        let candidates = handshake::candidate_servers(services, room_id, ctx.user(), servers)?;
        if candidates
            .iter()
            .any(|server| server != services.globals.server_name())
        {
            let extra = join_content(services, ctx)?;
            Handshake::Join
                .through(services, room_id, ctx.user(), &candidates, extra)
                .await?;
            return Ok(json!({ "room_id": room_id }));
        }
    }
    let mut content = join_content(services, ctx)?;
    content["membership"] = json!("join");
    if services.rooms.exists(room_id)? {
        match restricted::check_join(services, room_id, ctx.user())? {
            JoinCheck::Unrestricted => {}
            JoinCheck::Authorised(authoriser) => {
                content["join_authorised_via_users_server"] = json!(authoriser);
            }
            JoinCheck::NoLocalAuthoriser => {
                // No local user may invite: a server in the room that has one vouches instead.
                let mut extra = content.clone();
                if let Some(extra) = extra.as_object_mut() {
                    extra.remove("membership");
                }
                let others: Vec<OwnedServerName> = services
                    .rooms
                    .members
                    .servers_in_room(room_id)?
                    .iter()
                    .cloned()
                    .collect();
                Handshake::Join
                    .through(services, room_id, ctx.user(), &others, extra)
                    .await?;
                return Ok(json!({ "room_id": room_id }));
            }
            JoinCheck::Unverifiable | JoinCheck::NotAllowed => {
                return Err(Error::forbidden(format!(
                    "{} is not in a room that {room_id} allows to join",
                    ctx.user()
                )));
            }
        }
    }
    send_member_event(services, room_id, ctx.user(), ctx.user(), content).await?;
    Ok(json!({ "room_id": room_id }))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
///
/// Both forms of the spec: by user ID, and by third-party identifier (a body with `medium`,
/// `address`, `id_server` and `id_access_token` and no `user_id`), which asks the identity
/// server for the bound user and invites them, or leaves an `m.room.third_party_invite`.
/// Limited per inviter (`rate_limits.invites_per_issuer`) and per invitee
/// (`rate_limits.invites_per_target`).
/// Untyped: ruma's `InvitationRecipient` is an untagged enum, so a third-party body without `id_access_token` fails as `M_BAD_JSON`, where Synapse and `third_party_invites::third_party_invites_refuse_bad_input` expect `M_MISSING_PARAM`.
pub async fn invite_user(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    services.admin.flags.check_not_suspended(ctx.user())?;
    rate_limits::take_for(&services, Limit::InvitesPerIssuer, ctx.user())?;
    let invitee = if ctx.body.get("user_id").is_none()
        && ["medium", "address", "id_server", "id_access_token"]
            .iter()
            .any(|field| ctx.body.get(field).is_some())
    {
        match invite_by_third_party_id(&services, &ctx, &room_id).await? {
            Some(user) => user,
            None => return Ok(json!({})),
        }
    } else {
        target(&ctx)?
    };
    if invitee.server_name() == services.globals.server_name()
        && !services.users.exists(&invitee)?
    {
        return Err(Error::not_found(format!("user {invitee} does not exist")));
    }
    if services.rooms.members.get_membership(&room_id, &invitee)? == Some(MembershipState::Invite) {
        return Ok(json!({}));
    }
    rate_limits::take_for_user(&services, Limit::InvitesPerTarget, ctx.user(), &invitee)?;
    if invitee.server_name() != services.globals.server_name() {
        require_joined(&services, &room_id, ctx.user())?;
        let mut extra = json!({});
        if let Some(reason) = reason(&ctx) {
            extra["reason"] = json!(reason);
        }
        handshake::invite_remote(&services, &room_id, ctx.user(), &invitee, extra).await?;
        return Ok(json!({}));
    }
    set_membership(
        &services,
        &room_id,
        ctx.user(),
        &invitee,
        "invite",
        reason(&ctx).as_deref(),
    )
    .await?;
    Ok(json!({}))
}

/// The third-party form of `/invite` (client-server "Third-party invites"): the user bound to
/// the identifier, or `None` when the identity server stored the invite and the room got its
/// `m.room.third_party_invite`.
async fn invite_by_third_party_id(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
) -> Result<Option<ruma::OwnedUserId>> {
    let field = |name: &str| -> Result<&str> {
        match ctx.body.get(name) {
            None => Err(Error::missing_param(format!("missing {name}"))),
            Some(value) => value
                .as_str()
                .ok_or_else(|| Error::bad_json(format!("{name} must be a string"))),
        }
    };
    let invitee = third_party::ThirdPartyInvitee {
        medium: field("medium")?,
        address: field("address")?,
        id_server: field("id_server")?,
        id_access_token: field("id_access_token")?,
    };
    third_party::invite(services, room_id, ctx.user(), &invitee).await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: leave_room::v3::Request,
) -> Result<leave_room::v3::Response> {
    let room_id = request.room_id;
    let membership = services
        .rooms
        .members
        .get_membership(&room_id, ctx.user())?;
    services
        .server_notices
        .check_leave(&room_id, ctx.user(), membership.as_ref())?;
    if matches!(
        membership,
        Some(MembershipState::Invite | MembershipState::Knock)
    ) && !handshake::is_resident(&services, &room_id)?
    {
        // An invite (or knock) for a room no local user is joined to: reject it through a server
        // that is in the room. When no other server is known and the room's state is here (a
        // local room whose last local member left), the leave is made here instead.
        let own = services.globals.server_name();
        let servers: Vec<_> =
            handshake::candidate_servers(&services, &room_id, ctx.user(), Vec::new())?
                .into_iter()
                .filter(|server| server != own)
                .collect();
        if !servers.is_empty() || !services.rooms.exists(&room_id)? {
            handshake::leave_remote(&services, &room_id, ctx.user(), &servers).await?;
            return Ok(leave_room::v3::Response::new());
        }
    }
    match membership {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            set_membership(
                &services,
                &room_id,
                ctx.user(),
                ctx.user(),
                "leave",
                request.reason.as_deref(),
            )
            .await?;
            Ok(leave_room::v3::Response::new())
        }
        Some(_) => Ok(leave_room::v3::Response::new()),
        None => Err(Error::forbidden(format!(
            "{} is not in room {room_id}",
            ctx.user()
        ))),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: forget_room::v3::Request,
) -> Result<forget_room::v3::Response> {
    let room_id = request.room_id;
    match services
        .rooms
        .members
        .get_membership(&room_id, ctx.user())?
    {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            Err(Error::matrix(
                ruma::api::error::ErrorKind::Unknown,
                "leave the room before forgetting it",
            ))
        }
        _ => {
            services.rooms.members.forget(&room_id, ctx.user())?;
            Ok(forget_room::v3::Response::new())
        }
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
///
/// Only a joined, invited or knocking user can be kicked.
pub async fn kick_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: kick_user::v3::Request,
) -> Result<kick_user::v3::Response> {
    use MembershipState::{Invite, Join, Knock};
    let kickable = [Join, Invite, Knock];
    let action = Moderation {
        room_id: &request.room_id,
        target: &request.user_id,
        reason: request.reason.as_deref(),
        membership: "leave",
        required: Some((&kickable, "is not in room")),
    };
    moderate(&services, &ctx, action).await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: ban_user::v3::Request,
) -> Result<ban_user::v3::Response> {
    let action = Moderation {
        room_id: &request.room_id,
        target: &request.user_id,
        reason: request.reason.as_deref(),
        membership: "ban",
        required: None,
    };
    moderate(&services, &ctx, action).await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
///
/// Only a banned user can be unbanned.
pub async fn unban_user(
    services: Arc<Services>,
    ctx: Ctx,
    request: unban_user::v3::Request,
) -> Result<unban_user::v3::Response> {
    let banned = [MembershipState::Ban];
    let action = Moderation {
        room_id: &request.room_id,
        target: &request.user_id,
        reason: request.reason.as_deref(),
        membership: "leave",
        required: Some((&banned, "is not banned from")),
    };
    moderate(&services, &ctx, action).await?;
    Ok(unban_user::v3::Response::new())
}

/// A kick, ban or unban: the caller sends `membership` for `target`, with `reason`.
struct Moderation<'a> {
    room_id: &'a RoomId,
    target: &'a ruma::UserId,
    reason: Option<&'a str>,
    membership: &'static str,
    /// The memberships the target must have now, and the text of the `M_FORBIDDEN` otherwise:
    /// "<target> <text> <room>".
    required: Option<(&'a [MembershipState], &'static str)>,
}

/// Sends the member event of a [`Moderation`] once its target has a required membership.
async fn moderate(services: &Services, ctx: &Ctx, action: Moderation<'_>) -> Result<()> {
    let Moderation {
        room_id,
        target,
        reason,
        membership,
        required,
    } = action;
    if let Some((memberships, text)) = required {
        let current = services.rooms.members.get_membership(room_id, target)?;
        if !current.is_some_and(|current| memberships.contains(&current)) {
            return Err(Error::forbidden(format!("{target} {text} {room_id}")));
        }
    }
    set_membership(services, room_id, ctx.user(), target, membership, reason).await?;
    Ok(())
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(
    services: Arc<Services>,
    ctx: Ctx,
    _request: joined_rooms::v3::Request,
) -> Result<joined_rooms::v3::Response> {
    let rooms = services.rooms.members.iter_joined_rooms(ctx.user())?;
    Ok(joined_rooms::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
///
/// Filters `membership` and `not_membership` apply; `at` answers the members after the last event
/// before that token (none before the room's first event).
pub async fn get_member_events(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_member_events::v3::Request,
) -> Result<get_member_events::v3::Response> {
    let room_id = request.room_id;
    let readable = readable_state(&services, &room_id, ctx.user())?;
    let only = request.membership;
    let not = request.not_membership;
    let hash = match &request.at {
        Some(token) => state_at_token(&services, &room_id, token, &readable)?,
        None => Some(readable.shortstatehash),
    };
    let rooms = &services.rooms;
    let mut chunk = Vec::new();
    let state = match hash {
        Some(hash) => rooms.state.load(hash)?,
        None => Default::default(),
    };
    for (shortstatekey, shorteventid) in state.iter() {
        let (kind, _) = rooms.short.get_statekey(*shortstatekey)?;
        if kind != StateEventType::RoomMember {
            continue;
        }
        let Some(pdu) = rooms
            .timeline
            .get_pdu(&rooms.short.get_eventid(*shorteventid)?)?
        else {
            continue;
        };
        let content = pdu.content_value();
        let membership = content["membership"].as_str().unwrap_or_default();
        if only
            .as_ref()
            .is_some_and(|wanted| wanted.as_str() != membership)
            || not
                .as_ref()
                .is_some_and(|unwanted| unwanted.as_str() == membership)
        {
            continue;
        }
        let event = serde_json::value::to_raw_value(&client_event(&pdu, &room_id, None))
            .map_err(Error::internal)?;
        chunk.push(Raw::from_json(event));
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

/// The state at a pagination token (`at` of `/members`): after the last event before it (none
/// for a token from before the room's first event), and never later than what the user may
/// read.
fn state_at_token(
    services: &Services,
    room_id: &RoomId,
    token: &str,
    readable: &ReadableState,
) -> Result<Option<u64>> {
    let rooms = &services.rooms;
    let (shortroomid, _) = rooms.room_version(room_id)?;
    let position = parse_token(services, shortroomid, token)?;
    let Some(entry) = rooms.timeline.iter_topo(shortroomid, position, true).next() else {
        return Ok(None);
    };
    let (position, pdu) = entry?;
    if readable.after_departure(position.count) {
        return Ok(Some(readable.shortstatehash));
    }
    let state = match rooms.short.get_shorteventid(&pdu.event_id)? {
        Some(short) => rooms.state.get_event_state(short)?,
        None => None,
    };
    Ok(Some(
        state
            .map(|(_, after)| after)
            .filter(|after| *after != 0)
            .unwrap_or(readable.shortstatehash),
    ))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
///
/// Untyped: ruma's `RoomMember` leaves out a `display_name` or `avatar_url` that is unset, where Complement's `TestRoomState` (joined_members fetches my membership) needs both keys (`null`, as Synapse sends).
pub async fn joined_members(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    require_joined(&services, &room_id, ctx.user())?;
    let mut joined = serde_json::Map::new();
    for (user, _) in services
        .rooms
        .members
        .iter_members(&room_id, Some(MembershipState::Join))?
    {
        let content = services
            .rooms
            .current_state_pdu(&room_id, &StateEventType::RoomMember, user.as_str())?
            .map(|pdu| pdu.content_value())
            .unwrap_or_default();
        joined.insert(user.to_string(), json!({ "display_name": content.get("displayname"), "avatar_url": content.get("avatar_url") }));
    }
    Ok(json!({ "joined": joined }))
}

/// Most rooms one page of `/mutual_rooms` lists.
const MUTUAL_ROOMS_PAGE: usize = 100;

/// `GET /_matrix/client/v1/mutual_rooms` (and MSC2666's unstable
/// `/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms`)
///
/// The rooms the user and `user_id` are both joined to, in room ID order, 100 a page; `from` is
/// the last room ID of the page before.
/// Untyped: ruma serves only the unstable form under a feature.
pub async fn mutual_rooms(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let other = ctx
        .query("user_id")
        .ok_or_else(|| Error::missing_param("user_id is required"))?;
    let other = ruma::OwnedUserId::try_from(other)
        .map_err(|_| Error::invalid_param(format!("invalid user ID {other}")))?;
    if other == ctx.user() {
        return Err(Error::invalid_param("user_id is your own user ID"));
    }
    let from = match ctx.query("from") {
        Some(token) => Some(
            ruma::OwnedRoomId::try_from(token)
                .map_err(|_| Error::invalid_param(format!("invalid from token {token}")))?,
        ),
        None => None,
    };
    let rooms = services.rooms.members.mutual_rooms(ctx.user(), &other)?;
    let count = rooms.len();
    let page: Vec<_> = rooms
        .into_iter()
        .filter(|room| from.as_ref().is_none_or(|from| room > from))
        .take(MUTUAL_ROOMS_PAGE + 1)
        .collect();
    let mut body = serde_json::json!({ "count": count });
    if page.len() > MUTUAL_ROOMS_PAGE {
        body["next_batch"] = serde_json::json!(page[MUTUAL_ROOMS_PAGE - 1]);
    }
    body["joined"] = serde_json::json!(page[..page.len().min(MUTUAL_ROOMS_PAGE)]);
    Ok(body)
}
