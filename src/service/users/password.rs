//! Password hashes (argon2), made and checked on tokio's blocking pool, at most one per core at
//! a time: a storm of logins queues behind itself, and no async worker thread stalls on a hash.
//! An unknown account is checked against a hash of a password nobody knows, so that a wrong
//! password takes as long for it as for an existing account.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use tokio::sync::Semaphore;

use crate::{
    error::{Error, Result},
    util,
};

/// Runs the hashing, bounded to the machine's cores.
pub struct Hasher {
    permits: Semaphore,
    /// The hash unknown accounts are checked against, made on first need.
    unknown: OnceLock<String>,
    /// Password checks run, for the tests and the metrics.
    checks: AtomicU64,
}

impl Default for Hasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            permits: Semaphore::new(cores),
            unknown: OnceLock::new(),
            checks: AtomicU64::new(0),
        }
    }
}

impl Hasher {
    /// A new hash of `password`.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `stored` (`None`: an account without one, or no account, which
    /// never matches but costs the same time).
    pub async fn verify(&self, stored: Option<String>, password: String) -> Result<bool> {
        let known = stored.is_some();
        let stored = match stored {
            Some(stored) => stored,
            None => self.unknown_hash().await?,
        };
        self.checks.fetch_add(1, Ordering::Relaxed);
        let matches = self.run(move || verify_now(&stored, &password)).await??;
        Ok(known && matches)
    }

    /// How many password checks ran since the start.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(Error::internal)
    }

    async fn unknown_hash(&self) -> Result<String> {
        if let Some(hash) = self.unknown.get() {
            return Ok(hash.clone());
        }
        let hash = self.hash(util::random_string(32)).await?;
        Ok(self.unknown.get_or_init(|| hash).clone())
    }
}

/// Hashes a password on the calling thread (for the blocking pool, and unit tests).
pub(super) fn hash_now(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(Error::internal)
}

fn verify_now(stored: &str, password: &str) -> Result<bool> {
    let parsed = PasswordHash::new(stored).map_err(|e| Error::corrupt("userid_password", e))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}
