//! Event relationships: child events of a parent (`/relations`) and the thread list
//! (`/threads`), both with bundled aggregations (see [`read`]).

use std::sync::Arc;

use ruma::OwnedEventId;
use serde_json::json;

use super::readable_state;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        globals::SyncToken,
        rooms::relations::read::{self, ChildrenRequest},
        Services,
    },
};

/// `limit` when the client gives none, and the largest honoured, for both endpoints.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`, also with `/{relType}` and
/// `/{relType}/{eventType}`
///
/// Children in stream order, newest first unless `dir=f`; `from`/`to` take this endpoint's
/// `r<position>` tokens, `/messages` tokens and `/sync` tokens; `limit` defaults to 10 and is
/// at most 100. With `recurse=true`, relations of relations are followed 3 levels deep and the
/// type filters apply to the returned events, not to the walk; `recursion_depth` is the deepest
/// level that held a child (1 with `recurse=false`). The caller must be able to see the parent
/// (`404 M_NOT_FOUND` otherwise) and sees only the children history visibility allows.
/// Untyped: ruma's `recurse` is a `bool` that defaults to `false`, so `recurse=false` and no
/// `recurse` look the same, where the spec asks for `recursion_depth` exactly when `recurse`
/// was given (test `relations::relations_endpoint_paths_directions_pages_and_recursion`).
pub async fn get_relating_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let parent_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param(format!("invalid event ID {}", ctx.param(1))))?;
    let backwards = match ctx.query("dir") {
        None | Some("b") => true,
        Some("f") => false,
        Some(_) => return Err(Error::invalid_param("dir must be b or f")),
    };
    let recurse = match ctx.query("recurse") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Error::invalid_param("recurse must be true or false")),
    };
    let request = ChildrenRequest {
        rel_type: Some(ctx.param(2)).filter(|text| !text.is_empty()),
        event_type: Some(ctx.param(3)).filter(|text| !text.is_empty()),
        backwards,
        limit: parse_limit(ctx.query("limit"))?,
        recurse,
        from: ctx
            .query("from")
            .map(|token| parse_token(token, backwards))
            .transpose()?,
        to: ctx
            .query("to")
            .map(|token| parse_token(token, !backwards))
            .transpose()?,
    };
    let viewer = (ctx.user(), ctx.device());
    let children = read::children(&services, viewer, &room_id, &parent_id, &request)?;
    let mut response = json!({ "chunk": children.chunk });
    if let Some(next_batch) = children.next_batch {
        response["next_batch"] = json!(format!("r{next_batch}"));
    }
    if let Some(from) = ctx.query("from") {
        response["prev_batch"] = json!(from);
    }
    if let Some(depth) = children.recursion_depth {
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
/// Untyped: ruma's request needs `include` (its `IncludeThreads` has no serde default), which
/// the spec defaults to `all` (test
/// `relations::threads_are_listed_by_latest_activity_with_participation_and_pages`).
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
    let viewer = (ctx.user(), ctx.device());
    let roots = read::thread_roots(
        &services,
        viewer,
        &room_id,
        before,
        limit,
        participated_only,
    )?;
    let mut response = json!({ "chunk": roots.chunk });
    if let Some(last) = roots.next_batch {
        response["next_batch"] = json!(format!("r{last}"));
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
