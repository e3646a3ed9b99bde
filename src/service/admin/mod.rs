//! The admin room: the server's own user (`admin_user`, `@plait:<server_name>` by default) and
//! its invite-only room `#admins:<server_name>`, made once at start-up; server admins are invited
//! to it when made (the first user to register becomes one) and kicked when removed.
//!
//! A local server admin's `m.text` message in that room starting with `!admin` is a command:
//! the timeline's effects only spot it and queue it (`queue.rs`), and a worker (`run`) parses
//! it with clap (`commands.rs`), runs it (`users.rs`, `server.rs`, with `room.rs` for the
//! room's members) and posts the reply as an
//! `m.notice` from the server user through the normal local-event path. The same commands
//! come from `plait admin` on the command line through the control socket (`control.rs`).

pub mod account_flags;
mod appservices;
pub mod blocks;
mod commands;
pub mod control;
mod federation;
mod media;
mod moderation;
mod names;
pub mod queue;
mod reply;
mod reports;
pub mod room;
mod rooms;
mod server;
mod tokens;
mod users;

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::{json, Value};
use tokio::sync::watch;

pub use self::{
    commands::run_command,
    queue::{Admin, Job},
    reply::Reply,
    room::{make_admin, remove_admin, server_user, start},
};
use crate::{
    error::Result,
    service::{
        rooms::timeline::{create_and_commit, PduBuilder},
        Services,
    },
};

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
            Some(Job::Announce(text)) => match services.admin.get_room() {
                Some(room_id) => send_reply(&services, &room_id, &Reply::message(text)).await,
                None => Ok(()),
            },
            Some(Job::Command {
                sender,
                event_id,
                body,
                mentioned,
            }) => answer(&services, sender, body, *mentioned)
                .await
                .inspect_err(|_| tracing::debug!(%event_id, "admin command failed")),
        };
        if let Err(error) = result {
            tracing::error!(%error, ?job, "an admin room job failed");
        }
    }
}

/// Runs one command from the admin room (a message addressed to the server, see
/// `queue::command_line`) and posts its reply there.
#[tracing::instrument(skip_all, fields(sender = %sender))]
async fn answer(services: &Services, sender: &UserId, body: &str, mentioned: bool) -> Result<()> {
    let server_user = server_user(services)?;
    let display_name = services
        .users
        .get_profile(&server_user)?
        .and_then(|profile| profile.get("displayname")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let names = [
        server_user.as_str(),
        server_user.localpart(),
        display_name.as_str(),
    ];
    let Some(line) = queue::command_line(body, mentioned, &names) else {
        return Ok(());
    };
    if !services.users.is_admin(sender)? {
        tracing::debug!("ignored an admin command from a user who is not a server admin");
        return Ok(());
    }
    let Some(room_id) = services.admin.get_room() else {
        return Ok(());
    };
    let reply = run_command(services, &line).await;
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
