//! Plait sliding-sync benchmark (`cargo bench --bench sliding`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh database; a user joins `PLAIT_BENCH_ROOMS`
//! (1,000) rooms, each with a name and a few messages. Then it measures, over the client-server
//! API only:
//!
//! 1. the *first* simplified sliding-sync response (MSC4186, no `pos`) for Element X's room list
//!    request: a list window of 20 rooms (`[0, 19]`), `timeline_limit` 1 and Element X's
//!    `required_state`;
//! 2. an *incremental* response after one new message in one of the rooms (with `pos`,
//!    `timeout=0`), which must carry that room;
//! 3. the *memory per connection*: the server's RSS before and after opening
//!    `PLAIT_BENCH_CONNECTIONS` (20) connections (each a first response and one incremental
//!    one), divided by their number, once with the 20-room window and once with a window over
//!    every room (what Element X's growing list ends at);
//! 4. for comparison, the same user's initial `/sync` v3 with lazy-loaded members and a
//!    timeline of 1 event per room (what a v3 client with a light filter gets), and without a
//!    filter.
//!
//! `PLAIT_BENCH_QUICK=1` makes 200 rooms and fewer repetitions; `PLAIT_BENCH_REPS` (30) sets the
//! repetitions. Built as a test it prints `sliding bench: skipped` unless `PLAIT_BENCH_QUICK` or
//! `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "sliding";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";
const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// Messages per room before the measurements.
const MESSAGES_PER_ROOM: usize = 3;

mod common;
use common::*;

/// Element X's room list request (matrix-sdk-ui's `RoomListService`) over `range`.
fn room_list_request(conn_id: &str, range: (usize, usize)) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[range.0, range.1]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""],
                ["m.room.tombstone", ""], ["m.room.create", ""],
                ["m.room.history_visibility", ""], ["io.element.functional_members", ""],
                ["m.space.parent", "*"], ["m.space.child", "*"], ["m.beacon_info", "*"],
            ],
        } },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

/// One sliding-sync request; the reply and how long it took.
async fn slide(
    api: &Api,
    user: &User,
    pos: Option<&str>,
    body: &Value,
) -> Result<(Reply, f64), String> {
    let path = match pos {
        Some(pos) => format!("{PATH}?timeout=0&pos={}", enc(pos)),
        None => PATH.to_owned(),
    };
    let start = Instant::now();
    let reply = api
        .ok(
            Method::POST,
            &path,
            Some(&user.token),
            Some(body),
            Duration::from_secs(120),
        )
        .await?;
    let took = ms(reply.at - start);
    Ok((reply, took))
}

fn pos_of(reply: &Reply) -> Result<String, String> {
    reply.body["pos"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no pos in {}", short(&reply.body)))
}

/// Creates `count` named rooms for `user`, 4 at a time, each with a few messages.
async fn fill(api: &Arc<Api>, user: &User, count: usize) -> Result<Vec<String>, String> {
    let (api, user) = (api.clone(), user.clone());
    all_ok(
        "fill",
        pool(count, 4, move |index| {
            let (api, user) = (api.clone(), user.clone());
            async move {
                let room = api.create_room(&user, &format!("room {index}")).await?;
                for message in 0..MESSAGES_PER_ROOM {
                    let content =
                        json!({"msgtype": "m.text", "body": format!("message {message}")});
                    api.send(&user, &room, &format!("f{message}"), &content)
                        .await?;
                }
                Ok(room)
            }
        })
        .await,
    )
}

/// The RSS growth per connection over `connections` new connections, each given a first
/// response and an incremental one, in KiB.
async fn memory_per_connection(
    api: &Api,
    user: &User,
    pid: u32,
    label: &str,
    range: (usize, usize),
    connections: usize,
) -> Result<f64, String> {
    let before = rss_of(pid).rss_kb;
    for index in 0..connections {
        let body = room_list_request(&format!("{label}-{index}"), range);
        let (first, _) = slide(api, user, None, &body).await?;
        let pos = pos_of(&first)?;
        slide(api, user, Some(&pos), &body).await?;
    }
    let after = rss_of(pid).rss_kb;
    Ok(after.saturating_sub(before) as f64 / connections.max(1) as f64)
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let rooms = env_usize("PLAIT_BENCH_ROOMS", if quick { 200 } else { 1000 });
    let reps = env_usize("PLAIT_BENCH_REPS", if quick { 10 } else { 30 }).max(1);
    let connections = env_usize("PLAIT_BENCH_CONNECTIONS", 20).clamp(1, 24);
    let machine = machine_facts();
    println!(
        "plait sliding-sync benchmark{}: a user in {rooms} rooms",
        if quick { " (QUICK mode)" } else { "" }
    );
    println!(
        "machine: {} CPUs, {}, load average {}",
        machine.nproc, machine.cpu_model, machine.loadavg
    );
    let (server, api) = BenchServer::start_ready(BENCH_LABEL).await?;
    let api = Arc::new(api);
    // The first account becomes the admin and is invited to the admin room: not the measured one.
    api.register("admin").await?;
    let alice = api.register("alice").await?;
    let start = Instant::now();
    let room_ids = fill(&api, &alice, rooms).await?;
    eprintln!(
        "created {rooms} rooms with {MESSAGES_PER_ROOM} messages each in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // 1. First responses, each on a connection started over (no pos).
    let body = room_list_request("room-list", (0, 19));
    slide(&api, &alice, None, &body).await?;
    let mut first_times = Vec::new();
    let mut first_bytes = 0;
    for _ in 0..reps {
        let (reply, took) = slide(&api, &alice, None, &body).await?;
        let listed = reply.body["rooms"]
            .as_object()
            .map_or(0, |rooms| rooms.len());
        if listed != 20.min(rooms) {
            return Err(format!("the first response lists {listed} rooms"));
        }
        first_bytes = reply.bytes;
        first_times.push(took);
    }
    let first = Stats::of(first_times);

    // 2. Incremental responses after one new message each.
    let (reply, _) = slide(&api, &alice, None, &body).await?;
    let mut pos = pos_of(&reply)?;
    let mut incremental_times = Vec::new();
    for rep in 0..reps {
        let room = &room_ids[(rep * 37) % room_ids.len()];
        let content = json!({"msgtype": "m.text", "body": format!("news {rep}")});
        api.send(&alice, room, &format!("news{rep}"), &content)
            .await?;
        let (reply, took) = slide(&api, &alice, Some(&pos), &body).await?;
        if reply.body["rooms"].get(room.as_str()).is_none() {
            return Err(format!(
                "the incremental response lacks {room}: {}",
                short(&reply.body)
            ));
        }
        pos = pos_of(&reply)?;
        incremental_times.push(took);
    }
    let incremental = Stats::of(incremental_times);

    // 3. Memory per connection.
    let pid = server.pid();
    let window_kb =
        memory_per_connection(&api, &alice, pid, "window", (0, 19), connections).await?;
    let full_kb =
        memory_per_connection(&api, &alice, pid, "full", (0, rooms - 1), connections).await?;

    // 4. The initial /sync v3 for comparison.
    let light = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}})
        .to_string();
    let mut v3 = Vec::new();
    for filter in [Some(light.as_str()), None] {
        let sync_reps = if quick { 2 } else { 5 };
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..sync_reps {
            let start = Instant::now();
            let reply = api
                .sync(&alice, filter, None, 0, Duration::from_secs(300))
                .await?;
            times.push(ms(reply.at - start));
            bytes = reply.bytes;
        }
        v3.push((Stats::of(times), bytes));
    }

    println!("first sliding-sync response, window [0,19] of {rooms} rooms (ms): {}  ({first_bytes} bytes)", first.line());
    println!(
        "incremental response after one new message (ms): {}",
        incremental.line()
    );
    println!(
        "memory per connection (RSS growth over {connections} connections): {window_kb:.0} KiB with the 20-room window, {full_kb:.0} KiB with a window over all {rooms} rooms"
    );
    println!(
        "initial /sync v3, timeline limit 1 and lazy members (ms): {}  ({} bytes)",
        v3[0].0.line(),
        v3[0].1
    );
    println!(
        "initial /sync v3 without a filter (ms): {}  ({} bytes)",
        v3[1].0.line(),
        v3[1].1
    );
    let report = json!({
        "bench": BENCH_LABEL, "quick": quick, "rooms": rooms, "reps": reps,
        "loadavg": machine.loadavg,
        "first": first.json(), "first_bytes": first_bytes,
        "incremental": incremental.json(),
        "kib_per_connection": { "window_20": r3(window_kb), "window_all": r3(full_kb) },
        "sync_v3_light": v3[0].0.json(), "sync_v3_light_bytes": v3[0].1,
        "sync_v3_unfiltered": v3[1].0.json(), "sync_v3_unfiltered_bytes": v3[1].1,
    });
    println!("BENCH_JSON {report}");
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(60 * 60), run);
}
