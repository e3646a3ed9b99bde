//! Plait abuse benchmark (`cargo bench --bench abuse`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and measures what a
//! hostile client costs everyone else:
//!
//! 1. *Login storm*: the latency of `GET /whoami` for one logged-in user, one request at a time,
//!    first alone (`PLAIT_BENCH_BASELINE`, 500 requests), then while `PLAIT_BENCH_LOGINS` (2,000)
//!    `POST /login` run `PLAIT_BENCH_LOGIN_CONCURRENCY` (32) at a time: once with a wrong
//!    password for an existing account, once with the right one. The `/whoami` loop pauses
//!    `PLAIT_BENCH_WHOAMI_GAP_MS` (5) between requests. Reports the storm's duration,
//!    logins per second, their answers (429s show a rate-limited run) and the server's CPU.
//! 2. *Idle connections*: a second server (header timeout raised to 10 minutes so idle
//!    connections are not closed during the phase) is filled with TCP connections from
//!    127.0.0.2, 127.0.0.3, …, in batches of `PLAIT_BENCH_CONN_BATCH` (64) per address, each
//!    sending one `GET /versions` and then staying idle on keep-alive (`PLAIT_BENCH_IDLE=bare`:
//!    sending nothing). A batch whose connections the server closes tells a cap: the next
//!    address when only that address was refused (the per-address cap), the end when a fresh
//!    address is refused too (the cap in all), or `PLAIT_BENCH_MAX_CONNS` held. At 0, 1,000,
//!    4,000 connections and at the end, `PLAIT_BENCH_PROBES` (20) `GET /versions` are timed on a
//!    keep-alive connection opened before the fill and on a new connection each from a fresh
//!    address (127.0.0.251).
//! 3. *Memory*: the server's VmRSS before the fill, at the end, after closing everything and
//!    3 s later; the growth divided by the connections held is the memory per idle connection.
//!
//! Rate limits are off (as in every benchmark's server); extra server settings:
//! `PLAIT_BENCH_SERVER_ENV="KEY=VALUE ..."` (`PLAIT_RATE_LIMITS_ENABLED=true` switches the limits
//! on to see the storm throttled) and `PLAIT_BENCH_SERVER_ARGS`, for both servers.
//! `PLAIT_BENCH_QUICK=1` runs 200 logins and at most 1,500 connections. Built as a test it
//! prints `abuse bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "abuse";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";
const VERSIONS: &str = "/_matrix/client/versions";
/// The connection phase's header timeout, so that idle connections outlive the phase.
const IDLE_HEADER_TIMEOUT_MS: &str = "600000";
/// The fresh address the new-connection probe comes from, and the keep-alive probe's.
const PROBE_FRESH_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 251);
const PROBE_KEPT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 250);
/// The connection counts at which the probes run (and again at the end).
const CHECKPOINTS: [usize; 3] = [0, 1_000, 4_000];

mod common;
use common::*;

struct Params {
    quick: bool,
    baseline: usize,
    logins: usize,
    concurrency: usize,
    batch: usize,
    max_conns: usize,
    probes: usize,
    bare: bool,
    /// The pause between two `/whoami`, so the watcher is not a load of its own.
    whoami_gap: Duration,
}

impl Params {
    fn from_env() -> Self {
        let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
        Self {
            quick,
            baseline: env_usize("PLAIT_BENCH_BASELINE", if quick { 100 } else { 500 }),
            logins: env_usize("PLAIT_BENCH_LOGINS", if quick { 200 } else { 2_000 }),
            concurrency: env_usize("PLAIT_BENCH_LOGIN_CONCURRENCY", 32),
            batch: env_usize("PLAIT_BENCH_CONN_BATCH", 64).max(1),
            max_conns: env_usize("PLAIT_BENCH_MAX_CONNS", if quick { 1_500 } else { 16_000 }),
            probes: env_usize("PLAIT_BENCH_PROBES", 20).max(1),
            bare: std::env::var("PLAIT_BENCH_IDLE").is_ok_and(|v| v == "bare"),
            whoami_gap: Duration::from_millis(env_usize("PLAIT_BENCH_WHOAMI_GAP_MS", 5) as u64),
        }
    }
}

// ---------------------------------------------------------------------------
// Login storm

fn http_client(local: Option<Ipv4Addr>, keep_alive: bool) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().local_address(local.map(IpAddr::V4));
    if !keep_alive {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().map_err(|e| format!("http client: {e}"))
}

/// Times `GET /whoami`, one at a time with `gap` between them, `count` times or until `stop` is
/// set.
async fn whoami_times(
    api: &Api,
    token: &str,
    (count, gap): (usize, Duration),
    stop: &AtomicBool,
) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    while times.len() < count && !stop.load(Ordering::Relaxed) {
        if !times.is_empty() {
            tokio::time::sleep(gap).await;
        }
        let start = Instant::now();
        api.ok(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(token),
            None,
            Duration::from_secs(60),
        )
        .await?;
        times.push(ms(start.elapsed()));
    }
    Ok(times)
}

/// The answers of a storm's logins: by status, and failed requests.
#[derive(Default)]
struct Answers {
    ok: usize,
    forbidden: usize,
    limited: usize,
    other: usize,
    errors: usize,
    first_other: Option<String>,
}

impl Answers {
    fn json(&self) -> Value {
        json!({"200": self.ok, "403": self.forbidden, "429": self.limited, "other": self.other,
            "errors": self.errors, "first_other": self.first_other})
    }
}

/// `count` password logins of `user`, `concurrency` at a time.
async fn login_storm(
    api: Api,
    user: &str,
    password: &str,
    count: usize,
    concurrency: usize,
) -> Answers {
    let body = Arc::new(json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }));
    let replies = pool(count, concurrency, move |_| {
        let (api, body) = (api.clone(), body.clone());
        async move {
            let t = Duration::from_secs(120);
            api.call(
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&body),
                t,
            )
            .await
        }
    })
    .await;
    let mut answers = Answers::default();
    for reply in replies {
        match reply {
            Ok(r) if r.status == 200 => answers.ok += 1,
            Ok(r) if r.status == 403 => answers.forbidden += 1,
            Ok(r) if r.status == 429 => answers.limited += 1,
            Ok(r) => {
                answers.other += 1;
                answers
                    .first_other
                    .get_or_insert_with(|| format!("{} {}", r.status, short(&r.body)));
            }
            Err(e) => {
                answers.errors += 1;
                answers.first_other.get_or_insert(e);
            }
        }
    }
    answers
}

/// One storm with `/whoami` timed alongside it; returns its line for the report and its JSON.
async fn storm_phase(
    p: &Params,
    pid: u32,
    api: &Api,
    user: &User,
    name: &str,
    (label, password): (&str, &str),
) -> Result<(String, Value), String> {
    let storm_api = Api {
        http: http_client(None, true)?,
        base: api.base.clone(),
    };
    let stat = format!("/proc/{pid}/stat");
    let (cpu_before, busy_before) = (cpu_ticks(&stat), machine_busy_ticks());
    let start = Instant::now();
    let (logins, concurrency) = (p.logins, p.concurrency);
    let (name_owned, password_owned) = (name.to_owned(), password.to_owned());
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let storm = tokio::spawn(async move {
        let answers =
            login_storm(storm_api, &name_owned, &password_owned, logins, concurrency).await;
        flag.store(true, Ordering::Relaxed);
        (answers, start.elapsed())
    });
    let whoami = whoami_times(api, &user.token, (usize::MAX, p.whoami_gap), &done).await;
    let (answers, took) = storm.await.map_err(|e| format!("storm task: {e}"))?;
    let whoami = Stats::of(whoami?);
    let ticks = clock_ticks_per_s();
    let seconds = took.as_secs_f64();
    let server_cores = cpu_ticks(&stat).saturating_sub(cpu_before) as f64 / ticks / seconds;
    let machine_cores = machine_busy_ticks().saturating_sub(busy_before) as f64 / ticks / seconds;
    let rate = logins as f64 / seconds;
    let line = format!(
        "storm, {label}: {logins} logins in {seconds:.1} s ({rate:.0}/s; 200: {}, 403: {}, 429: {}, \
         other: {}, failed: {}), server CPU {server_cores:.2} cores, machine {machine_cores:.2}\n  \
         /whoami during it: {}",
        answers.ok,
        answers.forbidden,
        answers.limited,
        answers.other,
        answers.errors,
        whoami.line()
    );
    let value = json!({"storm": label, "logins": logins, "seconds": r3(seconds),
        "logins_per_s": r3(rate), "answers": answers.json(), "server_cores": r3(server_cores),
        "machine_cores": r3(machine_cores), "whoami_ms": whoami.json()});
    Ok((line, value))
}

/// Phase 1: baseline `/whoami`, then a wrong-password and a right-password storm.
async fn storms(p: &Params, report: &mut String) -> Result<Value, String> {
    let mut server = BenchServer::start(&bench_binary(), "abuse-storm")?;
    let api = Api {
        http: http_client(None, true)?,
        base: Arc::from(server.base.as_str()),
    };
    server.wait_ready(&api).await?;
    let user = api.register("watcher").await?;
    let _victim = api.register("victim").await?;
    let baseline = Stats::of(
        whoami_times(
            &api,
            &user.token,
            (p.baseline, p.whoami_gap),
            &AtomicBool::new(false),
        )
        .await?,
    );
    let _ = writeln!(report, "/whoami alone: {}", baseline.line());
    let mut results = Vec::new();
    for storm in [
        ("wrong password", "not-the-password"),
        ("right password", PASSWORD),
    ] {
        let (line, value) = storm_phase(p, server.pid(), &api, &user, "victim", storm).await?;
        let _ = writeln!(report, "{line}");
        results.push(value);
    }
    Ok(json!({"whoami_alone_ms": baseline.json(), "storms": results}))
}

// ---------------------------------------------------------------------------
// Idle connections

/// Whether the server has closed `stream` (refused it, or dropped it since).
fn closed(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Sends one `GET /versions` on `stream` and reads its answer; an error when the server closes
/// the connection instead.
async fn one_request(stream: &tokio::net::TcpStream) -> Result<(), String> {
    let request = b"GET /_matrix/client/versions HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let mut sent = 0;
    while sent < request.len() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(&request[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.readable().await.map_err(|e| e.to_string())?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        if answer_complete(&answer) {
            return Ok(());
        }
    }
}

/// Whether `answer` holds a whole HTTP response with a `content-length` body.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}

/// Opens one connection from `source` to `server`, with one request unless `bare`.
async fn open_one(
    source: Ipv4Addr,
    server: SocketAddr,
    bare: bool,
) -> Result<tokio::net::TcpStream, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let t = Duration::from_secs(10);
    let stream = tokio::time::timeout(t, socket.connect(server))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    if !bare {
        tokio::time::timeout(t, one_request(&stream))
            .await
            .map_err(|_| "no answer".to_string())??;
    }
    Ok(stream)
}

/// Opens `count` connections from `source` at once; returns those the server kept after a
/// moment, and the first error of the others.
async fn open_batch(
    source: Ipv4Addr,
    server: SocketAddr,
    count: usize,
    bare: bool,
) -> (Vec<tokio::net::TcpStream>, Option<String>) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        set.spawn(open_one(source, server, bare));
    }
    let (mut kept, mut error) = (Vec::new(), None);
    while let Some(joined) = set.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(stream) => kept.push(stream),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    // A refused connection is accepted and closed at once: give the server a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    kept.retain(|stream| !closed(stream));
    (kept, error)
}

/// The two probe clients: one keep-alive connection opened before the fill, and a new
/// connection for every request from a fresh address.
struct Probe {
    kept: Api,
    fresh: Api,
}

impl Probe {
    /// Times `reps` `GET /versions` on each client and counts the failed ones (refusals).
    async fn run(&self, reps: usize, held: usize, rss_kb: u64) -> (String, Value) {
        let (mut kept, mut fresh) = (Vec::new(), Vec::new());
        let mut first_error = None;
        for _ in 0..reps {
            for (api, times) in [(&self.kept, &mut kept), (&self.fresh, &mut fresh)] {
                let start = Instant::now();
                let t = Duration::from_secs(10);
                match api.ok(Method::GET, VERSIONS, None, None, t).await {
                    Ok(_) => times.push(ms(start.elapsed())),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        let (kept_failed, fresh_failed) = (reps - kept.len(), reps - fresh.len());
        let (kept, fresh) = (Stats::of(kept), Stats::of(fresh));
        let line = format!(
            "{held:>6} held, RSS {:>4} MiB: /versions kept-alive p50 {} p99 {} ms, \
             {kept_failed} failed; new connection p50 {} p99 {} ms, {fresh_failed} of {reps} \
             failed{}",
            rss_kb / 1024,
            num(kept.p50, 2),
            num(kept.p99, 2),
            num(fresh.p50, 2),
            num(fresh.p99, 2),
            first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        let value = json!({"held": held, "rss_kb": rss_kb, "kept_alive_ms": kept.json(),
            "kept_alive_failed": kept_failed, "new_connection_ms": fresh.json(),
            "new_connection_failed": fresh_failed, "first_error": first_error});
        (line, value)
    }
}

/// What filling the server with idle connections found.
#[derive(Default)]
struct Fill {
    held: Vec<tokio::net::TcpStream>,
    /// Connections held from each source address, in order.
    per_address: Vec<usize>,
    stopped: String,
    first_error: Option<String>,
    probes: Vec<Value>,
}

/// Opens connections from 127.0.0.2 upwards until a fresh address is refused or `max_conns`
/// are held, probing at the checkpoints.
async fn fill(
    p: &Params,
    server: SocketAddr,
    probe: &Probe,
    pid: u32,
    report: &mut String,
) -> Fill {
    let mut out = Fill::default();
    let (mut address, mut from_address, mut checkpoint) = (2u8, 0usize, 0);
    let started = Instant::now();
    loop {
        while CHECKPOINTS
            .get(checkpoint)
            .is_some_and(|&at| out.held.len() >= at)
        {
            let (line, value) = probe
                .run(p.probes, out.held.len(), rss_of(pid).rss_kb)
                .await;
            let _ = writeln!(report, "{line}");
            out.probes.push(value);
            checkpoint += 1;
        }
        if out.held.len() >= p.max_conns || address >= PROBE_KEPT_IP.octets()[3] {
            out.stopped = format!("the bench's limit of {} connections", out.held.len());
            break;
        }
        let want = p.batch.min(p.max_conns - out.held.len());
        let source = Ipv4Addr::new(127, 0, 0, address);
        let (kept, error) = open_batch(source, server, want, p.bare).await;
        if let Some(e) = error {
            out.first_error.get_or_insert(format!("{source}: {e}"));
        }
        from_address += kept.len();
        let refused = kept.len() < want;
        out.held.extend(kept);
        if refused && from_address == 0 {
            out.stopped = format!("a fresh address ({source}) refused");
            break;
        }
        if refused {
            out.per_address.push(from_address);
            (address, from_address) = (address + 1, 0);
        }
    }
    if from_address > 0 {
        out.per_address.push(from_address);
    }
    let _ = writeln!(
        report,
        "filled in {:.1} s; stopped at {} held: {}; per address {:?}{}",
        started.elapsed().as_secs_f64(),
        out.held.len(),
        out.stopped,
        out.per_address,
        out.first_error
            .as_deref()
            .map(|e| format!("; first refusal: {e}"))
            .unwrap_or_default()
    );
    out
}

/// Phases 2 and 3: idle connections, the latency meanwhile, and memory per connection.
async fn connections(p: &Params, open_files: usize, report: &mut String) -> Result<Value, String> {
    let env = [("PLAIT_HTTP_HEADER_TIMEOUT_MS", IDLE_HEADER_TIMEOUT_MS)];
    let mut server = BenchServer::start_with(&bench_binary(), "abuse-conns", &env)?;
    let base: Arc<str> = Arc::from(server.base.as_str());
    let probe = Probe {
        kept: Api {
            http: http_client(Some(PROBE_KEPT_IP), true)?,
            base: base.clone(),
        },
        fresh: Api {
            http: http_client(Some(PROBE_FRESH_IP), false)?,
            base: base.clone(),
        },
    };
    server.wait_ready(&probe.fresh).await?;
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("server address {base}: {e}"))?;
    let pid = server.pid();
    // Warm up both clients and the server before the memory baseline.
    probe.run(p.probes, 0, 0).await;
    let max_conns = p.max_conns.min(open_files.saturating_sub(512));
    let p = Params { max_conns, ..*p };
    let rss_before = rss_of(pid).rss_kb;
    let mut filled = fill(&p, addr, &probe, pid, report).await;
    let (line, at_end) = probe
        .run(p.probes, filled.held.len(), rss_of(pid).rss_kb)
        .await;
    let _ = writeln!(report, "{line}  (at the end)");
    let rss_full = rss_of(pid).rss_kb;
    let held = filled.held.len();
    filled.held.retain(|stream| !closed(stream));
    let still_open = filled.held.len();
    drop(std::mem::take(&mut filled.held));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_of(pid).rss_kb;
    let (line, after) = probe.run(p.probes, 0, rss_after).await;
    // Long enough for the server to notice it has gone quiet (`memory_trim_quiet_ms`).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_settled = rss_of(pid).rss_kb;
    let per_connection = rss_full.saturating_sub(rss_before) as f64 / held.max(1) as f64;
    let _ = writeln!(report, "{line}  (all closed)");
    let _ = writeln!(
        report,
        "RSS: {rss_before} KiB before, {rss_full} KiB holding {held} ({still_open} still open at the \
         end), {rss_after} KiB after closing, {rss_settled} KiB 3 s later: {per_connection:.1} KiB \
         per idle connection"
    );
    Ok(
        json!({"mode": if p.bare { "bare" } else { "one request" }, "held": held,
        "still_open": still_open, "stopped": filled.stopped, "per_address": filled.per_address,
        "first_refusal": filled.first_error, "probes": filled.probes, "probe_at_end": at_end,
        "probe_after_close": after, "rss_before_kb": rss_before, "rss_full_kb": rss_full,
        "rss_after_kb": rss_after, "rss_settled_kb": rss_settled,
        "kib_per_connection": r3(per_connection)}),
    )
}

async fn run() -> Result<(), String> {
    let p = Params::from_env();
    let machine = machine_facts();
    let open_files = plait::http::listener::raise_open_file_limit().unwrap_or(1024);
    let mut report = String::new();
    let storms = storms(&p, &mut report).await?;
    let conns = connections(&p, open_files, &mut report).await?;
    println!(
        "abuse bench on {} ({} cores, load {}): {} logins {} at a time; idle connections {}",
        machine.cpu_model,
        machine.nproc,
        machine.loadavg,
        p.logins,
        p.concurrency,
        if p.bare { "bare" } else { "after one request" }
    );
    print!("{report}");
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "quick": p.quick, "loadavg": machine.loadavg,
            "login_storm": storms, "idle_connections": conns})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(30 * 60), run);
}
