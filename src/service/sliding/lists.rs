//! Which rooms a sliding-sync response covers: the user's joined and invited rooms ordered by
//! recency (`bump_stamp`), each list's filters, its `count` and the windows of its `ranges`,
//! and the room subscriptions.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    api::client::sync::sync_events::v5::request::ListFilters,
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, RoomId,
};

use super::{is_listed, required_state, Build, ExtraFilters, SlidingRequest};
use crate::{
    error::{Error, Result},
    service::{rooms::members::RoomMembership, rooms::spaces, Services},
};

/// The most lists, ranges per list and room subscriptions a request may hold.
const MAX_LISTS: usize = 100;
const MAX_RANGES: usize = 100;
const MAX_SUBSCRIPTIONS: usize = 100;
/// The most rooms one range may span; a wider one is refused as a client error.
const MAX_RANGE_ROOMS: u64 = 100_000;
/// The most `required_state` entries of one list or subscription (Element X asks for 17; merging
/// configs compares entries pairwise).
const MAX_REQUIRED_STATE: usize = 1000;
/// The longest `conn_id`.
const MAX_CONN_ID: usize = 128;

/// Checks the request's shape beyond what parsing checks.
pub(super) fn validate(request: &SlidingRequest<'_>) -> Result<()> {
    let body = request.body;
    if body
        .conn_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_CONN_ID)
    {
        return Err(Error::invalid_param("conn_id is too long"));
    }
    if body.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!(
            "too many lists (at most {MAX_LISTS})"
        )));
    }
    if body.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!(
            "too many room subscriptions (at most {MAX_SUBSCRIPTIONS})"
        )));
    }
    let too_much_state = body
        .lists
        .values()
        .map(|list| &list.room_details.required_state)
        .chain(
            body.room_subscriptions
                .values()
                .map(|subscription| &subscription.required_state),
        )
        .any(|entries| entries.len() > MAX_REQUIRED_STATE);
    if too_much_state {
        return Err(Error::invalid_param(format!(
            "too many required_state entries (at most {MAX_REQUIRED_STATE})"
        )));
    }
    for (name, list) in &body.lists {
        if list.ranges.len() > MAX_RANGES {
            return Err(Error::invalid_param(format!(
                "list {name} has too many ranges"
            )));
        }
        for (start, end) in &list.ranges {
            if start > end {
                return Err(Error::invalid_param(format!(
                    "range [{start}, {end}] of list {name} is out of order"
                )));
            }
            if u64::from(*end) - u64::from(*start) >= MAX_RANGE_ROOMS {
                return Err(Error::invalid_param(format!(
                    "range [{start}, {end}] of list {name} spans more than {MAX_RANGE_ROOMS} rooms"
                )));
            }
        }
    }
    Ok(())
}

/// A room that may go in the lists.
pub(super) struct Candidate<'a> {
    pub membership: &'a RoomMembership,
    pub shortroomid: Option<u64>,
    pub bump: u64,
}

/// What a response sends of one room: the largest timeline and the union of the
/// `required_state` the lists and subscriptions naming it ask for.
#[derive(Clone, Debug)]
pub(super) struct RoomConfig {
    pub membership: RoomMembership,
    pub shortroomid: Option<u64>,
    pub bump: u64,
    pub timeline_limit: u64,
    /// Shared by every room of a list (and kept by the connection for each room sent), so that
    /// a window over every room costs one copy of it, not one per room.
    pub required_state: Arc<[(String, String)]>,
}

impl RoomConfig {
    fn merge(&mut self, timeline_limit: u64, required_state: &Arc<[(String, String)]>) {
        self.timeline_limit = self.timeline_limit.max(timeline_limit);
        if self.required_state.is_empty() {
            self.required_state = Arc::clone(required_state);
        } else if self.required_state != *required_state {
            let mut union: Vec<(String, String)> = self
                .required_state
                .iter()
                .chain(required_state.iter())
                .cloned()
                .collect();
            union.sort();
            union.dedup();
            self.required_state = union.into();
        }
    }
}

/// A list's or subscription's `required_state`: its valid entries, sorted, without duplicates.
fn normalized(required_state: &[(StateEventType, String)]) -> Arc<[(String, String)]> {
    let mut entries: Vec<(String, String)> = required_state
        .iter()
        .map(|(kind, state_key)| (kind.to_string(), state_key.clone()))
        .filter(|(kind, state_key)| required_state::is_valid_entry(kind, state_key))
        .collect();
    entries.sort();
    entries.dedup();
    entries.into()
}

/// The lists of a response: each one's `count`, and the rooms their windows cover.
pub(super) struct Windows {
    pub counts: BTreeMap<String, u64>,
    pub rooms: BTreeMap<OwnedRoomId, RoomConfig>,
    /// Each list's rooms in its windows, for the extensions' `lists` scoping.
    pub by_list: BTreeMap<String, Vec<OwnedRoomId>>,
}

/// The user's joined and invited rooms, newest bump first (ties by room ID). A joined room's
/// stamp comes from memory (`bumps.rs`); an invitee sees nothing of the room's timeline, so
/// the invite is its news.
pub(super) fn candidates<'a>(
    ctx: &Build<'_>,
    memberships: &'a [RoomMembership],
) -> Result<Vec<Candidate<'a>>> {
    let services = ctx.services;
    let mut candidates = Vec::new();
    let mut joined = Vec::new();
    for membership in memberships
        .iter()
        .filter(|membership| is_listed(&membership.membership))
    {
        let shortroomid = services.rooms.short.get_shortroomid(&membership.room_id)?;
        if let (MembershipState::Join, Some(short)) = (&membership.membership, shortroomid) {
            joined.push((candidates.len(), short));
        }
        candidates.push(Candidate {
            membership,
            shortroomid,
            bump: membership.count,
        });
    }
    let rooms: Vec<u64> = joined.iter().map(|(_, short)| *short).collect();
    let stamps = services.sliding.bumps.stamps(services, &rooms, ctx.next)?;
    for ((index, _), stamp) in joined.into_iter().zip(stamps) {
        candidates[index].bump = stamp;
    }
    candidates.sort_by(|a, b| {
        b.bump
            .cmp(&a.bump)
            .then_with(|| a.membership.room_id.cmp(&b.membership.room_id))
    });
    Ok(candidates)
}

/// Each list's `count` and the rooms in its windows.
pub(super) fn windows(ctx: &Build<'_>, candidates: &[Candidate<'_>]) -> Result<Windows> {
    let facts = Facts::new(ctx);
    let mut windows = Windows {
        counts: BTreeMap::new(),
        rooms: BTreeMap::new(),
        by_list: BTreeMap::new(),
    };
    for (name, list) in &ctx.request.body.lists {
        let extra = ctx.request.extra_filters.get(name);
        let mut matching = Vec::new();
        for candidate in candidates {
            if facts.passes(candidate, list.filters.as_ref(), extra)? {
                matching.push(candidate);
            }
        }
        windows.counts.insert(name.clone(), matching.len() as u64);
        let mut in_window = BTreeSet::new();
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
            in_window.extend((start..=end).take_while(|index| *index < matching.len()));
        }
        let list_rooms = windows.by_list.entry(name.clone()).or_default();
        let details = &list.room_details;
        let required_state = normalized(&details.required_state);
        for index in in_window {
            let candidate = matching[index];
            list_rooms.push(candidate.membership.room_id.clone());
            windows
                .rooms
                .entry(candidate.membership.room_id.clone())
                .or_insert_with(|| config(candidate))
                .merge(u64::from(details.timeline_limit), &required_state);
        }
    }
    Ok(windows)
}

/// A room's config before any list or subscription adds to it.
fn config(candidate: &Candidate<'_>) -> RoomConfig {
    RoomConfig {
        membership: candidate.membership.clone(),
        shortroomid: candidate.shortroomid,
        bump: candidate.bump,
        timeline_limit: 0,
        required_state: Arc::from(Vec::new()),
    }
}

/// Adds the room subscriptions of rooms the user is joined or invited to (others are left out,
/// as MSC4186 allows for rooms the user may not see).
pub(super) fn add_subscriptions(
    ctx: &Build<'_>,
    candidates: &[Candidate<'_>],
    wanted: &mut BTreeMap<OwnedRoomId, RoomConfig>,
) {
    for (room_id, subscription) in &ctx.request.body.room_subscriptions {
        let Some(candidate) = candidates
            .iter()
            .find(|candidate| &candidate.membership.room_id == room_id)
        else {
            continue;
        };
        wanted
            .entry(room_id.clone())
            .or_insert_with(|| config(candidate))
            .merge(
                u64::from(subscription.timeline_limit),
                &normalized(&subscription.required_state),
            );
    }
}

/// What the filters look at, read only when a filter asks.
struct Facts<'a> {
    services: &'a Services,
    user: &'a ruma::UserId,
    direct: &'a HashSet<OwnedRoomId>,
    /// Each space's children, read once per response rather than once per room.
    space_children: RefCell<HashMap<OwnedRoomId, HashSet<String>>>,
}

impl<'a> Facts<'a> {
    fn new(ctx: &'a Build<'a>) -> Self {
        Self {
            services: ctx.services,
            user: ctx.request.user,
            direct: &ctx.direct,
            space_children: RefCell::default(),
        }
    }

    /// Whether `space` lists `room_id` as a child.
    fn is_child(&self, space: &OwnedRoomId, room_id: &RoomId) -> Result<bool> {
        let mut cache = self.space_children.borrow_mut();
        if !cache.contains_key(space) {
            let children = spaces::children_state(self.services, space)?
                .iter()
                .filter_map(|link| link["state_key"].as_str().map(str::to_owned))
                .collect();
            cache.insert(space.clone(), children);
        }
        Ok(cache
            .get(space)
            .is_some_and(|children| children.contains(room_id.as_str())))
    }

    /// Whether a room passes a list's filters (all of them: MSC4186 ANDs them).
    fn passes(
        &self,
        candidate: &Candidate<'_>,
        filters: Option<&ListFilters>,
        extra: Option<&ExtraFilters>,
    ) -> Result<bool> {
        let room_id = &candidate.membership.room_id;
        if let Some(filters) = filters {
            if let Some(is_invite) = filters.is_invite {
                if is_invite != (candidate.membership.membership == MembershipState::Invite) {
                    return Ok(false);
                }
            }
            if let Some(is_dm) = filters.is_dm {
                if is_dm != self.direct.contains(room_id) {
                    return Ok(false);
                }
            }
            if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
                let kind = self.room_type(candidate)?;
                let named = |types: &[ruma::directory::RoomTypeFilter]| {
                    types
                        .iter()
                        .any(|filter| filter.as_str() == kind.as_deref())
                };
                if (!filters.room_types.is_empty() && !named(&filters.room_types))
                    || named(&filters.not_room_types)
                {
                    return Ok(false);
                }
            }
            if let Some(is_encrypted) = filters.is_encrypted {
                let encrypted = self
                    .services
                    .rooms
                    .current_state_pdu(room_id, &StateEventType::RoomEncryption, "")?
                    .is_some();
                if is_encrypted != encrypted {
                    return Ok(false);
                }
            }
        }
        match extra {
            Some(extra) => self.passes_extra(room_id, extra),
            None => Ok(true),
        }
    }

    /// The `spaces`, `tags` and `not_tags` filters.
    fn passes_extra(&self, room_id: &RoomId, extra: &ExtraFilters) -> Result<bool> {
        if !extra.spaces.is_empty() {
            let mut in_space = false;
            for space in &extra.spaces {
                in_space |= self.is_child(space, room_id)?;
            }
            if !in_space {
                return Ok(false);
            }
        }
        if extra.tags.is_empty() && extra.not_tags.is_empty() {
            return Ok(true);
        }
        let tags = self
            .services
            .account_data
            .get(self.user, Some(room_id), "m.tag")?
            .unwrap_or_default();
        let has = |tag: &String| tags["tags"].get(tag).is_some();
        Ok(
            (extra.tags.is_empty() || extra.tags.iter().any(has))
                && !extra.not_tags.iter().any(has),
        )
    }

    /// The room's type from its create event (cached: it never changes).
    fn room_type(&self, candidate: &Candidate<'_>) -> Result<Option<String>> {
        let Some(short) = candidate.shortroomid else {
            return Ok(None);
        };
        if let Some(kind) = self.services.sliding.room_types.lock().get(&short) {
            return Ok(kind.clone());
        }
        let kind = self
            .services
            .rooms
            .current_state_pdu(
                &candidate.membership.room_id,
                &StateEventType::RoomCreate,
                "",
            )?
            .and_then(|create| create.content_value()["type"].as_str().map(str::to_owned));
        self.services
            .sliding
            .room_types
            .lock()
            .insert(short, kind.clone());
        Ok(kind)
    }
}

/// The rooms the user's `m.direct` account data names.
pub(super) fn direct_rooms(
    services: &Services,
    user: &ruma::UserId,
) -> Result<HashSet<OwnedRoomId>> {
    let direct = services
        .account_data
        .get(user, None, "m.direct")?
        .unwrap_or_default();
    Ok(direct
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(|rooms| rooms.as_array())
        .flatten()
        .filter_map(|room| room.as_str())
        .filter_map(|room| OwnedRoomId::try_from(room).ok())
        .collect())
}
