//! Event relationships: child events of a parent (`/relations`) and the thread list
//! (`/threads`), both with bundled aggregations.

use std::{collections::HashSet, sync::Arc};

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::json;

use super::readable_state;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        rooms::{
            members::RoomMembership,
            relations::{bundle::serve_event, ChildEntry},
            timeline::PduId,
            visibility::user_can_see,
        },
        sync::SyncToken,
        Services,
    },
};

/// `limit` when the client gives none, and the largest honoured, for both endpoints.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// How deep `recurse=true` follows relations of relations (the spec asks for at least 3).
const MAX_RECURSION_DEPTH: usize = 3;
/// How many index entries one recursive or all-types `/relations` request reads at most.
const MAX_GATHERED: usize = 10_000;
/// How many threads one `/threads` request looks at (most are skipped when filtering on
/// participation); the `next_batch` token continues after the last one looked at.
const MAX_THREADS_SCANNED: usize = 1_000;

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`, also with `/{relType}` and
/// `/{relType}/{eventType}`
///
/// Children in stream order, newest first unless `dir=f`; `from`/`to` take this endpoint's
/// `r<position>` tokens, `/messages` tokens and `/sync` tokens; `limit` defaults to 10 and is
/// at most 100. With `recurse=true`, relations of relations are followed 3 levels deep and the
/// type filters apply to the returned events, not to the walk; `recursion_depth` is the deepest
/// level that held a child (1 with `recurse=false`). The caller must be able to see the parent
/// (`404 M_NOT_FOUND` otherwise) and sees only the children history visibility allows.
pub async fn get_relating_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let parent_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param(format!("invalid event ID {}", ctx.param(1))))?;
    let rel_type = Some(ctx.param(2)).filter(|text| !text.is_empty());
    let event_type = Some(ctx.param(3)).filter(|text| !text.is_empty());
    let backwards = match ctx.query("dir") {
        None | Some("b") => true,
        Some("f") => false,
        Some(_) => return Err(Error::invalid_param("dir must be b or f")),
    };
    let limit = parse_limit(ctx.query("limit"))?;
    let recurse = match ctx.query("recurse") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Error::invalid_param("recurse must be true or false")),
    };
    let from = ctx
        .query("from")
        .map(|token| parse_token(token, backwards))
        .transpose()?;
    let to = ctx
        .query("to")
        .map(|token| parse_token(token, !backwards))
        .transpose()?;

    let not_found = || Error::not_found(format!("event {parent_id} not found"));
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(&room_id)?
        .ok_or_else(not_found)?;
    let parent_pdu_id = services
        .rooms
        .timeline
        .get_pdu_id(&parent_id)?
        .filter(|id| id.shortroomid == shortroomid)
        .ok_or_else(not_found)?;
    let parent = services
        .rooms
        .timeline
        .get_pdu_at(parent_pdu_id)?
        .ok_or_else(not_found)?;
    let membership = services.rooms.members.get_user_room(ctx.user(), &room_id)?;
    if !user_can_see(
        &services,
        ctx.user(),
        membership.as_ref(),
        parent_pdu_id.count,
        &parent,
    )? {
        return Err(not_found());
    }

    let mut depth = 1;
    let candidates: Box<dyn Iterator<Item = Result<ChildEntry>>> = match (recurse, rel_type) {
        (Some(true), _) | (_, None) => {
            let levels = if recurse == Some(true) {
                MAX_RECURSION_DEPTH
            } else {
                1
            };
            let (mut entries, reached) =
                gather(&services, shortroomid, &parent_id, levels, rel_type)?;
            depth = reached.max(1);
            entries.retain(|entry| match from {
                Some(from) if backwards => entry.count < from,
                Some(from) => entry.count > from,
                None => true,
            });
            entries.sort_by_key(|entry| entry.count);
            if backwards {
                entries.reverse();
            }
            Box::new(entries.into_iter().map(Ok))
        }
        (_, Some(rel_type)) => Box::new(services.rooms.relations.iter_children_of_type(
            shortroomid,
            &parent_id,
            rel_type,
            from,
            backwards,
        )),
    };
    let in_range = |entry: &ChildEntry| match to {
        Some(to) if backwards => entry.count > to,
        Some(to) => entry.count < to,
        None => true,
    };
    let mut chunk = Vec::new();
    let mut next_batch = None;
    let viewer = Some((ctx.user(), ctx.device()));
    let mut candidates = candidates.filter(|entry| {
        entry.as_ref().map_or(true, |entry| {
            event_type.is_none_or(|kind| entry.child.kind == kind)
        })
    });
    while let Some(entry) = candidates.next() {
        let entry = entry?;
        if !in_range(&entry) {
            break;
        }
        if let Some(event) = visible_child(&services, &room_id, ctx.user(), &membership, &entry)? {
            chunk.push(serve_event(&services, &event, &room_id, viewer)?);
        }
        if chunk.len() >= limit {
            if let Some(more) = candidates.next() {
                if in_range(&more?) {
                    next_batch = Some(format!("r{}", entry.count));
                }
            }
            break;
        }
    }
    let mut response = json!({ "chunk": chunk });
    if let Some(next_batch) = next_batch {
        response["next_batch"] = json!(next_batch);
    }
    if let Some(from) = ctx.query("from") {
        response["prev_batch"] = json!(from);
    }
    if recurse.is_some() {
        response["recursion_depth"] = json!(depth);
    }
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
///
/// Thread roots by their latest `m.thread` child, newest first, each with its aggregations;
/// `include=participated` keeps the threads the caller started or replied to. `from` takes the
/// `r<position>` token of a previous `next_batch` (anything else is `400 M_INVALID_PARAM`),
/// `limit` must be positive (default 10, at most 100). `403 M_FORBIDDEN` for a caller who may
/// not read the room; roots the caller may not see are left out.
pub async fn get_thread_roots(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let participated_only = match ctx.query("include") {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => return Err(Error::invalid_param("include must be all or participated")),
    };
    let limit = parse_limit(ctx.query("limit"))?;
    let before = match ctx.query("from") {
        Some(token) => token
            .strip_prefix('r')
            .and_then(|count| count.parse::<u64>().ok())
            .ok_or_else(|| Error::invalid_param(format!("unknown pagination token {token}")))?,
        None => u64::MAX,
    };
    readable_state(&services, &room_id, ctx.user())?;
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(&room_id)?
        .ok_or_else(|| Error::forbidden(format!("room {room_id} is unknown")))?;
    let membership = services.rooms.members.get_user_room(ctx.user(), &room_id)?;
    let viewer = Some((ctx.user(), ctx.device()));
    let mut chunk = Vec::new();
    let mut last = None;
    let mut threads = services.rooms.relations.iter_threads(shortroomid, before);
    let mut scanned = 0;
    for entry in threads.by_ref() {
        let (count, root_id) = entry?;
        last = Some(count);
        scanned += 1;
        if let Some((pdu_id, root)) = services
            .rooms
            .timeline
            .get_pdu_id(&root_id)?
            .filter(|id| id.shortroomid == shortroomid)
            .and_then(|id| {
                services
                    .rooms
                    .timeline
                    .get_pdu_at(id)
                    .transpose()
                    .map(|pdu| pdu.map(|pdu| (id, pdu)))
            })
            .transpose()?
        {
            if user_can_see(
                &services,
                ctx.user(),
                membership.as_ref(),
                pdu_id.count,
                &root,
            )? {
                let event = serve_event(&services, &root, &room_id, viewer)?;
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
    let mut response = json!({ "chunk": chunk });
    if let Some(last) = last {
        if threads.next().is_some() {
            response["next_batch"] = json!(format!("r{last}"));
        }
    }
    Ok(response)
}

/// A `limit` query parameter: a positive integer (`400 M_INVALID_PARAM` otherwise), at most
/// [`MAX_LIMIT`].
fn parse_limit(text: Option<&str>) -> Result<usize> {
    match text {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => Ok(limit.min(MAX_LIMIT)),
            _ => Err(Error::invalid_param(format!("invalid limit {text}"))),
        },
    }
}

/// A pagination token as a stream position that bounds results exclusively: `r<position>`
/// (this endpoint's), `t<depth>_<position>` (`/messages`) or a sync token, which covers every
/// event up to its position, so that going backwards starts just above it.
fn parse_token(token: &str, backwards: bool) -> Result<u64> {
    let invalid = || Error::invalid_param(format!("invalid pagination token {token}"));
    if let Some(count) = token.strip_prefix('r') {
        return count.parse().map_err(|_| invalid());
    }
    if let Some(rest) = token.strip_prefix('t') {
        let (_, count) = rest.split_once('_').ok_or_else(invalid)?;
        return count.parse().map_err(|_| invalid());
    }
    let count = SyncToken::parse(token).ok_or_else(invalid)?.count;
    Ok(if backwards {
        count.saturating_add(1)
    } else {
        count
    })
}

/// The children of `parent` down to `levels` levels of relations (each event once), keeping
/// those of `rel_type` when given, with the deepest level that held a child. At most
/// [`MAX_GATHERED`] index entries are read.
fn gather(
    services: &Services,
    shortroomid: u64,
    parent: &ruma::EventId,
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
) -> Result<Option<crate::service::rooms::pdu::Pdu>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bound_results_exclusively() {
        assert_eq!(parse_token("r42", true).unwrap(), 42);
        assert_eq!(parse_token("t3_42", false).unwrap(), 42);
        // A sync token covers its position: backwards starts with it, forwards after it.
        assert_eq!(parse_token("s42_7", true).unwrap(), 43);
        assert_eq!(parse_token("s42", false).unwrap(), 42);
        for bad in ["", "r", "rx", "t3", "t3_x", "x"] {
            assert!(parse_token(bad, true).is_err(), "{bad}");
        }
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("5000")).unwrap(), MAX_LIMIT);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("-1")).is_err());
    }
}
