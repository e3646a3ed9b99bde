//! Plait load benchmark (`cargo bench --bench load`); see docs/performance.md.
//!
//! Starts the plait binary as a child process on 127.0.0.1 with a fresh,
//! temporary database, then drives it through the ordinary Matrix
//! client-server API (v1.19) only:
//!
//! 1. registers users (user-interactive auth with `m.login.dummy`),
//! 2. creates one public room and has every member join it (50 by default),
//! 3. measures idle RSS,
//! 4. *saturating send*: N concurrent senders PUT a fixed number of
//!    `m.room.message` events as fast as the server answers (throughput and
//!    send latency) while every member long-polls `/sync` (delivery latency
//!    under load),
//! 5. *paced send*: a fixed rate of events, well below saturation, while every
//!    member long-polls `/sync` (delivery latency of a server that is not
//!    queueing),
//! 6. *initial sync*: one user joins R rooms (100 by default) that each hold a
//!    few messages, then a full `GET /sync` without `since` is timed,
//! 7. reads the server's RSS (VmRSS, VmHWM) from `/proc/<pid>/status`, at the end again after
//!    the same pause as before the idle reading.
//!
//! It prints a human-readable table and one machine-readable line that starts
//! with `BENCH_JSON `. Every loop is bounded in count and time, the whole run
//! has an overall time limit, and the server is killed when the run ends
//! (also on error, panic, time-out or Ctrl-C: see [`Server`]'s `Drop`).
//!
//! Parameters are environment variables (see [`Config::from_env`]);
//! `PLAIT_BENCH_QUICK=1` runs a small version in well under a minute.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "load";
/// Event content keys that mark a benchmark message.
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

// Targets from the project issue.
const TARGET_SEND_EVENTS_PER_S: f64 = 2000.0;
const TARGET_DELIVERY_P99_MS: f64 = 50.0;
const TARGET_IDLE_RSS_MB: f64 = 50.0;

// ---------------------------------------------------------------------------
// Configuration

#[derive(Clone, Debug)]
struct Config {
    quick: bool,
    /// Members of the load room; every one of them long-polls /sync.
    members: usize,
    /// Concurrent senders in the saturating phase (the first `senders` members).
    senders: usize,
    /// Messages sent in the saturating phase.
    messages: usize,
    /// Time cap of the saturating phase.
    send_max: Duration,
    /// Messages sent in the paced phase, and their rate (events/s).
    paced_messages: usize,
    paced_rate: f64,
    /// Rooms the initial-sync user is in, messages per room, repetitions.
    rooms: usize,
    room_messages: usize,
    sync_reps: usize,
    /// Timeline limit in the /sync filter of the delivery clients.
    timeline_limit: usize,
    /// Long-poll timeout (ms) of the delivery clients.
    sync_timeout_ms: u64,
    /// After the last send, how long the sync clients may take to see it all.
    drain: Duration,
    /// Concurrency of setup requests (register, createRoom, joins of the initial-sync user).
    setup_concurrency: usize,
    /// Concurrency of the joins to the load room.
    join_concurrency: usize,
    /// Pause before the idle RSS reading.
    idle_settle: Duration,
    /// Worker threads of the benchmark's own tokio runtime.
    client_threads: usize,
    /// Overall time limit of the whole run.
    total_timeout: Duration,
    /// Extra command-line arguments for the server binary.
    server_args: Vec<String>,
    /// Keep the temporary data directory (and server log) afterwards.
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
        let members = env_num("PLAIT_BENCH_MEMBERS", d(50, 10)).max(1);
        let senders = env_num("PLAIT_BENCH_SENDERS", d(16, 4)).clamp(1, members);
        Config {
            quick,
            members,
            senders,
            messages: env_num("PLAIT_BENCH_MESSAGES", d(10_000, 300)),
            send_max: Duration::from_secs(env_num("PLAIT_BENCH_SEND_MAX_SECS", d(300, 20) as u64)),
            paced_messages: env_num("PLAIT_BENCH_PACED_MESSAGES", d(1_000, 60)),
            paced_rate: env_num::<f64>("PLAIT_BENCH_PACED_RATE", if quick { 30.0 } else { 100.0 })
                .clamp(0.1, 100_000.0),
            rooms: env_num("PLAIT_BENCH_ROOMS", d(100, 10)),
            room_messages: env_num("PLAIT_BENCH_ROOM_MESSAGES", d(10, 2)),
            sync_reps: env_num("PLAIT_BENCH_SYNC_REPS", d(5, 2)).max(1),
            timeline_limit: env_num("PLAIT_BENCH_TIMELINE_LIMIT", 1000).max(1),
            sync_timeout_ms: env_num("PLAIT_BENCH_SYNC_TIMEOUT_MS", 30_000),
            drain: Duration::from_secs(env_num("PLAIT_BENCH_DRAIN_SECS", d(15, 5) as u64)),
            setup_concurrency: env_num("PLAIT_BENCH_SETUP_CONCURRENCY", 4).max(1),
            join_concurrency: env_num("PLAIT_BENCH_JOIN_CONCURRENCY", 1).max(1),
            idle_settle: Duration::from_millis(env_num(
                "PLAIT_BENCH_IDLE_SETTLE_MS",
                d(3000, 1000) as u64,
            )),
            client_threads: env_num(
                "PLAIT_BENCH_CLIENT_THREADS",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            )
            .max(1),
            total_timeout: Duration::from_secs(env_num(
                "PLAIT_BENCH_TIMEOUT_SECS",
                d(1800, 120) as u64,
            )),
            server_args: env_str("PLAIT_BENCH_SERVER_ARGS")
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            keep_data: env_bool("PLAIT_BENCH_KEEP"),
            enforce: env_bool("PLAIT_BENCH_ENFORCE"),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "members": self.members,
            "senders": self.senders,
            "messages": self.messages,
            "send_max_s": self.send_max.as_secs(),
            "paced_messages": self.paced_messages,
            "paced_rate": self.paced_rate,
            "rooms": self.rooms,
            "room_messages": self.room_messages,
            "sync_reps": self.sync_reps,
            "timeline_limit": self.timeline_limit,
            "sync_timeout_ms": self.sync_timeout_ms,
            "drain_s": self.drain.as_secs(),
            "client_threads": self.client_threads,
            "setup_concurrency": self.setup_concurrency,
            "join_concurrency": self.join_concurrency,
        })
    }
}

// ---------------------------------------------------------------------------
// Machine facts and /proc readings

struct CpuMark {
    at: Instant,
    server: u64,
    bench: u64,
    machine: u64,
}

/// CPU use over an interval, in percent of one core.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    server: f64,
    bench: f64,
    /// Everything else on the machine (for example a compiler running meanwhile).
    other: f64,
}

impl CpuMark {
    fn now(pid: u32) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server: cpu_ticks(&format!("/proc/{pid}/stat")),
            bench: cpu_ticks("/proc/self/stat"),
            machine: machine_busy_ticks(),
        }
    }
    fn since(&self, pid: u32, tck: f64) -> CpuUse {
        let now = CpuMark::now(pid);
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / tck / wall * 100.0;
        let (server, bench) = (pct(self.server, now.server), pct(self.bench, now.bench));
        let machine = pct(self.machine, now.machine);
        CpuUse {
            server,
            bench,
            other: (machine - server - bench).max(0.0),
        }
    }
}

// ---------------------------------------------------------------------------
// The server child process

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

/// Owns the server child process and its temporary directory; `Drop` kills
/// the child (SIGKILL) and removes the directory, so the server never
/// outlives the benchmark, whichever way the run ends (short of the
/// benchmark itself being SIGKILLed).
struct Server {
    child: Child,
    pid: u32,
    base: String,
    dir: PathBuf,
    keep: bool,
}

impl Server {
    fn start(bin: &Path, cfg: &Config) -> Result<Server, String> {
        if !bin.exists() {
            return Err(format!(
                "server binary {} does not exist (build it with `cargo build --release`, or set PLAIT_BIN)",
                bin.display()
            ));
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("plait-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(&cfg.server_args)
            .env("PLAIT_DATABASE_PATH", dir.join("db"))
            .env("PLAIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PLAIT_SERVER_NAME", "localhost")
            .env("PLAIT_REGISTRATION", "open")
            // The benchmark registers and sends from one address as fast as it can.
            .env("PLAIT_RATE_LIMITS_ENABLED", "false")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("spawn {}: {e}", bin.display()));
            }
        };
        Ok(Server {
            pid: child.id(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            keep: cfg.keep_data,
        })
    }

    /// The last `lines` lines of the server's log, leaving out the per-request lines (a panic's
    /// message would otherwise scroll away behind them).
    fn log_tail(&self, lines: usize) -> String {
        let text = read(self.dir.join("server.log").to_str().unwrap_or_default());
        let all: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("plait::requests"))
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                // Kept for a post-mortem: the database and the whole log.
                self.keep = true;
                Some(format!(
                    "server exited ({status}); log tail:\n{}",
                    self.log_tail(40)
                ))
            }
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
            "server did not answer GET /_matrix/client/versions within {limit:?} (last: {last}); log tail:\n{}",
            self.log_tail(40)
        ))
    }
}

impl Drop for Server {
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

mod common;
use common::*;

enum Load {
    /// `senders` closed-loop clients send `total` events as fast as they can.
    Saturate {
        total: usize,
        senders: usize,
        max: Duration,
    },
    /// `total` events at a fixed `rate`, sender chosen round-robin.
    Paced {
        total: usize,
        senders: usize,
        rate: f64,
        max: Duration,
    },
}

struct PhaseOut {
    sends: Vec<SendRec>,
    send_errors: usize,
    first_send_error: Option<String>,
    watchers: Vec<WatchOut>,
    send_wall: Duration,
    /// CPU use while sending.
    cpu: CpuUse,
}

struct Shared {
    pid: u32,
    tck: f64,
    api: Api,
    users: Vec<User>,
    room: Arc<str>,
    filters: Vec<Arc<str>>,
}

async fn run_phase(
    sh: &Arc<Shared>,
    cfg: &Config,
    tag: &str,
    load: Load,
    since: &mut [String],
) -> PhaseOut {
    let tag: Arc<str> = tag.into();
    let n_ids = match load {
        Load::Saturate { total, .. } | Load::Paced { total, .. } => total,
    };
    let send_max = match load {
        Load::Saturate { max, .. } | Load::Paced { max, .. } => max,
    };
    let hard_deadline = Instant::now() + send_max + cfg.drain + Duration::from_secs(5);
    let (ctl_tx, ctl_rx) = watch::channel(Ctl {
        expected: usize::MAX,
        stop: false,
    });

    // Every member long-polls /sync from the position it had before the phase.
    let mut watchers = Vec::new();
    for (i, user) in sh.users.iter().take(cfg.members).enumerate() {
        watchers.push(tokio::spawn(watch_room(
            sh.api.clone(),
            user.clone(),
            sh.room.clone(),
            sh.filters[i].clone(),
            since[i].clone(),
            tag.clone(),
            n_ids,
            cfg.sync_timeout_ms,
            ctl_rx.clone(),
            hard_deadline,
        )));
    }
    drop(ctl_rx);
    // Let the long-polls reach the server before the first send.
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
    let cpu = CpuMark::now(sh.pid);
    let mut sends = Vec::new();
    match load {
        Load::Saturate {
            total,
            senders,
            max,
        } => {
            let next = Arc::new(AtomicUsize::new(0));
            let stop_at = t0 + max;
            let mut tasks = Vec::new();
            for s in 0..senders {
                let (sh, next, tag, errors) =
                    (sh.clone(), next.clone(), tag.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut recs = Vec::new();
                    let mut consecutive_errors = 0;
                    loop {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        if id >= total || Instant::now() >= stop_at || consecutive_errors >= 20 {
                            break;
                        }
                        let (rec, err) = send_one(&sh.api, &sh.users[s], &sh.room, &tag, id).await;
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
        Load::Paced {
            total,
            senders,
            rate,
            max,
        } => {
            let stop_at = t0 + max;
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tasks = Vec::new();
            for id in 0..total {
                ticker.tick().await;
                if Instant::now() >= stop_at {
                    break;
                }
                let (sh, tag, errors) = (sh.clone(), tag.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let (rec, err) =
                        send_one(&sh.api, &sh.users[id % senders], &sh.room, &tag, id).await;
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
    let cpu = cpu.since(sh.pid, sh.tck);
    let send_wall = sends
        .iter()
        .map(|r| r.end)
        .max()
        .unwrap_or(t0)
        .duration_since(t0);
    let ok = sends.iter().filter(|r| r.ok).count();
    // Tell the watchers how many to expect; they finish once they saw them all,
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
    let mut outs = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        match w.await {
            Ok(out) => {
                since[i] = out.since.clone();
                outs.push(out);
            }
            Err(e) => outs.push(WatchOut {
                since: since[i].clone(),
                seen: vec![None; n_ids],
                duplicates: 0,
                limited: 0,
                responses: 0,
                errors: 1,
                first_error: Some(format!("sync task failed: {e}")),
            }),
        }
    }
    stopper.abort();
    let (send_errors, first_send_error) = errors.lock().unwrap().clone();
    PhaseOut {
        sends,
        send_errors,
        first_send_error,
        watchers: outs,
        send_wall,
        cpu,
    }
}

struct Delivery {
    pairs_expected: usize,
    pairs_seen: usize,
    from_return: Stats,
    from_start: Stats,
    seen_before_return: usize,
    duplicates: u64,
    limited: u64,
    sync_responses: u64,
    sync_errors: u64,
    first_sync_error: Option<String>,
}

fn delivery(p: &PhaseOut) -> Delivery {
    let mut by_id: Vec<Option<(Instant, Instant)>> =
        vec![None; p.watchers.first().map_or(0, |w| w.seen.len())];
    for s in p.sends.iter().filter(|s| s.ok) {
        if let Some(slot) = by_id.get_mut(s.id) {
            *slot = Some((s.start, s.end));
        }
    }
    let ok = by_id.iter().filter(|x| x.is_some()).count();
    let (mut from_return, mut from_start) = (Vec::new(), Vec::new());
    let mut seen_before_return = 0;
    for w in &p.watchers {
        for (id, seen) in w.seen.iter().enumerate() {
            if let (Some(seen), Some(Some((start, end)))) = (seen, by_id.get(id)) {
                if *seen < *end {
                    seen_before_return += 1;
                }
                from_return.push(ms(seen.saturating_duration_since(*end)));
                from_start.push(ms(seen.saturating_duration_since(*start)));
            }
        }
    }
    Delivery {
        pairs_expected: ok * p.watchers.len(),
        pairs_seen: from_return.len(),
        from_return: Stats::of(from_return),
        from_start: Stats::of(from_start),
        seen_before_return,
        duplicates: p.watchers.iter().map(|w| w.duplicates).sum(),
        limited: p.watchers.iter().map(|w| w.limited).sum(),
        sync_responses: p.watchers.iter().map(|w| w.responses).sum(),
        sync_errors: p.watchers.iter().map(|w| w.errors).sum(),
        first_sync_error: p.watchers.iter().find_map(|w| w.first_error.clone()),
    }
}

impl Delivery {
    fn json(&self) -> Value {
        json!({
            "pairs_expected": self.pairs_expected,
            "pairs_seen": self.pairs_seen,
            "from_send_return_ms": self.from_return.json(),
            "from_send_start_ms": self.from_start.json(),
            "seen_before_send_returned": self.seen_before_return,
            "duplicates": self.duplicates,
            "limited_responses": self.limited,
            "sync_responses": self.sync_responses,
            "sync_errors": self.sync_errors,
            "first_sync_error": self.first_sync_error,
        })
    }
}

struct SendSummary {
    ok: usize,
    errors: usize,
    wall_s: f64,
    events_per_s: f64,
    min_1s: f64,
    median_1s: f64,
    latency: Stats,
}

fn send_summary(p: &PhaseOut) -> SendSummary {
    let ok: Vec<&SendRec> = p.sends.iter().filter(|s| s.ok).collect();
    let start = ok.iter().map(|s| s.start).min();
    let end = ok.iter().map(|s| s.end).max();
    let wall_s = match (start, end) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    // Completions per whole second since the first send (the last, partial second is left out).
    let (mut min_1s, mut median_1s) = (f64::NAN, f64::NAN);
    if let Some(a) = start {
        let full = wall_s.floor() as usize;
        if full >= 1 {
            let mut buckets = vec![0f64; full];
            for s in &ok {
                let b = s.end.duration_since(a).as_secs() as usize;
                if b < full {
                    buckets[b] += 1.0;
                }
            }
            buckets.sort_by(|x, y| x.total_cmp(y));
            min_1s = buckets[0];
            median_1s = buckets[full / 2];
        }
    }
    SendSummary {
        ok: ok.len(),
        errors: p.send_errors,
        wall_s,
        events_per_s: if wall_s > 0.0 {
            ok.len() as f64 / wall_s
        } else {
            f64::NAN
        },
        min_1s,
        median_1s,
        latency: Stats::of(
            ok.iter()
                .map(|s| ms(s.end.duration_since(s.start)))
                .collect(),
        ),
    }
}

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

async fn run(cfg: Config) -> Result<bool, String> {
    let t0 = Instant::now();
    let m = machine_facts();
    let bin = server_binary();
    let commit = commit();
    let tck = clock_ticks_per_s();
    println!(
        "plait load benchmark{}",
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
        "params:  {} members, {} senders, {} messages, paced {} at {}/s, initial sync over {} rooms x {} messages",
        cfg.members, cfg.senders, cfg.messages, cfg.paced_messages, cfg.paced_rate, cfg.rooms, cfg.room_messages
    );

    let mut server = Server::start(&bin, &cfg)?;
    let pid = server.pid;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let api = Api {
        http,
        base: server.base.as_str().into(),
    };
    let ready_in = server.wait_ready(&api, Duration::from_secs(60)).await?;
    let rss_startup = rss_of(pid);
    step(
        t0,
        &format!(
            "server {pid} ready in {:.0} ms on {}",
            ms(ready_in),
            server.base
        ),
    );

    // --- setup: users, the load room, filters, sync positions -------------
    let n_users = cfg.members + 1; // + the initial-sync user
    let reg = {
        let api = api.clone();
        let members = cfg.members;
        pool(n_users, cfg.setup_concurrency, move |i| {
            let api = api.clone();
            async move {
                let name = if i == members {
                    "bench-initsync".to_owned()
                } else {
                    format!("bench-{i:03}")
                };
                let t = Instant::now();
                let u = api.register(&name).await?;
                Ok((u, ms(t.elapsed())))
            }
        })
        .await
    };
    let reg = all_ok("register", reg)?;
    let register_ms = Stats::of(reg.iter().map(|r| r.1).collect());
    let users: Vec<User> = reg.into_iter().map(|r| r.0).collect();
    step(
        t0,
        &format!(
            "registered {n_users} users (per user: {})",
            register_ms.line()
        ),
    );
    if let Some(e) = server.exited() {
        return Err(e);
    }

    let room = api.create_room(&users[0], "plait load bench").await?;
    let joins = {
        let (api, users, room) = (api.clone(), users.clone(), room.clone());
        pool(
            cfg.members.saturating_sub(1),
            cfg.join_concurrency,
            move |i| {
                let (api, user, room) = (api.clone(), users[i + 1].clone(), room.clone());
                async move {
                    let t = Instant::now();
                    api.join(&user, &room).await?;
                    Ok(ms(t.elapsed()))
                }
            },
        )
        .await
    };
    let join_ms = Stats::of(all_ok("join", joins)?);
    // Every member must be joined in the room's current state, or its sends fail.
    let state = api
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            Some(&users[0].token),
            None,
            Duration::from_secs(30),
        )
        .await?;
    let joined: Vec<&str> = state
        .body
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    let missing: Vec<&str> = users[..cfg.members]
        .iter()
        .map(|u| &*u.user_id)
        .filter(|u| !joined.contains(u))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "GET /rooms/{{roomId}}/state lists {} joined members, expected {}; not joined: {}",
            joined.len(),
            cfg.members,
            missing.join(", ")
        ));
    }
    step(
        t0,
        &format!(
            "room {room}: {} members joined (per join: {})",
            cfg.members,
            join_ms.line()
        ),
    );

    let mut filter_note = None;
    let mut filters = Vec::new();
    for u in users.iter().take(cfg.members) {
        let (f, note) = api.make_filter(u, &room, cfg.timeline_limit).await;
        if let Some(n) = note {
            filter_note.get_or_insert(format!("filter upload failed, using an inline filter: {n}"));
        }
        filters.push(Arc::<str>::from(f));
    }
    if let Some(n) = &filter_note {
        eprintln!("warning: {n}");
    }
    let sh = Arc::new(Shared {
        pid,
        tck,
        api: api.clone(),
        users: users.clone(),
        room: room.as_str().into(),
        filters,
    });
    let mut since: Vec<String> = {
        let sh2 = sh.clone();
        let r = pool(cfg.members, cfg.setup_concurrency, move |i| {
            let sh = sh2.clone();
            async move {
                let r = sh
                    .api
                    .sync(
                        &sh.users[i],
                        Some(&sh.filters[i]),
                        None,
                        0,
                        Duration::from_secs(60),
                    )
                    .await?;
                r.body["next_batch"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        format!("GET /sync -> 200 without next_batch: {}", short(&r.body))
                    })
            }
        })
        .await;
        all_ok("initial /sync of the delivery clients", r)?
    };

    tokio::time::sleep(cfg.idle_settle).await;
    let rss_idle = rss_of(pid);
    step(t0, &format!("idle RSS {:.1} MiB", kb_mb(rss_idle.rss_kb)));

    // --- saturating send -----------------------------------------------------
    let sat = run_phase(
        &sh,
        &cfg,
        "sat",
        Load::Saturate {
            total: cfg.messages,
            senders: cfg.senders,
            max: cfg.send_max,
        },
        &mut since,
    )
    .await;
    let cpu_sat = sat.cpu;
    let rss_after_send = rss_of(pid);
    let send = send_summary(&sat);
    let del_sat = delivery(&sat);
    step(
        t0,
        &format!(
            "saturating send: {} ok, {} errors, {:.0} events/s; delivery seen {}/{}",
            send.ok, send.errors, send.events_per_s, del_sat.pairs_seen, del_sat.pairs_expected
        ),
    );
    if let Some(e) = server.exited() {
        return Err(e);
    }

    // --- paced send ----------------------------------------------------------
    let paced_max =
        Duration::from_secs_f64(cfg.paced_messages as f64 / cfg.paced_rate * 2.0 + 10.0);
    let paced = run_phase(
        &sh,
        &cfg,
        "paced",
        Load::Paced {
            total: cfg.paced_messages,
            senders: cfg.senders,
            rate: cfg.paced_rate,
            max: paced_max,
        },
        &mut since,
    )
    .await;
    let cpu_paced = paced.cpu;
    let rss_after_paced = rss_of(pid);
    let paced_send = send_summary(&paced);
    let del_paced = delivery(&paced);
    step(
        t0,
        &format!(
            "paced send: {} ok, {} errors; delivery seen {}/{}",
            paced_send.ok, paced_send.errors, del_paced.pairs_seen, del_paced.pairs_expected
        ),
    );
    if let Some(e) = server.exited() {
        return Err(e);
    }

    // --- initial sync of a user in many rooms -------------------------------
    // Room i is created (and filled) by member i mod members, so that no user
    // creates two rooms at once.
    let init_user = users[cfg.members].clone();
    let rooms = {
        let (api, creators, per_room) = (
            api.clone(),
            users[..cfg.members].to_vec(),
            cfg.room_messages,
        );
        pool(cfg.rooms, cfg.setup_concurrency, move |i| {
            let (api, creator) = (api.clone(), creators[i % creators.len()].clone());
            async move {
                let r = api
                    .create_room(&creator, &format!("plait bench room {i}"))
                    .await?;
                for k in 0..per_room {
                    let content =
                        json!({ "msgtype": "m.text", "body": format!("room {i} message {k}") });
                    api.send(&creator, &r, &format!("fill-{i}-{k}"), &content)
                        .await?;
                }
                Ok(r)
            }
        })
        .await
    };
    let rooms = all_ok("create the initial-sync rooms", rooms)?;
    let joins = {
        let (api, u, rooms) = (api.clone(), init_user.clone(), rooms.clone());
        pool(rooms.len(), cfg.setup_concurrency, move |i| {
            let (api, u, r) = (api.clone(), u.clone(), rooms[i].clone());
            async move { api.join(&u, &r).await }
        })
        .await
    };
    all_ok("join the initial-sync rooms", joins)?;
    step(
        t0,
        &format!("initial-sync user joined {} rooms", rooms.len()),
    );
    let mut times = Vec::new();
    let (mut sync_bytes, mut rooms_in_sync, mut events_in_sync) = (0usize, 0usize, 0usize);
    for _ in 0..cfg.sync_reps {
        let t = Instant::now();
        let r = api
            .sync(&init_user, None, None, 0, Duration::from_secs(300))
            .await?;
        times.push(ms(r.at.duration_since(t)));
        sync_bytes = r.bytes;
        let join = r.body["rooms"]["join"].as_object();
        rooms_in_sync = join.map_or(0, |o| o.len());
        events_in_sync = join.map_or(0, |o| {
            o.values()
                .map(|v| v["timeline"]["events"].as_array().map_or(0, |a| a.len()))
                .sum()
        });
    }
    let first_sync_ms = times[0];
    let init_sync = Stats::of(times);
    if rooms_in_sync != rooms.len() {
        eprintln!(
            "warning: the initial sync lists {rooms_in_sync} joined rooms, expected {}",
            rooms.len()
        );
    }
    let rss_end = rss_of(pid);
    step(t0, &format!("initial sync: median {:.1} ms", init_sync.p50));
    if let Some(e) = server.exited() {
        return Err(e);
    }
    // The same pause as before the idle reading: what the server keeps once the work is done.
    tokio::time::sleep(cfg.idle_settle).await;
    let rss_end_idle = rss_of(pid);
    drop(server); // kill the server now that all readings are taken

    // --- report --------------------------------------------------------------
    let peak_kb = rss_end.hwm_kb;
    let pass_send = send.events_per_s >= TARGET_SEND_EVENTS_PER_S;
    let pass_delivery = del_paced.from_return.p99 < TARGET_DELIVERY_P99_MS
        && del_paced.pairs_seen == del_paced.pairs_expected
        && del_paced.pairs_expected > 0;
    let pass_rss = kb_mb(rss_idle.rss_kb) < TARGET_IDLE_RSS_MB && rss_idle.rss_kb > 0;
    let verdict = |p: bool| if p { "PASS" } else { "MISS" };

    let mut t = String::new();
    let _ = writeln!(t);
    let _ = writeln!(t, "{:<48} {:>14}  target", "figure", "value");
    let _ = writeln!(t, "{}", "-".repeat(80));
    let mut row = |name: &str, value: String, target: &str| {
        let _ = writeln!(t, "{name:<48} {value:>14}  {target}");
    };
    row(
        &format!("send throughput ({} senders, events/s)", cfg.senders),
        num(send.events_per_s, 0),
        &format!(">= {TARGET_SEND_EVENTS_PER_S:.0}  {}", verdict(pass_send)),
    );
    row(
        "  slowest / median 1-s window (events/s)",
        format!("{} / {}", num(send.min_1s, 0), num(send.median_1s, 0)),
        "",
    );
    row(
        "  sent ok / errors",
        format!("{} / {}", send.ok, send.errors),
        "",
    );
    row("send latency p50 (ms)", num(send.latency.p50, 2), "");
    row("send latency p99 (ms)", num(send.latency.p99, 2), "");
    row("send latency max (ms)", num(send.latency.max, 2), "");
    row(
        &format!(
            "delivery p50, paced {}/s (ms, from send return)",
            cfg.paced_rate
        ),
        num(del_paced.from_return.p50, 2),
        "",
    );
    row(
        &format!(
            "delivery p99, paced {}/s (ms, from send return)",
            cfg.paced_rate
        ),
        num(del_paced.from_return.p99, 2),
        &format!("< {TARGET_DELIVERY_P99_MS:.0}  {}", verdict(pass_delivery)),
    );
    row(
        "  delivery max, paced (ms)",
        num(del_paced.from_return.max, 2),
        "",
    );
    row(
        "  delivery p99, paced (ms, from send start)",
        num(del_paced.from_start.p99, 2),
        "",
    );
    row(
        "  deliveries seen, paced",
        format!("{}/{}", del_paced.pairs_seen, del_paced.pairs_expected),
        "",
    );
    row(
        "delivery p50 under saturating send (ms)",
        num(del_sat.from_return.p50, 2),
        "",
    );
    row(
        "delivery p99 under saturating send (ms)",
        num(del_sat.from_return.p99, 2),
        "",
    );
    row(
        "  deliveries seen, saturating",
        format!("{}/{}", del_sat.pairs_seen, del_sat.pairs_expected),
        "",
    );
    row(
        &format!("initial sync, {} rooms, median (ms)", rooms.len()),
        num(init_sync.p50, 1),
        "",
    );
    row(
        "  first / max (ms)",
        format!("{} / {}", num(first_sync_ms, 1), num(init_sync.max, 1)),
        "",
    );
    row(
        "  response size (KiB), rooms listed",
        format!("{:.0}, {rooms_in_sync}", sync_bytes as f64 / 1024.0),
        "",
    );
    row(
        "RSS after startup (MiB)",
        num(kb_mb(rss_startup.rss_kb), 1),
        "",
    );
    row(
        "idle RSS, after registration (MiB)",
        num(kb_mb(rss_idle.rss_kb), 1),
        &format!("< {TARGET_IDLE_RSS_MB:.0}  {}", verdict(pass_rss)),
    );
    row(
        "RSS after saturating send (MiB)",
        num(kb_mb(rss_after_send.rss_kb), 1),
        "",
    );
    row("RSS at the end (MiB)", num(kb_mb(rss_end.rss_kb), 1), "");
    row(
        "RSS at the end, after the idle pause (MiB)",
        num(kb_mb(rss_end_idle.rss_kb), 1),
        "",
    );
    row("peak RSS, VmHWM (MiB)", num(kb_mb(peak_kb), 1), "");
    row(
        "server CPU during saturating send (% of 1 core)",
        num(cpu_sat.server, 0),
        "",
    );
    row(
        "bench CPU during saturating send (% of 1 core)",
        num(cpu_sat.bench, 0),
        "",
    );
    row(
        "other CPU during saturating send (% of 1 core)",
        num(cpu_sat.other, 0),
        if cpu_sat.other > 20.0 {
            "busy machine!"
        } else {
            ""
        },
    );
    println!("{t}");
    for (what, e) in [
        ("send error (saturating)", &sat.first_send_error),
        ("send error (paced)", &paced.first_send_error),
        ("sync error (saturating)", &del_sat.first_sync_error),
        ("sync error (paced)", &del_paced.first_sync_error),
    ] {
        if let Some(e) = e {
            println!("first {what}: {e}");
        }
    }
    for (what, d) in [("saturating", &del_sat), ("paced", &del_paced)] {
        if d.duplicates > 0 || d.limited > 0 {
            println!(
                "note ({what}): {} duplicate deliveries, {} limited timelines in {} sync responses",
                d.duplicates, d.limited, d.sync_responses
            );
        }
    }
    if let Some(n) = &filter_note {
        println!("note: {n}");
    }

    let report = json!({
        "bench": "plait-load",
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
            "ready_ms": r3(ms(ready_in)),
            "register_ms": register_ms.json(),
            "join_ms": join_ms.json(),
            "filter_uploaded": filter_note.is_none(),
        },
        "send": {
            "ok": send.ok,
            "errors": send.errors,
            "first_error": sat.first_send_error,
            "wall_s": r3(send.wall_s),
            "phase_wall_s": r3(sat.send_wall.as_secs_f64()),
            "events_per_s": r3(send.events_per_s),
            "min_1s_events_per_s": r3(send.min_1s),
            "median_1s_events_per_s": r3(send.median_1s),
            "latency_ms": send.latency.json(),
            "server_cpu_pct": r3(cpu_sat.server),
            "bench_cpu_pct": r3(cpu_sat.bench),
            "other_cpu_pct": r3(cpu_sat.other),
        },
        "delivery_saturating": del_sat.json(),
        "delivery_paced": {
            "rate": cfg.paced_rate,
            "sent_ok": paced_send.ok,
            "send_errors": paced_send.errors,
            "send_latency_ms": paced_send.latency.json(),
            "server_cpu_pct": r3(cpu_paced.server),
            "other_cpu_pct": r3(cpu_paced.other),
            "delivery": del_paced.json(),
        },
        "initial_sync": {
            "rooms": rooms.len(),
            "messages_per_room": cfg.room_messages,
            "reps": cfg.sync_reps,
            "first_ms": r3(first_sync_ms),
            "ms": init_sync.json(),
            "bytes": sync_bytes,
            "rooms_in_response": rooms_in_sync,
            "timeline_events_in_response": events_in_sync,
        },
        "rss_kb": {
            "startup": rss_startup.rss_kb,
            "idle": rss_idle.rss_kb,
            "after_saturating_send": rss_after_send.rss_kb,
            "after_paced_send": rss_after_paced.rss_kb,
            "end": rss_end.rss_kb,
            "end_idle": rss_end_idle.rss_kb,
            "peak_hwm": peak_kb,
        },
        "targets": {
            "send_events_per_s": { "target": TARGET_SEND_EVENTS_PER_S, "value": r3(send.events_per_s), "pass": pass_send },
            "delivery_p99_ms": { "target": TARGET_DELIVERY_P99_MS, "value": r3(del_paced.from_return.p99), "pass": pass_delivery },
            "idle_rss_mb": { "target": TARGET_IDLE_RSS_MB, "value": r3(kb_mb(rss_idle.rss_kb)), "pass": pass_rss },
        },
    });
    println!("BENCH_JSON {report}");
    Ok(pass_send && pass_delivery && pass_rss)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not. Only
    // run when benchmarking (or explicitly asked), never as part of tests.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let quick = env_bool("PLAIT_BENCH_QUICK");
    if !bench_mode && !quick && !env_bool("PLAIT_BENCH_FORCE") {
        println!(
            "load bench: skipped (run `cargo bench --bench load`, or set PLAIT_BENCH_QUICK=1)"
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
            eprintln!("load bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        tokio::select! {
            r = tokio::time::timeout(limit, run(cfg)) => match r {
                Ok(Ok(true)) => 0,
                Ok(Ok(false)) => if enforce { 2 } else { 0 },
                Ok(Err(e)) => { eprintln!("load bench failed: {e}"); 1 }
                Err(_) => { eprintln!("load bench: overall time limit of {limit:?} exceeded (PLAIT_BENCH_TIMEOUT_SECS)"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("load bench: interrupted"); 130 }
        }
    });
    // The server guard has been dropped (server killed) when `run` returned or was cancelled.
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
