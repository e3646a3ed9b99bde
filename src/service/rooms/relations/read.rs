//! Reading relations for clients: the children of an event (`/relations`) and a room's thread
//! roots (`/threads`), both with bundled aggregations, as far as the viewer may see them.

use std::collections::HashSet;

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::{json, Value};

use super::{bundle::serve_event, ChildEntry};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{members::RoomMembership, pdu::Pdu, timeline::PduId, visibility::user_can_see},
        Services,
    },
};

/// How deep `recurse=true` follows relations of relations (the spec asks for at least 3).
const MAX_RECURSION_DEPTH: usize = 3;
/// How many index entries one recursive or all-types `/relations` request reads at most.
const MAX_GATHERED: usize = 10_000;
/// How many threads one `/threads` request looks at (most are skipped when filtering on
/// participation); the `next_batch` token continues after the last one looked at.
const MAX_THREADS_SCANNED: usize = 1_000;

/// The user and device reading.
pub type Viewer<'a> = (&'a UserId, &'a str);

/// What a `/relations` request asks for, tokens read as stream positions that bound the results
/// exclusively.
pub struct ChildrenRequest<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub backwards: bool,
    pub limit: usize,
    /// `None` when the request had no `recurse`; it then has no `recursion_depth` either.
    pub recurse: Option<bool>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// A page of children.
pub struct Children {
    pub chunk: Vec<Value>,
    /// The position of the last child of the page, when more follow.
    pub next_batch: Option<u64>,
    /// The deepest level that held a child, when the request had `recurse`.
    pub recursion_depth: Option<usize>,
}

/// The children of `parent_id` the viewer may see, in stream order, newest first unless going
/// forwards. With `recurse`, relations of relations are followed 3 levels deep and the type
/// filters apply to the returned events, not to the walk; the recursion depth is the deepest
/// level that held a child (1 without). The viewer must be able to see the parent
/// (`M_NOT_FOUND` otherwise).
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn children(
    services: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    parent_id: &EventId,
    request: &ChildrenRequest<'_>,
) -> Result<Children> {
    let not_found = || Error::not_found(format!("event {parent_id} not found"));
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(not_found)?;
    let parent_pdu_id = services
        .rooms
        .timeline
        .get_pdu_id(parent_id)?
        .filter(|id| id.shortroomid == shortroomid)
        .ok_or_else(not_found)?;
    let parent = services
        .rooms
        .timeline
        .get_pdu_at(parent_pdu_id)?
        .ok_or_else(not_found)?;
    let membership = services.rooms.members.get_user_room(viewer.0, room_id)?;
    if !user_can_see(
        services,
        viewer.0,
        membership.as_ref(),
        parent_pdu_id.count,
        &parent,
    )? {
        return Err(not_found());
    }
    let (candidates, depth) = candidates(services, shortroomid, parent_id, request)?;
    let (backwards, to) = (request.backwards, request.to);
    let in_range = |entry: &ChildEntry| match to {
        Some(to) if backwards => entry.count > to,
        Some(to) => entry.count < to,
        None => true,
    };
    let mut chunk = Vec::new();
    let mut next_batch = None;
    let mut candidates = candidates.filter(|entry| {
        entry.as_ref().map_or(true, |entry| {
            request
                .event_type
                .is_none_or(|kind| entry.child.kind == kind)
        })
    });
    while let Some(entry) = candidates.next() {
        let entry = entry?;
        if !in_range(&entry) {
            break;
        }
        if let Some(event) = visible_child(services, room_id, viewer.0, &membership, &entry)? {
            chunk.push(serve_event(services, &event, room_id, Some(viewer))?);
        }
        if chunk.len() >= request.limit {
            if let Some(more) = candidates.next() {
                if in_range(&more?) {
                    next_batch = Some(entry.count);
                }
            }
            break;
        }
    }
    Ok(Children {
        chunk,
        next_batch,
        recursion_depth: request.recurse.map(|_| depth),
    })
}

/// Children read from the index or gathered, in the order of a page.
type Candidates<'a> = Box<dyn Iterator<Item = Result<ChildEntry>> + 'a>;

/// The children to look at, in the order of the page, from `from` on, with the deepest level
/// that held a child: walked and sorted when recursing or without a relation type, else read
/// from the index of that type.
fn candidates<'a>(
    services: &'a Services,
    shortroomid: u64,
    parent_id: &EventId,
    request: &ChildrenRequest<'_>,
) -> Result<(Candidates<'a>, usize)> {
    let (backwards, from) = (request.backwards, request.from);
    match (request.recurse, request.rel_type) {
        (Some(true), _) | (_, None) => {
            let levels = if request.recurse == Some(true) {
                MAX_RECURSION_DEPTH
            } else {
                1
            };
            let (mut entries, reached) =
                gather(services, shortroomid, parent_id, levels, request.rel_type)?;
            entries.retain(|entry| match from {
                Some(from) if backwards => entry.count < from,
                Some(from) => entry.count > from,
                None => true,
            });
            entries.sort_by_key(|entry| entry.count);
            if backwards {
                entries.reverse();
            }
            Ok((Box::new(entries.into_iter().map(Ok)), reached.max(1)))
        }
        (_, Some(rel_type)) => Ok((
            Box::new(services.rooms.relations.iter_children_of_type(
                shortroomid,
                parent_id,
                rel_type,
                from,
                backwards,
            )),
            1,
        )),
    }
}

/// A page of thread roots.
pub struct ThreadRoots {
    pub chunk: Vec<Value>,
    /// The position of the last thread looked at, when more follow.
    pub next_batch: Option<u64>,
}

/// Thread roots by their latest `m.thread` child, newest first, from before stream position
/// `before`, each with its aggregations; `participated_only` keeps the threads the viewer
/// started or replied to. Roots the viewer may not see are left out; `M_FORBIDDEN` for a room
/// this server does not know.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn thread_roots(
    services: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    before: u64,
    limit: usize,
    participated_only: bool,
) -> Result<ThreadRoots> {
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::forbidden(format!("room {room_id} is unknown")))?;
    let membership = services.rooms.members.get_user_room(viewer.0, room_id)?;
    let mut chunk = Vec::new();
    let mut last = None;
    let mut threads = services.rooms.relations.iter_threads(shortroomid, before);
    let mut scanned = 0;
    for entry in threads.by_ref() {
        let (count, root_id) = entry?;
        last = Some(count);
        scanned += 1;
        let root = services
            .rooms
            .timeline
            .get_pdu_id(&root_id)?
            .filter(|id| id.shortroomid == shortroomid)
            .map(|id| Ok::<_, Error>(services.rooms.timeline.get_pdu_at(id)?.map(|pdu| (id, pdu))))
            .transpose()?
            .flatten();
        if let Some((pdu_id, root)) = root {
            if user_can_see(services, viewer.0, membership.as_ref(), pdu_id.count, &root)? {
                let event = serve_event(services, &root, room_id, Some(viewer))?;
                let participated = event["unsigned"]["m.relations"]["m.thread"]
                    ["current_user_participated"]
                    == json!(true);
                if participated || !participated_only {
                    chunk.push(event);
                }
            }
        }
        if chunk.len() >= limit || scanned >= MAX_THREADS_SCANNED {
            break;
        }
    }
    let next_batch = last.filter(|_| threads.next().is_some());
    Ok(ThreadRoots { chunk, next_batch })
}

/// The children of `parent` down to `levels` levels of relations (each event once), keeping
/// those of `rel_type` when given, with the deepest level that held a child. At most
/// [`MAX_GATHERED`] index entries are read.
fn gather(
    services: &Services,
    shortroomid: u64,
    parent: &EventId,
    levels: usize,
    rel_type: Option<&str>,
) -> Result<(Vec<ChildEntry>, usize)> {
    let mut kept = Vec::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::from([parent.to_owned()]);
    let mut frontier = vec![parent.to_owned()];
    let mut reached = 0;
    let mut read = 0;
    for level in 1..=levels {
        let mut next = Vec::new();
        for event_id in &frontier {
            for entry in services
                .rooms
                .relations
                .iter_children(shortroomid, event_id)
            {
                let entry = entry?;
                read += 1;
                if read > MAX_GATHERED {
                    return Ok((kept, reached));
                }
                if !seen.insert(entry.child.event_id.clone()) {
                    continue;
                }
                reached = level;
                next.push(entry.child.event_id.clone());
                if rel_type.is_none_or(|rel_type| entry.rel_type == rel_type) {
                    kept.push(entry);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok((kept, reached))
}

/// A child event, if it is still in the room's timeline and the caller may see it.
fn visible_child(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    membership: &Option<RoomMembership>,
    entry: &ChildEntry,
) -> Result<Option<Pdu>> {
    let Some(shortroomid) = services.rooms.short.get_shortroomid(room_id)? else {
        return Ok(None);
    };
    let pdu_id = PduId {
        shortroomid,
        count: entry.count,
    };
    let Some(pdu) = services.rooms.timeline.get_pdu_at(pdu_id)? else {
        return Ok(None);
    };
    if pdu.event_id != entry.child.event_id
        || !user_can_see(services, user, membership.as_ref(), entry.count, &pdu)?
    {
        return Ok(None);
    }
    Ok(Some(pdu))
}
