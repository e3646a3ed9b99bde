//! Membership handshakes with other servers, from this side: joining a remote room
//! (`make_join`/`send_join`), knocking on one (`make_knock`/`send_knock`), inviting a remote user
//! (`/v2/invite`), leaving a room this server only knows through an invite or a knock
//! (`make_leave`/`send_leave`), and storing invites that arrive.

use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
};
use serde_json::{json, Value};

use super::{
    auth, incoming,
    pdu::Pdu,
    prejoin_state,
    timeline::{build_and_sign, build_template, commit, CommitInput, PduBuilder, SendTo},
    version::{self, rules_for},
};
use crate::{
    error::{Error, Result},
    service::{notify::Topic, Services},
    store::{key, Batch, Tree},
};

/// Owns `userroomid_invitestate` (user ID 0xff room ID → JSON array of stripped state events of a
/// room this server is not in, that came with an invite from another server or answered a knock).
pub struct Handshakes {
    userroomid_invitestate: Tree,
}

impl Handshakes {
    /// Opens the tree.
    pub fn open(db: &std::sync::Arc<crate::store::Db>) -> Self {
        Self {
            userroomid_invitestate: db.tree("userroomid_invitestate"),
        }
    }

    /// The stripped state that came with an invite from another server or answered a knock.
    pub fn get_invite_state(&self, user: &UserId, room_id: &RoomId) -> Result<Option<Vec<Value>>> {
        let Some(bytes) = self
            .userroomid_invitestate
            .get(&key::join(&[user.as_bytes(), room_id.as_bytes()]))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("userroomid_invitestate", e))
    }
}

pub use super::incoming::encode;

fn request_path(kind: &str, room_id: &RoomId, rest: &str) -> String {
    format!(
        "/_matrix/federation/{kind}/{}/{rest}",
        encode(room_id.as_str())
    )
}

/// Whether this server takes part in a room (has a joined member).
pub fn is_resident(services: &Services, room_id: &RoomId) -> Result<bool> {
    Ok(services
        .rooms
        .members
        .servers_in_room(room_id)?
        .contains(services.globals.server_name()))
}

/// Joins a local user to a room on other servers, trying each of `servers` in turn: `make_join`
/// for a template, sign it, `send_join`, then store the room's state and auth chain (each event
/// verified and checked against its auth events) and commit the join on top of that state.
#[tracing::instrument(skip_all, fields(room_id = %room_id, user = %user))]
pub async fn join_remote(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content_extra: Value,
) -> Result<OwnedEventId> {
    let mut last_error = Error::not_found(format!("no server to join {room_id} through"));
    for server in other_servers(services, servers) {
        match join_through(services, room_id, user, server, &content_extra).await {
            Ok(event_id) => return Ok(event_id),
            Err(error) => last_error = failed_through(server, "joining", error),
        }
    }
    Err(last_error)
}

/// The servers of a list other than this one, in order.
fn other_servers<'a>(
    services: &Services,
    servers: &'a [OwnedServerName],
) -> impl Iterator<Item = &'a ServerName> {
    let own = services.globals.server_name().to_owned();
    servers
        .iter()
        .filter(move |server| **server != own)
        .map(|server| server.as_ref())
}

/// Logs that a handshake through `server` failed and hands the error on.
fn failed_through(server: &ServerName, what: &str, error: Error) -> Error {
    tracing::info!(%server, %error, "{what} through a server failed");
    error
}

/// Asks `server` for a `make_join` or `make_knock` template (offering every room version this
/// server supports), fills in the membership and `content_extra`, and signs it.
async fn signed_membership(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    server: &ServerName,
    membership: &str,
    content_extra: &Value,
) -> Result<(RoomVersionId, CanonicalJsonObject, OwnedEventId)> {
    let versions: Vec<String> = version::SUPPORTED
        .iter()
        .map(|version| format!("ver={version}"))
        .collect();
    let path = format!(
        "{}?{}",
        request_path(
            &format!("v1/make_{membership}"),
            room_id,
            &encode(user.as_str())
        ),
        versions.join("&")
    );
    let answer = services
        .federation_request(server, http::Method::GET, &path, None)
        .await?;
    let version = RoomVersionId::try_from(answer["room_version"].as_str().unwrap_or("1"))
        .map_err(|_| Error::bad_json("the template has an invalid room version"))?;
    let rules = rules_for(&version)?;
    let mut template = answer["event"].clone();
    if template["type"] != "m.room.member"
        || template["state_key"] != user.as_str()
        || template["sender"] != user.as_str()
    {
        return Err(Error::forbidden(format!(
            "make_{membership} answered a template for another event"
        )));
    }
    template["content"]["membership"] = json!(membership);
    if let Some(extra) = content_extra.as_object() {
        for (field, value) in extra {
            template["content"][field] = value.clone();
        }
    }
    template["origin_server_ts"] = json!(crate::util::now_millis());
    template["origin"] = json!(services.globals.server_name());
    let object = template_object(template, &rules)?;
    let (signed, event_id) = build_and_sign(services, &object, &rules)?;
    Ok((version, signed, event_id))
}

async fn join_through(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    server: &ServerName,
    content_extra: &Value,
) -> Result<OwnedEventId> {
    let (version, signed, event_id) =
        signed_membership(services, room_id, user, server, "join", content_extra).await?;
    let rules = rules_for(&version)?;

    let path = request_path("v2/send_join", room_id, &encode(event_id.as_str()));
    let body = serde_json::to_value(&signed).map_err(crate::error::Error::internal)?;
    let answer = services
        .federation_request(server, http::Method::PUT, &path, Some(&body))
        .await?;
    if is_resident(services, room_id)? {
        // A restricted join this server could not authorise itself (no local user may invite):
        // the room's state is here already, so the join is received like any other event.
        let event = match answer.get("event") {
            Some(event) if event.is_object() => event.clone(),
            _ => incoming::federation_value(&signed, &rules)?,
        };
        incoming::handle(services, server, room_id, &event, SendTo::Nobody).await?;
        return Ok(event_id);
    }

    let shortroomid = services.rooms.short.get_or_create_shortroomid(room_id)?;
    services
        .rooms
        .timeline
        .set_room_version(shortroomid, &version)?;
    let mut events: Vec<Value> = answer["auth_chain"].as_array().cloned().unwrap_or_default();
    let state: Vec<Value> = answer["state"].as_array().cloned().unwrap_or_default();
    events.extend(state.iter().cloned());
    incoming::store_outliers(services, room_id, &rules, &events).await?;
    let mut state_ids = Vec::new();
    for value in &state {
        if let Ok(parsed) = incoming::parse_pdu(value, room_id, &rules) {
            if services.rooms.timeline.has_event(&parsed.event_id)? {
                state_ids.push(parsed.event_id);
            }
        }
    }
    // A restricted join comes back countersigned by the resident server.
    let final_object = match answer.get("event") {
        Some(event) if event.is_object() => {
            let parsed = incoming::parse_pdu(event, room_id, &rules)?;
            if parsed.event_id != event_id {
                return Err(Error::forbidden("send_join returned another event"));
            }
            incoming::verify_pdu(services, &parsed, &rules).await?
        }
        _ => {
            let mut without_id = signed.clone();
            without_id.remove("event_id");
            without_id
        }
    };
    let pdu = incoming::to_pdu(&event_id, &final_object)?;

    let lock = services.rooms.timeline.room_lock(room_id);
    let _guard = lock.lock();
    let state_set = incoming::state_set_of(services, &state_ids)?;
    if state_set.is_empty() {
        return Err(Error::forbidden("send_join answered no room state"));
    }
    let mut batch = Batch::default();
    let state_hash = services.rooms.state.store_snapshot(
        services.rooms.short.allocate(),
        None,
        state_set,
        &mut batch,
    )?;
    services.db.write(batch)?;
    auth::check_local_event(services, &rules, &pdu, Some(state_hash))?;
    index_members(services, room_id, &state_ids)?;
    commit(
        services,
        CommitInput {
            room_id,
            object: final_object,
            pdu,
            state_before: Some(state_hash),
            transaction: None,
            // The resident server sends our join to the rest of the room.
            send_to: SendTo::Nobody,
            current_state: None,
        },
    )?;
    Ok(event_id)
}

/// Indexes the memberships of a room's state received in a join, so that the room's servers
/// and members are known before any of their events arrive.
fn index_members(services: &Services, room_id: &RoomId, state_ids: &[OwnedEventId]) -> Result<()> {
    let mut members = Vec::new();
    for event_id in state_ids {
        if let Some(pdu) = services.rooms.timeline.get_pdu(event_id)? {
            if pdu.kind == TimelineEventType::RoomMember {
                members.push(pdu);
            }
        }
    }
    services.globals.write_with_count(|batch, count| {
        for pdu in &members {
            services
                .rooms
                .members
                .update_in_batch(room_id, pdu, count, batch)?;
        }
        Ok(())
    })?;
    services.rooms.members.invalidate_servers(room_id);
    Ok(())
}

/// Turns a template from another server into an object to sign: no `event_id`, hashes or
/// signatures of its own, and `room_id` only where the room version has it.
fn template_object(
    template: Value,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<CanonicalJsonObject> {
    let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(template) else {
        return Err(Error::bad_json(
            "the template is not a canonical JSON object",
        ));
    };
    for field in ["hashes", "signatures", "unsigned"] {
        object.remove(field);
    }
    if rules.event_id_format != ruma::room_version_rules::EventIdFormatVersion::V1 {
        object.remove("event_id");
    }
    Ok(object)
}

/// Invites a user of another server: the invite is signed here, countersigned by the invitee's
/// server through `/v2/invite`, then committed and sent to the rest of the room.
#[tracing::instrument(skip_all, fields(room_id = %room_id, invitee = %invitee))]
pub async fn invite_remote(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    invitee: &UserId,
    extra: Value,
) -> Result<OwnedEventId> {
    let rooms = &services.rooms;
    let (shortroomid, version) = rooms.room_version(room_id)?;
    let rules = rules_for(&version)?;
    // `extra` adds fields such as `reason` and `is_direct` to the member event's content.
    let mut content = match extra {
        Value::Object(fields) => Value::Object(fields),
        _ => json!({}),
    };
    content["membership"] = json!("invite");
    let builder = PduBuilder::state("m.room.member", invitee.as_str(), content);
    let (mut signed, event_id, stripped) = {
        let lock = rooms.timeline.room_lock(room_id);
        let _guard = lock.lock();
        let (object, state_before) = build_template(
            services,
            room_id,
            sender,
            &builder,
            &rules,
            Some(shortroomid),
        )?;
        let (signed, event_id) = build_and_sign(services, &object, &rules)?;
        let pdu = incoming::to_pdu(&event_id, &signed)?;
        auth::check_local_event(services, &rules, &pdu, state_before)?;
        (
            signed,
            event_id,
            prejoin_state::for_federation(services, room_id)?,
        )
    };
    // In a room with a policy server the invite carries its signature before anyone sees it
    // (asked without the room lock; the signature does not change the event ID).
    if let Some(policy) = crate::service::policy::room_policy(services, room_id)? {
        crate::service::policy::sign_local_event(services, &policy, &mut signed, &rules).await?;
    }
    let event = incoming::federation_value(&signed, &rules)?;
    let body = json!({
        "room_version": version,
        "event": event,
        "invite_room_state": stripped,
    });
    let path = request_path("v2/invite", room_id, &encode(event_id.as_str()));
    let answer = services
        .federation_request(invitee.server_name(), http::Method::PUT, &path, Some(&body))
        .await?;
    let parsed = incoming::parse_pdu(&answer["event"], room_id, &rules)?;
    if parsed.event_id != event_id {
        return Err(Error::forbidden("the invitee's server changed the invite"));
    }
    incoming::verify_pdu(services, &parsed, &rules).await?;
    // The invitee's server has the invite already, but if one of its users is joined it takes
    // the event into its timeline only from `/send`, like every other server of the room.
    let invitee_server_joined = rooms
        .members
        .servers_in_room(room_id)?
        .contains(invitee.server_name());
    let except = (!invitee_server_joined).then_some(invitee.server_name());
    incoming::handle(
        services,
        invitee.server_name(),
        room_id,
        &answer["event"],
        SendTo::RoomExcept(except),
    )
    .await?;
    Ok(event_id)
}

/// Knocks on a room on other servers for a local user, trying each of `servers` in turn:
/// `make_knock` for a template, sign it, `send_knock`. The knock is kept like an invite from
/// another server: an outlier, the membership, and the stripped state the room answered with.
#[tracing::instrument(skip_all, fields(room_id = %room_id, user = %user))]
pub async fn knock_remote(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content_extra: Value,
) -> Result<OwnedEventId> {
    let mut last_error = Error::not_found(format!("no server to knock on {room_id} through"));
    for server in other_servers(services, servers) {
        match knock_through(services, room_id, user, server, &content_extra).await {
            Ok(event_id) => return Ok(event_id),
            Err(error) => last_error = failed_through(server, "knocking", error),
        }
    }
    Err(last_error)
}

async fn knock_through(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    server: &ServerName,
    content_extra: &Value,
) -> Result<OwnedEventId> {
    let (version, signed, event_id) =
        signed_membership(services, room_id, user, server, "knock", content_extra).await?;
    let rules = rules_for(&version)?;
    let body = incoming::federation_value(&signed, &rules)?;
    let path = request_path("v1/send_knock", room_id, &encode(event_id.as_str()));
    let answer = services
        .federation_request(server, http::Method::PUT, &path, Some(&body))
        .await?;
    let stripped = prejoin_state::receive(
        services,
        room_id,
        &rules,
        answer.get("knock_room_state"),
        prejoin_state::Arrived::Knock,
    )
    .await;
    let mut object = signed;
    object.remove("event_id");
    let pdu = incoming::to_pdu(&event_id, &object)?;
    store_outside_membership(services, room_id, &version, &object, &pdu, &stripped)?;
    Ok(event_id)
}

/// A membership change for a local user in a room this server is not in, sent by the room's
/// server because the user is its target: an invite withdrawn or a knock refused (`leave`), or a
/// ban. It is checked (signatures, the sender belongs to `origin`) and stored like the invite or
/// knock it ends. `None` when the event is not such a change (it then takes the ordinary path).
pub async fn outside_membership_update(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    value: &Value,
) -> Result<Option<OwnedEventId>> {
    let Ok((_, version)) = services.rooms.room_version(room_id) else {
        return Ok(None);
    };
    let rules = rules_for(&version)?;
    let parsed = incoming::parse_pdu(value, room_id, &rules)?;
    let pdu = incoming::to_pdu(&parsed.event_id, &parsed.object)?;
    let Some(target) = pdu
        .state_key
        .as_deref()
        .and_then(|key| <&UserId>::try_from(key).ok())
    else {
        return Ok(None);
    };
    let membership = pdu.content_value()["membership"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if pdu.kind != TimelineEventType::RoomMember
        || target.server_name() != services.globals.server_name()
        || !matches!(membership.as_str(), "leave" | "ban")
    {
        return Ok(None);
    }
    let current = services.rooms.members.get_membership(room_id, target)?;
    if !matches!(
        current,
        Some(MembershipState::Invite | MembershipState::Knock)
    ) {
        return Ok(None);
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden(
            "a membership change must come from its sender's server",
        ));
    }
    let state = services
        .rooms
        .handshakes
        .get_invite_state(target, room_id)?
        .unwrap_or_default();
    // A change older than the membership held (an unban's leave overtaken by the invite that
    // followed it, which came straight through `/invite`) changes nothing.
    let held = state
        .iter()
        .rev()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == target.as_str())
        .and_then(|event| event["event_id"].as_str())
        .and_then(|id| OwnedEventId::try_from(id).ok());
    if let Some(held) = held {
        if let Some(held) = services.rooms.timeline.get_pdu(&held)? {
            if held.depth > pdu.depth {
                return Ok(Some(parsed.event_id));
            }
        }
    }
    // Without the room's state this server cannot tell who may withdraw an invite: it believes
    // only the inviter, whose invite it holds (as Synapse does). Anyone else's kick is dropped.
    if current == Some(MembershipState::Invite) {
        let inviter = state
            .iter()
            .rev()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == target.as_str())
            .and_then(|event| event["sender"].as_str());
        if inviter != Some(pdu.sender.as_str()) {
            return Err(Error::forbidden(format!(
                "only the inviter may withdraw the invite of {target}"
            )));
        }
    }
    let object = incoming::verify_pdu(services, &parsed, &rules).await?;
    store_outside_membership(services, room_id, &version, &object, &pdu, &state)?;
    Ok(Some(parsed.event_id))
}

/// Stores the membership of a local user in a room this server is not in (an invite another
/// server sent, or this server's knock): the event as an outlier, the membership in the indexes
/// at a new stream position, and the stripped state for `/sync`.
pub fn store_outside_membership(
    services: &Services,
    room_id: &RoomId,
    version: &RoomVersionId,
    object: &CanonicalJsonObject,
    pdu: &Pdu,
    invite_state: &[Value],
) -> Result<()> {
    let Some(invitee) = pdu.state_key.as_deref() else {
        return Err(Error::bad_json("membership without state_key"));
    };
    let rooms = &services.rooms;
    if rooms.room_version(room_id).is_err() {
        let shortroomid = rooms.short.get_or_create_shortroomid(room_id)?;
        rooms.timeline.set_room_version(shortroomid, version)?;
    }
    let mut stored = object.clone();
    stored.insert(
        "event_id".into(),
        CanonicalJsonValue::String(pdu.event_id.to_string()),
    );
    services
        .rooms
        .timeline
        .add_outliers(std::slice::from_ref(&stored), &services.db)?;
    // The user's own member event replaces any earlier one; it keeps its ID so that `/sync` can
    // show the event itself when the membership ends.
    let mut state: Vec<Value> = invite_state
        .iter()
        .filter(|event| !(event["type"] == "m.room.member" && event["state_key"] == invitee))
        .cloned()
        .collect();
    let mut own = pdu.to_stripped_value();
    own["event_id"] = json!(pdu.event_id);
    own["origin_server_ts"] = json!(pdu.origin_server_ts);
    state.push(own);
    let state_json = serde_json::to_vec(&state).map_err(Error::internal)?;
    let handshakes = &services.rooms.handshakes;
    services.globals.write_with_count(|batch, count| {
        services
            .rooms
            .members
            .update_in_batch(room_id, pdu, count, batch)?;
        batch.insert(
            &handshakes.userroomid_invitestate,
            &key::join(&[invitee.as_bytes(), room_id.as_bytes()]),
            &state_json,
        );
        Ok(())
    })?;
    services.notifier.wake(Topic::User(invitee.to_owned()));
    Ok(())
}

/// Leaves (or rejects an invite to, or rescinds a knock on) a room this server is not resident
/// in, through `servers` (`make_leave`/`send_leave`); the signed leave is then stored like the
/// invite or knock it ends. If no server answers, the membership is set to `leave` locally only.
pub async fn leave_remote(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
) -> Result<()> {
    for server in other_servers(services, servers) {
        match leave_through(services, room_id, user, server).await {
            Ok((version, object, pdu)) => {
                let state = services
                    .rooms
                    .handshakes
                    .get_invite_state(user, room_id)?
                    .unwrap_or_default();
                return store_outside_membership(
                    services, room_id, &version, &object, &pdu, &state,
                );
            }
            Err(error) => drop(failed_through(server, "leaving", error)),
        }
    }
    // Record the leave locally anyway, so the invite disappears for the user. The event is this
    // server's own record (unsigned, never sent): stored like the invite it ends, so that `/sync`
    // shows the user their leave.
    let pdu_value = json!({
        "event_id": format!("$leave-{}", crate::util::random_string(16)),
        "room_id": room_id, "sender": user, "origin_server_ts": crate::util::now_millis(),
        "type": "m.room.member", "state_key": user, "content": { "membership": "leave" },
        "prev_events": [], "auth_events": [], "depth": 0,
    });
    let pdu: Pdu = serde_json::from_value(pdu_value.clone()).map_err(Error::internal)?;
    if let Ok((_, version)) = services.rooms.room_version(room_id) {
        let object =
            serde_json::from_value::<CanonicalJsonObject>(pdu_value).map_err(Error::internal)?;
        let state = services
            .rooms
            .handshakes
            .get_invite_state(user, room_id)?
            .unwrap_or_default();
        return store_outside_membership(services, room_id, &version, &object, &pdu, &state);
    }
    services.globals.write_with_count(|batch, count| {
        services
            .rooms
            .members
            .update_in_batch(room_id, &pdu, count, batch)
    })?;
    services.notifier.wake(Topic::User(user.to_string()));
    Ok(())
}

async fn leave_through(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    server: &ServerName,
) -> Result<(RoomVersionId, CanonicalJsonObject, Pdu)> {
    let path = request_path("v1/make_leave", room_id, &encode(user.as_str()));
    let answer = services
        .federation_request(server, http::Method::GET, &path, None)
        .await?;
    let version = RoomVersionId::try_from(answer["room_version"].as_str().unwrap_or("1"))
        .map_err(|_| Error::bad_json("make_leave answered an invalid room version"))?;
    let rules = rules_for(&version)?;
    let mut template = answer["event"].clone();
    if template["state_key"] != user.as_str() || template["sender"] != user.as_str() {
        return Err(Error::forbidden(
            "make_leave answered a template for another event",
        ));
    }
    template["content"] = json!({ "membership": "leave" });
    template["origin_server_ts"] = json!(crate::util::now_millis());
    let object = template_object(template, &rules)?;
    let (signed, event_id) = build_and_sign(services, &object, &rules)?;
    let body = incoming::federation_value(&signed, &rules)?;
    let path = request_path("v2/send_leave", room_id, &encode(event_id.as_str()));
    services
        .federation_request(server, http::Method::PUT, &path, Some(&body))
        .await?;
    let mut object = signed;
    object.remove("event_id");
    let pdu = incoming::to_pdu(&event_id, &object)?;
    Ok((version, object, pdu))
}

/// The servers to try for a room this server is not in: those the client named, the server of
/// whoever invited the user, and without any of those the server in the room ID (before room
/// version 12).
pub fn candidate_servers(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    named: Vec<OwnedServerName>,
) -> Result<Vec<OwnedServerName>> {
    let mut servers = named;
    if matches!(
        services.rooms.members.get_membership(room_id, user)?,
        Some(MembershipState::Invite | MembershipState::Knock)
    ) {
        if let Some(state) = services.rooms.handshakes.get_invite_state(user, room_id)? {
            for event in state {
                // The inviter's server, then the creator's and whoever set the join rules.
                let relevant = (event["type"] == "m.room.member"
                    && event["state_key"] == user.as_str())
                    || event["type"] == "m.room.create"
                    || event["type"] == "m.room.join_rules";
                if relevant {
                    if let Some(sender) = event["sender"]
                        .as_str()
                        .and_then(|sender| <&UserId>::try_from(sender).ok())
                    {
                        servers.push(sender.server_name().to_owned());
                    }
                }
            }
        }
    }
    // The room ID's server is a last resort: servers the client names are the ones to use (a
    // restricted join must fail over only to servers that can authorise it).
    if servers.is_empty() {
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    servers.retain(|server| seen.insert(server.clone()));
    Ok(servers)
}
