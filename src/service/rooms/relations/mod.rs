//! Event relationships (spec, client-server API, "Forming relationships between events"): the
//! index of child events by parent and `rel_type`, kept by `timeline::commit` and redactions,
//! the thread list ordered by latest activity, the checks on relations sent by clients, and the
//! bundled aggregations added to served events ([`bundle`]).
//!
//! Event relationships: `parentreltypecount_child` (room, parent event ID, `rel_type`, child stream position → what aggregation needs of the child: ID, sender, type, annotation key, timestamp, whether it has `m.new_content`), written by one call from `commit`'s batch for every non-state event with a valid cleartext `m.relates_to` (local or from `/send`), and `roomcount_threadroot` (room, stream position of a thread's latest `m.thread` child → root), moved on every thread reply; a redaction removes its target's entry in the redaction's batch (one call from `redact_in_batch`), and an admin purge or retention each deleted event's in its batch (`purge::remove_in_batch`), so redacted and deleted children stop counting and a thread falls back to its latest reply that stays.
//! `relations::bundle::serve_event` is the one function that turns an event into its client form with `unsigned["m.relations"]` (annotation counts in MSC2675's form, the latest valid edit, the thread summary, references); `/sync` timelines, `/messages`, `/event`, `/context`, `/relations` and `/threads` call it, and it costs one prefix seek per non-state event (plus one read for the latest edit and for the latest thread reply), none for an event already found childless: such events are remembered (`Relations::children`, at most 65,536) until a batch gives them a child.
//! Edit validity (same sender and type, original neither state, an edit nor redacted, `m.new_content`) is decided when bundling, so an edit that arrives before its original is judged once both are known.
//! Client sends are checked by `relations::check_client_relation` (duplicate annotation `400 M_DUPLICATE_ANNOTATION`, thread from a relation `400 M_UNKNOWN`).

pub mod bundle;
pub mod read;

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    api::error::ErrorKind, events::TimelineEventType, OwnedEventId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pdu::Pdu, timeline::BACKFILL_BASE};
use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Batch, Db, Tree, WrittenCache},
};

/// The longest `rel_type` that is indexed; longer ones are ignored like any invalid relation.
const MAX_REL_TYPE_BYTES: usize = 255;

/// The relation an event's cleartext `m.relates_to` describes. Replies (`m.in_reply_to` without
/// a `rel_type`) are not relations the server aggregates, and an `m.annotation` without a `key`
/// breaks the schema, so neither is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub rel_type: String,
    pub parent: OwnedEventId,
    pub key: Option<String>,
}

impl Relation {
    /// The relation in an event's content, if it has a valid one.
    pub fn from_content(content: &Value) -> Option<Self> {
        let relates_to = content.get("m.relates_to")?.as_object()?;
        let rel_type = relates_to.get("rel_type")?.as_str()?;
        if rel_type.is_empty() || rel_type.len() > MAX_REL_TYPE_BYTES {
            return None;
        }
        let parent = OwnedEventId::try_from(relates_to.get("event_id")?.as_str()?).ok()?;
        let key = match rel_type {
            "m.annotation" => Some(relates_to.get("key")?.as_str()?.to_owned()),
            _ => None,
        };
        Some(Self {
            rel_type: rel_type.to_owned(),
            parent,
            key,
        })
    }
}

/// What the index keeps of a child event: enough to aggregate without reading the event.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Child {
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: String,
    /// The annotation key of an `m.annotation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub origin_server_ts: u64,
    /// Whether the content has `m.new_content` (always true for encrypted events, whose
    /// `m.new_content` is in the encrypted payload), which a valid `m.replace` needs.
    #[serde(default)]
    pub new_content: bool,
}

/// One entry of the index: the child's relation type and stream position, and the child.
#[derive(Clone, Debug)]
pub struct ChildEntry {
    pub rel_type: String,
    pub count: u64,
    pub child: Child,
}

/// Owns `parentreltypecount_child` (short room ID u64, parent event ID, 0xff, rel_type, 0xff,
/// child stream position u64 → [`Child`] JSON) and `roomcount_threadroot` (short room ID u64,
/// stream position u64 of the thread's latest `m.thread` child → root event ID; one entry per
/// thread).
/// Invariant: the room ID in both keys is the child's room, so a relation never crosses rooms.
pub struct Relations {
    parentreltypecount_child: Tree,
    roomcount_threadroot: Tree,
    /// Parents (short room ID, event ID) that had no child when last read: most events never
    /// get one, and each is served to every member who syncs it. A batch that gives one a child
    /// drops it once written.
    childless: Arc<WrittenCache<(u64, OwnedEventId), ()>>,
}

/// The most childless parents remembered; past it the set starts over.
const CHILDLESS_CACHED: usize = 65_536;

impl Relations {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            parentreltypecount_child: db.tree("parentreltypecount_child"),
            roomcount_threadroot: db.tree("roomcount_threadroot"),
            childless: WrittenCache::new(CHILDLESS_CACHED),
        }
    }

    /// Indexes an event's relation in its commit batch, before its stream position is known
    /// (the keys wait for it: `Batch::insert_at_count`), so the parsing and reads happen
    /// outside the commit lock; the caller holds the room lock. `backfilled` says the event is
    /// history fetched by backfill. State events are not indexed as children: no relation type
    /// the spec defines is valid from a state event.
    pub fn index_in_batch(
        &self,
        shortroomid: u64,
        pdu: &Pdu,
        backfilled: bool,
        batch: &mut Batch,
    ) -> Result<()> {
        if pdu.state_key.is_some() {
            return Ok(());
        }
        let content = pdu.content_value();
        let Some(relation) = Relation::from_content(&content) else {
            return Ok(());
        };
        if relation.parent == pdu.event_id {
            return Ok(());
        }
        let child = Child {
            event_id: pdu.event_id.clone(),
            sender: pdu.sender.clone(),
            kind: pdu.kind.to_string(),
            key: relation.key.clone(),
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            new_content: content.get("m.new_content").is_some()
                || pdu.kind == TimelineEventType::RoomEncrypted,
        };
        let rel_prefix = rel_prefix(shortroomid, &relation.parent, &relation.rel_type);
        if relation.rel_type == "m.thread" {
            // The thread moves to its new latest activity in the thread list. A thread's entry
            // sits at its latest reply of the live timeline, or at its latest backfilled reply
            // when it has none: a reply backfilled from the past never moves it.
            let live = self.last_count(&rel_prefix, BACKFILL_BASE)?;
            let previous = live.or(self.last_count(&rel_prefix, u64::MAX)?);
            if !backfilled || previous.is_none() {
                if let Some(previous) = previous {
                    batch.remove(
                        &self.roomcount_threadroot,
                        &thread_key(shortroomid, previous),
                    );
                }
                batch.insert_at_count(
                    &self.roomcount_threadroot,
                    &key::u64_bytes(shortroomid),
                    relation.parent.as_bytes(),
                );
            }
        }
        let value = serde_json::to_vec(&child).map_err(Error::internal)?;
        batch.insert_at_count(&self.parentreltypecount_child, &rel_prefix, &value);
        self.childless
            .drop_after((shortroomid, relation.parent), batch);
        Ok(())
    }

    /// Drops the relation of an event being redacted or deleted (a redaction's `m.relates_to`
    /// does not survive the redaction algorithm), given its content before the change and its
    /// stream position. `leaving` holds the stream positions of every event the same batch
    /// removes: the database still shows their entries until the batch is written, and a thread
    /// must not fall back to one of them.
    pub fn unindex_in_batch(
        &self,
        shortroomid: u64,
        content: &Value,
        count: u64,
        leaving: &BTreeSet<u64>,
        batch: &mut Batch,
    ) -> Result<()> {
        let Some(relation) = Relation::from_content(content) else {
            return Ok(());
        };
        let rel_prefix = rel_prefix(shortroomid, &relation.parent, &relation.rel_type);
        batch.remove(
            &self.parentreltypecount_child,
            &child_key(&rel_prefix, count),
        );
        let latest = thread_key(shortroomid, count);
        if relation.rel_type == "m.thread" && self.roomcount_threadroot.contains(&latest)? {
            // The removed reply was the latest: the thread falls back to the latest reply that
            // stays (live, else backfilled, as `index_in_batch` places it), or leaves the list
            // when none is left.
            batch.remove(&self.roomcount_threadroot, &latest);
            let stays = |child: u64| child != count && !leaving.contains(&child);
            let previous = match self.last_count_where(&rel_prefix, BACKFILL_BASE, stays)? {
                Some(live) => Some(live),
                None => self.last_count_where(&rel_prefix, u64::MAX, stays)?,
            };
            if let Some(previous) = previous {
                batch.insert(
                    &self.roomcount_threadroot,
                    &thread_key(shortroomid, previous),
                    relation.parent.as_bytes(),
                );
            }
        }
        Ok(())
    }

    /// The stream position of the last child under `rel_prefix` below `below`.
    fn last_count(&self, rel_prefix: &[u8], below: u64) -> Result<Option<u64>> {
        self.last_count_where(rel_prefix, below, |_| true)
    }

    /// The stream position of the last child under `rel_prefix` below `below` that `wanted`
    /// accepts.
    fn last_count_where(
        &self,
        rel_prefix: &[u8],
        below: u64,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Option<u64>> {
        let Some(start) = below.checked_sub(1) else {
            return Ok(None);
        };
        for entry in self
            .parentreltypecount_child
            .iter_from(&child_key(rel_prefix, start), true)
        {
            let (db_key, _) = entry?;
            let Some(child) = db_key
                .strip_prefix(rel_prefix)
                .filter(|rest| rest.len() == 8)
                .and_then(key::read_u64)
            else {
                return Ok(None);
            };
            if wanted(child) {
                return Ok(Some(child));
            }
        }
        Ok(None)
    }

    /// Every child of `parent` in a room, grouped by `rel_type`, each group in stream order.
    /// One prefix seek.
    pub fn iter_children<'a>(
        &'a self,
        shortroomid: u64,
        parent: &ruma::EventId,
    ) -> impl Iterator<Item = Result<ChildEntry>> + 'a {
        let prefix = parent_prefix(shortroomid, parent);
        let length = prefix.len();
        self.parentreltypecount_child
            .iter_from(&prefix, false)
            .take_while(move |entry| match entry {
                Ok((db_key, _)) => db_key.starts_with(&prefix),
                Err(_) => true,
            })
            .map(move |entry| {
                let (db_key, value) = entry?;
                decode_entry(&db_key[length..], &value)
            })
    }

    /// Every child of `parent` in a room, as [`Relations::iter_children`] gives them; without a
    /// seek for a parent that had none when last read.
    pub fn children(&self, shortroomid: u64, parent: &ruma::EventId) -> Result<Vec<ChildEntry>> {
        let key = (shortroomid, parent.to_owned());
        if self.childless.get(&key).is_some() {
            return Ok(Vec::new());
        }
        let read_at = self.childless.read_started();
        let children = self
            .iter_children(shortroomid, parent)
            .collect::<Result<Vec<_>>>()?;
        if children.is_empty() {
            self.childless.store(key, (), read_at);
        }
        Ok(children)
    }

    /// The children of `parent` with one `rel_type`, from `from` (exclusive) in stream order or
    /// its reverse.
    pub fn iter_children_of_type<'a>(
        &'a self,
        shortroomid: u64,
        parent: &ruma::EventId,
        rel_type: &str,
        from: Option<u64>,
        backwards: bool,
    ) -> impl Iterator<Item = Result<ChildEntry>> + 'a {
        let prefix = rel_prefix(shortroomid, parent, rel_type);
        let length = prefix.len() - rel_type.len() - 1;
        let start = match (from, backwards) {
            (Some(from), true) => child_key(&prefix, from.saturating_sub(1)),
            (None, true) => child_key(&prefix, u64::MAX),
            (Some(from), false) => child_key(&prefix, from.saturating_add(1)),
            (None, false) => prefix.clone(),
        };
        let empty = backwards && from == Some(0);
        self.parentreltypecount_child
            .iter_from(&start, backwards)
            .take_while(move |entry| {
                !empty
                    && match entry {
                        Ok((db_key, _)) => db_key.starts_with(&prefix),
                        Err(_) => true,
                    }
            })
            .map(move |entry| {
                let (db_key, value) = entry?;
                decode_entry(&db_key[length..], &value)
            })
    }

    /// The room's threads by latest activity, newest first, strictly below stream position
    /// `before`: (latest activity, root event ID).
    pub fn iter_threads(
        &self,
        shortroomid: u64,
        before: u64,
    ) -> impl Iterator<Item = Result<(u64, OwnedEventId)>> + '_ {
        let start = thread_key(shortroomid, before.saturating_sub(1));
        let empty = before == 0;
        self.roomcount_threadroot
            .iter_from(&start, true)
            .take_while(move |entry| {
                !empty
                    && match entry {
                        Ok((db_key, _)) => key::read_u64(db_key) == Some(shortroomid),
                        Err(_) => true,
                    }
            })
            .map(|entry| {
                let (db_key, value) = entry?;
                let count = db_key
                    .get(8..)
                    .and_then(key::read_u64)
                    .ok_or_else(|| Error::corrupt("roomcount_threadroot", "short key"))?;
                let root = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|text| OwnedEventId::try_from(text).ok())
                    .ok_or_else(|| Error::corrupt("roomcount_threadroot", "bad event ID"))?;
                Ok((count, root))
            })
    }
}

/// Refuses relations a client may not send (spec, "Avoiding duplicate annotations" and
/// "Validation of `m.thread` relationships"): a second annotation by the same sender with the
/// same event type and key (`400 M_DUPLICATE_ANNOTATION`), and a thread started from an event
/// that is itself a relation (`400 M_UNKNOWN`; like Synapse, an event counts as one when its
/// `m.relates_to` has a `rel_type`, so a thread may start from a plain reply).
pub fn check_client_relation(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    event_type: &str,
    content: &Value,
) -> Result<()> {
    let Some(relation) = Relation::from_content(content) else {
        return Ok(());
    };
    let rooms = &services.rooms;
    let Some(shortroomid) = rooms.short.get_shortroomid(room_id)? else {
        return Ok(());
    };
    match relation.rel_type.as_str() {
        "m.annotation" => {
            for entry in rooms.relations.iter_children_of_type(
                shortroomid,
                &relation.parent,
                "m.annotation",
                None,
                false,
            ) {
                let entry = entry?;
                if entry.child.sender == sender
                    && entry.child.kind == event_type
                    && entry.child.key == relation.key
                {
                    return Err(Error::matrix(
                        ErrorKind::DuplicateAnnotation,
                        format!(
                            "{sender} already sent this annotation to {}",
                            relation.parent
                        ),
                    ));
                }
            }
        }
        "m.thread" => {
            if let Some(parent) = rooms.timeline.get_pdu(&relation.parent)? {
                if Relation::from_content(&parent.content_value()).is_some() {
                    return Err(Error::custom(
                        "M_UNKNOWN",
                        format!(
                            "cannot start a thread from {}, which is itself a relation",
                            relation.parent
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn parent_prefix(shortroomid: u64, parent: &ruma::EventId) -> Vec<u8> {
    let mut prefix = key::u64_bytes(shortroomid).to_vec();
    prefix.extend_from_slice(parent.as_bytes());
    prefix.push(key::SEP);
    prefix
}

fn rel_prefix(shortroomid: u64, parent: &ruma::EventId, rel_type: &str) -> Vec<u8> {
    let mut prefix = parent_prefix(shortroomid, parent);
    prefix.extend_from_slice(rel_type.as_bytes());
    prefix.push(key::SEP);
    prefix
}

fn child_key(rel_prefix: &[u8], count: u64) -> Vec<u8> {
    let mut db_key = rel_prefix.to_vec();
    db_key.extend_from_slice(&key::u64_bytes(count));
    db_key
}

fn thread_key(shortroomid: u64, count: u64) -> [u8; 16] {
    let mut db_key = [0; 16];
    db_key[..8].copy_from_slice(&key::u64_bytes(shortroomid));
    db_key[8..].copy_from_slice(&key::u64_bytes(count));
    db_key
}

/// Decodes `rel_type 0xff count` (the key after the parent prefix) and the value.
fn decode_entry(rest: &[u8], value: &[u8]) -> Result<ChildEntry> {
    let corrupt = || Error::corrupt("parentreltypecount_child", "bad key");
    let split = rest.len().checked_sub(9).ok_or_else(corrupt)?;
    if rest[split] != key::SEP {
        return Err(corrupt());
    }
    let rel_type = std::str::from_utf8(&rest[..split]).map_err(|_| corrupt())?;
    let count = key::read_u64(&rest[split + 1..]).ok_or_else(corrupt)?;
    let child =
        serde_json::from_slice(value).map_err(|e| Error::corrupt("parentreltypecount_child", e))?;
    Ok(ChildEntry {
        rel_type: rel_type.to_owned(),
        count,
        child,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn relations_parse_only_when_valid() {
        let reaction =
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "👍"}});
        assert_eq!(
            Relation::from_content(&reaction),
            Some(Relation {
                rel_type: "m.annotation".into(),
                parent: OwnedEventId::try_from("$a").unwrap(),
                key: Some("👍".into())
            })
        );
        for invalid in [
            json!({"m.relates_to": {"m.in_reply_to": {"event_id": "$a"}}}),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a"}}),
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "not an id"}}),
            json!({"m.relates_to": {"rel_type": "", "event_id": "$a"}}),
            json!({"m.relates_to": {"rel_type": "x".repeat(256), "event_id": "$a"}}),
            json!({"m.relates_to": "$a"}),
            json!({}),
        ] {
            assert_eq!(Relation::from_content(&invalid), None, "{invalid}");
        }
    }

    #[test]
    fn index_keys_decode_after_the_parent_prefix() {
        let parent = OwnedEventId::try_from("$p").unwrap();
        let prefix = rel_prefix(7, &parent, "m.thread");
        // A position whose bytes contain the separator still decodes.
        let db_key = child_key(&prefix, 0xff00_00ff);
        let rest = &db_key[parent_prefix(7, &parent).len()..];
        let value =
            br#"{"event_id":"$c","sender":"@u:x","type":"m.room.message","origin_server_ts":1}"#;
        let entry = decode_entry(rest, value).unwrap();
        assert_eq!(entry.rel_type, "m.thread");
        assert_eq!(entry.count, 0xff00_00ff);
        assert!(!entry.child.new_content);
        assert!(decode_entry(b"short", value).is_err());
    }
}
