//! A Plait server started as a child process on a loopback port with a fresh database, for the
//! benchmarks that drive one server over HTTP (`relations.rs`, `search.rs`, `abuse.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;

use super::Api;

/// The server binary: `PLAIT_BIN`, else the one cargo built for this bench, else
/// `$CARGO_TARGET_DIR/release/plait`.
pub(crate) fn bench_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PLAIT_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_plait") {
        return PathBuf::from(path);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("release")
        .join("plait")
}

/// The child and its folder; dropping it kills the child and removes the folder, unless
/// `PLAIT_BENCH_KEEP_DATA=1` keeps the folder (database and `server.log`).
pub(crate) struct BenchServer {
    child: Child,
    pub(crate) base: String,
    dir: PathBuf,
    keep: bool,
    /// What [`Self::kill_and_restart`] starts again.
    bin: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
}

impl BenchServer {
    /// Starts `bin` on a free port of 127.0.0.1 with open registration; `label` names its folder.
    pub(crate) fn start(bin: &Path, label: &str) -> Result<Self, String> {
        Self::start_with(bin, label, &[])
    }

    /// [`Self::start`] with extra environment variables `env` for the server; the ones of
    /// `PLAIT_BENCH_SERVER_ENV` (`"KEY=VALUE KEY2=VALUE2"`) come after them and win, and the
    /// words of `PLAIT_BENCH_SERVER_ARGS` are passed as arguments.
    pub(crate) fn start_with(
        bin: &Path,
        label: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        if !bin.exists() {
            return Err(format!("server binary {} does not exist", bin.display()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("bind: {e}"))?
            .port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "plait-bench-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let child = spawn(bin, port, &dir, &env)?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            keep: std::env::var("PLAIT_BENCH_KEEP_DATA").is_ok_and(|v| v == "1"),
            bin: bin.to_owned(),
            port,
            env,
        })
    }

    /// Starts the bench's binary (see [`bench_binary`]) and waits until it answers; the server
    /// and a client for it.
    pub(crate) async fn start_ready(label: &str) -> Result<(Self, Api), String> {
        let mut server = Self::start(&bench_binary(), label)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let api = Api {
            http,
            base: std::sync::Arc::from(server.base.as_str()),
        };
        server.wait_ready(&api).await?;
        Ok((server, api))
    }

    /// Kills the child with SIGKILL, as a crash or the OOM killer would (no shutdown, no flush),
    /// and starts the binary again on the same database and port.
    pub(crate) fn kill_and_restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.bin, self.port, &self.dir, &self.env)?;
        Ok(())
    }

    /// The folder of the database (`db/`) and the log.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The child's process ID, for its /proc readings.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs an admin command (`["server", "stats"]`) through the server's control socket, as
    /// `plait admin` does, and answers the reply's text.
    pub(crate) async fn admin(&self, words: &[&str]) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let path = self.dir.join("db").join("admin.sock");
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| format!("connect {}: {e}", path.display()))?;
        let mut line = serde_json::to_string(words).map_err(|e| e.to_string())?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        Ok(reply)
    }

    /// Waits until `/_matrix/client/versions` answers 200 (at most 60 s, asking every 10 ms),
    /// failing early if the child exits.
    pub(crate) async fn wait_ready(&mut self, api: &Api) -> Result<(), String> {
        for _ in 0..6000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited ({status})"));
            }
            let reply = api
                .call(
                    Method::GET,
                    "/_matrix/client/versions",
                    None,
                    None,
                    Duration::from_secs(2),
                )
                .await;
            if reply.is_ok_and(|reply| reply.status == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("server did not answer /_matrix/client/versions within 60 s".into())
    }
}

/// Starts `bin` on `port` with its database in `dir`, appending its output to `dir/server.log`.
fn spawn(bin: &Path, port: u16, dir: &Path, env: &[(String, String)]) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    Command::new(bin)
        .env("PLAIT_DATABASE_PATH", dir.join("db"))
        .env("PLAIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PLAIT_SERVER_NAME", "localhost")
        .env("PLAIT_REGISTRATION", "open")
        // The benchmarks register and send from one address as fast as they can
        // (`PLAIT_BENCH_SERVER_ENV` may switch the limits on again).
        .env("PLAIT_RATE_LIMITS_ENABLED", "false")
        .envs(env.iter().map(|(key, value)| (key, value)))
        .envs(server_env()?)
        .args(server_args())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))
}

/// The pairs of `PLAIT_BENCH_SERVER_ENV` (`"KEY=VALUE KEY2=VALUE2"`).
pub(crate) fn server_env() -> Result<Vec<(String, String)>, String> {
    let words = std::env::var("PLAIT_BENCH_SERVER_ENV").unwrap_or_default();
    words
        .split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("PLAIT_BENCH_SERVER_ENV: `{pair}` is not KEY=VALUE")),
        })
        .collect()
}

/// The words of `PLAIT_BENCH_SERVER_ARGS`, passed to the server as arguments.
pub(crate) fn server_args() -> Vec<String> {
    std::env::var("PLAIT_BENCH_SERVER_ARGS")
        .map(|words| words.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep {
            eprintln!("kept server data and log in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
