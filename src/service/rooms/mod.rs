//! Rooms: short IDs, state snapshots, the timeline, membership indexes, aliases and the directory,
//! event relationships and the search index.

pub mod alias;
pub mod auth;
pub mod backfill;
pub mod create;
pub mod handshake;
pub mod history;
pub mod incoming;
pub mod join_state;
pub mod members;
pub mod membership;
pub mod pdu;
pub mod power;
pub mod prejoin_state;
pub mod purge;
pub mod rejected;
pub mod relations;
pub mod resident;
pub mod restricted;
pub mod retention;
pub mod room_summary;
pub mod search;
pub mod search_results;
pub mod short;
pub mod shutdown;
pub mod spaces;
pub mod state;
pub mod third_party;
pub mod timeline;
pub mod timestamps;
pub mod transaction;
pub mod upgrade;
pub mod version;
pub mod visibility;

use std::sync::Arc;

use ruma::{events::StateEventType, OwnedEventId, RoomId};

use self::{
    alias::Aliases, members::Members, pdu::Pdu, relations::Relations, short::ShortIds,
    state::RoomState, timeline::Timeline,
};
use crate::{error::Result, store::Db};

/// The room services, built together because they share short IDs.
pub struct Rooms {
    pub short: ShortIds,
    pub state: RoomState,
    pub timeline: Timeline,
    pub members: Members,
    pub alias: Aliases,
    pub handshakes: handshake::Handshakes,
    pub relations: Relations,
    pub search: search::Search,
    pub backfill: backfill::Backfill,
    pub timestamps: timestamps::EventTimes,
    pub rejected: rejected::Rejected,
    pub upgrades: upgrade::Upgrades,
}

impl Rooms {
    /// Opens every room tree.
    pub fn open(db: &Arc<Db>) -> Result<Self> {
        let state = RoomState::open(db);
        let short = ShortIds::open(db, &[state.snapshot_tree()])?;
        let timeline = Timeline::open(db);
        let timestamps = timestamps::EventTimes::open(db);
        timestamps.fill_if_empty(&timeline, db)?;
        Ok(Self {
            short,
            state,
            timeline,
            members: Members::open(db),
            alias: Aliases::open(db),
            handshakes: handshake::Handshakes::open(db),
            relations: Relations::open(db),
            search: search::Search::open(db),
            backfill: backfill::Backfill::default(),
            timestamps,
            rejected: rejected::Rejected::open(db),
            upgrades: upgrade::Upgrades::default(),
        })
    }

    /// The event ID at `(event_type, state_key)` in a state snapshot.
    pub fn state_event_id(
        &self,
        shortstatehash: u64,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let Some(shortstatekey) = self.short.get_shortstatekey(event_type, state_key)? else {
            return Ok(None);
        };
        match self.state.load(shortstatehash)?.get(&shortstatekey) {
            Some(shorteventid) => Ok(Some(self.short.get_eventid(*shorteventid)?)),
            None => Ok(None),
        }
    }

    /// The current state event at `(event_type, state_key)` in a room.
    pub fn current_state_pdu(
        &self,
        room_id: &RoomId,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        let Some(hash) = self.current_state_hash(room_id)? else {
            return Ok(None);
        };
        self.state_pdu(hash, event_type, state_key)
    }

    /// The state event at `(event_type, state_key)` in a snapshot.
    pub fn state_pdu(
        &self,
        shortstatehash: u64,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        match self.state_event_id(shortstatehash, event_type, state_key)? {
            Some(event_id) => self.timeline.get_pdu(&event_id),
            None => Ok(None),
        }
    }

    /// A room's current state snapshot.
    pub fn current_state_hash(&self, room_id: &RoomId) -> Result<Option<u64>> {
        match self.short.get_shortroomid(room_id)? {
            Some(short) => self.state.get_room_state(short),
            None => Ok(None),
        }
    }

    /// Every event of a state snapshot.
    pub fn state_pdus(&self, shortstatehash: u64) -> Result<Vec<Pdu>> {
        let set = self.state.load(shortstatehash)?;
        let mut pdus = Vec::with_capacity(set.len());
        for shorteventid in set.values() {
            if let Some(pdu) = self
                .timeline
                .get_pdu(&self.short.get_eventid(*shorteventid)?)?
            {
                pdus.push(pdu);
            }
        }
        Ok(pdus)
    }

    /// A room's short ID and version; `M_NOT_FOUND` for a room this server does not know.
    pub fn room_version(&self, room_id: &RoomId) -> Result<(u64, ruma::RoomVersionId)> {
        let unknown =
            || crate::error::Error::not_found(format!("room {room_id} is unknown to this server"));
        let short = self.short.get_shortroomid(room_id)?.ok_or_else(unknown)?;
        let version = self.timeline.room_version(short)?.ok_or_else(unknown)?;
        Ok((short, version))
    }

    /// Whether the server knows a room (has its create event).
    pub fn exists(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.current_state_hash(room_id)?.is_some())
    }
}
