//! Reading the timeline (by event ID, in stream order, in topological order) and pruning
//! redacted events.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId};
use serde_json::Value;

use super::{PduId, Timeline};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::Pdu, Services},
    store::{key, Batch},
};

/// How many parsed events the cache keeps before it starts over.
const PDU_CACHE_ENTRIES: usize = 4096;

/// A topological position: depth, then stream position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopoPos {
    pub depth: u64,
    pub count: u64,
}

impl Timeline {
    /// Where an event is stored.
    pub fn get_pdu_id(&self, event_id: &EventId) -> Result<Option<PduId>> {
        Ok(self
            .eventid_pduid
            .get(event_id.as_bytes())?
            .and_then(|bytes| PduId::from_bytes(&bytes)))
    }

    /// The stored JSON of an event (federation form plus `event_id` and local `unsigned`).
    /// Outliers are found too.
    pub fn get_pdu_object(&self, event_id: &EventId) -> Result<Option<CanonicalJsonObject>> {
        let Some(pdu_id) = self.get_pdu_id(event_id)? else {
            return self.get_outlier_object(event_id);
        };
        self.get_object_at(pdu_id)
    }

    fn get_outlier_object(&self, event_id: &EventId) -> Result<Option<CanonicalJsonObject>> {
        let Some(bytes) = self.eventid_outlierpdu.get(event_id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("eventid_outlierpdu", e))
    }

    fn get_object_at(&self, pdu_id: PduId) -> Result<Option<CanonicalJsonObject>> {
        let Some(bytes) = self.pduid_pdu.get(&pdu_id.to_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("pduid_pdu", e))
    }

    /// An event by ID.
    /// Recently used events come from an in-memory cache, because the auth checks of every new
    /// event read the same few state events.
    pub fn get_pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        if let Some(pdu) = self.pdu_cache.lock().get(event_id) {
            return Ok(Some(pdu.clone()));
        }
        let pdu = match self.get_pdu_id(event_id)? {
            Some(pdu_id) => self.get_pdu_at(pdu_id)?,
            None => match self.eventid_outlierpdu.get(event_id.as_bytes())? {
                Some(bytes) => Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| Error::corrupt("eventid_outlierpdu", e))?,
                ),
                None => None,
            },
        };
        if let Some(pdu) = &pdu {
            let mut cache = self.pdu_cache.lock();
            if cache.len() >= PDU_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(event_id.to_owned(), pdu.clone());
        }
        Ok(pdu)
    }

    /// An event in the form sent to other servers: as stored, without local `unsigned` data, and
    /// without `event_id` in room versions that derive it.
    pub fn get_federation_pdu(&self, event_id: &EventId) -> Result<Option<CanonicalJsonObject>> {
        let Some(mut object) = self.get_pdu_object(event_id)? else {
            return Ok(None);
        };
        object.remove("unsigned");
        // Room versions 1 and 2 have `$local:server` IDs, which are part of the event; later
        // versions derive IDs from the reference hash, whose base64 never contains a colon.
        if !event_id.as_str().contains(':') {
            object.remove("event_id");
        }
        Ok(Some(object))
    }

    /// [`Self::get_federation_pdu`] put through the room version's redaction algorithm: what a
    /// server that may not see an event gets instead of it (its graph and auth links stay intact).
    pub fn get_federation_pdu_redacted(
        &self,
        event_id: &EventId,
    ) -> Result<Option<CanonicalJsonObject>> {
        let Some(pdu_id) = self.get_pdu_id(event_id)? else {
            return Ok(None);
        };
        let Some(version) = self.room_version(pdu_id.shortroomid)? else {
            return Ok(None);
        };
        let Some(object) = self.get_federation_pdu(event_id)? else {
            return Ok(None);
        };
        let rules = crate::service::rooms::version::rules_for(&version)?;
        ruma::canonical_json::redact(object, &rules.redaction, None)
            .map(Some)
            .map_err(Error::internal)
    }

    /// An event by where it is stored.
    pub fn get_pdu_at(&self, pdu_id: PduId) -> Result<Option<Pdu>> {
        let Some(bytes) = self.pduid_pdu.get(&pdu_id.to_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("pduid_pdu", e))
    }

    /// Every timeline event of every room, in storage order (indexes built after the events
    /// they cover, once, at startup).
    pub fn iter_all(&self) -> impl Iterator<Item = Result<(PduId, Pdu)>> + '_ {
        self.pduid_pdu.iter_from(&[], false).map(|entry| {
            let (db_key, value) = entry?;
            let pdu_id = PduId::from_bytes(&db_key)
                .ok_or_else(|| Error::corrupt("pduid_pdu", "short key"))?;
            let pdu = serde_json::from_slice(&value).map_err(|e| Error::corrupt("pduid_pdu", e))?;
            Ok((pdu_id, pdu))
        })
    }

    /// A room's events with stream positions below `before`, newest first.
    pub fn iter_before(
        &self,
        shortroomid: u64,
        before: u64,
    ) -> impl Iterator<Item = Result<(u64, Pdu)>> + '_ {
        let start = PduId {
            shortroomid,
            count: before.saturating_sub(1),
        }
        .to_bytes();
        self.pduid_pdu
            .iter_from(&start, true)
            .map(|entry| {
                let (db_key, value) = entry?;
                let pdu_id = PduId::from_bytes(&db_key)
                    .ok_or_else(|| Error::corrupt("pduid_pdu", "short key"))?;
                let pdu =
                    serde_json::from_slice(&value).map_err(|e| Error::corrupt("pduid_pdu", e))?;
                Ok((pdu_id, pdu))
            })
            .take_while(move |entry| match entry {
                Ok((pdu_id, _)) => pdu_id.shortroomid == shortroomid && pdu_id.count < before,
                Err(_) => true,
            })
            .map(|entry| entry.map(|(pdu_id, pdu)| (pdu_id.count, pdu)))
    }

    /// A room's events in topological order, strictly after (forwards) or before (backwards) `from`.
    pub fn iter_topo(
        &self,
        shortroomid: u64,
        from: TopoPos,
        backwards: bool,
    ) -> impl Iterator<Item = Result<(TopoPos, Pdu)>> + '_ {
        let mut start = key::u64_bytes(shortroomid).to_vec();
        if backwards {
            // Start just below `from` so that it is excluded.
            let (depth, count) = match from.count.checked_sub(1) {
                Some(count) => (from.depth, count),
                None => (from.depth.saturating_sub(1), u64::MAX),
            };
            start.extend_from_slice(&key::u64_bytes(depth));
            start.extend_from_slice(&key::u64_bytes(count));
        } else {
            start.extend_from_slice(&key::u64_bytes(from.depth));
            start.extend_from_slice(&key::u64_bytes(from.count.saturating_add(1)));
        }
        self.roomtopo_pduid
            .iter_from(&start, backwards)
            .map(move |entry| {
                let (db_key, _) = entry?;
                let room = key::read_u64(&db_key).unwrap_or(u64::MAX);
                let depth = db_key.get(8..).and_then(key::read_u64).unwrap_or(0);
                let count = db_key.get(16..).and_then(key::read_u64).unwrap_or(0);
                Ok::<_, Error>((room, TopoPos { depth, count }))
            })
            .take_while(move |entry| match entry {
                Ok((room, _)) => *room == shortroomid,
                Err(_) => true,
            })
            .map(move |entry| {
                let (_, position) = entry?;
                let pdu = self
                    .get_pdu_at(PduId {
                        shortroomid,
                        count: position.count,
                    })?
                    .ok_or_else(|| Error::corrupt("roomtopo_pduid", "dangling position"))?;
                Ok((position, pdu))
            })
    }
}

/// Prunes the target of a redaction in `batch` by the room version's redaction algorithm and
/// records `redacted_because`. Redactions of unknown events or events of other rooms do nothing.
pub(super) fn redact_in_batch(
    services: &Services,
    room_id: &RoomId,
    target: &EventId,
    redaction: &Pdu,
    batch: &mut Batch,
) -> Result<()> {
    let timeline = &services.rooms.timeline;
    let Some(pdu_id) = timeline.get_pdu_id(target)? else {
        return Ok(());
    };
    let Some(mut object) = timeline.get_object_at(pdu_id)? else {
        return Ok(());
    };
    let Some(version) = timeline.room_version(pdu_id.shortroomid)? else {
        return Ok(());
    };
    if services.rooms.short.get_shortroomid(room_id)? != Some(pdu_id.shortroomid) {
        return Ok(());
    }
    let rules = crate::service::rooms::version::rules_for(&version)?;
    if let Some(content) = object.get("content") {
        let content = serde_json::to_value(content).map_err(Error::internal)?;
        services.rooms.relations.unindex_in_batch(
            pdu_id.shortroomid,
            &content,
            pdu_id.count,
            &std::collections::BTreeSet::new(),
            batch,
        )?;
    }
    if let (Some(CanonicalJsonValue::String(kind)), Some(content)) =
        (object.get("type"), object.get("content"))
    {
        let content = Value::from(content.clone());
        let position = (pdu_id.shortroomid, pdu_id.count);
        services
            .rooms
            .search
            .remove_in_batch(position, kind, &content, batch);
    }
    let unsigned = object.remove("unsigned");
    let event_id = object.remove("event_id");
    let mut redacted =
        ruma::canonical_json::redact(object, &rules.redaction, None).map_err(Error::internal)?;
    let mut unsigned = match unsigned {
        Some(CanonicalJsonValue::Object(map)) => map,
        _ => CanonicalJsonObject::new(),
    };
    unsigned.remove("prev_content");
    let because = redaction.to_client_value(room_id, Value::Object(Default::default()));
    unsigned.insert(
        "redacted_because".into(),
        CanonicalJsonValue::try_from(because).map_err(Error::internal)?,
    );
    redacted.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
    if let Some(event_id) = event_id {
        redacted.insert("event_id".into(), event_id);
    }
    batch.insert(
        &timeline.pduid_pdu,
        &pdu_id.to_bytes(),
        &serde_json::to_vec(&redacted).map_err(Error::internal)?,
    );
    Ok(())
}
