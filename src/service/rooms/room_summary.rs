//! Room summaries for clients (`GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`, spec
//! v1.15, MSC3266): what a client shows before joining a room, from this server's state when it
//! is in the room, else from the federation `/hierarchy` of the `via` servers (or of the alias's
//! servers, or of the room ID's server).
//!
//! Who may see a summary is what `/hierarchy` allows (`spaces::may_see`: public, knock and
//! `world_readable` rooms to anyone; otherwise members, invitees and members of a restricted
//! room's allowed rooms), plus a local user's own invite, knock or earlier membership. Anyone
//! else gets `404 M_NOT_FOUND`, as for a room that does not exist, so the answer does not tell
//! which rooms exist.

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedServerName, UserId};
use serde_json::Value;

use super::{alias, spaces};
use crate::{
    error::{Error, Result},
    service::Services,
};

/// The summary of a room or alias for `viewer` (`None` when unauthenticated), and the viewer's
/// membership when they have one.
pub async fn room_summary(
    services: &Services,
    viewer: Option<&UserId>,
    id_or_alias: &str,
    via: Vec<OwnedServerName>,
) -> Result<(Value, Option<MembershipState>)> {
    let (room_id, mut servers) = resolve(services, id_or_alias).await?;
    servers.extend(via);
    if let Some(server) = room_id.server_name() {
        servers.push(server.to_owned());
    }
    let membership = match viewer {
        Some(user) => services.rooms.members.get_membership(&room_id, user)?,
        None => None,
    };
    let mut seen = std::collections::HashSet::new();
    servers.retain(|server| seen.insert(server.clone()));
    let summary = spaces::lookup_one(services, &room_id, &servers).await?;
    let not_found = || Error::not_found(format!("room {id_or_alias} not found"));
    let mut summary = summary.ok_or_else(not_found)?;
    let visible = match viewer {
        Some(user) => {
            membership.is_some() || spaces::may_see(services, spaces::Viewer::User(user), &summary)?
        }
        None => {
            matches!(
                summary["join_rule"].as_str(),
                Some("public" | "knock" | "knock_restricted")
            ) || summary["world_readable"] == true
        }
    };
    if !visible {
        return Err(not_found());
    }
    if let Some(object) = summary.as_object_mut() {
        object.remove("children_state");
    }
    Ok((summary, membership))
}

/// A room ID as it is, or an alias resolved here or by its server, with the servers the
/// directory names.
async fn resolve(
    services: &Services,
    id_or_alias: &str,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    if !id_or_alias.starts_with('#') {
        let room_id = OwnedRoomId::try_from(id_or_alias)
            .map_err(|_| Error::invalid_param(format!("invalid room ID or alias {id_or_alias}")))?;
        return Ok((room_id, Vec::new()));
    }
    let alias_id = ruma::OwnedRoomAliasId::try_from(id_or_alias)
        .map_err(|_| Error::invalid_param(format!("invalid alias {id_or_alias}")))?;
    if alias_id.server_name() == services.globals.server_name() {
        let (room_id, _) = services
            .rooms
            .alias
            .get(&alias_id)?
            .ok_or_else(|| Error::not_found(format!("alias {alias_id} not found")))?;
        return Ok((room_id, Vec::new()));
    }
    alias::resolve_remote(services, &alias_id).await
}
