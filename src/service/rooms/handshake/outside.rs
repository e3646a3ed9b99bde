//! Memberships of a local user in rooms this server is not in: our knocks (`make_knock`/
//! `send_knock`), invites and their withdrawal sent by the room's servers, and our leaves
//! (`make_leave`/`send_leave`). Each is stored as an outlier with the room's stripped state for
//! `/sync`, since there is no timeline to put it in.

use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, Value};

use super::{encode, failed_through, other_servers, request_path, template_object, Signed};
use crate::{
    error::{Error, Result},
    service::{
        notify::Topic,
        rooms::{incoming, pdu::Pdu, prejoin_state, timeline::build_and_sign, version::rules_for},
        Services,
    },
    store::key,
};

/// Knocks through one server with a knock signed here: `send_knock`. The knock is kept like an
/// invite from another server: an outlier, the membership, and the stripped state the room
/// answered with.
pub(super) async fn knock_through(
    services: &Services,
    server: &ServerName,
    knock: Signed<'_>,
) -> Result<OwnedEventId> {
    let Signed {
        room_id,
        version,
        object: signed,
        event_id,
    } = knock;
    let rules = rules_for(&version)?;
    let body = crate::service::rooms::pdu::federation_value(&signed, &rules)?;
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
    rooms.timeline.add_outlier(&pdu.event_id, object)?;
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
    let members = &services.rooms.members;
    services
        .globals
        .write_with_count(|batch, count| members.update_in_batch(room_id, &pdu, count, batch))?;
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
    let body = crate::service::rooms::pdu::federation_value(&signed, &rules)?;
    let path = request_path("v2/send_leave", room_id, &encode(event_id.as_str()));
    services
        .federation_request(server, http::Method::PUT, &path, Some(&body))
        .await?;
    let mut object = signed;
    object.remove("event_id");
    let pdu = incoming::to_pdu(&event_id, &object)?;
    Ok((version, object, pdu))
}
