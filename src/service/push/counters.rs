//! Stored unread counts, so that `/sync` reads a few numbers per room instead of scanning and
//! decoding every unread notification.
//!
//! They live in a tree of their own, `userroomthread_unreadcount`: user ID 0xff room ID 0xfe
//! thread (the thread root's event ID, empty for events outside threads) → notification count
//! u64 ++ highlight count u64, big-endian. (Beside the notifications they cost a seek through a
//! tree of hundreds of thousands of keys and tombstones on every `/sync` of every room: a third
//! of the server's CPU in the load benchmark.)
//! A counter holds the user's unread notifications of that thread as their receipts stand; a
//! zero counter is removed.
//!
//! Every writer holds the room lock (`Timeline::room_lock`): an event's commit adds its
//! notifications in the event's batch ([`add_in_batch`]), a local user's receipt recounts that
//! user's counters from the notifications in the receipt's batch ([`recount_in_batch`]). So a
//! counter's read-modify-write has no other writer in between, and a crash leaves counters that
//! agree with the notifications and receipts on disk.

use std::collections::BTreeMap;

use ruma::{RoomId, UserId};
use serde_json::{json, Value};

use super::{
    unread::{self, ReadUpTo},
    Notification, Push,
};
use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Batch},
};

/// Ends the room ID in a counter key (0xfe never occurs in UTF-8).
const COUNTER_MARK: u8 = 0xfe;

/// The key, in the counters' tree, that says the counters were built for the notifications of
/// an older database (a key of no user: user IDs start with `@`).
const BUILT_KEY: &[u8] = b"\xfeunread counters built";

/// Notification and highlight counts.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Counts {
    pub notification: u64,
    pub highlight: u64,
}

impl Counts {
    fn add(&mut self, notification: &Notification) {
        self.notification += 1;
        self.highlight += u64::from(notification.highlight);
    }

    pub(super) fn add_counts(&mut self, other: Self) {
        self.notification += other.notification;
        self.highlight += other.highlight;
    }

    pub(super) fn to_value(self) -> Value {
        json!({ "notification_count": self.notification, "highlight_count": self.highlight })
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut bytes = key::u64_bytes(self.notification).to_vec();
        bytes.extend_from_slice(&key::u64_bytes(self.highlight));
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::corrupt("userroomthread_unreadcount", "short unread counter");
        Ok(Self {
            notification: key::read_u64(bytes).ok_or_else(corrupt)?,
            highlight: key::read_u64(bytes.get(8..).unwrap_or_default()).ok_or_else(corrupt)?,
        })
    }
}

/// Counts per thread: `None` for events outside threads.
pub(super) type ByThread = BTreeMap<Option<String>, Counts>;

/// user 0xff room 0xfe: the start of every counter key of a user's room.
fn counter_prefix(user_id: &UserId, room_id: &RoomId) -> Vec<u8> {
    let mut prefix = key::prefix(&[user_id.as_bytes()]);
    prefix.extend_from_slice(room_id.as_bytes());
    prefix.push(COUNTER_MARK);
    prefix
}

fn counter_key(user_id: &UserId, room_id: &RoomId, thread_id: Option<&str>) -> Vec<u8> {
    let mut counter = counter_prefix(user_id, room_id);
    counter.extend_from_slice(thread_id.unwrap_or("").as_bytes());
    counter
}

/// A user's stored counters in a room, per thread.
pub(super) fn stored(push: &Push, user_id: &UserId, room_id: &RoomId) -> Result<ByThread> {
    let prefix = counter_prefix(user_id, room_id);
    let mut counts = ByThread::new();
    for entry in push.userroomthread_unreadcount.iter_prefix(&prefix) {
        let (entry_key, value) = entry?;
        let thread = entry_key.get(prefix.len()..).unwrap_or_default();
        let thread = (!thread.is_empty()).then(|| String::from_utf8_lossy(thread).into_owned());
        counts.insert(thread, Counts::from_bytes(&value)?);
    }
    Ok(counts)
}

/// Adds a new notification to its user's counter of its thread, in the event's batch. The
/// event is newer than every receipt, so it is unread. The caller holds the room lock.
pub(super) fn add_in_batch(
    push: &Push,
    user_id: &UserId,
    room_id: &RoomId,
    notification: &Notification,
    batch: &mut Batch,
) -> Result<()> {
    let counter = counter_key(user_id, room_id, notification.thread_id.as_deref());
    let mut counts = match push.userroomthread_unreadcount.get(&counter)? {
        Some(value) => Counts::from_bytes(&value)?,
        None => Counts::default(),
    };
    counts.add(notification);
    batch.insert(
        &push.userroomthread_unreadcount,
        &counter,
        &counts.to_bytes(),
    );
    Ok(())
}

/// A user's unread notifications in a room when they have read up to `read`, per thread: a
/// scan of the notifications after the latest unthreaded receipt.
pub(super) fn count_unread(
    push: &Push,
    user_id: &UserId,
    room_id: &RoomId,
    read: &ReadUpTo,
) -> Result<ByThread> {
    let mut counts = ByThread::new();
    let from = read.all.saturating_add(1);
    for entry in unread::room_notifications(push, user_id, room_id, from) {
        let (_, count, notification) = entry?;
        if read.is_read(count, notification.thread_id.as_deref()) {
            continue;
        }
        counts
            .entry(notification.thread_id.clone())
            .or_default()
            .add(&notification);
    }
    Ok(counts)
}

/// Adds the writes that set a user's counters in a room to what `read` leaves unread (a
/// recount, once per receipt). The caller holds the room lock.
pub(super) fn recount_in_batch(
    push: &Push,
    user_id: &UserId,
    room_id: &RoomId,
    read: &ReadUpTo,
    batch: &mut Batch,
) -> Result<()> {
    let counts = count_unread(push, user_id, room_id, read)?;
    for thread in stored(push, user_id, room_id)?.into_keys() {
        if !counts.contains_key(&thread) {
            let counter = counter_key(user_id, room_id, thread.as_deref());
            batch.remove(&push.userroomthread_unreadcount, &counter);
        }
    }
    for (thread, thread_counts) in counts {
        let counter = counter_key(user_id, room_id, thread.as_deref());
        batch.insert(
            &push.userroomthread_unreadcount,
            &counter,
            &thread_counts.to_bytes(),
        );
    }
    Ok(())
}

/// Builds the counters of a database written before they existed: every user and room with
/// notifications is counted once, all in one batch with the key that marks it done. Runs at
/// startup, before any request.
pub fn build_missing(services: &Services) -> Result<()> {
    let push = &services.push;
    if push.userroomthread_unreadcount.contains(BUILT_KEY)? {
        return Ok(());
    }
    let mut rooms: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for entry in push.userroomcount_notification.iter_from(&[], false) {
        let (entry_key, _) = entry?;
        let mut parts = entry_key.splitn(3, |byte| *byte == key::SEP);
        let (Some(user), Some(room), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if rooms.last().is_none_or(|(u, r)| u != user || r != room) {
            rooms.push((user.to_vec(), room.to_vec()));
        }
    }
    let mut batch = Batch::default();
    for (user, room) in &rooms {
        let parse = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let user_id = ruma::OwnedUserId::try_from(parse(user))
            .map_err(|e| Error::corrupt("userroomcount_notification", e))?;
        let room_id = ruma::OwnedRoomId::try_from(parse(room))
            .map_err(|e| Error::corrupt("userroomcount_notification", e))?;
        let read = ReadUpTo::load(services, &room_id, &user_id)?;
        recount_in_batch(push, &user_id, &room_id, &read, &mut batch)?;
    }
    batch.insert(&push.userroomthread_unreadcount, BUILT_KEY, b"");
    push.db.write(batch)?;
    if !rooms.is_empty() {
        tracing::info!(rooms = rooms.len(), "unread counters built");
    }
    Ok(())
}
