//! The `[rate_limits]` table: one token bucket (a steady rate and a burst) per kind of action,
//! and the switch that turns them all off.
//!
//! The defaults follow Synapse's (`rc_login`, `rc_registration`, `rc_message`, `rc_joins`,
//! `rc_invites`, `rc_media_create`, `rc_key_requests`; federation in the spirit of
//! `rc_federation`'s reject limit), so that a client written against Synapse sees the same
//! limits here.

use serde::{Deserialize, Serialize};

/// A token bucket: `burst` actions at once, then one every `1 / per_second` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second (a fraction for slower rates: `0.003` is one every 5.5 minutes).
    pub per_second: f64,
    /// Tokens the bucket holds: how many actions may come at once after a quiet time.
    pub burst: u32,
}

impl Rate {
    const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// The rate limits of each action. Over a limit a request is answered `429 M_LIMIT_EXCEEDED`
/// with `retry_after_ms` (and a `Retry-After` header) before any of its work is done. Server
/// admins are exempt from the limits of authenticated actions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Whether any limit applies; `false` switches them all off (from the environment:
    /// `PLAIT_RATE_LIMITS_ENABLED=false`).
    pub enabled: bool,
    /// Login attempts from one client address, right or wrong.
    pub login_address: Rate,
    /// Failed logins to one account, from any address: checked before the password is, spent
    /// on each failure, so that guessing one account's password is slow from however many
    /// addresses.
    pub login_failed_attempts: Rate,
    /// Accounts registered from one client address.
    pub registration: Rate,
    /// Events (messages, state, redactions) sent by one user.
    pub message: Rate,
    /// Rooms joined or knocked on by one user.
    pub joins: Rate,
    /// Invites sent by one user.
    pub invites_per_issuer: Rate,
    /// Invites received by one user, whoever sends them.
    pub invites_per_target: Rate,
    /// Media uploads and reserved media IDs of one user.
    pub media_create: Rate,
    /// One-time key claims (`/keys/claim`) of one user.
    pub key_claims: Rate,
    /// Signed federation requests from one origin server (transactions and every other
    /// federation endpoint).
    pub federation: Rate,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            login_address: Rate::new(0.003, 5),
            login_failed_attempts: Rate::new(0.17, 3),
            registration: Rate::new(0.17, 3),
            message: Rate::new(0.2, 10),
            joins: Rate::new(0.1, 10),
            invites_per_issuer: Rate::new(0.3, 10),
            invites_per_target: Rate::new(0.003, 5),
            media_create: Rate::new(10.0, 50),
            key_claims: Rate::new(20.0, 100),
            federation: Rate::new(50.0, 200),
        }
    }
}

impl RateLimitSettings {
    /// Every limit switched off (test harnesses and benchmarks).
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Each bucket with its key name, for validation and the rate-limit service.
    pub fn buckets(&self) -> [(&'static str, Rate); 10] {
        [
            ("login_address", self.login_address),
            ("login_failed_attempts", self.login_failed_attempts),
            ("registration", self.registration),
            ("message", self.message),
            ("joins", self.joins),
            ("invites_per_issuer", self.invites_per_issuer),
            ("invites_per_target", self.invites_per_target),
            ("media_create", self.media_create),
            ("key_claims", self.key_claims),
            ("federation", self.federation),
        ]
    }

    /// Each rate positive and finite, each burst at least 1.
    pub(super) fn validate(&self) -> Result<(), String> {
        for (name, rate) in self.buckets() {
            if !(rate.per_second.is_finite() && rate.per_second > 0.0) || rate.burst == 0 {
                return Err(format!(
                    "invalid configuration key `rate_limits.{name}`: per_second must be above 0 and burst at least 1"
                ));
            }
        }
        Ok(())
    }
}
