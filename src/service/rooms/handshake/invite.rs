//! Inviting a user of another server (`/v2/invite`): the invite is built and signed here,
//! countersigned by the invitee's server, then received like any event from another server.

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::{json, Value};

use super::{encode, request_path};
use crate::{
    error::{Error, Result},
    service::{
        policy,
        rooms::{
            auth, incoming, prejoin_state,
            timeline::{build_and_sign, build_template, PduBuilder, SendTo},
            version::rules_for,
        },
        Services,
    },
};

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
    if let Some(policy) = policy::room_policy(services, room_id)? {
        policy::sign_local_event(services, &policy, &mut signed, &rules).await?;
    }
    let event = crate::service::rooms::pdu::federation_value(&signed, &rules)?;
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
