//! Per-account moderation that admins set, kept in the admin service's `adminkey_value` (this
//! part of the `Admin` service holds its own handle on the tree, and only touches the keys below)
//! and copied in memory (read on every request): locks and suspensions (client-server spec v1.18,
//! "Account moderation") and rate-limit overrides (`users ratelimit`, Synapse's
//! `override_ratelimit`).
//!
//! Keys: `locked` 0xff user ID and `suspended` 0xff user ID → u64 ms since the epoch when set;
//! `ratelimit` 0xff user ID → JSON [`RateOverride`].

use std::collections::{HashMap, HashSet};

use ruma::{api::error::ErrorKind, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::{key, Tree},
    util,
};

const LOCKED: &[u8] = b"locked";
const SUSPENDED: &[u8] = b"suspended";
const RATE_LIMIT: &[u8] = b"ratelimit";

/// A user's override of the per-user rate limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateOverride {
    /// No per-user limit at all.
    Unlimited,
    /// Each limit's rate and burst multiplied by these factors (above zero).
    Scaled { rate_factor: f64, burst_factor: f64 },
}

/// The flags: stored under their keys of `adminkey_value`, and in memory.
pub struct AccountFlags {
    adminkey_value: Tree,
    flags: parking_lot::RwLock<Flags>,
}

/// The in-memory copy of the flags.
#[derive(Default)]
struct Flags {
    locked: HashSet<OwnedUserId>,
    suspended: HashSet<OwnedUserId>,
    rate: HashMap<OwnedUserId, RateOverride>,
}

impl Flags {
    /// Reads every stored flag.
    fn load(tree: &Tree) -> Result<Self> {
        let mut flags = Self::default();
        for (kind, set) in [
            (LOCKED, &mut flags.locked),
            (SUSPENDED, &mut flags.suspended),
        ] {
            for (user_id, _) in users_under(tree, kind)? {
                set.insert(user_id);
            }
        }
        for (user_id, value) in users_under(tree, RATE_LIMIT)? {
            let rate =
                serde_json::from_slice(&value).map_err(|e| Error::corrupt("adminkey_value", e))?;
            flags.rate.insert(user_id, rate);
        }
        Ok(flags)
    }
}

/// The users (and values) stored under one kind of flag.
fn users_under(tree: &Tree, kind: &'static [u8]) -> Result<Vec<(OwnedUserId, Vec<u8>)>> {
    let prefix = key::prefix(&[kind]);
    let mut users = Vec::new();
    for entry in tree.iter_prefix(&prefix) {
        let (db_key, value) = entry?;
        let user = String::from_utf8_lossy(&db_key[prefix.len()..]).into_owned();
        let user_id =
            OwnedUserId::try_from(user).map_err(|e| Error::corrupt("adminkey_value", e))?;
        users.push((user_id, value.to_vec()));
    }
    Ok(users)
}

fn flag_key(kind: &[u8], user_id: &UserId) -> Vec<u8> {
    key::join(&[kind, user_id.as_bytes()])
}

impl AccountFlags {
    /// Reads the stored flags of `adminkey_value`.
    pub fn open(adminkey_value: Tree) -> Result<Self> {
        Ok(Self {
            flags: parking_lot::RwLock::new(Flags::load(&adminkey_value)?),
            adminkey_value,
        })
    }

    /// Whether the account is locked: every client request but logging out answers
    /// `401 M_USER_LOCKED` (checked at the HTTP edge).
    pub fn is_locked(&self, user_id: &UserId) -> bool {
        let flags = self.flags.read();
        !flags.locked.is_empty() && flags.locked.contains(user_id)
    }

    /// Whether the account is suspended.
    pub fn is_suspended(&self, user_id: &UserId) -> bool {
        let flags = self.flags.read();
        !flags.suspended.is_empty() && flags.suspended.contains(user_id)
    }

    /// `403 M_USER_SUSPENDED` for a suspended account: called by the actions the spec
    /// recommends forbidding (joins, knocks, invites, sending, profile changes, redacting
    /// others' events).
    pub fn check_not_suspended(&self, user_id: &UserId) -> Result<()> {
        if self.is_suspended(user_id) {
            return Err(Error::matrix(
                ErrorKind::UserSuspended,
                format!("{user_id} cannot perform this action while suspended"),
            ));
        }
        Ok(())
    }

    /// Locks or unlocks an account; whether that changed anything. Access tokens are kept, so
    /// that the user's sessions work again once unlocked (as the spec asks).
    pub fn set_locked(&self, user_id: &UserId, locked: bool) -> Result<bool> {
        self.set_flag(LOCKED, user_id, locked)
    }

    /// Suspends or unsuspends an account; whether that changed anything.
    pub fn set_suspended(&self, user_id: &UserId, suspended: bool) -> Result<bool> {
        self.set_flag(SUSPENDED, user_id, suspended)
    }

    fn set_flag(&self, kind: &'static [u8], user_id: &UserId, on: bool) -> Result<bool> {
        let mut flags = self.flags.write();
        let set = if kind == LOCKED {
            &mut flags.locked
        } else {
            &mut flags.suspended
        };
        if set.contains(user_id) == on {
            return Ok(false);
        }
        let db_key = flag_key(kind, user_id);
        if on {
            self.adminkey_value
                .insert(&db_key, &key::u64_bytes(util::now_millis()))?;
            set.insert(user_id.to_owned());
        } else {
            self.adminkey_value.remove(&db_key)?;
            set.remove(user_id);
        }
        tracing::info!(user = %user_id, flag = %String::from_utf8_lossy(kind), on, "account flag changed");
        Ok(true)
    }

    /// The user's rate-limit override, if any.
    pub fn get_rate_override(&self, user_id: &UserId) -> Option<RateOverride> {
        let flags = self.flags.read();
        if flags.rate.is_empty() {
            return None;
        }
        flags.rate.get(user_id).copied()
    }

    /// Sets (or with `None` removes) the user's rate-limit override.
    pub fn set_rate_override(&self, user_id: &UserId, rate: Option<RateOverride>) -> Result<()> {
        let mut flags = self.flags.write();
        let db_key = flag_key(RATE_LIMIT, user_id);
        match rate {
            Some(rate) => {
                let value = serde_json::to_vec(&rate).map_err(Error::internal)?;
                self.adminkey_value.insert(&db_key, &value)?;
                flags.rate.insert(user_id.to_owned(), rate);
            }
            None => {
                self.adminkey_value.remove(&db_key)?;
                flags.rate.remove(user_id);
            }
        }
        tracing::info!(user = %user_id, ?rate, "rate-limit override changed");
        Ok(())
    }
}
