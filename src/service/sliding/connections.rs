//! Sliding-sync connections kept in memory: per (user, device, `conn_id`), the state of each
//! response the client may still sync from, by its `pos`.
//!
//! A request with a `pos` builds on that response's state, so a retry with the same `pos` (after
//! a cancelled request) answers consistently; positions older than the newest
//! `MAX_POSITIONS` of a connection, connections idle past `IDLE_EXPIRY` and the least recently
//! used connections past `MAX_CONNECTIONS_PER_USER` are forgotten, and their `pos` then answers
//! `M_UNKNOWN_POS`, after which the client starts the connection over.
//! After a restart every `pos` is unknown, which the MSC allows.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, UserId};

use crate::error::{Error, Result};

/// Responses a connection may still sync from.
const MAX_POSITIONS: usize = 8;
/// Connections kept per user (Element X opens three per device).
const MAX_CONNECTIONS_PER_USER: usize = 24;
/// Users with connections; past this, the least recently used user's connections go.
const MAX_USERS: usize = 100_000;
/// A connection not used for this long is forgotten.
const IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// What the client holds of one room after a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRoom {
    /// The stream position the room's data was sent up to.
    pub count: u64,
    /// The membership the room was sent with.
    pub membership: MembershipState,
    /// The room's `required_state` config when it was last sent in full.
    pub required_state: Arc<[(String, String)]>,
    pub timeline_limit: u64,
    /// The notification and highlight counts sent.
    pub unread: (u64, u64),
}

/// The state of a connection after one response.
#[derive(Clone, Debug, Default)]
pub struct PosState {
    /// The stream position the response covers.
    pub count: u64,
    /// The typing position it covers.
    pub typing: u64,
    /// The rooms the client holds.
    pub rooms: Arc<HashMap<OwnedRoomId, SentRoom>>,
    /// Each list's `count` in the response.
    pub lists: BTreeMap<String, u64>,
}

/// One connection's recent responses, oldest first.
struct Connection {
    positions: VecDeque<(u64, Arc<PosState>)>,
    used: Instant,
}

/// A user's connections by (device, `conn_id`).
type UserConnections = HashMap<(String, String), Connection>;

/// Every user's connections.
#[derive(Default)]
pub struct Connections {
    users: Mutex<HashMap<OwnedUserId, UserConnections>>,
    /// The last `pos` handed out; positions are unique across the server.
    last_pos: AtomicU64,
}

impl Connections {
    /// The state a request builds on: `None` without a `pos` (the connection starts over and
    /// its old positions are dropped); `M_UNKNOWN_POS` for a `pos` this connection does not
    /// hold (expired, from before a restart, or of another user, device or connection).
    pub fn base(
        &self,
        user: &UserId,
        key: (&str, &str),
        pos: Option<&str>,
    ) -> Result<Option<Arc<PosState>>> {
        let mut users = self.users.lock();
        let connection_key = (key.0.to_owned(), key.1.to_owned());
        let Some(pos) = pos else {
            if let Some(connections) = users.get_mut(user) {
                connections.remove(&connection_key);
            }
            return Ok(None);
        };
        let unknown = || Error::unknown_pos(format!("unknown or expired pos {pos}"));
        let wanted: u64 = pos.parse().map_err(|_| unknown())?;
        let connection = users
            .get_mut(user)
            .and_then(|connections| connections.get_mut(&connection_key))
            .filter(|connection| connection.used.elapsed() < IDLE_EXPIRY)
            .ok_or_else(unknown)?;
        connection.used = Instant::now();
        connection
            .positions
            .iter()
            .find(|(id, _)| *id == wanted)
            .map(|(_, state)| Some(Arc::clone(state)))
            .ok_or_else(unknown)
    }

    /// Stores the state after a response and returns its new `pos`.
    pub fn store(&self, user: &UserId, key: (&str, &str), state: PosState) -> String {
        let id = self.last_pos.fetch_add(1, Ordering::Relaxed) + 1;
        let mut users = self.users.lock();
        if users.len() >= MAX_USERS && !users.contains_key(user) {
            let oldest = users
                .iter()
                .min_by_key(|(_, connections)| connections.values().map(|c| c.used).max())
                .map(|(user, _)| user.clone());
            if let Some(oldest) = oldest {
                users.remove(&oldest);
            }
        }
        let connections = users.entry(user.to_owned()).or_default();
        connections.retain(|_, connection| connection.used.elapsed() < IDLE_EXPIRY);
        let connection_key = (key.0.to_owned(), key.1.to_owned());
        if connections.len() >= MAX_CONNECTIONS_PER_USER
            && !connections.contains_key(&connection_key)
        {
            let oldest = connections
                .iter()
                .min_by_key(|(_, connection)| connection.used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                connections.remove(&oldest);
            }
        }
        let connection = connections
            .entry(connection_key)
            .or_insert_with(|| Connection {
                positions: VecDeque::new(),
                used: Instant::now(),
            });
        connection.used = Instant::now();
        connection.positions.push_back((id, Arc::new(state)));
        while connection.positions.len() > MAX_POSITIONS {
            connection.positions.pop_front();
        }
        id.to_string()
    }

    /// The number of connections and positions held, for tests and metrics.
    pub fn held(&self, user: &UserId) -> (usize, usize) {
        let users = self.users.lock();
        users.get(user).map_or((0, 0), |connections| {
            let positions = connections.values().map(|c| c.positions.len()).sum();
            (connections.len(), positions)
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;

    #[test]
    fn positions_and_connections_are_bounded_and_private() {
        let connections = Connections::default();
        let alice = owned_user_id!("@alice:localhost");
        let bob = owned_user_id!("@bob:localhost");
        let first = connections.store(&alice, ("DEV", "room-list"), PosState::default());
        assert!(connections
            .base(&alice, ("DEV", "room-list"), Some(&first))
            .unwrap()
            .is_some());
        // Another user, device or connection does not hold it.
        for (user, key) in [
            (&bob, ("DEV", "room-list")),
            (&alice, ("OTHER", "room-list")),
            (&alice, ("DEV", "encryption")),
        ] {
            assert!(connections.base(user, key, Some(&first)).is_err());
        }
        for _ in 0..20 {
            connections.store(&alice, ("DEV", "room-list"), PosState::default());
        }
        assert!(connections
            .base(&alice, ("DEV", "room-list"), Some(&first))
            .is_err());
        assert_eq!(connections.held(&alice), (1, MAX_POSITIONS));
        for index in 0..40 {
            connections.store(&alice, ("DEV", &index.to_string()), PosState::default());
        }
        assert_eq!(connections.held(&alice).0, MAX_CONNECTIONS_PER_USER);
        // A request without pos starts its connection over.
        connections.base(&alice, ("DEV", "39"), None).unwrap();
        assert_eq!(connections.held(&alice).0, MAX_CONNECTIONS_PER_USER - 1);
        assert!(connections.base(&alice, ("DEV", "38"), Some("x")).is_err());
    }
}
