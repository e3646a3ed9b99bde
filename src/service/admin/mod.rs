//! The admin room: the server's own user (`admin_user`, `@plait:<server_name>` by default) and
//! its invite-only room `#admins:<server_name>`, made once at start-up; server admins are invited
//! to it when made (the first user to register becomes one) and kicked when removed.
//!
//! A local server admin's `m.text` message in that room starting with `!admin` is a command:
//! the timeline's effects only spot it and queue it (`queue.rs`), and a worker (`run`) parses
//! it with clap (`commands.rs`), runs it (`users.rs`, `server.rs`) and posts the reply as an
//! `m.notice` from the server user through the normal local-event path.

mod commands;
pub mod queue;
mod reply;
mod server;
mod users;

use std::sync::Arc;

use ruma::{events::room::member::MembershipState, OwnedRoomAliasId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};
use tokio::sync::watch;

pub use self::{
    commands::run_command,
    queue::{Admin, Job},
    reply::Reply,
};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            create::{self, NewRoom},
            membership,
            timeline::{create_and_commit, PduBuilder},
        },
        users::local_user_id,
        Services,
    },
};

/// The alias localpart of the admin room.
const ROOM_ALIAS: &str = "admins";

/// The server's own user: `admin_user` on this server.
pub fn server_user(services: &Services) -> Result<OwnedUserId> {
    local_user_id(services.globals.server_name(), &services.config.admin_user)
}

/// At start-up: creates the server user and the admin room (inviting the admins there are) unless
/// they exist, and settles whether the next registration is the first.
pub async fn start(services: &Services) -> Result<()> {
    let sender = server_user(services)?;
    if !services.users.exists(&sender)? {
        services
            .users
            .create_hashed(&sender, "", Some("Plait"), false)?;
        tracing::info!(user = %sender, "created the server user");
    }
    let admin = &services.admin;
    let notices_localpart = &services.config.server_notices_localpart;
    let existing =
        services.users.iter_user_ids()?.into_iter().find(|user_id| {
            *user_id != sender && user_id.localpart() != notices_localpart.as_str()
        });
    admin.settle_first_user(existing.as_deref())?;
    if admin.get_room().is_some() {
        return Ok(());
    }
    let alias =
        OwnedRoomAliasId::try_from(format!("#{ROOM_ALIAS}:{}", services.globals.server_name()))
            .map_err(Error::internal)?;
    let alias_free = services.rooms.alias.get(&alias)?.is_none();
    if !alias_free {
        tracing::warn!(%alias, "the admin room's alias is taken; the room is made without it");
    }
    let request = NewRoom {
        preset: Some("private_chat".to_owned()),
        name: Some("Admins".to_owned()),
        topic: Some(format!(
            "Server admin commands: send `{} help`",
            queue::PREFIX
        )),
        room_alias_name: alias_free.then(|| ROOM_ALIAS.to_owned()),
        invite: services.users.iter_admins()?,
        ..NewRoom::default()
    };
    let room_id = create::create(services, &sender, request).await?;
    admin.set_room(&room_id)?;
    tracing::info!(%room_id, "created the admin room");
    Ok(())
}

/// Makes a local account a server admin and invites it to the admin room (unless it is joined or
/// invited already).
pub async fn make_admin(services: &Services, user_id: &UserId) -> Result<()> {
    services.users.set_admin(user_id, true)?;
    tracing::info!(user = %user_id, "made a server admin");
    let Some(room_id) = services.admin.get_room() else {
        return Ok(());
    };
    let membership = services.rooms.members.get_membership(&room_id, user_id)?;
    if !matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite)
    ) {
        let sender = server_user(services)?;
        membership::set_membership(services, &room_id, &sender, user_id, "invite", None).await?;
    }
    Ok(())
}

/// Makes a server admin an ordinary user and kicks them from the admin room (when joined or
/// invited).
pub async fn remove_admin(services: &Services, user_id: &UserId) -> Result<()> {
    services.users.set_admin(user_id, false)?;
    tracing::info!(user = %user_id, "removed a server admin");
    let Some(room_id) = services.admin.get_room() else {
        return Ok(());
    };
    let membership = services.rooms.members.get_membership(&room_id, user_id)?;
    if matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite)
    ) {
        let sender = server_user(services)?;
        let reason = Some("no longer a server admin");
        membership::set_membership(services, &room_id, &sender, user_id, "leave", reason).await?;
    }
    Ok(())
}

/// The worker: runs the queued jobs one at a time (so replies come in the order asked) until
/// `shutdown` turns true. A command from anyone but a server admin is dropped unanswered.
pub async fn run(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut jobs) = services.admin.take_jobs() else {
        return;
    };
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let result = match &job {
            None => return,
            Some(Job::Invite(user_id)) => make_admin(&services, user_id).await,
            Some(Job::Command {
                sender,
                event_id,
                body,
            }) => answer(&services, sender, body)
                .await
                .inspect_err(|_| tracing::debug!(%event_id, "admin command failed")),
        };
        if let Err(error) = result {
            tracing::error!(%error, ?job, "an admin room job failed");
        }
    }
}

/// Runs one command from the admin room and posts its reply there.
#[tracing::instrument(skip_all, fields(sender = %sender))]
async fn answer(services: &Services, sender: &UserId, body: &str) -> Result<()> {
    if !services.users.is_admin(sender)? {
        tracing::debug!("ignored an admin command from a user who is not a server admin");
        return Ok(());
    }
    let Some(room_id) = services.admin.get_room() else {
        return Ok(());
    };
    let reply = run_command(services, body).await;
    send_reply(services, &room_id, &reply).await
}

/// Posts a reply in the admin room: an `m.notice` from the server user, with an HTML body.
async fn send_reply(services: &Services, room_id: &RoomId, reply: &Reply) -> Result<()> {
    let sender = server_user(services)?;
    let content: Value = json!({
        "msgtype": "m.notice",
        "body": reply.text,
        "format": "org.matrix.custom.html",
        "formatted_body": reply.html,
    });
    create_and_commit(
        services,
        room_id,
        &sender,
        PduBuilder::timeline("m.room.message", content),
        None,
    )
    .await?;
    Ok(())
}
