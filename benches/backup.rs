//! Plait backup-while-sending benchmark (`cargo bench --bench backup`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and, over the
//! client-server API only:
//!
//! 1. grows the database to `PLAIT_BENCH_DB_MIB` (1,024) MiB on disk with events of a custom
//!    type carrying `PLAIT_BENCH_BODY_KIB` (32) KiB of random text each (not indexed for search,
//!    so that growing is quick), `PLAIT_BENCH_SENDERS` (16) at a time;
//! 2. measures the throughput of ordinary `m.room.message` sends (`PLAIT_BENCH_SENDERS` at a
//!    time) in windows of `PLAIT_BENCH_WINDOW_S` (30) seconds: `PLAIT_BENCH_ROUNDS` (3) times a
//!    window without a backup and one while `server backup create` runs back to back through
//!    the control socket (`PLAIT_BENCH_BACKUP_GAP_S`, default 0, seconds apart; each backup is
//!    deleted once taken, so that the disk does not fill),
//!    then a last window without;
//! 3. prints the throughputs, the backups taken with their durations, and the slowdown: the
//!    mean throughput with backups against the mean without.
//!
//! `PLAIT_BENCH_QUICK=1` grows the database to 64 MiB and measures one round of 10-second windows. Built as a
//! test it prints `backup bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is
//! set.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "backup";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

/// Bytes of every file under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => tree_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Random letters and spaces, `bytes` long, from a cheap generator seeded by `seed`.
fn filler(seed: usize, bytes: usize) -> String {
    let mut state = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match state % 28 {
                26 | 27 => ' ',
                letter => (b'a' + letter as u8) as char,
            }
        })
        .collect()
}

/// Sends events of `event_type` with `content(index)` from `senders` tasks until `stop` is set
/// or `limit` events were sent; answers how many were sent.
async fn send_until(
    api: &Api,
    user: &User,
    room: &str,
    senders: usize,
    (event_type, content): (&str, fn(usize) -> Value),
    stop: Arc<AtomicBool>,
    limit: usize,
) -> Result<usize, String> {
    static NEXT_TXN: AtomicUsize = AtomicUsize::new(0);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (api, user, sent, stop) = (api.clone(), user.clone(), sent.clone(), stop.clone());
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/",
            enc(room),
            enc(event_type)
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < limit {
                let txn = NEXT_TXN.fetch_add(1, Ordering::Relaxed);
                let body = content(txn);
                let path = format!("{path}t{txn}");
                let token = Some(&*user.token);
                api.ok(
                    Method::PUT,
                    &path,
                    token,
                    Some(&body),
                    Duration::from_secs(120),
                )
                .await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

fn blob(index: usize) -> Value {
    let kib = env_usize("PLAIT_BENCH_BODY_KIB", 32);
    json!({ "blob": filler(index, kib * 1024) })
}

fn message(index: usize) -> Value {
    json!({"msgtype": "m.text",
        "body": format!("backup bench message {index}: a line of ordinary chat")})
}

/// Sends messages for `window` and answers the events per second; with `backups`, takes
/// backups back to back meanwhile and answers their durations (ms).
async fn measure(
    bench: &Bench,
    window: Duration,
    backups: bool,
) -> Result<(f64, Vec<f64>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sending = send_until(
        &bench.api,
        &bench.user,
        &bench.room,
        bench.senders,
        ("m.room.message", message),
        stop.clone(),
        usize::MAX,
    );
    let backing_up = async {
        let mut durations = Vec::new();
        while backups && started.elapsed() < window {
            let began = Instant::now();
            let reply = bench.server.admin(&["server", "backup", "create"]).await?;
            durations.push(ms(began.elapsed()));
            if !reply.starts_with("backup ") {
                return Err(format!("backup create answered: {reply}"));
            }
            let folder = bench.server.dir().join("db-backups");
            let _ = std::fs::remove_dir_all(&folder);
            tokio::time::sleep(bench.gap.min(window.saturating_sub(started.elapsed()))).await;
        }
        tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        Ok::<_, String>(durations)
    };
    let (sent, durations) = tokio::join!(sending, backing_up);
    let elapsed = started.elapsed().as_secs_f64();
    Ok((sent? as f64 / elapsed, durations?))
}

struct Bench {
    server: BenchServer,
    api: Api,
    user: User,
    room: String,
    senders: usize,
    /// The pause between two backups (none: back to back).
    gap: Duration,
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let target_mib = env_usize("PLAIT_BENCH_DB_MIB", if quick { 64 } else { 1024 });
    let window =
        Duration::from_secs(env_usize("PLAIT_BENCH_WINDOW_S", if quick { 10 } else { 30 }) as u64);
    let senders = env_usize("PLAIT_BENCH_SENDERS", 16);
    let rounds = env_usize("PLAIT_BENCH_ROUNDS", if quick { 1 } else { 3 });
    let machine = machine_facts();
    let (server, api) = BenchServer::start_ready(BENCH_LABEL).await?;
    let user = api.register("sender").await?;
    let room = api.create_room(&user, "plait backup bench").await?;
    let bench = Bench {
        server,
        api,
        user,
        room,
        senders,
        gap: Duration::from_secs(env_usize("PLAIT_BENCH_BACKUP_GAP_S", 0) as u64),
    };
    let db = bench.server.dir().join("db");
    let started = Instant::now();
    let mut grown = 0;
    while tree_bytes(&db) < (target_mib as u64) << 20 {
        let stop = Arc::new(AtomicBool::new(false));
        grown += send_until(
            &bench.api,
            &bench.user,
            &bench.room,
            senders,
            ("org.plait.bench.blob", blob),
            stop,
            1000,
        )
        .await?;
    }
    let growing = started.elapsed();
    let db_bytes = tree_bytes(&db);
    // Windows with and without backups alternate, so that the machine's drift (other work on
    // it, compactions of the grown database) falls on both alike.
    let (mut without_rates, mut with_rates, mut durations) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        without_rates.push(measure(&bench, window, false).await?.0);
        let (rate, taken) = measure(&bench, window, true).await?;
        with_rates.push(rate);
        durations.extend(taken);
    }
    without_rates.push(measure(&bench, window, false).await?.0);
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    let (without, during) = (mean(&without_rates), mean(&with_rates));
    let slowdown = 100.0 * (1.0 - during / without);
    let backups = Stats::of(durations);
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "backup bench on {} ({} cores, load average {}): database grown to {:.0} MiB with {grown} \
         events in {:.0} s; {senders} senders, {}-second windows",
        machine.cpu_model,
        machine.nproc,
        machine.loadavg,
        db_bytes as f64 / (1024.0 * 1024.0),
        growing.as_secs_f64(),
        window.as_secs()
    );
    println!(
        "sends/s without a backup {} (mean {without:.0}), with backups {} s apart {} (mean \
         {during:.0}): slowdown {slowdown:.1} %",
        list(&without_rates),
        bench.gap.as_secs(),
        list(&with_rates)
    );
    println!("backup durations (ms): {}", backups.line());
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "db_bytes": db_bytes, "grown_events": grown,
            "senders": senders, "window_s": window.as_secs(), "without": without_rates,
            "with": with_rates, "slowdown_pct": r3(slowdown),
            "backup_ms": backups.json()})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(3 * 60 * 60), run);
}
