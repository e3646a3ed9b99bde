//! Room tags: `m.tag` room account data, read and changed one tag at a time.

use std::sync::Arc;

use ruma::api::client::tag::delete_tag;
use serde_json::{json, Map, Value};

use super::check_owner;
use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{notify::Topic, Services},
};

/// The room account data type that holds a user's tags on a room.
const TAG_TYPE: &str = "m.tag";
/// Longest tag name, in bytes (the spec gives no limit; Synapse allows 255 characters).
const MAX_TAG_BYTES: usize = 255;

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
///
/// A room without tags answers `{"tags": {}}`; each tag's content is given back as it was set.
/// Untyped: ruma's `Tags` keeps only `order` of a tag's content and writes it as a float (`1`
/// becomes `1.0`).
pub async fn get_room_tags(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    let room_id = ctx.room_param(1)?;
    let tags = services
        .account_data
        .get(ctx.user(), Some(&room_id), TAG_TYPE)?
        .and_then(|content| content.get("tags").filter(|tags| tags.is_object()).cloned())
        .unwrap_or_else(|| json!({}));
    Ok(json!({ "tags": tags }))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
///
/// The body is the tag's content: an object whose optional `order` is a number in `[0, 1]`
/// (`M_BAD_JSON` when it is not a number, `M_INVALID_PARAM` when it is out of range); the
/// content is stored whole, with any other fields, as Synapse does.
/// Untyped: ruma's `TagInfo` keeps only `order`.
pub async fn set_room_tag(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_owner(&ctx)?;
    let room_id = ctx.room_param(1)?;
    let tag = check_tag(ctx.param(2))?;
    let content = ctx
        .body
        .as_object()
        .ok_or_else(|| Error::bad_json("the tag content must be an object"))?
        .clone();
    if let Some(order) = content.get("order") {
        let order = order
            .as_f64()
            .ok_or_else(|| Error::bad_json("order must be a number"))?;
        if !(0.0..=1.0).contains(&order) {
            return Err(Error::invalid_param("order must be between 0 and 1"));
        }
    }
    services.account_data.update(
        &services.globals,
        (ctx.user(), Some(&room_id), TAG_TYPE),
        |current| {
            let mut tags = current_tags(current);
            tags.insert(tag.to_owned(), Value::Object(content));
            Ok(Some(json!({ "tags": tags })))
        },
    )?;
    services.notifier.wake(Topic::User(ctx.user().to_string()));
    Ok(json!({}))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
///
/// Removing a tag the room does not have succeeds and changes nothing.
pub async fn delete_room_tag(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_tag::v3::Request,
) -> Result<delete_tag::v3::Response> {
    ctx.require_self(&request.user_id, "change the tags of")?;
    let tag = check_tag(&request.tag)?;
    let mut changed = false;
    services.account_data.update(
        &services.globals,
        (ctx.user(), Some(&request.room_id), TAG_TYPE),
        |current| {
            let mut tags = current_tags(current);
            changed = tags.remove(tag).is_some();
            Ok(changed.then(|| json!({ "tags": tags })))
        },
    )?;
    if changed {
        services.notifier.wake(Topic::User(ctx.user().to_string()));
    }
    Ok(delete_tag::v3::Response::new())
}

/// A tag name of 1 to [`MAX_TAG_BYTES`] bytes, else `M_INVALID_PARAM`.
fn check_tag(tag: &str) -> Result<&str> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_param(format!(
            "a tag name has 1 to {MAX_TAG_BYTES} bytes"
        )));
    }
    Ok(tag)
}

fn current_tags(content: Option<Value>) -> Map<String, Value> {
    match content.and_then(|mut content| content.get_mut("tags").map(Value::take)) {
        Some(Value::Object(tags)) => tags,
        _ => Map::new(),
    }
}
