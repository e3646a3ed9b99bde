//! Plait stories, retention and privacy benchmark (`cargo bench --bench stories`); see
//! docs/performance.md, "Stories, retention and privacy".
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and a retention job
//! every 200 ms, and over the client-server API only:
//! - `retention`: fills a room with `PLAIT_BENCH_EVENTS` (100,000) messages, measures send
//!   latency into that room and into a quiet one, then gives the room a 1 s `max_lifetime` and
//!   measures the same sends while the job purges it (until `server stats` counts the events
//!   gone); prints the purge time and both p99s.
//! - `stories`: `PLAIT_BENCH_CONTACTS` (500) users each post a story in their story room, which
//!   one viewer joined; times `PLAIT_BENCH_LISTINGS` (50) `GET /_plait/client/v1/stories` for
//!   the viewer, with the server's CPU time per listing (`/proc/PID/stat`).
//! - `privacy`: the same 500 are online; times the viewer's presence fan-out (an initial
//!   `/sync` whose presence section lists them) with no privacy settings, then with every one
//!   on `last_seen: contacts` (the viewer is no contact, so each is checked and left out).
//!   `PLAIT_BIN` names another binary (such as main's, without the privacy check) for the
//!   baseline; `PLAIT_BENCH_PHASES` (`retention,stories,privacy`) picks phases.
//!
//! `PLAIT_BENCH_QUICK=1` makes 5,000 events and 50 contacts. Built as a test it prints
//! `stories bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "stories";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    bench_main(Duration::from_secs(40 * 60), run);
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let events = env_usize("PLAIT_BENCH_EVENTS", if quick { 5_000 } else { 100_000 });
    let contacts = env_usize("PLAIT_BENCH_CONTACTS", if quick { 50 } else { 500 });
    let phases = std::env::var("PLAIT_BENCH_PHASES")
        .unwrap_or_else(|_| "retention,stories,privacy".to_owned());
    let machine = machine_facts();
    println!(
        "machine: {} ({} cores), load {}",
        machine.cpu_model, machine.nproc, machine.loadavg
    );
    let mut server = BenchServer::start_with(
        &bench_binary(),
        BENCH_LABEL,
        &[("PLAIT_RETENTION_PURGE_INTERVAL_MS", "200")],
    )?;
    let api = Api {
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("http client: {e}"))?,
        base: Arc::from(server.base.as_str()),
    };
    server.wait_ready(&api).await?;
    // The first account is the server admin.
    api.register("admin").await?;
    if phases.contains("retention") {
        retention(&api, &server, events).await?;
    }
    if phases.contains("stories") || phases.contains("privacy") {
        let (viewer, owners) = story_rooms(&api, contacts).await?;
        if phases.contains("stories") {
            stories(&api, &viewer, contacts, server.pid()).await?;
        }
        if phases.contains("privacy") {
            privacy(&api, &viewer, &owners).await?;
        }
    }
    Ok(())
}

async fn create_room(api: &Api, user: &User, body: Value) -> Result<String, String> {
    let reply = api
        .ok(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&user.token),
            Some(&body),
            TIMEOUT,
        )
        .await?;
    Ok(reply.body["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Sends one text message; answers how long it took.
async fn send(api: &Api, user: &User, room: &str, txn: &str) -> Result<Duration, String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        enc(room)
    );
    let body = json!({"msgtype": "m.text", "body": format!("message {txn}")});
    let started = Instant::now();
    api.ok(Method::PUT, &path, Some(&user.token), Some(&body), TIMEOUT)
        .await?;
    Ok(started.elapsed())
}

/// `server stats`' `events` count.
async fn event_count(server: &BenchServer) -> Result<u64, String> {
    let reply = server.admin(&["server", "stats"]).await?;
    reply
        .lines()
        .find_map(|line| line.strip_prefix("events\t"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no events count in {reply}"))
}

/// Sends into `rooms` in turn every 5 ms until `stop` is set; answers each room's latencies.
async fn probe(
    api: &Api,
    user: &User,
    rooms: &[String],
    label: &str,
    stop: impl Future<Output = ()>,
) -> Result<Vec<Vec<f64>>, String> {
    let mut latencies = vec![Vec::new(); rooms.len()];
    tokio::pin!(stop);
    for index in 0.. {
        for (room, found) in rooms.iter().zip(&mut latencies) {
            let took = send(api, user, room, &format!("{label}-{index}")).await?;
            found.push(ms(took));
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    Ok(latencies)
}

async fn retention(api: &Api, server: &BenchServer, events: usize) -> Result<(), String> {
    let owner = api.register("retention").await?;
    let prober = api.register("prober").await?;
    let busy = create_room(api, &owner, json!({"preset": "public_chat"})).await?;
    let quiet = create_room(api, &owner, json!({"preset": "public_chat"})).await?;
    for room in [&busy, &quiet] {
        let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room));
        api.ok(
            Method::POST,
            &path,
            Some(&prober.token),
            Some(&json!({})),
            TIMEOUT,
        )
        .await?;
    }
    let filled = Instant::now();
    all_ok(
        "fill",
        pool(events, 16, {
            let (api, owner, busy) = (api.clone(), owner.clone(), busy.clone());
            move |index| {
                let (api, owner, busy) = (api.clone(), owner.clone(), busy.clone());
                async move { send(&api, &owner, &busy, &format!("fill-{index}")).await }
            }
        })
        .await,
    )?;
    println!(
        "retention: {events} messages sent in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let rooms = [busy.clone(), quiet.clone()];
    let baseline = probe(
        api,
        &prober,
        &rooms,
        "base",
        tokio::time::sleep(Duration::from_secs(5)),
    )
    .await?;
    let before = event_count(server).await?;
    let policy = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.retention",
        enc(&busy)
    );
    api.ok(
        Method::PUT,
        &policy,
        Some(&owner.token),
        Some(&json!({"max_lifetime": 1000})),
        TIMEOUT,
    )
    .await?;
    let started = Instant::now();
    // Done when none of the room's oldest events is one of the fill: the purge deletes the
    // oldest first, so what is left of the fill sits right after the room's first state events
    // (the probes that follow expire too, but are not fill). The first 50 events are read
    // without a filter (a filtered page may hold fewer events than its limit), and a failed or
    // empty read does not count as done.
    let oldest = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=50",
        enc(&busy)
    );
    let done = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(reply) = api.get(&owner, &oldest).await else {
                continue;
            };
            let Some(chunk) = reply.body["chunk"].as_array() else {
                continue;
            };
            let fill_left = chunk.iter().any(|event| {
                event["content"]["body"]
                    .as_str()
                    .is_some_and(|body| body.starts_with("message fill-"))
            });
            if !chunk.is_empty() && !fill_left {
                break;
            }
        }
    };
    let during = probe(api, &prober, &rooms, "during", done).await?;
    let purge = started.elapsed();
    let after = event_count(server).await?;
    println!(
        "retention: server stats counted {before} events before the purge and {after} after \
         (the fill was {events}; the probes keep adding)"
    );
    println!(
        "retention: {events} expired events purged in {:.1} s after the policy was set (1 s lifetime, 200 ms job interval): {:.0} events/s",
        purge.as_secs_f64(),
        events as f64 / purge.as_secs_f64().max(0.001)
    );
    for (name, index) in [("purged room", 0), ("other room", 1)] {
        println!(
            "retention: send into the {name}: before {}",
            Stats::of(baseline[index].clone()).line()
        );
        println!(
            "retention: send into the {name}: during {}",
            Stats::of(during[index].clone()).line()
        );
    }
    Ok(())
}

/// `contacts` users, each with a story room that `viewer` joined and one story in it.
async fn story_rooms(api: &Api, contacts: usize) -> Result<(User, Vec<User>), String> {
    let viewer = api.register("viewer").await?;
    let started = Instant::now();
    let owners = all_ok(
        "owners",
        pool(contacts, 8, {
            let (api, viewer) = (api.clone(), viewer.clone());
            move |index| {
                let (api, viewer) = (api.clone(), viewer.clone());
                async move {
                    let owner = api.register(&format!("owner{index}")).await?;
                    let room = create_room(
                        &api,
                        &owner,
                        json!({
                            "preset": "private_chat",
                            "creation_content": {"type": "io.plait.story"},
                            "invite": [&*viewer.user_id],
                        }),
                    )
                    .await?;
                    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&room));
                    api.ok(
                        Method::POST,
                        &join,
                        Some(&viewer.token),
                        Some(&json!({})),
                        TIMEOUT,
                    )
                    .await?;
                    send(&api, &owner, &room, "story").await?;
                    Ok::<_, String>(owner)
                }
            }
        })
        .await,
    )?;
    println!(
        "stories: {contacts} story rooms set up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((viewer, owners))
}

async fn stories(api: &Api, viewer: &User, contacts: usize, pid: u32) -> Result<(), String> {
    let listings = env_usize("PLAIT_BENCH_LISTINGS", 50);
    let stat = format!("/proc/{pid}/stat");
    let cpu_before = cpu_ticks(&stat);
    let mut latencies = Vec::new();
    for _ in 0..listings {
        let started = Instant::now();
        let reply = api.get(viewer, "/_plait/client/v1/stories").await?;
        latencies.push(ms(started.elapsed()));
        let listed = reply.body["stories"].as_array().map_or(0, Vec::len);
        if listed != contacts {
            return Err(format!("stories listed {listed}, expected {contacts}"));
        }
    }
    let cpu_ms = (cpu_ticks(&stat) - cpu_before) as f64 / clock_ticks_per_s() * 1000.0;
    println!(
        "stories: GET /_plait/client/v1/stories with {contacts} contacts: {}; server CPU per listing {:.2} ms",
        Stats::of(latencies).line(),
        cpu_ms / listings as f64
    );
    Ok(())
}

/// Times 30 initial syncs of `viewer` that carry presence only; answers the latencies and how
/// many presence events the last one had.
async fn presence_syncs(api: &Api, viewer: &User) -> Result<(Vec<f64>, usize), String> {
    let filter = json!({
        "room": {"rooms": []},
        "account_data": {"types": []},
    });
    let mut path = String::from("/_matrix/client/v3/sync?filter=");
    let _ = write!(path, "{}", enc(&filter.to_string()));
    let mut latencies = Vec::new();
    let mut listed = 0;
    for _ in 0..30 {
        let started = Instant::now();
        let reply = api.get(viewer, &path).await?;
        latencies.push(ms(started.elapsed()));
        listed = reply.body["presence"]["events"]
            .as_array()
            .map_or(0, Vec::len);
    }
    Ok((latencies, listed))
}

async fn privacy(api: &Api, viewer: &User, owners: &[User]) -> Result<(), String> {
    let shared = Arc::new(owners.to_vec());
    let put_all = |path: fn(&User) -> String, body: Value| {
        let (api, owners) = (api.clone(), Arc::clone(&shared));
        pool(owners.len(), 8, move |index| {
            let (api, owner, body) = (api.clone(), owners[index].clone(), body.clone());
            async move {
                api.ok(
                    Method::PUT,
                    &path(&owner),
                    Some(&owner.token),
                    Some(&body),
                    TIMEOUT,
                )
                .await
                .map(drop)
            }
        })
    };
    let presence_path =
        |user: &User| format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id));
    let privacy_path = |user: &User| {
        format!(
            "/_matrix/client/v3/user/{}/account_data/io.plait.privacy",
            enc(&user.user_id)
        )
    };
    all_ok(
        "online",
        put_all(presence_path, json!({"presence": "online"})).await,
    )?;
    let (plain, shown) = presence_syncs(api, viewer).await?;
    println!(
        "privacy: presence fan-out to one viewer of {} online users, no settings ({shown} shown): {}",
        owners.len(),
        Stats::of(plain).line()
    );
    let set = put_all(privacy_path, json!({"last_seen": "contacts"})).await;
    if set.iter().all(Result::is_ok) {
        let (hidden, shown) = presence_syncs(api, viewer).await?;
        println!(
            "privacy: the same with every one on last_seen=contacts ({shown} shown): {}",
            Stats::of(hidden).line()
        );
    }
    Ok(())
}
