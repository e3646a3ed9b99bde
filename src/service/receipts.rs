//! Read receipts (`m.read`, `m.read.private`): the latest one per room, user, receipt type and
//! thread, with the stream position of each change for `/sync`. Public receipts of local users go
//! to the other servers in the room as `m.receipt` EDUs; those of other servers arrive through
//! `/send`.
//!
//! The current `m.read`/`m.read.private` receipt per (room, user, type, thread) in `roomuserreceipt_count` and `roomcount_receipt`, so that an incremental sync reads only receipts newer than its token, and an in-memory newest position per room lets it skip quiet rooms without a read; public receipts of local users are queued as `m.receipt` EDUs in the same batch; `receive_edu` applies those from `/send`.
//! The read marker is room account data `m.fully_read`, written through `account_data`.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{notify::Topic, rooms::incoming, Services},
    store::{key, Batch, Db, Tree},
    util,
};

/// The receipt types a client can set (`m.fully_read` is a read marker, kept as account data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptType {
    #[serde(rename = "m.read")]
    Read,
    #[serde(rename = "m.read.private")]
    ReadPrivate,
}

impl ReceiptType {
    /// The type as the spec names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "m.read",
            Self::ReadPrivate => "m.read.private",
        }
    }

    /// A receipt type by name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "m.read" => Some(Self::Read),
            "m.read.private" => Some(Self::ReadPrivate),
            _ => None,
        }
    }
}

/// One receipt, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub user_id: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: ReceiptType,
    pub event_id: OwnedEventId,
    /// Milliseconds since the epoch when the user read the event.
    pub ts: u64,
    /// `main` or a thread root's event ID; `None` for an unthreaded receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// Whether a `thread_id` is one the spec allows: `main` or an event ID.
pub fn is_valid_thread_id(thread_id: &str) -> bool {
    thread_id == "main" || <&ruma::EventId>::try_from(thread_id).is_ok()
}

/// Owns `roomuserreceipt_count` (room ID 0xff user ID 0xff receipt type 0xff thread ID or empty
/// → stream position u64) and `roomcount_receipt` (room ID 0xff stream position u64 → JSON
/// [`Receipt`]); the first finds the entry of the second that a new receipt replaces.
pub struct Receipts {
    roomuserreceipt_count: Tree,
    roomcount_receipt: Tree,
    /// The newest receipt position per room, so that a sync skips rooms without news without a
    /// read. Only ever raised.
    latest: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl Receipts {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            roomuserreceipt_count: db.tree("roomuserreceipt_count"),
            roomcount_receipt: db.tree("roomcount_receipt"),
            latest: Mutex::new(HashMap::new()),
        }
    }

    fn position_key(room_id: &RoomId, count: u64) -> Vec<u8> {
        let mut entry = key::prefix(&[room_id.as_bytes()]);
        entry.extend_from_slice(&key::u64_bytes(count));
        entry
    }

    /// Adds the writes that make `receipt` the current one of its user, type and thread at
    /// stream position `count`. Call inside `Globals::write_with_count`, whose lock keeps two
    /// writers of one receipt from both keeping the entry they replace.
    fn set_in_batch(
        &self,
        room_id: &RoomId,
        receipt: &Receipt,
        count: u64,
        batch: &mut Batch,
    ) -> Result<()> {
        let index = key::join(&[
            room_id.as_bytes(),
            receipt.user_id.as_bytes(),
            receipt.kind.as_str().as_bytes(),
            receipt.thread_id.as_deref().unwrap_or("").as_bytes(),
        ]);
        if let Some(previous) = self.roomuserreceipt_count.get(&index)? {
            let previous = key::read_u64(&previous)
                .ok_or_else(|| Error::corrupt("roomuserreceipt_count", "short position"))?;
            batch.remove(
                &self.roomcount_receipt,
                &Self::position_key(room_id, previous),
            );
        }
        batch.insert(&self.roomuserreceipt_count, &index, &key::u64_bytes(count));
        let json = serde_json::to_vec(receipt).map_err(Error::internal)?;
        batch.insert(
            &self.roomcount_receipt,
            &Self::position_key(room_id, count),
            &json,
        );
        // Raised before the position is published, so that no sync that can see the receipt
        // skips the room on a stale value.
        self.raise_latest(room_id, count);
        Ok(())
    }

    fn raise_latest(&self, room_id: &RoomId, count: u64) {
        let mut latest = self.latest.lock();
        let entry = latest.entry(room_id.to_owned()).or_insert(count);
        *entry = (*entry).max(count);
    }

    /// The newest receipt position of a room (0 if it has none).
    fn latest(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(count) = self.latest.lock().get(room_id) {
            return Ok(*count);
        }
        let prefix = key::prefix(&[room_id.as_bytes()]);
        let last = Self::position_key(room_id, u64::MAX);
        let count = match self.roomcount_receipt.iter_from(&last, true).next() {
            Some(entry) => {
                let (entry_key, _) = entry?;
                match entry_key.strip_prefix(prefix.as_slice()) {
                    Some(rest) => key::read_u64(rest)
                        .ok_or_else(|| Error::corrupt("roomcount_receipt", "short position"))?,
                    None => 0,
                }
            }
            None => 0,
        };
        self.raise_latest(room_id, count);
        Ok(count)
    }

    /// A user's current receipts in a room, every type and thread (for unread counts).
    pub fn iter_user_receipts(&self, room_id: &RoomId, user_id: &UserId) -> Result<Vec<Receipt>> {
        let prefix = key::prefix(&[room_id.as_bytes(), user_id.as_bytes()]);
        let mut receipts = Vec::new();
        for entry in self.roomuserreceipt_count.iter_prefix(&prefix) {
            let (_, position) = entry?;
            let position = key::read_u64(&position)
                .ok_or_else(|| Error::corrupt("roomuserreceipt_count", "short position"))?;
            if let Some(value) = self
                .roomcount_receipt
                .get(&Self::position_key(room_id, position))?
            {
                receipts.push(
                    serde_json::from_slice(&value)
                        .map_err(|e| Error::corrupt("roomcount_receipt", e))?,
                );
            }
        }
        Ok(receipts)
    }

    /// The current receipts of a room set after `since` (all of them when `None`) and at or
    /// before `until`, oldest first.
    pub fn iter_since(
        &self,
        room_id: &RoomId,
        since: Option<u64>,
        until: u64,
    ) -> Result<Vec<Receipt>> {
        let since = since.unwrap_or(0);
        if self.latest(room_id)? <= since {
            return Ok(Vec::new());
        }
        let prefix = key::prefix(&[room_id.as_bytes()]);
        let start = Self::position_key(room_id, since.saturating_add(1));
        let mut receipts = Vec::new();
        for entry in self.roomcount_receipt.iter_from(&start, false) {
            let (entry_key, value) = entry?;
            let Some(rest) = entry_key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if key::read_u64(rest).is_none_or(|count| count > until) {
                break;
            }
            receipts.push(
                serde_json::from_slice(&value)
                    .map_err(|e| Error::corrupt("roomcount_receipt", e))?,
            );
        }
        Ok(receipts)
    }
}

/// Stores a receipt and wakes the syncs that show it: the room's for `m.read`, only the owner's
/// for `m.read.private`. A public receipt of a local user also goes to the other servers in the
/// room, queued in the same write, and a local user's unread counters are recounted in it.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn set_receipt(services: &Services, room_id: &RoomId, receipt: &Receipt) -> Result<()> {
    let own = services.globals.server_name();
    let destinations: Vec<OwnedServerName> =
        if receipt.kind == ReceiptType::Read && receipt.user_id.server_name() == own {
            services
                .rooms
                .members
                .servers_in_room_except(room_id, own)?
        } else {
            Vec::new()
        };
    let edu = (!destinations.is_empty()).then(|| receipt_edu(room_id, receipt));
    // A local user's unread counters move with their receipt, in its batch. The room lock keeps
    // the room's commits (which add to the counters) and the user's other receipts out from
    // the recount until the batch is written.
    let local = receipt.user_id.server_name() == own;
    let lock = services.rooms.timeline.room_lock(room_id);
    let guard = local.then(|| lock.lock());
    let counters = match local {
        true => unread_counters(services, room_id, receipt)?,
        false => Batch::default(),
    };
    services.globals.write_with_count(|batch, count| {
        services
            .receipts
            .set_in_batch(room_id, receipt, count, batch)?;
        if services.appservices.any_wants_ephemeral() {
            let shown = sync_events(std::slice::from_ref(receipt), &receipt.user_id);
            let private = (receipt.kind == ReceiptType::ReadPrivate).then_some(&*receipt.user_id);
            for event in shown {
                let at = (&mut *batch, count);
                services
                    .appservices
                    .queue_receipt_in_batch(at, room_id, event, private)?;
            }
        }
        if let Some(edu) = &edu {
            services
                .sending
                .queue_edu_in_batch(batch, &destinations, count, edu);
        }
        batch.append(counters);
        Ok(())
    })?;
    drop(guard);
    match receipt.kind {
        ReceiptType::Read => services.notifier.wake(Topic::Room(room_id.to_string())),
        ReceiptType::ReadPrivate => services
            .notifier
            .wake(Topic::User(receipt.user_id.to_string())),
    }
    services.sending.wake(&destinations);
    services.appservices.wake_all();
    if local {
        crate::service::push::prune_read(services, room_id, &receipt.user_id)?;
    }
    Ok(())
}

/// The writes that recount a local user's unread counters for `receipt`, from their receipts with
/// `receipt` in place of the one of its type and thread.
fn unread_counters(services: &Services, room_id: &RoomId, receipt: &Receipt) -> Result<Batch> {
    let mut current = services
        .receipts
        .iter_user_receipts(room_id, &receipt.user_id)?;
    current.retain(|old| old.kind != receipt.kind || old.thread_id != receipt.thread_id);
    current.push(receipt.clone());
    let read: Vec<_> = current
        .into_iter()
        .map(|receipt| (receipt.event_id, receipt.thread_id))
        .collect();
    crate::service::push::recount_for_receipts(services, room_id, &receipt.user_id, &read)
}

/// The federation form of one public receipt (server-server API, "Receipts").
fn receipt_edu(room_id: &RoomId, receipt: &Receipt) -> Value {
    let mut data = json!({ "ts": receipt.ts });
    if let Some(thread_id) = &receipt.thread_id {
        data["thread_id"] = json!(thread_id);
    }
    json!({
        "edu_type": "m.receipt",
        "content": { room_id.as_str(): { "m.read": {
            receipt.user_id.as_str(): { "event_ids": [receipt.event_id], "data": data },
        } } },
    })
}

/// Applies an `m.receipt` EDU from `origin`: `m.read` receipts of that server's users who are
/// joined to the room, in rooms whose server ACL allows the origin. Anything else is ignored
/// (the spec says a server only updates the receipts an EDU lists, and ACLs drop a whole room).
pub fn receive_edu(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    for (room, by_type) in content.as_object().into_iter().flatten() {
        let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
            continue;
        };
        if !incoming::server_allowed(services, &room_id, origin)? {
            tracing::debug!(%origin, %room_id, "ignored receipts from a server the ACL denies");
            continue;
        }
        for (user, receipt) in by_type
            .get("m.read")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(receipt) = remote_receipt(services, origin, &room_id, user, receipt)? {
                set_receipt(services, &room_id, &receipt)?;
            }
        }
    }
    Ok(())
}

/// One user's `m.read` entry of an EDU, if it is acceptable.
fn remote_receipt(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &str,
    entry: &Value,
) -> Result<Option<Receipt>> {
    let Ok(user_id) = OwnedUserId::try_from(user) else {
        return Ok(None);
    };
    let event_id = entry
        .get("event_ids")
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(Value::as_str)
        .and_then(|id| OwnedEventId::try_from(id).ok());
    let thread_id = match entry.pointer("/data/thread_id") {
        None => None,
        Some(Value::String(thread_id)) if is_valid_thread_id(thread_id) => Some(thread_id.clone()),
        Some(_) => return Ok(None),
    };
    let Some(event_id) = event_id else {
        return Ok(None);
    };
    if user_id.server_name() != origin || !services.rooms.members.is_joined(room_id, &user_id)? {
        tracing::debug!(%origin, %room_id, %user_id, "ignored a receipt");
        return Ok(None);
    }
    let ts = entry
        .pointer("/data/ts")
        .and_then(Value::as_u64)
        .unwrap_or_else(util::now_millis);
    Ok(Some(Receipt {
        user_id,
        kind: ReceiptType::Read,
        event_id,
        ts,
        thread_id,
    }))
}

/// The `m.receipt` events that show `receipts` to `viewer`: private receipts only to their
/// owner, one event per thread (the spec asks for batching per room and thread, and a user can
/// hold an unthreaded and a threaded receipt on the same event).
pub fn sync_events(receipts: &[Receipt], viewer: &UserId) -> Vec<Value> {
    let mut by_thread: Vec<(Option<&str>, Map<String, Value>)> = Vec::new();
    for receipt in receipts {
        if receipt.kind == ReceiptType::ReadPrivate && receipt.user_id != viewer {
            continue;
        }
        let thread = receipt.thread_id.as_deref();
        let index = match by_thread.iter().position(|(known, _)| *known == thread) {
            Some(index) => index,
            None => {
                by_thread.push((thread, Map::new()));
                by_thread.len() - 1
            }
        };
        let mut data = json!({ "ts": receipt.ts });
        if let Some(thread_id) = thread {
            data["thread_id"] = json!(thread_id);
        }
        let content = &mut by_thread[index].1;
        let by_type = content
            .entry(receipt.event_id.to_string())
            .or_insert_with(|| json!({}));
        by_type[receipt.kind.as_str()][receipt.user_id.as_str()] = data;
    }
    by_thread
        .into_iter()
        .map(|(_, content)| json!({ "type": "m.receipt", "content": content }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, kind: ReceiptType, event: &str, thread: Option<&str>) -> Receipt {
        Receipt {
            user_id: OwnedUserId::try_from(user).unwrap(),
            kind,
            event_id: OwnedEventId::try_from(event).unwrap(),
            ts: 7,
            thread_id: thread.map(str::to_owned),
        }
    }

    #[test]
    fn a_new_receipt_replaces_its_user_type_and_thread_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let receipts = Receipts::open(&db);
        let room = ruma::owned_room_id!("!r:x");
        let write = |receipt: &Receipt, count: u64| {
            let mut batch = Batch::default();
            receipts
                .set_in_batch(&room, receipt, count, &mut batch)
                .unwrap();
            db.write(batch).unwrap();
        };
        let first = receipt("@a:x", ReceiptType::Read, "$1", None);
        let threaded = receipt("@a:x", ReceiptType::Read, "$1", Some("main"));
        let private = receipt("@a:x", ReceiptType::ReadPrivate, "$2", None);
        let later = receipt("@a:x", ReceiptType::Read, "$3", None);
        write(&first, 10);
        write(&threaded, 11);
        write(&private, 12);
        write(&later, 13);
        assert_eq!(
            receipts.iter_since(&room, None, 100).unwrap(),
            vec![threaded.clone(), private.clone(), later.clone()]
        );
        assert_eq!(
            receipts.iter_since(&room, Some(12), 100).unwrap(),
            vec![later.clone()]
        );
        assert_eq!(
            receipts.iter_since(&room, Some(10), 12).unwrap(),
            vec![threaded.clone(), private.clone()]
        );
        assert!(receipts
            .iter_since(&room, Some(13), 100)
            .unwrap()
            .is_empty());
        // A fresh service finds the newest position on disk.
        let reopened = Receipts::open(&db);
        assert_eq!(reopened.latest(&room).unwrap(), 13);
        assert_eq!(
            reopened.latest(&ruma::owned_room_id!("!other:x")).unwrap(),
            0
        );

        let viewer = OwnedUserId::try_from("@b:x").unwrap();
        let events = sync_events(&[threaded, private.clone(), later], &viewer);
        assert_eq!(
            events,
            vec![
                json!({ "type": "m.receipt", "content": {
                    "$1": { "m.read": { "@a:x": { "ts": 7, "thread_id": "main" } } },
                } }),
                json!({ "type": "m.receipt", "content": {
                    "$3": { "m.read": { "@a:x": { "ts": 7 } } },
                } }),
            ],
            "the private receipt is hidden from others"
        );
        let own = sync_events(&[private], &OwnedUserId::try_from("@a:x").unwrap());
        assert_eq!(
            own[0]["content"]["$2"]["m.read.private"]["@a:x"]["ts"], 7,
            "{own:?}"
        );
    }

    #[test]
    fn thread_ids_are_main_or_event_ids() {
        assert!(is_valid_thread_id("main"));
        assert!(is_valid_thread_id("$root"));
        assert!(!is_valid_thread_id(""));
        assert!(!is_valid_thread_id("thread"));
    }
}
