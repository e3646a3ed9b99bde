//! Server-side search (`room_events`), over the index of `service::rooms::search`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::message::format_token;
use crate::{
    error::{Error, Result},
    http::{Ctx, HandlerResult},
    service::{
        filter::RoomEventFilter,
        rooms::{
            members::RoomMembership,
            pdu::{client_event, Pdu},
            search::{self, Found, Order, SearchKey, SearchRequest, MAX_QUERY_WORDS},
            timeline::{read::TopoPos, PduId},
            visibility,
        },
        Services,
    },
};

/// Default and largest number of results per page.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// Default and largest number of context events on each side of a result.
const DEFAULT_CONTEXT: usize = 5;
const MAX_CONTEXT: usize = 20;
/// Longest `search_term`, in bytes.
const MAX_TERM_BYTES: usize = 1000;

/// What `event_context` asked for.
struct ContextRequest {
    before: usize,
    after: usize,
    include_profile: bool,
}

/// `POST /_matrix/client/v3/search`
///
/// Only the `room_events` category exists; a body naming only other categories is
/// `M_INVALID_PARAM`, a missing `search_categories` or `search_term` `M_BAD_JSON`.
/// Every word of `search_term` must occur in a result (AND); `rank` counts their occurrences.
/// Results come from every room the user is in or has left (up to the leave), as far as the
/// history visibility lets them see. Groups (`room_id`, `sender`) list the results of the
/// current page only and carry no `next_batch` of their own; the top-level `next_batch` pages
/// through every group.
pub async fn search(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let categories = ctx
        .body
        .get("search_categories")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("search_categories must be an object"))?;
    let Some(criteria) = categories.get("room_events") else {
        if let Some(unknown) = categories.keys().next() {
            return Err(Error::invalid_param(format!(
                "unknown search category {unknown}"
            )));
        }
        return Ok(json!({ "search_categories": {} }));
    };
    let criteria = criteria
        .as_object()
        .ok_or_else(|| Error::bad_json("room_events must be an object"))?;
    let term = criteria
        .get("search_term")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("room_events needs a search_term string"))?;
    if term.len() > MAX_TERM_BYTES {
        return Err(Error::invalid_param(format!(
            "search_term is longer than {MAX_TERM_BYTES} bytes"
        )));
    }
    let mut words: Vec<String> = Vec::new();
    for word in search::words(term) {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    if words.len() > MAX_QUERY_WORDS {
        return Err(Error::invalid_param(format!(
            "search_term has more than {MAX_QUERY_WORDS} words"
        )));
    }
    let keys = parse_keys(criteria.get("keys"))?;
    let filter_value = match criteria.get("filter") {
        None | Some(Value::Null) => Value::Null,
        Some(value @ Value::Object(_)) => value.clone(),
        Some(_) => return Err(Error::bad_json("filter must be an object")),
    };
    let filter = RoomEventFilter::from_value(&filter_value);
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let order = match criteria.get("order_by") {
        None | Some(Value::Null) => Order::Rank,
        Some(Value::String(order)) if order == "rank" => Order::Rank,
        Some(Value::String(order)) if order == "recent" => Order::Recent,
        Some(Value::String(order)) => {
            return Err(Error::invalid_param(format!("unknown order_by {order}")))
        }
        Some(_) => return Err(Error::bad_json("order_by must be a string")),
    };
    let context = parse_context(criteria.get("event_context"))?;
    let include_state = match criteria.get("include_state") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(include)) => *include,
        Some(_) => return Err(Error::bad_json("include_state must be a boolean")),
    };
    let group_by = parse_groups(criteria.get("groupings"))?;

    let page = if words.is_empty() {
        search::SearchPage {
            count: 0,
            results: Vec::new(),
            next_batch: None,
        }
    } else {
        search::search(
            &services,
            &SearchRequest {
                user: ctx.user(),
                words: words.clone(),
                keys,
                filter,
                order,
                limit,
                next_batch: ctx.query("next_batch"),
            },
        )?
    };

    let viewer = (ctx.user(), ctx.device());
    let ignored = services.account_data.ignored_users(ctx.user())?;
    let mut memberships: HashMap<OwnedRoomId, Option<RoomMembership>> = HashMap::new();
    let mut results = Vec::new();
    let mut shown: Vec<(OwnedRoomId, OwnedUserId, String)> = Vec::new();
    for found in &page.results {
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
        if let Some(context) = &context {
            let membership = match memberships.get(&found.room_id) {
                Some(membership) => membership.clone(),
                None => {
                    let membership = services
                        .rooms
                        .members
                        .get_user_room(ctx.user(), &found.room_id)?;
                    memberships.insert(found.room_id.clone(), membership.clone());
                    membership
                }
            };
            let around = Around {
                services: &services,
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

    let mut room_events = json!({
        "count": page.count,
        "highlights": words,
        "results": results,
    });
    if let Some(next_batch) = page.next_batch {
        room_events["next_batch"] = json!(next_batch);
    }
    if include_state {
        room_events["state"] = room_state(&services, ctx.user(), &page.results)?;
    }
    if !group_by.is_empty() {
        room_events["groups"] = groups(&group_by, &shown);
    }
    Ok(json!({ "search_categories": { "room_events": room_events } }))
}

fn parse_keys(value: Option<&Value>) -> Result<Vec<SearchKey>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|key| {
                let key = key
                    .as_str()
                    .ok_or_else(|| Error::bad_json("keys must be strings"))?;
                SearchKey::parse(key)
                    .ok_or_else(|| Error::invalid_param(format!("unknown search key {key}")))
            })
            .collect(),
        Some(_) => Err(Error::bad_json("keys must be an array")),
    }
}

fn parse_context(value: Option<&Value>) -> Result<Option<ContextRequest>> {
    let context = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(context)) => context,
        Some(_) => return Err(Error::bad_json("event_context must be an object")),
    };
    let limit = |name: &str| -> Result<usize> {
        match context.get(name) {
            None | Some(Value::Null) => Ok(DEFAULT_CONTEXT),
            Some(value) => value
                .as_u64()
                .map(|limit| (limit as usize).min(MAX_CONTEXT))
                .ok_or_else(|| Error::invalid_param(format!("{name} must be a whole number"))),
        }
    };
    let include_profile = match context.get("include_profile") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(include)) => *include,
        Some(_) => return Err(Error::bad_json("include_profile must be a boolean")),
    };
    Ok(Some(ContextRequest {
        before: limit("before_limit")?,
        after: limit("after_limit")?,
        include_profile,
    }))
}

fn parse_groups(value: Option<&Value>) -> Result<Vec<String>> {
    let Some(groupings) = value.filter(|value| !value.is_null()) else {
        return Ok(Vec::new());
    };
    let group_by = match groupings.get("group_by") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(group_by)) => group_by,
        Some(_) => return Err(Error::bad_json("group_by must be an array")),
    };
    group_by
        .iter()
        .map(|group| match group.get("key").and_then(Value::as_str) {
            Some(key @ ("room_id" | "sender")) => Ok(key.to_owned()),
            Some(key) => Err(Error::invalid_param(format!("unknown group key {key}"))),
            None => Err(Error::bad_json("a group needs a key string")),
        })
        .collect()
}

/// What reading around a result needs.
struct Around<'a> {
    services: &'a Services,
    viewer: (&'a UserId, &'a str),
    membership: Option<&'a RoomMembership>,
    ignored: &'a std::collections::HashSet<OwnedUserId>,
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
fn groups(group_by: &[String], shown: &[(OwnedRoomId, OwnedUserId, String)]) -> Value {
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
