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
    /// The `origin_server_ts` an appservice asked for with `?ts=`; now when `None`.
    pub origin_server_ts: Option<u64>,
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
            origin_server_ts: None,
        }
    }

    /// A message-like event.
    pub fn timeline(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
            origin_server_ts: None,
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
    let queue = services.rooms.timeline.room_queue(room_id);
    for _ in 0..MAX_POLICY_ROUNDS {
        let created = {
            let _turn = queue.lock().await;
            create_or_prepare(services, room_id, sender, &builder, transaction)?
        };
        let pending = match created {
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
        let _turn = queue.lock().await;
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
        let event = Signable {
            rules: &rules,
            state_before,
            transaction,
        };
        event.commit(services, room_id, object, event_id.clone())?;
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

    let shortroomid = rooms.short.get_shortroomid(room_id)?;
    let rules = rules_for(&version_to_use(services, room_id, builder, shortroomid)?)?;
    let (object, state_before) =
        build_template(services, room_id, sender, builder, &rules, shortroomid)?;
    check_size(&object)?;
    let event = Signable {
        rules: &rules,
        state_before,
        transaction,
    };
    if builder.kind == TimelineEventType::RoomCreate
        && rules.authorization.room_create_event_id_as_room_id
    {
        return event.commit_deriving_room_id(services, object);
    }
    let (signed, event_id) = build_and_sign(services, &object, &rules)?;
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
    // The room lock taken above stays held through `commit`, so no other event of this room
    // can read the same state and overwrite this one's change.
    event.commit(services, room_id, signed, event_id.clone())?;
    Ok(Created::Committed((event_id, room_id.to_owned())))
}

/// The version of the room an event goes into: the one a create event names (the room must not
/// exist yet), or the room's.
fn version_to_use(
    services: &Services,
    room_id: &RoomId,
    builder: &PduBuilder,
    shortroomid: Option<u64>,
) -> Result<RoomVersionId> {
    let timeline = &services.rooms.timeline;
    let known = match shortroomid {
        Some(short) => timeline.room_version(short)?,
        None => None,
    };
    if builder.kind != TimelineEventType::RoomCreate {
        return known
            .ok_or_else(|| Error::not_found(format!("room {room_id} is unknown to this server")));
    }
    if known.is_some() {
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
    RoomVersionId::try_from(text).map_err(|_| Error::bad_json("invalid room_version"))
}

/// The spec caps a whole PDU at 65536 bytes of canonical JSON; an unsigned event leaves room for
/// the hashes, signatures and event ID added later.
fn check_size(object: &CanonicalJsonObject) -> Result<()> {
    let unsigned_size = CanonicalJsonValue::Object(object.clone()).to_string().len();
    if unsigned_size + 512 > MAX_PDU_BYTES {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::TooLarge,
            format!("event of {unsigned_size} bytes exceeds the {MAX_PDU_BYTES}-byte limit"),
        ));
    }
    Ok(())
}

/// A built local event's surroundings, for signing and committing it.
struct Signable<'a> {
    rules: &'a RoomVersionRules,
    state_before: Option<u64>,
    transaction: Option<(&'a str, &'a str)>,
}

impl Signable<'_> {
    /// Runs the auth checks on the signed event and commits it into `room_id`.
    fn commit(
        &self,
        services: &Services,
        room_id: &RoomId,
        signed: CanonicalJsonObject,
        event_id: OwnedEventId,
    ) -> Result<()> {
        let pdu = checked_pdu(services, self.rules, &signed, &event_id, self.state_before)?;
        let input = CommitInput::local(room_id, signed, pdu, self.state_before, self.transaction);
        commit(services, input).map(drop)
    }

    /// Signs and commits the create event of a room whose ID is the create event's hash. Two
    /// identical create events (same sender, content and millisecond) would name the same room,
    /// so the derived ID is locked (placeholder locks are unique, so this cannot deadlock) and, if
    /// the room exists, the timestamp moves on by a millisecond and the event is signed again.
    fn commit_deriving_room_id(
        &self,
        services: &Services,
        mut object: CanonicalJsonObject,
    ) -> Result<Created> {
        let timeline = &services.rooms.timeline;
        loop {
            let (signed, event_id) = build_and_sign(services, &object, self.rules)?;
            let derived = OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
                .map_err(Error::internal)?;
            let lock = timeline.room_lock(&derived);
            let _derived_guard = lock.lock();
            if !services.rooms.exists(&derived)? {
                self.commit(services, &derived, signed, event_id.clone())?;
                return Ok(Created::Committed((event_id, derived)));
            }
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
        }
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
    let state_before = match shortroomid {
        Some(short) => rooms.state.get_room_state(short)?,
        None => None,
    };
    let (prev_events, depth) = prev_events_and_depth(services, shortroomid)?;
    let auth_events = auth_events_for(services, sender, builder, rules, state_before)?;
    let mut object = fields_of(services, room_id, sender, builder, rules, depth)?;
    object.insert(
        "prev_events".into(),
        event_references(services, &prev_events, rules)?,
    );
    object.insert(
        "auth_events".into(),
        event_references(services, &auth_events, rules)?,
    );
    Ok((object, state_before))
}

/// The prev events of a new event (the room's forward extremities, at most
/// [`MAX_PREV_EVENTS`]) and its depth (one more than the deepest of them).
fn prev_events_and_depth(
    services: &Services,
    shortroomid: Option<u64>,
) -> Result<(Vec<OwnedEventId>, u64)> {
    let timeline = &services.rooms.timeline;
    let mut prev_events = match shortroomid {
        Some(short) => timeline.extremities(short)?,
        None => Vec::new(),
    };
    prev_events.truncate(MAX_PREV_EVENTS);
    let mut depth = 0u64;
    for prev in &prev_events {
        if let Some(pdu) = timeline.get_pdu(prev)? {
            depth = depth.max(u64::from(pdu.depth));
        }
    }
    Ok((prev_events, depth + 1))
}

/// The auth events of a new event: the state the auth rules need, taken from the state before it.
fn auth_events_for(
    services: &Services,
    sender: &UserId,
    builder: &PduBuilder,
    rules: &RoomVersionRules,
    state_before: Option<u64>,
) -> Result<Vec<OwnedEventId>> {
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
            if let Some(event_id) = services.rooms.state_event_id(hash, event_type, state_key)? {
                auth_events.push(event_id);
            }
        }
    }
    Ok(auth_events)
}

/// The fields of a new event other than its prev and auth events.
fn fields_of(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    builder: &PduBuilder,
    rules: &RoomVersionRules,
    depth: u64,
) -> Result<CanonicalJsonObject> {
    let string = |text: String| CanonicalJsonValue::String(text);
    let integer = |value: u64| value.try_into().map(CanonicalJsonValue::Integer);
    let mut object = CanonicalJsonObject::new();
    object.insert("type".into(), string(builder.kind.to_string()));
    object.insert("sender".into(), string(sender.to_string()));
    let timestamp = builder.origin_server_ts.unwrap_or_else(util::now_millis);
    let now = integer(timestamp).map_err(Error::internal)?;
    object.insert("origin_server_ts".into(), now);
    let depth = integer(depth).map_err(Error::internal)?;
    object.insert("depth".into(), depth);
    object.insert(
        "content".into(),
        CanonicalJsonValue::try_from(builder.content.clone())
            .map_err(|e| Error::bad_json(format!("content: {e}")))?,
    );
    let is_create = builder.kind == TimelineEventType::RoomCreate;
    if !(is_create && rules.authorization.room_create_event_id_as_room_id) {
        object.insert("room_id".into(), string(room_id.to_string()));
    }
    if let Some(state_key) = &builder.state_key {
        object.insert("state_key".into(), string(state_key.clone()));
    }
    if let Some(redacts) = &builder.redacts {
        if !rules.redaction.content_field_redacts {
            object.insert("redacts".into(), string(redacts.to_string()));
        }
    }
    if rules.event_id_format == EventIdFormatVersion::V1 {
        let server = services.globals.server_name();
        let event_id = format!("${}:{server}", util::random_string(18));
        object.insert("event_id".into(), string(event_id));
    }
    Ok(object)
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
