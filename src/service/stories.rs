//! Stories (`docs/stories.md`): the current stories of the story rooms a user is joined to,
//! newest first, with who viewed each one for the room's owner.
//!
//! A story is an `m.room.message` its room's owner (the create event's sender) sent in a room
//! of type `io.plait.story`, younger than the room's `max_lifetime` and not redacted. A member
//! viewed a story when their public `m.read` receipt (unthreaded or `main`) is at it or at a
//! later event of the room: stock clients send that receipt as the story scrolls past.
//! The owner's `stories` privacy setting narrows the audience further (`service::privacy`).

use ruma::{
    events::{StateEventType, TimelineEventType},
    OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    error::Result,
    service::{
        privacy::{self, Aspect},
        receipts::ReceiptType,
        rooms::{pdu::Pdu, retention},
        Services,
    },
};

/// At most this many events per room are looked at, newest first, for its stories.
const MAX_SCANNED: usize = 1000;

/// The caller's current stories, newest first: `{"stories": [...]}` with each story's room,
/// owner, event ID, timestamp and content, and for stories of the caller's own rooms
/// `view_count` and `viewers`.
#[tracing::instrument(skip_all, fields(user_id = %viewer))]
pub fn list(services: &Services, viewer: &UserId, now: u64) -> Result<Value> {
    let mut stories = Vec::new();
    for room_id in services.rooms.members.iter_joined_rooms(viewer)? {
        let Some(create) =
            services
                .rooms
                .current_state_pdu(&room_id, &StateEventType::RoomCreate, "")?
        else {
            continue;
        };
        if create.content_value()["type"] != retention::STORY_ROOM_TYPE {
            continue;
        }
        let owner = create.sender;
        if !privacy::allows(services, &owner, viewer, Aspect::Stories)? {
            continue;
        }
        let lifetime = retention::max_lifetime(services, &room_id)?;
        let room_stories = current_stories(services, &room_id, &owner, lifetime, now)?;
        let views = if owner == viewer && !room_stories.is_empty() {
            Some(read_positions(services, &room_id, &owner)?)
        } else {
            None
        };
        for (count, pdu) in room_stories {
            let mut story = json!({
                "room_id": room_id,
                "owner": owner,
                "event_id": pdu.event_id,
                "origin_server_ts": pdu.origin_server_ts,
                "content": pdu.content_value(),
            });
            if let Some(views) = &views {
                let viewers: Vec<&OwnedUserId> = views
                    .iter()
                    .filter(|(_, read)| *read >= count)
                    .map(|(user, _)| user)
                    .collect();
                story["view_count"] = json!(viewers.len());
                story["viewers"] = json!(viewers);
            }
            stories.push((u64::from(pdu.origin_server_ts.get()), story));
        }
    }
    stories.sort_by_key(|story| std::cmp::Reverse(story.0));
    Ok(json!({ "stories": stories.into_iter().map(|(_, story)| story).collect::<Vec<_>>() }))
}

/// The owner's unexpired, unredacted messages in a story room with their stream positions,
/// newest first.
fn current_stories(
    services: &Services,
    room_id: &RoomId,
    owner: &UserId,
    lifetime: Option<u64>,
    now: u64,
) -> Result<Vec<(u64, Pdu)>> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(Vec::new());
    };
    let mut stories = Vec::new();
    for entry in services
        .rooms
        .timeline
        .iter_before(shortroomid, crate::service::rooms::timeline::BACKFILL_BASE)
        .take(MAX_SCANNED)
    {
        let (count, pdu) = entry?;
        if retention::is_expired(&pdu, lifetime, now) {
            break;
        }
        let redacted = pdu
            .unsigned
            .as_ref()
            .is_some_and(|unsigned| unsigned.get().contains("\"redacted_because\""));
        if pdu.kind == TimelineEventType::RoomMessage
            && pdu.sender == owner
            && pdu.state_key.is_none()
            && !redacted
        {
            stories.push((count, pdu));
        }
    }
    Ok(stories)
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
