//! Message retention (MSC1763 `m.room.retention`): the lifetime in force in a room, the checks
//! of a policy a local user sends, and the purge job that deletes expired events.
//!
//! A room's `max_lifetime` (ms) is its `m.room.retention` state event's, or for a story room
//! (creation type `io.plait.story`, see `docs/stories.md`) without such an event the configured
//! `story_lifetime_ms`. Every `retention_purge_interval_ms`, the job finds each room's events
//! sent more than `max_lifetime` ago through the timestamp index and deletes them with the admin
//! purge's own removal (`purge::remove_in_batch`, `purge::write_deleted`): gone from the stream
//! and topological indexes, search and relations, so `/messages`, `/sync`, `/context`, search
//! and relations no longer find them. A pruned copy (the room version's redaction algorithm)
//! stays as an outlier, so fetching one by ID answers its redacted form and the room's DAG
//! stays whole for new events and other servers. The media its content names is deleted.
//! State events are kept: the room's state must stay whole.
//! Work is done in chunks of [`CHUNK`] events on a blocking thread; each chunk's batch is
//! prepared without the room lock and written under it, so a send into the room waits at most
//! for one chunk's check and write.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ruma::{events::StateEventType, CanonicalJsonValue, OwnedMxcUri, OwnedRoomId, RoomId};
use serde_json::Value;
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    service::{
        media::moderation::{mxcs_of_event, parse_mxc},
        rooms::{pdu::Pdu, purge, timeline::PduId, version::rules_for},
        Services,
    },
    store::Batch,
    util,
};

/// The state event type of a room's retention policy (MSC1763).
pub const RETENTION_EVENT: &str = "m.room.retention";
/// The creation-content `type` of a story room.
pub const STORY_ROOM_TYPE: &str = "io.plait.story";
/// The longest lifetime a policy may name: 100 years in milliseconds.
pub const MAX_LIFETIME_MS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;
/// Events deleted (or index entries looked at) per chunk, one batch each. While the room
/// receives sends, chunks are prepared under the room lock and those sends wait for a whole
/// chunk: 32 kept their p99 at 12 to 22 ms during a purge of 100,000 (256 held them up to 1.3 s
/// on the loaded 2-core machine).
pub const CHUNK: usize = 32;

/// Checks the content of an `m.room.retention` event a local user sends: `max_lifetime` and
/// `min_lifetime`, when present, are integers of milliseconds from 1 to [`MAX_LIFETIME_MS`], and
/// `min_lifetime` is at most `max_lifetime`; `M_BAD_JSON` otherwise.
pub fn check_policy(content: &Value) -> Result<()> {
    let mut lifetimes = [None, None];
    for (slot, field) in lifetimes.iter_mut().zip(["min_lifetime", "max_lifetime"]) {
        match content.get(field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                *slot = Some(parse_lifetime(value).ok_or_else(|| {
                    Error::bad_json(format!(
                        "{field} must be a whole number of milliseconds from 1 to {MAX_LIFETIME_MS}"
                    ))
                })?);
            }
        }
    }
    if let [Some(min), Some(max)] = lifetimes {
        if min > max {
            return Err(Error::bad_json(
                "min_lifetime must not be more than max_lifetime",
            ));
        }
    }
    Ok(())
}

/// A lifetime in a policy, if it is one [`check_policy`] accepts.
fn parse_lifetime(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .filter(|lifetime| (1..=MAX_LIFETIME_MS).contains(lifetime))
}

/// Whether a room's creation content names the story room type.
pub fn is_story_room(services: &Services, room_id: &RoomId) -> Result<bool> {
    Ok(services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomCreate, "")?
        .is_some_and(|create| create.content_value()["type"] == STORY_ROOM_TYPE))
}

/// The `max_lifetime` in force in a room (ms): its policy's, a story room's default when it has
/// no policy, or none. A policy event whose `max_lifetime` is missing or out of range (one sent
/// by another server) names none.
pub fn max_lifetime(services: &Services, room_id: &RoomId) -> Result<Option<u64>> {
    let policy_type = StateEventType::from(RETENTION_EVENT);
    if let Some(policy) = services
        .rooms
        .current_state_pdu(room_id, &policy_type, "")?
    {
        return Ok(policy
            .content_value()
            .get("max_lifetime")
            .and_then(parse_lifetime));
    }
    if is_story_room(services, room_id)? {
        return Ok(Some(services.config.story_lifetime_ms));
    }
    Ok(None)
}

/// Whether an event a read path holds has outlived its room's `max_lifetime` at `now`; such
/// events are gone at the job's next run.
pub fn is_expired(pdu: &Pdu, max_lifetime: Option<u64>, now: u64) -> bool {
    max_lifetime.is_some_and(|lifetime| {
        u64::from(pdu.origin_server_ts.get()).saturating_add(lifetime) <= now
    })
}

/// The purge job: every `retention_purge_interval_ms`, [`purge_all`] until shutdown.
pub async fn run(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(services.config.retention_purge_interval_ms);
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => break,
        }
        if let Err(error) = purge_all(&services, util::now_millis()).await {
            tracing::error!(%error, "retention purge failed");
        }
    }
}

/// Deletes the expired events of every room with a lifetime in force at `now`; answers how
/// many were deleted.
pub async fn purge_all(services: &Arc<Services>, now: u64) -> Result<usize> {
    let rooms: Vec<OwnedRoomId> = services
        .rooms
        .short
        .iter_room_ids()
        .collect::<Result<_>>()?;
    let mut deleted = 0;
    for room_id in rooms {
        let Some(lifetime) = max_lifetime(services, &room_id)? else {
            continue;
        };
        deleted += purge_room(services, &room_id, now.saturating_sub(lifetime)).await?;
    }
    Ok(deleted)
}

/// Deletes a room's non-state events sent before `before_ts` and the media they name, a chunk
/// at a time; answers how many events.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn purge_room(
    services: &Arc<Services>,
    room_id: &RoomId,
    before_ts: u64,
) -> Result<usize> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(0);
    };
    let mut cursor = (0, 0, 0);
    let mut deleted = 0;
    loop {
        let worker = Arc::clone(services);
        let room = room_id.to_owned();
        let chunk = tokio::task::spawn_blocking(move || {
            purge_chunk(&worker, &room, shortroomid, cursor, before_ts)
        })
        .await
        .map_err(Error::internal)??;
        deleted += chunk.events;
        for mxc in chunk.media {
            let (server, media_id) = parse_mxc(mxc.as_str())?;
            services.media.delete(&server, &media_id).await?;
        }
        match chunk.next {
            Some(next) => cursor = next,
            None => return Ok(deleted),
        }
    }
}

/// What one chunk deleted, and where the next one starts (none when the room is done).
struct Chunk {
    events: usize,
    media: Vec<OwnedMxcUri>,
    next: Option<(u64, u64, u64)>,
}

/// Deletes up to [`CHUNK`] expired events from `cursor` (timestamp, depth, stream position) on,
/// in one batch. The batch is prepared without the room lock (the reads, pruning and index
/// removals are most of the work); under the lock, the room is checked to have no new event and
/// each event to be still where it was read, and the batch written. Otherwise (a send or an
/// admin purge in between) the chunk is prepared again under the lock.
fn purge_chunk(
    services: &Services,
    room_id: &RoomId,
    shortroomid: u64,
    cursor: (u64, u64, u64),
    before_ts: u64,
) -> Result<Chunk> {
    let timeline = &services.rooms.timeline;
    let rules = match timeline.room_version(shortroomid)? {
        Some(version) => rules_for(&version)?,
        None => {
            return Ok(Chunk {
                events: 0,
                media: Vec::new(),
                next: None,
            })
        }
    };
    let story_room = services.stories.story_room(services, room_id)?.is_some();
    let target = Target {
        shortroomid,
        cursor,
        before_ts,
        redaction: &rules.redaction,
        story_room,
    };
    let newest = purge::newest_count(services, shortroomid)?;
    let mut prepared = prepare_chunk(services, &target)?;
    let lock = timeline.room_lock(room_id);
    let _guard = lock.lock();
    // An event committed in between may have moved what the batch rewrites (a thread's latest
    // reply, in the relations index): then the chunk is prepared again, under the lock.
    if purge::newest_count(services, shortroomid)? != newest
        || !still_in_place(services, shortroomid, &prepared.deleted)?
    {
        prepared = prepare_chunk(services, &target)?;
    }
    let (counts, deleted): (Vec<u64>, Vec<Pdu>) = prepared.deleted.into_iter().unzip();
    purge::write_deleted(services, prepared.batch, &deleted)?;
    Ok(Chunk {
        events: counts.len(),
        media: prepared.media,
        next: prepared.next,
    })
}

/// Which expired events a chunk looks at.
struct Target<'a> {
    shortroomid: u64,
    cursor: (u64, u64, u64),
    before_ts: u64,
    redaction: &'a ruma::room_version_rules::RedactionRules,
    story_room: bool,
}

/// A chunk's batch, ready to write: the events it deletes with their stream positions, the
/// media they name, and where the next chunk starts.
struct Prepared {
    batch: Batch,
    deleted: Vec<(u64, Pdu)>,
    media: Vec<OwnedMxcUri>,
    next: Option<(u64, u64, u64)>,
}

/// Reads up to [`CHUNK`] expired events of `target` and builds the batch that deletes them.
fn prepare_chunk(services: &Services, target: &Target<'_>) -> Result<Prepared> {
    let rooms = &services.rooms;
    let shortroomid = target.shortroomid;
    let mut prepared = Prepared {
        batch: Batch::default(),
        deleted: Vec::new(),
        media: Vec::new(),
        next: None,
    };
    let batch = &mut prepared.batch;
    // The chunk's events are found first: removing one may move its thread to another reply,
    // which must not be one the same batch removes.
    let mut expired = Vec::new();
    for (seen, entry) in rooms
        .timestamps
        .iter_sent_before(shortroomid, target.cursor, target.before_ts)
        .enumerate()
    {
        let (ts, depth, count) = entry?;
        if seen == CHUNK {
            prepared.next = Some((ts, depth, count));
            break;
        }
        let Some(pdu) = rooms.timeline.get_pdu_at(PduId { shortroomid, count })? else {
            // Already gone (an admin purge): only the index entry is left.
            rooms
                .timestamps
                .remove_in_batch(shortroomid, ts, depth, count, batch);
            continue;
        };
        if pdu.state_key.is_none() {
            expired.push((ts, depth, count, pdu));
        }
    }
    let leaving: BTreeSet<u64> = expired.iter().map(|(_, _, count, _)| *count).collect();
    for (ts, depth, count, pdu) in expired {
        keep_pruned(services, &pdu, target.redaction, batch)?;
        purge::remove_in_batch(services, shortroomid, count, &pdu, &leaving, batch)?;
        rooms
            .timestamps
            .remove_in_batch(shortroomid, ts, depth, count, batch);
        if target.story_room {
            services.stories.remove_in_batch(shortroomid, count, batch);
        }
        prepared.media.extend(mxcs_of_event(&pdu.content_value()));
        prepared.deleted.push((count, pdu));
    }
    Ok(prepared)
}

/// Whether each event a chunk read is still stored at the stream position it was read at (the
/// caller holds the room lock, so no one else removes it before the batch is written).
fn still_in_place(services: &Services, shortroomid: u64, deleted: &[(u64, Pdu)]) -> Result<bool> {
    for (count, pdu) in deleted {
        let position = services.rooms.timeline.get_pdu_id(&pdu.event_id)?;
        if position
            != Some(PduId {
                shortroomid,
                count: *count,
            })
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stores the pruned form of an expiring event as an outlier, in `batch`: what fetching it by
/// ID answers, and what new events and other servers find as a prev event.
fn keep_pruned(
    services: &Services,
    pdu: &Pdu,
    redaction: &ruma::room_version_rules::RedactionRules,
    batch: &mut Batch,
) -> Result<()> {
    let timeline = &services.rooms.timeline;
    let Some(mut object) = timeline.get_pdu_object(&pdu.event_id)? else {
        return Ok(());
    };
    object.remove("unsigned");
    let event_id = object.remove("event_id");
    let mut pruned =
        ruma::canonical_json::redact(object, redaction, None).map_err(Error::internal)?;
    if let Some(event_id) = event_id {
        pruned.insert("event_id".into(), event_id);
    }
    pruned.insert(
        "unsigned".into(),
        CanonicalJsonValue::Object(
            [(
                "io.plait.expired".to_owned(),
                CanonicalJsonValue::Bool(true),
            )]
            .into(),
        ),
    );
    batch.insert(
        &timeline.eventid_outlierpdu,
        pdu.event_id.as_bytes(),
        &serde_json::to_vec(&pruned).map_err(Error::internal)?,
    );
    Ok(())
}
