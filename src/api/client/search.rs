//! Server-side search (`room_events`), over the index of `service::rooms::search`.

use std::sync::Arc;

use ruma::UserId;
use serde_json::{json, Map, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        filter::RoomEventFilter,
        rooms::{
            search::{self, Order, SearchKey, SearchRequest, MAX_QUERY_WORDS},
            search_results::{self, ContextRequest, RoomEventsQuery},
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

/// `POST /_matrix/client/v3/search`
///
/// Only the `room_events` category exists; a body naming only other categories is
/// `M_INVALID_PARAM`, a missing `search_categories` or `search_term` `M_BAD_JSON`.
/// Every word of `search_term` must occur in a result (AND); `rank` counts their occurrences.
/// Results come from every room the user is in or has left (up to the leave), as far as the
/// history visibility lets them see. Groups (`room_id`, `sender`) list the results of the
/// current page only and carry no `next_batch` of their own; the top-level `next_batch` pages
/// through every group.
/// Untyped: ruma's `Categories` drops a category it does not know, which is `M_INVALID_PARAM`
/// here, its `EventContext` refuses a negative `before_limit` as `M_BAD_JSON`, not
/// `M_INVALID_PARAM`, and its response leaves out `results` and `highlights` when they are empty
/// (test `search::bad_search_requests_are_refused`).
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
    let query = parse_query(criteria, ctx.user(), ctx.query("next_batch"))?;
    let viewer = (ctx.user(), ctx.device());
    let room_events = search_results::room_events(&services, viewer, query)?;
    Ok(json!({ "search_categories": { "room_events": room_events } }))
}

/// The `room_events` criteria, checked: `M_BAD_JSON` for a field of the wrong type,
/// `M_INVALID_PARAM` for a value out of range.
fn parse_query<'a>(
    criteria: &Map<String, Value>,
    user: &'a UserId,
    next_batch: Option<&'a str>,
) -> Result<RoomEventsQuery<'a>> {
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
    let search = SearchRequest {
        user,
        words,
        keys,
        filter,
        order,
        limit,
        next_batch,
    };
    Ok(RoomEventsQuery {
        search,
        context,
        include_state,
        group_by,
    })
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
