//! Shared helpers for integration tests: a real server on 127.0.0.1:0 with a fresh database
//! (rate limits off, since tests register and send from one address as fast as they can: a test
//! of the limits turns them on in its config tweak), and a small JSON client; `tls` and `synapse` hold the federation interop harness, and
//! `plait_process` runs the real binary for tests that kill it.

#![allow(dead_code)]

pub mod debian;
pub mod http_stub;
pub mod plait_process;
pub mod synapse;
pub mod tls;

use std::{path::Path, sync::Arc};

use plait::{config::RateLimitSettings, Config, Services};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A running server; dropping it shuts the server down.
pub struct TestServer {
    pub base: String,
    pub services: Arc<Services>,
    pub dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// With `PLAIT_TEST_LOG` set (a `tracing` filter such as `plait=debug`), the servers of a test
/// log to its captured output, which a failing test prints.
fn log_if_asked() {
    if let Ok(filter) = std::env::var("PLAIT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl TestServer {
    /// Starts a server with a fresh temporary database.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_at(dir.path(), |_| {}).await;
        server.dir = Some(dir);
        server
    }

    /// Starts a federating server on `ip`: a TLS listener with a certificate from `ca`, server
    /// name `ip:port`, trusting `ca` for outgoing requests. The database folder is fresh unless
    /// `path` is given (a restart).
    pub async fn start_federated(
        ip: std::net::IpAddr,
        ca: &tls::TestCa,
        path: Option<&Path>,
    ) -> Self {
        Self::start_federated_with(ip, ca, path, |_| {}).await
    }

    /// [`Self::start_federated`] with config tweaks.
    pub async fn start_federated_with(
        ip: std::net::IpAddr,
        ca: &tls::TestCa,
        path: Option<&Path>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let (dir, path) = match path {
            Some(path) => (None, path.to_owned()),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        // On a restart, reuse the port so that the server name stays the same.
        let port_file = path.join("federation-port");
        let port: u16 = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let federation = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let address = federation.local_addr().unwrap();
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(&port_file, address.port().to_string()).unwrap();
        let (cert, key) = ca.issue(ip, &[], &path);
        let ca_file = ca.write_ca(&path);
        let mut config = Config {
            database_path: path.join("db"),
            server_name: address.to_string(),
            federation_listen: Some(address),
            tls_cert: Some(cert),
            tls_key: Some(key),
            federation_ca_file: Some(ca_file),
            ip_range_allowlist: loopback_allowed(),
            rate_limits: RateLimitSettings::off(),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let mut server = Self::spawn(config, listener, Some(federation));
        server.dir = dir;
        server
    }

    /// Starts federating servers with DNS-style names (`names[i]` on `ips[i]`), which know each
    /// other only through `federation_hosts` (no DNS, `.well-known` or SRV); each certificate
    /// is issued for its server's name.
    pub async fn start_named(ca: &tls::TestCa, servers: &[(&str, std::net::IpAddr)]) -> Vec<Self> {
        let mut listeners = Vec::new();
        for (_, ip) in servers {
            listeners.push(tokio::net::TcpListener::bind((*ip, 0)).await.unwrap());
        }
        let hosts: std::collections::BTreeMap<String, std::net::SocketAddr> = servers
            .iter()
            .zip(&listeners)
            .map(|((name, _), listener)| ((*name).to_owned(), listener.local_addr().unwrap()))
            .collect();
        let mut started = Vec::new();
        for ((name, ip), federation) in servers.iter().zip(listeners) {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = ca.issue(*ip, &[name], dir.path());
            let ca_file = ca.write_ca(dir.path());
            let config = Config {
                database_path: dir.path().join("db"),
                server_name: (*name).to_owned(),
                federation_listen: Some(federation.local_addr().unwrap()),
                tls_cert: Some(cert),
                tls_key: Some(key),
                federation_ca_file: Some(ca_file),
                rate_limits: RateLimitSettings::off(),
                federation_hosts: hosts.clone(),
                ip_range_allowlist: loopback_allowed(),
                ..Config::default()
            };
            let listener = tokio::net::TcpListener::bind((*ip, 0)).await.unwrap();
            let mut server = Self::spawn(config, listener, Some(federation));
            server.dir = Some(dir);
            started.push(server);
        }
        started
    }

    /// Validates the config and serves it on the listeners.
    fn spawn(
        mut config: Config,
        listener: tokio::net::TcpListener,
        federation: Option<tokio::net::TcpListener>,
    ) -> Self {
        config.validate().unwrap();
        log_if_asked();
        let base = format!("http://{}", listener.local_addr().unwrap());
        config.listen = listener.local_addr().unwrap();
        let services = Services::build(Arc::new(config)).unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            plait::serve(
                plait::Listeners {
                    client: listener,
                    federation,
                },
                Arc::clone(&services),
                async {
                    let _ = stopped.await;
                },
            )
            .map_unit(),
        );
        Self {
            base,
            services,
            dir: None,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// This server's name.
    pub fn server_name(&self) -> String {
        self.services.globals.server_name().to_string()
    }

    /// Starts a server on an existing database folder, with config tweaks.
    pub async fn start_at(path: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            database_path: path.to_owned(),
            ip_range_allowlist: loopback_allowed(),
            rate_limits: RateLimitSettings::off(),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::spawn(config, listener, None)
    }

    /// Tries to open the services on a database with another server name.
    pub async fn try_start_with_name(path: &Path, server_name: &str) -> Result<(), plait::Error> {
        let config = Config {
            database_path: path.to_owned(),
            server_name: server_name.to_owned(),
            ..Config::default()
        };
        Services::build(Arc::new(config)).map(drop)
    }

    /// Stops the server and waits until its database is closed.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // Connection tasks that finish on other worker threads may still hold the services (and
        // with them the database) for a moment after the server returned.
        for _ in 0..200 {
            if Arc::strong_count(&self.services) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            Arc::strong_count(&self.services),
            1,
            "the services are still in use 10 s after the server stopped"
        );
        let dir = self.dir.take();
        drop(self);
        dir
    }

    /// A client without a token.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Registers `name` with password `password` through the UIA dummy flow.
    pub async fn register(&self, name: &str) -> Client {
        let client = self.client();
        let (status, first) = client
            .post(
                "/_matrix/client/v3/register",
                json!({"username": name, "password": "password"}),
            )
            .await;
        assert_eq!(status, 401, "{first}");
        let session = first["session"].as_str().unwrap().to_owned();
        let (status, body) = client
            .post("/_matrix/client/v3/register", json!({"username": name, "password": "password", "auth": {"type": "m.login.dummy", "session": session}}))
            .await;
        assert_eq!(status, 200, "{body}");
        Client {
            token: Some(body["access_token"].as_str().unwrap().to_owned()),
            ..client
        }
    }
}

trait MapUnit {
    fn map_unit(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

impl<F: std::future::Future<Output = Result<(), plait::Error>> + Send + 'static> MapUnit for F {
    fn map_unit(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.await.unwrap();
        })
    }
}

/// A JSON client for one user.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends a raw body, for malformed-input tests.
    pub async fn send_raw(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .body(body.to_owned());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, Some(body)).await
    }

    /// `GET` that must succeed.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `POST` that must succeed.
    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let (status, response) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path}: {response}");
        response
    }

    /// `PUT` that must succeed.
    pub async fn put_ok(&self, path: &str, body: Value) -> Value {
        let (status, response) = self.put(path, body).await;
        assert_eq!(status, 200, "PUT {path}: {response}");
        response
    }

    /// Creates a room and returns its ID.
    pub async fn create_room(&self, body: Value) -> String {
        self.post_ok("/_matrix/client/v3/createRoom", body).await["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Joins a room by ID; the join must succeed.
    pub async fn join(&self, room: &str) {
        self.post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
            serde_json::json!({}),
        )
        .await;
    }

    /// Sends a text message and returns its event ID.
    pub async fn send_text(&self, room: &str, txn: &str, text: &str) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        );
        self.put_ok(&path, json!({"msgtype": "m.text", "body": text}))
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The user ID behind the token.
    pub async fn user_id(&self) -> String {
        self.get_ok("/_matrix/client/v3/account/whoami").await["user_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
/// The `ip_range_allowlist` of test servers: they federate, push and preview on loopback,
/// which the default `ip_range_denylist` refuses. A test of the default sets it back to empty.
pub fn loopback_allowed() -> Vec<String> {
    vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]
}

/// An IP address from its text (test constants).
pub fn ip(text: &str) -> std::net::IpAddr {
    text.parse().unwrap()
}

/// A federation request from `from` to `to`, signed by `from`'s server key through its own
/// federation client.
pub async fn federation_ask(
    from: &TestServer,
    to: &TestServer,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, plait::Error> {
    let destination = ruma::OwnedServerName::try_from(to.server_name()).unwrap();
    from.services
        .federation_request(&destination, method, path, body.as_ref())
        .await
}

/// A `/send` transaction of `pdus` and `edus` from `from` to `to`, signed by `from`; the answer.
pub async fn send_transaction(
    from: &TestServer,
    to: &TestServer,
    txn: &str,
    pdus: Vec<Value>,
    edus: Vec<Value>,
) -> Value {
    let body = serde_json::json!({
        "origin": from.server_name(), "origin_server_ts": 1, "pdus": pdus, "edus": edus,
    });
    federation_ask(
        from,
        to,
        http::Method::PUT,
        &format!("/_matrix/federation/v1/send/{txn}"),
        Some(body),
    )
    .await
    .unwrap()
}

/// [`send_transaction`] of PDUs only.
pub async fn send_pdus(from: &TestServer, to: &TestServer, txn: &str, pdus: Vec<Value>) -> Value {
    send_transaction(from, to, txn, pdus, Vec::new()).await
}

/// [`send_transaction`] of EDUs only (`edus` is a JSON array).
pub async fn send_edus(from: &TestServer, to: &TestServer, txn: &str, edus: Value) -> Value {
    let Value::Array(edus) = edus else {
        panic!("edus must be an array: {edus}");
    };
    send_transaction(from, to, txn, Vec::new(), edus).await
}

/// Percent-encodes a path segment.
pub fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Asserts a Matrix error status and code.
pub fn assert_error(response: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["errcode"], errcode, "{}", response.1);
}
