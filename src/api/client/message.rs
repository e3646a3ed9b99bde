//! Sending and reading room events: send, get, /messages, /context and redaction.

use std::sync::Arc;

use ruma::{api::error::ErrorKind, events::StateEventType, OwnedEventId, RoomId};
use serde_json::{json, Value};

use super::{readable_state, require_joined};
use crate::{
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{
        filter::RoomEventFilter,
        rooms::timeline::{create_and_commit, is_backfilled, read::TopoPos, PduBuilder},
        rooms::{
            backfill,
            members::RoomMembership,
            pdu::client_event,
            relations::{bundle::serve_event, check_client_relation},
            visibility::{self, user_can_see},
        },
        sync::SyncToken,
        Services,
    },
};

/// Largest `limit` honoured by `/messages` and `/context`.
const MAX_LIMIT: usize = 1000;
/// How many `/backfill` rounds one `/messages` page may wait for (each brings up to 100 events,
/// so a page of the largest `limit` can be filled).
const MAX_BACKFILL_ROUNDS: usize = 11;

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
///
/// Idempotent per device and transaction ID: a repeat returns the first event's ID.
pub async fn send_message_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let event_type = ctx.param(1);
    let txn_id = ctx.param(2);
    if event_type.is_empty() || event_type.len() > 255 || txn_id.len() > 255 {
        return Err(Error::invalid_param("invalid event type or transaction ID"));
    }
    if let Some(event_id) = services.rooms.timeline.get_transaction(
        ctx.user().as_str(),
        ctx.device(),
        &room_id,
        txn_id,
    )? {
        return Ok(json!({ "event_id": event_id }));
    }
    require_joined(&services, &room_id, ctx.user())?;
    if event_type == "m.room.redaction" {
        let target = ctx
            .body
            .get("redacts")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("redactions need redacts"))?;
        let target =
            OwnedEventId::try_from(target).map_err(|_| Error::invalid_param("invalid redacts"))?;
        return redact_event(&services, &ctx, &room_id, target, ctx.body.clone(), txn_id).await;
    }
    check_client_relation(&services, &room_id, ctx.user(), event_type, &ctx.body)?;
    let (event_id, _) = create_and_commit(
        &services,
        &room_id,
        ctx.user(),
        PduBuilder::timeline(event_type, ctx.body.clone()),
        Some((ctx.device(), txn_id)),
    )
    .await?;
    Ok(json!({ "event_id": event_id }))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
///
/// Only the sender or a user with the `redact` power level may redact; the target's content is
/// pruned in storage by the room version's redaction algorithm. A user with the `redact` level
/// may also redact an event this server does not have (the redaction is sent all the same);
/// for anyone else an unknown event is `404 M_NOT_FOUND`.
pub async fn redact(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let target = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let txn_id = ctx.param(2);
    if let Some(event_id) = services.rooms.timeline.get_transaction(
        ctx.user().as_str(),
        ctx.device(),
        &room_id,
        txn_id,
    )? {
        return Ok(json!({ "event_id": event_id }));
    }
    require_joined(&services, &room_id, ctx.user())?;
    let mut content = ctx.body.clone();
    content["redacts"] = json!(target);
    redact_event(&services, &ctx, &room_id, target, content, txn_id).await
}

async fn redact_event(
    services: &Services,
    ctx: &Ctx,
    room_id: &RoomId,
    target: OwnedEventId,
    content: Value,
    txn_id: &str,
) -> HandlerResult {
    let may_redact_others = power_level(services, room_id, ctx.user())?
        >= required_level(services, room_id, "redact", 50)?;
    match services.rooms.timeline.get_pdu(&target)? {
        Some(original) => {
            if original
                .room_id
                .as_deref()
                .is_some_and(|room| room != room_id)
            {
                return Err(Error::not_found(format!(
                    "event {target} not found in {room_id}"
                )));
            }
            if original.sender != ctx.user() && !may_redact_others {
                return Err(Error::forbidden("you may not redact other users' events"));
            }
        }
        // A user with the redact level may redact an event this server has not seen (it may
        // still arrive from another server); anyone else could only redact their own events,
        // which this server would have.
        None if may_redact_others => {}
        None => return Err(Error::not_found(format!("event {target} not found"))),
    }
    let builder = PduBuilder {
        kind: "m.room.redaction".into(),
        content,
        state_key: None,
        redacts: Some(target),
    };
    let (event_id, _) = create_and_commit(
        services,
        room_id,
        ctx.user(),
        builder,
        Some((ctx.device(), txn_id)),
    )
    .await?;
    Ok(json!({ "event_id": event_id }))
}

/// A user's power level in a room (creators of v12 rooms rank above every number).
pub fn power_level(services: &Services, room_id: &RoomId, user: &ruma::UserId) -> Result<i64> {
    let create = services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomCreate, "")?;
    if let Some(create) = &create {
        let version = create
            .content_value()
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1")
            .to_owned();
        let privileged = ruma::RoomVersionId::try_from(version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators);
        let additional = create
            .content_value()
            .get("additional_creators")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|id| id.as_str() == Some(user.as_str())));
        if privileged && (create.sender == user || additional) {
            return Ok(i64::MAX);
        }
    }
    match services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomPowerLevels, "")?
    {
        Some(levels) => {
            let content = levels.content_value();
            Ok(content
                .get("users")
                .and_then(|users| users.get(user.as_str()))
                .and_then(Value::as_i64)
                .or_else(|| content.get("users_default").and_then(Value::as_i64))
                .unwrap_or(0))
        }
        None => Ok(if create.is_some_and(|create| create.sender == user) {
            100
        } else {
            0
        }),
    }
}

fn required_level(services: &Services, room_id: &RoomId, field: &str, default: i64) -> Result<i64> {
    Ok(services
        .rooms
        .current_state_pdu(room_id, &StateEventType::RoomPowerLevels, "")?
        .and_then(|levels| levels.content_value().get(field).and_then(Value::as_i64))
        .unwrap_or(default))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    // No membership check of its own: an event the user may not see is `404` like a missing one
    // (members, former members and anyone in a `world_readable` room are sorted out below).
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let pdu = services
        .rooms
        .timeline
        .get_pdu(&event_id)?
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    if pdu.room_id.as_deref().is_some_and(|room| room != room_id) {
        return Err(Error::not_found(format!(
            "event {event_id} not found in {room_id}"
        )));
    }
    let count = services
        .rooms
        .timeline
        .get_pdu_id(&event_id)?
        .map_or(0, |id| id.count);
    let membership = services.rooms.members.get_user_room(ctx.user(), &room_id)?;
    if !user_can_see(&services, ctx.user(), membership.as_ref(), count, &pdu)? {
        return Err(Error::not_found(format!("event {event_id} not found")));
    }
    serve_event(&services, &pdu, &room_id, Some((ctx.user(), ctx.device())))
}

/// Parses a pagination token: `t<depth>_<count>` (topological) or a sync token (`s<count>_<typing>`
/// or the older `s<count>`), of which only the stream position matters here.
pub fn parse_token(services: &Services, shortroomid: u64, token: &str) -> Result<TopoPos> {
    let invalid = || Error::invalid_param(format!("invalid pagination token {token}"));
    if let Some(rest) = token.strip_prefix('t') {
        let (depth, count) = rest.split_once('_').ok_or_else(invalid)?;
        return Ok(TopoPos {
            depth: depth.parse().map_err(|_| invalid())?,
            count: count.parse().map_err(|_| invalid())?,
        });
    }
    let count = SyncToken::parse(token).ok_or_else(invalid)?.count;
    // The position just after the last event at or before `count`.
    match services
        .rooms
        .timeline
        .iter_before(shortroomid, count.saturating_add(1))
        .next()
    {
        Some(entry) => {
            let (event_count, pdu) = entry?;
            Ok(TopoPos {
                depth: u64::from(pdu.depth),
                count: event_count.saturating_add(1),
            })
        }
        None => Ok(TopoPos { depth: 0, count: 0 }),
    }
}

/// A topological position as a token.
pub fn format_token(position: TopoPos) -> String {
    format!("t{}_{}", position.depth, position.count)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
///
/// Both directions, `from`/`to` tokens, `limit` (default 10, at most 1000) and a `RoomEventFilter`.
/// With `lazy_load_members` the member events of the chunk's senders come in `state`.
/// Non-state events of users the caller ignores are left out.
/// `end` comes with every page that holds events, also one that reached the start (or end) of
/// the room, and only a page that finds nothing leaves it out, as Synapse does: a client then
/// learns it reached the edge from one more, empty, page. The spec leaves `end` out as soon as
/// no further events are available; clients that page until `end` is missing handle both, and
/// Complement's `TestRoomImageRoundtrip` expects `end` on a filtered page that reached the start.
pub async fn get_message_events(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    // Members, former members (up to their departure) and anyone in a `world_readable` room.
    let readable = readable_state(&services, &room_id, ctx.user())?;
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(&room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} not found")))?;
    let backwards = match ctx.query("dir") {
        Some("b") => true,
        Some("f") => false,
        _ => return Err(Error::invalid_param("dir must be b or f")),
    };
    let filter = match ctx.query("filter") {
        Some(text) => RoomEventFilter::from_value(
            &serde_json::from_str(text)
                .map_err(|_| Error::matrix(ErrorKind::BadJson, "filter is not valid JSON"))?,
        ),
        None => RoomEventFilter::default(),
    };
    let limit = ctx
        .query("limit")
        .map(|limit| {
            limit
                .parse::<usize>()
                .map_err(|_| Error::invalid_param("invalid limit"))
        })
        .transpose()?
        .or(filter.limit)
        .unwrap_or(10)
        .min(MAX_LIMIT);
    let top = TopoPos {
        depth: u64::MAX,
        count: u64::MAX,
    };
    // Going back from a sync token (a `prev_batch`) means the events before that point of the
    // stream, in topological order: an event received late but deep in the DAG is not among them.
    let (from, stream_max) = match ctx.query("from") {
        Some(token) if backwards && !token.starts_with('t') => {
            let token = SyncToken::parse(token)
                .ok_or_else(|| Error::invalid_param(format!("invalid pagination token {token}")))?;
            (top, Some(token.count))
        }
        Some(token) => (parse_token(&services, shortroomid, token)?, None),
        None if backwards => (top, None),
        None => (TopoPos { depth: 0, count: 0 }, None),
    };
    let to = ctx
        .query("to")
        .map(|token| parse_token(&services, shortroomid, token))
        .transpose()?;
    let request = PageRequest {
        room_id: &room_id,
        shortroomid,
        readable: &readable,
        from,
        stream_max,
        to,
        backwards,
        limit,
        filter: &filter,
        membership: services.rooms.members.get_user_room(ctx.user(), &room_id)?,
        ignored: services.account_data.ignored_users(ctx.user())?,
    };
    // Going back, a page that would cross history this server never received waits for it to
    // be fetched from the room's other servers; each round adds up to a `/backfill` batch.
    let mut rounds = 0;
    let page = loop {
        let page = read_page(&services, &ctx, &request)?;
        if !backwards || rounds >= MAX_BACKFILL_ROUNDS {
            break page;
        }
        let lowest_depth = match (page.chunk.len() >= limit, page.last) {
            (true, Some(last)) => last.depth,
            _ => 0,
        };
        match backfill::fill_gaps(&services, &room_id, shortroomid, lowest_depth).await {
            Ok(0) => break page,
            Ok(_) => rounds += 1,
            Err(error) => {
                tracing::info!(%error, "backfill failed");
                break page;
            }
        }
    };
    let Page {
        chunk,
        senders,
        last,
    } = page;
    let start = match ctx.query("from") {
        Some(token) => token.to_owned(),
        None => format_token(from),
    };
    let mut response = json!({ "chunk": chunk, "start": start });
    // A page that stops at `to` or at the newest event has not seen every event there may be in
    // that direction either, so it too gets an `end` (see the doc comment).
    if let Some(last) = last {
        if !chunk.is_empty() || chunk.len() >= limit {
            response["end"] = json!(format_token(last));
        }
    }
    if filter.lazy_load_members {
        let mut state = Vec::new();
        for sender in senders {
            if let Some(pdu) = services.rooms.current_state_pdu(
                &room_id,
                &StateEventType::RoomMember,
                sender.as_str(),
            )? {
                state.push(client_event(&pdu, &room_id, None));
            }
        }
        response["state"] = Value::Array(state);
    }
    Ok(response)
}

/// One `/messages` request, as `read_page` needs it.
struct PageRequest<'a> {
    room_id: &'a RoomId,
    shortroomid: u64,
    readable: &'a visibility::ReadableState,
    from: TopoPos,
    /// The last stream position of the page's events, when it starts from a sync token.
    stream_max: Option<u64>,
    to: Option<TopoPos>,
    backwards: bool,
    limit: usize,
    filter: &'a RoomEventFilter,
    membership: Option<RoomMembership>,
    ignored: Arc<std::collections::HashSet<ruma::OwnedUserId>>,
}

/// A page of `/messages`: the events in client form, their senders, and the last position
/// scanned.
struct Page {
    chunk: Vec<Value>,
    senders: std::collections::BTreeSet<ruma::OwnedUserId>,
    last: Option<TopoPos>,
}

/// Reads a page of events the caller may see from what the timeline holds.
fn read_page(services: &Services, ctx: &Ctx, request: &PageRequest<'_>) -> Result<Page> {
    let mut page = Page {
        chunk: Vec::new(),
        senders: std::collections::BTreeSet::new(),
        last: None,
    };
    for entry in
        services
            .rooms
            .timeline
            .iter_topo(request.shortroomid, request.from, request.backwards)
    {
        let (position, pdu) = entry?;
        if let Some(to) = request.to {
            if (request.backwards && position < to) || (!request.backwards && position >= to) {
                break;
            }
        }
        if request
            .stream_max
            .is_some_and(|max| position.count > max && !is_backfilled(position.count))
        {
            continue;
        }
        page.last = Some(position);
        if request.readable.after_departure(position.count) {
            // After a former member's departure: nothing more for them going forwards.
            if request.backwards {
                continue;
            }
            break;
        }
        if !request.filter.matches(&pdu)
            || visibility::ignored(&request.ignored, &pdu)
            || !user_can_see(
                services,
                ctx.user(),
                request.membership.as_ref(),
                position.count,
                &pdu,
            )?
        {
            continue;
        }
        page.senders.insert(pdu.sender.clone());
        page.chunk.push(serve_event(
            services,
            &pdu,
            request.room_id,
            Some((ctx.user(), ctx.device())),
        )?);
        if page.chunk.len() >= request.limit {
            break;
        }
    }
    Ok(page)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
///
/// Non-state events of users the caller ignores are left out of the events around the target.
pub async fn get_context(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    let readable = readable_state(&services, &room_id, ctx.user())?;
    let event_id = OwnedEventId::try_from(ctx.param(1))
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(&room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} not found")))?;
    let pdu_id = services
        .rooms
        .timeline
        .get_pdu_id(&event_id)?
        .filter(|id| id.shortroomid == shortroomid)
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    let pdu = services
        .rooms
        .timeline
        .get_pdu_at(pdu_id)?
        .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
    let limit = ctx
        .query("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .unwrap_or(10)
        .min(MAX_LIMIT);
    let filter = ctx
        .query("filter")
        .and_then(|text| serde_json::from_str(text).ok())
        .map(|value: Value| RoomEventFilter::from_value(&value))
        .unwrap_or_default();
    let membership = services.rooms.members.get_user_room(ctx.user(), &room_id)?;
    if !user_can_see(
        &services,
        ctx.user(),
        membership.as_ref(),
        pdu_id.count,
        &pdu,
    )? {
        return Err(Error::not_found(format!("event {event_id} not found")));
    }
    let here = TopoPos {
        depth: u64::from(pdu.depth),
        count: pdu_id.count,
    };
    let viewer = Some((ctx.user(), ctx.device()));
    let ignored = services.account_data.ignored_users(ctx.user())?;
    // Up to `wanted` events on one side of the target that pass the filter and that the viewer
    // may see (scanning a bounded number), with the last position scanned for the token.
    let collect = |backwards: bool, wanted: usize| -> Result<(Vec<Value>, TopoPos)> {
        let mut events = Vec::new();
        let mut last = here;
        let budget = limit.div_ceil(2).max(1) * 4;
        for entry in services
            .rooms
            .timeline
            .iter_topo(shortroomid, here, backwards)
            .take(budget)
        {
            let (position, event) = entry?;
            if readable.after_departure(position.count) {
                if backwards {
                    continue;
                }
                break;
            }
            last = position;
            if filter.matches(&event)
                && !visibility::ignored(&ignored, &event)
                && user_can_see(
                    &services,
                    ctx.user(),
                    membership.as_ref(),
                    position.count,
                    &event,
                )?
            {
                events.push(serve_event(&services, &event, &room_id, viewer)?);
            }
            if events.len() >= wanted {
                break;
            }
        }
        Ok((events, last))
    };
    let (before, start) = collect(true, limit / 2)?;
    let (after, end) = collect(false, limit - limit / 2)?;
    let hash = readable.shortstatehash;
    let state: Vec<Value> = if hash == 0 {
        Vec::new()
    } else {
        services
            .rooms
            .state_pdus(hash)?
            .iter()
            .map(|pdu| client_event(pdu, &room_id, None))
            .collect()
    };
    Ok(json!({
        "event": serve_event(&services, &pdu, &room_id, viewer)?,
        "events_before": before, "events_after": after,
        "start": format_token(start), "end": format_token(end),
        "state": state
    }))
}
