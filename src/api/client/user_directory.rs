//! User directory search.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{events::room::member::MembershipState, OwnedUserId};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::Services,
};

/// `POST /_matrix/client/v3/user_directory/search`
///
/// Searches local users who share a room with the searcher or are joined to a room published in
/// the directory, by user ID and display name (case-insensitive substring).
pub async fn search_users(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let term = ctx
        .body
        .get("search_term")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing search_term"))?
        .to_lowercase();
    let limit = ctx
        .body
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .min(100) as usize;
    let mut visible: BTreeSet<OwnedUserId> = BTreeSet::new();
    let mut rooms: Vec<_> = services.rooms.members.iter_joined_rooms(ctx.user())?;
    rooms.extend(services.rooms.alias.iter_public()?);
    for room_id in rooms {
        for (user, _) in services
            .rooms
            .members
            .iter_members(&room_id, Some(MembershipState::Join))?
        {
            visible.insert(user);
        }
    }
    let mut results = Vec::new();
    let mut limited = false;
    for user in visible {
        let profile = services.users.get_profile(&user)?.unwrap_or_default();
        let display_name = profile
            .get("displayname")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !user.as_str().to_lowercase().contains(&term)
            && !display_name.to_lowercase().contains(&term)
        {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        results.push(json!({ "user_id": user, "display_name": profile.get("displayname"), "avatar_url": profile.get("avatar_url") }));
    }
    Ok(json!({ "results": results, "limited": limited }))
}
