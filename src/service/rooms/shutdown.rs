//! Deleting a room for server admins (`!admin rooms delete`, Synapse's `DELETE
//! /_synapse/admin/v2/rooms/{roomId}`): every local user leaves through the normal event path,
//! the room is blocked and unpublished, its local aliases removed (or moved to a new notice
//! room), and with `purge` its events dropped (`purge.rs`).

use ruma::{
    events::room::member::MembershipState, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId,
};
use serde::Serialize;
use serde_json::json;

use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            create::{self, NewRoom},
            membership::{send_member_event, set_membership},
            purge,
            timeline::{create_and_commit, PduBuilder},
        },
        Services,
    },
};

/// What a room deletion does beyond the local users leaving.
#[derive(Clone, Debug)]
pub struct DeleteRoom {
    /// The admin asking.
    pub by: OwnedUserId,
    /// Blocks the room: nobody here joins it again, and no server joins it through here.
    pub block: bool,
    /// Drops the room's events from the database once the local users left.
    pub purge: bool,
    /// A room to move the local users and aliases into, with a message telling them why.
    pub new_room: Option<NoticeRoom>,
}

/// The room the local users of a deleted room are moved into (Synapse's `new_room_user_id`).
#[derive(Clone, Debug)]
pub struct NoticeRoom {
    /// A local account that creates the room and sends the message.
    pub creator: OwnedUserId,
    pub name: String,
    pub message: String,
}

/// What a deletion did, in the fields of Synapse's `shutdown_room`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<OwnedRoomAliasId>,
    pub new_room_id: Option<OwnedRoomId>,
    /// How many events were purged (not a Synapse field, so not sent).
    #[serde(skip)]
    pub purged_events: usize,
}

/// Checks that a room may be deleted: known here, and not the admin room.
pub fn check(services: &Services, room_id: &RoomId, request: &DeleteRoom) -> Result<()> {
    if services.admin.get_room().as_deref() == Some(room_id) {
        return Err(Error::forbidden("the admin room cannot be deleted"));
    }
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    if let Some(notice) = &request.new_room {
        let creator = &notice.creator;
        if creator.server_name() != services.globals.server_name()
            || !services.users.exists(creator)?
        {
            return Err(Error::invalid_param(format!(
                "new_room_user_id {creator} is not a local user"
            )));
        }
    }
    Ok(())
}

/// Deletes a room (see the module doc); [`check`] first.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub async fn delete_room(
    services: &Services,
    room_id: &RoomId,
    request: &DeleteRoom,
) -> Result<Outcome> {
    check(services, room_id, request)?;
    let blocks = &services.admin.blocks;
    if request.block {
        blocks.set_room_blocked(room_id, &request.by, true)?;
    }
    services.rooms.alias.set_public(room_id, false)?;
    let mut outcome = Outcome::default();
    for user_id in local_members(services, room_id)? {
        match set_membership(services, room_id, &user_id, &user_id, "leave", None).await {
            Ok(_) => outcome.kicked_users.push(user_id),
            Err(error) => {
                tracing::warn!(%error, user = %user_id, "a local user could not leave a deleted room");
                outcome.failed_to_kick_users.push(user_id);
            }
        }
    }
    if let Some(notice) = &request.new_room {
        outcome.new_room_id =
            Some(open_notice_room(services, notice, &outcome.kicked_users).await?);
    }
    for alias in services.rooms.alias.iter_room_aliases(room_id)? {
        let (_, creator) = services
            .rooms
            .alias
            .get(&alias)?
            .ok_or_else(|| Error::internal(format!("alias {alias} vanished")))?;
        services.rooms.alias.remove(&alias, room_id)?;
        if let Some(new_room_id) = &outcome.new_room_id {
            services.rooms.alias.set(&alias, new_room_id, &creator)?;
        }
        outcome.local_aliases.push(alias);
    }
    if request.purge {
        outcome.purged_events = purge::purge_room(services, room_id)?;
        for user_id in &outcome.kicked_users {
            services.rooms.members.forget(room_id, user_id)?;
        }
    }
    tracing::info!(by = %request.by, block = request.block, purge = request.purge, "deleted a room");
    Ok(outcome)
}

/// This server's users who are joined to, invited to or knocking on a room.
fn local_members(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    let server_name = services.globals.server_name();
    Ok(services
        .rooms
        .members
        .iter_members(room_id, None)?
        .into_iter()
        .filter(|(user_id, membership)| {
            user_id.server_name() == server_name
                && matches!(
                    membership,
                    MembershipState::Join | MembershipState::Invite | MembershipState::Knock
                )
        })
        .map(|(user_id, _)| user_id)
        .collect())
}

/// Creates the notice room (public, where members cannot speak), joins the moved users to it
/// and posts the message.
async fn open_notice_room(
    services: &Services,
    notice: &NoticeRoom,
    users: &[OwnedUserId],
) -> Result<OwnedRoomId> {
    let mut power_levels = serde_json::Map::new();
    power_levels.insert("users_default".to_owned(), json!(-10));
    let request = NewRoom {
        preset: Some("public_chat".to_owned()),
        name: Some(notice.name.clone()),
        power_level_content_override: Some(power_levels),
        ..NewRoom::default()
    };
    let room_id = create::create(services, &notice.creator, request).await?;
    for user_id in users.iter().filter(|user_id| **user_id != notice.creator) {
        let content = json!({ "membership": "join" });
        if let Err(error) = send_member_event(services, &room_id, user_id, user_id, content).await {
            tracing::warn!(%error, user = %user_id, "a moved user could not join the notice room");
        }
    }
    let content = json!({ "msgtype": "m.text", "body": notice.message });
    create_and_commit(
        services,
        &room_id,
        &notice.creator,
        PduBuilder::timeline("m.room.message", content),
        None,
    )
    .await?;
    Ok(room_id)
}
