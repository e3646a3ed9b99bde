//! Server signing keys: this server's published key document, and other servers' keys fetched,
//! verified and cached by their validity (directly, or through trusted notary servers).
//!
//! This server's key document, other servers' keys cached by validity (never shortened by an older answer), notary fetches from `trusted_key_servers`.
//!
//! Fetches are bounded per server, since any request signed as a server (valid or not) can ask
//! for its keys: one fetch of a server's keys at a time (requests that need them meanwhile wait
//! for it and read the cache), a fetch that leaves the keys missing is not tried again for
//! [`FAILED_FETCH_BACKOFF`], and at most [`MAX_TRACKED_SERVERS`] servers are tracked (beyond
//! that, a server that is not yet tracked is not fetched until others are forgotten).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{
    signatures::{PublicKeyMap, PublicKeySet},
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName,
};
use serde_json::{json, Value};

use crate::{
    crypto,
    error::{Error, Result},
    federation::FederationClient,
    service::globals::Globals,
    store::{key, Db, Tree},
    util,
};

/// How long our published key document says the key is valid (the spec leaves it to us; a week
/// keeps remote caches fresh without refetching on every request).
const OWN_KEY_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;
/// A remote key answer is cached at most this long even if it claims longer (the spec caps
/// `valid_until_ts` used for events at 7 days from receipt).
const MAX_CACHE_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a fetch that did not yield the keys asked for keeps the server from being asked again.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(30);
/// Servers whose fetches are tracked at once (in flight or recently failed).
const MAX_TRACKED_SERVERS: usize = 4096;

/// The fetch state of one server: the lock that makes its fetches one at a time, and until when
/// a failed fetch keeps it from being asked again.
#[derive(Default)]
struct FetchState {
    running: Arc<tokio::sync::Mutex<()>>,
    failed_until: Option<Instant>,
}

/// One remote verify key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteKey {
    pub key: String,
    /// Usable for signatures made up to this time (valid_until_ts, or expired_ts of an old key).
    pub valid_until: u64,
}

/// Owns `servernamekeyid_key` (server 0xff key ID → JSON `{key, valid_until}`) and
/// `servername_keydocument` (server → the last self-signed key document, served by the notary API).
pub struct ServerKeys {
    servernamekeyid_key: Tree,
    servername_keydocument: Tree,
    trusted_notaries: Vec<OwnedServerName>,
    /// Per-server fetch state, bounded by [`MAX_TRACKED_SERVERS`].
    fetches: parking_lot::Mutex<HashMap<OwnedServerName, FetchState>>,
}

impl ServerKeys {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>, trusted_notaries: Vec<OwnedServerName>) -> Self {
        Self {
            servernamekeyid_key: db.tree("servernamekeyid_key"),
            servername_keydocument: db.tree("servername_keydocument"),
            trusted_notaries,
            fetches: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// This server's key document, signed, as served by `GET /_matrix/key/v2/server`.
    pub fn own_document(&self, globals: &Globals) -> Result<Value> {
        let key = globals.signing_key();
        let document = json!({
            "server_name": globals.server_name(),
            "valid_until_ts": util::now_millis() + OWN_KEY_VALIDITY_MS,
            "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
            "old_verify_keys": {},
        });
        let mut object = to_object(document)?;
        crypto::sign_json(globals.server_name().as_str(), key, &mut object)
            .map_err(Error::internal)?;
        serde_json::to_value(object).map_err(Error::internal)
    }

    /// The cached keys of a server that are usable at `at` (milliseconds).
    pub fn get_cached(&self, server: &ServerName, at: u64) -> Result<BTreeMap<String, String>> {
        let mut keys = BTreeMap::new();
        let prefix = key::prefix(&[server.as_bytes()]);
        for entry in self.servernamekeyid_key.iter_prefix(&prefix) {
            let (stored_key, value) = entry?;
            let key_id = String::from_utf8_lossy(&stored_key[prefix.len()..]).into_owned();
            let value: Value = serde_json::from_slice(&value)
                .map_err(|e| Error::corrupt("servernamekeyid_key", e))?;
            if value["valid_until"].as_u64().unwrap_or(0) >= at {
                if let Some(public) = value["key"].as_str() {
                    keys.insert(key_id, public.to_owned());
                }
            }
        }
        Ok(keys)
    }

    /// The keys of a server usable for a signature made at `at`, fetching them when the cache
    /// lacks `key_id` (or any key, when `key_id` is `None`): first from the server itself, then
    /// from the trusted notaries.
    pub async fn get_keys(
        &self,
        client: &FederationClient,
        globals: &Globals,
        server: &ServerName,
        key_id: Option<&str>,
        at: u64,
    ) -> Result<BTreeMap<String, String>> {
        if server == globals.server_name() {
            let key = globals.signing_key();
            return Ok(BTreeMap::from([(key.key_id(), key.public_key_base64())]));
        }
        let cached = self.get_cached(server, at)?;
        if satisfies(&cached, key_id) {
            return Ok(cached);
        }
        // One fetch per server at a time: a request that waited reads what the fetch it waited
        // for stored, or its failure.
        let Some(running) = self.fetch_lock(server) else {
            tracing::debug!(%server, "too many key fetches tracked; not fetching");
            return Ok(cached);
        };
        let _running = running.lock().await;
        let cached = self.get_cached(server, at)?;
        if satisfies(&cached, key_id) || self.recently_failed(server) {
            return Ok(cached);
        }
        self.fetch(client, globals, server, (key_id, at)).await;
        let cached = self.get_cached(server, at)?;
        if satisfies(&cached, key_id) {
            self.fetches.lock().remove(server);
        } else if let Some(state) = self.fetches.lock().get_mut(server) {
            state.failed_until = Some(Instant::now() + FAILED_FETCH_BACKOFF);
        }
        Ok(cached)
    }

    /// The fetch lock of `server`, tracking it; `None` when [`MAX_TRACKED_SERVERS`] are tracked
    /// already and none of them can be forgotten (idle, and not recently failed).
    fn fetch_lock(&self, server: &ServerName) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut fetches = self.fetches.lock();
        if !fetches.contains_key(server) && fetches.len() >= MAX_TRACKED_SERVERS {
            let now = Instant::now();
            fetches.retain(|_, state| {
                Arc::strong_count(&state.running) > 1
                    || state.failed_until.is_some_and(|until| until > now)
            });
            if fetches.len() >= MAX_TRACKED_SERVERS {
                return None;
            }
        }
        Some(Arc::clone(
            &fetches.entry(server.to_owned()).or_default().running,
        ))
    }

    fn recently_failed(&self, server: &ServerName) -> bool {
        self.fetches
            .lock()
            .get(server)
            .and_then(|state| state.failed_until)
            .is_some_and(|until| until > Instant::now())
    }

    /// Fetches a server's keys into the cache: from the server itself, then, while `key_id`
    /// usable at `at` is missing, from the trusted notaries (other than the server itself).
    async fn fetch(
        &self,
        client: &FederationClient,
        globals: &Globals,
        server: &ServerName,
        (key_id, at): (Option<&str>, u64),
    ) {
        match client.get_server_keys(server).await {
            Ok(document) => {
                if let Err(error) = self.store_document(server, &document, None) {
                    tracing::warn!(%server, %error, "server published an invalid key document");
                }
            }
            Err(error) => tracing::debug!(%server, %error, "fetching server keys failed"),
        }
        for notary in self
            .trusted_notaries
            .iter()
            .filter(|notary| *notary != server)
        {
            if self
                .get_cached(server, at)
                .is_ok_and(|cached| satisfies(&cached, key_id))
            {
                break;
            }
            let path = format!("/_matrix/key/v2/query/{server}");
            let Ok(answer) = client
                .request_capped(
                    globals.server_name(),
                    globals.signing_key(),
                    notary,
                    (http::Method::GET, &path),
                    None,
                    crate::federation::MAX_KEY_RESPONSE_BYTES,
                )
                .await
            else {
                continue;
            };
            let Ok(notary_keys) =
                Box::pin(self.get_keys(client, globals, notary, None, util::now_millis())).await
            else {
                continue;
            };
            for document in answer["server_keys"].as_array().into_iter().flatten() {
                if let Err(error) =
                    self.store_document(server, document, Some((notary, &notary_keys)))
                {
                    tracing::warn!(%server, %notary, %error, "notary returned an invalid key document");
                }
            }
        }
    }

    /// Verifies a key document (its own signature and, through a notary, the notary's too) and
    /// caches its keys.
    pub fn store_document(
        &self,
        server: &ServerName,
        document: &Value,
        notary: Option<(&ServerName, &BTreeMap<String, String>)>,
    ) -> Result<()> {
        if document["server_name"].as_str() != Some(server.as_str()) {
            return Err(Error::forbidden("key document names another server"));
        }
        let verify_keys: BTreeMap<String, String> = document["verify_keys"]
            .as_object()
            .map(|keys| {
                keys.iter()
                    .filter_map(|(id, key)| Some((id.clone(), key["key"].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let mut key_map = PublicKeyMap::new();
        key_map.insert(server.to_string(), to_key_set(&verify_keys)?);
        if let Some((notary_name, notary_keys)) = notary {
            key_map.insert(notary_name.to_string(), to_key_set(notary_keys)?);
        }
        let object = to_object(document.clone())?;
        // Every listed signer must verify: the server itself, and the notary when there is one.
        ruma::signatures::verify_json(&key_map, &object)
            .map_err(|error| Error::forbidden(format!("key document signature: {error}")))?;
        let signed_by_server = object
            .get("signatures")
            .and_then(|value| match value {
                CanonicalJsonValue::Object(signatures) => signatures.get(server.as_str()),
                _ => None,
            })
            .is_some();
        if !signed_by_server {
            return Err(Error::forbidden("key document not signed by its server"));
        }
        let now = util::now_millis();
        let valid_until = document["valid_until_ts"]
            .as_u64()
            .unwrap_or(0)
            .min(now + MAX_CACHE_MS);
        for (key_id, public) in &verify_keys {
            self.put_key(server, key_id, public, valid_until)?;
        }
        for (key_id, old) in document["old_verify_keys"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if let (Some(public), Some(expired)) = (old["key"].as_str(), old["expired_ts"].as_u64())
            {
                self.put_key(server, key_id, public, expired)?;
            }
        }
        self.servername_keydocument.insert(
            server.as_bytes(),
            &serde_json::to_vec(document).map_err(Error::internal)?,
        )?;
        Ok(())
    }

    fn put_key(&self, server: &ServerName, key_id: &str, public: &str, until: u64) -> Result<()> {
        STANDARD_NO_PAD
            .decode(public)
            .map_err(|_| Error::forbidden(format!("key {key_id} is not base64")))?;
        let stored_key = key::join(&[server.as_bytes(), key_id.as_bytes()]);
        // Never shorten a validity already known: an older document must not revoke a key.
        if let Some(existing) = self.servernamekeyid_key.get(&stored_key)? {
            let existing: Value = serde_json::from_slice(&existing)
                .map_err(|e| Error::corrupt("servernamekeyid_key", e))?;
            if existing["key"].as_str() == Some(public)
                && existing["valid_until"].as_u64().unwrap_or(0) >= until
            {
                return Ok(());
            }
        }
        let value = json!({ "key": public, "valid_until": until });
        self.servernamekeyid_key
            .insert(&stored_key, value.to_string().as_bytes())
    }

    /// The last key document stored for a server (for the notary API).
    pub fn get_document(&self, server: &ServerName) -> Result<Option<Value>> {
        self.servername_keydocument
            .get(server.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("servername_keydocument", e))
            })
            .transpose()
    }
}

/// Whether `cached` holds `key_id` (or any key, when `key_id` is `None`).
fn satisfies(cached: &BTreeMap<String, String>, key_id: Option<&str>) -> bool {
    match key_id {
        Some(key_id) => cached.contains_key(key_id),
        None => !cached.is_empty(),
    }
}

/// Keys in the form `ruma-signatures` verifies with.
pub fn to_key_set(keys: &BTreeMap<String, String>) -> Result<PublicKeySet> {
    let mut set = PublicKeySet::new();
    for (key_id, public) in keys {
        let bytes = STANDARD_NO_PAD
            .decode(public)
            .map_err(|_| Error::forbidden(format!("key {key_id} is not base64")))?;
        set.insert(key_id.clone(), ruma::serde::Base64::new(bytes));
    }
    Ok(set)
}

fn to_object(value: Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(Error::bad_json("expected a canonical JSON object")),
    }
}
