//! User directory search.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    api::client::user_directory::search_users::{self, v3::User},
    events::room::member::MembershipState,
    OwnedMxcUri, OwnedUserId,
};
use serde_json::Value;

use crate::{
    api::Ctx,
    error::Result,
    service::{privacy, Services},
};

/// The most results one search answers.
const MAX_LIMIT: usize = 100;

/// `POST /_matrix/client/v3/user_directory/search`
///
/// Searches local users who share a room with the searcher or are joined to a room published in
/// the directory, by user ID and display name (case-insensitive substring). A user without a
/// display name or avatar has no `display_name` or `avatar_url` field.
pub async fn search_users(
    services: Arc<Services>,
    ctx: Ctx,
    request: search_users::v3::Request,
) -> Result<search_users::v3::Response> {
    let term = request.search_term.to_lowercase();
    let limit = usize::try_from(u64::from(request.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let mut results = Vec::new();
    let mut limited = false;
    for user in visible_users(&services, &ctx)? {
        let viewer = privacy::Viewer::User(ctx.user());
        let profile = privacy::visible_profile(&services, &user, viewer)?.unwrap_or_default();
        let display_name = profile.get("displayname").and_then(Value::as_str);
        if !user.as_str().to_lowercase().contains(&term)
            && !display_name.unwrap_or("").to_lowercase().contains(&term)
        {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        let mut found = User::new(user.clone());
        found.display_name = display_name.map(str::to_owned);
        found.avatar_url = profile
            .get("avatar_url")
            .and_then(Value::as_str)
            .map(OwnedMxcUri::from);
        results.push(found);
    }
    Ok(search_users::v3::Response::new(results, limited))
}

/// The users joined to a room the searcher is joined to or to a published room.
fn visible_users(services: &Services, ctx: &Ctx) -> Result<BTreeSet<OwnedUserId>> {
    let mut visible = BTreeSet::new();
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
    Ok(visible)
}
