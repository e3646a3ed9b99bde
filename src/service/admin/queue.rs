//! The admin room's low half, below the timeline and the users service in the layers: the
//! `Admin` service with its tree, the admin room's ID, the first-registration rule and the job
//! queue. The timeline's commit effects and registration only queue jobs here; the worker in
//! `service::admin` runs them.

use std::{sync::Arc, time::Instant};

use ruma::{
    events::TimelineEventType, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    ServerName, UserId,
};
use tokio::sync::{mpsc, watch};

use super::account_flags::AccountFlags;
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::Pdu, users::Users},
    store::{Db, Tree},
};

/// The key of the admin room's ID in `adminkey_value`.
const ROOM_KEY: &[u8] = b"room_id";
/// The key of the first registered user in `adminkey_value` (an older account when accounts
/// existed before the admin room did: nobody becomes an admin by registering first then).
const FIRST_USER_KEY: &[u8] = b"first_user";
/// What a command message starts with.
pub const PREFIX: &str = "!admin";

/// Owns `adminkey_value` (`room_id` → the admin room's ID, `first_user` → the first user who
/// registered, the account flags of `account_flags.rs` and the keys of [`super::blocks::Blocks`]),
/// the job queue, the server's start time and the shutdown an admin asks for.
pub struct Admin {
    adminkey_value: Tree,
    server_name: OwnedServerName,
    /// The server user's ID, which a message may mention to address a command.
    server_user: OwnedUserId,
    /// Locks, suspensions and rate-limit overrides (read on every request, so kept in memory).
    pub flags: AccountFlags,
    /// Turned true by `server shutdown`; `serve` stops the server then.
    shutdown: watch::Sender<bool>,
    /// The admin room's ID, once known (read on every committed event, so kept in memory).
    room_id: parking_lot::RwLock<Option<OwnedRoomId>>,
    queue: mpsc::UnboundedSender<Job>,
    /// The queue's other end, taken by the worker when it starts.
    jobs: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    /// Held while the first registration is recorded, so that two cannot both be first.
    first_user_lock: parking_lot::Mutex<()>,
    started: Instant,
    /// Blocked rooms, denied servers and quarantined media (`blocks.rs`, in the same tree).
    pub blocks: super::blocks::Blocks,
}

/// Work for the admin worker.
#[derive(Debug)]
pub enum Job {
    /// A command spotted in the admin room: its body, and whether it mentions the server user
    /// in `m.mentions` (the worker decides whether it is addressed to the server).
    Command {
        sender: OwnedUserId,
        event_id: OwnedEventId,
        body: String,
        mentioned: bool,
    },
    /// A notice to post in the admin room (a new report).
    Announce(String),
    /// An admin to invite to the admin room (made by registering first, or by shared-secret
    /// registration).
    Invite(OwnedUserId),
}

impl Admin {
    /// Opens the tree and the job queue; `admin_user` is the server user's localpart.
    pub fn open(db: &Arc<Db>, server_name: &ServerName, admin_user: &str) -> Result<Self> {
        let adminkey_value = db.tree("adminkey_value");
        let room_id = match adminkey_value.get(ROOM_KEY)? {
            Some(bytes) => Some(
                OwnedRoomId::try_from(String::from_utf8_lossy(&bytes).as_ref())
                    .map_err(|e| Error::corrupt("adminkey_value", e))?,
            ),
            None => None,
        };
        let (queue, jobs) = mpsc::unbounded_channel();
        let server_user = OwnedUserId::try_from(format!("@{admin_user}:{server_name}"))
            .map_err(|e| Error::Config(format!("invalid admin_user {admin_user}: {e}")))?;
        let blocks = super::blocks::Blocks::open(adminkey_value.clone())?;
        Ok(Self {
            flags: AccountFlags::open(adminkey_value.clone())?,
            adminkey_value,
            server_name: server_name.to_owned(),
            server_user,
            shutdown: watch::channel(false).0,
            room_id: parking_lot::RwLock::new(room_id),
            queue,
            jobs: parking_lot::Mutex::new(Some(jobs)),
            first_user_lock: parking_lot::Mutex::new(()),
            started: Instant::now(),
            blocks,
        })
    }

    /// The admin room, once made.
    pub fn get_room(&self) -> Option<OwnedRoomId> {
        self.room_id.read().clone()
    }

    /// Records the admin room, made once.
    pub fn set_room(&self, room_id: &RoomId) -> Result<()> {
        self.adminkey_value.insert(ROOM_KEY, room_id.as_bytes())?;
        *self.room_id.write() = Some(room_id.to_owned());
        Ok(())
    }

    /// How long the server has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Asks the server to shut down gracefully (`server shutdown`).
    pub fn request_shutdown(&self) {
        tracing::info!("an admin asked the server to shut down");
        self.shutdown.send_replace(true);
    }

    /// Turns true once an admin asked the server to shut down.
    pub fn watch_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Queues a notice for the admin room (dropped while the server shuts down).
    pub fn announce(&self, text: String) {
        let _ = self.queue.send(Job::Announce(text));
    }

    /// The queue's receiving end, for the worker (once).
    pub fn take_jobs(&self) -> Option<mpsc::UnboundedReceiver<Job>> {
        self.jobs.lock().take()
    }

    /// At start-up, when accounts exist (`existing` is one) and nobody registered first yet:
    /// records that one, so that the next registration makes nobody an admin.
    pub fn settle_first_user(&self, existing: Option<&UserId>) -> Result<()> {
        let _guard = self.first_user_lock.lock();
        match existing {
            Some(user_id) if !self.adminkey_value.contains(FIRST_USER_KEY)? => self
                .adminkey_value
                .insert(FIRST_USER_KEY, user_id.as_bytes()),
            _ => Ok(()),
        }
    }

    /// After a local account was created: the first one becomes a server admin, and an admin
    /// (the first, or one made by shared-secret registration) is queued for an invite to the
    /// admin room.
    pub fn on_registered(&self, users: &Users, user_id: &UserId) -> Result<()> {
        let first = {
            let _guard = self.first_user_lock.lock();
            let first = !self.adminkey_value.contains(FIRST_USER_KEY)?;
            if first {
                self.adminkey_value
                    .insert(FIRST_USER_KEY, user_id.as_bytes())?;
                users.set_admin(user_id, true)?;
                tracing::info!(user = %user_id, "the first user to register is a server admin");
            }
            first
        };
        if first || users.is_admin(user_id)? {
            let _ = self.queue.send(Job::Invite(user_id.to_owned()));
        }
        Ok(())
    }

    /// A commit effect: queues a local user's message in the admin room for the worker when it
    /// may be a command: it starts with `!admin`, mentions the server user in `m.mentions`, or
    /// has a `name:` address (which the worker compares with the server user's names).
    /// Whether the sender is an admin is checked by the worker, off the sender's request.
    pub fn spot(&self, room_id: &RoomId, pdu: &Pdu) {
        if pdu.kind != TimelineEventType::RoomMessage
            || pdu.sender.server_name() != self.server_name
            || self.room_id.read().as_deref() != Some(room_id)
        {
            return;
        }
        let content = pdu.content_value();
        if content["msgtype"] != "m.text" {
            return;
        }
        let mentioned = content["m.mentions"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| *id == self.server_user.as_str()));
        let Some(body) = content["body"].as_str().filter(|body| {
            is_command(body) || mentioned || body.chars().take(256).any(|c| c == ':')
        }) else {
            return;
        };
        let job = Job::Command {
            sender: pdu.sender.clone(),
            event_id: pdu.event_id.clone(),
            body: body.to_owned(),
            mentioned,
        };
        // The receiver lives as long as the server; a send fails only while it shuts down.
        let _ = self.queue.send(job);
    }
}

/// Whether a message body is an admin command: `!admin`, alone or followed by white space.
pub(super) fn is_command(body: &str) -> bool {
    body.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

/// The command line (starting with `!admin`) a message addresses to the server, if any: a
/// message that starts with `!admin`, or with one of the server user's `names` (its ID,
/// localpart or display name, in any case) followed by `:`, or that mentions the server user
/// in `m.mentions` (`mentioned`; a leading name is dropped then, with or without the colon).
pub(super) fn command_line(body: &str, mentioned: bool, names: &[&str]) -> Option<String> {
    if is_command(body) {
        return Some(body.to_owned());
    }
    let leading_name = names.iter().find_map(|name| {
        let head = body.get(..name.len())?;
        (!name.is_empty() && head.to_lowercase() == name.to_lowercase())
            .then(|| &body[name.len()..])
    });
    let rest = match leading_name {
        Some(rest) if rest.starts_with(':') => &rest[1..],
        Some(rest) if mentioned && (rest.is_empty() || rest.starts_with(char::is_whitespace)) => {
            rest
        }
        _ if mentioned => body,
        _ => return None,
    };
    Some(format!("{PREFIX} {}", rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::{command_line, is_command};

    #[test]
    fn messages_addressed_to_the_server_user_are_commands() {
        let names = ["@plait:example.org", "plait", "Plait"];
        for (body, mentioned, expected) in [
            ("!admin users list", false, Some("!admin users list")),
            ("plait: users list", false, Some("!admin users list")),
            ("Plait:server stats", false, Some("!admin server stats")),
            ("@plait:example.org: help", false, Some("!admin help")),
            ("PLAIT: help", false, Some("!admin help")),
            ("plaits: help", false, None),
            ("alice: hello", false, None),
            ("plait help", false, None),
            ("Plait users list", true, Some("!admin users list")),
            ("users list", true, Some("!admin users list")),
        ] {
            assert_eq!(
                command_line(body, mentioned, &names).as_deref(),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn commands_start_with_the_prefix_and_a_space() {
        for (body, expected) in [
            ("!admin", true),
            ("!admin users list", true),
            ("!admin\thelp", true),
            ("!administrator", false),
            (" !admin help", false),
            ("hello", false),
        ] {
            assert_eq!(is_command(body), expected, "{body}");
        }
    }
}
