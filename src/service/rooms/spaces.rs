//! Spaces: room summaries, a space's children (`m.space.child` with a non-empty `via`) in the
//! spec's order, who may see a room in a hierarchy, and the depth-first walk behind
//! `/hierarchy` (rooms this server is in from its own state, others from the federation
//! `/hierarchy` of their `via` servers). Reads only; owns no tree.
//!
//! Room summaries, a space's links (`m.space.child` with a non-empty `via`) in the spec's order (`order`, then the link's timestamp, then room ID), who may see a room (anyone for public, knock and `world_readable` rooms; members, invitees and members of a restricted room's allowed rooms otherwise; for a server, having a joined member), and the `/hierarchy` walk: depth-first (Synapse's order, which Complement's paging expects), rooms this server is in from local state, others from the federation `/hierarchy` of their via servers (at most 10 requests a page), with the position (rooms to visit and visited) in the `next_batch` token.
//! Owns no tree.

use std::collections::{HashMap, HashSet};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{handshake, incoming, restricted};
use crate::{
    error::{Error, Result},
    service::Services,
};

/// At most this many rooms in one page of a hierarchy.
pub const MAX_LIMIT: usize = 50;

/// The deepest a walk goes below the requested room.
pub const MAX_DEPTH: usize = 50;

/// At most this many federation requests for one page, so that a space full of unreachable
/// children cannot hold a request for long.
const MAX_REMOTE_LOOKUPS: usize = 10;

/// The `order` of a space child, when valid: at most 50 printable ASCII characters.
fn valid_order(content: &Value) -> Option<&str> {
    content["order"].as_str().filter(|order| {
        order.len() <= 50 && order.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
    })
}

/// Whether a stripped `m.space.child` event links a child: a room ID state key and a non-empty
/// `via` list.
fn is_link(event: &Value) -> bool {
    event["type"] == "m.space.child"
        && event["state_key"]
            .as_str()
            .is_some_and(|key| <&RoomId>::try_from(key).is_ok())
        && event["content"]["via"]
            .as_array()
            .is_some_and(|via| via.iter().any(|server| server.as_str().is_some()))
}

/// Sorts child links as the spec orders a space's children: those with a valid `order` first,
/// by `order`, then by the `origin_server_ts` of the link, then by room ID.
fn sort_links(links: &mut [Value]) {
    links.sort_by(|a, b| {
        let key = |event: &Value| {
            (
                valid_order(&event["content"]).is_none(),
                valid_order(&event["content"]).map(str::to_owned),
                event["origin_server_ts"].as_u64().unwrap_or(0),
                event["state_key"].as_str().unwrap_or("").to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// The child room and via servers of a link.
fn link_target(event: &Value) -> Option<(OwnedRoomId, Vec<OwnedServerName>)> {
    let room = OwnedRoomId::try_from(event["state_key"].as_str()?).ok()?;
    let via = event["content"]["via"]
        .as_array()?
        .iter()
        .filter_map(|server| server.as_str())
        .filter_map(|server| OwnedServerName::try_from(server).ok())
        .collect();
    Some((room, via))
}

fn is_suggested(event: &Value) -> bool {
    event["content"]["suggested"] == true
}

/// The links of a space, as stripped events with `origin_server_ts`, in the spec's order.
pub fn children_state(services: &Services, room_id: &RoomId) -> Result<Vec<Value>> {
    let Some(hash) = services.rooms.current_state_hash(room_id)? else {
        return Ok(Vec::new());
    };
    let mut links: Vec<Value> = services
        .rooms
        .state_pdus(hash)?
        .iter()
        .filter(|pdu| pdu.kind.to_string() == "m.space.child")
        .map(|pdu| {
            let mut stripped = pdu.to_stripped_value();
            stripped["origin_server_ts"] = json!(pdu.origin_server_ts.get());
            stripped
        })
        .filter(is_link)
        .collect();
    sort_links(&mut links);
    Ok(links)
}

/// The summary of a room this server has state for (`room_summary` in the spec, with
/// `children_state` for a space and an empty list for any other room); `None` for an unknown
/// room.
pub fn summary(services: &Services, room_id: &RoomId) -> Result<Option<Value>> {
    let rooms = &services.rooms;
    let Some(hash) = rooms.current_state_hash(room_id)? else {
        return Ok(None);
    };
    let content = |kind: StateEventType| -> Result<Value> {
        Ok(rooms
            .state_pdu(hash, &kind, "")?
            .map(|pdu| pdu.content_value())
            .unwrap_or(Value::Null))
    };
    let create = content(StateEventType::RoomCreate)?;
    let join_rules = content(StateEventType::RoomJoinRules)?;
    let joined = rooms
        .members
        .iter_members(room_id, Some(MembershipState::Join))?
        .len();
    let mut summary = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable":
            content(StateEventType::RoomHistoryVisibility)?["history_visibility"] == "world_readable",
        "guest_can_join": content(StateEventType::RoomGuestAccess)?["guest_access"] == "can_join",
        "room_version": create["room_version"].as_str().unwrap_or("1"),
    });
    let mut optional = |field: &str, value: &Value| {
        if let Some(text) = value.as_str() {
            summary[field] = json!(text);
        }
    };
    optional("name", &content(StateEventType::RoomName)?["name"]);
    optional("topic", &content(StateEventType::RoomTopic)?["topic"]);
    optional(
        "canonical_alias",
        &content(StateEventType::RoomCanonicalAlias)?["alias"],
    );
    optional("avatar_url", &content(StateEventType::RoomAvatar)?["url"]);
    optional("join_rule", &join_rules["join_rule"]);
    optional("room_type", &create["type"]);
    optional(
        "encryption",
        &content(StateEventType::RoomEncryption)?["algorithm"],
    );
    if matches!(
        join_rules["join_rule"].as_str(),
        Some("restricted" | "knock_restricted")
    ) {
        summary["allowed_room_ids"] = json!(restricted::allowed_rooms(&join_rules));
    }
    summary["children_state"] = if create["type"] == "m.space" {
        json!(children_state(services, room_id)?)
    } else {
        json!([])
    };
    Ok(Some(summary))
}

/// Who asks to see a room in a hierarchy.
#[derive(Clone, Copy)]
pub enum Viewer<'a> {
    /// A local user (client `/hierarchy`).
    User(&'a UserId),
    /// Another server (federation `/hierarchy`).
    Server(&'a ServerName),
}

/// Whether a room with this summary may be shown: a room anyone may join or knock on, a
/// `world_readable` one, one the user is joined or invited to (the server: has a member joined
/// to), or a restricted room whose allowed rooms the viewer is in (as far as this server knows).
pub fn may_see(services: &Services, viewer: Viewer<'_>, summary: &Value) -> Result<bool> {
    if matches!(
        summary["join_rule"].as_str(),
        Some("public" | "knock" | "knock_restricted")
    ) || summary["world_readable"] == true
    {
        return Ok(true);
    }
    let Some(room_id) = summary["room_id"]
        .as_str()
        .and_then(|room| <&RoomId>::try_from(room).ok())
    else {
        return Ok(false);
    };
    let is_in = |room: &RoomId| -> Result<bool> {
        Ok(match viewer {
            Viewer::User(user) => services.rooms.members.is_joined(room, user)?,
            Viewer::Server(server) => services
                .rooms
                .members
                .servers_in_room(room)?
                .contains(server),
        })
    };
    if is_in(room_id)? {
        return Ok(true);
    }
    if let Viewer::User(user) = viewer {
        if services.rooms.members.get_membership(room_id, user)? == Some(MembershipState::Invite) {
            return Ok(true);
        }
    }
    if summary["join_rule"] == "restricted" {
        for allowed in summary["allowed_room_ids"].as_array().into_iter().flatten() {
            if let Some(allowed) = allowed
                .as_str()
                .and_then(|room| <&RoomId>::try_from(room).ok())
            {
                if is_in(allowed)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Keeps only the suggested links of a summary.
fn keep_suggested(summary: &mut Value) {
    if let Some(links) = summary["children_state"].as_array_mut() {
        links.retain(is_suggested);
    }
}

/// The answer to a federation `/hierarchy` request from `origin`: the room's summary, the
/// summaries of its children that this server is in and `origin` may see, and the children this
/// server is in that `origin` may not see. `M_NOT_FOUND` when this server is not in the room or
/// `origin` may not see it.
pub fn federation_hierarchy(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<Value> {
    let unknown = || Error::not_found(format!("room {room_id} is unknown to this server"));
    if !handshake::is_resident(services, room_id)?
        || !incoming::server_allowed(services, room_id, origin)?
    {
        return Err(unknown());
    }
    let mut room = summary(services, room_id)?.ok_or_else(unknown)?;
    if !may_see(services, Viewer::Server(origin), &room)? {
        return Err(unknown());
    }
    if suggested_only {
        keep_suggested(&mut room);
    }
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for link in room["children_state"].as_array().into_iter().flatten() {
        let Some((child, _)) = link_target(link) else {
            continue;
        };
        if !handshake::is_resident(services, &child)? {
            continue;
        }
        let Some(mut child_summary) = summary(services, &child)? else {
            continue;
        };
        if may_see(services, Viewer::Server(origin), &child_summary)? {
            if let Some(object) = child_summary.as_object_mut() {
                object.remove("children_state");
            }
            children.push(child_summary);
        } else {
            inaccessible.push(child);
        }
    }
    Ok(json!({ "room": room, "children": children, "inaccessible_children": inaccessible }))
}

/// Where a client's walk of a space stands between pages: the rooms still to visit (room, depth,
/// via servers; the next one last) and the rooms already visited, with the request's parameters,
/// which a later page must repeat.
#[derive(Serialize, Deserialize)]
pub struct WalkPosition {
    room: OwnedRoomId,
    suggested_only: bool,
    max_depth: usize,
    stack: Vec<(OwnedRoomId, usize, Vec<OwnedServerName>)>,
    seen: Vec<OwnedRoomId>,
}

impl WalkPosition {
    /// The position as a `next_batch` token (URL-safe base64 of JSON).
    pub fn to_token(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("a walk position serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a `from` token; `M_INVALID_PARAM` when it is not one of ours or the request's
    /// parameters differ from the first page's.
    pub fn from_token(
        token: &str,
        room_id: &RoomId,
        suggested_only: bool,
        max_depth: usize,
    ) -> Result<Self> {
        use base64::Engine;
        let invalid = || Error::invalid_param("unknown pagination token");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid())?;
        let position: Self = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if position.room != room_id {
            return Err(invalid());
        }
        if position.suggested_only != suggested_only || position.max_depth != max_depth {
            return Err(Error::invalid_param(
                "suggested_only and max_depth cannot change on paginated requests",
            ));
        }
        if position.stack.len() > 10_000 || position.seen.len() > 100_000 {
            return Err(invalid());
        }
        Ok(position)
    }
}

/// What one page of a walk asks for.
pub struct WalkRequest<'a> {
    pub user: &'a UserId,
    pub room_id: &'a RoomId,
    pub suggested_only: bool,
    pub max_depth: usize,
    pub limit: usize,
}

/// One page of a client's hierarchy walk: rooms in depth-first order (a space, then each of its
/// children in the spec's order with their own children), only those the user may see, and the
/// position to continue from when rooms remain. `M_FORBIDDEN` when the user may not see the
/// requested room.
#[tracing::instrument(skip_all, fields(room_id = %request.room_id))]
pub async fn walk(
    services: &Services,
    request: &WalkRequest<'_>,
    from: Option<WalkPosition>,
) -> Result<(Vec<Value>, Option<WalkPosition>)> {
    let root = request.room_id;
    let first_page = from.is_none();
    let (mut stack, mut seen) = match from {
        Some(position) => (position.stack, position.seen.into_iter().collect()),
        None => {
            let via: Vec<OwnedServerName> = root
                .server_name()
                .map(ToOwned::to_owned)
                .into_iter()
                .collect();
            (vec![(root.to_owned(), 0, via)], HashSet::new())
        }
    };
    let mut remote = RemoteSummaries::default();
    let mut rooms = Vec::new();
    while rooms.len() < request.limit {
        let Some((room, depth, via)) = stack.pop() else {
            break;
        };
        if !seen.insert(room.clone()) {
            continue;
        }
        let is_root = first_page && depth == 0;
        let forbidden = || Error::forbidden(format!("{} may not see room {root}", request.user));
        let Some(mut summary) =
            lookup(services, &room, &via, request.suggested_only, &mut remote).await?
        else {
            if is_root {
                return Err(forbidden());
            }
            continue;
        };
        if !may_see(services, Viewer::User(request.user), &summary)? {
            if is_root {
                return Err(forbidden());
            }
            continue;
        }
        if request.suggested_only {
            keep_suggested(&mut summary);
        }
        if let Some(links) = summary["children_state"].as_array_mut() {
            links.retain(is_link);
            sort_links(links);
        }
        if summary["room_type"] == "m.space" && depth < request.max_depth {
            for link in summary["children_state"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
            {
                if let Some((child, child_via)) = link_target(link) {
                    if !seen.contains(&child) {
                        stack.push((child, depth + 1, child_via));
                    }
                }
            }
        }
        rooms.push(summary);
    }
    stack.retain(|(room, _, _)| !seen.contains(room));
    let next = (!stack.is_empty()).then(|| WalkPosition {
        room: root.to_owned(),
        suggested_only: request.suggested_only,
        max_depth: request.max_depth,
        stack,
        seen: seen.into_iter().collect(),
    });
    Ok((rooms, next))
}

/// What other servers told this page of a walk: summaries of children that came with their
/// parent, and rooms they said the requester may not see.
#[derive(Default)]
struct RemoteSummaries {
    children: HashMap<OwnedRoomId, Value>,
    inaccessible: HashSet<OwnedRoomId>,
    lookups: usize,
}

/// The summary of one room, as a walk finds it (see [`lookup`]): from this server's state, else
/// from the federation `/hierarchy` of the `via` servers, else from whatever state this server
/// still has. For `room_summary`.
pub async fn lookup_one(
    services: &Services,
    room_id: &RoomId,
    via: &[OwnedServerName],
) -> Result<Option<Value>> {
    lookup(
        services,
        room_id,
        via,
        true,
        &mut RemoteSummaries::default(),
    )
    .await
}

/// The summary of a room for a walk: from this server's state when it is in the room, from a
/// child summary another server already sent (unless it is a space, whose links that summary
/// lacks), else from the federation `/hierarchy` of its via servers, else from whatever state
/// this server still has.
async fn lookup(
    services: &Services,
    room_id: &RoomId,
    via: &[OwnedServerName],
    suggested_only: bool,
    remote: &mut RemoteSummaries,
) -> Result<Option<Value>> {
    if handshake::is_resident(services, room_id)? {
        return summary(services, room_id);
    }
    if remote.inaccessible.contains(room_id) {
        return Ok(None);
    }
    if let Some(child) = remote.children.get(room_id) {
        if child["room_type"] != "m.space" {
            let mut child = child.clone();
            child["children_state"] = json!([]);
            return Ok(Some(child));
        }
    }
    let own = services.globals.server_name();
    for server in via.iter().filter(|server| *server != own) {
        if remote.lookups >= MAX_REMOTE_LOOKUPS {
            break;
        }
        remote.lookups += 1;
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
            crate::federation::encode(room_id.as_str())
        );
        match services
            .federation_request(server, http::Method::GET, &path, None)
            .await
        {
            Ok(answer) => {
                if let Some(room) = remote_room(&answer, room_id, remote) {
                    return Ok(Some(room));
                }
            }
            Err(error) => {
                tracing::debug!(%server, %error, "hierarchy of a child room failed");
            }
        }
    }
    summary(services, room_id)
}

/// Takes a federation `/hierarchy` answer apart: the room's summary if it is the room asked
/// for, with the children and inaccessible children kept for later in the walk.
fn remote_room(answer: &Value, room_id: &RoomId, remote: &mut RemoteSummaries) -> Option<Value> {
    let room = answer
        .get("room")
        .filter(|room| room["room_id"] == room_id.as_str())?;
    for child in answer["children"].as_array().into_iter().flatten() {
        if let Some(child_id) = child["room_id"]
            .as_str()
            .and_then(|room| OwnedRoomId::try_from(room).ok())
        {
            remote.children.insert(child_id, child.clone());
        }
    }
    for child in answer["inaccessible_children"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(child_id) = child
            .as_str()
            .and_then(|room| OwnedRoomId::try_from(room).ok())
        {
            remote.inaccessible.insert(child_id);
        }
    }
    let mut room = room.clone();
    if !room["children_state"].is_array() {
        room["children_state"] = json!([]);
    }
    Some(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(room: &str, order: Option<&str>, ts: u64) -> Value {
        let mut content = json!({ "via": ["x"] });
        if let Some(order) = order {
            content["order"] = json!(order);
        }
        json!({ "type": "m.space.child", "state_key": room, "content": content, "origin_server_ts": ts })
    }

    #[test]
    fn children_sort_by_order_then_timestamp_then_room() {
        let mut links = vec![
            link("!d:x", None, 1),
            link("!c:x", Some("b"), 9),
            link("!b:x", None, 1),
            link("!a:x", Some("a"), 10),
            link("!e:x", Some("\u{7f}bad"), 0),
        ];
        sort_links(&mut links);
        let order: Vec<&str> = links
            .iter()
            .map(|l| l["state_key"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["!a:x", "!c:x", "!e:x", "!b:x", "!d:x"]);
    }

    #[test]
    fn links_need_a_room_and_a_via() {
        assert!(is_link(&link("!a:x", None, 0)));
        let mut empty = link("!a:x", None, 0);
        empty["content"] = json!({});
        assert!(!is_link(&empty));
        empty["content"] = json!({ "via": [] });
        assert!(!is_link(&empty));
        assert!(!is_link(&link("not-a-room", None, 0)));
    }
}
