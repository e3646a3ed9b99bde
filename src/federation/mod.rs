//! The outgoing server-server client: discovery, `X-Matrix` request signing and HTTPS through
//! `reqwest` with certificate verification always on. It knows nothing about rooms; callers pass
//! the origin, the signing key and the destination.
//!
//! The outgoing server-server client: fixed addresses from `federation_hosts` first (connect to the given address, verify the certificate for the server name), then server discovery (`resolve.rs`: IP literals, explicit ports, `.well-known` cached by its headers, SRV `_matrix-fed._tcp` then `_matrix._tcp`, port 8448; the decision logic is tested without a network through a `Lookups` trait), `X-Matrix` signing, and HTTPS through `reqwest` with certificate verification always on (`federation_ca_file` adds a CA to the platform roots).
//! A remote `M_FORBIDDEN`/`M_NOT_FOUND` (and, for restricted joins, `M_UNABLE_TO_AUTHORISE_JOIN`/`M_UNABLE_TO_GRANT_JOIN`) is passed on as such; any other failure is `Error::Remote` (502).
//! `request_bytes` is the signed `GET` for answers that are not JSON (federation media), with a byte limit.

pub mod guard;
pub mod resolve;

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use http::Method;
use ruma::{api::error::ErrorKind, CanonicalJsonObject, CanonicalJsonValue, ServerName};
use serde_json::Value;

use self::{
    guard::GuardedResolver,
    resolve::{Lookups, Resolver, WellKnown},
};
use crate::{
    config::IpPolicy,
    crypto::SigningKey,
    error::{Error, Result},
};

/// Largest JSON answer read from another server: room state and `/send_join` answers of big
/// rooms are the largest (tens of MB for rooms of tens of thousands of members).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;
/// Largest server key document read (a few keys and signatures: a few KB).
pub const MAX_KEY_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest `.well-known/matrix/server` body read.
const MAX_WELL_KNOWN_BYTES: usize = 64 * 1024;
/// Time to open a connection (DNS and TCP); a handshake or answer that takes longer counts
/// against the total timeout of the request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS client for other homeservers.
pub struct FederationClient {
    http: reqwest::Client,
    resolver: Resolver,
    /// Fixed addresses for server names (`federation_hosts`), consulted before discovery.
    fixed_hosts: BTreeMap<String, SocketAddr>,
    /// Host overrides (SRV targets, fixed hosts) and the address policy of every connection.
    guard: Arc<GuardedResolver>,
    srv: Option<hickory_resolver::TokioResolver>,
}

/// What a remote server answered with a non-2xx status.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {errcode} {message}")]
pub struct RemoteError {
    pub status: u16,
    pub errcode: String,
    pub message: String,
}

impl FederationClient {
    /// Builds the client; `ca_file` adds a trusted CA (PEM) to the platform's roots,
    /// `fixed_hosts` names the addresses of some servers outright (exempt from `policy`, which
    /// every other connection keeps to), and `timeout` bounds each request in all.
    pub fn new(
        ca_file: Option<&Path>,
        fixed_hosts: BTreeMap<String, SocketAddr>,
        policy: IpPolicy,
        timeout: Duration,
    ) -> Result<Self> {
        let guard = Arc::new(GuardedResolver::new(policy));
        for (name, address) in &fixed_hosts {
            if let Some((host, _)) = resolve::split_server_name(name) {
                guard.set_override(host, (address.ip().to_string(), address.port()), true);
            }
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("Plait/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::clone(&guard));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|error| {
                Error::Config(format!(
                    "invalid configuration key `federation_ca_file`: cannot read {}: {error}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                Error::Config(format!(
                    "invalid configuration key `federation_ca_file`: {error}"
                ))
            })?;
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
            .build()
            .map_err(|error| Error::Config(format!("federation client: {error}")))?;
        let srv = hickory_resolver::TokioResolver::builder_tokio()
            .ok()
            .map(|builder| builder.build());
        Ok(Self {
            http,
            resolver: Resolver::default(),
            fixed_hosts,
            guard,
            srv,
        })
    }

    /// The base URL and `Host` header for `destination`, after checking that the address it
    /// leads to may be contacted: an IP literal here, a name in the resolver, both before any
    /// connection is opened.
    async fn base_url(&self, destination: &ServerName) -> Result<(String, String)> {
        if let Some(address) = self.fixed_hosts.get(destination.as_str()) {
            // Connect to the fixed address (set up in `new`), but speak to (and verify the
            // certificate of) the server name's host.
            let host = resolve::split_server_name(destination.as_str())
                .map(|(host, _)| host.to_owned())
                .unwrap_or_default();
            let authority = format!("{host}:{}", address.port());
            return Ok((format!("https://{authority}"), destination.to_string()));
        }
        let lookups = NetLookups { client: self };
        let resolved = self
            .resolver
            .resolve(&lookups, destination.as_str())
            .await
            .ok_or_else(|| remote(destination, "cannot resolve the server name"))?;
        let (host, port) = resolve::split_server_name(&resolved.authority)
            .ok_or_else(|| remote(destination, "cannot resolve the server name"))?;
        // A host the operator fixed is reached on its fixed port only: another server name
        // must not borrow the exemption to reach another port of that address.
        if self.guard.is_exempt(host) {
            let fixed_port = self
                .fixed_hosts
                .iter()
                .filter(|(name, _)| resolve::split_server_name(name).map(|(h, _)| h) == Some(host))
                .map(|(_, address)| address.port())
                .collect::<Vec<_>>();
            if port.is_none_or(|port| !fixed_port.contains(&port)) {
                return Err(remote(destination, "the address is not the one configured"));
            }
        }
        guard::check_host(self.guard.policy(), host).map_err(|error| remote(destination, error))?;
        if let Some(target) = resolved.connect_to.clone() {
            self.guard.set_override(host, target, false);
        }
        Ok((
            format!("https://{}", resolved.authority),
            resolved.host_header,
        ))
    }

    /// Sends a request signed with `X-Matrix` and returns the JSON answer. A remote
    /// `M_FORBIDDEN`/`M_NOT_FOUND` describes the remote resource and is passed on as such; any
    /// other failure is [`Error::Remote`].
    pub async fn request(
        &self,
        origin: &ServerName,
        key: &SigningKey,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.request_capped(
            origin,
            key,
            destination,
            (method, path_and_query),
            body,
            MAX_RESPONSE_BYTES,
        )
        .await
    }

    /// [`Self::request`] with an answer of at most `limit` bytes.
    #[tracing::instrument(skip_all, fields(destination = %destination, method = %method, path = %path_and_query))]
    pub async fn request_capped(
        &self,
        origin: &ServerName,
        key: &SigningKey,
        destination: &ServerName,
        (method, path_and_query): (Method, &str),
        body: Option<&Value>,
        limit: usize,
    ) -> Result<Value> {
        let authorization = x_matrix(origin, key, destination, &method, path_and_query, body)?;
        let (base, host) = self.base_url(destination).await?;
        let mut request = self
            .http
            .request(method, format!("{base}{path_and_query}"))
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, authorization);
        if let Some(body) = body {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).map_err(Error::internal)?);
        }
        let response = request
            .send()
            .await
            .map_err(|error| remote(destination, error))?;
        read_json(destination, response, limit).await
    }

    /// A signed `GET` whose answer is not JSON (federation media): the response with its body
    /// (at most `limit` bytes). Error statuses are mapped as in [`Self::request`].
    #[tracing::instrument(skip_all, fields(destination = %destination, path = %path_and_query))]
    pub async fn request_bytes(
        &self,
        origin: &ServerName,
        key: &SigningKey,
        destination: &ServerName,
        path_and_query: &str,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>> {
        let authorization = x_matrix(origin, key, destination, &Method::GET, path_and_query, None)?;
        let (base, host) = self.base_url(destination).await?;
        let response = self
            .http
            .get(format!("{base}{path_and_query}"))
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, authorization)
            .send()
            .await
            .map_err(|error| remote(destination, error))?;
        read_bytes(destination, response, limit).await
    }

    /// An unsigned `GET` of a URL another server pointed to (a media `Location`), with the
    /// same TLS checks; at most `limit` bytes.
    pub async fn get_url(
        &self,
        destination: &ServerName,
        url: &str,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>> {
        let parsed = reqwest::Url::parse(url).map_err(|error| remote(destination, error))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| remote(destination, "a URL without a host"))?;
        guard::check_host(self.guard.policy(), host).map_err(|error| remote(destination, error))?;
        let response = self
            .http
            .get(parsed)
            .send()
            .await
            .map_err(|error| remote(destination, error))?;
        read_bytes(destination, response, limit).await
    }

    /// `GET /_matrix/key/v2/server` of a server (not signed: it is how keys are learnt); an
    /// answer over [`MAX_KEY_RESPONSE_BYTES`] is refused.
    pub async fn get_server_keys(&self, destination: &ServerName) -> Result<Value> {
        let (base, host) = self.base_url(destination).await?;
        let response = self
            .http
            .get(format!("{base}/_matrix/key/v2/server"))
            .header(http::header::HOST, host)
            .send()
            .await
            .map_err(|error| remote(destination, error))?;
        read_json(destination, response, MAX_KEY_RESPONSE_BYTES).await
    }
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `Authorization: X-Matrix …` value for a request: the origin's signature over method, URI,
/// origin, destination and body (server-server API, "Request Authentication").
pub fn x_matrix(
    origin: &ServerName,
    key: &SigningKey,
    destination: &ServerName,
    method: &Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<String> {
    let mut object: CanonicalJsonObject = [
        ("method", method.to_string()),
        ("uri", path_and_query.to_owned()),
        ("origin", origin.to_string()),
        ("destination", destination.to_string()),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), CanonicalJsonValue::String(value)))
    .collect();
    if let Some(body) = body {
        object.insert(
            "content".into(),
            CanonicalJsonValue::try_from(body.clone()).map_err(Error::internal)?,
        );
    }
    let signature = key.sign_bytes(CanonicalJsonValue::Object(object).to_string().as_bytes());
    Ok(format!(
        "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\",sig=\"{signature}\"",
        key.key_id()
    ))
}

fn remote(
    server: &ServerName,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Remote {
        server: server.to_string(),
        source: error.into(),
    }
}

async fn read_body(response: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return None;
    }
    let mut response = response;
    let mut body = Vec::new();
    // A body cut off (a timeout, a reset) is no answer, not a shorter one.
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

async fn read_bytes(
    destination: &ServerName,
    response: reqwest::Response,
    limit: usize,
) -> Result<http::Response<Vec<u8>>> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_body(response, limit)
        .await
        .ok_or_else(|| remote(destination, "response too large"))?;
    if !status.is_success() {
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Err(error_answer(destination, status, &value));
    }
    let mut answer = http::Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

async fn read_json(
    destination: &ServerName,
    response: reqwest::Response,
    limit: usize,
) -> Result<Value> {
    let status = response.status();
    let body = read_body(response, limit)
        .await
        .ok_or_else(|| remote(destination, "response too large"))?;
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.is_success() {
        if value.is_null() {
            return Err(remote(destination, "response is not JSON"));
        }
        return Ok(value);
    }
    Err(error_answer(destination, status, &value))
}

/// The error for a non-2xx answer: forbidden and not found describe the remote resource and are
/// passed on; anything else is [`Error::Remote`].
fn error_answer(destination: &ServerName, status: http::StatusCode, value: &Value) -> Error {
    let errcode = value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
    let message = value["error"].as_str().unwrap_or("").to_owned();
    let kind = match errcode.as_str() {
        "M_FORBIDDEN" => Some(ErrorKind::Forbidden),
        "M_NOT_FOUND" => Some(ErrorKind::NotFound),
        // The spec has clients told why a restricted join could not be authorised.
        "M_UNABLE_TO_AUTHORISE_JOIN" => Some(ErrorKind::UnableToAuthorizeJoin),
        "M_UNABLE_TO_GRANT_JOIN" => Some(ErrorKind::UnableToGrantJoin),
        _ => None,
    };
    match kind {
        Some(kind) => Error::matrix(kind, format!("{destination} answered: {message}")),
        None => remote(
            destination,
            RemoteError {
                status: status.as_u16(),
                errcode,
                message,
            },
        ),
    }
}

/// Look-ups over the network: HTTPS for `.well-known`, DNS for SRV.
struct NetLookups<'a> {
    client: &'a FederationClient,
}

impl Lookups for NetLookups<'_> {
    async fn well_known(&self, host: &str) -> Option<WellKnown> {
        let response = self
            .client
            .http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let ttl = resolve::cache_ttl(
            response
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|value| value.to_str().ok()),
        );
        let body = read_body(response, MAX_WELL_KNOWN_BYTES).await?;
        let value: Value = serde_json::from_slice(&body).ok()?;
        let server = value["m.server"].as_str()?;
        resolve::split_server_name(server)?;
        Some(WellKnown {
            server: Some(server.to_owned()),
            ttl,
        })
    }

    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let resolver = self.client.srv.as_ref()?;
        let lookup = resolver.srv_lookup(name).await.ok()?;
        let mut records: Vec<_> = lookup.iter().collect();
        records.sort_by_key(|record| (record.priority(), std::cmp::Reverse(record.weight())));
        records
            .first()
            .map(|record| (record.target().to_utf8(), record.port()))
    }
}
