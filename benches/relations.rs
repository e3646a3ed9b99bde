//! Plait relations benchmark (`cargo bench --bench relations`); see docs/performance.md.
//!
//! Measures what bundled aggregations cost `/messages`. It starts the plait binary on
//! 127.0.0.1 with a fresh database and fills two rooms through the client-server API:
//!
//! - the *relations* room: 10,000 events in chunks of 100 messages, each chunk followed by
//!   two reactions (two users, same key) and one edit for every other message of the chunk
//!   (4,000 messages, 4,000 reactions, 2,000 edits), so that every page holds events with
//!   aggregations;
//! - the *plain* room: 10,000 messages without relations.
//!
//! Then it pages through each room backwards with `GET /messages?limit=100`, several passes,
//! timing every page. The plain room's pages are the baseline "without aggregations": they
//! still pay the one empty index seek per event, which is part of the measured difference's
//! floor, not of the figure.
//!
//! Parameters (environment): `PLAIT_BENCH_QUICK=1` (1,000 events per room, one pass),
//! `PLAIT_BENCH_RELATIONS_EVENTS` (events per room, rounded to chunks of 250),
//! `PLAIT_BENCH_PASSES`, `PLAIT_BIN`, `PLAIT_BENCH_KEEP_DATA=1`.

use std::fmt::Write as _;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "relations";
/// Event content keys that mark a benchmark message (used by the shared sender).
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";
/// Messages per chunk; each chunk adds 100 reactions and 50 edits.
const CHUNK: usize = 100;
const PAGE: usize = 100;
/// The one "hot" message gets a reaction from each of `HOT_SENDERS` users with each of
/// `HOT_KEYS` keys.
const HOT_SENDERS: usize = 20;
const HOT_KEYS: usize = 50;

mod common;
use common::*;

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_bool(name: &str) -> bool {
    matches!(env_str(name).as_deref(), Some("1" | "true" | "yes" | "on"))
}

fn env_num(name: &str, default: usize) -> usize {
    env_str(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Sends one event and returns its ID.
async fn put_event(
    api: &Api,
    user: &User,
    room: &str,
    kind: &str,
    txn: &str,
    content: &Value,
) -> Result<String, String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/{kind}/{}",
        enc(room),
        enc(txn)
    );
    let reply = api
        .ok(
            Method::PUT,
            &path,
            Some(&user.token),
            Some(content),
            Duration::from_secs(60),
        )
        .await?;
    reply.body["event_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("PUT {path} without event_id"))
}

/// Sends `count` events built by `make(i)` with 4 in flight; returns their IDs in order.
async fn send_all(
    api: &Api,
    user: &User,
    room: &str,
    count: usize,
    make: impl Fn(usize) -> (String, String, Value) + Send + Sync + 'static,
) -> Result<Vec<String>, String> {
    let (api, user, room) = (api.clone(), user.clone(), room.to_owned());
    let make = Arc::new(make);
    all_ok(
        "send",
        pool(count, 4, move |i| {
            let (api, user, room, make) = (api.clone(), user.clone(), room.clone(), make.clone());
            async move {
                let (kind, txn, content) = make(i);
                put_event(&api, &user, &room, &kind, &txn, &content).await
            }
        })
        .await,
    )
}

/// Fills the relations room: per chunk, 100 messages, then for every other one two reactions
/// (alice and bob) and an edit by alice.
async fn fill_relations_room(
    api: &Api,
    alice: &User,
    bob: &User,
    room: &str,
    chunks: usize,
) -> Result<(), String> {
    for chunk in 0..chunks {
        let messages = send_all(api, alice, room, CHUNK, move |i| {
            let body = format!("message {chunk}-{i}");
            (
                "m.room.message".into(),
                format!("m{chunk}-{i}"),
                json!({"msgtype": "m.text", "body": body}),
            )
        })
        .await?;
        let targets: Arc<Vec<String>> = Arc::new(messages.into_iter().step_by(2).collect());
        for (user, label) in [(alice, "a"), (bob, "b")] {
            let targets = targets.clone();
            send_all(api, user, room, targets.len(), move |i| {
                (
                    "m.reaction".into(),
                    format!("r{label}{chunk}-{i}"),
                    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": targets[i], "key": "👍"}}),
                )
            })
            .await?;
        }
        let targets = targets.clone();
        send_all(api, alice, room, targets.len(), move |i| {
            (
                "m.room.message".into(),
                format!("e{chunk}-{i}"),
                json!({"msgtype": "m.text", "body": "* edited",
                       "m.new_content": {"msgtype": "m.text", "body": "edited"},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": targets[i]}}),
            )
        })
        .await?;
    }
    Ok(())
}

/// What paging through one room measured.
struct Paging {
    pages: Stats,
    per_event_us: f64,
    events: usize,
    bundled: usize,
    bytes_per_page: f64,
}

/// Pages through a room backwards `passes` times; each page request is timed alone.
async fn page_through(api: &Api, user: &User, room: &str, passes: usize) -> Result<Paging, String> {
    let mut times = Vec::new();
    let (mut events, mut bundled, mut bytes) = (0, 0, 0);
    for _ in 0..passes {
        let mut from: Option<String> = None;
        loop {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={PAGE}",
                enc(room)
            );
            if let Some(from) = &from {
                let _ = write!(path, "&from={}", enc(from));
            }
            let start = Instant::now();
            let reply = api
                .ok(
                    Method::GET,
                    &path,
                    Some(&user.token),
                    None,
                    Duration::from_secs(60),
                )
                .await?;
            times.push(ms(reply.at - start));
            let chunk = reply.body["chunk"].as_array().cloned().unwrap_or_default();
            events += chunk.len();
            bytes += reply.bytes;
            bundled += chunk
                .iter()
                .filter(|event| event["unsigned"].get("m.relations").is_some())
                .count();
            match reply.body["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
    }
    let total_ms: f64 = times.iter().sum();
    let pages = times.len();
    Ok(Paging {
        pages: Stats::of(times),
        per_event_us: total_ms * 1000.0 / events.max(1) as f64,
        events,
        bundled,
        bytes_per_page: bytes as f64 / pages.max(1) as f64,
    })
}

async fn run() -> Result<(), String> {
    let quick = env_bool("PLAIT_BENCH_QUICK");
    let events = env_num(
        "PLAIT_BENCH_RELATIONS_EVENTS",
        if quick { 1_000 } else { 10_000 },
    );
    let passes = env_num("PLAIT_BENCH_PASSES", if quick { 1 } else { 3 }).max(1);
    let chunks = (events / 250).max(1);
    let machine = machine_facts();
    println!(
        "plait relations benchmark{}",
        if quick { " (QUICK mode)" } else { "" }
    );
    println!(
        "machine: {} CPUs, {}, load average {}",
        machine.nproc, machine.cpu_model, machine.loadavg
    );
    let bin = bench_binary();
    let mut server = BenchServer::start(&bin, "relations")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let api = Api {
        http,
        base: server.base.clone().into(),
    };
    server.wait_ready(&api).await?;
    let alice = api.register("alice").await?;
    let bob = api.register("bob").await?;
    let relations_room = api.create_room(&alice, "relations").await?;
    let plain_room = api.create_room(&alice, "plain").await?;
    api.join(&bob, &relations_room).await?;
    api.join(&bob, &plain_room).await?;

    let start = Instant::now();
    fill_relations_room(&api, &alice, &bob, &relations_room, chunks).await?;
    eprintln!(
        "filled the relations room ({} events) in {:.1} s",
        chunks * 250,
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    send_all(&api, &alice, &plain_room, chunks * 250, |i| {
        (
            "m.room.message".into(),
            format!("p{i}"),
            json!({"msgtype": "m.text", "body": format!("plain {i}")}),
        )
    })
    .await?;
    eprintln!(
        "filled the plain room in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Warm the caches once, then measure both rooms alternately.
    page_through(&api, &bob, &plain_room, 1).await?;
    page_through(&api, &bob, &relations_room, 1).await?;
    let plain = page_through(&api, &bob, &plain_room, passes).await?;
    let with = page_through(&api, &bob, &relations_room, passes).await?;

    // The worst case of the one-seek design: one event with many children, served alone.
    let hot_room = api.create_room(&alice, "hot").await?;
    let hot = put_event(
        &api,
        &alice,
        &hot_room,
        "m.room.message",
        "hot",
        &json!({"msgtype": "m.text", "body": "popular"}),
    )
    .await?;
    for sender in 0..HOT_SENDERS {
        let user = api.register(&format!("fan{sender}")).await?;
        api.join(&user, &hot_room).await?;
        let hot_target = hot.clone();
        send_all(&api, &user, &hot_room, HOT_KEYS, move |i| {
            (
                "m.reaction".into(),
                format!("h{i}"),
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hot_target, "key": format!("k{i}")}}),
            )
        })
        .await?;
    }
    let hot_path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&hot_room),
        enc(&hot)
    );
    let mut hot_times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let reply = api
            .ok(
                Method::GET,
                &hot_path,
                Some(&alice.token),
                None,
                Duration::from_secs(60),
            )
            .await?;
        hot_times.push(ms(reply.at - start));
    }
    let hot_stats = Stats::of(hot_times);

    println!("/messages?dir=b&limit={PAGE}, {passes} passes over each room (ms per page):");
    for (name, paging) in [("plain room", &plain), ("relations room", &with)] {
        println!(
            "  {name:<15} {}  mean {:.2}  per event {:.1} µs  {} events, {} with m.relations, {:.0} bytes/page",
            paging.pages.line(),
            paging.pages.mean,
            paging.per_event_us,
            paging.events,
            paging.bundled,
            paging.bytes_per_page
        );
    }
    println!(
        "  aggregation cost: {:+.2} ms per page at the median ({:+.1} µs per event served)",
        with.pages.p50 - plain.pages.p50,
        with.per_event_us - plain.per_event_us
    );
    println!(
        "GET /event of a message with {} reactions ({HOT_KEYS} keys x {HOT_SENDERS} senders): {}",
        HOT_KEYS * HOT_SENDERS,
        hot_stats.line()
    );
    let report = json!({
        "bench": BENCH_LABEL, "quick": quick, "events_per_room": chunks * 250, "passes": passes,
        "loadavg": machine.loadavg,
        "plain": { "pages": plain.pages.json(), "per_event_us": r3(plain.per_event_us), "bundled": plain.bundled },
        "relations": { "pages": with.pages.json(), "per_event_us": r3(with.per_event_us), "bundled": with.bundled },
        "hot_event": hot_stats.json(),
    });
    println!("BENCH_JSON {report}");
    if with.bundled == 0 || plain.bundled != 0 {
        return Err("expected bundles in the relations room only".into());
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not. Run only when asked.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    if !bench_mode && !env_bool("PLAIT_BENCH_QUICK") && !env_bool("PLAIT_BENCH_FORCE") {
        println!("relations bench: skipped (run `cargo bench --bench relations`, or set PLAIT_BENCH_QUICK=1)");
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relations bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(1800), run()).await {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("relations bench failed: {e}");
                1
            }
            Err(_) => {
                eprintln!("relations bench: time limit exceeded");
                1
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
