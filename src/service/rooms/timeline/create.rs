//! Local event creation: fill in prev and auth events and depth, hash, sign, check the auth rules,
//! and hand the event to `commit`.

use ruma::{
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::Value;

use super::{commit, CommitInput};
use crate::{
    crypto,
    error::{Error, Result},
    service::{
        policy,
        rooms::{pdu::Pdu, version::rules_for},
        Services,
    },
    util,
};

/// The largest PDU the spec allows, in bytes of canonical JSON.
const MAX_PDU_BYTES: usize = 65536;

/// At most this many forward extremities are referenced by one new event.
const MAX_PREV_EVENTS: usize = 20;

/// What a local sender wants to send; everything else is filled in.
#[derive(Clone, Debug)]
pub struct PduBuilder {
    pub kind: TimelineEventType,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl PduBuilder {
    /// A state event.
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: Value,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    /// A message-like event.
    pub fn timeline(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// How many times a local event is built again when the room's state changed while its policy
/// server was being asked.
const MAX_POLICY_ROUNDS: usize = 3;

/// Builds, signs, auth-checks and commits a local event under the room lock. For a room's
/// `m.room.create` event pass the room ID it will have (ignored for room versions whose room ID
/// is the create event's ID), and the returned room ID is the one to use.
///
/// In a room that uses a policy server the event is prepared under the lock, the lock is
/// released while the policy server signs it (`service::policy`), and it is committed under the
/// lock again if the room's state has not changed meanwhile; otherwise it is built again on the
/// new state. A refusal or an unreachable policy server fails the request and nothing is stored.
#[tracing::instrument(skip_all, fields(room_id = %room_id, kind = %builder.kind))]
pub async fn create_and_commit(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    builder: PduBuilder,
    transaction: Option<(&str, &str)>,
) -> Result<(OwnedEventId, OwnedRoomId)> {
    for _ in 0..MAX_POLICY_ROUNDS {
        let pending = match create_or_prepare(services, room_id, sender, &builder, transaction)? {
            Created::Committed(ids) => return Ok(ids),
            Created::NeedsPolicy(pending) => pending,
        };
        let Pending {
            mut object,
            event_id,
            state_before,
            rules,
            policy,
        } = pending;
        // No lock is held across the request to the policy server.
        policy::sign_local_event(services, &policy, &mut object, &rules).await?;
        let lock = services.rooms.timeline.room_lock(room_id);
        let _guard = lock.lock();
        if let Some((device, txn_id)) = transaction {
            let user = sender.as_str();
            let timeline = &services.rooms.timeline;
            if let Some(sent) = timeline.get_transaction(user, device, room_id, txn_id)? {
                return Ok((sent, room_id.to_owned()));
            }
        }
        if services.rooms.current_state_hash(room_id)? != state_before {
            continue;
        }
        commit_checked(
            services,
            &rules,
            room_id,
            object,
            event_id.clone(),
            state_before,
            transaction,
        )?;
        return Ok((event_id, room_id.to_owned()));
    }
    Err(Error::Conflict(format!(
        "the state of {room_id} kept changing while its policy server was asked; try again"
    )))
}

/// What [`create_or_prepare`] did.
enum Created {
    /// The event is committed: its ID and room ID.
    Committed((OwnedEventId, OwnedRoomId)),
    /// The room uses a policy server: the event is built, signed and auth-checked, but waits for
    /// the policy server's signature.
    NeedsPolicy(Pending),
}

/// A local event waiting for its policy server's signature.
struct Pending {
    object: CanonicalJsonObject,
    event_id: OwnedEventId,
    state_before: Option<u64>,
    rules: RoomVersionRules,
    policy: policy::RoomPolicy,
}

/// The part of [`create_and_commit`] under the room lock: builds and signs the event, then either
/// commits it or, in a room with a policy server, hands it back auth-checked.
fn create_or_prepare(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    builder: &PduBuilder,
    transaction: Option<(&str, &str)>,
) -> Result<Created> {
    let rooms = &services.rooms;
    let lock = rooms.timeline.room_lock(room_id);
    let _guard = lock.lock();

    let is_create = builder.kind == TimelineEventType::RoomCreate;
    let shortroomid = rooms.short.get_shortroomid(room_id)?;
    let version = if is_create {
        if shortroomid.is_some()
            && rooms
                .timeline
                .room_version(shortroomid.unwrap_or(0))?
                .is_some()
        {
            return Err(Error::matrix(
                ruma::api::error::ErrorKind::RoomInUse,
                format!("room {room_id} already exists"),
            ));
        }
        let text = builder
            .content
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        RoomVersionId::try_from(text).map_err(|_| Error::bad_json("invalid room_version"))?
    } else {
        let version = match shortroomid {
            Some(short) => rooms.timeline.room_version(short)?,
            None => None,
        };
        version
            .ok_or_else(|| Error::not_found(format!("room {room_id} is unknown to this server")))?
    };
    let rules = rules_for(&version)?;
    let (object, state_before) =
        build_template(services, room_id, sender, builder, &rules, shortroomid)?;
    // The spec caps a whole PDU at 65536 bytes of canonical JSON; leave room for the hashes,
    // signatures and event ID added below.
    let unsigned_size = CanonicalJsonValue::Object(object.clone()).to_string().len();
    if unsigned_size + 512 > MAX_PDU_BYTES {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::TooLarge,
            format!("event of {unsigned_size} bytes exceeds the {MAX_PDU_BYTES}-byte limit"),
        ));
    }
    let derives_room_id = is_create && rules.authorization.room_create_event_id_as_room_id;
    let mut object = object;
    loop {
        let (signed, event_id) = build_and_sign(services, &object, &rules)?;
        if !derives_room_id {
            if !policy::is_exempt(&signed) {
                if let Some(policy) = policy::room_policy(services, room_id)? {
                    // Auth-check first: the policy server is not asked about an event the auth
                    // rules refuse anyway.
                    checked_pdu(services, &rules, &signed, &event_id, state_before)?;
                    return Ok(Created::NeedsPolicy(Pending {
                        object: signed,
                        event_id,
                        state_before,
                        rules,
                        policy,
                    }));
                }
            }
            // The room lock taken above stays held through `commit`, so no other event of this
            // room can read the same state and overwrite this one's change.
            commit_checked(
                services,
                &rules,
                room_id,
                signed,
                event_id.clone(),
                state_before,
                transaction,
            )?;
            return Ok(Created::Committed((event_id, room_id.to_owned())));
        }
        // A v12 room ID is the create event's hash, so two identical create events (same sender,
        // content and millisecond) would name the same room. Lock the derived ID (placeholder
        // locks are unique, so this cannot deadlock) and, if the room exists, move the timestamp
        // on by a millisecond and sign again.
        let derived = OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
            .map_err(Error::internal)?;
        let lock = rooms.timeline.room_lock(&derived);
        let _derived_guard = lock.lock();
        if rooms.exists(&derived)? {
            let next = match object.get("origin_server_ts") {
                Some(CanonicalJsonValue::Integer(ts)) => {
                    u64::try_from(i64::from(*ts)).unwrap_or(0) + 1
                }
                _ => util::now_millis(),
            };
            object.insert(
                "origin_server_ts".into(),
                CanonicalJsonValue::Integer(next.try_into().map_err(Error::internal)?),
            );
            continue;
        }
        commit_checked(
            services,
            &rules,
            &derived,
            signed,
            event_id.clone(),
            state_before,
            transaction,
        )?;
        return Ok(Created::Committed((event_id, derived)));
    }
}

/// Builds an unsigned event for the room's current state: prev_events from the forward
/// extremities, auth_events from the state, depth, timestamp. Returns it with the state snapshot it
/// was built on. Used for local events and for the `make_join`/`make_leave`/`make_knock`
/// templates other servers ask for; the caller holds the room lock.
pub fn build_template(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    builder: &PduBuilder,
    rules: &RoomVersionRules,
    shortroomid: Option<u64>,
) -> Result<(CanonicalJsonObject, Option<u64>)> {
    let rooms = &services.rooms;
    let is_create = builder.kind == TimelineEventType::RoomCreate;
    let state_before = match shortroomid {
        Some(short) => rooms.state.get_room_state(short)?,
        None => None,
    };

    // prev_events and depth come from the forward extremities.
    let mut prev_events = match shortroomid {
        Some(short) => rooms.timeline.extremities(short)?,
        None => Vec::new(),
    };
    prev_events.truncate(MAX_PREV_EVENTS);
    let mut depth = 0u64;
    for prev in &prev_events {
        if let Some(pdu) = rooms.timeline.get_pdu(prev)? {
            depth = depth.max(u64::from(pdu.depth));
        }
    }
    depth += 1;

    // auth_events: the state the auth rules need, taken from the state before the event.
    let content_raw = serde_json::value::to_raw_value(&builder.content).map_err(Error::internal)?;
    let auth_types = ruma::state_res::auth_types_for_event(
        &builder.kind,
        sender,
        builder.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(|error| Error::bad_json(format!("invalid event content: {error}")))?;
    let mut auth_events = Vec::new();
    if let Some(hash) = state_before {
        for (event_type, state_key) in &auth_types {
            if let Some(event_id) = rooms.state_event_id(hash, event_type, state_key)? {
                auth_events.push(event_id);
            }
        }
    }

    let mut object = CanonicalJsonObject::new();
    let now = util::now_millis();
    object.insert(
        "type".into(),
        CanonicalJsonValue::String(builder.kind.to_string()),
    );
    object.insert(
        "sender".into(),
        CanonicalJsonValue::String(sender.to_string()),
    );
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(now.try_into().map_err(Error::internal)?),
    );
    object.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(depth.try_into().map_err(Error::internal)?),
    );
    object.insert(
        "content".into(),
        CanonicalJsonValue::try_from(builder.content.clone())
            .map_err(|e| Error::bad_json(format!("content: {e}")))?,
    );
    if !(is_create && rules.authorization.room_create_event_id_as_room_id) {
        object.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
    }
    if let Some(state_key) = &builder.state_key {
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String(state_key.clone()),
        );
    }
    if let Some(redacts) = &builder.redacts {
        if !rules.redaction.content_field_redacts {
            object.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }
    object.insert(
        "prev_events".into(),
        event_references(services, &prev_events, rules)?,
    );
    object.insert(
        "auth_events".into(),
        event_references(services, &auth_events, rules)?,
    );
    if rules.event_id_format == EventIdFormatVersion::V1 {
        let event_id = format!(
            "${}:{}",
            util::random_string(18),
            services.globals.server_name()
        );
        object.insert("event_id".into(), CanonicalJsonValue::String(event_id));
    }

    Ok((object, state_before))
}

/// Adds hashes and this server's signature to an event and computes its ID (the reference hash
/// from room version 3 on, the `event_id` member before).
pub fn build_and_sign(
    services: &Services,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(CanonicalJsonObject, OwnedEventId)> {
    let mut signed = object.clone();
    crypto::hash_and_sign_event(
        services.globals.server_name().as_str(),
        services.globals.signing_key(),
        &mut signed,
        rules,
    )
    .map_err(|error| Error::bad_json(format!("event cannot be signed: {error}")))?;
    let event_id = match signed.get("event_id") {
        Some(CanonicalJsonValue::String(id)) => {
            OwnedEventId::try_from(id.as_str()).map_err(Error::internal)?
        }
        _ => crypto::reference_event_id(&signed, rules).map_err(Error::internal)?,
    };
    Ok((signed, event_id))
}

/// Runs the auth checks on a signed local event and commits it; the caller holds the room lock.
fn commit_checked(
    services: &Services,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    object: CanonicalJsonObject,
    event_id: OwnedEventId,
    state_before: Option<u64>,
    transaction: Option<(&str, &str)>,
) -> Result<()> {
    let pdu = checked_pdu(services, rules, &object, &event_id, state_before)?;
    commit(
        services,
        CommitInput {
            room_id,
            object,
            pdu,
            state_before,
            transaction,
            send_to: super::SendTo::RoomExcept(None),
            current_state: None,
        },
    )?;
    Ok(())
}

/// The event as a [`Pdu`], after the auth checks against the state it was built on.
fn checked_pdu(
    services: &Services,
    rules: &RoomVersionRules,
    object: &CanonicalJsonObject,
    event_id: &OwnedEventId,
    state_before: Option<u64>,
) -> Result<Pdu> {
    let mut pdu_object = object.clone();
    pdu_object.insert(
        "event_id".into(),
        CanonicalJsonValue::String(event_id.to_string()),
    );
    let pdu = Pdu::from_object(&pdu_object)?;
    super::super::auth::check_local_event(services, rules, &pdu, state_before)?;
    Ok(pdu)
}

/// The form of `prev_events`/`auth_events` for the room version: bare IDs, or `[id, hashes]` pairs
/// in versions 1 and 2.
fn event_references(
    services: &Services,
    ids: &[OwnedEventId],
    rules: &RoomVersionRules,
) -> Result<CanonicalJsonValue> {
    let mut list = Vec::new();
    for id in ids {
        if rules.event_id_format == EventIdFormatVersion::V1 {
            let hashes = services
                .rooms
                .timeline
                .get_pdu_object(id)?
                .and_then(|object| object.get("hashes").cloned())
                .unwrap_or_else(|| CanonicalJsonValue::Object(Default::default()));
            list.push(CanonicalJsonValue::Array(vec![
                CanonicalJsonValue::String(id.to_string()),
                hashes,
            ]));
        } else {
            list.push(CanonicalJsonValue::String(id.to_string()));
        }
    }
    Ok(CanonicalJsonValue::Array(list))
}
