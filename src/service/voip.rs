//! TURN credentials for VoIP (`GET /voip/turnServer`): the TURN REST scheme that coturn's
//! `use-auth-secret` checks, in which the username is `expiry:user` (expiry in seconds since the
//! epoch) and the password the base64 HMAC-SHA1 of that username under the shared secret. The
//! TURN server needs no call back to this server: it recomputes the password and checks the
//! expiry itself.

use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::UserId;
use serde::Serialize;
use sha1::Sha1;

use crate::config::Config;

/// What `GET /voip/turnServer` answers.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    /// Lifetime of the credentials in seconds.
    pub ttl: u64,
}

/// Credentials for `user` valid from `now_ms` for `turn_ttl_ms`, or `None` when TURN is not
/// configured (no URIs or no secret).
pub fn turn_credentials(config: &Config, user: &UserId, now_ms: u64) -> Option<TurnCredentials> {
    let secret = config
        .turn_shared_secret
        .as_deref()
        .filter(|secret| !secret.is_empty())?;
    if config.turn_uris.is_empty() {
        return None;
    }
    let ttl = config.turn_ttl_ms / 1000;
    let expiry = now_ms / 1000 + ttl;
    let username = format!("{expiry}:{user}");
    Some(TurnCredentials {
        password: password(secret, &username),
        username,
        uris: config.turn_uris.clone(),
        ttl,
    })
}

/// The password of `username`: base64 of its HMAC-SHA1 under `secret`.
fn password(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        // From Python: base64.b64encode(hmac.new(b"secret", b"1700000000:@a:b", sha1).digest()).
        assert_eq!(
            password("secret", "1700000000:@a:b"),
            "rdgio/2X2TM/Vu35wCFc+1QTCic="
        );
    }

    #[test]
    fn no_credentials_without_uris_or_secret() {
        let user = <&UserId>::try_from("@a:b").unwrap();
        let mut config = Config {
            turn_shared_secret: Some("secret".to_owned()),
            ..Config::default()
        };
        assert_eq!(turn_credentials(&config, user, 0), None);
        config.turn_uris = vec!["turn:127.0.0.1:3478".to_owned()];
        config.turn_ttl_ms = 60_000;
        let credentials = turn_credentials(&config, user, 1_000_000).unwrap();
        assert_eq!(credentials.username, "1060:@a:b");
        assert_eq!(credentials.ttl, 60);
        config.turn_shared_secret = Some(String::new());
        assert_eq!(turn_credentials(&config, user, 0), None);
    }
}
