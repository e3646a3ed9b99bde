//! Reading a room's history for clients: pagination tokens, `/messages` pages and the events
//! around one event (`/context`).
//!
//! Pagination tokens and the reading side of `/messages` (with backfill rounds) and `/context`.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{
    api::error::ErrorKind, events::StateEventType, OwnedEventId, OwnedUserId, RoomId, UserId,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{
        filter::RoomEventFilter,
        globals::SyncToken,
        rooms::{
            backfill,
            members::RoomMembership,
            pdu::client_event,
            relations::bundle::serve_event,
            timeline::{is_backfilled, read::TopoPos},
            visibility::{self, user_can_see, ReadableState},
        },
        Services,
    },
};

/// Largest `limit` honoured by `/messages` and `/context`.
const MAX_LIMIT: usize = 1000;
/// How many `/backfill` rounds one `/messages` page may wait for (each brings up to 100 events,
/// so a page of the largest `limit` can be filled).
const MAX_BACKFILL_ROUNDS: usize = 11;

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

/// The user and device reading.
pub type Viewer<'a> = (&'a UserId, &'a str);

/// What a `/messages` request asks for, as sent.
pub struct MessagesRequest<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// The `dir`, `limit` and `filter` parameters as sent: they are checked after the viewer's
    /// access, so that a room the viewer may not read answers 403 whatever they hold. A missing
    /// `limit` is the filter's, then 10.
    pub dir: Option<&'a str>,
    pub limit: Option<&'a str>,
    pub filter: Option<&'a str>,
}

impl MessagesRequest<'_> {
    /// `dir` (backwards or not), the filter, and the page size.
    fn parameters(&self) -> Result<(bool, RoomEventFilter, usize)> {
        let backwards = match self.dir {
            Some("b") => true,
            Some("f") => false,
            _ => return Err(Error::invalid_param("dir must be b or f")),
        };
        let filter = match self.filter {
            Some(text) => RoomEventFilter::from_value(
                &serde_json::from_str(text)
                    .map_err(|_| Error::matrix(ErrorKind::BadJson, "filter is not valid JSON"))?,
            ),
            None => RoomEventFilter::default(),
        };
        let limit = self
            .limit
            .map(|limit| {
                limit
                    .parse::<usize>()
                    .map_err(|_| Error::invalid_param("invalid limit"))
            })
            .transpose()?;
        let limit = limit.or(filter.limit).unwrap_or(10).min(MAX_LIMIT);
        Ok((backwards, filter, limit))
    }
}

/// A page of `/messages`.
pub struct Messages {
    pub chunk: Vec<Value>,
    pub start: String,
    pub end: Option<String>,
    /// The senders' member events, with `lazy_load_members`.
    pub state: Option<Vec<Value>>,
}

/// A page of a room's events for `/messages`.
///
/// Both directions, `from`/`to` tokens, `limit` (default 10, at most 1000) and a `RoomEventFilter`.
/// With `lazy_load_members` the member events of the chunk's senders come in `state`.
/// Non-state events of users the viewer ignores are left out. Only members, former members (up
/// to their departure) and anyone in a `world_readable` room may read (`M_FORBIDDEN`).
/// `end` comes with every page that holds events, also one that reached the start (or end) of
/// the room, and only a page that finds nothing leaves it out, as Synapse does: a client then
/// learns it reached the edge from one more, empty, page. The spec leaves `end` out as soon as
/// no further events are available; clients that page until `end` is missing handle both, and
/// Complement's `TestRoomImageRoundtrip` expects `end` on a filtered page that reached the start.
/// Going back, a page that would cross history this server never received waits for it to be
/// fetched from the room's other servers.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn messages(
    services: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    request: MessagesRequest<'_>,
) -> Result<Messages> {
    let readable = readable(services, room_id, viewer.0)?;
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} not found")))?;
    let (backwards, filter, limit) = request.parameters()?;
    let filter = &filter;
    let top = TopoPos {
        depth: u64::MAX,
        count: u64::MAX,
    };
    // Going back from a sync token (a `prev_batch`) means the events before that point of the
    // stream, in topological order: an event received late but deep in the DAG is not among them.
    let (from, stream_max) = match request.from {
        Some(token) if backwards && !token.starts_with('t') => {
            let token = SyncToken::parse(token)
                .ok_or_else(|| Error::invalid_param(format!("invalid pagination token {token}")))?;
            (top, Some(token.count))
        }
        Some(token) => (parse_token(services, shortroomid, token)?, None),
        None if backwards => (top, None),
        None => (TopoPos { depth: 0, count: 0 }, None),
    };
    let to = request
        .to
        .map(|token| parse_token(services, shortroomid, token))
        .transpose()?;
    let page_request = PageRequest {
        room_id,
        shortroomid,
        readable: &readable,
        from,
        stream_max,
        to,
        backwards,
        limit,
        filter,
        membership: services.rooms.members.get_user_room(viewer.0, room_id)?,
        ignored: services.account_data.ignored_users(viewer.0)?,
    };
    let Page {
        chunk,
        senders,
        last,
    } = read_page_with_backfill(services, viewer, &page_request).await?;
    // A page that stops at `to` or at the newest event has not seen every event there may be in
    // that direction either, so it too gets an `end` (see the doc comment).
    let end = last
        .filter(|_| !chunk.is_empty() || chunk.len() >= limit)
        .map(format_token);
    let state = if filter.lazy_load_members {
        Some(member_events(services, room_id, &senders)?)
    } else {
        None
    };
    Ok(Messages {
        chunk,
        start: request
            .from
            .map_or_else(|| format_token(from), str::to_owned),
        end,
        state,
    })
}

/// The state `user` may read in a room; `M_FORBIDDEN` when there is none.
fn readable(services: &Services, room_id: &RoomId, user: &UserId) -> Result<ReadableState> {
    visibility::readable_state(services, room_id, user)?.ok_or_else(|| {
        Error::forbidden(format!(
            "{user} is not a member of {room_id} and was not one before"
        ))
    })
}

/// The current member events of `senders`, in client form.
fn member_events(
    services: &Services,
    room_id: &RoomId,
    senders: &BTreeSet<OwnedUserId>,
) -> Result<Vec<Value>> {
    let mut state = Vec::new();
    for sender in senders {
        if let Some(pdu) = services.rooms.current_state_pdu(
            room_id,
            &StateEventType::RoomMember,
            sender.as_str(),
        )? {
            state.push(client_event(&pdu, room_id, None));
        }
    }
    Ok(state)
}

/// Reads a page; going back, a page that would cross history this server never received waits
/// for it to be fetched from the room's other servers, each round adding up to a `/backfill`
/// batch.
async fn read_page_with_backfill(
    services: &Services,
    viewer: Viewer<'_>,
    request: &PageRequest<'_>,
) -> Result<Page> {
    let mut rounds = 0;
    loop {
        let page = read_page(services, viewer, request)?;
        if !request.backwards || rounds >= MAX_BACKFILL_ROUNDS {
            return Ok(page);
        }
        let lowest_depth = match (page.chunk.len() >= request.limit, page.last) {
            (true, Some(last)) => last.depth,
            _ => 0,
        };
        match backfill::fill_gaps(services, request.room_id, request.shortroomid, lowest_depth)
            .await
        {
            Ok(0) => return Ok(page),
            Ok(_) => rounds += 1,
            Err(error) => {
                tracing::info!(%error, "backfill failed");
                return Ok(page);
            }
        }
    }
}

/// One `/messages` request, as `read_page` needs it.
struct PageRequest<'a> {
    room_id: &'a RoomId,
    shortroomid: u64,
    readable: &'a ReadableState,
    from: TopoPos,
    /// The last stream position of the page's events, when it starts from a sync token.
    stream_max: Option<u64>,
    to: Option<TopoPos>,
    backwards: bool,
    limit: usize,
    filter: &'a RoomEventFilter,
    membership: Option<RoomMembership>,
    ignored: Arc<HashSet<OwnedUserId>>,
}

/// A page of `/messages`: the events in client form, their senders, and the last position
/// scanned.
struct Page {
    chunk: Vec<Value>,
    senders: BTreeSet<OwnedUserId>,
    last: Option<TopoPos>,
}

/// Reads a page of events the caller may see from what the timeline holds.
fn read_page(services: &Services, viewer: Viewer<'_>, request: &PageRequest<'_>) -> Result<Page> {
    let mut page = Page {
        chunk: Vec::new(),
        senders: BTreeSet::new(),
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
                viewer.0,
                request.membership.as_ref(),
                position.count,
                &pdu,
            )?
        {
            continue;
        }
        page.senders.insert(pdu.sender.clone());
        page.chunk
            .push(serve_event(services, &pdu, request.room_id, Some(viewer))?);
        if page.chunk.len() >= request.limit {
            break;
        }
    }
    Ok(page)
}

/// The events around one event for `/context`.
pub struct Context {
    pub event: Value,
    pub before: Vec<Value>,
    pub after: Vec<Value>,
    pub start: String,
    pub end: String,
    /// The room's state the viewer may read (at their departure for a former member).
    pub state: Vec<Value>,
}

/// One side of a `/context` answer, as [`Around::collect`] needs it.
struct Around<'a> {
    services: &'a Services,
    viewer: Viewer<'a>,
    room_id: &'a RoomId,
    shortroomid: u64,
    here: TopoPos,
    readable: &'a ReadableState,
    filter: &'a RoomEventFilter,
    membership: Option<RoomMembership>,
    ignored: Arc<HashSet<OwnedUserId>>,
    /// How many events one side scans at most.
    budget: usize,
}

/// The events around `event_id` for `/context`: up to `limit` (at most 1000) events that pass
/// the filter and that the viewer may see, half before and half after (scanning a bounded
/// number), and the state the viewer may read. Non-state events of users the viewer ignores are
/// left out. `M_NOT_FOUND` for an event the viewer may not see.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn context(
    services: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    event_id: &str,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Context> {
    let readable = readable(services, room_id, viewer.0)?;
    // Checked after the viewer's access, like the room: a room the viewer may not read is 403.
    let event_id =
        &OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("invalid event ID"))?;
    let limit = limit.min(MAX_LIMIT);
    let not_found = || Error::not_found(format!("event {event_id} not found"));
    let shortroomid = services
        .rooms
        .short
        .get_shortroomid(room_id)?
        .ok_or_else(|| Error::not_found(format!("room {room_id} not found")))?;
    let pdu_id = services
        .rooms
        .timeline
        .get_pdu_id(event_id)?
        .filter(|id| id.shortroomid == shortroomid)
        .ok_or_else(not_found)?;
    let pdu = services
        .rooms
        .timeline
        .get_pdu_at(pdu_id)?
        .ok_or_else(not_found)?;
    let membership = services.rooms.members.get_user_room(viewer.0, room_id)?;
    if !user_can_see(services, viewer.0, membership.as_ref(), pdu_id.count, &pdu)? {
        return Err(not_found());
    }
    let around = Around {
        services,
        viewer,
        room_id,
        shortroomid,
        here: TopoPos {
            depth: u64::from(pdu.depth),
            count: pdu_id.count,
        },
        readable: &readable,
        filter,
        membership,
        ignored: services.account_data.ignored_users(viewer.0)?,
        budget: limit.div_ceil(2).max(1) * 4,
    };
    let (before, start) = around.collect(true, limit / 2)?;
    let (after, end) = around.collect(false, limit - limit / 2)?;
    let state = match readable.shortstatehash {
        0 => Vec::new(),
        hash => services
            .rooms
            .state_pdus(hash)?
            .iter()
            .map(|pdu| client_event(pdu, room_id, None))
            .collect(),
    };
    Ok(Context {
        event: serve_event(services, &pdu, room_id, Some(viewer))?,
        before,
        after,
        start: format_token(start),
        end: format_token(end),
        state,
    })
}

impl Around<'_> {
    /// Up to `wanted` events on one side of the target that pass the filter and that the viewer
    /// may see (scanning at most `budget`), with the last position scanned for the token.
    fn collect(&self, backwards: bool, wanted: usize) -> Result<(Vec<Value>, TopoPos)> {
        let mut events = Vec::new();
        let mut last = self.here;
        for entry in self
            .services
            .rooms
            .timeline
            .iter_topo(self.shortroomid, self.here, backwards)
            .take(self.budget)
        {
            let (position, event) = entry?;
            if self.readable.after_departure(position.count) {
                if backwards {
                    continue;
                }
                break;
            }
            last = position;
            if self.filter.matches(&event)
                && !visibility::ignored(&self.ignored, &event)
                && user_can_see(
                    self.services,
                    self.viewer.0,
                    self.membership.as_ref(),
                    position.count,
                    &event,
                )?
            {
                events.push(serve_event(
                    self.services,
                    &event,
                    self.room_id,
                    Some(self.viewer),
                )?);
            }
            if events.len() >= wanted {
                break;
            }
        }
        Ok((events, last))
    }
}
