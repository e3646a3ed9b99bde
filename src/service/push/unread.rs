//! Reading notifications back: the unread counts of a room for `/sync` (per thread when the
//! client asks), read from the stored counters (`push/counters.rs`), and the pages of
//! `GET /notifications`.
//!
//! A notification is read when the user's receipt (`m.read` or `m.read.private`) is at or after
//! it: an unthreaded receipt reads everything up to its event, a threaded one only its thread
//! (`main` being the events outside threads).

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{json, Value};

use super::{
    counters::{self, Counts},
    Notification, Push,
};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::client_event, Services},
    store::{key, Batch},
};

/// The positions up to which a user has read a room: everything (unthreaded receipts) and
/// each thread (`main` for events outside threads).
#[derive(Default)]
pub(super) struct ReadUpTo {
    pub(super) all: u64,
    threads: HashMap<String, u64>,
}

impl ReadUpTo {
    pub(super) fn load(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<Self> {
        let receipts = services.receipts.iter_user_receipts(room_id, user_id)?;
        let receipts: Vec<_> = receipts
            .into_iter()
            .map(|receipt| (receipt.event_id, receipt.thread_id))
            .collect();
        Self::from_receipts(services, room_id, &receipts)
    }

    /// From a user's receipts as (event, thread) pairs (`None` for unthreaded ones).
    fn from_receipts(
        services: &Services,
        room_id: &RoomId,
        receipts: &[(OwnedEventId, Option<String>)],
    ) -> Result<Self> {
        let mut read = Self::default();
        let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
            return Ok(read);
        };
        for (event_id, thread_id) in receipts {
            let Some(pdu_id) = services.rooms.timeline.get_pdu_id(event_id)? else {
                continue;
            };
            if pdu_id.shortroomid != shortroomid {
                continue;
            }
            match thread_id {
                None => read.all = read.all.max(pdu_id.count),
                Some(thread) => {
                    let entry = read.threads.entry(thread.clone()).or_default();
                    *entry = (*entry).max(pdu_id.count);
                }
            }
        }
        Ok(read)
    }

    pub(super) fn is_read(&self, count: u64, thread_id: Option<&str>) -> bool {
        count <= self.all
            || self
                .threads
                .get(thread_id.unwrap_or("main"))
                .is_some_and(|position| count <= *position)
    }
}

/// The writes that bring a local user's unread counters in a room to where `receipts` (all of
/// their receipts once the new one is stored, as (event, thread) pairs) leave them, for the
/// receipt's batch. The caller holds the room lock, so that no event of the room is committed
/// between the recount and the write.
pub fn recount_for_receipts(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    receipts: &[(OwnedEventId, Option<String>)],
) -> Result<Batch> {
    let read = ReadUpTo::from_receipts(services, room_id, receipts)?;
    let mut batch = Batch::default();
    counters::recount_in_batch(&services.push, user_id, room_id, &read, &mut batch)?;
    Ok(batch)
}

/// A joined room's `unread_notifications` and, when the sync filter's room timeline filter
/// sets `unread_thread_notifications`, its `unread_thread_notifications` (threads with unread
/// notifications only; the main counts then leave threaded events out).
pub fn sync_unread(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    filter: &Value,
) -> Result<(Value, Option<Value>)> {
    let by_thread = filter["room"]["timeline"]["unread_thread_notifications"] == json!(true);
    let mut main = Counts::default();
    let mut threads: BTreeMap<String, Counts> = BTreeMap::new();
    for (thread, counts) in counters::stored(&services.push, user_id, room_id)? {
        match (thread, by_thread) {
            (Some(thread), true) => {
                threads.insert(thread, counts);
            }
            _ => main.add_counts(counts),
        }
    }
    let threads = (!threads.is_empty()).then(|| {
        Value::Object(
            threads
                .into_iter()
                .map(|(thread, counts)| (thread, counts.to_value()))
                .collect(),
        )
    });
    Ok((main.to_value(), threads))
}

/// The total of a user's unread notifications over their joined rooms (the badge count sent
/// to push gateways).
pub fn total_unread(services: &Services, user_id: &UserId) -> Result<u64> {
    let mut total = 0;
    for room_id in services.rooms.members.iter_joined_rooms(user_id)? {
        let (counts, _) = sync_unread(services, user_id, &room_id, &Value::Null)?;
        total += counts["notification_count"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// One page of `GET /notifications`.
pub struct NotificationPage {
    pub notifications: Vec<Value>,
    /// The `from` of the next page, when there may be one.
    pub next_token: Option<u64>,
}

/// A user's notifications, newest first, from before stream position `from` (the newest when
/// `None`), at most `limit`, only highlights when asked: the per-room lists of every room the
/// user has (or forgot) a membership in, merged by stream position.
pub fn iter_notifications(
    services: &Services,
    user_id: &UserId,
    from: Option<u64>,
    limit: usize,
    only_highlight: bool,
) -> Result<NotificationPage> {
    let before = from.map_or(u64::MAX, |from| from.saturating_sub(1));
    let members = &services.rooms.members;
    let mut rooms = members.iter_rooms(user_id)?;
    rooms.extend(members.iter_forgotten(user_id)?);
    let mut lists: Vec<_> = rooms
        .iter()
        .map(|room| room_notifications_back(&services.push, user_id, &room.room_id, before))
        .collect();
    // The newest unread entry of each room's list, by position.
    let mut heads = BinaryHeap::new();
    let mut pending: Vec<Option<Notification>> = Vec::with_capacity(lists.len());
    for (index, list) in lists.iter_mut().enumerate() {
        pending.push(next_head(list, index, &mut heads)?);
    }
    let mut page = NotificationPage {
        notifications: Vec::new(),
        next_token: None,
    };
    let mut read_by_room: HashMap<OwnedRoomId, ReadUpTo> = HashMap::new();
    while let Some((count, index)) = heads.pop() {
        if page.notifications.len() == limit {
            page.next_token = Some(count + 1);
            break;
        }
        let notification = pending[index].take();
        pending[index] = next_head(&mut lists[index], index, &mut heads)?;
        let Some(notification) = notification.filter(|n| !only_highlight || n.highlight) else {
            continue;
        };
        let room_id = &rooms[index].room_id;
        let Some(pdu) = services.rooms.timeline.get_pdu(&notification.event_id)? else {
            continue;
        };
        let read = match read_by_room.get(room_id) {
            Some(read) => read,
            None => {
                let loaded = ReadUpTo::load(services, room_id, user_id)?;
                read_by_room.entry(room_id.clone()).or_insert(loaded)
            }
        };
        let mut event = client_event(&pdu, room_id, None);
        if let Some(object) = event.as_object_mut() {
            object.remove("room_id");
        }
        page.notifications.push(json!({
            "actions": notification.actions,
            "event": event,
            "read": read.is_read(count, notification.thread_id.as_deref()),
            "room_id": room_id,
            "ts": notification.ts,
        }));
    }
    Ok(page)
}

/// One room's notification list, newest first, as (position, notification).
type RoomList<'a> = Box<dyn Iterator<Item = Result<(u64, Notification)>> + 'a>;

/// Takes the next entry of room list `index` into `heads`, returning its notification.
fn next_head(
    list: &mut RoomList<'_>,
    index: usize,
    heads: &mut BinaryHeap<(u64, usize)>,
) -> Result<Option<Notification>> {
    match list.next() {
        Some(entry) => {
            let (count, notification) = entry?;
            heads.push((count, index));
            Ok(Some(notification))
        }
        None => Ok(None),
    }
}

/// A user's notifications in a room at or before stream position `before`, newest first.
fn room_notifications_back<'a>(
    push: &'a Push,
    user_id: &UserId,
    room_id: &RoomId,
    before: u64,
) -> RoomList<'a> {
    let prefix = Push::room_prefix(user_id, room_id);
    let mut start = prefix.clone();
    start.extend_from_slice(&key::u64_bytes(before));
    Box::new(
        push.userroomcount_notification
            .iter_from(&start, true)
            .map_while(move |entry| {
                let (entry_key, value) = match entry {
                    Ok(entry) => entry,
                    Err(error) => return Some(Err(error)),
                };
                let count = key::read_u64(entry_key.strip_prefix(prefix.as_slice())?);
                Some(decode(count, &value))
            }),
    )
}

/// A stored notification with its position, or the corruption error.
fn decode(count: Option<u64>, value: &[u8]) -> Result<(u64, Notification)> {
    let count =
        count.ok_or_else(|| Error::corrupt("userroomcount_notification", "short position"))?;
    let notification = serde_json::from_slice(value)
        .map_err(|e| Error::corrupt("userroomcount_notification", e))?;
    Ok((count, notification))
}

/// A user's notifications in a room from stream position `from` on, oldest first, with their
/// keys and positions.
pub(super) fn room_notifications<'a>(
    push: &'a Push,
    user_id: &UserId,
    room_id: &RoomId,
    from: u64,
) -> impl Iterator<Item = Result<(Box<[u8]>, u64, Notification)>> + 'a {
    let prefix = Push::room_prefix(user_id, room_id);
    let mut start = prefix.clone();
    start.extend_from_slice(&key::u64_bytes(from));
    push.userroomcount_notification
        .iter_from(&start, false)
        .map_while(move |entry| {
            let (entry_key, value) = match entry {
                Ok(entry) => entry,
                Err(error) => return Some(Err(error)),
            };
            let count = key::read_u64(entry_key.strip_prefix(prefix.as_slice())?);
            Some(
                decode(count, &value).map(|(count, notification)| (entry_key, count, notification)),
            )
        })
}

/// Most notifications one call of [`prune_read`] looks at.
const PRUNE_BATCH: usize = 1000;

/// Deletes a local user's notifications in a room that they have read and that are older than
/// `read_notification_retention_ms`; called after each of their read receipts, so the oldest
/// entries go first and a call usually finds few. Unread ones stay: they make the unread counts.
pub fn prune_read(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    let push = &services.push;
    let cutoff =
        crate::util::now_millis().saturating_sub(services.config.read_notification_retention_ms);
    let read = ReadUpTo::load(services, room_id, user_id)?;
    if read.all == 0 && read.threads.is_empty() {
        return Ok(());
    }
    let mut batch = crate::store::Batch::default();
    let mut pruned = 0usize;
    for entry in room_notifications(push, user_id, room_id, 0).take(PRUNE_BATCH) {
        let (entry_key, count, notification) = entry?;
        if notification.ts > cutoff {
            break;
        }
        if !read.is_read(count, notification.thread_id.as_deref()) {
            continue;
        }
        batch.remove(&push.userroomcount_notification, &entry_key);
        pruned += 1;
    }
    if pruned > 0 {
        push.db.write(batch)?;
        tracing::debug!(pruned, "read notifications dropped");
    }
    Ok(())
}
