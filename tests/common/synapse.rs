//! A real Synapse (matrix-synapse from PyPI) run as a child process on a loopback address,
//! for interop tests against Plait.
//!
//! `scripts/synapse-venv` installs the pinned Synapse into a venv outside the clone; the first
//! `Synapse::start` in a test process runs it (it returns at once when the venv is ready).
//! Each `Synapse` gets a temporary folder with its SQLite database, signing key, TLS files and
//! logs, a plain-HTTP client listener and a TLS federation listener on its own ports, and the
//! server name `"{ip}:{federation_port}"`, an IP literal with a port, which the server discovery
//! rules of the spec resolve with no SRV or `.well-known` lookup. It trusts only the given `TestCa` for outgoing
//! federation, may reach any loopback address, and has its rate limits and federation back-off
//! turned down so that tests are not slowed by them.
//!
//! `kill` and `restart` stop it with SIGKILL and start it again on the same folder and ports.
//! Dropping a `Synapse` kills the process. Keep each one in a test's own scope, not in a
//! static: statics are never dropped, so the process would outlive the test binary.
//! Set `PLAIT_KEEP_SYNAPSE=1` to keep its folder (the path is printed) for reading the logs,
//! and `PLAIT_SYNAPSE_LOG_LEVEL=DEBUG` for more detail in them.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{tls::TestCa, Client};

mod config;

/// How long Synapse may take to answer `/_matrix/client/versions` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Synapse; dropping it kills the process and deletes its folder.
pub struct Synapse {
    ip: IpAddr,
    client_port: u16,
    federation_port: u16,
    server_name: String,
    http: reqwest::Client,
    child: Child,
    // Declared after `child`, so the folder goes only once the process is dead.
    dir: tempfile::TempDir,
}

impl Synapse {
    /// Starts a Synapse on `ip` whose federation certificate comes from `ca`.
    pub async fn start(ip: IpAddr, ca: &TestCa) -> Self {
        Self::start_with_config(ip, ca, json!({})).await
    }

    /// Starts a Synapse like `start`, with top-level `homeserver.yaml` keys from `extra`
    /// replacing the harness's values (for example `{"default_room_version": "11"}`).
    pub async fn start_with_config(ip: IpAddr, ca: &TestCa, extra: Value) -> Self {
        let python = venv_python().await;
        let started = Instant::now();
        // Ports are picked by binding and releasing them, so another process can take one
        // before Synapse binds it; that shows as "Address already in use" and is retried.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut synapse = Self::spawn(&python, ip, ca, &extra);
            let reason = match synapse.wait_until_ready(started).await {
                Ok(()) => return synapse,
                Err(Failure::PortTaken) if attempts < 3 => continue,
                Err(Failure::PortTaken) => "its ports were taken three times".to_owned(),
                Err(Failure::Other(reason)) => reason,
            };
            panic!(
                "Synapse on {ip} did not start: {reason} (folder {}, kept if \
                 PLAIT_KEEP_SYNAPSE=1 is set):\n{}",
                synapse.dir.path().display(),
                synapse.log_tail(40)
            );
        }
    }

    /// The server name, `"{ip}:{federation_port}"`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The address Synapse listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The plain-HTTP client API base URL, e.g. `http://127.0.0.2:40001`.
    pub fn client_base(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, self.client_port))
    }

    /// The TLS federation base URL, e.g. `https://127.0.0.2:40002`; use `TestCa::https_client`.
    pub fn federation_base(&self) -> String {
        format!("https://{}", self.server_name)
    }

    /// The folder holding the config, database and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A JSON client for Synapse's client API, with an access token if one is given.
    pub fn client(&self, access_token: Option<&str>) -> Client {
        Client {
            base: self.client_base(),
            token: access_token.map(str::to_owned),
            http: self.http.clone(),
        }
    }

    /// Registers `localpart` through the client API's `m.login.dummy` flow and returns
    /// `(user_id, access_token)`.
    pub async fn register(&self, localpart: &str, password: &str) -> (String, String) {
        let client = self.client(None);
        let request = json!({"username": localpart, "password": password});
        let (status, challenge) = client.post("/_matrix/client/v3/register", request).await;
        assert_eq!(
            status, 401,
            "Synapse register {localpart}: expected a UIA challenge, got {challenge}"
        );
        let session = challenge["session"]
            .as_str()
            .unwrap_or_else(|| panic!("Synapse register {localpart}: no session in {challenge}"));
        let request = json!({
            "username": localpart,
            "password": password,
            "auth": {"type": "m.login.dummy", "session": session},
        });
        let (status, body) = client.post("/_matrix/client/v3/register", request).await;
        assert_eq!(status, 200, "Synapse register {localpart}: {body}");
        let field = |name: &str| body[name].as_str().unwrap().to_owned();
        (field("user_id"), field("access_token"))
    }

    /// Registers a server admin through Synapse's `register_new_matrix_user` script (which uses
    /// the config's registration shared secret), logs in and returns `(user_id, access_token)`,
    /// for Synapse's admin API.
    pub async fn register_admin(&self, localpart: &str, password: &str) -> (String, String) {
        let script = venv_python()
            .await
            .with_file_name("register_new_matrix_user");
        let mut command = Command::new(&script);
        command
            .args([
                "--user",
                localpart,
                "--password",
                password,
                "--admin",
                "--config",
            ])
            .arg(self.dir.path().join("homeserver.yaml"))
            .arg(self.client_base())
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
        assert!(
            output.status.success(),
            "register_new_matrix_user {localpart}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let login = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        });
        let body = self
            .client(None)
            .post_ok("/_matrix/client/v3/login", login)
            .await;
        let field = |name: &str| body[name].as_str().unwrap().to_owned();
        (field("user_id"), field("access_token"))
    }

    /// The last `lines` lines of Synapse's log and of its stdout and stderr, for failure
    /// messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "--- homeserver.log ---\n{}\n--- stdout and stderr ---\n{}",
            tail("homeserver.log"),
            tail("console.log")
        )
    }

    /// Kills Synapse with SIGKILL, so no shutdown code runs, and waits until it is gone. Its
    /// folder (database, signing key, logs) stays for [`Self::restart`].
    pub fn kill(&mut self) {
        self.child.kill().expect("send SIGKILL to Synapse");
        self.child.wait().expect("reap Synapse");
    }

    /// Starts Synapse again on the same folder, config and ports (so the same server name and
    /// signing key), after [`Self::kill`], and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart needs Synapse to be stopped first"
        );
        let python = venv_python().await;
        self.child = spawn_process(&python, self.dir.path());
        // The ports were free while Synapse was down; another process taking one in between
        // shows as a failed start.
        if let Err(failure) = self.wait_until_ready(Instant::now()).await {
            let reason = match failure {
                Failure::PortTaken => "one of its ports was taken while it was down".to_owned(),
                Failure::Other(reason) => reason,
            };
            panic!(
                "Synapse {} did not restart: {reason}\n{}",
                self.server_name,
                self.log_tail(40)
            );
        }
    }

    /// Writes the config into a new folder and spawns Synapse, without waiting for it.
    fn spawn(python: &Path, ip: IpAddr, ca: &TestCa, extra: &Value) -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix("plait-synapse-")
            .tempdir()
            .expect("create Synapse folder");
        if std::env::var_os("PLAIT_KEEP_SYNAPSE").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping Synapse folder {}", dir.path().display());
        }
        let (client_port, federation_port) = free_ports(ip);
        let server_name = SocketAddr::new(ip, federation_port).to_string();
        let mut config = config::homeserver(dir.path(), ip, client_port, federation_port, ca);
        config["server_name"] = json!(server_name);
        for (key, value) in extra.as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        // YAML is a superset of JSON, so the config is written as JSON.
        let config_path = dir.path().join("homeserver.yaml");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap())
            .expect("write homeserver.yaml");
        std::fs::write(
            dir.path().join("log.yaml"),
            serde_json::to_string_pretty(&config::logging(dir.path())).unwrap(),
        )
        .expect("write log config");

        let child = spawn_process(python, dir.path());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            ip,
            client_port,
            federation_port,
            server_name,
            http,
            child,
            dir,
        }
    }

    /// Waits until the client API answers and the federation port accepts connections.
    async fn wait_until_ready(&mut self, started: Instant) -> Result<(), Failure> {
        let versions = format!("{}/_matrix/client/versions", self.client_base());
        let federation = SocketAddr::new(self.ip, self.federation_port);
        while started.elapsed() < START_TIMEOUT {
            let answered = self
                .http
                .get(&versions)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if answered && TcpStream::connect_timeout(&federation, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let console = std::fs::read_to_string(self.dir.path().join("console.log"))
                    .unwrap_or_default();
                let log = std::fs::read_to_string(self.dir.path().join("homeserver.log"))
                    .unwrap_or_default();
                let port_taken = |text: &str| text.contains("Address already in use");
                return Err(if port_taken(&console) || port_taken(&log) {
                    Failure::PortTaken
                } else {
                    Failure::Other(format!("it exited with {status}"))
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Failure::Other(format!(
            "no answer within {}s",
            START_TIMEOUT.as_secs()
        )))
    }
}

/// Spawns Synapse on the `homeserver.yaml` in `dir`, its output appended to `console.log`.
fn spawn_process(python: &Path, dir: &Path) -> Child {
    let console = File::options()
        .create(true)
        .append(true)
        .open(dir.join("console.log"))
        .expect("open console.log");
    // The signing key named in the config does not exist on the first start; Synapse's default
    // `--generate-missing-and-run` mode writes it before starting.
    Command::new(python)
        .args(["-m", "synapse.app.homeserver", "--config-path"])
        .arg(dir.join("homeserver.yaml"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("clone console.log handle"))
        .stderr(console)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot spawn {}: {error}", python.display()))
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a start attempt failed.
enum Failure {
    /// Another process took one of the chosen ports first.
    PortTaken,
    /// Anything else; the log says more.
    Other(String),
}

/// The venv's `python`, installing the venv on first use in this process.
/// Panics with the install script's message when Python, venv or PyPI is not available.
pub async fn venv_python() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let venv = tokio::task::spawn_blocking(|| VENV.get_or_init(install_venv).clone())
        .await
        .unwrap();
    match venv {
        Ok(python) => python,
        Err(message) => panic!("{message}"),
    }
}

/// Runs `scripts/synapse-venv`, which holds the pinned version and the cross-process lock.
fn install_venv() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/synapse-venv");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "the Synapse interop tests need Synapse installed, and {} failed ({}):\n{stderr}",
            script.display(),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let venv = stdout.lines().last().unwrap_or_default().trim();
    let python = Path::new(venv).join("bin/python");
    if !python.exists() {
        return Err(format!(
            "{} printed {venv:?}, which has no bin/python:\n{stderr}",
            script.display()
        ));
    }
    Ok(python)
}

/// Two distinct free TCP ports on `ip`: one for the client API, one for federation.
fn free_ports(ip: IpAddr) -> (u16, u16) {
    let bind = || {
        TcpListener::bind((ip, 0))
            .unwrap_or_else(|error| panic!("cannot bind {ip}: {error} (is it a loopback address?)"))
    };
    // Both are held at once so the kernel hands out two different ports.
    let (client, federation) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().unwrap().port();
    (port(&client), port(&federation))
}
