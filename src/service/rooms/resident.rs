//! Membership handshakes, resident side: the templates of `make_join`, `make_knock` and
//! `make_leave`, the signed events of `send_join`, `send_knock` and `send_leave`, and invites
//! for this server's users. The room lock is taken here, around building and checking a
//! template; the signed events go through `incoming::handle`.
//!
//! The resident side of membership handshakes (`make_*` templates built and auth-checked under the room lock taken here, `send_*` events through `incoming::handle` with the countersignature of restricted joins, invites for local users).

use ruma::{
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::TimelineEventType,
    CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, Value};

use crate::{
    crypto,
    error::{Error, Result},
    service::{
        rooms::{
            auth, handshake, incoming, join_state,
            pdu::Pdu,
            prejoin_state,
            restricted::{self, JoinCheck},
            timeline::{build_template, PduBuilder, SendTo},
            version::rules_for,
        },
        Services,
    },
};

/// Fails unless this server is in the room, its ACL lets `origin` in and (but for a leave) no
/// admin blocked it. A leave needs only the room's state: a server whose users have all left can still let an invitee reject an invite.
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
    if membership != "leave" {
        services.admin.blocks.check_room(room_id)?;
    }
    Ok(())
}

/// A membership template for a user of the asking server, checked against the current state.
///
/// `accepted` are the room versions the asking server supports (its `ver` parameters); without
/// any, only version 1 is meant. Answers the room version and the template.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn make_membership(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    accepted: &[String],
) -> Result<(RoomVersionId, CanonicalJsonObject)> {
    if user.server_name() != origin {
        return Err(Error::forbidden("the user belongs to another server"));
    }
    require_resident(services, room_id, origin, membership)?;
    let (short, version) = services.rooms.room_version(room_id)?;
    if membership == "join" || membership == "knock" {
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
        content = restricted_join_content(services, room_id, user, content)?;
    }
    let builder = PduBuilder::state("m.room.member", user.as_str(), content);
    let lock = services.rooms.timeline.room_lock(room_id);
    let _guard = lock.lock();
    let (object, state_before) =
        build_template(services, room_id, user, &builder, &rules, Some(short))?;
    // Refuse now what the auth rules would refuse at send_join (a banned user, an invite-only room).
    let mut probe = object.clone();
    probe.insert(
        "event_id".into(),
        CanonicalJsonValue::String("$template:probe".into()),
    );
    let pdu = Pdu::from_object(&probe)?;
    auth::check_local_event(services, &rules, &pdu, state_before)?;
    Ok((version, object))
}

/// For a restricted room, names a local user who may invite as the authoriser when the joining
/// user is in one of the allowed rooms; otherwise the spec's errors: `M_UNABLE_TO_GRANT_JOIN`
/// (no local user may invite: try another server), `M_UNABLE_TO_AUTHORISE_JOIN` (this server is
/// in none of the allowed rooms) or `M_FORBIDDEN`.
fn restricted_join_content(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
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

/// Checks a signed membership event from the asking server and commits it through
/// `incoming::handle`; the rest of the room gets it from here. Answers the event countersigned
/// by this server for a restricted join that names one of its users as the authoriser.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn send_membership(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &Value,
    membership: &str,
) -> Result<Option<Value>> {
    require_resident(services, room_id, origin, membership)?;
    let (_, version) = services.rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    let parsed = incoming::parse_pdu(event, room_id, &rules)?;
    if parsed.event_id != event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let pdu = incoming::to_pdu(&parsed.event_id, &parsed.object)?;
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.sender.server_name() != origin
        || pdu.content_value()["membership"] != membership
    {
        return Err(Error::bad_json(format!(
            "expected a {membership} of a user of the sending server"
        )));
    }
    services.stories.check_new_member(services, room_id, &pdu)?;
    let mut value = event.clone();
    let mut countersigned = None;
    // A restricted join names one of our users as the authoriser; the spec has us sign it.
    let authoriser = pdu.content_value()["join_authorised_via_users_server"]
        .as_str()
        .map(str::to_owned);
    if let Some(authoriser) = authoriser {
        if authoriser.ends_with(&format!(":{}", services.globals.server_name())) {
            // Vouch only for a user who still qualifies, through the user the event names.
            match restricted::check_join(services, room_id, &pdu.sender)? {
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
        origin,
        room_id,
        &value,
        SendTo::RoomExcept(Some(origin)),
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
    Ok(countersigned)
}

/// An invite for one of this server's users, from either version of the endpoint: checked
/// (format, the sender's signature, an invite of an existing local user, a supported room
/// version), signed by this server, and stored so that the invitee sees it in `/sync` with the
/// stripped state that came with it. A server the room's ACL denies gets 403 when this server
/// knows the room. Answers the event with this server's signature.
///
/// The spec asks for `M_INVALID_PARAM` when the event is not an invite of a local user by a user
/// of the asking server, or fails its signature check.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn receive_invite(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    version: RoomVersionId,
    event: &Value,
    invite_state: Option<&Value>,
) -> Result<Value> {
    let rules = version.rules().ok_or_else(|| {
        Error::matrix(
            ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                version.clone(),
            )),
            format!("room version {version} is not supported"),
        )
    })?;
    check_invite_room(services, room_id, origin)?;
    let parsed = incoming::parse_pdu(event, room_id, &rules)?;
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
        || pdu.sender.server_name() != origin
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
    let _outside_guard = services.rooms.handshakes.lock_outside(room_id).await;
    if !handshake::is_resident(services, room_id)? {
        let invite_state = prejoin_state::receive(
            services,
            room_id,
            &rules,
            invite_state,
            prejoin_state::Arrived::Invite,
        )
        .await;
        handshake::store_outside_membership(
            services,
            room_id,
            &version,
            &signed,
            &pdu,
            &invite_state,
        )?;
    }
    crate::service::rooms::pdu::federation_value(&signed, &rules)
}

/// Refuses an invite into a room the admins blocked, or from a server the room's ACL denies:
/// a room this server knows has an ACL to honour; of any other it knows nothing yet.
fn check_invite_room(services: &Services, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    services.admin.blocks.check_room(room_id)?;
    if services.rooms.exists(room_id)? && !incoming::server_allowed(services, room_id, origin)? {
        return Err(Error::forbidden("the room's server ACL denies this server"));
    }
    Ok(())
}

/// `send_join`: commits the join (see [`send_membership`]) and answers the state before it and
/// its auth chain, the servers with joined members before the join, and the countersigned event
/// for restricted joins. With `omit_members` the member events the joining server can do without
/// are left out (see [`join_state::for_send_join`]) and `members_omitted` is `true`.
pub async fn send_join(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &Value,
    omit_members: bool,
) -> Result<Value> {
    let countersigned = send_membership(services, origin, room_id, event_id, event, "join").await?;
    let join = services
        .rooms
        .timeline
        .get_pdu(event_id)?
        .ok_or_else(|| Error::forbidden("the join was not accepted"))?;
    let answer = join_state::for_send_join(services, &join, omit_members)?;
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

/// `send_knock`: commits the knock (see [`send_membership`]) and answers the stripped state the
/// knocking user's client shows while the knock is pending.
pub async fn send_knock(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &Value,
) -> Result<Vec<Value>> {
    send_membership(services, origin, room_id, event_id, event, "knock").await?;
    prejoin_state::for_federation(services, room_id)
}
