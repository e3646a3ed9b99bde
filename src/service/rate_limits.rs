//! Rate limits: a token bucket per action and per client address, user or origin server, held
//! in memory (`[rate_limits]` in the config).
//!
//! Each bucket is kept as the generic cell rate algorithm keeps it: one instant per key, when
//! the bucket will be full again (its "theoretical arrival time"). An action conforms when,
//! after adding one interval to that instant, the bucket is not over its burst; a refused action
//! changes nothing, and the wait it is told is exact. A key whose bucket is full again is the
//! same as no key, so a set of buckets holds at most [`MAX_KEYS`] keys: past that it forgets
//! those already full, then the half nearest to full, so that hostile keys (random user names,
//! many addresses) cannot grow memory without bound.
//!
//! Why not the `governor` crate: its keyed limiter cannot look at a bucket without spending
//! from it, which the failed-login limit needs (checked before the password, spent only on a
//! failure); its key map is bounded only by a sweep that must be scheduled; and it brings
//! `dashmap`, `quanta` and the `futures` timers into the build for what is forty lines here.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{ServerName, UserId};

use crate::{
    config::{Rate, RateLimitSettings},
    error::{Error, Result},
    service::{admin::account_flags::RateOverride, Services},
};

/// Keys one set of buckets holds at most (about 1 MiB each).
const MAX_KEYS: usize = 16_384;
/// The longest interval between two tokens: rates slower than this are taken as this.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What a limit counts, and what it is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Login attempts per client address.
    LoginAddress,
    /// Failed logins per account, whatever the address.
    LoginFailedAttempts,
    /// Wrong passwords per account in user-interactive auth (password changes, deactivation,
    /// device deletion), counted apart from logins so that someone holding a stolen access token
    /// cannot lock the owner out of logging in.
    UiaFailedAttempts,
    /// Registrations per client address.
    Registration,
    /// Events sent per user.
    Message,
    /// Joins and knocks per user.
    Join,
    /// Invites sent per user.
    InvitesPerIssuer,
    /// Invites received per user.
    InvitesPerTarget,
    /// Uploads and reserved media IDs per user.
    MediaCreate,
    /// One-time key claims per user.
    KeyClaims,
    /// Signed federation requests per origin server.
    Federation,
}

impl Limit {
    const ALL: [Limit; 11] = [
        Limit::LoginAddress,
        Limit::LoginFailedAttempts,
        Limit::UiaFailedAttempts,
        Limit::Registration,
        Limit::Message,
        Limit::Join,
        Limit::InvitesPerIssuer,
        Limit::InvitesPerTarget,
        Limit::MediaCreate,
        Limit::KeyClaims,
        Limit::Federation,
    ];

    fn rate(self, settings: &RateLimitSettings) -> Rate {
        match self {
            Limit::LoginAddress => settings.login_address,
            Limit::LoginFailedAttempts | Limit::UiaFailedAttempts => settings.login_failed_attempts,
            Limit::Registration => settings.registration,
            Limit::Message => settings.message,
            Limit::Join => settings.joins,
            Limit::InvitesPerIssuer => settings.invites_per_issuer,
            Limit::InvitesPerTarget => settings.invites_per_target,
            Limit::MediaCreate => settings.media_create,
            Limit::KeyClaims => settings.key_claims,
            Limit::Federation => settings.federation,
        }
    }

    /// What the refusal names.
    fn what(self) -> &'static str {
        match self {
            Limit::LoginAddress => "login attempts from this address",
            Limit::LoginFailedAttempts => "failed logins to this account",
            Limit::UiaFailedAttempts => "wrong passwords for this account",
            Limit::Registration => "registrations from this address",
            Limit::Message => "events sent",
            Limit::Join => "rooms joined",
            Limit::InvitesPerIssuer => "invites sent",
            Limit::InvitesPerTarget => "invites to this user",
            Limit::MediaCreate => "media uploads",
            Limit::KeyClaims => "key claims",
            Limit::Federation => "requests from this server",
        }
    }
}

/// A bucket's key: a client address (an IPv6 address by its /64, what one client is usually
/// given), or a user ID or server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    Name(Box<str>),
}

impl Key {
    fn address(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !(u128::from(u64::MAX));
                Key::Address(IpAddr::V6(Ipv6Addr::from(network)))
            }
            v4 => Key::Address(v4),
        }
    }

    fn name(name: &str) -> Self {
        Key::Name(name.into())
    }
}

/// The buckets of one limit, one per key.
struct Buckets {
    /// Time between two tokens.
    interval: Duration,
    /// How far ahead of now a bucket's full instant may be: `burst` intervals.
    tolerance: Duration,
    max_keys: usize,
    /// Per key, when its bucket is full again; a key past that instant may be forgotten.
    full_at: Mutex<HashMap<Key, Instant>>,
}

impl Buckets {
    fn new(rate: Rate, max_keys: usize) -> Self {
        let interval = Duration::try_from_secs_f64(1.0 / rate.per_second)
            .unwrap_or(MAX_INTERVAL)
            .min(MAX_INTERVAL);
        Self {
            interval,
            tolerance: interval.saturating_mul(rate.burst),
            max_keys,
            full_at: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more action of `key` conforms at `now`: `Ok`, having spent its token when
    /// `spend`, or the wait until it would conform, having changed nothing.
    #[cfg(test)]
    fn check(&self, key: Key, now: Instant, spend: bool) -> Result<(), Duration> {
        self.check_scaled(key, now, spend, None)
    }

    /// [`Buckets::check`] with the rate and the burst multiplied by `scale` (both above zero),
    /// a user's override.
    fn check_scaled(
        &self,
        key: Key,
        now: Instant,
        spend: bool,
        scale: Option<(f64, f64)>,
    ) -> Result<(), Duration> {
        let (interval, tolerance) = match scale {
            None => (self.interval, self.tolerance),
            Some((rate, burst)) => (
                self.interval.div_f64(rate).min(MAX_INTERVAL),
                self.tolerance.mul_f64(burst / rate).min(MAX_INTERVAL * 64),
            ),
        };
        let mut full_at = self.full_at.lock();
        let current = full_at
            .get(&key)
            .copied()
            .filter(|instant| *instant > now)
            .unwrap_or(now);
        let next = current + interval;
        let ahead = next.saturating_duration_since(now);
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        if spend {
            if full_at.len() >= self.max_keys && !full_at.contains_key(&key) {
                forget(&mut full_at, now, self.max_keys / 2);
            }
            full_at.insert(key, next);
        }
        Ok(())
    }
}

/// Makes room in a full set of buckets: forgets the keys whose bucket is full again, and if more
/// than `keep` remain, the half nearest to full (forgetting a key refills its bucket early), so
/// that the next forgetting is at least `keep` insertions away.
fn forget(full_at: &mut HashMap<Key, Instant>, now: Instant, keep: usize) {
    full_at.retain(|_, instant| *instant > now);
    if full_at.len() > keep {
        let mut instants: Vec<Instant> = full_at.values().copied().collect();
        let middle = instants.len() / 2;
        let (_, median, _) = instants.select_nth_unstable(middle);
        let median = *median;
        full_at.retain(|_, instant| *instant > median);
    }
}

/// Every limit's buckets.
pub struct RateLimits {
    enabled: bool,
    buckets: [Buckets; Limit::ALL.len()],
}

impl RateLimits {
    /// The buckets of `settings`, all empty.
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self::with_max_keys(settings, MAX_KEYS)
    }

    fn with_max_keys(settings: &RateLimitSettings, max_keys: usize) -> Self {
        Self {
            enabled: settings.enabled,
            buckets: Limit::ALL.map(|limit| Buckets::new(limit.rate(settings), max_keys)),
        }
    }

    fn check(&self, limit: Limit, key: Key, spend: bool) -> Result<(), Duration> {
        self.check_scaled(limit, key, spend, None)
    }

    fn check_scaled(
        &self,
        limit: Limit,
        key: Key,
        spend: bool,
        scale: Option<(f64, f64)>,
    ) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let index = Limit::ALL
            .iter()
            .position(|each| *each == limit)
            .expect("every limit is in Limit::ALL");
        self.buckets[index].check_scaled(key, Instant::now(), spend, scale)
    }

    /// Spends a token of `limit` (keyed by client address) for `ip`; a request that came through
    /// no listener has no address and no limit.
    pub fn take_address(&self, limit: Limit, ip: Option<IpAddr>) -> Result<()> {
        self.at_address(limit, ip, true)
    }

    /// Whether `ip` has a token of `limit` left, without spending it.
    pub fn check_address(&self, limit: Limit, ip: Option<IpAddr>) -> Result<()> {
        self.at_address(limit, ip, false)
    }

    fn at_address(&self, limit: Limit, ip: Option<IpAddr>, spend: bool) -> Result<()> {
        let Some(ip) = ip else {
            return Ok(());
        };
        self.check(limit, Key::address(ip), spend)
            .map_err(|wait| exceeded(limit, wait))
    }

    /// `M_LIMIT_EXCEEDED` while `user_id` has no failure of `limit` (`LoginFailedAttempts` or
    /// `UiaFailedAttempts`) left; spends nothing, so that it can be asked before the password is
    /// checked.
    pub fn check_failures(&self, limit: Limit, user_id: &UserId) -> Result<()> {
        self.check(limit, Key::name(user_id.as_str()), false)
            .map_err(|wait| exceeded(limit, wait))
    }

    /// Spends one of `user_id`'s failures of `limit`.
    pub fn record_failure(&self, limit: Limit, user_id: &UserId) {
        let _ = self.check(limit, Key::name(user_id.as_str()), true);
    }

    /// Spends a token of the federation limit of `origin`.
    pub fn take_origin(&self, origin: &ServerName) -> Result<()> {
        self.check(Limit::Federation, Key::name(origin.as_str()), true)
            .map_err(|wait| exceeded(Limit::Federation, wait))
    }
}

/// Spends a token of `limit` from the bucket of `key` for an action of `requester` (for most
/// limits `key` is the requester; an invite's target has a bucket of its own). Server admins are
/// exempt: only a refused action looks the requester up, so that the usual case reads nothing.
/// A requester with an override (`users ratelimit`, kept in memory by the admin service) has
/// the rates and bursts scaled, or no limit.
pub fn take_for_user(
    services: &Services,
    limit: Limit,
    requester: &UserId,
    key: &UserId,
) -> Result<()> {
    if services.appservices.is_exempt_from_rate_limits(requester) {
        return Ok(());
    }
    let scale = match services.admin.flags.get_rate_override(requester) {
        Some(RateOverride::Unlimited) => return Ok(()),
        Some(RateOverride::Scaled {
            rate_factor,
            burst_factor,
        }) => Some((rate_factor, burst_factor)),
        None => None,
    };
    let Err(wait) = services
        .rate_limits
        .check_scaled(limit, Key::name(key.as_str()), true, scale)
    else {
        return Ok(());
    };
    if services.users.is_admin(requester)? {
        return Ok(());
    }
    Err(exceeded(limit, wait))
}

/// [`take_for_user`] from the requester's own bucket.
pub fn take_for(services: &Services, limit: Limit, user_id: &UserId) -> Result<()> {
    take_for_user(services, limit, user_id, user_id)
}

fn exceeded(limit: Limit, wait: Duration) -> Error {
    tracing::debug!(?limit, wait_ms = wait.as_millis(), "rate limited");
    Error::limit_exceeded(wait, format!("too many {}", limit.what()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Buckets, Key, Limit, RateLimits};
    use crate::config::{Rate, RateLimitSettings};

    fn bucket(per_second: f64, burst: u32) -> Buckets {
        Buckets::new(Rate { per_second, burst }, 100)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval_and_says_how_long_to_wait() {
        let buckets = bucket(2.0, 3);
        let start = Instant::now();
        let key = || Key::name("@a:x");
        for _ in 0..3 {
            buckets.check(key(), start, true).unwrap();
        }
        let wait = buckets.check(key(), start, true).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // A refused action spends nothing: the wait stays the same.
        assert_eq!(buckets.check(key(), start, true).unwrap_err(), wait);
        let later = start + wait;
        buckets.check(key(), later, true).unwrap();
        assert!(buckets.check(key(), later, true).is_err());
        // Other keys have buckets of their own.
        buckets.check(Key::name("@b:x"), later, true).unwrap();
        // After a quiet time the whole burst is back, and no more.
        let quiet = later + Duration::from_secs(60);
        for _ in 0..3 {
            buckets.check(key(), quiet, true).unwrap();
        }
        assert!(buckets.check(key(), quiet, true).is_err());
    }

    #[test]
    fn looking_at_a_bucket_spends_nothing() {
        let buckets = bucket(1.0, 1);
        let now = Instant::now();
        for _ in 0..5 {
            buckets.check(Key::name("k"), now, false).unwrap();
        }
        buckets.check(Key::name("k"), now, true).unwrap();
        assert!(buckets.check(Key::name("k"), now, false).is_err());
    }

    #[test]
    fn hostile_keys_stay_within_the_key_cap() {
        let buckets = bucket(0.001, 2);
        let now = Instant::now();
        buckets.check(Key::name("first"), now, true).unwrap();
        buckets.check(Key::name("first"), now, true).unwrap();
        for index in 0..10_000 {
            let key = Key::name(&format!("@user{index}:x"));
            buckets
                .check(key, now + Duration::from_micros(index), true)
                .unwrap();
            assert!(buckets.full_at.lock().len() <= 100);
        }
        // Keys whose bucket is full again go first, whatever else is held.
        let buckets = bucket(1.0, 1);
        for index in 0..100 {
            buckets
                .check(Key::name(&index.to_string()), now, true)
                .unwrap();
        }
        let later = now + Duration::from_secs(5);
        buckets.check(Key::name("new"), later, true).unwrap();
        assert_eq!(buckets.full_at.lock().len(), 1);
    }

    #[test]
    fn a_scaled_bucket_allows_a_scaled_burst_and_rate() {
        let buckets = bucket(1.0, 2);
        let now = Instant::now();
        let scale = Some((4.0, 3.0));
        for _ in 0..6 {
            buckets
                .check_scaled(Key::name("bot"), now, true, scale)
                .unwrap();
        }
        let wait = buckets
            .check_scaled(Key::name("bot"), now, true, scale)
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        // Unscaled, the same key has long been over its burst of two.
        assert!(buckets.check(Key::name("bot"), now, true).is_err());
    }

    #[test]
    fn ipv6_addresses_share_the_bucket_of_their_64() {
        let key = |text: &str| Key::address(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[test]
    fn switched_off_limits_allow_everything() {
        let settings = RateLimitSettings {
            registration: Rate {
                per_second: 0.001,
                burst: 1,
            },
            ..RateLimitSettings::off()
        };
        let limits = RateLimits::new(&settings);
        let ip = Some("192.0.2.1".parse().unwrap());
        for _ in 0..10 {
            limits.take_address(Limit::Registration, ip).unwrap();
        }
        let limits = RateLimits::new(&RateLimitSettings {
            enabled: true,
            ..settings
        });
        limits.take_address(Limit::Registration, ip).unwrap();
        let refused = limits.take_address(Limit::Registration, ip).unwrap_err();
        assert!(refused.to_string().contains("registrations"), "{refused}");
        limits.take_address(Limit::Registration, None).unwrap();
    }
}
