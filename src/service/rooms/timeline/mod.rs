//! The room timeline: the one pipeline that writes PDUs ([`commit`], with its registered steps),
//! local event creation ([`create`]), and reads in stream and topological order.
//!
//! PDU storage in stream order (`pduid_pdu`) and topological order (`roomtopo_pduid`), forward extremities (one value per room, a point read on every send), transaction IDs, redaction pruning, and a bounded cache of parsed events (the auth checks of each send read the same few state events); `commit` drops a redacted event from the cache only after the pruned form is written.
//! `commit` (`timeline/pipeline.rs`) takes a checked event with its state before (a stored snapshot for a local event, a state set for a received one) and writes the event, its state snapshots, every index and the outgoing queues in one batch, so a crash leaves all of it or none.
//! The index writers and after-commit effects are registered steps (`timeline/steps.rs`: `INDEXES`, `AT_COUNT` under the global commit lock, `EFFECTS`), each a small function of the commit context marked live-only or always; a new index or effect is one more entry.
//! Backward extremities (`roomeventid_backwardextremity`: prev events the timeline names but does not hold, with the depth of the deepest event naming them) are a step for both modes, in the event's batch.
//! Gaps (`roomcount_gap`, `timeline/gaps.rs`): `commit` marks, in the event's batch, an event one of whose prev events is neither in the timeline nor rejected, unless it is the room's first event here (a join over federation); `/sync` ends a timeline batch at the newest gap since its token and marks it `limited`, so that clients page back over the gap instead of showing both sides as adjacent.
//! `Mode::History` writes history fetched by backfill at stream positions counted down from `u64::MAX` (at or above `BACKFILL_BASE`, 2^63): every stream reader (`/sync`, device lists, sync tokens) scans below the current position, so backfilled events never look new, while `/messages` and `/context` walk the topological index, where they sit at their depth.
//! History writes the event, its state, the search, relation and timestamp indexes and its redaction, and leaves current state, forward extremities, transaction IDs, memberships, the federation queue and notifications alone, and wakes nobody.

mod backfilled;
mod create;
mod gaps;
mod pipeline;
pub mod read;
mod steps;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId,
};

pub use self::backfilled::{is_backfilled, BACKFILL_BASE};
pub use self::create::{build_and_sign, build_template, create_and_commit, PduBuilder};
pub use self::pipeline::{commit, CommitContext, CommitInput, Mode, SendTo, StateBefore};
use super::pdu::Pdu;
use crate::{
    error::{Error, Result},
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
    room_queues: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
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
            room_queues: Mutex::new(HashMap::new()),
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

    /// The queue that local event creators in one room wait in (asynchronously) before they
    /// take [`Self::room_lock`]: the room lock blocks its thread, so concurrent sends into one
    /// room would otherwise park every async worker but the lock holder's, and `/sync` and every
    /// other request would wait for the room's commits.
    pub fn room_queue(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_queues
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
    pub fn add_outliers(&self, objects: &[CanonicalJsonObject]) -> Result<()> {
        let mut batch = Batch::default();
        for object in objects {
            let Some(CanonicalJsonValue::String(event_id)) = object.get("event_id") else {
                return Err(Error::internal("outlier without event_id"));
            };
            let json = serde_json::to_vec(object).map_err(Error::internal)?;
            batch.insert(&self.eventid_outlierpdu, event_id.as_bytes(), &json);
        }
        self.write(batch)
    }

    /// Stores one event outside the timeline: its canonical object without `event_id`.
    pub fn add_outlier(&self, event_id: &EventId, object: &CanonicalJsonObject) -> Result<()> {
        let mut stored = object.clone();
        stored.insert(
            "event_id".into(),
            CanonicalJsonValue::String(event_id.to_string()),
        );
        self.add_outliers(std::slice::from_ref(&stored))
    }

    /// Writes a batch of work that goes with the timeline but is no event of it (outliers, the
    /// state of a rejected event). Events themselves are written by [`commit`] only.
    pub fn write(&self, batch: Batch) -> Result<()> {
        self.store().write(batch)
    }

    /// The store the timeline's trees live in, for writes under the global commit lock.
    fn store(&self) -> &Db {
        self.pduid_pdu.db()
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

    /// Replaces a room's forward extremities in `batch`.
    fn set_extremities(&self, shortroomid: u64, extremities: &[OwnedEventId], batch: &mut Batch) {
        let parts: Vec<&[u8]> = extremities.iter().map(|id| id.as_bytes()).collect();
        batch.insert(
            &self.roomid_extremities,
            &key::u64_bytes(shortroomid),
            &key::join(&parts),
        );
    }

    /// Forgets the cached version of a room, after its create event is written.
    fn forget_version(&self, shortroomid: u64) {
        self.versions.lock().remove(&shortroomid);
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
