//! The OAuth 2.0 API (spec v1.15 "OAuth 2.0 API", MSC2964/2965/2966/2967), with this server as
//! its own authorization server: client registration (RFC 7591), the authorization code grant
//! with PKCE (S256 only), refresh and revocation (RFC 7009). A session it grants is an ordinary
//! device with refreshable tokens, the same as a password login's.
//!
//! Rules kept here (the pages and forms are `api::client::oauth`'s):
//! - clients register `client_uri` (https) and `redirect_uris`: for a web client https URIs on
//!   the `client_uri` host or a subdomain; for a native one a private-use scheme that is the
//!   reversed `client_uri` host (or a subdomain of it), or `http://` on a loopback address;
//! - an authorization request names a registered client and exactly one of its redirect URIs,
//!   asks for `response_type=code` with an S256 `code_challenge`, and for the client API scope
//!   (`urn:matrix:client:api:*`) and at most one device scope (`urn:matrix:client:device:ID`;
//!   the MSC2967 `urn:matrix:org.matrix.msc2967.client:` forms too);
//! - a code is good once, for ten minutes, for its client, redirect URI and verifier; it is
//!   stored hashed and taken out before it is checked, so a replay finds nothing.

use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::{
    crypto::token_hash,
    error::{Error, Result},
    service::{
        users::{
            account,
            devices::{self, NewDevice},
        },
        Services,
    },
    store::{Db, Tree},
    util,
};

/// How long an authorization code may wait for its exchange.
const CODE_LIFETIME_MS: u64 = 10 * 60 * 1000;

/// Most redirect URIs one client may register, and longest metadata value.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_VALUE_BYTES: usize = 2048;

/// The client API scope, stable and MSC2967 forms.
const API_SCOPES: [&str; 2] = [
    "urn:matrix:client:api:*",
    "urn:matrix:org.matrix.msc2967.client:api:*",
];
/// The device scope prefixes, stable and MSC2967 forms.
const DEVICE_SCOPES: [&str; 2] = [
    "urn:matrix:client:device:",
    "urn:matrix:org.matrix.msc2967.client:device:",
];

/// Owns `oauthclientid_client` (client ID → JSON [`Client`]) and `oauthcodehash_grant` (SHA-256
/// of an authorization code → JSON [`Grant`]).
pub struct OAuth {
    oauthclientid_client: Tree,
    oauthcodehash_grant: Tree,
    /// Serialises code exchanges (take, check, log in).
    exchange: Mutex<()>,
}

/// A registered client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub client_name: Option<String>,
    pub client_uri: String,
    pub redirect_uris: Vec<String>,
    /// The metadata as registered, answered back to the client.
    pub metadata: Map<String, Value>,
}

/// An issued authorization code's grant.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    scope: String,
    user_id: OwnedUserId,
    device_id: Option<OwnedDeviceId>,
    expires_at: u64,
}

/// An OAuth protocol error: its `error` code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }

    /// The JSON body of an error answer.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

/// An outcome that is either done, or refused by the protocol's rules.
pub type Outcome<T> = std::result::Result<T, OAuthError>;

/// A checked authorization request.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub client: Client,
    pub redirect_uri: String,
    /// `query` or `fragment`.
    pub response_mode: String,
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub device_id: Option<OwnedDeviceId>,
    /// `prompt=create`: the client asks for the sign-up page.
    pub create: bool,
}

/// How an authorization request fails: before the redirect URI is trusted the user is shown the
/// error; after, the client gets it at its redirect URI.
#[derive(Debug)]
pub enum RequestError {
    Show(String),
    Redirect {
        redirect_uri: String,
        response_mode: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// Tokens for a session.
pub struct TokenAnswer {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
    pub scope: String,
}

impl TokenAnswer {
    /// The token endpoint's JSON answer.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "access_token": self.access_token,
            "token_type": "Bearer",
            "scope": self.scope,
        });
        if let Some(refresh) = &self.refresh_token {
            body["refresh_token"] = json!(refresh);
        }
        if let Some(ms) = self.expires_in_ms {
            body["expires_in"] = json!(ms / 1000);
        }
        body
    }
}

impl OAuth {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            oauthclientid_client: db.tree("oauthclientid_client"),
            oauthcodehash_grant: db.tree("oauthcodehash_grant"),
            exchange: Mutex::new(()),
        }
    }

    /// A registered client.
    pub fn client(&self, client_id: &str) -> Result<Option<Client>> {
        let Some(bytes) = self.oauthclientid_client.get(client_id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("oauthclientid_client", e))
    }
}

/// Registers a client (RFC 7591) and returns its metadata with its `client_id`.
pub fn register_client(
    services: &Services,
    metadata: &Map<String, Value>,
) -> Result<Outcome<Value>> {
    let client = match check_metadata(metadata) {
        Ok(client) => client,
        Err(error) => return Ok(Err(error)),
    };
    services.oauth.oauthclientid_client.insert(
        client.client_id.as_bytes(),
        &serde_json::to_vec(&client).map_err(Error::internal)?,
    )?;
    let mut answer = client.metadata.clone();
    answer.insert("client_id".to_owned(), json!(client.client_id));
    answer.insert(
        "client_id_issued_at".to_owned(),
        json!(util::now_millis() / 1000),
    );
    Ok(Ok(Value::Object(answer)))
}

fn check_metadata(metadata: &Map<String, Value>) -> Outcome<Client> {
    let invalid = |text: String| OAuthError::new("invalid_client_metadata", text);
    let text = |field: &str| -> Outcome<Option<String>> {
        match metadata.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.len() <= MAX_VALUE_BYTES => Ok(Some(text.clone())),
            Some(_) => Err(invalid(format!("{field} must be a string"))),
        }
    };
    let client_uri = text("client_uri")?.ok_or_else(|| invalid("client_uri is required".into()))?;
    let client_host =
        https_host(&client_uri).ok_or_else(|| invalid("client_uri must be an https URL".into()))?;
    for field in ["logo_uri", "policy_uri", "tos_uri"] {
        if let Some(uri) = text(field)? {
            if !https_host(&uri).is_some_and(|host| on_host(&host, &client_host)) {
                return Err(invalid(format!(
                    "{field} must be https on the client_uri host"
                )));
            }
        }
    }
    let native = match text("application_type")?.as_deref() {
        None | Some("web") => false,
        Some("native") => true,
        Some(other) => return Err(invalid(format!("unknown application_type {other}"))),
    };
    let strings = |field: &str| -> Outcome<Option<Vec<String>>> {
        match metadata.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| invalid(format!("{field} must be a list of strings"))),
            Some(_) => Err(invalid(format!("{field} must be a list of strings"))),
        }
    };
    let grant_types = strings("grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
    if grant_types
        .iter()
        .any(|grant| grant != "authorization_code" && grant != "refresh_token")
        || !grant_types
            .iter()
            .any(|grant| grant == "authorization_code")
    {
        return Err(invalid(
            "grant_types must be authorization_code and refresh_token".into(),
        ));
    }
    if strings("response_types")?.is_some_and(|types| types.iter().any(|kind| kind != "code")) {
        return Err(invalid("response_types must be code".into()));
    }
    if text("token_endpoint_auth_method")?.is_some_and(|method| method != "none") {
        return Err(invalid(
            "only public clients (token_endpoint_auth_method none)".into(),
        ));
    }
    let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
    if redirect_uris.is_empty() || redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid(format!(
            "redirect_uris needs 1 to {MAX_REDIRECT_URIS} URIs"
        )));
    }
    for uri in &redirect_uris {
        if !redirect_allowed(uri, &client_host, native) {
            return Err(OAuthError::new(
                "invalid_redirect_uri",
                format!("{uri} is not a redirect URI this client may use"),
            ));
        }
    }
    Ok(Client {
        client_id: util::random_string(16),
        client_name: text("client_name")?,
        client_uri,
        redirect_uris,
        metadata: metadata.clone(),
    })
}

/// The host of an `https://` URL without user info.
fn https_host(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    (url.scheme() == "https" && url.username().is_empty() && url.password().is_none())
        .then(|| url.host_str().map(str::to_ascii_lowercase))
        .flatten()
}

/// Whether `host` is `base` or a subdomain of it.
fn on_host(host: &str, base: &str) -> bool {
    host == base || host.ends_with(&format!(".{base}"))
}

/// Whether a client on `client_host` may redirect to `uri`.
fn redirect_allowed(uri: &str, client_host: &str, native: bool) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    if url.fragment().is_some() {
        return false;
    }
    if !native {
        return https_host(uri).is_some_and(|host| on_host(&host, client_host));
    }
    if url.scheme() == "http" {
        return matches!(
            url.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        );
    }
    // A private-use scheme: the client's host reversed, or a subdomain of that.
    let reversed: Vec<&str> = client_host.rsplit('.').collect();
    let reversed = reversed.join(".");
    let scheme = url.scheme();
    url.host().is_none() && (scheme == reversed || scheme.starts_with(&format!("{reversed}.")))
}

/// Checks an authorization request's parameters.
pub fn check_request(
    services: &Services,
    param: impl Fn(&str) -> Option<String>,
) -> Result<std::result::Result<AuthRequest, RequestError>> {
    let client_id = param("client_id").unwrap_or_default();
    let Some(client) = services.oauth.client(&client_id)? else {
        return Ok(Err(RequestError::Show("unknown client".to_owned())));
    };
    let redirect_uri = param("redirect_uri").unwrap_or_default();
    if !client.redirect_uris.contains(&redirect_uri) {
        return Ok(Err(RequestError::Show(
            "the redirect URI is not one the client registered".to_owned(),
        )));
    }
    let response_mode = param("response_mode").unwrap_or_else(|| "query".to_owned());
    let state = param("state");
    let refuse = |error: OAuthError| {
        let mode = if response_mode == "fragment" {
            "fragment"
        } else {
            "query"
        };
        Ok(Err(RequestError::Redirect {
            redirect_uri: redirect_uri.clone(),
            response_mode: mode.to_owned(),
            state: state.clone(),
            error,
        }))
    };
    if response_mode != "query" && response_mode != "fragment" {
        return refuse(OAuthError::new(
            "invalid_request",
            "response_mode must be query or fragment",
        ));
    }
    if param("response_type").as_deref() != Some("code") {
        return refuse(OAuthError::new("unsupported_response_type", "only code"));
    }
    let challenge = param("code_challenge").unwrap_or_default();
    if param("code_challenge_method").as_deref() != Some("S256") || !pkce_shaped(&challenge) {
        return refuse(OAuthError::new(
            "invalid_request",
            "an S256 code_challenge is required",
        ));
    }
    let scope = param("scope").unwrap_or_default();
    let device_id = match parse_scope(&scope) {
        Ok(device_id) => device_id,
        Err(error) => return refuse(error),
    };
    Ok(Ok(AuthRequest {
        client,
        redirect_uri,
        response_mode,
        scope,
        state,
        code_challenge: challenge,
        device_id,
        create: param("prompt").is_some_and(|prompt| prompt.split(' ').any(|p| p == "create")),
    }))
}

/// A PKCE challenge or verifier: 43 to 128 characters of the unreserved set.
fn pkce_shaped(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
}

/// The device a scope asks for: it must ask for the client API, and may name one device.
fn parse_scope(scope: &str) -> Outcome<Option<OwnedDeviceId>> {
    let mut api = false;
    let mut device = None;
    for token in scope.split(' ').filter(|token| !token.is_empty()) {
        if API_SCOPES.contains(&token) {
            api = true;
            continue;
        }
        let Some(id) = DEVICE_SCOPES
            .iter()
            .find_map(|prefix| token.strip_prefix(prefix))
        else {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("unknown scope {token}"),
            ));
        };
        let valid = !id.is_empty()
            && id.len() <= 255
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte));
        if !valid || device.is_some() {
            return Err(OAuthError::new(
                "invalid_scope",
                "one valid device scope at most",
            ));
        }
        device = Some(OwnedDeviceId::from(id));
    }
    if !api {
        return Err(OAuthError::new(
            "invalid_scope",
            "the client API scope is required",
        ));
    }
    Ok(device)
}

/// Issues an authorization code for `user_id` and returns the URI to send the browser to.
pub fn authorize(
    services: &Services,
    request: &AuthRequest,
    user_id: &OwnedUserId,
) -> Result<String> {
    let code = util::random_string(32);
    let grant = Grant {
        client_id: request.client.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        scope: request.scope.clone(),
        user_id: user_id.clone(),
        device_id: request.device_id.clone(),
        expires_at: util::now_millis() + CODE_LIFETIME_MS,
    };
    services.oauth.oauthcodehash_grant.insert(
        &token_hash(&code),
        &serde_json::to_vec(&grant).map_err(Error::internal)?,
    )?;
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = &request.state {
        pairs.push(("state", state));
    }
    Ok(redirect_with(
        &request.redirect_uri,
        &request.response_mode,
        &pairs,
    ))
}

/// The authorization page's login: the account's password is checked as `/login` checks it
/// (rate limits, deactivation), then a code is issued; returns the URI to send the browser to.
pub async fn sign_in(
    services: &Services,
    request: &AuthRequest,
    (username, password): (&str, &str),
) -> Result<String> {
    let user_id = account::verify_password(services, username, password).await?;
    authorize(services, request, &user_id)
}

/// The authorization page's sign-up: an account is registered as `/register` does it, under the
/// configured registration mode (a registration token is asked for in token mode), then a code
/// is issued for it.
pub async fn sign_up(services: &Services, request: &AuthRequest, new: SignUp) -> Result<String> {
    let auth = match services.config.registration {
        crate::config::Registration::Token => {
            json!({ "type": "m.login.registration_token", "token": new.token.unwrap_or_default() })
        }
        _ => json!({ "type": "m.login.dummy" }),
    };
    let registration = account::Registration {
        username: Some(new.username),
        password: Some(new.password),
        device: None,
        auth: Some(auth),
        client_ip: new.client_ip,
    };
    let (user_id, _) = account::register(services, registration).await?;
    authorize(services, request, &user_id)
}

/// What the sign-up form sends.
pub struct SignUp {
    pub username: String,
    pub password: String,
    /// The registration token, in token mode.
    pub token: Option<String>,
    pub client_ip: Option<std::net::IpAddr>,
}

/// `uri` with `pairs` added to its query or as its fragment.
pub fn redirect_with(uri: &str, response_mode: &str, pairs: &[(&str, &str)]) -> String {
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    if response_mode == "fragment" {
        return format!("{uri}#{encoded}");
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{encoded}")
}

/// The `authorization_code` grant: trades a code for a new device's tokens.
pub fn exchange_code(
    services: &Services,
    code: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Outcome<TokenAnswer>> {
    let oauth = &services.oauth;
    let _guard = oauth.exchange.lock();
    let hash = token_hash(code);
    let Some(bytes) = oauth.oauthcodehash_grant.get(&hash)? else {
        return Ok(Err(OAuthError::new(
            "invalid_grant",
            "unknown or used code",
        )));
    };
    // Taken before it is checked: a code is good for one try.
    oauth.oauthcodehash_grant.remove(&hash)?;
    let grant: Grant =
        serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("oauthcodehash_grant", e))?;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let refusal = if grant.expires_at < util::now_millis() {
        Some("the code expired")
    } else if grant.client_id != client_id || grant.redirect_uri != redirect_uri {
        Some("the code was issued to another client or redirect URI")
    } else if !pkce_shaped(verifier) || challenge != grant.code_challenge {
        Some("the code verifier does not match")
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return Ok(Err(OAuthError::new("invalid_grant", refusal)));
    }
    let display_name = oauth
        .client(client_id)?
        .and_then(|client| client.client_name);
    let new = NewDevice {
        device_id: grant.device_id,
        display_name,
        refreshable: true,
    };
    let (_, tokens) = devices::log_in(services, &grant.user_id, new)?;
    Ok(Ok(TokenAnswer {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in_ms: tokens.expires_in_ms,
        scope: grant.scope,
    }))
}

/// The `refresh_token` grant.
pub fn refresh(services: &Services, refresh_token: &str) -> Result<Outcome<TokenAnswer>> {
    let lifetime = services.config.refreshable_token_lifetime_ms;
    let Some(tokens) = services.users.refresh(refresh_token, lifetime)? else {
        return Ok(Err(OAuthError::new(
            "invalid_grant",
            "unknown refresh token",
        )));
    };
    Ok(Ok(TokenAnswer {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in_ms: tokens.expires_in_ms,
        scope: API_SCOPES[0].to_owned(),
    }))
}

/// Revocation (RFC 7009): an access or refresh token ends its whole session (the device and
/// its tokens). An unknown token is no error.
pub fn revoke(services: &Services, token: &str) -> Result<()> {
    let session = match services.users.find_token(token)? {
        Some(session) => Some(session),
        None => services.users.find_refresh_session(token)?,
    };
    if let Some(session) = session {
        devices::remove(services, &session.user_id, session.device_id.as_str())?;
    }
    Ok(())
}

/// The server metadata (`GET /_matrix/client/v1/auth_metadata`) for `base`, the public base URL.
pub fn metadata(services: &Services, base: &str) -> Value {
    let base = base.trim_end_matches('/');
    let mut prompts = vec!["login"];
    if services.config.registration != crate::config::Registration::Closed {
        prompts.push("create");
    }
    json!({
        "issuer": format!("{base}/"),
        "authorization_endpoint": format!("{base}/_plait/oauth/authorize"),
        "token_endpoint": format!("{base}/_plait/oauth/token"),
        "registration_endpoint": format!("{base}/_plait/oauth/register"),
        "revocation_endpoint": format!("{base}/_plait/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "prompt_values_supported": prompts,
        "scopes_supported": [API_SCOPES[0], "urn:matrix:client:device:*"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_follow_the_client_uri() {
        let host = "app.example.com";
        assert!(redirect_allowed("https://app.example.com/cb", host, false));
        assert!(redirect_allowed(
            "https://x.app.example.com/cb",
            host,
            false
        ));
        assert!(!redirect_allowed("https://evil.com/cb", host, false));
        assert!(!redirect_allowed("http://app.example.com/cb", host, false));
        assert!(!redirect_allowed(
            "https://app.example.com/cb#frag",
            host,
            false
        ));
        assert!(redirect_allowed("com.example.app:/callback", host, true));
        assert!(redirect_allowed(
            "com.example.app.ios:/callback",
            host,
            true
        ));
        assert!(!redirect_allowed("com.evil:/callback", host, true));
        assert!(redirect_allowed("http://127.0.0.1:8123/cb", host, true));
        assert!(redirect_allowed("http://localhost/cb", host, true));
        assert!(!redirect_allowed("http://10.0.0.1/cb", host, true));
    }

    #[test]
    fn scopes_need_the_api_and_name_one_device() {
        assert_eq!(
            parse_scope("urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ"),
            Ok(Some(OwnedDeviceId::from("ABCDEFGHIJ")))
        );
        assert_eq!(
            parse_scope("urn:matrix:org.matrix.msc2967.client:api:*"),
            Ok(None)
        );
        assert!(parse_scope("urn:matrix:client:device:ABC").is_err());
        assert!(parse_scope("urn:matrix:client:api:* openid").is_err());
        assert!(parse_scope(
            "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B"
        )
        .is_err());
    }
}
