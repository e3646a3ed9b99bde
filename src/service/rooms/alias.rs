//! Room aliases and the public room directory.
//!
//! Deleting an alias takes it out of the room's `m.room.canonical_alias` when the deleting user may send that event.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};

use ruma::events::StateEventType;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    service::Services,
    store::{key, Batch, Db, Tree},
};

/// Owns `alias_roomid` (alias → room ID 0xff creator user ID), `roomidalias_` (room ID 0xff alias
/// → empty) and `publicroomid_` (room ID → empty: rooms published in the directory).
pub struct Aliases {
    alias_roomid: Tree,
    roomidalias: Tree,
    publicroomid: Tree,
}

impl Aliases {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            alias_roomid: db.tree("alias_roomid"),
            roomidalias: db.tree("roomidalias_"),
            publicroomid: db.tree("publicroomid_"),
        }
    }

    /// The room an alias points to, and who created the alias.
    pub fn get(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        let Some(bytes) = self.alias_roomid.get(alias.as_bytes())? else {
            return Ok(None);
        };
        let mut parts = key::split(&bytes);
        let room = std::str::from_utf8(parts.next().unwrap_or_default())
            .map_err(|e| Error::corrupt("alias_roomid", e))?;
        let creator = std::str::from_utf8(parts.next().unwrap_or_default())
            .map_err(|e| Error::corrupt("alias_roomid", e))?;
        Ok(Some((
            OwnedRoomId::try_from(room).map_err(|e| Error::corrupt("alias_roomid", e))?,
            OwnedUserId::try_from(creator).map_err(|e| Error::corrupt("alias_roomid", e))?,
        )))
    }

    /// Points a new alias at a room; `M_UNKNOWN`-free conflict reporting is the caller's.
    pub fn set(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(
            &self.alias_roomid,
            alias.as_bytes(),
            &key::join(&[room_id.as_bytes(), creator.as_bytes()]),
        );
        batch.insert(
            &self.roomidalias,
            &key::join(&[room_id.as_bytes(), alias.as_bytes()]),
            b"",
        );
        self.alias_roomid.db().write(batch)
    }

    /// Removes an alias.
    pub fn remove(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::default();
        batch.remove(&self.alias_roomid, alias.as_bytes());
        batch.remove(
            &self.roomidalias,
            &key::join(&[room_id.as_bytes(), alias.as_bytes()]),
        );
        self.alias_roomid.db().write(batch)
    }

    /// The local aliases of a room.
    pub fn iter_room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = key::prefix(&[room_id.as_bytes()]);
        self.roomidalias
            .iter_prefix(&prefix)
            .map(|entry| {
                let (db_key, _) = entry?;
                let alias = std::str::from_utf8(&db_key[prefix.len()..])
                    .map_err(|e| Error::corrupt("roomidalias_", e))?;
                OwnedRoomAliasId::try_from(alias).map_err(|e| Error::corrupt("roomidalias_", e))
            })
            .collect()
    }

    /// Publishes a room in (or removes it from) the directory.
    pub fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        if public {
            self.publicroomid.insert(room_id.as_bytes(), b"")
        } else {
            self.publicroomid.remove(room_id.as_bytes())
        }
    }

    /// Whether a room is published in the directory.
    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        self.publicroomid.contains(room_id.as_bytes())
    }

    /// Every published room, in room ID order.
    pub fn iter_public(&self) -> Result<Vec<OwnedRoomId>> {
        self.publicroomid
            .iter_prefix(b"")
            .map(|entry| {
                let (db_key, _) = entry?;
                OwnedRoomId::try_from(String::from_utf8_lossy(&db_key).as_ref())
                    .map_err(|e| Error::corrupt("publicroomid_", e))
            })
            .collect()
    }
}

/// One page of this server's public room directory (for the client and federation APIs):
/// `since` is an offset, `term` (lower case) matches name, topic and alias.
pub fn public_rooms(
    services: &Services,
    limit: usize,
    since: usize,
    term: Option<&str>,
) -> Result<Value> {
    let mut rooms = Vec::new();
    for room_id in services.rooms.alias.iter_public()? {
        let state = |kind: StateEventType, field: &str| -> Option<Value> {
            services
                .rooms
                .current_state_pdu(&room_id, &kind, "")
                .ok()
                .flatten()
                .and_then(|pdu| pdu.content_value().get(field).cloned())
        };
        let name = state(StateEventType::RoomName, "name");
        let topic = state(StateEventType::RoomTopic, "topic");
        let alias = state(StateEventType::RoomCanonicalAlias, "alias");
        if let Some(term) = term {
            let haystack = format!(
                "{} {} {}",
                name.as_ref().and_then(Value::as_str).unwrap_or(""),
                topic.as_ref().and_then(Value::as_str).unwrap_or(""),
                alias.as_ref().and_then(Value::as_str).unwrap_or("")
            )
            .to_lowercase();
            if !haystack.contains(term) {
                continue;
            }
        }
        let joined = services
            .rooms
            .members
            .iter_members(
                &room_id,
                Some(ruma::events::room::member::MembershipState::Join),
            )?
            .len();
        let join_rule =
            state(StateEventType::RoomJoinRules, "join_rule").unwrap_or(json!("public"));
        let world_readable = state(StateEventType::RoomHistoryVisibility, "history_visibility")
            .is_some_and(|value| value == "world_readable");
        let guest_can_join = state(StateEventType::RoomGuestAccess, "guest_access")
            .is_some_and(|value| value == "can_join");
        let mut chunk = json!({
            "room_id": room_id, "num_joined_members": joined, "world_readable": world_readable,
            "guest_can_join": guest_can_join, "join_rule": join_rule
        });
        for (field, value) in [
            ("name", name),
            ("topic", topic),
            ("canonical_alias", alias),
            ("avatar_url", state(StateEventType::RoomAvatar, "url")),
        ] {
            if let Some(value) = value {
                chunk[field] = value;
            }
        }
        if let Some(kind) = services
            .rooms
            .current_state_pdu(&room_id, &StateEventType::RoomCreate, "")?
            .and_then(|pdu| pdu.content_value().get("type").cloned())
        {
            chunk["room_type"] = kind;
        }
        rooms.push(chunk);
    }
    let total = rooms.len();
    let page: Vec<Value> = rooms.into_iter().skip(since).take(limit).collect();
    let mut response = json!({ "chunk": page, "total_room_count_estimate": total });
    if since + limit < total {
        response["next_batch"] = json!((since + limit).to_string());
    }
    if since > 0 {
        response["prev_batch"] = json!(since.saturating_sub(limit).to_string());
    }
    Ok(response)
}

/// Resolves an alias of another server through that server's `/query/directory`.
pub async fn resolve_remote(
    services: &Services,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        crate::federation::encode(alias.as_str())
    );
    let answer = services
        .federation_request(alias.server_name(), http::Method::GET, &path, None)
        .await?;
    let room_id = answer["room_id"]
        .as_str()
        .and_then(|room| OwnedRoomId::try_from(room).ok())
        .ok_or_else(|| Error::not_found(format!("alias {alias} not found")))?;
    let servers = answer["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|server| {
            server
                .as_str()
                .and_then(|s| ruma::OwnedServerName::try_from(s).ok())
        })
        .collect();
    Ok((room_id, servers))
}

/// Takes a deleted alias out of the room's `m.room.canonical_alias` (its `alias` and
/// `alt_aliases`), as Synapse does, with a new event from the user who deleted it; an alias the
/// event does not name changes nothing.
/// A user who may not send that event still deletes the alias, and the event stays as it was:
/// the refusal is logged and not returned.
pub async fn remove_from_canonical_alias(
    services: &Services,
    room_id: &RoomId,
    alias: &RoomAliasId,
    user: &UserId,
) -> Result<()> {
    let Some(current) =
        services
            .rooms
            .current_state_pdu(room_id, &StateEventType::RoomCanonicalAlias, "")?
    else {
        return Ok(());
    };
    let Some(content) = without_alias(current.content_value(), alias) else {
        return Ok(());
    };
    let builder =
        crate::service::rooms::timeline::PduBuilder::state("m.room.canonical_alias", "", content);
    match crate::service::rooms::timeline::create_and_commit(services, room_id, user, builder, None)
        .await
    {
        Ok(_) => Ok(()),
        Err(refusal @ (Error::Matrix { .. } | Error::Refused(_))) => {
            tracing::debug!(%room_id, %alias, reason = %refusal, "canonical alias left as it was");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// The canonical alias content without `alias`, or `None` when it does not name it.
fn without_alias(mut content: Value, alias: &RoomAliasId) -> Option<Value> {
    let fields = content.as_object_mut()?;
    let mut changed = false;
    if fields.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
        fields.remove("alias");
        changed = true;
    }
    if let Some(Value::Array(alt_aliases)) = fields.get_mut("alt_aliases") {
        let before = alt_aliases.len();
        alt_aliases.retain(|other| other.as_str() != Some(alias.as_str()));
        if alt_aliases.len() != before {
            changed = true;
            if alt_aliases.is_empty() {
                fields.remove("alt_aliases");
            }
        }
    }
    changed.then_some(content)
}

#[cfg(test)]
mod tests {
    use ruma::room_alias_id;
    use serde_json::json;

    use super::without_alias;

    #[test]
    fn a_deleted_alias_leaves_the_canonical_alias_content() {
        let alias = room_alias_id!("#gone:localhost");
        let check = |content, expected| assert_eq!(without_alias(content, alias), expected);
        check(json!({"alias": "#gone:localhost"}), Some(json!({})));
        check(
            json!({"alias": "#kept:localhost", "alt_aliases": ["#gone:localhost", "#b:localhost"]}),
            Some(json!({"alias": "#kept:localhost", "alt_aliases": ["#b:localhost"]})),
        );
        check(
            json!({"alias": "#gone:localhost", "alt_aliases": ["#gone:localhost"]}),
            Some(json!({})),
        );
        check(json!({"alias": "#kept:localhost"}), None);
        check(json!({}), None);
    }
}
