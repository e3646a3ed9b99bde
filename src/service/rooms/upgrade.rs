//! Room upgrades: a room of a new version replaces an old one. Upgrades of one room run one at a
//! time under a lock this service holds.
//!
//! A room upgrade from `create_and_commit` calls: the new room (create event with `predecessor`, copied state and power levels), moved aliases and directory listing, then the old room's tombstone and raised `events_default`/`invite`; one async lock per old room (`Rooms::upgrades`, in memory) keeps two upgrades of a room from interleaving.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    api::error::ErrorKind, events::StateEventType, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            create,
            power::{PowerLevels, CREATOR_LEVEL},
            timeline::{create_and_commit, PduBuilder},
            version::rules_for,
        },
        Services,
    },
};

/// State that moves to the new room (the spec's list, plus a space's children); power levels and
/// the canonical alias are handled on their own.
const COPIED_STATE: [&str; 9] = [
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.space.child",
];

/// The upgrade locks, one per old room (memory only).
#[derive(Default)]
pub struct Upgrades {
    locks: parking_lot::Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Upgrades {
    /// The lock that keeps two upgrades of one room from interleaving their replacement rooms
    /// and tombstones. An async mutex, since the events of an upgrade may wait for a policy
    /// server's signature; no room lock is held while it waits.
    fn lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }
}

/// Upgrades `room_id` to room version `new_version` for `sender`; answers the replacement room.
///
/// Needs the power to send `m.room.tombstone`. Creates the new room (its create event names the
/// predecessor; `event_id` there is the old room's latest event, left out when the new room's
/// ID is its create event's hash, from room version 12), copies the transferable state
/// and power levels (creators of a version 12 room are left out of `users`), moves the local
/// aliases, the canonical alias and the directory listing, then tombstones the old room and
/// raises its `events_default` and `invite` to 50 (at least `users_default` + 1) so that the
/// old room goes quiet. Members join the new room themselves.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn upgrade(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    new_version: &str,
    additional_creators: &[OwnedUserId],
) -> Result<OwnedRoomId> {
    let unsupported = || {
        Error::matrix(
            ErrorKind::UnsupportedRoomVersion,
            format!("room version {new_version} is not supported"),
        )
    };
    let version = RoomVersionId::try_from(new_version).map_err(|_| unsupported())?;
    let rules = rules_for(&version).map_err(|_| unsupported())?;
    let lock = services.rooms.upgrades.lock(room_id);
    let _one_at_a_time = lock.lock().await;
    if !services.rooms.members.is_joined(room_id, sender)? {
        return Err(Error::forbidden(format!(
            "{sender} is not joined to {room_id}"
        )));
    }
    let levels = PowerLevels::load(services, room_id)?;
    if levels.user_level(sender) < levels.event_level("m.room.tombstone", true) {
        return Err(Error::forbidden(format!(
            "{sender} may not upgrade {room_id}: too low a power level"
        )));
    }
    if !additional_creators.is_empty() && !rules.authorization.additional_room_creators {
        return Err(Error::bad_json(format!(
            "room version {version} has no additional_creators"
        )));
    }
    let new_room =
        create_new_room(services, room_id, sender, &version, additional_creators).await?;
    let privileged = rules.authorization.explicitly_privilege_room_creators;
    let mut creators = additional_creators.to_vec();
    creators.push(sender.to_owned());
    let final_levels = new_power_levels(&levels, sender, &creators, privileged);
    copy_state(
        services,
        room_id,
        &new_room,
        sender,
        final_levels,
        privileged,
    )
    .await?;
    move_aliases(services, room_id, &new_room, sender).await?;
    send_state(
        services,
        room_id,
        sender,
        "m.room.tombstone",
        json!({ "body": "This room has been replaced", "replacement_room": new_room }),
    )
    .await?;
    if let Some(restricted) = restricted_old_levels(&levels) {
        // The upgrader may lack the power to change power levels; the tombstone is what counts.
        if let Err(error) =
            send_state(services, room_id, sender, "m.room.power_levels", restricted).await
        {
            tracing::debug!(%error, "the old room's power levels could not be restricted");
        }
    }
    if services.rooms.alias.is_public(room_id)? {
        services.rooms.alias.set_public(&new_room, true)?;
        services.rooms.alias.set_public(room_id, false)?;
    }
    Ok(new_room)
}

/// Sends a state event with an empty state key.
async fn send_state(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    kind: &str,
    content: Value,
) -> Result<()> {
    create_and_commit(
        services,
        room_id,
        sender,
        PduBuilder::state(kind, "", content),
        None,
    )
    .await?;
    Ok(())
}

/// Sends the new room's power levels and the state copied from the old room. Until the copied
/// state is in, a non-creator upgrader holds enough power to send all of it.
async fn copy_state(
    services: &Services,
    old: &RoomId,
    new: &RoomId,
    sender: &UserId,
    final_levels: Value,
    privileged: bool,
) -> Result<()> {
    let mut initial_levels = final_levels.clone();
    if !privileged {
        let needed = needed_level(&final_levels);
        let current = final_levels["users"][sender.as_str()].as_i64().unwrap_or(0);
        if current < needed {
            initial_levels["users"][sender.as_str()] = json!(needed);
        }
    }
    send_state(
        services,
        new,
        sender,
        "m.room.power_levels",
        initial_levels.clone(),
    )
    .await?;
    let old_hash = services
        .rooms
        .current_state_hash(old)?
        .ok_or_else(|| Error::not_found(format!("room {old} is unknown to this server")))?;
    for pdu in services.rooms.state_pdus(old_hash)? {
        let kind = pdu.kind.to_string();
        if !COPIED_STATE.contains(&kind.as_str()) {
            continue;
        }
        let key = pdu.state_key.clone().unwrap_or_default();
        create_and_commit(
            services,
            new,
            sender,
            PduBuilder::state(kind.as_str(), key, pdu.content_value()),
            None,
        )
        .await?;
    }
    if initial_levels != final_levels {
        send_state(services, new, sender, "m.room.power_levels", final_levels).await?;
    }
    Ok(())
}

/// Creates the replacement room: its create event (with `predecessor`, the old room type and
/// `m.federate`) and the upgrader's join.
async fn create_new_room(
    services: &Services,
    old_room: &RoomId,
    sender: &UserId,
    version: &RoomVersionId,
    additional_creators: &[OwnedUserId],
) -> Result<OwnedRoomId> {
    let rules = rules_for(version)?;
    let old_create = services
        .rooms
        .current_state_pdu(old_room, &StateEventType::RoomCreate, "")?
        .map(|pdu| pdu.content_value())
        .unwrap_or(Value::Null);
    let mut predecessor = json!({ "room_id": old_room });
    // `event_id` names the old room's last event, which is the tombstone; but the tombstone names
    // the new room, whose ID in room version 12 is the hash of this create event, so it cannot
    // exist yet. Spec v1.16 made the field optional (clients then look for the tombstone), and
    // it is left out there rather than naming an event that is not the last.
    if !rules.authorization.room_create_event_id_as_room_id {
        let (shortroomid, _) = services.rooms.room_version(old_room)?;
        if let Some(last) = services.rooms.timeline.extremities(shortroomid)?.first() {
            predecessor["event_id"] = json!(last);
        }
    }
    let mut content = Map::new();
    content.insert("room_version".into(), json!(version.as_str()));
    content.insert("predecessor".into(), predecessor);
    for field in ["type", "m.federate"] {
        if let Some(value) = old_create.get(field) {
            content.insert(field.into(), value.clone());
        }
    }
    if !rules.authorization.use_room_create_sender {
        content.insert("creator".into(), json!(sender));
    }
    if !additional_creators.is_empty() {
        content.insert("additional_creators".into(), json!(additional_creators));
    }
    let new_room = create::send_create_event(services, sender, content).await?;
    let mut join = json!({ "membership": "join" });
    if let Some(profile) = services.users.get_profile(sender)? {
        for field in ["displayname", "avatar_url"] {
            if let Some(value) = profile.get(field) {
                join[field] = value.clone();
            }
        }
    }
    create_and_commit(
        services,
        &new_room,
        sender,
        PduBuilder::state("m.room.member", sender.as_str(), join),
        None,
    )
    .await?;
    Ok(new_room)
}

/// The new room's power levels: the old ones, without the new room's creators in `users` when
/// its version privileges them (and, coming from an older version, `m.room.tombstone` at 150 at
/// least), and otherwise with the upgrader (and any privileged creator of
/// the old room) at no less than 100.
fn new_power_levels(
    old: &PowerLevels,
    sender: &UserId,
    creators: &[OwnedUserId],
    privileged: bool,
) -> Value {
    let mut content = match old.content() {
        Value::Object(object) => Value::Object(object.clone()),
        _ => json!({}),
    };
    if !content["users"].is_object() {
        content["users"] = json!({});
    }
    let users = content["users"]
        .as_object_mut()
        .expect("users was made an object above");
    if privileged {
        for creator in creators {
            users.remove(creator.as_str());
        }
        if old.creators.is_empty() {
            // As in a version 12 room made by `createRoom`, upgrading it again is for its
            // creators, whose power is above any level.
            if !content["events"].is_object() {
                content["events"] = json!({});
            }
            let tombstone = content["events"]["m.room.tombstone"].as_i64().unwrap_or(0);
            content["events"]["m.room.tombstone"] = json!(tombstone.max(150));
        }
    } else {
        let mut raised: Vec<&UserId> = old.creators.iter().map(|user| user.as_ref()).collect();
        raised.push(sender);
        for user in raised {
            let level = old.user_level(user);
            let level = if level == CREATOR_LEVEL {
                100
            } else {
                level.max(100)
            };
            users.insert(user.to_string(), json!(level));
        }
    }
    content
}

/// The highest level any copied state event or power change needs in the new room.
fn needed_level(levels: &Value) -> i64 {
    let mut needed = levels["state_default"].as_i64().unwrap_or(50);
    for field in ["ban", "kick", "redact", "invite"] {
        needed = needed.max(levels[field].as_i64().unwrap_or(50));
    }
    for level in levels["events"]
        .as_object()
        .into_iter()
        .flat_map(|events| events.values())
    {
        needed = needed.max(level.as_i64().unwrap_or(0));
    }
    needed
}

/// The old room's power levels with `events_default` and `invite` raised to 50 (at least
/// `users_default` + 1), or `None` when they already are that high.
fn restricted_old_levels(old: &PowerLevels) -> Option<Value> {
    let Value::Object(mut content) = old.content().clone() else {
        return None;
    };
    let users_default = content
        .get("users_default")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let restricted = users_default.saturating_add(1).max(50);
    let mut changed = false;
    for field in ["events_default", "invite"] {
        let current = content.get(field).and_then(Value::as_i64).unwrap_or(0);
        if current < restricted {
            content.insert(field.into(), json!(restricted));
            changed = true;
        }
    }
    changed.then_some(Value::Object(content))
}

/// Moves the old room's local aliases to the new room, and its canonical alias: the new room
/// gets the old `m.room.canonical_alias` and the old room's is emptied.
async fn move_aliases(
    services: &Services,
    old: &RoomId,
    new: &RoomId,
    sender: &UserId,
) -> Result<()> {
    for alias in services.rooms.alias.iter_room_aliases(old)? {
        let creator = services
            .rooms
            .alias
            .get(&alias)?
            .map(|(_, creator)| creator)
            .unwrap_or_else(|| sender.to_owned());
        services.rooms.alias.remove(&alias, old)?;
        services.rooms.alias.set(&alias, new, &creator)?;
    }
    let Some(canonical) =
        services
            .rooms
            .current_state_pdu(old, &StateEventType::RoomCanonicalAlias, "")?
    else {
        return Ok(());
    };
    let content = canonical.content_value();
    if content.as_object().is_none_or(|object| object.is_empty()) {
        return Ok(());
    }
    let send = async |room: &RoomId, content: Value| {
        create_and_commit(
            services,
            room,
            sender,
            PduBuilder::state("m.room.canonical_alias", "", content),
            None,
        )
        .await
    };
    send(new, content).await?;
    if let Err(error) = send(old, json!({})).await {
        tracing::debug!(%error, "the old room's canonical alias could not be removed");
    }
    Ok(())
}
