//! Jump to date (spec v1.6, MSC3030): the event of a room closest to a timestamp in one
//! direction, from an index by `origin_server_ts`, asking the room's other servers when this
//! server's history may have a hole where the answer would be.
//!
//! `roomtsdepthcount_` holds one key per timeline event (live or backfilled): room, timestamp,
//! depth and stream position. A lookup is one seek plus a walk over the events the asker may not
//! see (at most [`MAX_SKIPPED`]), so its cost does not grow with the room. Among events with the
//! same timestamp, depth and then stream position decide, so that looking backwards finds the
//! latest of them and looking forwards the earliest, as Synapse does.
//!
//! Jump to date (`/timestamp_to_event`, client and federation). `roomtsdepthcount_` (room, `origin_server_ts`, depth, stream position → nothing) gets one key per timeline event from one call in `commit`'s and `commit_backfilled`'s batch; a lookup is one seek and then steps over events the asker may not see (at most 1,000), so its cost does not depend on the room's size (a scan of the topological index would, since timestamps are not ordered by depth). Ties at one timestamp go by depth, then stream position: backwards finds the latest, forwards the earliest. A database from before the index is indexed once at startup (when the index is empty and the timeline is not).
//! The client endpoint asks up to three other servers of the room (backfill's order) when it found nothing or the event found borders a gap (looking forwards: one of its prev events is missing; looking backwards: a backward extremity is named by an event more than one level deeper than it); an event a server names is fetched with `/event` and checked and stored like backfilled history (`backfill::fetch_event`), and wins when it is closer to the timestamp and the user may see it. The federation endpoint answers from the local timeline only.
//!
//! Jump to date (`/timestamp_to_event`, client and federation). `roomtsdepthcount_` (room, `origin_server_ts`, depth, stream position → nothing) gets one key per timeline event from one step of `commit`'s batch (live and history); a lookup is one seek and then steps over events the asker may not see (at most 1,000), so its cost does not depend on the room's size (a scan of the topological index would, since timestamps are not ordered by depth). Ties at one timestamp go by depth, then stream position: backwards finds the latest, forwards the earliest. A database from before the index is indexed once at startup (when the index is empty and the timeline is not).
//! The client endpoint asks up to three other servers of the room (backfill's order) when it found nothing or the event found borders a gap (looking forwards: one of its prev events is missing; looking backwards: a backward extremity is named by an event more than one level deeper than it); an event a server names is fetched with `/event` and checked and stored like backfilled history (`backfill::fetch_event`), and wins when it is closer to the timestamp and the user may see it. The federation endpoint answers from the local timeline only.

use std::sync::Arc;

use ruma::{OwnedEventId, RoomId, ServerName, UserId};

use super::{
    backfill,
    pdu::Pdu,
    timeline::{PduId, Timeline},
    visibility,
};
use crate::{
    error::Result,
    service::Services,
    store::{key, Batch, Db, Tree},
};

/// How many events the asker may not see are stepped over before the lookup gives up.
const MAX_SKIPPED: usize = 1000;
/// How many other servers are asked when the local answer may be incomplete.
const MAX_SERVERS: usize = 3;

/// The timestamp index.
pub struct EventTimes {
    /// `shortroomid, origin_server_ts, depth, stream position` (big-endian u64s) → nothing.
    roomtsdepthcount_: Tree,
}

/// Who is asking: a user sees what history visibility lets them, a server what its users may.
#[derive(Clone, Copy)]
pub enum Asker<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
}

/// An event found for a timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub event_id: OwnedEventId,
    pub origin_server_ts: u64,
}

impl EventTimes {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            roomtsdepthcount_: db.tree("roomtsdepthcount_"),
        }
    }

    /// Indexes the events of a database written before this index existed: when the index is
    /// empty and the timeline is not, one pass over the whole timeline at startup, written in
    /// batches of 10,000; afterwards `commit` keeps it current.
    pub fn fill_if_empty(&self, timeline: &Timeline, db: &Db) -> Result<()> {
        if self
            .roomtsdepthcount_
            .iter_from(&[], false)
            .next()
            .is_some()
        {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut indexed = 0usize;
        for entry in timeline.iter_all() {
            let (pdu_id, pdu) = entry?;
            self.index_in_batch(pdu_id.shortroomid, &pdu, pdu_id.count, &mut batch);
            indexed += 1;
            if indexed.is_multiple_of(10_000) {
                db.write(std::mem::take(&mut batch))?;
            }
        }
        db.write(batch)?;
        if indexed > 0 {
            tracing::info!(indexed, "indexed existing events by timestamp");
        }
        Ok(())
    }

    /// Indexes a timeline event in the batch that commits it, before its stream position is
    /// known (`Batch::insert_at_count`; called by a step of `timeline::commit`, live and history).
    pub fn index_at_count(&self, shortroomid: u64, pdu: &Pdu, batch: &mut Batch) {
        let mut prefix = index_key(
            shortroomid,
            u64::from(pdu.origin_server_ts.get()),
            u64::from(pdu.depth),
            0,
        );
        prefix.truncate(prefix.len() - 8);
        batch.insert_at_count(&self.roomtsdepthcount_, &prefix, b"");
    }

    /// Indexes an event stored at `count` (the startup fill of older databases).
    fn index_in_batch(&self, shortroomid: u64, pdu: &Pdu, count: u64, batch: &mut Batch) {
        let entry = index_key(
            shortroomid,
            u64::from(pdu.origin_server_ts.get()),
            u64::from(pdu.depth),
            count,
        );
        batch.insert(&self.roomtsdepthcount_, &entry, b"");
    }

    /// A room's indexed events from `from` (timestamp, depth, stream position) on that were sent
    /// before `before_ts` (ms since the epoch), oldest first, as (timestamp, depth, stream
    /// position); the retention purge's candidates.
    pub fn iter_sent_before(
        &self,
        shortroomid: u64,
        from: (u64, u64, u64),
        before_ts: u64,
    ) -> impl Iterator<Item = Result<(u64, u64, u64)>> + '_ {
        let (ts, depth, count) = from;
        self.roomtsdepthcount_
            .iter_from(&index_key(shortroomid, ts, depth, count), false)
            .map_while(move |entry| match entry {
                Ok((entry, _)) => {
                    let mut parts = entry.chunks_exact(8).filter_map(key::read_u64);
                    let (room, ts, depth, count) =
                        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                    (room == shortroomid && ts < before_ts).then_some(Ok((ts, depth, count)))
                }
                Err(error) => Some(Err(error)),
            })
    }

    /// Removes an event's entry in `batch`, for events deleted for good (retention); an admin
    /// purge leaves entries, which readers skip.
    pub fn remove_in_batch(
        &self,
        shortroomid: u64,
        ts: u64,
        depth: u64,
        count: u64,
        batch: &mut Batch,
    ) {
        batch.remove(
            &self.roomtsdepthcount_,
            &index_key(shortroomid, ts, depth, count),
        );
    }

    /// Stream positions of a room's events from `ts` on in the direction, nearest first.
    fn iter_from<'a>(
        &'a self,
        shortroomid: u64,
        ts: u64,
        forwards: bool,
    ) -> impl Iterator<Item = Result<(u64, u64)>> + 'a {
        let start = if forwards {
            index_key(shortroomid, ts, 0, 0)
        } else {
            index_key(shortroomid, ts, u64::MAX, u64::MAX)
        };
        self.roomtsdepthcount_
            .iter_from(&start, !forwards)
            .map_while(move |entry| match entry {
                Ok((entry, _)) => {
                    let mut parts = entry.chunks_exact(8).filter_map(key::read_u64);
                    let (room, ts, _depth, count) =
                        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                    (room == shortroomid).then_some(Ok((ts, count)))
                }
                Err(error) => Some(Err(error)),
            })
    }
}

fn index_key(shortroomid: u64, ts: u64, depth: u64, count: u64) -> Vec<u8> {
    [shortroomid, ts, depth, count]
        .iter()
        .flat_map(|part| part.to_be_bytes())
        .collect()
}

/// The nearest event at or after (`forwards`) or at or before `ts` that `asker` may see, from
/// this server's timeline only (what the federation endpoint answers).
pub fn find_local(
    services: &Services,
    room_id: &RoomId,
    asker: Asker<'_>,
    ts: u64,
    forwards: bool,
) -> Result<Option<(Found, Pdu)>> {
    let rooms = &services.rooms;
    let Some(shortroomid) = rooms.short.get_shortroomid(room_id)? else {
        return Ok(None);
    };
    let membership = match asker {
        Asker::User(user) => rooms.members.get_user_room(user, room_id)?,
        Asker::Server(_) => None,
    };
    let times = &rooms.timestamps;
    for entry in times.iter_from(shortroomid, ts, forwards).take(MAX_SKIPPED) {
        let (event_ts, count) = entry?;
        let Some(pdu) = rooms.timeline.get_pdu_at(PduId { shortroomid, count })? else {
            continue;
        };
        let visible = match asker {
            Asker::User(user) => {
                visibility::user_can_see(services, user, membership.as_ref(), count, &pdu)?
            }
            Asker::Server(server) => visibility::server_can_see(services, server, &pdu)?,
        };
        if visible {
            let found = Found {
                event_id: pdu.event_id.clone(),
                origin_server_ts: event_ts,
            };
            return Ok(Some((found, pdu)));
        }
    }
    Ok(None)
}

/// What the client endpoint answers: the local answer, unless it may be incomplete (nothing
/// found, or the event found borders a hole in this server's history on the side of `ts`), in
/// which case up to [`MAX_SERVERS`] other servers of the room are asked in turn; an event one of
/// them names is fetched and checked like backfilled history, and wins when it is closer to `ts`
/// and the user may see it.
pub async fn find(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    ts: u64,
    forwards: bool,
) -> Result<Option<Found>> {
    let local = find_local(services, room_id, Asker::User(user), ts, forwards)?;
    let incomplete = match &local {
        None => true,
        Some((_, pdu)) => next_to_gap(services, room_id, pdu, forwards)?,
    };
    let local = local.map(|(found, _)| found);
    if !incomplete {
        return Ok(local);
    }
    let distance = |found: &Found| found.origin_server_ts.abs_diff(ts);
    for server in backfill::servers_to_ask(services, room_id)?
        .into_iter()
        .take(MAX_SERVERS)
    {
        match ask(services, &server, room_id, user, ts, forwards).await {
            Ok(Some(remote)) => {
                if local
                    .as_ref()
                    .is_none_or(|local| distance(&remote) < distance(local))
                {
                    return Ok(Some(remote));
                }
                return Ok(local);
            }
            Ok(None) => {}
            Err(error) => tracing::info!(%server, %error, "timestamp_to_event request failed"),
        }
    }
    Ok(local)
}

/// Whether history may be missing between `pdu` and the timestamp: looking forwards, one of its
/// prev events is not in the timeline; looking backwards, the timeline misses an event deeper
/// than it (a backward extremity named by an event more than one level deeper).
fn next_to_gap(services: &Services, room_id: &RoomId, pdu: &Pdu, forwards: bool) -> Result<bool> {
    let timeline: &Timeline = &services.rooms.timeline;
    if forwards {
        for prev in &pdu.prev_events {
            if timeline.get_pdu_id(prev)?.is_none() {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(false);
    };
    let depth = u64::from(pdu.depth);
    Ok(timeline
        .backward_extremities(shortroomid)?
        .iter()
        .any(|(_, named_at)| *named_at > depth + 1))
}

/// One server's answer, with its event fetched and stored here; `None` when it has none or the
/// user may not see what it named.
async fn ask(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    ts: u64,
    forwards: bool,
) -> Result<Option<Found>> {
    let path = format!(
        "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={}",
        crate::federation::encode(room_id.as_str()),
        if forwards { "f" } else { "b" }
    );
    let answer = match services
        .federation_request(server, http::Method::GET, &path, None)
        .await
    {
        Ok(answer) => answer,
        Err(crate::error::Error::Matrix { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(event_id) = answer["event_id"]
        .as_str()
        .and_then(|id| OwnedEventId::try_from(id).ok())
    else {
        return Ok(None);
    };
    backfill::fetch_event(services, server, room_id, &event_id).await?;
    let rooms = &services.rooms;
    let (Some(pdu_id), Some(pdu)) = (
        rooms.timeline.get_pdu_id(&event_id)?,
        rooms.timeline.get_pdu(&event_id)?,
    ) else {
        return Ok(None);
    };
    let membership = rooms.members.get_user_room(user, room_id)?;
    if !visibility::user_can_see(services, user, membership.as_ref(), pdu_id.count, &pdu)? {
        return Ok(None);
    }
    Ok(Some(Found {
        event_id,
        origin_server_ts: u64::from(pdu.origin_server_ts.get()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(ts, count)` in the order a lookup from `ts` walks them.
    fn walk(times: &EventTimes, room: u64, ts: u64, forwards: bool) -> Vec<(u64, u64)> {
        times
            .iter_from(room, ts, forwards)
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn lookups_walk_one_room_from_the_timestamp_with_ties_in_topological_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let times = EventTimes::open(&db);
        // Room 2: two events at 100 (depths 5 and 6), one before and one after; rooms 1 and 3
        // have events at the same timestamps that must never show up.
        for (room, ts, depth, count) in [
            (2, 100, 6, 11),
            (2, 100, 5, 10),
            (2, 90, 4, 9),
            (2, 120, 7, 12),
            (1, 100, 1, 1),
            (3, 95, 1, 2),
        ] {
            times
                .roomtsdepthcount_
                .insert(&index_key(room, ts, depth, count), b"")
                .unwrap();
        }
        // Forwards from a shared timestamp: the shallower event first; backwards: the deeper.
        assert_eq!(
            walk(&times, 2, 100, true),
            [(100, 10), (100, 11), (120, 12)]
        );
        assert_eq!(walk(&times, 2, 100, false), [(100, 11), (100, 10), (90, 9)]);
        assert_eq!(walk(&times, 2, 101, false)[0], (100, 11));
        assert_eq!(walk(&times, 2, 91, true)[0], (100, 10));
        // Past either end of the room: nothing, never a neighbouring room.
        assert!(walk(&times, 2, 121, true).is_empty());
        assert!(walk(&times, 2, 89, false).is_empty());
        assert_eq!(walk(&times, 1, 0, true), [(100, 1)]);
        assert!(walk(&times, 4, 0, true).is_empty());
        assert!(walk(&times, 0, u64::MAX, false).is_empty());
    }
}
