//! The events each appservice is to receive: which events interest it (spec v1.19,
//! "Application Service API": a user of its namespaces is the sender, the target or a member of
//! the room, or the room's ID or one of its aliases is in its namespaces), queued in the batch
//! that commits the event, so that a crash neither loses nor repeats one.

use ruma::{
    events::TimelineEventType, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId,
};

use super::{extras::Extra, Appservices, Registry};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::Pdu, Services},
    store::{key, Batch},
};

/// Most events in one transaction.
const MAX_EVENTS: usize = 100;

/// The oldest queued events of one appservice.
pub(super) struct QueuedEvents {
    /// The first and last stream positions: a retry of the same events reuses the ID, and a
    /// transaction with other events never does.
    pub txn_id: String,
    pub keys: Vec<Vec<u8>>,
    /// Each event with its room (a room version 12 create event names none).
    pub events: Vec<(OwnedRoomId, OwnedEventId)>,
    /// Ephemeral events, to-device messages and device list changes (`extras.rs`), in order.
    pub extras: Vec<Extra>,
}

/// What is known about the room of the event being committed, read at most once for all
/// appservices.
struct RoomFacts<'a> {
    services: &'a Services,
    room_id: &'a RoomId,
    members: Option<Vec<OwnedUserId>>,
    aliases: Option<Vec<OwnedRoomAliasId>>,
}

impl RoomFacts<'_> {
    fn members(&mut self) -> Result<&[OwnedUserId]> {
        if self.members.is_none() {
            let members = self
                .services
                .rooms
                .members
                .iter_members(self.room_id, None)?;
            self.members = Some(members.into_iter().map(|(user, _)| user).collect());
        }
        Ok(self.members.as_deref().unwrap_or_default())
    }

    fn aliases(&mut self) -> Result<&[OwnedRoomAliasId]> {
        if self.aliases.is_none() {
            let aliases = self.services.rooms.alias.iter_room_aliases(self.room_id)?;
            self.aliases = Some(aliases);
        }
        Ok(self.aliases.as_deref().unwrap_or_default())
    }
}

impl Appservices {
    /// Queues a live event for every appservice it interests, in the batch that commits it at
    /// stream position `count` (the pipeline's `AT_COUNT` step, under the commit lock, so each
    /// queue is in stream order).
    pub fn queue_in_batch(
        &self,
        services: &Services,
        room_id: &RoomId,
        pdu: &Pdu,
        count: u64,
        batch: &mut Batch,
    ) -> Result<()> {
        let registry = self.registry();
        if registry.appservices.is_empty() {
            return Ok(());
        }
        let mut facts = RoomFacts {
            services,
            room_id,
            members: None,
            aliases: None,
        };
        if pdu.kind == TimelineEventType::RoomMember {
            self.queue_membership_in_batch(batch, count, pdu)?;
        }
        let interested = interested(&registry, pdu, &mut facts)?;
        for ((appservice, _), interested) in registry.appservices.iter().zip(interested) {
            if appservice.registration.url.is_none() || !interested {
                continue;
            }
            let entry = key::join(&[appservice.id().as_bytes(), &key::u64_bytes(count)]);
            let value = key::join(&[room_id.as_bytes(), pdu.event_id.as_bytes()]);
            batch.insert(&self.appserviceidcount_outgoing, &entry, &value);
        }
        Ok(())
    }

    /// Wakes the workers after a commit (the pipeline's effect), so that what it queued goes out.
    pub fn wake_all(&self) {
        if self.registry.read().appservices.is_empty() {
            return;
        }
        self.workers.wake_all();
    }

    /// The oldest queued events of `id` after the queue key `after`. On a worker's first load
    /// (`after` is `None`) a transaction that was in flight when the server stopped is loaded
    /// exactly as it was sent (its last key was recorded before sending), so that its ID and
    /// events stay the same and an appservice that got it can tell the retry apart.
    pub(super) fn load(&self, id: &str, after: Option<&[u8]>) -> Result<QueuedEvents> {
        let in_flight = match after {
            None => self.appserviceidcount_outgoing.get(&in_flight_key(id))?,
            Some(_) => None,
        };
        let prefix = key::prefix(&[id.as_bytes()]);
        let start = match after {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            None => prefix.clone(),
        };
        let (mut keys, mut events, mut extras) = (Vec::new(), Vec::new(), Vec::new());
        for entry in self.appserviceidcount_outgoing.iter_from(&start, false) {
            let (entry_key, value) = entry?;
            let past_in_flight = in_flight.as_deref().is_some_and(|last| *entry_key > *last);
            if !entry_key.starts_with(&prefix) || keys.len() == MAX_EVENTS || past_in_flight {
                break;
            }
            keys.push(entry_key.to_vec());
            if value.first() == Some(&b'{') {
                let extra = serde_json::from_slice(&value)
                    .map_err(|error| Error::corrupt("appserviceidcount_outgoing", error))?;
                extras.push(extra);
                continue;
            }
            let mut parts = key::split(&value).map(std::str::from_utf8);
            let (Some(Ok(room_id)), Some(Ok(event_id))) = (parts.next(), parts.next()) else {
                return Err(Error::corrupt(
                    "appserviceidcount_outgoing",
                    "not room and event",
                ));
            };
            let parsed = OwnedRoomId::try_from(room_id)
                .ok()
                .zip(OwnedEventId::try_from(event_id).ok());
            let event = parsed.ok_or_else(|| {
                Error::corrupt("appserviceidcount_outgoing", "bad room or event ID")
            })?;
            events.push(event);
        }
        let txn_id = format!(
            "{}.{}",
            position(keys.first(), prefix.len()),
            position(keys.last(), prefix.len())
        );
        Ok(QueuedEvents {
            txn_id,
            keys,
            events,
            extras,
        })
    }

    /// Records the last key of a transaction about to be sent (see [`Self::load`]).
    pub(super) fn mark_in_flight(&self, id: &str, queued: &QueuedEvents) -> Result<()> {
        let Some(last) = queued.keys.last() else {
            return Ok(());
        };
        self.appserviceidcount_outgoing
            .insert(&in_flight_key(id), last)
    }

    /// Removes sent events from the queue, with the in-flight mark.
    pub(super) fn dequeue(&self, id: &str, keys: &[Vec<u8>]) -> Result<()> {
        let mut batch = Batch::default();
        for entry in keys {
            batch.remove(&self.appserviceidcount_outgoing, entry);
        }
        batch.remove(&self.appserviceidcount_outgoing, &in_flight_key(id));
        self.db.write(batch)
    }

    /// Drops everything queued for `id` (an appservice that was unregistered).
    pub(super) fn drop_queue(&self, id: &str) -> Result<()> {
        let prefix = key::prefix(&[id.as_bytes()]);
        let mut batch = Batch::default();
        batch.remove(&self.appserviceidcount_outgoing, &in_flight_key(id));
        for entry in self.appserviceidcount_outgoing.iter_prefix(&prefix) {
            let (entry_key, _) = entry?;
            batch.remove(&self.appserviceidcount_outgoing, &entry_key);
        }
        self.db.write(batch)
    }

    /// The ids of appservices with something queued, and those registered.
    pub(super) fn ids_to_serve(&self) -> Vec<String> {
        self.registry()
            .appservices
            .iter()
            .filter(|(appservice, _)| appservice.registration.url.is_some())
            .map(|(appservice, _)| appservice.id().to_owned())
            .collect()
    }
}

/// A queue key's part of a transaction ID: its stream position, and for an item that is not a
/// room event (several may share a position) a short hash of its discriminator. Queue keys are
/// unique and a transaction takes a range of them that no other transaction shares, so its ID
/// (first and last position) is never used for other content.
fn position(entry: Option<&Vec<u8>>, prefix_len: usize) -> String {
    let Some(rest) = entry.and_then(|entry| entry.get(prefix_len..)) else {
        return "0".to_owned();
    };
    let count = key::read_u64(rest).unwrap_or(0);
    match rest.get(8..) {
        Some(discriminator) if !discriminator.is_empty() => {
            let hash = crate::crypto::token_hash(&String::from_utf8_lossy(discriminator));
            format!(
                "{count}_{:02x}{:02x}{:02x}{:02x}",
                hash[0], hash[1], hash[2], hash[3]
            )
        }
        _ => count.to_string(),
    }
}

/// The key of an appservice's in-flight mark: its id and 0xfe, a byte no UTF-8 id holds, so it
/// sorts outside the id's queue (id 0xff count).
fn in_flight_key(id: &str) -> Vec<u8> {
    let mut entry = id.as_bytes().to_vec();
    entry.push(0xfe);
    entry
}

/// Which appservices (in registry order) an event interests: its sender or (for a member
/// event) its target is one of their users, or the room's ID, one of the room's aliases or one
/// of its members is in their namespaces. Each ID is matched once against every appservice's
/// namespaces together (`matcher.rs`); the room's aliases and members are read only while some
/// appservice is still not interested.
fn interested(registry: &Registry, pdu: &Pdu, facts: &mut RoomFacts<'_>) -> Result<Vec<bool>> {
    let matcher = &registry.matcher;
    let mut hits = vec![false; registry.appservices.len()];
    let done = |hits: &[bool]| hits.iter().all(|hit| *hit);
    matcher.mark_user(pdu.sender.as_str(), &mut hits);
    if pdu.kind == TimelineEventType::RoomMember {
        if let Some(target) = pdu.state_key.as_deref() {
            matcher.mark_user(target, &mut hits);
        }
    }
    matcher.mark_room(facts.room_id.as_str(), &mut hits);
    if done(&hits) {
        return Ok(hits);
    }
    if matcher.has_aliases() {
        for alias in facts.aliases()? {
            matcher.mark_alias(alias.as_str(), &mut hits);
        }
    }
    for member in facts.members()? {
        if done(&hits) {
            break;
        }
        matcher.mark_user(member.as_str(), &mut hits);
    }
    Ok(hits)
}
