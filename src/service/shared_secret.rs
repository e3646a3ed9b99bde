//! Synapse's shared-secret registration (its admin API `/_synapse/admin/v1/register`): single-use
//! nonces kept in memory, and the HMAC-SHA1 check that lets whoever knows
//! `registration_shared_secret` create accounts, server admins included.
//!
//! Synapse's shared-secret registration (`/_synapse/admin/v1/register`, `docs/admin_api.md`): single-use nonces in memory (a minute each, at most 1,000), the HMAC-SHA1 check in constant time, then an account created with the admin flag that `users` keeps (`userid_admin`, `Users::is_admin`); argon2 hashing runs on the blocking pool (`users::password::Hasher`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::Deserialize;
use sha1::Sha1;

use crate::{
    config::Config,
    error::{Error, Result},
    service::{device_lists, users, Services},
    util,
};

/// How long a nonce may be used after it was handed out.
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Most nonces held at once; handing out one more forgets the oldest.
const MAX_NONCES: usize = 1000;
/// Longest username and password accepted (Synapse's limit).
const MAX_FIELD_BYTES: usize = 512;

/// The nonces handed out and not used yet, each with the time it was issued.
#[derive(Default)]
pub struct SharedSecretRegistration {
    nonces: Mutex<HashMap<String, Instant>>,
}

/// The body of `POST /_synapse/admin/v1/register`.
#[derive(Debug, Deserialize)]
pub struct SharedSecretRequest {
    pub nonce: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub admin: bool,
    pub mac: String,
}

/// A new account with its first device.
pub struct Registered {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
}

impl SharedSecretRegistration {
    /// A fresh nonce for one registration, valid for [`NONCE_LIFETIME`].
    pub fn new_nonce(&self, config: &Config) -> Result<String> {
        secret(config)?;
        let now = Instant::now();
        let mut nonces = self.nonces.lock();
        nonces.retain(|_, issued| now.duration_since(*issued) < NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES {
            let oldest = nonces
                .iter()
                .min_by_key(|(_, issued)| **issued)
                .map(|(nonce, _)| nonce.clone());
            if let Some(oldest) = oldest {
                nonces.remove(&oldest);
            }
        }
        let nonce = util::random_string(32);
        nonces.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// Removes a nonce; whether it was handed out and has not expired.
    fn take_nonce(&self, nonce: &str) -> bool {
        let issued = self.nonces.lock().remove(nonce);
        issued.is_some_and(|issued| issued.elapsed() < NONCE_LIFETIME)
    }
}

/// The configured secret, or `400 M_UNKNOWN` while shared-secret registration is off (Synapse's
/// answer, on which Complement skips its admin tests).
fn secret(config: &Config) -> Result<&str> {
    config
        .registration_shared_secret
        .as_deref()
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| Error::custom("M_UNKNOWN", "shared secret registration is not enabled"))
}

/// Registers an account from a request signed with the shared secret, and logs it in.
///
/// The nonce is used up first, whatever happens next. The MAC is HMAC-SHA1 keyed with the
/// secret over `nonce NUL username NUL password NUL (admin|notadmin)`, compared in constant time
/// (`403 M_FORBIDDEN` when wrong). The username is lower-cased after the check, as Synapse does,
/// and must then be a valid localpart (`M_INVALID_USERNAME`) that is free (`M_USER_IN_USE`).
#[tracing::instrument(skip_all)]
pub async fn register(services: &Services, request: SharedSecretRequest) -> Result<Registered> {
    let secret = secret(&services.config)?;
    if !services.shared_secret.take_nonce(&request.nonce) {
        return Err(Error::custom("M_UNKNOWN", "unrecognised nonce"));
    }
    for (field, value) in [
        ("username", &request.username),
        ("password", &request.password),
    ] {
        if value.len() > MAX_FIELD_BYTES || value.contains('\0') {
            return Err(Error::invalid_param(format!("invalid {field}")));
        }
    }
    if !mac_matches(secret, &request) {
        return Err(Error::forbidden("HMAC incorrect"));
    }
    let user_id = users::local_user_id(
        services.globals.server_name(),
        &request.username.to_lowercase(),
    )?;
    services
        .server_notices
        .check_registration(&services.config, &user_id)?;
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    let password_hash = services.users.passwords.hash(request.password).await?;
    // The hash took a while: another request may have taken the name meanwhile.
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ruma::api::error::ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    services.users.create_hashed(
        &user_id,
        &password_hash,
        request.displayname.as_deref(),
        request.admin,
    )?;
    tracing::info!(user = %user_id, admin = request.admin, "registered with the shared secret");
    services.admin.on_registered(&services.users, &user_id)?;
    let (device_id, tokens) = services.users.create_device(
        &user_id,
        None,
        None,
        false,
        services.config.refreshable_token_lifetime_ms,
    )?;
    device_lists::announce_device(services, &user_id, device_id.as_str())?;
    Ok(Registered {
        user_id,
        device_id,
        access_token: tokens.access_token,
    })
}

/// Whether the request's hex `mac` is the HMAC-SHA1 of its fields under `secret`.
fn mac_matches(secret: &str, request: &SharedSecretRequest) -> bool {
    let Some(given) = unhex(&request.mac) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    let role: &[u8] = if request.admin { b"admin" } else { b"notadmin" };
    for part in [
        request.nonce.as_bytes(),
        b"\0",
        request.username.as_bytes(),
        b"\0",
        request.password.as_bytes(),
        b"\0",
        role,
    ] {
        mac.update(part);
    }
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).is_ok()
}

/// Bytes from lower- or upper-case hex, or `None` when the text is not hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mac: &str, admin: bool) -> SharedSecretRequest {
        SharedSecretRequest {
            nonce: "abc".into(),
            username: "pepper_roni".into(),
            password: "pizza".into(),
            displayname: None,
            admin,
            mac: mac.into(),
        }
    }

    #[test]
    fn mac_is_hmac_sha1_over_nul_separated_fields() {
        // From Python: hmac.new(b"secret", b"abc\0pepper_roni\0pizza\0admin", sha1).hexdigest().
        let expected = "93b345a2608570ecbd0c809d46ff0e089acbc4c9";
        assert!(mac_matches("secret", &request(expected, true)));
        assert!(mac_matches(
            "secret",
            &request(&expected.to_uppercase(), true)
        ));
        assert!(!mac_matches("secret", &request(expected, false)));
        assert!(!mac_matches("other", &request(expected, true)));
        assert!(!mac_matches("secret", &request("zz", true)));
        assert!(!mac_matches("secret", &request(&expected[1..], true)));
    }

    #[test]
    fn nonces_are_single_use_and_bounded() {
        let config = Config {
            registration_shared_secret: Some("secret".into()),
            ..Config::default()
        };
        let registration = SharedSecretRegistration::default();
        let first = registration.new_nonce(&config).unwrap();
        assert!(registration.take_nonce(&first));
        assert!(!registration.take_nonce(&first));
        assert!(!registration.take_nonce("never-issued"));
        for _ in 0..MAX_NONCES + 10 {
            registration.new_nonce(&config).unwrap();
        }
        assert_eq!(registration.nonces.lock().len(), MAX_NONCES);
        assert!(registration.new_nonce(&Config::default()).is_err());
    }
}
