//! Plait `server stats` benchmark (`cargo bench --bench admin_stats`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and, over the
//! client-server API only, registers `PLAIT_BENCH_USERS` (100,000) accounts and creates
//! `PLAIT_BENCH_ROOMS` (10,000) rooms, `PLAIT_BENCH_SENDERS` (16) requests at a time. The
//! accounts are registered without a password and without a device (`inhibit_login`), the
//! fastest path the registration endpoint offers: a password would spend most of the time in
//! argon2. Then it runs `server stats` `PLAIT_BENCH_REPS` (30) times through the control socket
//! (as `plait admin server stats` does) and prints the latency of each answer, with the counts
//! it showed (which must match what was created).
//! `PLAIT_BENCH_QUICK=1` makes 2,000 accounts and 200 rooms. Built as a test it prints
//! `admin_stats bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "admin_stats";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

/// Registers `username` with no password and no device: two requests (the dummy stage).
async fn register_bare(api: &Api, username: &str) -> Result<(), String> {
    const PATH: &str = "/_matrix/client/v3/register";
    let timeout = Duration::from_secs(60);
    let mut body = json!({ "username": username, "inhibit_login": true });
    let first = api
        .call(Method::POST, PATH, None, Some(&body), timeout)
        .await?;
    if first.status == 200 {
        return Ok(());
    }
    body["auth"] = json!({ "type": "m.login.dummy", "session": first.body["session"] });
    api.ok(Method::POST, PATH, None, Some(&body), timeout)
        .await
        .map(drop)
}

/// A field of the `server stats` reply as a number.
fn field(reply: &str, name: &str) -> Option<u64> {
    reply
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('\t'))
        .and_then(|value| value.trim().parse().ok())
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let users = env_usize("PLAIT_BENCH_USERS", if quick { 2_000 } else { 100_000 });
    let rooms = env_usize("PLAIT_BENCH_ROOMS", if quick { 200 } else { 10_000 });
    let senders = env_usize("PLAIT_BENCH_SENDERS", 16);
    let reps = env_usize("PLAIT_BENCH_REPS", 30);
    let machine = machine_facts();
    let (server, api) = BenchServer::start_ready(BENCH_LABEL).await?;
    // The first account is the server admin; the room creators have devices.
    let creators = all_ok(
        "creators",
        pool(senders, senders, {
            let api = api.clone();
            move |index| {
                let api = api.clone();
                async move { api.register(&format!("creator{index}")).await }
            }
        })
        .await,
    )?;
    let started = Instant::now();
    all_ok(
        "registrations",
        pool(users, senders, {
            let api = api.clone();
            move |index| {
                let api = api.clone();
                async move { register_bare(&api, &format!("user{index}")).await }
            }
        })
        .await,
    )?;
    let registering = started.elapsed();
    let started = Instant::now();
    let creators = Arc::new(creators);
    all_ok(
        "rooms",
        pool(rooms, senders, {
            let (api, creators) = (api.clone(), creators.clone());
            move |index| {
                let (api, creators) = (api.clone(), creators.clone());
                async move {
                    let creator = &creators[index % creators.len()];
                    api.create_room(creator, &format!("room {index}")).await
                }
            }
        })
        .await,
    )?;
    let creating = started.elapsed();
    let mut latencies = Vec::new();
    let mut last = String::new();
    for _ in 0..reps {
        let started = Instant::now();
        last = server.admin(&["server", "stats"]).await?;
        latencies.push(ms(started.elapsed()));
    }
    let shown_users = field(&last, "users").unwrap_or(0);
    let shown_rooms = field(&last, "rooms").unwrap_or(0);
    // Every account but none of the server's own, and the admin room with the created ones.
    let (want_users, want_rooms) = ((users + senders) as u64, rooms as u64 + 1);
    if (shown_users, shown_rooms) != (want_users, want_rooms) {
        return Err(format!(
            "server stats shows {shown_users} users and {shown_rooms} rooms, not {want_users} \
             and {want_rooms}:\n{last}"
        ));
    }
    let latency = Stats::of(latencies);
    println!(
        "admin_stats bench on {} ({} cores, load average {}): {} accounts registered in {:.0} s, \
         {rooms} rooms created in {:.0} s ({senders} at a time)",
        machine.cpu_model,
        machine.nproc,
        machine.loadavg,
        want_users,
        registering.as_secs_f64(),
        creating.as_secs_f64()
    );
    println!(
        "server stats through the control socket (ms): {}",
        latency.line()
    );
    println!("{last}");
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "users": want_users, "rooms": want_rooms,
            "register_s": r3(registering.as_secs_f64()), "create_s": r3(creating.as_secs_f64()),
            "stats_ms": latency.json(), "rss_kb": rss_of(server.pid()).rss_kb})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(3 * 60 * 60), run);
}
