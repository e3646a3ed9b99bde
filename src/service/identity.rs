//! Identity servers, as a homeserver uses them for third-party invites (identity service API
//! v2): the hashed `/lookup` of a third-party identifier, `/store-invite` for one nobody has
//! bound, and the key validity check of a third-party invite's public key. Owns no tree.
//!
//! The identity server is whichever one the client names, so every request is treated like a
//! URL preview: `https` only, every resolved address checked against `url_preview_ip_denylist`
//! and the connection pinned to the checked addresses, no redirects, small answers and a time
//! limit. `identity_server_allow_http` allows plain `http` and lifts `url_preview_ip_denylist`
//! for tests and development; `ip_range_denylist` (less `ip_range_allowlist`) holds in every case.
//!
//! The identity-server client of third-party invites: `/hash_details` and a hashed `/lookup` (sha256 of `address medium pepper`), `/store-invite`, and a key's `key_validity_url`; the identity server is the one the client names, so it is reached like a URL preview (https only, every resolved address outside `url_preview_ip_denylist` and the connection pinned to it, no redirects, answers of at most 64 KiB, 15 s); `identity_server_allow_http` (tests, development) allows plain http at any address `ip_range_denylist` permits.
//! Owns no tree.

use std::{net::SocketAddr, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ruma::{OwnedUserId, ServerName};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    config::Config,
    error::{Error, Result},
    federation::guard::{self, Unusable},
};

/// Connect and whole-request time limit for identity server requests.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer read from an identity server, in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An identity server a client named (`id_server`, a host and optional port), with the
/// client's access token for it.
pub struct IdentityServer<'a> {
    config: &'a Config,
    host: String,
    access_token: &'a str,
}

/// What `/store-invite` answered: what the room's `m.room.third_party_invite` event carries.
#[derive(Debug, Clone)]
pub struct StoredInvite {
    /// The token, the state key of the `m.room.third_party_invite` event.
    pub token: String,
    /// The redacted name of the invitee that members see.
    pub display_name: String,
    /// `(public_key, key_validity_url)` pairs, the server's long-term key first.
    pub public_keys: Vec<(String, String)>,
}

impl<'a> IdentityServer<'a> {
    /// Names an identity server; `id_server` must be a host with an optional port
    /// (`400 M_INVALID_PARAM` otherwise, so that no path or scheme can be smuggled in).
    pub fn new(config: &'a Config, id_server: &str, access_token: &'a str) -> Result<Self> {
        <&ServerName>::try_from(id_server)
            .map_err(|_| Error::invalid_param(format!("invalid id_server {id_server}")))?;
        Ok(Self {
            config,
            host: id_server.to_owned(),
            access_token,
        })
    }

    /// The Matrix user bound to a third-party identifier, if any: `/hash_details`, then
    /// `/lookup` with the `sha256` hash of `"{address} {medium} {pepper}"` (or the plain
    /// `"{address} {medium}"` when the server offers only `none`).
    pub async fn lookup(&self, medium: &str, address: &str) -> Result<Option<OwnedUserId>> {
        let details = self
            .request(http::Method::GET, "/_matrix/identity/v2/hash_details", None)
            .await?;
        let pepper = details["lookup_pepper"]
            .as_str()
            .ok_or_else(|| self.failed("no lookup_pepper in /hash_details"))?;
        let algorithms: Vec<&str> = details["algorithms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let (algorithm, hashed) = if algorithms.contains(&"sha256") {
            ("sha256", lookup_hash(medium, address, pepper))
        } else if algorithms.contains(&"none") {
            ("none", format!("{address} {medium}"))
        } else {
            return Err(self.failed("no lookup algorithm this server supports"));
        };
        let body = json!({ "algorithm": algorithm, "pepper": pepper, "addresses": [hashed] });
        let answer = self
            .request(
                http::Method::POST,
                "/_matrix/identity/v2/lookup",
                Some(&body),
            )
            .await?;
        match answer["mappings"].get(&hashed) {
            None | Some(Value::Null) => Ok(None),
            Some(user) => user
                .as_str()
                .and_then(|user| OwnedUserId::try_from(user).ok())
                .map(Some)
                .ok_or_else(|| self.failed("a lookup mapping that is not a user ID")),
        }
    }

    /// Stores an invite for a third-party identifier (`/store-invite`, whose body the caller
    /// builds) and checks the answer: a token of `[0-9a-zA-Z.=_-]`, 1 to 255 characters, and at
    /// least one public key.
    pub async fn store_invite(&self, body: &Value) -> Result<StoredInvite> {
        let answer = self
            .request(
                http::Method::POST,
                "/_matrix/identity/v2/store-invite",
                Some(body),
            )
            .await?;
        let token = answer["token"].as_str().unwrap_or_default();
        let token_ok = (1..=255).contains(&token.len())
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '=' | '_' | '-'));
        if !token_ok {
            return Err(self.failed("/store-invite answered an invalid token"));
        }
        let public_keys: Vec<(String, String)> = public_keys(&answer["public_keys"])
            .filter_map(|(key, url)| Some((key, url?)))
            .collect();
        if public_keys.is_empty() {
            return Err(self.failed("/store-invite answered no public key"));
        }
        let display_name = answer["display_name"]
            .as_str()
            .ok_or_else(|| self.failed("/store-invite answered no display_name"))?;
        Ok(StoredInvite {
            token: token.to_owned(),
            display_name: display_name.to_owned(),
            public_keys,
        })
    }

    async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let scheme = if self.config.identity_server_allow_http {
            "http"
        } else {
            "https"
        };
        let url = reqwest::Url::parse(&format!("{scheme}://{}{path}", self.host))
            .map_err(|_| Error::invalid_param(format!("invalid id_server {}", self.host)))?;
        send(self.config, url, method, Some(self.access_token), body).await
    }

    fn failed(&self, detail: &str) -> Error {
        remote(&self.host, detail)
    }
}

/// Whether an identity server still vouches for a public key: `GET {key_validity_url}` with
/// `public_key` in the query, answered `{"valid": true}`.
pub async fn key_is_valid(
    config: &Config,
    key_validity_url: &str,
    public_key: &str,
) -> Result<bool> {
    let mut url = reqwest::Url::parse(key_validity_url)
        .map_err(|_| Error::forbidden(format!("invalid key_validity_url {key_validity_url}")))?;
    url.query_pairs_mut().append_pair("public_key", public_key);
    let answer = send(config, url, http::Method::GET, None, None).await?;
    Ok(answer["valid"] == json!(true))
}

/// The lookup form of a third-party identifier: the URL-safe unpadded base64 of the SHA-256 of
/// `"{address} {medium} {pepper}"` (identity service API, "Client behaviour" of lookups).
pub fn lookup_hash(medium: &str, address: &str, pepper: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{address} {medium} {pepper}")))
}

/// One request to an identity server: scheme and address checks, a pinned connection, a JSON
/// answer of bounded size. A refusal by the server (4xx/5xx) is [`Error::Remote`].
async fn send(
    config: &Config,
    url: reqwest::Url,
    method: http::Method,
    access_token: Option<&str>,
    body: Option<&Value>,
) -> Result<Value> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid_param("the identity server URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let allowed_scheme =
        url.scheme() == "https" || (config.identity_server_allow_http && url.scheme() == "http");
    if !allowed_scheme {
        return Err(Error::forbidden(format!(
            "identity server {host} is not reached over https"
        )));
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = allowed_addresses(config, &host, port).await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .no_proxy()
        .user_agent(concat!("Plait/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(&host, &addresses)
        .build()
        .map_err(Error::internal)?;
    let mut request = client.request(method, url);
    if let Some(token) = access_token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let mut response = request
        .send()
        .await
        .map_err(|error| remote(&host, &crate::error::with_sources(&error)))?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| remote(&host, &crate::error::with_sources(&error)))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(remote(&host, "answer too large"));
        }
    }
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let errcode = answer["errcode"].as_str().unwrap_or("no errcode");
        return Err(remote(&host, &format!("answered {status} {errcode}")));
    }
    if !answer.is_object() {
        return Err(remote(&host, "answered something other than a JSON object"));
    }
    Ok(answer)
}

/// The addresses of `host`, all of which must be outside `ip_range_denylist` (less
/// `ip_range_allowlist`) and, unless `identity_server_allow_http` is set, outside
/// `url_preview_ip_denylist` (`403 M_FORBIDDEN` otherwise).
async fn allowed_addresses(config: &Config, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let policy = if config.identity_server_allow_http {
        config.outbound_ip_policy()
    } else {
        config.user_url_ip_policy()
    };
    guard::checked_addresses(&policy, host, port, TIMEOUT)
        .await
        .map_err(|unusable| match unusable {
            Unusable::Unresolved => remote(host, "cannot resolve the host"),
            Unusable::Refused => Error::forbidden(format!(
                "identity server {host} resolves to an address this server does not contact"
            )),
        })
}

fn remote(host: &str, detail: &str) -> Error {
    Error::Remote {
        server: host.to_owned(),
        source: format!("identity server: {detail}").into(),
    }
}

/// The entries of a `public_keys` list (of a `/store-invite` answer or an
/// `m.room.third_party_invite`): each key with its validity URL when it has one; entries
/// without a `public_key` string are skipped.
pub fn public_keys(list: &Value) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    list.as_array().into_iter().flatten().filter_map(|key| {
        Some((
            key["public_key"].as_str()?.to_owned(),
            key["key_validity_url"].as_str().map(str::to_owned),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_hash_matches_the_spec_example() {
        // Identity service API, "Hashing": `alice@example.com email matrixrocks`.
        assert_eq!(
            lookup_hash("email", "alice@example.com", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
    }

    #[test]
    fn id_server_must_be_a_host() {
        let config = Config::default();
        assert!(IdentityServer::new(&config, "id.example.org:8090", "t").is_ok());
        for bad in ["", "id.example.org/evil", "https://id.example.org", "a b"] {
            assert!(IdentityServer::new(&config, bad, "t").is_err(), "{bad}");
        }
    }
}
