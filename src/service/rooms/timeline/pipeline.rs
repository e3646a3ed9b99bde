//! The one pipeline that writes an event into a room's DAG, whether it was made here, received
//! live, backfilled as history, or is our own join over federation: [`commit`] writes the event,
//! its state snapshots and every index in one batch, then runs the after-commit effects.
//! The writers themselves are the registered steps of `steps.rs`.

use ruma::{
    events::StateEventType, CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId,
};
use serde_json::Value;

use super::{steps, PduId};
use crate::{
    error::{Error, Result},
    service::{push, rooms::pdu::Pdu, rooms::state::StateSet, Services},
    store::{key, Batch},
};

/// Whether an event is news or history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new event of the room: the next stream position, and it moves the room's current state,
    /// forward extremities, memberships, outgoing queues and notifications, and wakes `/sync`.
    Live,
    /// History fetched by backfill: a stream position counted down from `u64::MAX` (see
    /// `backfilled.rs`), and nothing about the room's present changes; nobody is woken.
    History,
}

impl Mode {
    /// The stream position of an event written at the global counter's `stream` value.
    fn position(self, stream: u64) -> u64 {
        match self {
            Mode::Live => stream,
            // Counting down from the top: each later backfill reaches further into the past.
            Mode::History => u64::MAX - stream,
        }
    }
}

/// The state before an event.
pub enum StateBefore {
    /// A snapshot already stored (a local event is built on the room's current state).
    Stored(Option<u64>),
    /// A state set not stored yet (a received event's, resolved from its prev events or fetched
    /// from another server), written in the event's batch as a delta over `parent` (the state
    /// after its first prev event), or sharing `parent` when it is the same.
    Set { set: StateSet, parent: Option<u64> },
}

/// Everything [`commit`] needs besides the event itself.
pub struct CommitInput<'a> {
    pub room_id: &'a RoomId,
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
    pub state_before: StateBefore,
    pub transaction: Option<(&'a str, &'a str)>,
    /// Which other servers get the event over federation.
    pub send_to: SendTo<'a>,
    /// The room's current state after this event when it is not simply the state after the event:
    /// the resolution of every forward extremity's state, when this event leaves other
    /// extremities in place (events from several servers at once).
    pub current_state: Option<StateSet>,
    pub mode: Mode,
}

impl<'a> CommitInput<'a> {
    /// A local event built on the room's current state (`state_before`), sent to the room.
    pub fn local(
        room_id: &'a RoomId,
        object: CanonicalJsonObject,
        pdu: Pdu,
        state_before: Option<u64>,
        transaction: Option<(&'a str, &'a str)>,
    ) -> Self {
        Self {
            room_id,
            object,
            pdu,
            state_before: StateBefore::Stored(state_before),
            transaction,
            send_to: SendTo::RoomExcept(None),
            current_state: None,
            mode: Mode::Live,
        }
    }

    /// A received event that passed its checks against `state_before` (with `parent`, the state
    /// after its first prev event).
    pub fn received(
        room_id: &'a RoomId,
        (object, pdu): (CanonicalJsonObject, Pdu),
        (set, parent): (StateSet, Option<u64>),
        send_to: SendTo<'a>,
        mode: Mode,
    ) -> Self {
        Self {
            room_id,
            object,
            pdu,
            state_before: StateBefore::Set { set, parent },
            transaction: None,
            send_to,
            current_state: None,
            mode,
        }
    }
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

/// What the steps of the pipeline see of the event being committed.
pub struct CommitContext<'a> {
    pub services: &'a Services,
    pub room_id: &'a RoomId,
    pub pdu: &'a Pdu,
    pub mode: Mode,
    pub shortroomid: u64,
    pub shorteventid: u64,
    pub transaction: Option<(&'a str, &'a str)>,
    /// The servers the event is queued for (none for history).
    pub destinations: Vec<OwnedServerName>,
    /// The notifications the event makes for local users (none for history).
    pub push: push::Pending,
    /// The state events that the room's current state holds after this live event, at keys
    /// other than the event's own, where it held another event (or none) before: what state
    /// resolution of a received event's fork changed. Empty for local events and history.
    pub resolved: Vec<Pdu>,
}

impl CommitContext<'_> {
    /// The event and then the state events resolution changed with it ([`Self::resolved`]):
    /// what the steps that follow memberships and policies look at.
    pub fn with_resolved(&self) -> impl Iterator<Item = &Pdu> {
        std::iter::once(self.pdu).chain(&self.resolved)
    }
}

/// Writes one event of a room's DAG in one atomic batch: the event at its stream position, its
/// state snapshots (the state before it too, when it came from elsewhere), and what every
/// registered step adds (`steps::INDEXES` before the stream position is known, `steps::AT_COUNT`
/// under the global commit lock); then it runs `steps::EFFECTS` in their order (drop caches,
/// wake sync, push rules carried over on a join, wake the federation and push senders).
/// A crash leaves either all of it or none.
///
/// The caller holds the room lock and has run the auth checks against the state before it.
pub fn commit(services: &Services, input: CommitInput<'_>) -> Result<u64> {
    let CommitInput {
        room_id,
        object,
        pdu,
        state_before,
        transaction,
        send_to,
        current_state,
        mode,
    } = input;
    let rooms = &services.rooms;
    let shortroomid = rooms.short.get_or_create_shortroomid(room_id)?;
    let mut batch = Batch::default();
    let shorteventid = rooms
        .short
        .shorteventid_in_batch(&pdu.event_id, &mut batch)?;
    let resolved = match mode {
        Mode::Live => resolved_changes(services, shortroomid, &pdu, &state_before, &current_state)?,
        Mode::History => Vec::new(),
    };
    let mut unsigned = Value::Object(Default::default());
    let state = StateWrite {
        services,
        pdu: &pdu,
        shorteventid,
        shortroomid,
        mode,
    };
    state.write(state_before, current_state, &mut unsigned, &mut batch)?;
    if let Some((device, txn_id)) = transaction {
        unsigned["transaction_id"] = Value::String(txn_id.to_owned());
        unsigned["device_id"] = Value::String(device.to_owned());
    }
    let json = stored_json(object, &pdu, unsigned)?;
    let live = mode == Mode::Live;
    let ctx = CommitContext {
        services,
        room_id,
        pdu: &pdu,
        mode,
        shortroomid,
        shorteventid,
        transaction,
        destinations: match live {
            true => steps::destinations(services, room_id, &pdu, send_to)?,
            false => Vec::new(),
        },
        push: match live {
            true => push::prepare(services, room_id, &pdu)?,
            false => push::Pending::default(),
        },
        resolved,
    };
    for step in steps::INDEXES.iter().filter(|step| step.runs_in(mode)) {
        (step.run)(&ctx, &mut batch)?;
    }
    let count = write_at_count(&ctx, &json, batch)?;
    for effect in steps::EFFECTS.iter().filter(|step| step.runs_in(mode)) {
        (effect.run)(&ctx);
    }
    services.metrics.event_committed();
    Ok(count)
}

/// Takes a stream position under the global commit lock, writes the event there with what the
/// `steps::AT_COUNT` steps add, and writes the whole batch.
fn write_at_count(ctx: &CommitContext<'_>, json: &[u8], mut batch: Batch) -> Result<u64> {
    let services = ctx.services;
    let timeline = &services.rooms.timeline;
    let stream = services
        .globals
        .write_with_count(|batch_with_count, stream| {
            let count = ctx.mode.position(stream);
            batch.set_count(count);
            let pdu_id = PduId {
                shortroomid: ctx.shortroomid,
                count,
            };
            batch.insert(&timeline.pduid_pdu, &pdu_id.to_bytes(), json);
            batch.insert(
                &timeline.eventid_pduid,
                ctx.pdu.event_id.as_bytes(),
                &pdu_id.to_bytes(),
            );
            batch.insert(
                &timeline.roomtopo_pduid,
                &topo_key(ctx.shortroomid, ctx.pdu, count),
                b"",
            );
            for step in steps::AT_COUNT.iter().filter(|step| step.runs_in(ctx.mode)) {
                (step.run)(ctx, count, &mut batch)?;
            }
            batch_with_count.append(std::mem::take(&mut batch));
            Ok(())
        })?;
    Ok(ctx.mode.position(stream))
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

/// A state snapshot written in the event's batch, and the nearest snapshot already on disk to
/// store the next one over. `RoomState::store_snapshot` reads its parent, and a snapshot that is
/// only in the batch is found in its cache alone, which another room's commit may clear.
#[derive(Clone, Copy)]
struct Snapshot {
    hash: u64,
    base: Option<u64>,
}

/// The state part of a commit.
struct StateWrite<'a> {
    services: &'a Services,
    pdu: &'a Pdu,
    shorteventid: u64,
    shortroomid: u64,
    mode: Mode,
}

impl StateWrite<'_> {
    /// Writes the state before the event (when it is a new set), the state after it (a state
    /// event replaces its key, with `prev_content`, `prev_sender` and `replaces_state` added to
    /// `unsigned`; any other event shares the state before it), and for a live event the room's
    /// current state.
    fn write(
        &self,
        state_before: StateBefore,
        current_state: Option<StateSet>,
        unsigned: &mut Value,
        batch: &mut Batch,
    ) -> Result<()> {
        let rooms = &self.services.rooms;
        let (before, before_set) = self.before(state_before, batch)?;
        let after = match &self.pdu.state_key {
            Some(state_key) => Some(self.after(state_key, before, before_set, unsigned, batch)?),
            None => before,
        };
        let Some(after) = after else {
            return Ok(());
        };
        let before_hash = before.map_or(0, |snapshot| snapshot.hash);
        rooms
            .state
            .set_event_state(self.shorteventid, before_hash, after.hash, batch);
        if self.mode == Mode::History {
            return Ok(());
        }
        let current = match current_state {
            Some(set) => {
                rooms
                    .state
                    .store_snapshot(rooms.short.allocate(), after.base, set, batch)?
            }
            None => after.hash,
        };
        rooms.state.set_room_state(self.shortroomid, current, batch);
        Ok(())
    }

    /// The snapshot before the event, written in `batch` when it is new, with its set when that
    /// was at hand.
    fn before(
        &self,
        state_before: StateBefore,
        batch: &mut Batch,
    ) -> Result<(Option<Snapshot>, Option<StateSet>)> {
        let state = &self.services.rooms.state;
        match state_before {
            StateBefore::Stored(hash) => Ok((
                hash.map(|hash| Snapshot {
                    hash,
                    base: Some(hash),
                }),
                None,
            )),
            StateBefore::Set { set, .. } if set.is_empty() => Ok((None, Some(set))),
            StateBefore::Set { set, parent } => {
                if let Some(parent) = parent {
                    if *state.load(parent)? == set {
                        let shared = Snapshot {
                            hash: parent,
                            base: Some(parent),
                        };
                        return Ok((Some(shared), Some(set)));
                    }
                }
                let new_id = self.services.rooms.short.allocate();
                let hash = state.store_snapshot(new_id, parent, set.clone(), batch)?;
                Ok((Some(Snapshot { hash, base: parent }), Some(set)))
            }
        }
    }

    /// The snapshot after a state event, written in `batch`.
    fn after(
        &self,
        state_key: &str,
        before: Option<Snapshot>,
        before_set: Option<StateSet>,
        unsigned: &mut Value,
        batch: &mut Batch,
    ) -> Result<Snapshot> {
        let rooms = &self.services.rooms;
        let event_type = StateEventType::from(self.pdu.kind.to_string());
        let shortstatekey = rooms
            .short
            .get_or_create_shortstatekey(&event_type, state_key)?;
        let mut set = match (before_set, before) {
            (Some(set), _) => set,
            (None, Some(before)) => (*rooms.state.load(before.hash)?).clone(),
            (None, None) => StateSet::new(),
        };
        if let Some(previous) = set.insert(shortstatekey, self.shorteventid) {
            let previous_id = rooms.short.get_eventid(previous)?;
            if let Some(previous_pdu) = rooms.timeline.get_pdu(&previous_id)? {
                unsigned["prev_content"] = previous_pdu.content_value();
                unsigned["prev_sender"] = Value::String(previous_pdu.sender.to_string());
                unsigned["replaces_state"] = Value::String(previous_id.to_string());
            }
        }
        let base = before.and_then(|before| before.base);
        let hash = rooms
            .state
            .store_snapshot(rooms.short.allocate(), base, set, batch)?;
        Ok(Snapshot { hash, base })
    }
}

/// The state events a received live event brings into the room's current state besides itself
/// (see [`CommitContext::resolved`]): the new current state (`current_state` when other forward
/// extremities stay, else the state before the event) against the current state before it. A
/// local event is built on the current state, so it changes nothing else.
fn resolved_changes(
    services: &Services,
    shortroomid: u64,
    pdu: &Pdu,
    state_before: &StateBefore,
    current_state: &Option<StateSet>,
) -> Result<Vec<Pdu>> {
    let StateBefore::Set { set, .. } = state_before else {
        return Ok(Vec::new());
    };
    let new = current_state.as_ref().unwrap_or(set);
    let rooms = &services.rooms;
    // No current state yet: our own join, whose members were indexed from the `send_join`
    // answer before it.
    let Some(old) = rooms.state.get_room_state(shortroomid)? else {
        return Ok(Vec::new());
    };
    let old = rooms.state.load(old)?;
    let own_key = match &pdu.state_key {
        Some(state_key) => rooms
            .short
            .get_shortstatekey(&StateEventType::from(pdu.kind.to_string()), state_key)?,
        None => None,
    };
    let mut changed = Vec::new();
    for shorteventid in changed_entries(&old, new, own_key) {
        let event_id = rooms.short.get_eventid(shorteventid)?;
        if let Some(state_pdu) = rooms.timeline.get_pdu(&event_id)? {
            changed.push(state_pdu);
        }
    }
    Ok(changed)
}

/// The short event IDs that `new` holds at keys other than `skip` where `old` holds another
/// event or none. Both sets are walked side by side in key order: one pass, no lookups.
fn changed_entries(old: &StateSet, new: &StateSet, skip: Option<u64>) -> Vec<u64> {
    let mut old_entries = old.iter().peekable();
    let mut changed = Vec::new();
    for (shortstatekey, shorteventid) in new {
        while old_entries
            .next_if(|(key, _)| *key < shortstatekey)
            .is_some()
        {}
        let unchanged = old_entries.peek() == Some(&(shortstatekey, shorteventid));
        if !unchanged && Some(*shortstatekey) != skip {
            changed.push(*shorteventid);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_that_differ_from_the_old_state_are_changed() {
        let old = StateSet::from([(1, 10), (2, 20), (4, 40), (6, 60)]);
        assert!(changed_entries(&old, &old, None).is_empty());
        // 2 replaced, 3 added, 4 removed (not reported), 5 added past the old set's keys, 6
        // replaced but skipped as the event's own key.
        let new = StateSet::from([(1, 10), (2, 21), (3, 30), (5, 50), (6, 61)]);
        assert_eq!(changed_entries(&old, &new, Some(6)), vec![21, 30, 50]);
        assert_eq!(
            changed_entries(&StateSet::new(), &new, None),
            vec![10, 21, 30, 50, 61]
        );
    }
}
