//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`):
//! lists of the user's rooms in windows ordered by recency, room subscriptions, and the
//! `to_device`, `e2ee`, `account_data`, `receipts` and `typing` extensions.
//!
//! A request names its connection (`conn_id`) and the response it builds on (`pos`);
//! `connections.rs` keeps, per connection, what each recent response sent, so a room is sent in
//! full (`initial`) once and afterwards only when it has news.
//! `lists.rs` picks the rooms: filters, the order by `bump_stamp` and the windows of `ranges`;
//! `bumps.rs` keeps each room's `bump_stamp` in memory, noted by the commit pipeline.
//! `room.rs` builds one room; its timeline comes from `/sync`'s own code
//! (`sync::joined::served_timeline`: the same scan, history visibility and event format), as do
//! the invite state, the room summary and the unread counts, so the two sync APIs cannot drift.
//! `required_state.rs` serves the state a list asks for; `extensions.rs` the extensions.
//! Long-polls wait on the notifier topics `/sync` subscribes to (`sync::subscribe`).

mod bumps;
mod connections;
mod extensions;
mod lists;
mod required_state;
mod room;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{
    api::client::sync::sync_events::v5, events::room::member::MembershipState, OwnedRoomId, UserId,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use self::connections::SentRoom;
pub use self::{
    bumps::Bumps,
    connections::{Connections, PosState},
};
use crate::{
    error::{Error, Result},
    service::{notify::Waiter, rooms::members::RoomMembership, sync, Services},
};

/// The sliding-sync state kept in memory: connections and per-room caches.
#[derive(Default)]
pub struct Sliding {
    pub connections: Connections,
    /// Each room's newest bump event (`bumps.rs`), noted at commit.
    pub bumps: Bumps,
    /// Per short room ID: the room type from its create event, which never changes.
    room_types: Mutex<HashMap<u64, Option<String>>>,
}

/// The list filters ruma's `ListFilters` leaves out (MSC4186 names them).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExtraFilters {
    /// Only rooms that are children (`m.space.child`) of one of these spaces.
    #[serde(default)]
    pub spaces: Vec<OwnedRoomId>,
    /// Only rooms with one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// No room with one of these tags.
    #[serde(default)]
    pub not_tags: Vec<String>,
}

/// Each list's [`ExtraFilters`], read from the raw request body (`M_BAD_JSON` when one has the
/// wrong type).
pub fn extra_filters(body: &Value) -> Result<BTreeMap<String, ExtraFilters>> {
    let mut filters = BTreeMap::new();
    for (name, list) in body["lists"].as_object().into_iter().flatten() {
        let Some(list_filters) = list.get("filters").filter(|value| !value.is_null()) else {
            continue;
        };
        let parsed = ExtraFilters::deserialize(list_filters)
            .map_err(|error| Error::bad_json(format!("invalid filters of list {name}: {error}")))?;
        filters.insert(name.clone(), parsed);
    }
    Ok(filters)
}

/// A sliding-sync request as the handler parsed it.
pub struct SlidingRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub body: &'a v5::Request,
    pub extra_filters: &'a BTreeMap<String, ExtraFilters>,
}

impl SlidingRequest<'_> {
    fn connection(&self) -> (&str, &str) {
        (self.device, self.body.conn_id.as_deref().unwrap_or(""))
    }
}

/// Checks the request (`M_INVALID_PARAM` for out-of-order or huge ranges, too many lists)
/// and returns the state it builds on: `None` without a `pos`, `M_UNKNOWN_POS` for a `pos`
/// this connection does not hold.
pub fn start(services: &Services, request: &SlidingRequest<'_>) -> Result<Option<Arc<PosState>>> {
    lists::validate(request)?;
    services.sliding.connections.base(
        request.user,
        request.connection(),
        request.body.pos.as_deref(),
    )
}

/// A built response, not yet given its `pos`.
pub struct Built {
    response: Value,
    /// Whether it holds anything a long-poll should return for.
    pub has_updates: bool,
    state: PosState,
}

/// Subscribes to the user's topics and their rooms' (as `/sync` does, so that nothing committed
/// while the response is built is missed), then builds the response on `base`.
pub fn subscribe_and_build(
    services: &Services,
    request: &SlidingRequest<'_>,
    base: Option<&PosState>,
) -> Result<(Built, Waiter)> {
    let (waiter, memberships) = sync::subscribe(services, request.user)?;
    let built = build(services, request, base, memberships)?;
    Ok((built, waiter))
}

/// The response with its `pos`: a new one when it holds news, otherwise the `pos` it was asked
/// from (nothing changed for the client, and a long-polling client then costs no memory).
pub fn finish(services: &Services, request: &SlidingRequest<'_>, built: Built) -> Value {
    let Built {
        mut response,
        has_updates,
        state,
    } = built;
    let pos = match request.body.pos.as_deref() {
        Some(pos) if !has_updates => pos.to_owned(),
        _ => services
            .sliding
            .connections
            .store(request.user, request.connection(), state),
    };
    response["pos"] = json!(pos);
    if let Some(txn_id) = &request.body.txn_id {
        response["txn_id"] = json!(txn_id);
    }
    response
}

/// One response being built.
struct Build<'a> {
    services: &'a Services,
    request: &'a SlidingRequest<'a>,
    base: Option<&'a PosState>,
    /// The stream position the response covers.
    next: u64,
    /// The rooms the user's `m.direct` names.
    direct: HashSet<OwnedRoomId>,
}

impl Build<'_> {
    /// The stream position of the response built on, if any.
    fn since(&self) -> Option<u64> {
        self.base.map(|base| base.count)
    }

    /// What the client holds of a room.
    fn sent(&self, room_id: &OwnedRoomId) -> Option<&SentRoom> {
        self.base.and_then(|base| base.rooms.get(room_id))
    }
}

/// The response on `base` for the user's `memberships`.
fn build(
    services: &Services,
    request: &SlidingRequest<'_>,
    base: Option<&PosState>,
    memberships: Vec<RoomMembership>,
) -> Result<Built> {
    let ctx = Build {
        services,
        request,
        base,
        next: services.globals.current_count(),
        direct: lists::direct_rooms(services, request.user)?,
    };
    let typing = services.typing.current();
    let candidates = lists::candidates(&ctx, &memberships)?;
    let windows = lists::windows(&ctx, &candidates)?;
    let mut wanted = windows.rooms;
    lists::add_subscriptions(&ctx, &candidates, &mut wanted);
    let mut sent_rooms = base.map(|base| (*base.rooms).clone()).unwrap_or_default();
    let mut rooms = Map::new();
    for (room_id, config) in &wanted {
        if let Some((entry, sent)) = room::build(&ctx, config)? {
            rooms.insert(room_id.to_string(), entry);
            sent_rooms.insert(room_id.clone(), sent);
        }
    }
    for membership in &memberships {
        if let Some((entry, sent)) = room::departed(&ctx, membership)? {
            rooms.insert(membership.room_id.to_string(), entry);
            sent_rooms.insert(membership.room_id.clone(), sent);
        }
    }
    let initial_rooms: Vec<&OwnedRoomId> = wanted
        .keys()
        .filter(|room_id| {
            rooms
                .get(room_id.as_str())
                .is_some_and(|room| room["initial"] == true)
        })
        .collect();
    let scope = extensions::Scope {
        lists: &windows.by_list,
        subscribed: request
            .body
            .room_subscriptions
            .keys()
            .filter(|room_id| wanted.contains_key(*room_id))
            .collect(),
        window: wanted.keys().collect(),
    };
    let (extensions, extension_updates) = extensions::build(&ctx, &scope, &initial_rooms)?;
    let lists_changed = base.is_none_or(|base| base.lists != windows.counts);
    let has_updates = !rooms.is_empty() || extension_updates || lists_changed;
    let lists: Map<String, Value> = windows
        .counts
        .iter()
        .map(|(name, count)| (name.clone(), json!({ "count": count })))
        .collect();
    let response = json!({ "lists": lists, "rooms": rooms, "extensions": extensions });
    Ok(Built {
        response,
        has_updates,
        state: PosState {
            count: ctx.next,
            typing,
            rooms: Arc::new(sent_rooms),
            lists: windows.counts,
        },
    })
}

/// Whether a membership puts a room in the lists.
fn is_listed(membership: &MembershipState) -> bool {
    matches!(
        membership,
        MembershipState::Join | MembershipState::Invite | MembershipState::Knock
    )
}
