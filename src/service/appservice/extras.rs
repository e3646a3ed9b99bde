//! What a transaction carries beside room events: MSC2409's ephemeral events (typing, receipts,
//! presence), MSC4203's to-device messages and MSC3202's device list changes, one-time key
//! counts and unused fallback key types.
//!
//! Each is queued in `appserviceidcount_outgoing` in the batch that stores the change (so a
//! crash neither loses nor repeats one, as for room events), for the appservices that asked:
//! `receive_ephemeral` (or its unstable name) for ephemeral events, `org.matrix.msc3202` for
//! device lists; to-device messages for every appservice whose namespace holds the recipient
//! (MSC4203 has no opt-in). Ephemeral events and device list changes are queued for every such
//! appservice and checked for interest when the transaction is built, outside the commit lock;
//! typing and presence are read then too, so they are current. One-time key counts and fallback
//! key types are state, read when the transaction is built.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{Appservice, Appservices};
use crate::{
    error::{Error, Result},
    service::{
        privacy::{self, Aspect},
        rooms::pdu::Pdu,
        to_device::Delivery,
        Services,
    },
    store::{key, Batch},
    util,
};

/// One queued item that is not a room event, stored as JSON (an object, so it never starts with
/// the `!` of a room event's entry).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Extra {
    /// Typing changed in a room; its typists are read when the transaction is built.
    Typing(OwnedRoomId),
    /// An `m.receipt` event with its `room_id`; `private` names the owner of an `m.read.private`
    /// one, which only an appservice holding that user gets (MSC2409).
    Receipt {
        event: Value,
        private: Option<OwnedUserId>,
    },
    /// A user's presence changed; it is read when the transaction is built.
    Presence(OwnedUserId),
    /// To-device messages to users of the appservice, each with `to_user_id` and
    /// `to_device_id` (MSC4203).
    ToDevice(Vec<Value>),
    /// A user's devices or keys changed, or the user joined a room (MSC3202 `changed`).
    DeviceChanged(OwnedUserId),
    /// A user's membership ended (MSC3202 `left`, if the appservice shares no room with them
    /// any more).
    DeviceLeft(OwnedUserId),
}

impl Appservices {
    /// Queues `extra` in `batch` (stream position `count`) for every appservice `wanted` picks.
    /// `discriminator` (joined) keeps two items of one batch apart.
    fn queue_extra_in_batch(
        &self,
        (batch, count): (&mut Batch, u64),
        discriminator: &[&[u8]],
        extra: &Extra,
        wanted: fn(&Appservice) -> bool,
    ) -> Result<()> {
        let registry = self.registry();
        let mut value = None;
        let discriminator = key::join(discriminator);
        for (appservice, _) in &registry.appservices {
            if appservice.registration.url.is_none() || !wanted(appservice) {
                continue;
            }
            if value.is_none() {
                value = Some(serde_json::to_vec(extra).map_err(Error::internal)?);
            }
            let entry = extra_key(appservice.id(), count, &discriminator);
            let bytes = value.as_deref().unwrap_or_default();
            batch.insert(&self.appserviceidcount_outgoing, &entry, bytes);
        }
        Ok(())
    }

    /// Whether an appservice wants ephemeral events: writes are skipped when none does.
    pub fn any_wants_ephemeral(&self) -> bool {
        self.registry
            .read()
            .appservices
            .iter()
            .any(|(appservice, _)| appservice.wants_ephemeral())
    }

    /// Typing changed in `room_id`: queues it for the appservices that want ephemeral events, at
    /// a new stream position, and wakes their workers.
    pub fn queue_typing(&self, services: &Services, room_id: &RoomId) -> Result<()> {
        if !self.any_wants_ephemeral() {
            return Ok(());
        }
        let extra = Extra::Typing(room_id.to_owned());
        services.globals.write_with_count(|batch, count| {
            let at = (batch, count);
            self.queue_extra_in_batch(at, &[b"typing"], &extra, Appservice::wants_ephemeral)
        })?;
        self.wake_all();
        Ok(())
    }

    /// Queues a receipt in the batch that stores it (the caller wakes the workers): `event` is
    /// its `m.receipt` event as `/sync` shows it to its owner, `private` the owner of an
    /// `m.read.private` one.
    pub fn queue_receipt_in_batch(
        &self,
        (batch, count): (&mut Batch, u64),
        room_id: &RoomId,
        mut event: Value,
        private: Option<&UserId>,
    ) -> Result<()> {
        event["room_id"] = json!(room_id);
        let owner = event["content"].to_string();
        let extra = Extra::Receipt {
            event,
            private: private.map(UserId::to_owned),
        };
        let discriminator: [&[u8]; 2] = [b"receipt", owner.as_bytes()];
        let wanted = Appservice::wants_ephemeral;
        self.queue_extra_in_batch((batch, count), &discriminator, &extra, wanted)
    }

    /// Queues a presence change in the batch that stores it (the caller wakes the workers).
    pub fn queue_presence_in_batch(
        &self,
        batch: &mut Batch,
        count: u64,
        user_id: &UserId,
    ) -> Result<()> {
        if !self.any_wants_ephemeral() {
            return Ok(());
        }
        let extra = Extra::Presence(user_id.to_owned());
        let discriminator: [&[u8]; 2] = [b"presence", user_id.as_bytes()];
        let wanted = Appservice::wants_ephemeral;
        self.queue_extra_in_batch((batch, count), &discriminator, &extra, wanted)
    }

    /// Whether a to-device message for `user_id` goes to the device's inbox: not for a user of
    /// an exclusive namespace of an appservice with the MSC3202 extensions, which gets it through
    /// its transactions only (MSC4203's suggestion; such users do not `/sync`, and their inboxes
    /// would only grow).
    pub fn keeps_in_inbox(&self, user_id: &UserId) -> bool {
        !self
            .registry
            .read()
            .appservices
            .iter()
            .any(|(appservice, _)| {
                appservice.wants_device_extensions()
                    && appservice.users.is_exclusive_match(user_id.as_str())
            })
    }

    /// Queues, in the batch that stores them, the to-device messages for users of each
    /// appservice's namespaces (MSC4203; the caller wakes the workers).
    pub fn queue_to_device_in_batch<'a>(
        &self,
        batch: &mut Batch,
        count: u64,
        deliveries: impl Iterator<Item = &'a Delivery> + Clone,
    ) -> Result<()> {
        let registry = self.registry();
        for (appservice, _) in &registry.appservices {
            if appservice.registration.url.is_none() {
                continue;
            }
            let messages: Vec<Value> = deliveries
                .clone()
                .filter(|delivery| appservice.is_user_match(&delivery.user_id))
                .map(|delivery| {
                    let mut message = delivery.event.clone();
                    message["to_user_id"] = json!(delivery.user_id);
                    message["to_device_id"] = json!(delivery.device_id);
                    message
                })
                .collect();
            if messages.is_empty() {
                continue;
            }
            let value = serde_json::to_vec(&Extra::ToDevice(messages)).map_err(Error::internal)?;
            let entry = extra_key(appservice.id(), count, b"to_device");
            batch.insert(&self.appserviceidcount_outgoing, &entry, &value);
        }
        Ok(())
    }

    /// Queues, in the batch that records it, that `user_id`'s devices or keys changed, for the
    /// appservices with the MSC3202 extensions (the caller wakes the workers).
    pub fn queue_device_change_in_batch(
        &self,
        batch: &mut Batch,
        count: u64,
        user_id: &UserId,
    ) -> Result<()> {
        let extra = Extra::DeviceChanged(user_id.to_owned());
        let discriminator: [&[u8]; 2] = [b"device", user_id.as_bytes()];
        let wanted = Appservice::wants_device_extensions;
        self.queue_extra_in_batch((batch, count), &discriminator, &extra, wanted)
    }

    /// For a member event being committed: a join is a device list change of its target (the
    /// appservice starts sharing a room), a membership that ends may be a `left`.
    pub(super) fn queue_membership_in_batch(
        &self,
        batch: &mut Batch,
        count: u64,
        pdu: &Pdu,
    ) -> Result<()> {
        let Some(target) = pdu
            .state_key
            .as_deref()
            .and_then(|target| OwnedUserId::try_from(target).ok())
        else {
            return Ok(());
        };
        let content = pdu.content_value();
        let membership = content["membership"].as_str();
        let extra = match membership {
            Some("join") => Extra::DeviceChanged(target.clone()),
            Some("leave" | "ban") => Extra::DeviceLeft(target.clone()),
            _ => return Ok(()),
        };
        let discriminator: [&[u8]; 2] = [b"member", target.as_bytes()];
        let wanted = Appservice::wants_device_extensions;
        self.queue_extra_in_batch((batch, count), &discriminator, &extra, wanted)
    }
}

/// The queue key of an item that is not a room event: the appservice's id, the stream position
/// and a discriminator (id 0xff count 0xff discriminator), sorting after that position's room
/// event.
fn extra_key(id: &str, count: u64, discriminator: &[u8]) -> Vec<u8> {
    key::join(&[id.as_bytes(), &key::u64_bytes(count), discriminator])
}

/// Which rooms and users an appservice is interested in, read once per transaction.
struct Interest<'a> {
    services: &'a Services,
    appservice: &'a Appservice,
    rooms: HashMap<OwnedRoomId, bool>,
}

impl Interest<'_> {
    /// Whether the room's ID or one of its aliases is in the namespaces, or one of its joined
    /// members is a user of the appservice.
    fn room(&mut self, room_id: &RoomId) -> Result<bool> {
        if let Some(known) = self.rooms.get(room_id) {
            return Ok(*known);
        }
        let rooms = &self.services.rooms;
        let interested = self.appservice.rooms.is_match(room_id.as_str())
            || rooms
                .alias
                .iter_room_aliases(room_id)?
                .iter()
                .any(|alias| self.appservice.aliases.is_match(alias.as_str()))
            || rooms
                .members
                .iter_members(room_id, Some(MembershipState::Join))?
                .iter()
                .any(|(member, _)| self.appservice.is_user_match(member));
        self.rooms.insert(room_id.to_owned(), interested);
        Ok(interested)
    }

    /// Whether the user is one of the appservice's or is joined to a room it is interested in.
    fn user(&mut self, user_id: &UserId) -> Result<bool> {
        if self.appservice.is_user_match(user_id) {
            return Ok(true);
        }
        for room_id in self.services.rooms.members.iter_joined_rooms(user_id)? {
            if self.room(&room_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The fields of a transaction beside `events`, for `extras` (queued in this order) and the
/// rooms of its room events.
pub(super) fn transaction_fields(
    services: &Services,
    appservice: &Appservice,
    extras: &[Extra],
    event_rooms: &[OwnedRoomId],
) -> Result<Map<String, Value>> {
    let mut interest = Interest {
        services,
        appservice,
        rooms: HashMap::new(),
    };
    let mut fields = Map::new();
    let ephemeral = ephemeral_events(&mut interest, extras)?;
    let registration = &appservice.registration;
    if !ephemeral.is_empty() && registration.receive_ephemeral {
        fields.insert("ephemeral".into(), json!(ephemeral));
    }
    if !ephemeral.is_empty() && registration.push_ephemeral {
        fields.insert("de.sorunome.msc2409.ephemeral".into(), json!(ephemeral));
    }
    let to_device: Vec<&Value> = extras
        .iter()
        .filter_map(|extra| match extra {
            Extra::ToDevice(messages) => Some(messages),
            _ => None,
        })
        .flatten()
        .collect();
    if !to_device.is_empty() {
        fields.insert("to_device".into(), json!(to_device));
        fields.insert("de.sorunome.msc2409.to_device".into(), json!(to_device));
    }
    if !appservice.wants_device_extensions() {
        return Ok(fields);
    }
    let (changed, left) = device_lists(&mut interest, extras)?;
    if !changed.is_empty() || !left.is_empty() {
        fields.insert(
            "org.matrix.msc3202.device_lists".into(),
            json!({ "changed": changed, "left": left }),
        );
    }
    if !fields.is_empty() || !event_rooms.is_empty() {
        let rooms = event_rooms.iter().cloned().chain(
            ephemeral
                .iter()
                .filter_map(|event| event["room_id"].as_str())
                .filter_map(|room| OwnedRoomId::try_from(room).ok()),
        );
        let users = key_count_users(services, appservice, &to_device, rooms.collect())?;
        let (counts, fallback) = key_counts(services, &users)?;
        fields.insert(
            "org.matrix.msc3202.device_one_time_keys_count".into(),
            json!(counts),
        );
        // Synapse's first name for the field, which some appservices still read.
        fields.insert(
            "org.matrix.msc3202.device_one_time_key_counts".into(),
            json!(counts),
        );
        fields.insert(
            "org.matrix.msc3202.device_unused_fallback_key_types".into(),
            json!(fallback),
        );
    }
    Ok(fields)
}

/// The users whose key counts a transaction carries (as Synapse picks them): the appservice's
/// sender, the recipients of its to-device messages and its users joined to its rooms.
fn key_count_users(
    services: &Services,
    appservice: &Appservice,
    to_device: &[&Value],
    rooms: BTreeSet<OwnedRoomId>,
) -> Result<BTreeSet<OwnedUserId>> {
    let mut users = BTreeSet::from([appservice.sender.clone()]);
    let recipients = to_device
        .iter()
        .filter_map(|message| message["to_user_id"].as_str())
        .filter_map(|user| OwnedUserId::try_from(user).ok());
    users.extend(recipients);
    for room_id in rooms {
        let members = services
            .rooms
            .members
            .iter_members(&room_id, Some(MembershipState::Join))?;
        users.extend(
            members
                .into_iter()
                .map(|(member, _)| member)
                .filter(|member| appservice.is_user_match(member)),
        );
    }
    Ok(users)
}

/// The ephemeral events the appservice is interested in: the latest typing per room, receipts
/// in its rooms (private ones of its own users only) and the latest presence per user it shares
/// a room with, if their privacy settings show it to the appservice's sender.
fn ephemeral_events(interest: &mut Interest<'_>, extras: &[Extra]) -> Result<Vec<Value>> {
    let services = interest.services;
    let appservice = interest.appservice;
    let mut events = Vec::new();
    let mut typing_rooms = BTreeSet::new();
    let mut presence_users = BTreeSet::new();
    // Newest first, so the latest typing and presence win; reversed back at the end.
    for extra in extras.iter().rev() {
        match extra {
            Extra::Typing(room_id) => {
                if !typing_rooms.insert(room_id.clone()) || !interest.room(room_id)? {
                    continue;
                }
                let typists = services
                    .typing
                    .get_changed(room_id, None)
                    .unwrap_or_default();
                events.push(json!({
                    "type": "m.typing",
                    "room_id": room_id,
                    "content": { "user_ids": typists },
                }));
            }
            Extra::Receipt { event, private } => {
                let room = event["room_id"]
                    .as_str()
                    .and_then(|room| OwnedRoomId::try_from(room).ok());
                let own = private
                    .as_ref()
                    .is_none_or(|owner| appservice.is_user_match(owner));
                let interested = match room {
                    Some(room) if own => interest.room(&room)?,
                    _ => false,
                };
                if interested {
                    events.push(event.clone());
                }
            }
            Extra::Presence(user_id) => {
                if !presence_users.insert(user_id.clone()) || !interest.user(user_id)? {
                    continue;
                }
                if !privacy::allows(services, user_id, &appservice.sender, Aspect::Presence)? {
                    continue;
                }
                let Some(entry) = services.presence.get(user_id)? else {
                    continue;
                };
                let content = services
                    .presence
                    .content(user_id, &entry, util::now_millis());
                events.push(json!({ "type": "m.presence", "sender": user_id, "content": content }));
            }
            _ => {}
        }
    }
    events.reverse();
    Ok(events)
}

/// MSC3202 `changed` and `left`: the last word on each user wins, `changed` only for users the
/// appservice shares a room with (or holds), `left` only for users it no longer does.
fn device_lists(
    interest: &mut Interest<'_>,
    extras: &[Extra],
) -> Result<(BTreeSet<OwnedUserId>, BTreeSet<OwnedUserId>)> {
    let mut last: BTreeMap<&UserId, bool> = BTreeMap::new();
    for extra in extras {
        match extra {
            Extra::DeviceChanged(user_id) => last.insert(user_id, true),
            Extra::DeviceLeft(user_id) => last.insert(user_id, false),
            _ => None,
        };
    }
    let (mut changed, mut left) = (BTreeSet::new(), BTreeSet::new());
    for (user_id, is_change) in last {
        let shares = interest.user(user_id)?;
        if is_change && shares {
            changed.insert(user_id.to_owned());
        } else if !is_change && !shares {
            left.insert(user_id.to_owned());
        }
    }
    Ok((changed, left))
}

/// Per user and device: the one-time key counts and the unused fallback key types.
type KeyCounts = BTreeMap<OwnedUserId, BTreeMap<String, Value>>;

/// The one-time key counts and unused fallback key types of every device of `users`.
fn key_counts(
    services: &Services,
    users: &BTreeSet<OwnedUserId>,
) -> Result<(KeyCounts, KeyCounts)> {
    let (mut counts, mut fallback) = (KeyCounts::new(), KeyCounts::new());
    for user_id in users {
        for device in services.users.iter_devices(user_id)? {
            let device_id = device.device_id.to_string();
            let keys = &services.keys;
            let user_counts = counts.entry(user_id.clone()).or_default();
            user_counts.insert(
                device_id.clone(),
                json!(keys.count_one_time_keys(user_id, &device_id)?),
            );
            let types = keys.iter_unused_fallback_key_types(user_id, &device_id)?;
            let user_fallback = fallback.entry(user_id.clone()).or_default();
            user_fallback.insert(device_id, json!(types));
        }
    }
    Ok((counts, fallback))
}
