//! Stories (`docs/stories.md`): the current stories of the story rooms a user is joined to,
//! newest first, with who viewed each one for the room's owner.
//!
//! A story is an `m.room.message` its room's owner (the create event's sender) sent in a room
//! of type `io.plait.story`, younger than the room's `max_lifetime` and not redacted; the
//! stories index (`index.rs`) finds them without reading the room's other events. A member
//! viewed a story when their public `m.read` receipt (unthreaded or `main`) is at it or at a
//! later event of the room: stock clients send that receipt as the story scrolls past.
//! The owner's `stories` privacy setting narrows the audience further (`service::privacy`):
//! the listing leaves out the stories of owners whose setting excludes the caller, and new
//! audience members the setting excludes are refused (`audience.rs`).
//! Each room's current stories are kept in memory once listed (`current.rs`), so a listing
//! reads the database only for rooms whose stories changed since.

mod audience;
mod current;
mod index;

pub use self::index::{Stories, StoryRoom};

use std::sync::Arc;

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::{
        privacy::{self, Aspect},
        receipts::ReceiptType,
        rooms::{pdu::Pdu, timeline::PduId},
        Services,
    },
};

/// At most this many stories per room are listed, newest first.
pub const MAX_LISTED: usize = 1000;

/// The caller's current stories, newest first: `{"stories": [...]}` with each story's room,
/// owner, event ID, timestamp and content, and for stories of the caller's own rooms
/// `view_count` and `viewers`. Per joined room: the cached room facts, the owner's settings
/// (cached) and one seek into the stories index, then the stories themselves.
#[tracing::instrument(skip_all, fields(user_id = %viewer))]
pub fn list(services: &Services, viewer: &UserId, now: u64) -> Result<Value> {
    let mut stories = Vec::new();
    for room_id in services.rooms.members.iter_joined_rooms(viewer)? {
        // Taken before the room's facts are read: a retention policy written after this drops
        // what is read below from being kept, lifetime included.
        let generation = services.stories.current.read_started();
        let Some(room) = services.stories.story_room(services, &room_id)? else {
            continue;
        };
        let owner = &room.owner;
        if !privacy::allows(services, owner, viewer, Aspect::Stories)? {
            continue;
        }
        let room_stories = current_stories(services, (&room_id, &room), generation, now)?;
        let live = room_stories.iter().filter(|story| {
            room.lifetime
                .is_none_or(|ms| story.origin_server_ts.saturating_add(ms) > now)
        });
        let views = if owner == viewer && !room_stories.is_empty() {
            Some(read_positions(services, &room_id, owner)?)
        } else {
            None
        };
        for current in live {
            // Built field by field: `json!` would copy each value once more.
            let ts = current.origin_server_ts;
            let mut story = Map::new();
            story.insert("room_id".into(), Value::String(room_id.to_string()));
            story.insert("owner".into(), Value::String(owner.to_string()));
            story.insert(
                "event_id".into(),
                Value::String(current.event_id.to_string()),
            );
            story.insert("origin_server_ts".into(), Value::from(ts));
            story.insert("content".into(), current.content.clone());
            if let Some(views) = &views {
                let viewers: Vec<&OwnedUserId> = views
                    .iter()
                    .filter(|(_, read)| *read >= current.count)
                    .map(|(user, _)| user)
                    .collect();
                story.insert("view_count".into(), json!(viewers.len()));
                story.insert("viewers".into(), json!(viewers));
            }
            stories.push((ts, Value::Object(story)));
        }
    }
    stories.sort_by_key(|story| std::cmp::Reverse(story.0));
    let stories = stories.into_iter().map(|(_, story)| story).collect();
    Ok(Value::Object(Map::from_iter([(
        "stories".to_owned(),
        Value::Array(stories),
    )])))
}

/// A story room's unredacted stories that were younger than its lifetime when read from the
/// index, newest first: the kept entry, or read now (and kept).
/// `generation` is the kept entries' generation from before the room's facts were read.
fn current_stories(
    services: &Services,
    (room_id, room): (&RoomId, &StoryRoom),
    generation: u64,
    now: u64,
) -> Result<Arc<Vec<current::Story>>> {
    let kept = &services.stories.current;
    if let Some(stories) = kept.get(room_id) {
        return Ok(stories);
    }
    let timeline = &services.rooms.timeline;
    let mut stories = Vec::new();
    for entry in services.stories.iter_current(room, now).take(MAX_LISTED) {
        let (count, _) = entry?;
        let pdu_id = PduId {
            shortroomid: room.shortroomid,
            count,
        };
        // An admin purge leaves the key of an event that is gone.
        let Some(pdu) = timeline.get_pdu_at(pdu_id)? else {
            continue;
        };
        if !is_redacted(&pdu) {
            stories.push(current::Story {
                count,
                origin_server_ts: u64::from(pdu.origin_server_ts.get()),
                content: pdu.content_value(),
                event_id: pdu.event_id,
            });
        }
    }
    let stories = Arc::new(stories);
    kept.store(room_id.to_owned(), Arc::clone(&stories), generation);
    Ok(stories)
}

fn is_redacted(pdu: &Pdu) -> bool {
    pdu.unsigned
        .as_ref()
        .is_some_and(|unsigned| unsigned.get().contains("\"redacted_because\""))
}

/// Each other member's public read position in a room: the stream position of the event their
/// unthreaded (or `main`) `m.read` receipt names.
fn read_positions(
    services: &Services,
    room_id: &RoomId,
    owner: &UserId,
) -> Result<Vec<(OwnedUserId, u64)>> {
    let mut positions = Vec::new();
    for (member, _) in services.rooms.members.iter_members(room_id, None)? {
        if member == owner {
            continue;
        }
        let mut best = None;
        for receipt in services.receipts.iter_user_receipts(room_id, &member)? {
            let main = receipt.thread_id.as_deref().is_none_or(|id| id == "main");
            if receipt.kind != ReceiptType::Read || !main {
                continue;
            }
            if let Some(pdu_id) = services.rooms.timeline.get_pdu_id(&receipt.event_id)? {
                best = best.max(Some(pdu_id.count));
            }
        }
        if let Some(count) = best {
            positions.push((member, count));
        }
    }
    Ok(positions)
}
