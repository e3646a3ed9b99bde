//! Presence changes: set by a client (`PUT`, `/sync?set_presence`), received from another
//! server, or made by the timer; each is one batch with a new stream position, then wakes the
//! syncs of users who share a room and queues EDUs for the servers that do.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::Value;

use super::{encode, Entry, State, MAX_STATUS_MSG_BYTES};
use crate::{
    error::Result,
    service::{
        notify::Topic,
        privacy::{self, Aspect},
        Services,
    },
    store::key,
    util,
};

/// How long a device's `online` sync outweighs another device's `unavailable` (ms): longer than
/// a client's usual long-poll, so a device in use stays `online` between its syncs.
const ONLINE_DEVICE_HOLD_MS: u64 = 60_000;

/// Sets a local user's presence and status message (`PUT /presence/{userId}/status`); counts as
/// activity.
#[tracing::instrument(skip_all, fields(user = %user, presence = state.as_str()))]
pub fn set_local(
    services: &Services,
    user: &UserId,
    device: &str,
    state: State,
    status_msg: Option<String>,
) -> Result<()> {
    let now = util::now_millis();
    let needed = services.presence.with_entry(user, |entry| {
        entry.last_active = now;
        entry.last_seen = now;
        if state == State::Online {
            entry.online_device = Some(device.to_owned());
            entry.online_at = now;
        }
        entry.state != state || entry.status_msg != status_msg
    })?;
    if needed {
        change_local(services, user, |entry| {
            if entry.state == state && entry.status_msg == status_msg {
                return false;
            }
            entry.state = state;
            entry.status_msg = status_msg;
            true
        })?;
    }
    Ok(())
}

/// A sync in progress; dropping it records the end of the sync as contact.
pub struct SyncGuard {
    services: Arc<Services>,
    user: OwnedUserId,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let now = util::now_millis();
        if let Some(entry) = self.services.presence.users.lock().get_mut(&self.user) {
            entry.syncing = entry.syncing.saturating_sub(1);
            entry.last_seen = now;
        }
    }
}

/// Applies a sync's `set_presence`: `online` and `unavailable` set the state and keep the user
/// from timing out until the returned guard drops; `offline` changes nothing (the spec: the
/// client "is not marked as being online"). An `unavailable` device does not override another
/// device that synced as `online` within [`ONLINE_DEVICE_HOLD_MS`].
pub fn start_sync(
    services: &Arc<Services>,
    user: &UserId,
    device: &str,
    set_presence: State,
) -> Result<Option<SyncGuard>> {
    if set_presence == State::Offline {
        return Ok(None);
    }
    let now = util::now_millis();
    let wanted = |entry: &Entry| match set_presence {
        State::Unavailable
            if entry.state == State::Online
                && entry.online_device.as_deref() != Some(device)
                && now.saturating_sub(entry.online_at) < ONLINE_DEVICE_HOLD_MS =>
        {
            State::Online
        }
        _ => set_presence,
    };
    let needed = services.presence.with_entry(user, |entry| {
        entry.syncing += 1;
        entry.last_seen = now;
        if set_presence == State::Online {
            entry.last_active = now;
            entry.online_device = Some(device.to_owned());
            entry.online_at = now;
        }
        entry.state != wanted(entry)
    })?;
    let guard = SyncGuard {
        services: Arc::clone(services),
        user: user.to_owned(),
    };
    if needed {
        change_local(services, user, |entry| {
            let state = wanted(entry);
            if entry.state == state {
                return false;
            }
            entry.state = state;
            true
        })?;
    }
    Ok(Some(guard))
}

/// One update of an `m.presence` EDU, checked.
struct RemoteUpdate {
    user_id: OwnedUserId,
    state: State,
    status_msg: Option<String>,
    last_active_ago: u64,
    currently_active: bool,
}

impl RemoteUpdate {
    fn parse(value: &Value) -> Option<Self> {
        let status_msg = match value.get("status_msg") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.len() <= MAX_STATUS_MSG_BYTES => Some(text.clone()),
            Some(_) => return None,
        };
        Some(Self {
            user_id: OwnedUserId::try_from(value.get("user_id")?.as_str()?).ok()?,
            state: State::parse(value.get("presence")?.as_str()?)?,
            status_msg,
            last_active_ago: value
                .get("last_active_ago")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            currently_active: value
                .get("currently_active")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// Applies the `push` list of an `m.presence` EDU from `origin`. Updates about users of other
/// servers, malformed updates, and users who are in no room here are ignored: a server speaks
/// only for its own users, and only presence someone here can see is kept.
#[tracing::instrument(skip_all, fields(origin = %origin))]
pub fn receive_edu(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let updates = content.get("push").and_then(Value::as_array);
    for value in updates.into_iter().flatten() {
        let Some(update) = RemoteUpdate::parse(value) else {
            tracing::debug!(%origin, "ignoring a malformed presence update");
            continue;
        };
        if update.user_id.server_name() != origin {
            tracing::debug!(%origin, user = %update.user_id, "ignoring presence for another server's user");
            continue;
        }
        receive_update(services, update)?;
    }
    Ok(())
}

fn receive_update(services: &Services, update: RemoteUpdate) -> Result<()> {
    let now = util::now_millis();
    let presence = &services.presence;
    let user = &update.user_id;
    let last_active = now.saturating_sub(update.last_active_ago);
    let unchanged = |entry: &Entry| {
        entry.state == update.state
            && entry.status_msg == update.status_msg
            && entry.currently_active == update.currently_active
    };
    // A user already in memory was accepted before: an update that changes nothing only moves
    // the timestamps, without a room lookup or a write.
    if let Some(entry) = presence.users.lock().get_mut(user) {
        entry.last_seen = now;
        entry.last_active = last_active;
        if unchanged(entry) {
            return Ok(());
        }
    }
    let rooms = services.rooms.members.iter_joined_rooms(user)?;
    if rooms.is_empty() {
        tracing::debug!(%user, "ignoring presence of a user in no room here");
        return Ok(());
    }
    presence.with_entry(user, |entry| {
        entry.last_seen = now;
        entry.last_active = last_active;
    })?;
    commit(services, user, &rooms, &[], |entry| {
        if unchanged(entry) {
            return false;
        }
        entry.state = update.state;
        entry.status_msg = update.status_msg.clone();
        entry.currently_active = update.currently_active;
        true
    })?;
    Ok(())
}

/// Changes a local user's entry with `apply` (which says whether it changed anything), sending
/// the change to every server that shares a room with the user.
pub(super) fn change_local(
    services: &Services,
    user: &UserId,
    apply: impl FnOnce(&mut Entry) -> bool,
) -> Result<bool> {
    let rooms = services.rooms.members.iter_joined_rooms(user)?;
    let destinations = destinations(services, user, &rooms)?;
    commit(services, user, &rooms, &destinations, apply)
}

/// The other servers with a joined member in any of `rooms` (the rooms `user` is joined to) that
/// `user`'s privacy settings let see their presence (`service::privacy`); each room's list is
/// cached by `Members`, so this costs one lookup per room for a user who shares with everyone.
pub(super) fn destinations(
    services: &Services,
    user: &UserId,
    rooms: &[OwnedRoomId],
) -> Result<Vec<OwnedServerName>> {
    let own = services.globals.server_name();
    let mut servers = BTreeSet::new();
    for room_id in rooms {
        for server in services.rooms.members.servers_in_room(room_id)?.iter() {
            if server != own {
                servers.insert(server.clone());
            }
        }
    }
    let mut allowed = Vec::with_capacity(servers.len());
    for server in servers {
        if privacy::allows_server(services, user, &server, Aspect::Presence)? {
            allowed.push(server);
        }
    }
    Ok(allowed)
}

/// Writes a change at a new stream position: the record, the stream entry (replacing the
/// user's previous one) and the EDUs for `destinations`, in one batch; then wakes the syncs of
/// the user and of `rooms`, and the sender. `apply` runs under the commit lock, so concurrent
/// changes of one user are applied and numbered in one order. Returns whether it changed.
pub(super) fn commit(
    services: &Services,
    user: &UserId,
    rooms: &[OwnedRoomId],
    destinations: &[OwnedServerName],
    apply: impl FnOnce(&mut Entry) -> bool,
) -> Result<bool> {
    let presence = &services.presence;
    let now = util::now_millis();
    let mut changed = false;
    services.globals.write_with_count(|batch, count| {
        let mut users = presence.users.lock();
        let entry = users.entry(user.to_owned()).or_default();
        let applied = apply(entry);
        // Offline remote users need no memory: their record answers reads.
        let forget = entry.state == State::Offline && !presence.is_local(user);
        if !applied {
            if forget {
                users.remove(user);
            }
            return Ok(());
        }
        if entry.count != 0 {
            batch.remove(&presence.presencecount_userid, &key::u64_bytes(entry.count));
        }
        entry.count = count;
        batch.insert(
            &presence.presencecount_userid,
            &key::u64_bytes(count),
            user.as_bytes(),
        );
        batch.insert(&presence.userid_presence, user.as_bytes(), &encode(entry)?);
        services
            .appservices
            .queue_presence_in_batch(batch, count, user)?;
        if !destinations.is_empty() {
            let edu = presence.edu(user, entry, now);
            services
                .sending
                .queue_edu_in_batch(batch, destinations, count, &edu);
            entry.last_federated = now;
        }
        if forget {
            users.remove(user);
        }
        changed = true;
        Ok(())
    })?;
    if changed {
        services.notifier.wake(Topic::User(user.to_string()));
        for room_id in rooms {
            services.notifier.wake(Topic::Room(room_id.to_string()));
        }
        services.sending.wake(destinations);
        services.appservices.wake_all();
    }
    Ok(changed)
}
