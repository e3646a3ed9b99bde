//! The `room_events` answer of `POST /search`: a page of results from the index of
//! [`super::search`], each with the events around it, the rooms' state and the groups.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ruma::{events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::{
        rooms::{
            history::format_token,
            members::RoomMembership,
            pdu::client_event,
            pdu::Pdu,
            search::{search, Found, SearchPage, SearchRequest},
            timeline::{read::TopoPos, PduId},
            visibility,
        },
        Services,
    },
};

/// What `event_context` asked for.
pub struct ContextRequest {
    pub before: usize,
    pub after: usize,
    pub include_profile: bool,
}

/// What a `room_events` search asks for, checked.
pub struct RoomEventsQuery<'a> {
    /// The query of the index; its `words` are the distinct words of `search_term`.
    pub search: SearchRequest<'a>,
    pub context: Option<ContextRequest>,
    pub include_state: bool,
    /// `room_id` and `sender`, the keys to group by.
    pub group_by: Vec<String>,
}

/// The `room_events` answer of `POST /search`: a page of results with their context (see
/// [`Around::context`]), the count of every result, the rooms' state with `include_state`, and
/// the groups of the page's results, which carry no `next_batch` of their own (the top-level
/// `next_batch` pages through every group).
#[tracing::instrument(skip_all, fields(user = %viewer.0))]
pub fn room_events(
    services: &Services,
    viewer: (&UserId, &str),
    query: RoomEventsQuery<'_>,
) -> Result<Value> {
    let page = if query.search.words.is_empty() {
        SearchPage {
            count: 0,
            results: Vec::new(),
            next_batch: None,
        }
    } else {
        search(services, &query.search)?
    };
    let (results, shown) = results(services, viewer, &page.results, query.context.as_ref())?;
    let mut room_events = json!({
        "count": page.count,
        "highlights": query.search.words,
        "results": results,
    });
    if let Some(next_batch) = page.next_batch {
        room_events["next_batch"] = json!(next_batch);
    }
    if query.include_state {
        room_events["state"] = room_state(services, viewer.0, &page.results)?;
    }
    if !query.group_by.is_empty() {
        room_events["groups"] = groups(&query.group_by, &shown);
    }
    Ok(room_events)
}

/// The room, sender and event ID of a result shown, for the groups.
type Shown = (OwnedRoomId, OwnedUserId, String);

/// The page's results in client form, with their context when asked for, and the room, sender
/// and event ID of each for the groups.
fn results(
    services: &Services,
    viewer: (&UserId, &str),
    found_results: &[Found],
    context: Option<&ContextRequest>,
) -> Result<(Vec<Value>, Vec<Shown>)> {
    let ignored = services.account_data.ignored_users(viewer.0)?;
    let mut memberships: HashMap<OwnedRoomId, Option<RoomMembership>> = HashMap::new();
    let mut results = Vec::new();
    let mut shown: Vec<Shown> = Vec::new();
    for found in found_results {
        let Some(pdu) = services.rooms.timeline.get_pdu_at(PduId {
            shortroomid: found.shortroomid,
            count: found.count,
        })?
        else {
            continue;
        };
        let mut result = json!({
            "rank": found.rank,
            "result": client_event(&pdu, &found.room_id, Some(viewer)),
        });
        if let Some(context) = context {
            let membership = match memberships.get(&found.room_id) {
                Some(membership) => membership.clone(),
                None => {
                    let membership = services
                        .rooms
                        .members
                        .get_user_room(viewer.0, &found.room_id)?;
                    memberships.insert(found.room_id.clone(), membership.clone());
                    membership
                }
            };
            let around = Around {
                services,
                viewer,
                membership: membership.as_ref(),
                ignored: &ignored,
            };
            result["context"] = around.context(found, &pdu, context)?;
        }
        shown.push((
            found.room_id.clone(),
            pdu.sender.clone(),
            pdu.event_id.to_string(),
        ));
        results.push(result);
    }
    Ok((results, shown))
}

/// What reading around a result needs.
struct Around<'a> {
    services: &'a Services,
    viewer: (&'a UserId, &'a str),
    membership: Option<&'a RoomMembership>,
    ignored: &'a HashSet<OwnedUserId>,
}

impl Around<'_> {
    /// The events just before and after a result that the user may see (non-state events of
    /// ignored users left out), tokens for paginating on from them, and with `include_profile`
    /// the senders' display names and avatars from the state at the result.
    fn context(&self, found: &Found, pdu: &Pdu, request: &ContextRequest) -> Result<Value> {
        let here = TopoPos {
            depth: u64::from(pdu.depth),
            count: found.count,
        };
        let (before, start) = self.side(
            &found.room_id,
            found.shortroomid,
            here,
            true,
            request.before,
        )?;
        let (after, end) = self.side(
            &found.room_id,
            found.shortroomid,
            here,
            false,
            request.after,
        )?;
        let mut context = json!({ "start": format_token(start), "end": format_token(end) });
        if request.include_profile {
            let senders: BTreeSet<&UserId> = before
                .iter()
                .chain(&after)
                .map(|event| &*event.sender)
                .chain([&*pdu.sender])
                .collect();
            context["profile_info"] = self.profiles(found.shorteventid, &senders)?;
        }
        let room_id: &RoomId = &found.room_id;
        let events = |pdus: &[Pdu]| -> Vec<Value> {
            pdus.iter()
                .map(|event| client_event(event, room_id, Some(self.viewer)))
                .collect()
        };
        context["events_before"] = Value::Array(events(&before));
        context["events_after"] = Value::Array(events(&after));
        Ok(context)
    }

    /// Up to `wanted` visible events on one side, nearest first (as `/context` lists them),
    /// scanning a bounded number, with the last position scanned.
    fn side(
        &self,
        room_id: &RoomId,
        shortroomid: u64,
        here: TopoPos,
        backwards: bool,
        wanted: usize,
    ) -> Result<(Vec<Pdu>, TopoPos)> {
        let mut events = Vec::new();
        let mut last = here;
        if wanted == 0 {
            return Ok((events, last));
        }
        let user = self.viewer.0;
        for entry in self
            .services
            .rooms
            .timeline
            .iter_topo(shortroomid, here, backwards)
            .take(wanted * 4)
        {
            let (position, event) = entry?;
            last = position;
            let hidden = event.state_key.is_none() && self.ignored.contains(&event.sender);
            if hidden
                || event.room_id.as_deref().is_some_and(|room| room != room_id)
                || !visibility::user_can_see(
                    self.services,
                    user,
                    self.membership,
                    position.count,
                    &event,
                )?
            {
                continue;
            }
            events.push(event);
            if events.len() >= wanted {
                break;
            }
        }
        Ok((events, last))
    }

    /// Display names and avatars of `senders` in the state after the result.
    fn profiles(&self, shorteventid: u64, senders: &BTreeSet<&UserId>) -> Result<Value> {
        let rooms = &self.services.rooms;
        let mut profiles = Map::new();
        let Some((_, after)) = rooms.state.get_event_state(shorteventid)? else {
            return Ok(Value::Object(profiles));
        };
        for sender in senders {
            let Some(member) =
                rooms.state_pdu(after, &StateEventType::RoomMember, sender.as_str())?
            else {
                continue;
            };
            let content = member.content_value();
            let mut profile = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(value) = content.get(field).filter(|value| value.is_string()) {
                    profile.insert(field.to_owned(), value.clone());
                }
            }
            profiles.insert(sender.to_string(), Value::Object(profile));
        }
        Ok(Value::Object(profiles))
    }
}

/// The state of each room with a result on this page, as far as the user may read it.
fn room_state(services: &Services, user: &UserId, results: &[Found]) -> Result<Value> {
    let rooms: BTreeSet<&RoomId> = results.iter().map(|found| &*found.room_id).collect();
    let mut state = Map::new();
    for room_id in rooms {
        let Some(readable) = visibility::readable_state(services, room_id, user)? else {
            continue;
        };
        let events: Vec<Value> = services
            .rooms
            .state_pdus(readable.shortstatehash)?
            .iter()
            .map(|pdu| client_event(pdu, room_id, None))
            .collect();
        state.insert(room_id.to_string(), Value::Array(events));
    }
    Ok(Value::Object(state))
}

/// The page's results by room or sender, numbered in the order the groups first appear.
fn groups(group_by: &[String], shown: &[Shown]) -> Value {
    let mut groups = Map::new();
    for key in group_by {
        let mut by_value: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        for (room_id, sender, event_id) in shown {
            let value = if key == "room_id" {
                room_id.to_string()
            } else {
                sender.to_string()
            };
            let next_order = by_value.len() + 1;
            by_value
                .entry(value)
                .or_insert_with(|| (next_order, Vec::new()))
                .1
                .push(event_id.clone());
        }
        let group: Map<String, Value> = by_value
            .into_iter()
            .map(|(value, (order, results))| (value, json!({ "order": order, "results": results })))
            .collect();
        groups.insert(key.clone(), Value::Object(group));
    }
    Value::Object(groups)
}
