//! Plait federation benchmark (`cargo bench --bench federation`); see the
//! "Federation" section of docs/performance.md.
//!
//! Starts two plait binaries as child processes, each with a fresh temporary
//! database, federating over TLS on the loopback interface: hs1 on
//! 127.0.0.2, hs2 on 127.0.0.3, with certificates from a CA made at run time
//! (the servers trust only that CA for outgoing federation). It drives them
//! through the ordinary Matrix client-server API (v1.19) only:
//!
//! 1. *transactions*: alice@hs1 creates a public room, K senders on hs1 join
//!    it, bob@hs2 joins it through `POST /join/{roomId}?via=<hs1>`; bob
//!    long-polls `/sync` on hs2 (filtered to the room's `m.room.message`)
//!    while the K senders send M messages on hs1 as fast as hs1 answers.
//!    Reports the rate at which the PDUs arrive at bob on hs2, the send rate
//!    on hs1, delivery latency and whether every message arrived; then a paced
//!    phase (a fixed, low rate) for the delivery latency of servers that are
//!    not queueing;
//! 2. *join of a room with large state*: N members on hs1 in one public room
//!    with some history; a fresh user on hs2 (which has never seen the room)
//!    joins it over federation, timed until `POST /join` returns and until
//!    hs2's `/joined_members` lists N+1; hs2's RSS before and after;
//! 3. the RSS (VmRSS, VmHWM) of both servers at the end.
//!
//! It prints a table and one machine-readable line that starts with
//! `BENCH_JSON `. Every loop is bounded in count and time, the whole run has an
//! overall time limit, and both servers are killed when the run ends (also on
//! error, panic, time-out or Ctrl-C: see [`Server`]'s `Drop`).
//!
//! Parameters are environment variables (see [`Config::from_env`]);
//! `PLAIT_BENCH_QUICK=1` runs a small version in about a minute.

use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "federation";
/// Event content keys that mark a benchmark message.
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

/// Target from the project issue: a join of a room with large state.
const TARGET_JOIN_S: f64 = 10.0;

const HS1_IP: &str = "127.0.0.2";
const HS2_IP: &str = "127.0.0.3";

// ---------------------------------------------------------------------------
// Configuration

#[derive(Clone, Debug)]
struct Config {
    quick: bool,
    /// Concurrent senders on hs1 (alice and K-1 more users).
    senders: usize,
    /// Messages of the saturating phase.
    messages: usize,
    /// Time cap of the saturating phase's sending.
    send_max: Duration,
    /// Messages of the paced phase, and their rate (events/s).
    paced_messages: usize,
    paced_rate: f64,
    /// After the last send, how long bob's /sync on hs2 may take to see it all.
    drain: Duration,
    /// Timeline limit of bob's /sync filter; long-poll timeout (ms).
    timeline_limit: usize,
    sync_timeout_ms: u64,
    /// Members (on hs1, creator included) of the large room.
    members: usize,
    /// Messages sent into the large room after the joins.
    history: usize,
    /// Concurrency of registrations, of the joins to the large room, of history sends.
    register_concurrency: usize,
    join_concurrency: usize,
    /// Limit of the federated join (POST /join) and of waiting for joined_members.
    join_timeout: Duration,
    /// Worker threads of the benchmark's own tokio runtime.
    client_threads: usize,
    /// Overall time limit of the whole run.
    total_timeout: Duration,
    /// Keep the temporary directory (databases, certificates, server logs).
    keep_data: bool,
    /// Exit with status 2 when a target is missed.
    enforce: bool,
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_bool(name: &str) -> bool {
    matches!(
        env_str(name).as_deref().map(str::trim),
        Some("1" | "true" | "yes" | "on")
    )
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env_str(name) {
        Some(v) => match v.trim().parse() {
            Ok(x) => x,
            Err(_) => {
                eprintln!("warning: {name}={v:?} is not a valid number; using the default");
                default
            }
        },
        None => default,
    }
}

impl Config {
    fn from_env(quick: bool) -> Config {
        // (full, quick) defaults
        let d = |full: usize, q: usize| if quick { q } else { full };
        Config {
            quick,
            senders: env_num("PLAIT_FBENCH_SENDERS", d(8, 4)).max(1),
            messages: env_num("PLAIT_FBENCH_MESSAGES", d(5_000, 300)).max(1),
            send_max: Duration::from_secs(env_num("PLAIT_FBENCH_SEND_MAX_SECS", d(300, 30) as u64)),
            paced_messages: env_num("PLAIT_FBENCH_PACED_MESSAGES", d(200, 40)).max(1),
            paced_rate: env_num::<f64>("PLAIT_FBENCH_PACED_RATE", 20.0).clamp(0.1, 10_000.0),
            drain: Duration::from_secs(env_num("PLAIT_FBENCH_DRAIN_SECS", d(120, 30) as u64)),
            timeline_limit: env_num("PLAIT_FBENCH_TIMELINE_LIMIT", 1000).max(1),
            sync_timeout_ms: env_num("PLAIT_FBENCH_SYNC_TIMEOUT_MS", 30_000),
            members: env_num("PLAIT_FBENCH_MEMBERS", d(10_000, 200)).max(2),
            history: env_num("PLAIT_FBENCH_HISTORY", d(1_000, 50)),
            register_concurrency: env_num("PLAIT_FBENCH_REGISTER_CONCURRENCY", 4).max(1),
            join_concurrency: env_num("PLAIT_FBENCH_JOIN_CONCURRENCY", 4).max(1),
            join_timeout: Duration::from_secs(env_num(
                "PLAIT_FBENCH_JOIN_TIMEOUT_SECS",
                d(600, 60) as u64,
            )),
            client_threads: env_num(
                "PLAIT_FBENCH_CLIENT_THREADS",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            )
            .max(1),
            total_timeout: Duration::from_secs(env_num(
                "PLAIT_FBENCH_TIMEOUT_SECS",
                d(5400, 300) as u64,
            )),
            keep_data: env_bool("PLAIT_BENCH_KEEP"),
            enforce: env_bool("PLAIT_BENCH_ENFORCE"),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "senders": self.senders,
            "messages": self.messages,
            "send_max_s": self.send_max.as_secs(),
            "paced_messages": self.paced_messages,
            "paced_rate": self.paced_rate,
            "drain_s": self.drain.as_secs(),
            "timeline_limit": self.timeline_limit,
            "sync_timeout_ms": self.sync_timeout_ms,
            "members": self.members,
            "history": self.history,
            "register_concurrency": self.register_concurrency,
            "join_concurrency": self.join_concurrency,
            "join_timeout_s": self.join_timeout.as_secs(),
            "client_threads": self.client_threads,
        })
    }
}

// ---------------------------------------------------------------------------
// Machine facts and /proc readings

struct CpuMark {
    at: Instant,
    servers: [u64; 2],
    bench: u64,
    machine: u64,
}

/// CPU use over an interval, in percent of one core.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    hs1: f64,
    hs2: f64,
    bench: f64,
    /// Everything else on the machine (for example a compiler running meanwhile).
    other: f64,
}

impl CpuMark {
    fn now(pids: [u32; 2]) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            servers: pids.map(|p| cpu_ticks(&format!("/proc/{p}/stat"))),
            bench: cpu_ticks("/proc/self/stat"),
            machine: machine_busy_ticks(),
        }
    }
    fn since(&self, pids: [u32; 2], tck: f64) -> CpuUse {
        let now = CpuMark::now(pids);
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / tck / wall * 100.0;
        let hs1 = pct(self.servers[0], now.servers[0]);
        let hs2 = pct(self.servers[1], now.servers[1]);
        let bench = pct(self.bench, now.bench);
        let machine = pct(self.machine, now.machine);
        CpuUse {
            hs1,
            hs2,
            bench,
            other: (machine - hs1 - hs2 - bench).max(0.0),
        }
    }
}

impl CpuUse {
    fn json(&self) -> Value {
        json!({ "hs1": r3(self.hs1), "hs2": r3(self.hs2), "bench": r3(self.bench), "other": r3(self.other) })
    }
    fn line(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            num(self.hs1, 0),
            num(self.hs2, 0),
            num(self.bench, 0),
            num(self.other, 0)
        )
    }
}

// ---------------------------------------------------------------------------
// Certificates: a CA made at run time, leaf certificates for the two IPs

/// Writes `ca.pem` and, for each IP, `tls-<ip>.crt` (leaf + CA) and
/// `tls-<ip>.key` into `dir`. Returns the CA path and the (cert, key) paths.
fn make_certs(dir: &Path, ips: &[IpAddr]) -> Result<(PathBuf, Vec<(PathBuf, PathBuf)>), String> {
    let err = |e: rcgen::Error| format!("rcgen: {e}");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Plait federation bench CA {:016x}", rand::random::<u64>()),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_pem = ca.self_signed(&ca_key).map_err(err)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).map_err(|e| format!("write CA: {e}"))?;
    let mut leaves = Vec::new();
    for ip in ips {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, ip.to_string());
        p.subject_alt_names = vec![SanType::IpAddress(*ip)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        let (c, k) = (
            dir.join(format!("tls-{ip}.crt")),
            dir.join(format!("tls-{ip}.key")),
        );
        std::fs::write(&c, format!("{}{ca_pem}", cert.pem()))
            .and_then(|_| std::fs::write(&k, key.serialize_pem()))
            .map_err(|e| format!("write certificate: {e}"))?;
        leaves.push((c, k));
    }
    Ok((ca_path, leaves))
}

// ---------------------------------------------------------------------------
// The server child processes

fn server_binary() -> PathBuf {
    if let Some(p) = env_str("PLAIT_BIN") {
        return PathBuf::from(p);
    }
    // Cargo sets CARGO_BIN_EXE_<name> when it builds integration tests and benchmarks.
    if let Some(p) = option_env!("CARGO_BIN_EXE_plait") {
        return PathBuf::from(p);
    }
    let target = env_str("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("plait")
}

/// The run's temporary directory; removed on drop unless kept
/// (`PLAIT_BENCH_KEEP=1`, or the run failed).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "kept databases, certificates and server logs in {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Owns one server child process; `Drop` kills it (SIGKILL) and waits for
/// it, so no server outlives the benchmark, whichever way the run ends
/// (short of the benchmark itself being SIGKILLed).
struct Server {
    label: &'static str,
    child: Child,
    pid: u32,
    /// Client API base URL.
    base: String,
    /// Server name (`ip:federation port`).
    name: String,
    dir: PathBuf,
}

fn free_port(ip: IpAddr) -> Result<u16, String> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Server {
    fn start(
        label: &'static str,
        bin: &Path,
        ip: IpAddr,
        root: &Path,
        ca: &Path,
        (cert, key): &(PathBuf, PathBuf),
    ) -> Result<Server, String> {
        let dir = root.join(label);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let (port, fed_port) = (free_port(ip)?, free_port(ip)?);
        let name = format!("{ip}:{fed_port}");
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .env("PLAIT_DATABASE_PATH", dir.join("db"))
            .env("PLAIT_LISTEN", format!("{ip}:{port}"))
            .env("PLAIT_SERVER_NAME", &name)
            .env("PLAIT_FEDERATION_LISTEN", &name)
            .env("PLAIT_TLS_CERT", cert)
            .env("PLAIT_TLS_KEY", key)
            .env("PLAIT_FEDERATION_CA_FILE", ca)
            // The two servers federate on loopback, which the default ip_range_denylist refuses.
            .env("PLAIT_IP_RANGE_ALLOWLIST", r#"["127.0.0.0/8","::1/128"]"#)
            .env("PLAIT_REGISTRATION", "open")
            // The benchmark registers and sends from one address as fast as it can.
            .env("PLAIT_RATE_LIMITS_ENABLED", "false")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        Ok(Server {
            label,
            pid: child.id(),
            child,
            base: format!("http://{ip}:{port}"),
            name,
            dir,
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = read(self.dir.join("server.log").to_str().unwrap_or_default());
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); log tail:\n{}",
                self.label,
                self.log_tail(40)
            )),
            _ => None,
        }
    }

    async fn wait_ready(&mut self, api: &Api, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            match api
                .call(
                    Method::GET,
                    "/_matrix/client/versions",
                    None,
                    None,
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(r) if r.status == 200 && r.body.get("versions").is_some() => {
                    return Ok(start.elapsed())
                }
                Ok(r) => last = format!("{} {}", r.status, r.body),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{} did not answer GET /_matrix/client/versions within {limit:?} (last: {last}); log tail:\n{}",
            self.label,
            self.log_tail(40)
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both servers and their directory; fields drop in order, so the servers
/// are killed before the directory is removed.
struct Cluster {
    hs1: Server,
    hs2: Server,
    dir: WorkDir,
}

impl Cluster {
    fn pids(&self) -> [u32; 2] {
        [self.hs1.pid, self.hs2.pid]
    }
    fn check(&mut self) -> Result<(), String> {
        match self.hs1.exited().or_else(|| self.hs2.exited()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

mod common;
use common::*;
// ---------------------------------------------------------------------------
// The run

fn kb_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn commit() -> String {
    if let Some(c) = env_str("PLAIT_BENCH_COMMIT") {
        return c;
    }
    Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "log", "-1", "--format=%h"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:>7.1}s] {what}", t0.elapsed().as_secs_f64());
}

impl Api {
    /// `POST /join/{roomIdOrAlias}?via=<server>`: a join over federation.
    async fn join_via(
        &self,
        user: &User,
        room_id: &str,
        via: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let path = format!("/_matrix/client/v3/join/{}?via={}", enc(room_id), enc(via));
        self.ok(
            Method::POST,
            &path,
            Some(&user.token),
            Some(&json!({})),
            timeout,
        )
        .await
        .map(drop)
    }

    /// Number of users in `GET /rooms/{roomId}/joined_members`.
    async fn joined_count(&self, user: &User, room_id: &str) -> Result<usize, String> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id));
        let r = self
            .ok(
                Method::GET,
                &path,
                Some(&user.token),
                None,
                Duration::from_secs(120),
            )
            .await?;
        r.body["joined"]
            .as_object()
            .map(|o| o.len())
            .ok_or_else(|| {
                format!(
                    "GET joined_members -> 200 without joined: {}",
                    short(&r.body)
                )
            })
    }
}

// ---------------------------------------------------------------------------
// Transaction phases: senders on hs1, bob's /sync on hs2

enum Load {
    /// `senders` closed-loop clients send `total` events as fast as hs1 answers.
    Saturate { total: usize, max: Duration },
    /// `total` events at a fixed `rate`, sender chosen round-robin.
    Paced { total: usize, rate: f64 },
}

struct Fed {
    api1: Api,
    api2: Api,
    senders: Vec<User>,
    bob: User,
    room: Arc<str>,
    filter: Arc<str>,
    pids: [u32; 2],
    tck: f64,
}

struct PhaseOut {
    total: usize,
    sends: Vec<SendRec>,
    send_errors: usize,
    first_send_error: Option<String>,
    watch: WatchOut,
    /// CPU use from the first send until bob saw the last message (or gave up).
    cpu: CpuUse,
}

async fn run_phase(
    fed: &Arc<Fed>,
    cfg: &Config,
    tag: &str,
    load: Load,
    since: &mut String,
) -> PhaseOut {
    let tag: Arc<str> = tag.into();
    let (total, send_max) = match load {
        Load::Saturate { total, max } => (total, max),
        Load::Paced { total, rate } => (
            total,
            Duration::from_secs_f64(total as f64 / rate * 2.0 + 10.0),
        ),
    };
    let hard_deadline = Instant::now() + send_max + cfg.drain + Duration::from_secs(5);
    let (ctl_tx, ctl_rx) = watch::channel(Ctl {
        expected: usize::MAX,
        stop: false,
    });
    let watcher = tokio::spawn(watch_room(
        fed.api2.clone(),
        fed.bob.clone(),
        fed.room.clone(),
        fed.filter.clone(),
        since.clone(),
        tag.clone(),
        total,
        cfg.sync_timeout_ms,
        ctl_rx,
        hard_deadline,
    ));
    // Let the long-poll reach hs2 before the first send.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let errors = Arc::new(Mutex::new((0usize, None::<String>)));
    let note = |errors: &Arc<Mutex<(usize, Option<String>)>>, e: Option<String>| {
        if let Some(e) = e {
            let mut g = errors.lock().unwrap();
            g.0 += 1;
            g.1.get_or_insert(e);
        }
    };
    let t0 = Instant::now();
    let cpu = CpuMark::now(fed.pids);
    let mut sends = Vec::new();
    match load {
        Load::Saturate { total, max } => {
            let next = Arc::new(AtomicUsize::new(0));
            let stop_at = t0 + max;
            let mut tasks = Vec::new();
            for s in 0..fed.senders.len() {
                let (fed, next, tag, errors) =
                    (fed.clone(), next.clone(), tag.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut recs = Vec::new();
                    let mut consecutive_errors = 0;
                    loop {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        if id >= total || Instant::now() >= stop_at || consecutive_errors >= 20 {
                            break;
                        }
                        let (rec, err) =
                            send_one(&fed.api1, &fed.senders[s], &fed.room, &tag, id).await;
                        consecutive_errors = if rec.ok { 0 } else { consecutive_errors + 1 };
                        note(&errors, err);
                        recs.push(rec);
                    }
                    recs
                }));
            }
            for t in tasks {
                if let Ok(recs) = t.await {
                    sends.extend(recs);
                }
            }
        }
        Load::Paced { total, rate } => {
            let stop_at = t0 + send_max;
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tasks = Vec::new();
            for id in 0..total {
                ticker.tick().await;
                if Instant::now() >= stop_at {
                    break;
                }
                let (fed, tag, errors) = (fed.clone(), tag.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let user = &fed.senders[id % fed.senders.len()];
                    let (rec, err) = send_one(&fed.api1, user, &fed.room, &tag, id).await;
                    note(&errors, err);
                    rec
                }));
            }
            for t in tasks {
                if let Ok(rec) = t.await {
                    sends.push(rec);
                }
            }
        }
    }
    let ok = sends.iter().filter(|r| r.ok).count();
    // Tell the watcher how many to expect; it finishes once it saw them all,
    // or when the drain time is over.
    let _ = ctl_tx.send(Ctl {
        expected: ok,
        stop: false,
    });
    let stopper = {
        let drain = cfg.drain;
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            let _ = ctl_tx.send(Ctl {
                expected: ok,
                stop: true,
            });
            ctl_tx
        })
    };
    let watch = match watcher.await {
        Ok(w) => w,
        Err(e) => WatchOut {
            since: since.clone(),
            seen: vec![None; total],
            duplicates: 0,
            limited: 0,
            responses: 0,
            errors: 1,
            first_error: Some(format!("sync task failed: {e}")),
        },
    };
    let cpu = cpu.since(fed.pids, fed.tck);
    stopper.abort();
    since.clone_from(&watch.since);
    let (send_errors, first_send_error) = errors.lock().unwrap().clone();
    PhaseOut {
        total,
        sends,
        send_errors,
        first_send_error,
        watch,
        cpu,
    }
}

struct PhaseSummary {
    sent_ok: usize,
    send_errors: usize,
    /// hs1: successful sends ÷ (first send start → last send response).
    send_per_s: f64,
    send_wall_s: f64,
    send_latency: Stats,
    /// hs2: messages seen by bob ÷ (first send start → last message seen).
    recv_per_s: f64,
    recv_wall_s: f64,
    seen: usize,
    /// Seen on hs2 minus the send's 200 response on hs1 (0 if seen earlier).
    delivery: Stats,
    /// Seen on hs2 minus the send request's start.
    delivery_from_start: Stats,
}

fn summarize(p: &PhaseOut) -> PhaseSummary {
    let ok: Vec<&SendRec> = p.sends.iter().filter(|s| s.ok).collect();
    let first = ok.iter().map(|s| s.start).min();
    let last_end = ok.iter().map(|s| s.end).max();
    let send_wall_s = match (first, last_end) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let mut by_id: Vec<Option<(Instant, Instant)>> = vec![None; p.total];
    for s in &ok {
        if let Some(slot) = by_id.get_mut(s.id) {
            *slot = Some((s.start, s.end));
        }
    }
    let (mut from_return, mut from_start) = (Vec::new(), Vec::new());
    let mut last_seen = None::<Instant>;
    for (id, seen) in p.watch.seen.iter().enumerate() {
        if let (Some(seen), Some(Some((start, end)))) = (seen, by_id.get(id)) {
            from_return.push(ms(seen.saturating_duration_since(*end)));
            from_start.push(ms(seen.saturating_duration_since(*start)));
            last_seen = Some(last_seen.map_or(*seen, |l| l.max(*seen)));
        }
    }
    let recv_wall_s = match (first, last_seen) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { f64::NAN };
    PhaseSummary {
        sent_ok: ok.len(),
        send_errors: p.send_errors,
        send_per_s: rate(ok.len(), send_wall_s),
        send_wall_s,
        send_latency: Stats::of(
            ok.iter()
                .map(|s| ms(s.end.duration_since(s.start)))
                .collect(),
        ),
        recv_per_s: rate(from_return.len(), recv_wall_s),
        recv_wall_s,
        seen: from_return.len(),
        delivery: Stats::of(from_return),
        delivery_from_start: Stats::of(from_start),
    }
}

impl PhaseSummary {
    fn json(&self, p: &PhaseOut) -> Value {
        json!({
            "sent_ok": self.sent_ok,
            "send_errors": self.send_errors,
            "first_send_error": p.first_send_error,
            "send_events_per_s": r3(self.send_per_s),
            "send_wall_s": r3(self.send_wall_s),
            "send_latency_ms": self.send_latency.json(),
            "received_pdus_per_s": r3(self.recv_per_s),
            "receive_wall_s": r3(self.recv_wall_s),
            "seen_on_hs2": self.seen,
            "delivery_ms": self.delivery.json(),
            "delivery_from_send_start_ms": self.delivery_from_start.json(),
            "duplicates": p.watch.duplicates,
            "limited_responses": p.watch.limited,
            "sync_responses": p.watch.responses,
            "sync_errors": p.watch.errors,
            "first_sync_error": p.watch.first_error,
            "cpu_pct": p.cpu.json(),
        })
    }
    fn complete(&self) -> bool {
        self.sent_ok > 0 && self.seen == self.sent_ok
    }
}

// ---------------------------------------------------------------------------
// The run

async fn run(cfg: Config) -> Result<bool, String> {
    let t0 = Instant::now();
    let m = machine_facts();
    let bin = server_binary();
    if !bin.exists() {
        return Err(format!(
            "server binary {} does not exist (build it with `cargo build --release`, or set PLAIT_BIN)",
            bin.display()
        ));
    }
    let commit = commit();
    println!(
        "plait federation benchmark{}",
        if cfg.quick {
            " (QUICK mode: small numbers, not for the record)"
        } else {
            ""
        }
    );
    println!(
        "machine: {} CPUs, {}, {:.1} GiB RAM, Linux {}, load average {}",
        m.nproc,
        m.cpu_model,
        m.mem_total_kb as f64 / 1024.0 / 1024.0,
        m.kernel,
        m.loadavg
    );
    println!("server:  {} (commit {commit})", bin.display());
    println!(
        "params:  {} senders, {} messages, paced {} at {}/s; large room of {} members with {} messages",
        cfg.senders, cfg.messages, cfg.paced_messages, cfg.paced_rate, cfg.members, cfg.history
    );

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = WorkDir {
        path: std::env::temp_dir().join(format!("plait-fbench-{}-{nanos}", std::process::id())),
        keep: cfg.keep_data,
    };
    std::fs::create_dir_all(&dir.path)
        .map_err(|e| format!("create {}: {e}", dir.path.display()))?;
    let ips: [IpAddr; 2] = [HS1_IP.parse().unwrap(), HS2_IP.parse().unwrap()];
    let (ca, leaves) = make_certs(&dir.path, &ips)?;
    let hs1 = Server::start("hs1", &bin, ips[0], &dir.path, &ca, &leaves[0])?;
    let hs2 = Server::start("hs2", &bin, ips[1], &dir.path, &ca, &leaves[1])?;
    let mut cluster = Cluster { hs1, hs2, dir };
    let r = run_with(&cfg, &m, &bin, &commit, t0, &mut cluster).await;
    if let Err(e) = &r {
        cluster.dir.keep = true;
        return Err(format!(
            "{e}\n--- hs1 log tail ---\n{}\n--- hs2 log tail ---\n{}",
            cluster.hs1.log_tail(30),
            cluster.hs2.log_tail(30)
        ));
    }
    r
}

async fn run_with(
    cfg: &Config,
    m: &Machine,
    bin: &Path,
    commit: &str,
    t0: Instant,
    cl: &mut Cluster,
) -> Result<bool, String> {
    let tck = clock_ticks_per_s();
    let pids = cl.pids();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let api1 = Api {
        http: http.clone(),
        base: cl.hs1.base.as_str().into(),
    };
    let api2 = Api {
        http,
        base: cl.hs2.base.as_str().into(),
    };
    let ready1 = cl.hs1.wait_ready(&api1, Duration::from_secs(60)).await?;
    let ready2 = cl.hs2.wait_ready(&api2, Duration::from_secs(60)).await?;
    let rss_startup = pids.map(rss_of);
    step(
        t0,
        &format!(
            "hs1 {} ({}, pid {}) ready in {:.0} ms; hs2 {} ({}, pid {}) ready in {:.0} ms",
            cl.hs1.name,
            cl.hs1.base,
            pids[0],
            ms(ready1),
            cl.hs2.name,
            cl.hs2.base,
            pids[1],
            ms(ready2)
        ),
    );
    let hs1_name = cl.hs1.name.clone();

    // --- 1. transactions -----------------------------------------------------
    let reg = {
        let api = api1.clone();
        pool(cfg.senders, cfg.register_concurrency, move |i| {
            let api = api.clone();
            async move {
                let name = if i == 0 {
                    "alice".to_owned()
                } else {
                    format!("sender-{i:02}")
                };
                api.register(&name).await
            }
        })
        .await
    };
    let senders = all_ok("register the senders on hs1", reg)?;
    let alice = senders[0].clone();
    let bob = api2.register("bob").await?;
    let room = api1.create_room(&alice, "plait federation bench").await?;
    let joins = {
        let (api, s, room) = (api1.clone(), senders.clone(), room.clone());
        pool(s.len() - 1, 1, move |i| {
            let (api, u, room) = (api.clone(), s[i + 1].clone(), room.clone());
            async move { api.join(&u, &room).await }
        })
        .await
    };
    all_ok("join the senders on hs1", joins)?;
    let t = Instant::now();
    api2.join_via(&bob, &room, &hs1_name, Duration::from_secs(60))
        .await?;
    let bob_join_ms = ms(t.elapsed());
    let (filter, filter_note) = api2.make_filter(&bob, &room, cfg.timeline_limit).await;
    if let Some(n) = &filter_note {
        eprintln!("warning: filter upload failed, using an inline filter: {n}");
    }
    let first = api2
        .sync(&bob, Some(&filter), None, 0, Duration::from_secs(60))
        .await?;
    let mut since = first.body["next_batch"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "GET /sync -> 200 without next_batch: {}",
                short(&first.body)
            )
        })?;
    step(
        t0,
        &format!(
            "room {room}: {} senders on hs1, bob@hs2 joined over federation in {bob_join_ms:.0} ms",
            senders.len()
        ),
    );
    let fed = Arc::new(Fed {
        api1: api1.clone(),
        api2: api2.clone(),
        senders,
        bob,
        room: room.as_str().into(),
        filter: filter.into(),
        pids,
        tck,
    });
    // One message first, so that keys and connections are in place.
    let warm = run_phase(
        &fed,
        cfg,
        "warm",
        Load::Paced {
            total: 1,
            rate: 1.0,
        },
        &mut since,
    )
    .await;
    let warm_s = summarize(&warm);
    if !warm_s.complete() {
        return Err(format!(
            "warm-up message not seen on hs2 within {:?} (send error: {:?}, sync error: {:?})",
            cfg.drain, warm.first_send_error, warm.watch.first_error
        ));
    }
    step(
        t0,
        &format!(
            "warm-up message seen on hs2 {:.0} ms after its send returned",
            warm_s.delivery.max
        ),
    );

    let sat = run_phase(
        &fed,
        cfg,
        "sat",
        Load::Saturate {
            total: cfg.messages,
            max: cfg.send_max,
        },
        &mut since,
    )
    .await;
    let sat_s = summarize(&sat);
    step(
        t0,
        &format!(
            "saturating: {} sent ({} errors) at {:.0}/s on hs1; {} seen on hs2 at {:.0} PDUs/s",
            sat_s.sent_ok, sat_s.send_errors, sat_s.send_per_s, sat_s.seen, sat_s.recv_per_s
        ),
    );
    cl.check()?;
    let paced = run_phase(
        &fed,
        cfg,
        "paced",
        Load::Paced {
            total: cfg.paced_messages,
            rate: cfg.paced_rate,
        },
        &mut since,
    )
    .await;
    let paced_s = summarize(&paced);
    step(
        t0,
        &format!(
            "paced: {} sent ({} errors); {} seen on hs2, delivery p50 {:.1} ms p99 {:.1} ms",
            paced_s.sent_ok,
            paced_s.send_errors,
            paced_s.seen,
            paced_s.delivery.p50,
            paced_s.delivery.p99
        ),
    );
    cl.check()?;
    let rss_after_tx = pids.map(rss_of);

    // --- 2. join of a room with large state ----------------------------------
    let setup_t = Instant::now();
    let n_extra = cfg.members - 1; // the creator (alice) is the first member
    let reg = {
        let api = api1.clone();
        pool(n_extra, cfg.register_concurrency, move |i| {
            let api = api.clone();
            async move { api.register(&format!("m{i:05}")).await }
        })
        .await
    };
    let members = all_ok("register the large room's members on hs1", reg)?;
    let register_s = setup_t.elapsed().as_secs_f64();
    let rss1_after_register = rss_of(pids[0]);
    step(
        t0,
        &format!(
            "registered {n_extra} users on hs1 in {register_s:.1} s ({:.1}/s, concurrency {})",
            n_extra as f64 / register_s.max(1e-9),
            cfg.register_concurrency
        ),
    );
    cl.check()?;
    let big = api1
        .create_room(&alice, "plait federation bench: large room")
        .await?;
    let t = Instant::now();
    let joins = {
        let (api, members, big) = (api1.clone(), members.clone(), big.clone());
        pool(n_extra, cfg.join_concurrency, move |i| {
            let (api, u, big) = (api.clone(), members[i].clone(), big.clone());
            async move {
                let t = Instant::now();
                api.join(&u, &big).await?;
                Ok(ms(t.elapsed()))
            }
        })
        .await
    };
    let join_ms = Stats::of(all_ok("join the large room on hs1", joins)?);
    let joins_s = t.elapsed().as_secs_f64();
    let rss1_after_joins = rss_of(pids[0]);
    let on_hs1 = api1.joined_count(&alice, &big).await?;
    if on_hs1 != cfg.members {
        return Err(format!(
            "hs1's joined_members of the large room lists {on_hs1}, expected {}",
            cfg.members
        ));
    }
    step(
        t0,
        &format!(
            "{n_extra} joins on hs1 in {joins_s:.1} s (per join: {}); {on_hs1} members",
            join_ms.line()
        ),
    );
    cl.check()?;
    let t = Instant::now();
    let hist = {
        let (api, members, big) = (api1.clone(), members.clone(), big.clone());
        pool(cfg.history, cfg.join_concurrency, move |i| {
            let (api, u, big) = (api.clone(), members[i % members.len()].clone(), big.clone());
            async move {
                let content = json!({ "msgtype": "m.text", "body": format!("history {i}") });
                api.send(&u, &big, &format!("hist-{i}"), &content).await
            }
        })
        .await
    };
    all_ok("send the large room's history", hist)?;
    let history_s = t.elapsed().as_secs_f64();
    let setup_s = setup_t.elapsed().as_secs_f64();
    step(
        t0,
        &format!(
            "{} history messages in {history_s:.1} s; setup took {setup_s:.1} s",
            cfg.history
        ),
    );

    let carol = api2.register("carol").await?;
    let rss2_before = rss_of(pids[1]);
    let rss1_before = rss_of(pids[0]);
    let cpu = CpuMark::now(pids);
    let t = Instant::now();
    let join_res = api2
        .join_via(&carol, &big, &hs1_name, cfg.join_timeout)
        .await;
    let join_200_s = t.elapsed().as_secs_f64();
    if let Err(e) = join_res {
        let _ = cl.check();
        return Err(format!(
            "federated join of the {}-member room failed after {join_200_s:.3} s: {e}",
            cfg.members
        ));
    }
    step(
        t0,
        &format!("POST /join on hs2 -> 200 after {join_200_s:.3} s"),
    );
    let expected = cfg.members + 1;
    let mut members_s = f64::NAN;
    let mut last_count = 0;
    let mut polls = 0usize;
    let mut last_err = None;
    while t.elapsed() < cfg.join_timeout {
        polls += 1;
        match api2.joined_count(&carol, &big).await {
            Ok(c) => {
                last_count = c;
                if c >= expected {
                    members_s = t.elapsed().as_secs_f64();
                    break;
                }
            }
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_join = cpu.since(pids, tck);
    let rss2_after = rss_of(pids[1]);
    if !members_s.is_finite() {
        return Err(format!(
            "hs2's joined_members of the large room lists {last_count} after {:?} ({polls} polls), expected {expected}; last error: {last_err:?}",
            cfg.join_timeout
        ));
    }
    step(
        t0,
        &format!("hs2 lists {last_count} members after {members_s:.3} s"),
    );
    // carol's first /sync after the join (no filter): what her client gets next.
    let t = Instant::now();
    let (sync_ms, sync_bytes, sync_err) =
        match api2.sync(&carol, None, None, 0, cfg.join_timeout).await {
            Ok(r) => (ms(r.at.duration_since(t)), r.bytes, None),
            Err(e) => (f64::NAN, 0, Some(e)),
        };
    let rss2_after_sync = rss_of(pids[1]);
    cl.check()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = pids.map(rss_of);
    step(t0, "done");

    // --- report --------------------------------------------------------------
    let pass_join = members_s < TARGET_JOIN_S;
    let pass_delivery = sat_s.complete() && paced_s.complete();
    let verdict = |p: bool| if p { "PASS" } else { "MISS" };
    let mb = |kb: u64| num(kb_mb(kb), 1);

    let mut t = String::new();
    let _ = writeln!(t);
    let _ = writeln!(t, "{:<56} {:>18}  target", "figure", "value");
    let _ = writeln!(t, "{}", "-".repeat(88));
    let mut row = |name: &str, value: String, target: &str| {
        let _ = writeln!(t, "{name:<56} {value:>18}  {target}");
    };
    row(
        &format!(
            "PDUs/s received on hs2 ({} messages, {} senders)",
            cfg.messages, cfg.senders
        ),
        num(sat_s.recv_per_s, 0),
        "",
    );
    row(
        "  first send -> last seen on hs2 (s)",
        num(sat_s.recv_wall_s, 2),
        "",
    );
    row(
        "send throughput on hs1 (events/s)",
        num(sat_s.send_per_s, 0),
        "",
    );
    row(
        "  sent ok / errors",
        format!("{} / {}", sat_s.sent_ok, sat_s.send_errors),
        "",
    );
    row(
        "  send latency p50 / p99 (ms)",
        format!(
            "{} / {}",
            num(sat_s.send_latency.p50, 1),
            num(sat_s.send_latency.p99, 1)
        ),
        "",
    );
    row(
        "delivery p50 / p99, saturating (ms, send 200 -> hs2)",
        format!(
            "{} / {}",
            num(sat_s.delivery.p50, 1),
            num(sat_s.delivery.p99, 1)
        ),
        "",
    );
    row(
        "  delivery max, saturating (ms)",
        num(sat_s.delivery.max, 1),
        "",
    );
    row(
        "  delivered to hs2, saturating",
        format!("{}/{}", sat_s.seen, sat_s.sent_ok),
        &format!("100%  {}", verdict(sat_s.complete())),
    );
    row(
        &format!("delivery p50 / p99, paced {}/s (ms)", cfg.paced_rate),
        format!(
            "{} / {}",
            num(paced_s.delivery.p50, 1),
            num(paced_s.delivery.p99, 1)
        ),
        "",
    );
    row(
        "  delivery max, paced (ms)",
        num(paced_s.delivery.max, 1),
        "",
    );
    row(
        "  delivered to hs2, paced",
        format!("{}/{}", paced_s.seen, paced_s.sent_ok),
        &format!("100%  {}", verdict(paced_s.complete())),
    );
    row(
        "CPU %, saturating: hs1 / hs2 / bench / other",
        sat.cpu.line(),
        if sat.cpu.other > 20.0 {
            "busy machine!"
        } else {
            ""
        },
    );
    row(
        &format!("large room: setup of {} members (s)", cfg.members),
        num(setup_s, 1),
        "",
    );
    row(
        "  register / joins / history (s)",
        format!(
            "{} / {} / {}",
            num(register_s, 0),
            num(joins_s, 0),
            num(history_s, 0)
        ),
        "",
    );
    row(
        "  hs1 RSS after registrations / joins (MiB)",
        format!(
            "{} / {}",
            mb(rss1_after_register.rss_kb),
            mb(rss1_after_joins.rss_kb)
        ),
        "",
    );
    row(
        "  per join on hs1 p50 / p99 (ms)",
        format!("{} / {}", num(join_ms.p50, 1), num(join_ms.p99, 1)),
        "",
    );
    row(
        "federated join: POST /join -> 200 (s)",
        num(join_200_s, 3),
        "",
    );
    row(
        &format!("  -> hs2 joined_members = {expected} (s)"),
        num(members_s, 3),
        &format!("< {TARGET_JOIN_S:.0} s  {}", verdict(pass_join)),
    );
    row(
        "  carol's first /sync after it (ms, KiB)",
        format!("{}, {:.0}", num(sync_ms, 0), sync_bytes as f64 / 1024.0),
        "",
    );
    row(
        "  hs2 RSS before / after join (MiB)",
        format!("{} / {}", mb(rss2_before.rss_kb), mb(rss2_after.rss_kb)),
        "",
    );
    row(
        "  hs2 VmHWM before / after join (MiB)",
        format!("{} / {}", mb(rss2_before.hwm_kb), mb(rss2_after.hwm_kb)),
        "",
    );
    row(
        "  CPU %, join: hs1 / hs2 / bench / other",
        cpu_join.line(),
        if cpu_join.other > 20.0 {
            "busy machine!"
        } else {
            ""
        },
    );
    row(
        "RSS at the end, hs1 / hs2 (MiB)",
        format!("{} / {}", mb(rss_end[0].rss_kb), mb(rss_end[1].rss_kb)),
        "",
    );
    row(
        "VmHWM at the end, hs1 / hs2 (MiB)",
        format!("{} / {}", mb(rss_end[0].hwm_kb), mb(rss_end[1].hwm_kb)),
        "",
    );
    println!("{t}");
    for (what, e) in [
        ("send error (saturating)", &sat.first_send_error),
        ("send error (paced)", &paced.first_send_error),
        ("sync error (saturating)", &sat.watch.first_error),
        ("sync error (paced)", &paced.watch.first_error),
        ("sync error (carol's first sync)", &sync_err),
    ] {
        if let Some(e) = e {
            println!("first {what}: {e}");
        }
    }
    for (what, w) in [("saturating", &sat.watch), ("paced", &paced.watch)] {
        if w.duplicates > 0 || w.limited > 0 {
            println!(
                "note ({what}): {} duplicate deliveries, {} limited timelines in {} sync responses",
                w.duplicates, w.limited, w.responses
            );
        }
    }

    let rss_json = |r: Rss| json!({ "rss_kb": r.rss_kb, "hwm_kb": r.hwm_kb });
    let report = json!({
        "bench": "plait-federation",
        "version": 1,
        "commit": commit,
        "server_bin": bin.display().to_string(),
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "params": cfg.to_json(),
        "machine": {
            "loadavg_at_start": m.loadavg,
            "nproc": m.nproc,
            "cpu_model": m.cpu_model,
            "mem_total_kb": m.mem_total_kb,
            "kernel": m.kernel,
        },
        "setup": {
            "ready_ms": [r3(ms(ready1)), r3(ms(ready2))],
            "bob_join_ms": r3(bob_join_ms),
            "filter_uploaded": filter_note.is_none(),
            "warmup_delivery_ms": r3(warm_s.delivery.max),
        },
        "transactions_saturating": sat_s.json(&sat),
        "transactions_paced": paced_s.json(&paced),
        "large_room": {
            "members": cfg.members,
            "history": cfg.history,
            "setup_s": r3(setup_s),
            "register_s": r3(register_s),
            "joins_s": r3(joins_s),
            "join_ms_on_hs1": join_ms.json(),
            "history_s": r3(history_s),
            "join_200_s": r3(join_200_s),
            "joined_members_s": r3(members_s),
            "joined_members_polls": polls,
            "first_sync_ms": r3(sync_ms),
            "first_sync_bytes": sync_bytes,
            "first_sync_error": sync_err,
            "hs2_before": rss_json(rss2_before),
            "hs2_after": rss_json(rss2_after),
            "hs2_after_first_sync": rss_json(rss2_after_sync),
            "hs1_after_register": rss_json(rss1_after_register),
            "hs1_after_joins": rss_json(rss1_after_joins),
            "hs1_before": rss_json(rss1_before),
            "cpu_pct": cpu_join.json(),
        },
        "rss": {
            "startup": [rss_json(rss_startup[0]), rss_json(rss_startup[1])],
            "after_transactions": [rss_json(rss_after_tx[0]), rss_json(rss_after_tx[1])],
            "end": [rss_json(rss_end[0]), rss_json(rss_end[1])],
        },
        "targets": {
            "join_s": { "target": TARGET_JOIN_S, "value": r3(members_s), "pass": pass_join },
            "delivery_complete": { "pass": pass_delivery },
        },
    });
    println!("BENCH_JSON {report}");
    Ok(pass_join && pass_delivery)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not. Only
    // run when benchmarking (or explicitly asked), never as part of tests.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let quick = env_bool("PLAIT_BENCH_QUICK");
    if !bench_mode && !quick && !env_bool("PLAIT_BENCH_FORCE") {
        println!(
            "federation bench: skipped (run `cargo bench --bench federation`, or set PLAIT_BENCH_QUICK=1)"
        );
        return;
    }
    let cfg = Config::from_env(quick);
    let (limit, enforce) = (cfg.total_timeout, cfg.enforce);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.client_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("federation bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        tokio::select! {
            r = tokio::time::timeout(limit, run(cfg)) => match r {
                Ok(Ok(true)) => 0,
                Ok(Ok(false)) => if enforce { 2 } else { 0 },
                Ok(Err(e)) => { eprintln!("federation bench failed: {e}"); 1 }
                Err(_) => { eprintln!("federation bench: overall time limit of {limit:?} exceeded (PLAIT_FBENCH_TIMEOUT_SECS)"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("federation bench: interrupted"); 130 }
        }
    });
    // The servers have been killed (Cluster dropped) when `run` returned or was cancelled.
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
