//! Which member events each device has been sent by `/sync` with lazy-loaded members, so that
//! incremental syncs send the membership of a timeline sender once, not with every message.
//!
//! Memory only: after a restart, or when a device's record grows too large, the record starts
//! empty and the next syncs send members again; the spec allows such redundant member events
//! ("Lazy-loading room members").

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::SyncToken;

/// Past this many recorded members a device's record is dropped (and rebuilt as it syncs).
const MAX_MEMBERS_PER_DEVICE: usize = 20_000;
/// Responses a device may have received but not yet synced from; older ones are forgotten.
const MAX_PENDING_RESPONSES: usize = 8;
/// Devices with a record; past this, the records start over.
const MAX_DEVICES: usize = 50_000;

/// Member events by room and member.
type RoomMembers = HashMap<OwnedRoomId, HashMap<OwnedUserId, OwnedEventId>>;

/// The member events sent to each device, by (user, device).
#[derive(Default)]
pub struct SentMembers {
    devices: Mutex<HashMap<(OwnedUserId, String), DeviceRecord>>,
}

#[derive(Default)]
struct DeviceRecord {
    /// Member events of responses the device has synced on from, so it holds them.
    confirmed: RoomMembers,
    /// Member events of responses not yet confirmed, by their `next_batch`: a response can be
    /// lost, and a client that retries with the same `since` must get its members again.
    pending: BTreeMap<(u64, u64), RoomMembers>,
}

impl DeviceRecord {
    fn len(&self) -> usize {
        let count = |members: &RoomMembers| members.values().map(HashMap::len).sum::<usize>();
        count(&self.confirmed) + self.pending.values().map(count).sum::<usize>()
    }
}

/// The member events of one sync response, to be recorded once it is built.
#[derive(Default)]
pub struct Sent(RoomMembers);

impl Sent {
    /// Notes that `member`'s membership event `event_id` went to the client in `room_id`.
    pub fn add(&mut self, room_id: &RoomId, member: OwnedUserId, event_id: OwnedEventId) {
        self.0
            .entry(room_id.to_owned())
            .or_default()
            .insert(member, event_id);
    }
}

impl SentMembers {
    /// Starts a sync of `device` from `since`: a sync without a token (or with `full_state`)
    /// starts the record over; one from the `next_batch` of a recorded response confirms that
    /// response's members and forgets responses older than it.
    pub fn begin(&self, user: &UserId, device: &str, since: Option<SyncToken>, full_state: bool) {
        let mut devices = self
            .devices
            .lock()
            .expect("sent members lock is not poisoned");
        let key = (user.to_owned(), device.to_owned());
        let Some(since) = since.filter(|_| !full_state) else {
            devices.remove(&key);
            return;
        };
        let Some(record) = devices.get_mut(&key) else {
            return;
        };
        let position = (since.count, since.typing);
        if let Some(members) = record.pending.remove(&position) {
            for (room_id, members) in members {
                record.confirmed.entry(room_id).or_default().extend(members);
            }
        }
        record.pending = record.pending.split_off(&position);
    }

    /// The member events `device` holds for `room_id`: what it confirmed receiving.
    pub fn known(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
    ) -> HashMap<OwnedUserId, OwnedEventId> {
        let devices = self
            .devices
            .lock()
            .expect("sent members lock is not poisoned");
        devices
            .get(&(user.to_owned(), device.to_owned()))
            .and_then(|record| record.confirmed.get(room_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Records the member events of the response whose `next_batch` is `next`.
    pub fn record(&self, user: &UserId, device: &str, next: SyncToken, sent: Sent) {
        if sent.0.is_empty() {
            return;
        }
        let mut devices = self
            .devices
            .lock()
            .expect("sent members lock is not poisoned");
        let key = (user.to_owned(), device.to_owned());
        if devices.len() >= MAX_DEVICES && !devices.contains_key(&key) {
            devices.clear();
        }
        let record = devices.entry(key.clone()).or_default();
        let pending = record.pending.entry((next.count, next.typing)).or_default();
        for (room_id, members) in sent.0 {
            pending.entry(room_id).or_default().extend(members);
        }
        while record.pending.len() > MAX_PENDING_RESPONSES {
            record.pending.pop_first();
        }
        if record.len() > MAX_MEMBERS_PER_DEVICE {
            devices.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, owned_room_id, owned_user_id};

    use super::{Sent, SentMembers, SyncToken};

    fn token(count: u64) -> SyncToken {
        SyncToken { count, typing: 0 }
    }

    #[test]
    fn members_count_as_known_once_the_client_syncs_from_their_response() {
        let sent_members = SentMembers::default();
        let user = owned_user_id!("@alice:localhost");
        let room = owned_room_id!("!room:localhost");
        let bob = owned_user_id!("@bob:localhost");
        let event = owned_event_id!("$bob_join");
        sent_members.begin(&user, "DEV", None, false);
        let mut sent = Sent::default();
        sent.add(&room, bob.clone(), event.clone());
        sent_members.record(&user, "DEV", token(5), sent);
        // A retry from an older token does not confirm the response the client may have lost.
        sent_members.begin(&user, "DEV", Some(token(3)), false);
        assert!(sent_members.known(&user, "DEV", &room).is_empty());
        sent_members.begin(&user, "DEV", Some(token(5)), false);
        assert_eq!(
            sent_members.known(&user, "DEV", &room).get(&bob),
            Some(&event)
        );
        assert!(sent_members.known(&user, "OTHER", &room).is_empty());
        // An initial sync, or one with full_state, starts over.
        sent_members.begin(&user, "DEV", Some(token(9)), true);
        assert!(sent_members.known(&user, "DEV", &room).is_empty());
    }
}
