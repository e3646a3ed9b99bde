//! Membership handshakes, resident side: `make_join`/`send_join`, `make_knock`/`send_knock`,
//! `make_leave`/`send_leave`, and invites for this server's users.

use std::sync::Arc;

use ruma::{
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::TimelineEventType,
    CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, ServerName,
};
use serde_json::{json, Value};

use crate::{
    crypto,
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{
        rooms::{
            auth, handshake, incoming, join_state, prejoin_state,
            restricted::{self, JoinCheck},
            timeline::{build_template, PduBuilder, SendTo},
            version::rules_for,
        },
        Services,
    },
};

fn room_and_user(ctx: &Ctx) -> Result<(OwnedRoomId, OwnedUserId)> {
    Ok((ctx.room_param(0)?, ctx.user_param(1)?))
}

/// Fails unless this server is in the room and its ACL lets `origin` in. A leave needs only the
/// room's state: a server whose users have all left can still let an invitee reject an invite.
fn require_resident(
    services: &Services,
    room_id: &RoomId,
    origin: &ServerName,
    membership: &str,
) -> Result<()> {
    let known = if membership == "leave" {
        services.rooms.exists(room_id)?
    } else {
        handshake::is_resident(services, room_id)?
    };
    if !known {
        return Err(Error::not_found(format!("this server is not in {room_id}")));
    }
    if !incoming::server_allowed(services, room_id, origin)? {
        return Err(Error::forbidden("the room's server ACL denies this server"));
    }
    Ok(())
}

/// A membership template for a user of the asking server, checked against the current state.
fn make_membership(services: &Services, ctx: &Ctx, membership: &str) -> HandlerResult {
    let (room_id, user) = room_and_user(ctx)?;
    if user.server_name() != ctx.origin() {
        return Err(Error::forbidden("the user belongs to another server"));
    }
    require_resident(services, &room_id, ctx.origin(), membership)?;
    let (short, version) = services.rooms.room_version(&room_id)?;
    if membership == "join" || membership == "knock" {
        // `ver` repeats, so it is read from the raw query; without any, only version 1 is meant.
        let accepted: Vec<String> = ctx
            .raw_query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("ver="))
            .map(crate::http::ctx::percent_decode)
            .collect();
        let supported = if accepted.is_empty() {
            version == RoomVersionId::V1
        } else {
            accepted.iter().any(|ver| ver == version.as_str())
        };
        if !supported {
            return Err(Error::matrix(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                    version.clone(),
                )),
                format!("the room has version {version}"),
            ));
        }
    }
    let rules = rules_for(&version)?;
    let mut content = json!({ "membership": membership });
    if membership == "join" {
        content = restricted_join_content(services, &room_id, &user, content)?;
    }
    let builder = PduBuilder::state("m.room.member", user.as_str(), content);
    let lock = services.rooms.timeline.room_lock(&room_id);
    let _guard = lock.lock();
    let (object, state_before) =
        build_template(services, &room_id, &user, &builder, &rules, Some(short))?;
    // Refuse now what the auth rules would refuse at send_join (a banned user, an invite-only room).
    let mut probe = object.clone();
    probe.insert(
        "event_id".into(),
        CanonicalJsonValue::String("$template:probe".into()),
    );
    let pdu = crate::service::rooms::pdu::Pdu::from_object(&probe)?;
    auth::check_local_event(services, &rules, &pdu, state_before)?;
    Ok(json!({ "room_version": version, "event": object }))
}

/// For a restricted room, names a local user who may invite as the authoriser when the joining
/// user is in one of the allowed rooms; otherwise the spec's errors: `M_UNABLE_TO_GRANT_JOIN`
/// (no local user may invite: try another server), `M_UNABLE_TO_AUTHORISE_JOIN` (this server is
/// in none of the allowed rooms) or `M_FORBIDDEN`.
fn restricted_join_content(
    services: &Services,
    room_id: &RoomId,
    user: &ruma::UserId,
    mut content: Value,
) -> Result<Value> {
    match restricted::check_join(services, room_id, user)? {
        JoinCheck::Unrestricted => {}
        JoinCheck::Authorised(authoriser) => {
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
        JoinCheck::NoLocalAuthoriser => {
            return Err(Error::matrix(
                ErrorKind::UnableToGrantJoin,
                format!("no user of this server may authorise joins to {room_id}"),
            ))
        }
        JoinCheck::Unverifiable => {
            return Err(Error::matrix(
                ErrorKind::UnableToAuthorizeJoin,
                format!("this server is in none of the rooms {room_id} allows"),
            ))
        }
        JoinCheck::NotAllowed => {
            return Err(Error::forbidden(format!(
                "{user} is not in a room that {room_id} allows to join"
            )))
        }
    }
    Ok(content)
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn create_join_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "join")
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn create_leave_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "leave")
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn create_knock_event_template(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    make_membership(&services, &ctx, "knock")
}

/// Checks a signed membership event from the asking server and commits it through
/// `incoming::handle`; the rest of the room gets it from here.
async fn send_membership(
    services: &Services,
    ctx: &Ctx,
    membership: &str,
) -> Result<(OwnedRoomId, OwnedEventId, Option<Value>)> {
    let room_id = ctx.room_param(0)?;
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    require_resident(services, &room_id, ctx.origin(), membership)?;
    let (_, version) = services.rooms.room_version(&room_id)?;
    let rules = rules_for(&version)?;
    let parsed = incoming::parse_pdu(&ctx.body, &room_id, &rules)?;
    if parsed.event_id != event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let pdu = incoming::to_pdu(&parsed.event_id, &parsed.object)?;
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.sender.server_name() != ctx.origin()
        || pdu.content_value()["membership"] != membership
    {
        return Err(Error::bad_json(format!(
            "expected a {membership} of a user of the sending server"
        )));
    }
    let mut value = ctx.body.clone();
    let mut countersigned = None;
    // A restricted join names one of our users as the authoriser; the spec has us sign it.
    let authoriser = pdu.content_value()["join_authorised_via_users_server"]
        .as_str()
        .map(str::to_owned);
    if let Some(authoriser) = authoriser {
        if authoriser.ends_with(&format!(":{}", services.globals.server_name())) {
            // Vouch only for a user who still qualifies, through the user the event names.
            match restricted::check_join(services, &room_id, &pdu.sender)? {
                JoinCheck::Authorised(_) | JoinCheck::Unrestricted => {}
                _ => {
                    return Err(Error::forbidden(format!(
                        "{} may not join {room_id} through a user of this server",
                        pdu.sender
                    )))
                }
            }
            let mut object = parsed.object.clone();
            crypto::hash_and_sign_event(
                services.globals.server_name().as_str(),
                services.globals.signing_key(),
                &mut object,
                &rules,
            )
            .map_err(Error::bad_json)?;
            value = serde_json::to_value(&object).map_err(Error::internal)?;
            countersigned = Some(value.clone());
        }
    }
    let (_, outcome) = incoming::handle(
        services,
        ctx.origin(),
        &room_id,
        &value,
        SendTo::RoomExcept(Some(ctx.origin())),
    )
    .await?;
    // A soft-failed membership (not allowed by the current state, or not recommended by the
    // room's policy server) is kept aside, not in the room: the sending server must not take
    // it as done.
    if let incoming::Outcome::SoftFailed(why) = outcome {
        return Err(Error::forbidden(format!(
            "the {membership} of {} is not accepted into {room_id} now: {why}",
            pdu.sender
        )));
    }
    Ok((room_id, event_id, countersigned))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
///
/// Answers the state before the join and its auth chain, the servers with joined members before
/// the join, and the countersigned event for restricted joins. With `omit_members=true` the
/// member events the joining server can do without are left out (see
/// [`join_state::for_send_join`]) and `members_omitted` is `true`.
pub async fn create_join_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let omit_members = match ctx.query("omit_members") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "omit_members must be true or false, not {other}"
            )))
        }
    };
    let (_, event_id, countersigned) = send_membership(&services, &ctx, "join").await?;
    let join = services
        .rooms
        .timeline
        .get_pdu(&event_id)?
        .ok_or_else(|| Error::forbidden("the join was not accepted"))?;
    let answer = join_state::for_send_join(&services, &join, omit_members)?;
    let mut answer = json!({
        "origin": services.globals.server_name(),
        "state": answer.state,
        "auth_chain": answer.auth_chain,
        "members_omitted": answer.members_omitted,
        "servers_in_room": answer.servers_in_room,
    });
    if let Some(event) = countersigned {
        answer["event"] = event;
    }
    Ok(answer)
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn create_leave_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    send_membership(&services, &ctx, "leave").await?;
    Ok(json!({}))
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}`
///
/// The version-1 form, removed from the spec but still sent by older servers (and tested by
/// Complement): the same checks and answer as v2, wrapped as `[200, answer]`.
pub async fn create_join_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let answer = create_join_event(services, ctx).await?;
    Ok(json!([200, answer]))
}

/// `PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}`
///
/// The version-1 form of `send_leave` (see [`create_join_event_v1`]): `[200, {}]`.
pub async fn create_leave_event_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let answer = create_leave_event(services, ctx).await?;
    Ok(json!([200, answer]))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
///
/// Answers the stripped state the knocking user's client shows while the knock is pending.
pub async fn create_knock_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (room_id, _, _) = send_membership(&services, &ctx, "knock").await?;
    Ok(json!({ "knock_room_state": prejoin_state::for_federation(&services, &room_id)? }))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
///
/// An invite for one of this server's users: checked (format, the sender's signature, an invite
/// of an existing local user, a supported room version), signed by this server, and stored so
/// that the invitee sees it in `/sync` with the stripped state that came with it. A server the
/// room's ACL denies gets 403 when this server knows the room.
pub async fn create_invite(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = ctx
        .body
        .get("room_version")
        .and_then(Value::as_str)
        .and_then(|version| RoomVersionId::try_from(version).ok())
        .ok_or_else(|| Error::bad_json("missing room_version"))?;
    let event = ctx.body.get("event").cloned().unwrap_or(Value::Null);
    let invite_state = ctx.body.get("invite_room_state");
    let signed = receive_invite(&services, &ctx, version, &event, invite_state).await?;
    Ok(json!({ "event": signed }))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`
///
/// The deprecated version-1 form: the body is the invite event itself, with the stripped state in
/// its `unsigned.invite_room_state`, and the room version is 1 or 2 (the spec has the receiver
/// assume so; a room this server knows at version 2 is taken as such). The checks and the
/// signature are those of v2; the answer is `[200, {"event": ...}]`.
pub async fn create_invite_v1(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let version = match services.rooms.room_version(&room_id) {
        Ok((_, RoomVersionId::V2)) => RoomVersionId::V2,
        _ => RoomVersionId::V1,
    };
    let event = ctx.body.clone();
    let invite_state = event
        .get("unsigned")
        .and_then(|unsigned| unsigned.get("invite_room_state"));
    let signed = receive_invite(&services, &ctx, version, &event, invite_state).await?;
    Ok(json!([200, { "event": signed }]))
}

/// The invite checks shared by both versions; answers the event with this server's signature.
///
/// The spec asks for `M_INVALID_PARAM` when the event is not an invite of a local user by a user
/// of the asking server, or fails its signature check.
async fn receive_invite(
    services: &Services,
    ctx: &Ctx,
    version: RoomVersionId,
    event: &Value,
    invite_state: Option<&Value>,
) -> Result<Value> {
    let room_id = ctx.room_param(0)?;
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let rules = version.rules().ok_or_else(|| {
        Error::matrix(
            ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                version.clone(),
            )),
            format!("room version {version} is not supported"),
        )
    })?;
    // A room this server knows has an ACL to honour; of any other it knows nothing yet.
    if services.rooms.exists(&room_id)?
        && !incoming::server_allowed(services, &room_id, ctx.origin())?
    {
        return Err(Error::forbidden("the room's server ACL denies this server"));
    }
    let parsed = incoming::parse_pdu(event, &room_id, &rules)?;
    if parsed.event_id != event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let pdu = incoming::to_pdu(&parsed.event_id, &parsed.object)?;
    let invitee = pdu
        .state_key
        .as_deref()
        .and_then(|key| <&ruma::UserId>::try_from(key).ok())
        .ok_or_else(|| Error::invalid_param("invite without a user state_key"))?;
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.content_value()["membership"] != "invite"
        || invitee.server_name() != services.globals.server_name()
        || pdu.sender.server_name() != ctx.origin()
    {
        return Err(Error::invalid_param(
            "expected an invite of a local user by a user of the sending server",
        ));
    }
    if !services.users.exists(invitee)? {
        return Err(Error::not_found(format!("user {invitee} does not exist")));
    }
    let mut signed = incoming::verify_pdu(services, &parsed, &rules)
        .await
        .map_err(|error| match error {
            Error::Matrix {
                kind: ErrorKind::Forbidden,
                message,
            } => Error::invalid_param(message),
            other => other,
        })?;
    crypto::hash_and_sign_event(
        services.globals.server_name().as_str(),
        services.globals.signing_key(),
        &mut signed,
        &rules,
    )
    .map_err(Error::bad_json)?;
    if !handshake::is_resident(services, &room_id)? {
        let invite_state = prejoin_state::receive(
            services,
            &room_id,
            &rules,
            invite_state,
            prejoin_state::Arrived::Invite,
        )
        .await;
        handshake::store_outside_membership(
            services,
            &room_id,
            &version,
            &signed,
            &pdu,
            &invite_state,
        )?;
    }
    incoming::federation_value(&signed, &rules)
}
