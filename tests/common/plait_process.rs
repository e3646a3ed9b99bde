//! The real `plait` binary as a child process that federates over TLS, for tests that kill it
//! with SIGKILL (no shutdown code runs) and start it again on the same database.
//!
//! Configured through `PLAIT_*` environment variables: server name `"{ip}:{federation_port}"`
//! like [`super::TestServer::start_federated`], a certificate from the given `TestCa`, and the
//! client and federation ports kept across restarts, so clients and the other server keep
//! talking to the same addresses. The log goes to `plait.log` in its folder (filter from
//! `PLAIT_TEST_LOG`, `info` otherwise); `log_tail` shows it in failure messages, and
//! `PLAIT_KEEP_SYNAPSE=1` keeps the folder, as it does the Synapse harness's.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use super::{tls::TestCa, Client};

/// How long the binary may take to answer `/_matrix/client/versions` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or killed) Plait process; dropping it kills the process and deletes its folder.
pub struct PlaitProcess {
    ip: IpAddr,
    client_port: u16,
    federation_port: u16,
    child: Child,
    // Declared after `child`, so the folder goes only once the process is dead.
    dir: tempfile::TempDir,
}

impl PlaitProcess {
    /// Starts Plait on `ip` with a fresh database and a certificate from `ca`.
    pub async fn start(ip: IpAddr, ca: &TestCa) -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix("plait-process-")
            .tempdir()
            .expect("create Plait folder");
        if std::env::var_os("PLAIT_KEEP_SYNAPSE").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping Plait folder {}", dir.path().display());
        }
        let (cert, key) = ca.issue(ip, &[], dir.path());
        let ca_file = ca.write_ca(dir.path());
        let (client_port, federation_port) = free_ports(ip);
        let server_name = SocketAddr::new(ip, federation_port).to_string();
        let log = std::env::var("PLAIT_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
        let env = [
            ("PLAIT_SERVER_NAME", server_name.clone()),
            (
                "PLAIT_DATABASE_PATH",
                dir.path().join("db").display().to_string(),
            ),
            ("PLAIT_LISTEN", SocketAddr::new(ip, client_port).to_string()),
            ("PLAIT_FEDERATION_LISTEN", server_name),
            ("PLAIT_TLS_CERT", cert.display().to_string()),
            ("PLAIT_TLS_KEY", key.display().to_string()),
            ("PLAIT_FEDERATION_CA_FILE", ca_file.display().to_string()),
            (
                "PLAIT_IP_RANGE_ALLOWLIST",
                r#"["127.0.0.0/8","::1/128"]"#.to_owned(),
            ),
            ("PLAIT_LOG", log),
            // Tests register and send from one address as fast as they can.
            ("PLAIT_RATE_LIMITS_ENABLED", "false".to_owned()),
        ];
        let env_file: String = env
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        std::fs::write(dir.path().join("env"), env_file).expect("write env");
        let child = spawn(dir.path());
        let mut plait = Self {
            ip,
            client_port,
            federation_port,
            child,
            dir,
        };
        plait.wait_until_ready().await;
        plait
    }

    /// The server name, `"{ip}:{federation_port}"`.
    pub fn server_name(&self) -> String {
        SocketAddr::new(self.ip, self.federation_port).to_string()
    }

    /// A JSON client for the client API, with an access token if one is given.
    pub fn client(&self, access_token: Option<&str>) -> Client {
        Client {
            base: format!("http://{}", SocketAddr::new(self.ip, self.client_port)),
            token: access_token.map(str::to_owned),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Registers `name` (password `password`) through the UIA dummy flow.
    pub async fn register(&self, name: &str) -> Client {
        let client = self.client(None);
        let request = json!({"username": name, "password": "password"});
        let (status, first) = client.post("/_matrix/client/v3/register", request).await;
        assert_eq!(status, 401, "{first}");
        let request = json!({
            "username": name,
            "password": "password",
            "auth": {"type": "m.login.dummy", "session": first["session"]},
        });
        let (status, body) = client.post("/_matrix/client/v3/register", request).await;
        assert_eq!(status, 200, "{body}");
        self.client(body["access_token"].as_str())
    }

    /// Kills the process with SIGKILL and waits until it is gone; the database stays.
    /// Waits up to `timeout` for the process to exit on its own; its status, if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll plait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("send SIGKILL to plait");
        self.child.wait().expect("reap plait");
    }

    /// Starts the binary again on the same database, config and ports after [`Self::kill`].
    pub async fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart needs plait to be stopped first"
        );
        self.child = spawn(self.dir.path());
        self.wait_until_ready().await;
    }

    /// Adds a variable to the environment of the next [`Self::restart`].
    pub fn add_env(&self, name: &str, value: &str) {
        let path = self.dir.path().join("env");
        let mut env = std::fs::read_to_string(&path).expect("read env");
        env.push_str(&format!("{name}={value}\n"));
        std::fs::write(path, env).expect("write env");
    }

    /// The folder of its database.
    pub fn database_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("db")
    }

    /// The environment it runs with, as `(name, value)` pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        let env = std::fs::read_to_string(self.dir.path().join("env")).expect("read env");
        env.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// The last `lines` lines of the process's output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("plait.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- plait.log ---\n{}",
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    async fn wait_until_ready(&mut self) {
        let versions = format!("{}/_matrix/client/versions", self.client(None).base);
        let federation = SocketAddr::new(self.ip, self.federation_port);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            let answered = http
                .get(&versions)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if answered && TcpStream::connect_timeout(&federation, Duration::from_secs(1)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("plait exited with {status}:\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "plait did not answer within {}s:\n{}",
            START_TIMEOUT.as_secs(),
            self.log_tail(40)
        );
    }
}

impl Drop for PlaitProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the binary with the environment written in `dir/env`, its output appended to
/// `dir/plait.log`.
fn spawn(dir: &std::path::Path) -> Child {
    let env = std::fs::read_to_string(dir.join("env")).expect("read env");
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("plait.log"))
        .expect("open plait.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_plait"));
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone plait.log handle"))
        .stderr(log);
    for line in env.lines() {
        if let Some((name, value)) = line.split_once('=') {
            command.env(name, value);
        }
    }
    command.spawn().expect("spawn plait")
}

/// Two distinct free TCP ports on `ip`: one for the client API, one for federation.
fn free_ports(ip: IpAddr) -> (u16, u16) {
    let bind = || TcpListener::bind((ip, 0)).expect("bind a loopback address");
    let (client, federation) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().unwrap().port();
    (port(&client), port(&federation))
}

/// How a [`run_captured`] run ended, with everything it wrote to stdout and stderr.
pub struct Captured {
    pub status: std::process::ExitStatus,
    pub output: String,
    /// Whether it was still running when `stop_when` matched (or 30 s passed) and got SIGTERM.
    pub terminated: bool,
}

/// Runs the binary with `args` and `env` (and no `RUST_LOG`), its stdout and stderr read through
/// pipes, so that it sees no terminal. Once the output so far satisfies `stop_when`, or after
/// 30 s, it gets SIGTERM, and SIGKILL 30 s later.
pub fn run_captured(
    args: &[&str],
    env: &[(String, String)],
    stop_when: impl Fn(&str) -> bool,
) -> Captured {
    use std::{
        io::Read,
        sync::{Arc, Mutex},
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_plait"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn plait");
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        let output = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(read @ 1..) = pipe.read(&mut buffer) {
                output.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        })
    })
    .collect();
    let started = Instant::now();
    let mut terminated = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll plait") {
            break status;
        }
        let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        if !terminated && (stop_when(&text) || started.elapsed() > Duration::from_secs(30)) {
            // SAFETY: kill only sends a signal to the child this function spawned.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            terminated = true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for reader in readers {
        reader.join().unwrap();
    }
    let output = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    Captured {
        status,
        output,
        terminated,
    }
}
