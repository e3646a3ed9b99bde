//! The room timeline: the one path that writes PDUs ([`commit`]), local event creation
//! ([`create`]), and reads in stream and topological order.

mod backfilled;
mod create;
mod gaps;
pub mod read;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::{StateEventType, TimelineEventType},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
};
use serde_json::Value;

pub use self::backfilled::{commit_backfilled, is_backfilled, BACKFILL_BASE};
pub use self::create::{build_and_sign, build_template, create_and_commit, PduBuilder};
use super::{pdu::Pdu, state};
use crate::{
    error::{Error, Result},
    service::{device_lists, notify::Topic, Services},
    store::{key, Batch, Db, Tree},
};

/// Owns `pduid_pdu` (short room ID u64, stream position u64 → PDU JSON with `event_id`),
/// `eventid_pduid` (event ID → pdu ID), `roomtopo_pduid` (short room ID u64, depth u64, stream
/// position u64 → empty), `roomid_extremities` (short room ID u64 → event IDs joined by 0xff),
/// `userdevicetxnid_eventid` (user 0xff device 0xff room ID 0xff txn ID → event ID) and `roomid_info`
/// (short room ID u64 → room version text) and `eventid_outlierpdu` (event ID → PDU JSON with
/// `event_id`: events known without a place in the timeline, such as the state and auth chain
/// received when joining over federation) and `roomeventid_backwardextremity` (short room ID u64,
/// event ID → depth u64 of the deepest timeline event naming it as a prev event: the events the
/// timeline refers to but does not hold, where backfill starts) and `roomcount_gap` (short room
/// ID u64, stream position u64 → empty: the events received after a gap, see `gaps.rs`).
pub struct Timeline {
    pub(super) pduid_pdu: Tree,
    pub(super) eventid_pduid: Tree,
    pub(super) roomtopo_pduid: Tree,
    roomid_extremities: Tree,
    userdevicetxnid_eventid: Tree,
    roomid_info: Tree,
    pub(super) eventid_outlierpdu: Tree,
    roomeventid_backwardextremity: Tree,
    roomcount_gap: Tree,
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<Mutex<()>>>>,
    versions: Mutex<HashMap<u64, RoomVersionId>>,
    pub(super) pdu_cache: Mutex<HashMap<OwnedEventId, Pdu>>,
}

/// Where an event sits: its room's short ID and its stream position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PduId {
    pub shortroomid: u64,
    pub count: u64,
}

impl PduId {
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.shortroomid.to_be_bytes());
        bytes[8..].copy_from_slice(&self.count.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            shortroomid: key::read_u64(bytes)?,
            count: key::read_u64(bytes.get(8..)?)?,
        })
    }
}

/// Everything `commit` needs besides the event itself.
pub struct CommitInput<'a> {
    pub room_id: &'a RoomId,
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
    pub state_before: Option<u64>,
    pub transaction: Option<(&'a str, &'a str)>,
    /// Which other servers get the event over federation.
    pub send_to: SendTo<'a>,
    /// The room's current state after this event when it is not simply the state after the event:
    /// the resolution of every forward extremity's state, when this event leaves other
    /// extremities in place (events from several servers at once).
    pub current_state: Option<state::StateSet>,
}

/// The federation fan-out of a committed event.
#[derive(Clone, Copy, Debug)]
pub enum SendTo<'a> {
    /// Every server with a joined member, except this one and the given one (where the event
    /// came from).
    RoomExcept(Option<&'a ruma::ServerName>),
    /// Nobody: the event came from another server over `/send`, which sends it to the others.
    Nobody,
}

impl Timeline {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            pduid_pdu: db.tree("pduid_pdu"),
            eventid_pduid: db.tree("eventid_pduid"),
            roomtopo_pduid: db.tree("roomtopo_pduid"),
            roomid_extremities: db.tree("roomid_extremities"),
            userdevicetxnid_eventid: db.tree("userdevicetxnid_eventid"),
            roomid_info: db.tree("roomid_info"),
            eventid_outlierpdu: db.tree("eventid_outlierpdu"),
            roomeventid_backwardextremity: db.tree("roomeventid_backwardextremity"),
            roomcount_gap: db.tree("roomcount_gap"),
            room_locks: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            pdu_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The lock that serialises event creation and state checks in one room.
    pub fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        self.room_locks
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    /// The version of a room the server knows.
    pub fn room_version(&self, shortroomid: u64) -> Result<Option<RoomVersionId>> {
        if let Some(version) = self.versions.lock().get(&shortroomid) {
            return Ok(Some(version.clone()));
        }
        let Some(bytes) = self.roomid_info.get(&key::u64_bytes(shortroomid))? else {
            return Ok(None);
        };
        let version = RoomVersionId::try_from(String::from_utf8_lossy(&bytes).as_ref())
            .map_err(|e| Error::corrupt("roomid_info", e))?;
        self.versions.lock().insert(shortroomid, version.clone());
        Ok(Some(version))
    }

    /// Records the version of a room joined over federation (whose create event is an outlier).
    pub fn set_room_version(&self, shortroomid: u64, version: &RoomVersionId) -> Result<()> {
        self.roomid_info
            .insert(&key::u64_bytes(shortroomid), version.as_str().as_bytes())?;
        self.versions.lock().insert(shortroomid, version.clone());
        Ok(())
    }

    /// Stores events outside the timeline (state and auth chains from other servers), in one batch.
    pub fn add_outliers(&self, objects: &[CanonicalJsonObject], db: &Db) -> Result<()> {
        let mut batch = Batch::default();
        for object in objects {
            let Some(CanonicalJsonValue::String(event_id)) = object.get("event_id") else {
                return Err(Error::internal("outlier without event_id"));
            };
            let json = serde_json::to_vec(object).map_err(Error::internal)?;
            batch.insert(&self.eventid_outlierpdu, event_id.as_bytes(), &json);
        }
        db.write(batch)
    }

    /// Whether an event is stored, in the timeline or as an outlier.
    pub fn has_event(&self, event_id: &ruma::EventId) -> Result<bool> {
        Ok(self.eventid_pduid.contains(event_id.as_bytes())?
            || self.eventid_outlierpdu.contains(event_id.as_bytes())?)
    }

    /// The room's forward extremities. One value per room, so that reading them is a point
    /// lookup: a key per extremity left a tombstone per event for every later scan to skip.
    pub fn extremities(&self, shortroomid: u64) -> Result<Vec<OwnedEventId>> {
        let Some(bytes) = self.roomid_extremities.get(&key::u64_bytes(shortroomid))? else {
            return Ok(Vec::new());
        };
        key::split(&bytes)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let text = std::str::from_utf8(part)
                    .map_err(|e| Error::corrupt("roomid_extremities", e))?;
                OwnedEventId::try_from(text).map_err(|e| Error::corrupt("roomid_extremities", e))
            })
            .collect()
    }

    /// The event a device already sent into a room with this transaction ID. Idempotency is
    /// per device and room, as with Synapse, which keys it on the request path.
    pub fn get_transaction(
        &self,
        user: &str,
        device: &str,
        room_id: &RoomId,
        txn_id: &str,
    ) -> Result<Option<OwnedEventId>> {
        let Some(bytes) = self.userdevicetxnid_eventid.get(&key::join(&[
            user.as_bytes(),
            device.as_bytes(),
            room_id.as_bytes(),
            txn_id.as_bytes(),
        ]))?
        else {
            return Ok(None);
        };
        OwnedEventId::try_from(String::from_utf8_lossy(&bytes).as_ref())
            .map(Some)
            .map_err(|e| Error::corrupt("userdevicetxnid_eventid", e))
    }
}

/// Writes one timeline event, its state, the room's extremities and every index in one atomic
/// batch (with the event queued for the other servers in the room), then runs the follow-up
/// effects in this order: wake sync, wake the federation sender, wake the push sender.
/// (Appservices and admin commands join this list as they are built.) The batch also holds the
/// notifications the event makes for local users (`service::push::prepare`, evaluated before it)
/// and, for a member event, its device list work (`device_lists::membership`).
///
/// The caller holds the room lock and has run the auth checks.
pub fn commit(services: &Services, input: CommitInput<'_>) -> Result<u64> {
    let CommitInput {
        room_id,
        object,
        pdu,
        state_before,
        transaction,
        send_to,
        current_state,
    } = input;
    let rooms = &services.rooms;
    let timeline = &rooms.timeline;
    let shortroomid = rooms.short.get_or_create_shortroomid(room_id)?;
    let mut batch = Batch::default();
    let shorteventid = rooms
        .short
        .shorteventid_in_batch(&pdu.event_id, &mut batch)?;

    let mut unsigned = Value::Object(Default::default());
    let state_after = state_after_event(
        services,
        &pdu,
        shorteventid,
        state_before,
        &mut unsigned,
        &mut batch,
    )?;
    if let Some((device, txn_id)) = transaction {
        unsigned["transaction_id"] = Value::String(txn_id.to_owned());
        unsigned["device_id"] = Value::String(device.to_owned());
        let txn_key = key::join(&[
            pdu.sender.as_bytes(),
            device.as_bytes(),
            room_id.as_bytes(),
            txn_id.as_bytes(),
        ]);
        batch.insert(
            &timeline.userdevicetxnid_eventid,
            &txn_key,
            pdu.event_id.as_bytes(),
        );
    }
    if let Some(after) = state_after {
        rooms
            .state
            .set_event_state(shorteventid, state_before.unwrap_or(0), after, &mut batch);
        let current = match current_state {
            Some(set) => {
                rooms
                    .state
                    .store_snapshot(rooms.short.allocate(), Some(after), set, &mut batch)?
            }
            None => after,
        };
        rooms.state.set_room_state(shortroomid, current, &mut batch);
    }
    batch.remove(&timeline.eventid_outlierpdu, pdu.event_id.as_bytes());
    let own_server = services.globals.server_name();
    let destinations: Vec<ruma::OwnedServerName> = match send_to {
        SendTo::Nobody => Vec::new(),
        SendTo::RoomExcept(origin) => {
            let mut servers: Vec<_> = rooms
                .members
                .servers_in_room(room_id)?
                .iter()
                .filter(|server| *server != own_server && Some(server.as_ref()) != origin)
                .cloned()
                .collect();
            // An invite or a kick reaches the target's server even when none of its users is joined.
            if let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, &pdu.state_key) {
                if let Ok(target) = <&ruma::UserId>::try_from(target.as_str()) {
                    let server = target.server_name();
                    if server != own_server
                        && Some(server) != origin
                        && !servers.iter().any(|known| known == server)
                    {
                        servers.push(server.to_owned());
                    }
                }
            }
            servers
        }
    };
    if pdu.kind == TimelineEventType::RoomCreate {
        let version = pdu
            .content_value()
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1")
            .to_owned();
        batch.insert(
            &timeline.roomid_info,
            &key::u64_bytes(shortroomid),
            version.as_bytes(),
        );
    }

    timeline.note_backward_extremities(shortroomid, &pdu, &mut batch)?;
    // The room's forward extremities: this event replaces the ones it references.
    let mut extremities = timeline.extremities(shortroomid)?;
    timeline.note_gap(
        services,
        shortroomid,
        &pdu,
        !extremities.is_empty(),
        &mut batch,
    )?;
    extremities.retain(|extremity| !pdu.prev_events.contains(extremity));
    extremities.push(pdu.event_id.clone());
    let parts: Vec<&[u8]> = extremities.iter().map(|id| id.as_bytes()).collect();
    batch.insert(
        &timeline.roomid_extremities,
        &key::u64_bytes(shortroomid),
        &key::join(&parts),
    );

    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            read::redact_in_batch(services, room_id, &target, &pdu, &mut batch)?;
        }
    }

    let json = stored_json(object, &pdu, unsigned)?;
    let push = crate::service::push::prepare(services, room_id, &pdu)?;
    // Everything keyed by the stream position but not otherwise depending on it is prepared
    // now, outside the commit lock that serialises every room's writes.
    rooms
        .search
        .index_in_batch((shortroomid, shorteventid), &pdu, &mut batch);
    rooms
        .relations
        .index_in_batch(shortroomid, &pdu, false, &mut batch)?;
    rooms
        .timestamps
        .index_at_count(shortroomid, &pdu, &mut batch);
    services.push.write_in_batch(&push, &mut batch)?;

    let count = services
        .globals
        .write_with_count(|batch_with_count, count| {
            let pdu_id = PduId { shortroomid, count };
            batch.set_count(count);
            batch.insert(&timeline.pduid_pdu, &pdu_id.to_bytes(), &json);
            batch.insert(
                &timeline.eventid_pduid,
                pdu.event_id.as_bytes(),
                &pdu_id.to_bytes(),
            );
            batch.insert(
                &timeline.roomtopo_pduid,
                &topo_key(shortroomid, &pdu, count),
                b"",
            );
            if pdu.kind == TimelineEventType::RoomMember {
                device_lists::membership::member_event_in_batch(
                    services, &mut batch, count, room_id, &pdu,
                )?;
                rooms
                    .members
                    .update_in_batch(room_id, &pdu, count, &mut batch)?;
            }
            services
                .sending
                .queue_pdu_in_batch(&mut batch, &destinations, count, &pdu.event_id);
            batch_with_count.append(std::mem::take(&mut batch));
            Ok(())
        })?;

    if pdu.kind == TimelineEventType::RoomCreate {
        timeline.versions.lock().remove(&shortroomid);
    }
    // A redaction rewrote its target in the batch; drop the cached copy only now that the new
    // form is stored, so that no reader can cache the old one again.
    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            timeline.pdu_cache.lock().remove(&target);
        }
    }
    if pdu.kind == TimelineEventType::RoomMember {
        rooms.members.invalidate_servers(room_id);
    }
    services.notifier.wake(Topic::Room(room_id.to_string()));
    if let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, &pdu.state_key) {
        services.notifier.wake(Topic::User(target.clone()));
        carry_over_push_rules(services, room_id, target, &pdu);
        device_lists::membership::after_member_event(services, room_id, &pdu);
    }
    services.sending.wake(&destinations);
    services.push.wake_sender(&push);
    Ok(count)
}

/// The stored form of an event: its federation form with `event_id` and the local `unsigned`.
fn stored_json(mut object: CanonicalJsonObject, pdu: &Pdu, unsigned: Value) -> Result<Vec<u8>> {
    object.insert(
        "event_id".into(),
        CanonicalJsonValue::String(pdu.event_id.to_string()),
    );
    if unsigned.as_object().is_some_and(|map| !map.is_empty()) {
        let unsigned = CanonicalJsonValue::try_from(unsigned).map_err(Error::internal)?;
        object.insert("unsigned".into(), unsigned);
    }
    serde_json::to_vec(&object).map_err(Error::internal)
}

/// The `roomtopo_pduid` key of an event: room, depth, stream position.
fn topo_key(shortroomid: u64, pdu: &Pdu, count: u64) -> Vec<u8> {
    let mut topo = key::u64_bytes(shortroomid).to_vec();
    topo.extend_from_slice(&key::u64_bytes(u64::from(pdu.depth)));
    topo.extend_from_slice(&key::u64_bytes(count));
    topo
}

/// The state after an event: a state event replaces its key in the state before it (stored as a
/// new snapshot in `batch`, with `prev_content`, `prev_sender` and `replaces_state` added to
/// `unsigned`); any other event shares the state before it.
fn state_after_event(
    services: &Services,
    pdu: &Pdu,
    shorteventid: u64,
    state_before: Option<u64>,
    unsigned: &mut Value,
    batch: &mut Batch,
) -> Result<Option<u64>> {
    let rooms = &services.rooms;
    let Some(state_key) = &pdu.state_key else {
        return Ok(state_before);
    };
    let event_type = StateEventType::from(pdu.kind.to_string());
    let shortstatekey = rooms
        .short
        .get_or_create_shortstatekey(&event_type, state_key)?;
    let mut set = match state_before {
        Some(hash) => (*rooms.state.load(hash)?).clone(),
        None => Default::default(),
    };
    if let Some(previous) = set.insert(shortstatekey, shorteventid) {
        let previous_id = rooms.short.get_eventid(previous)?;
        if let Some(previous_pdu) = rooms.timeline.get_pdu(&previous_id)? {
            unsigned["prev_content"] = previous_pdu.content_value();
            unsigned["prev_sender"] = Value::String(previous_pdu.sender.to_string());
            unsigned["replaces_state"] = Value::String(previous_id.to_string());
        }
    }
    rooms
        .state
        .store_snapshot(rooms.short.allocate(), state_before, set, batch)
        .map(Some)
}

/// After a local user's join: their push rules for the room this one replaces follow them here
/// (`Push::carry_over_on_join`). The join is already committed, so a failure is only logged.
fn carry_over_push_rules(services: &Services, room_id: &RoomId, target: &str, pdu: &Pdu) {
    let Ok(user) = <&ruma::UserId>::try_from(target) else {
        return;
    };
    if user.server_name() != services.globals.server_name()
        || pdu.content_value()["membership"] != "join"
    {
        return;
    }
    if let Err(error) = services.push.carry_over_on_join(services, room_id, user) {
        tracing::warn!(%error, %user, "carrying push rules over to an upgraded room failed");
    }
}
