//! The presence timer: local users whose clients went quiet go offline, remote users whose
//! server stopped refreshing them go offline, and local users who stay online are sent to other
//! servers again before those servers time them out. At shutdown it stores last-active times.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

use super::{encode, update, Entry, State};
use crate::{error::Result, service::Services, store::Batch, util};

/// A remote user whose server sent nothing about them for this long goes offline here (ms).
pub const REMOTE_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// A local user who stays online or unavailable is sent to other servers again after this long
/// (ms), inside the [`REMOTE_TIMEOUT_MS`] that other servers apply to our users.
pub const FEDERATION_REFRESH_MS: u64 = 25 * 60 * 1000;

/// What the timer owes one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    Offline,
    Refresh,
}

/// The timer's rule for one entry at `now`.
fn due(local: bool, entry: &Entry, now: u64, offline_timeout_ms: u64) -> Due {
    if entry.state == State::Offline {
        return Due::Nothing;
    }
    let quiet = now.saturating_sub(entry.last_seen);
    if !local {
        return if quiet >= REMOTE_TIMEOUT_MS {
            Due::Offline
        } else {
            Due::Nothing
        };
    }
    if entry.syncing == 0 && quiet >= offline_timeout_ms {
        Due::Offline
    } else if now.saturating_sub(entry.last_federated) >= FEDERATION_REFRESH_MS {
        Due::Refresh
    } else {
        Due::Nothing
    }
}

/// Runs the timer until `shutdown` flips, ticking ten times per offline timeout (at least every
/// 30 s), then stores the last-active times of local users.
pub async fn run(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    let period =
        Duration::from_millis((services.presence.offline_timeout_ms / 10).clamp(50, 30_000));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => break,
        }
        tick(&services, util::now_millis());
    }
    if let Err(error) = store_last_active(&services) {
        tracing::error!(%error, "storing presence last-active times failed");
    }
}

/// Applies what is due; the work is collected under the lock and done after it.
fn tick(services: &Services, now: u64) {
    let presence = &services.presence;
    let timeout = presence.offline_timeout_ms;
    let work: Vec<(OwnedUserId, Due)> = presence
        .users
        .lock()
        .iter()
        .map(|(user, entry)| (user, due(presence.is_local(user), entry, now, timeout)))
        .filter(|(_, due)| *due != Due::Nothing)
        .map(|(user, due)| (user.clone(), due))
        .collect();
    for (user, due_now) in work {
        let local = presence.is_local(&user);
        // Checked again under the commit lock: a sync may have started since.
        let go_offline = |entry: &mut Entry| {
            if due(local, entry, now, timeout) != Due::Offline {
                return false;
            }
            entry.state = State::Offline;
            true
        };
        let result = match due_now {
            Due::Offline if local => update::change_local(services, &user, go_offline).map(drop),
            Due::Offline => services
                .rooms
                .members
                .iter_joined_rooms(&user)
                .and_then(|rooms| update::commit(services, &user, &rooms, &[], go_offline))
                .map(drop),
            Due::Refresh => refresh(services, &user, now),
            Due::Nothing => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(%error, %user, "presence timer failed");
        }
    }
}

/// Queues a local user's current presence again for every server sharing a room. This takes a
/// stream position for the queue keys without changing the presence stream.
fn refresh(services: &Services, user: &UserId, now: u64) -> Result<()> {
    let presence = &services.presence;
    let rooms = services.rooms.members.iter_joined_rooms(user)?;
    let destinations = update::destinations(services, user, &rooms)?;
    if destinations.is_empty() {
        if let Some(entry) = presence.users.lock().get_mut(user) {
            entry.last_federated = now;
        }
        return Ok(());
    }
    services.globals.write_with_count(|batch, count| {
        let mut users = presence.users.lock();
        if let Some(entry) = users
            .get_mut(user)
            .filter(|entry| entry.state != State::Offline)
        {
            let edu = presence.edu(user, entry, now);
            services
                .sending
                .queue_edu_in_batch(batch, &destinations, count, &edu);
            entry.last_federated = now;
        }
        Ok(())
    })?;
    services.sending.wake(&destinations);
    Ok(())
}

/// Stores the in-memory last-active and last-contact times of local users, so that a restart
/// neither forgets them nor takes users offline who were active just before it. Holds the
/// commit lock so that no change is overwritten with an older record.
fn store_last_active(services: &Services) -> Result<()> {
    let presence = &services.presence;
    let _commit = services.globals.commit_lock.lock();
    let users = presence.users.lock();
    let mut batch = Batch::default();
    for (user, entry) in users.iter() {
        if presence.is_local(user) && entry.last_seen != 0 {
            batch.insert(&presence.userid_presence, user.as_bytes(), &encode(entry)?);
        }
    }
    presence.db.write(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_rules() {
        let timeout = 1_000;
        let online = |last_seen, syncing, last_federated| Entry {
            state: State::Online,
            last_seen,
            syncing,
            last_federated,
            ..Entry::default()
        };
        let now = 10 * FEDERATION_REFRESH_MS;
        let check = |local, entry: Entry, expected| {
            assert_eq!(due(local, &entry, now, timeout), expected, "{entry:?}")
        };
        // Local users: quiet for the timeout and not syncing → offline.
        check(true, online(now - 1_000, 0, now), Due::Offline);
        check(true, online(now - 999, 0, now), Due::Nothing);
        check(true, online(now - 5_000, 1, now), Due::Nothing);
        check(
            true,
            Entry {
                state: State::Offline,
                ..online(0, 0, 0)
            },
            Due::Nothing,
        );
        // Local users who stay on are sent again after the refresh interval.
        check(
            true,
            online(now, 1, now - FEDERATION_REFRESH_MS),
            Due::Refresh,
        );
        // Remote users time out only after the remote timeout, syncing or not.
        check(false, online(now - 5_000, 0, 0), Due::Nothing);
        check(false, online(now - REMOTE_TIMEOUT_MS, 0, 0), Due::Offline);
    }
}
