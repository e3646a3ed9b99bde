//! Typing notifications: who is typing in which room, held in memory only, with a deadline per
//! user and a stream position per room for `/sync`. Local changes go to the other servers in the
//! room as `m.typing` EDUs; typing from other servers arrives through `/send`.
//!
//! Everyone's typing ends by itself: [`run_expiry`] sleeps until the next deadline, drops the
//! users whose time is up and wakes the long-polls of their rooms.
//!
//! Who is typing where, in memory only, each typist with a deadline (local timeouts capped at 60 s, typing from other servers lasts 60 s unless repeated) and each room with the typing position of its last change; positions come from an in-memory counter whose range is reserved in `globals` a thousand at a time, so that a restart continues above every position an earlier run handed out (a token from a run in which its client saw typists gets every room's now empty set).
//! Local changes are queued as `m.typing` EDUs for the room's other servers (repeated every 30 s while the user keeps typing); `receive_edu` applies those from `/send`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde_json::{json, Value};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use crate::{
    error::Result,
    service::{globals::Globals, notify::Topic, rooms::incoming, Services},
};

/// The longest a client may ask to be shown typing without asking again. Clients are told to
/// repeat the request every 20 to 30 seconds while the user types, so a minute is generous; it
/// also equals [`REMOTE_TIMEOUT`], so other servers never drop a local typist before we do.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The timeout when a client says it is typing without a `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long typing received from another server lasts unless that server repeats it. The EDU
/// carries no timeout; servers repeat it while their user types (we do every
/// [`FEDERATION_REFRESH`]).
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// A local user who keeps typing is announced again to other servers after this long, so that
/// their [`REMOTE_TIMEOUT`]-like expiry does not end it.
const FEDERATION_REFRESH: Duration = Duration::from_secs(30);
/// Typing positions reserved in the database at a time (see [`Globals::reserve_typing`]).
const RESERVE_BLOCK: u64 = 1000;

/// The typing state of every room, in memory.
pub struct Typing {
    state: Mutex<State>,
    /// Wakes the expiry worker when a deadline is added, which may be its new earliest.
    deadline_added: Notify,
    /// The first position of this run; a sync token with a lower typing position comes from an
    /// earlier run, whose typing state is gone.
    run_start: u64,
    /// The first position of the previous run: a token at it saw no typing in that run.
    previous_run_start: u64,
}

struct State {
    rooms: HashMap<OwnedRoomId, RoomTyping>,
    /// Every typing user's deadline, earliest first.
    deadlines: BTreeSet<(Instant, OwnedRoomId, OwnedUserId)>,
    /// The last typing position handed out.
    position: u64,
    /// Positions up to here are recorded as reserved in the database.
    reserved: u64,
}

/// One room: its typists and the position of its last change. A room stays here once it had
/// typing, with its position, so that a client is told when the set becomes empty.
#[derive(Default)]
struct RoomTyping {
    users: BTreeMap<OwnedUserId, Typist>,
    position: u64,
}

struct Typist {
    until: Instant,
    /// When this typing was last sent to other servers (local users only).
    announced: Option<Instant>,
}

/// What one update did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Update {
    /// The room's set of typists changed, so its position moved.
    changed: bool,
    /// Other servers must hear about it.
    announce: bool,
}

impl Typing {
    /// Starts after every position an earlier run may have handed out.
    pub fn open(globals: &Globals) -> Result<Self> {
        let (reserved, previous_run_start) = globals.typing_history()?;
        let run_start = reserved.saturating_add(1);
        let reserved = run_start.saturating_add(RESERVE_BLOCK);
        globals.start_typing_run(run_start, reserved)?;
        Ok(Self {
            state: Mutex::new(State {
                rooms: HashMap::new(),
                deadlines: BTreeSet::new(),
                position: run_start,
                reserved,
            }),
            deadline_added: Notify::new(),
            run_start,
            previous_run_start,
        })
    }

    /// The position of the latest typing change, for `next_batch`.
    pub fn current(&self) -> u64 {
        self.state.lock().position
    }

    /// The users typing in a room, if the client should be told: for an initial sync (`since`
    /// is `None`) when anyone types; otherwise when the set changed after `since`, or when
    /// `since` comes from an earlier run in which the client may have seen typists that are
    /// gone now. A token at 0 (from before typing existed) or at the previous run's start saw
    /// nobody typing, so it only gets the rooms that changed in this run.
    pub fn get_changed(&self, room_id: &RoomId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        let state = self.state.lock();
        let room = state.rooms.get(room_id);
        let users = || room.map(|room| room.users.keys().cloned().collect::<Vec<_>>());
        match since {
            None => users().filter(|users| !users.is_empty()),
            Some(since)
                if since < self.run_start && since != 0 && since != self.previous_run_start =>
            {
                Some(users().unwrap_or_default())
            }
            Some(since) => room
                .filter(|room| room.position > since)
                .map(|_| users().unwrap_or_default()),
        }
    }

    /// Marks `user_id` typing in `room_id` until `until`, or not typing (`None`).
    fn update(
        &self,
        globals: &Globals,
        room_id: &RoomId,
        user_id: &UserId,
        until: Option<Instant>,
        local: bool,
    ) -> Result<Update> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let state = &mut *state;
        let previous = state
            .rooms
            .get_mut(room_id)
            .and_then(|room| room.users.remove(user_id));
        if let Some(previous) = &previous {
            state
                .deadlines
                .remove(&(previous.until, room_id.to_owned(), user_id.to_owned()));
        }
        let Some(until) = until else {
            if previous.is_none() {
                return Ok(Update::default());
            }
            state.bump(globals, room_id)?;
            return Ok(Update {
                changed: true,
                announce: local,
            });
        };
        let announce = local
            && previous
                .as_ref()
                .and_then(|previous| previous.announced)
                .is_none_or(|announced| now.duration_since(announced) >= FEDERATION_REFRESH);
        let changed = previous.is_none();
        if changed {
            state.bump(globals, room_id)?;
        }
        let announced = if announce {
            Some(now)
        } else {
            previous.and_then(|previous| previous.announced)
        };
        state
            .rooms
            .entry(room_id.to_owned())
            .or_default()
            .users
            .insert(user_id.to_owned(), Typist { until, announced });
        state
            .deadlines
            .insert((until, room_id.to_owned(), user_id.to_owned()));
        self.deadline_added.notify_one();
        Ok(Update { changed, announce })
    }

    /// Removes everyone whose deadline is at or before `now` and returns them.
    fn expire(&self, globals: &Globals, now: Instant) -> Result<Vec<(OwnedRoomId, OwnedUserId)>> {
        let mut state = self.state.lock();
        let mut expired = Vec::new();
        while let Some(first) = state.deadlines.first() {
            if first.0 > now {
                break;
            }
            let (_, room_id, user_id) = state.deadlines.pop_first().expect("first exists");
            if let Some(room) = state.rooms.get_mut(&room_id) {
                room.users.remove(&user_id);
            }
            state.bump(globals, &room_id)?;
            expired.push((room_id, user_id));
        }
        Ok(expired)
    }

    /// The earliest deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.state.lock().deadlines.first().map(|first| first.0)
    }
}

impl State {
    /// Hands out the next position to a room's change, reserving a new block first when the
    /// reserved one is used up (one small write per [`RESERVE_BLOCK`] changes).
    fn bump(&mut self, globals: &Globals, room_id: &RoomId) -> Result<()> {
        let next = self.position + 1;
        if next > self.reserved {
            let reserved = next + RESERVE_BLOCK;
            globals.reserve_typing(reserved)?;
            self.reserved = reserved;
        }
        self.position = next;
        self.rooms.entry(room_id.to_owned()).or_default().position = next;
        Ok(())
    }
}

/// A local user starts typing for `timeout` (capped at [`MAX_TIMEOUT`]) or stops (`None`). The
/// caller has checked that the user is joined.
#[tracing::instrument(skip_all, fields(room_id = %room_id))]
pub fn set_typing(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    timeout: Option<Duration>,
) -> Result<()> {
    let until = timeout.map(|timeout| Instant::now() + timeout.min(MAX_TIMEOUT));
    let update = services
        .typing
        .update(&services.globals, room_id, user_id, until, true)?;
    if update.changed {
        services.notifier.wake(Topic::Room(room_id.to_string()));
        services.appservices.queue_typing(services, room_id)?;
    }
    if update.announce {
        announce(services, room_id, user_id, timeout.is_some())?;
    }
    Ok(())
}

/// Applies an `m.typing` EDU from `origin` (server-server API, "Typing Notifications"): only
/// for a user of that server who is joined to the room, and only if the room's server ACL
/// allows the origin; anything else is ignored.
pub fn receive_edu(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let room_id = content
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|room| OwnedRoomId::try_from(room).ok());
    let user_id = content
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|user| OwnedUserId::try_from(user).ok());
    let typing = content.get("typing").and_then(Value::as_bool);
    let (Some(room_id), Some(user_id), Some(typing)) = (room_id, user_id, typing) else {
        tracing::debug!(%origin, "ignored a malformed typing EDU");
        return Ok(());
    };
    if user_id.server_name() != origin
        || !incoming::server_allowed(services, &room_id, origin)?
        || !services.rooms.members.is_joined(&room_id, &user_id)?
    {
        tracing::debug!(%origin, %room_id, %user_id, "ignored a typing EDU");
        return Ok(());
    }
    let until = typing.then(|| Instant::now() + REMOTE_TIMEOUT);
    let update = services
        .typing
        .update(&services.globals, &room_id, &user_id, until, false)?;
    if update.changed {
        services.notifier.wake(Topic::Room(room_id.to_string()));
        services.appservices.queue_typing(services, &room_id)?;
    }
    Ok(())
}

/// Queues an `m.typing` EDU for every other server with a member in the room.
fn announce(services: &Services, room_id: &RoomId, user_id: &UserId, typing: bool) -> Result<()> {
    let own = services.globals.server_name();
    let destinations: Vec<OwnedServerName> = services
        .rooms
        .members
        .servers_in_room_except(room_id, own)?;
    if destinations.is_empty() {
        return Ok(());
    }
    let edu = json!({
        "edu_type": "m.typing",
        "content": { "room_id": room_id, "user_id": user_id, "typing": typing },
    });
    services.globals.write_with_count(|batch, count| {
        services
            .sending
            .queue_edu_in_batch(batch, &destinations, count, &edu);
        Ok(())
    })?;
    services.sending.wake(&destinations);
    Ok(())
}

/// Ends typing whose time is up, until `shutdown` flips: wakes the rooms' long-polls and tells
/// other servers that local users stopped.
pub async fn run_expiry(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = services.typing.next_deadline();
        let sleep = async {
            match next {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = services.typing.deadline_added.notified() => continue,
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        let expired = match services.typing.expire(&services.globals, Instant::now()) {
            Ok(expired) => expired,
            Err(error) => {
                tracing::error!(%error, "reserving typing positions failed");
                continue;
            }
        };
        let own = services.globals.server_name();
        for (room_id, user_id) in expired {
            services.notifier.wake(Topic::Room(room_id.to_string()));
            if let Err(error) = services.appservices.queue_typing(&services, &room_id) {
                tracing::error!(%error, "queueing typing for appservices failed");
            }
            if user_id.server_name() == own {
                if let Err(error) = announce(&services, &room_id, &user_id, false) {
                    tracing::error!(%error, "queueing a typing EDU failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn open(dir: &std::path::Path) -> (Globals, Typing) {
        let db = crate::store::Db::open(dir, false).unwrap();
        let config = Config {
            database_path: dir.to_owned(),
            ..Config::default()
        };
        let globals = Globals::open(&db, &config).unwrap();
        let typing = Typing::open(&globals).unwrap();
        (globals, typing)
    }

    #[tokio::test]
    async fn changes_move_positions_and_deadlines_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (globals, typing) = open(dir.path());
        let room = ruma::owned_room_id!("!r:x");
        let alice = ruma::owned_user_id!("@alice:x");
        let start = typing.current();
        assert_eq!(typing.get_changed(&room, None), None);
        assert_eq!(typing.get_changed(&room, Some(start)), None);

        let soon = Instant::now() + Duration::from_millis(5);
        let first = typing.update(&globals, &room, &alice, Some(soon), true);
        assert_eq!(
            first.unwrap(),
            Update {
                changed: true,
                announce: true
            }
        );
        let after_start = typing.current();
        assert!(after_start > start);
        assert_eq!(
            typing.get_changed(&room, Some(start)),
            Some(vec![alice.clone()])
        );
        assert_eq!(typing.get_changed(&room, Some(after_start)), None);
        assert_eq!(typing.get_changed(&room, None), Some(vec![alice.clone()]));

        // Typing again only moves the deadline, and is not announced again so soon.
        let repeat = typing.update(&globals, &room, &alice, Some(soon), true);
        assert_eq!(repeat.unwrap(), Update::default());

        let expired = typing
            .expire(&globals, soon + Duration::from_millis(1))
            .unwrap();
        assert_eq!(expired, vec![(room.clone(), alice.clone())]);
        assert_eq!(typing.get_changed(&room, Some(after_start)), Some(vec![]));
        assert_eq!(typing.get_changed(&room, None), None);
        assert_eq!(typing.next_deadline(), None);
        let stop = typing.update(&globals, &room, &alice, None, true);
        assert_eq!(
            stop.unwrap(),
            Update::default(),
            "stopping twice is no change"
        );
    }

    #[tokio::test]
    async fn a_restart_continues_after_every_position_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let room = ruma::owned_room_id!("!r:x");
        let alice = ruma::owned_user_id!("@alice:x");
        let last = {
            let (globals, typing) = open(dir.path());
            let until = Instant::now() + Duration::from_secs(10);
            for _ in 0..(RESERVE_BLOCK + 5) {
                typing
                    .update(&globals, &room, &alice, Some(until), false)
                    .unwrap();
                typing.update(&globals, &room, &alice, None, false).unwrap();
            }
            typing.current()
        };
        let (globals, typing) = open(dir.path());
        assert!(typing.current() > last);
        // A token from the earlier run gets the (now empty) set of every room.
        assert_eq!(typing.get_changed(&room, Some(last)), Some(vec![]));
        assert_eq!(typing.get_changed(&room, Some(typing.current())), None);

        // A token from a run in which nobody typed, or from before typing existed, saw nobody
        // typing and is told nothing.
        let quiet_start = typing.current();
        drop((globals, typing));
        let (globals, typing) = open(dir.path());
        assert_eq!(typing.get_changed(&room, Some(quiet_start)), None);
        assert_eq!(typing.get_changed(&room, Some(0)), None);
        let until = Instant::now() + Duration::from_secs(10);
        typing
            .update(&globals, &room, &alice, Some(until), false)
            .unwrap();
        assert_eq!(
            typing.get_changed(&room, Some(quiet_start)),
            Some(vec![alice])
        );
    }
}
