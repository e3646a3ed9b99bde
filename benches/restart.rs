//! Plait restart benchmark (`cargo bench --bench restart`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and sends
//! `m.room.message` events into one room with `PLAIT_BENCH_SENDERS` (16) concurrent senders.
//! Each time the room holds one of the counts in `PLAIT_BENCH_CHECKPOINTS` (1,000, 10,000,
//! 50,000 and 100,000 events), it sends one marker message, kills the server with SIGKILL (as
//! a crash or the OOM killer would: no shutdown, no memtable flush) and starts it again on the
//! same database, then reports:
//!
//! - the database on disk at the kill: its write-ahead log files (`*.log`) and everything,
//! - the time from the new process's start until `GET /_matrix/client/versions` answers, and
//!   until `GET /rooms/{roomId}/messages` returns the marker (the log replayed and readable),
//! - the server's RSS at that point.
//!
//! Restart time should not grow with the events stored: start-up replays at most the log that
//! is left (capped at 64 MiB) and reads no table whole.
//! `PLAIT_BENCH_QUICK=1` stops at 1,000 and 5,000 events. Built as a test it prints
//! `restart bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "restart";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

/// Bytes of the files in `dir` whose names end in `suffix` (all of them for ""), and their number.
fn files_in(dir: &Path, suffix: &str) -> (u64, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .fold((0, 0), |(bytes, count), metadata| {
            (bytes + metadata.len(), count + 1)
        })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sends events `from..to` into `room`, `senders` at a time.
async fn send_range(
    api: &Api,
    user: &User,
    room: &str,
    from: usize,
    to: usize,
    senders: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (api, user, next) = (api.clone(), user.clone(), next.clone());
        let room = room.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= to {
                    return Ok::<(), String>(());
                }
                let body = json!({"msgtype": "m.text",
                    "body": format!("restart bench message {index}: a line of ordinary chat")});
                api.send(&user, &room, &format!("m{index}"), &body).await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A client with no pooled connection to the killed process.
fn fresh_api(base: &str) -> Result<Api, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    Ok(Api {
        http,
        base: Arc::from(base),
    })
}

/// The body of the room's newest event, read through `/messages`.
async fn newest_body(api: &Api, user: &User, room: &str) -> Option<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        enc(room)
    );
    let reply = api.get(user, &path).await.ok()?;
    reply.body["chunk"][0]["content"]["body"]
        .as_str()
        .map(str::to_owned)
}

/// The server, its room and the user that sends into it.
struct Bench {
    server: BenchServer,
    api: Api,
    user: User,
    room: String,
}

impl Bench {
    async fn start() -> Result<Self, String> {
        let mut server = BenchServer::start(&bench_binary(), BENCH_LABEL)?;
        let api = fresh_api(&server.base)?;
        server.wait_ready(&api).await?;
        let user = api.register("restarter").await?;
        let room = api.create_room(&user, "plait restart bench").await?;
        Ok(Self {
            server,
            api,
            user,
            room,
        })
    }

    /// Sends a marker once `sent` events are in, kills the server, starts it again and times
    /// it; a table row and its JSON.
    async fn restart_after(&mut self, sent: usize) -> Result<(String, Value), String> {
        let marker = format!("restart bench marker after {sent} events");
        let content = json!({"msgtype": "m.text", "body": marker});
        let (api, user, room) = (&self.api, &self.user, &self.room);
        api.send(user, room, &format!("marker{sent}"), &content)
            .await?;
        let db = self.server.dir().join("db");
        let (wal_bytes, wal_files) = files_in(&db, ".log");
        let (sst_bytes, sst_files) = files_in(&db, ".sst");
        let (db_bytes, _) = files_in(&db, "");
        self.server.kill_and_restart()?;
        let started = Instant::now();
        self.api = fresh_api(&self.server.base)?;
        self.server.wait_ready(&self.api).await?;
        let versions = started.elapsed();
        while newest_body(&self.api, user, room).await.as_ref() != Some(&marker) {
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("the marker after {sent} events is not readable"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let readable = started.elapsed();
        let rss = rss_of(self.server.pid());
        let row = format!(
            "{sent:>8} events  log {:>5.1} MiB in {wal_files} files  tables {:>6.1} MiB in \
             {sst_files:>3}  all {:>6.1} MiB  /versions after {:>5.0} ms  marker read after \
             {:>5.0} ms  RSS {:>5.1} MiB",
            mib(wal_bytes),
            mib(sst_bytes),
            mib(db_bytes),
            ms(versions),
            ms(readable),
            rss.rss_kb as f64 / 1024.0,
        );
        let value = json!({"events": sent, "wal_bytes": wal_bytes, "wal_files": wal_files,
            "sst_bytes": sst_bytes, "sst_files": sst_files, "db_bytes": db_bytes,
            "versions_ms": r3(ms(versions)), "marker_ms": r3(ms(readable)),
            "rss_kb": rss.rss_kb});
        Ok((row, value))
    }
}

fn checkpoints(quick: bool) -> Result<Vec<usize>, String> {
    match std::env::var("PLAIT_BENCH_CHECKPOINTS") {
        Ok(list) => list
            .split(',')
            .map(|count| count.trim().parse().map_err(|e| format!("{count}: {e}")))
            .collect(),
        Err(_) if quick => Ok(vec![1_000, 5_000]),
        Err(_) => Ok(vec![1_000, 10_000, 50_000, 100_000]),
    }
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let senders = env_usize("PLAIT_BENCH_SENDERS", 16);
    let machine = machine_facts();
    let mut bench = Bench::start().await?;
    let mut table = String::new();
    let mut results = Vec::new();
    let mut sent = 0;
    let start = Instant::now();
    for checkpoint in checkpoints(quick)? {
        let to = checkpoint.max(sent);
        send_range(&bench.api, &bench.user, &bench.room, sent, to, senders).await?;
        sent = to;
        let (row, value) = bench.restart_after(sent).await?;
        let _ = writeln!(table, "{row}");
        results.push(value);
    }
    println!(
        "restart bench on {} ({} cores, load average {}): {senders} senders, {:.0} s in all",
        machine.cpu_model,
        machine.nproc,
        machine.loadavg,
        start.elapsed().as_secs_f64()
    );
    print!("{table}");
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "senders": senders, "restarts": results})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(60 * 60), run);
}
