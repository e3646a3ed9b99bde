//! Plait presence fan-out benchmark with and without privacy settings
//! (`cargo bench --bench presence`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and, over the
//! client-server API only: registers an owner and `PLAIT_BENCH_VIEWERS` (100) viewers, puts
//! them all in one room, and makes every viewer a contact of the owner (a direct-message room
//! each, listed in the owner's `m.direct`). Every viewer then long-polls `/sync`, and the owner
//! changes their status message `PLAIT_BENCH_UPDATES` (200) times, one change after the other,
//! each time waiting until every viewer has seen it. This runs in rounds that alternate the
//! owner's `io.plait.privacy` between unset (everyone) and `{"presence": "contacts"}`: the same
//! deliveries, with and without the per-viewer contact check. It prints the server's CPU time
//! per update and the wall time per update of each round, and their medians per setting.
//! `PLAIT_BENCH_QUICK=1` runs 20 viewers and 30 updates. Built as a test it prints
//! `presence bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "presence";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Makes `viewer` a contact of `owner`: a direct-message room both are joined to, returned for
/// the owner's `m.direct`.
async fn direct_room(api: &Api, owner: &User, viewer: &User) -> Result<String, String> {
    let body = json!({
        "preset": "trusted_private_chat",
        "is_direct": true,
        "invite": [&*viewer.user_id],
    });
    let created = api
        .ok(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&owner.token),
            Some(&body),
            TIMEOUT,
        )
        .await?;
    let room = created.body["room_id"]
        .as_str()
        .ok_or("createRoom without room_id")?
        .to_owned();
    api.join(viewer, &room).await?;
    Ok(room)
}

/// The status message of `owner`'s last presence event in a sync response, if any.
fn owner_status<'a>(sync: &'a Value, owner: &str) -> Option<&'a str> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|event| event["sender"] == owner)
        .and_then(|event| event["content"]["status_msg"].as_str())
}

/// A viewer's long-poll loop: stores the number of the newest status it saw in `seen`.
async fn watch_owner(
    api: Arc<Api>,
    viewer: User,
    owner: Arc<str>,
    seen: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let filter = r#"{"room":{"rooms":[]},"account_data":{"not_types":["*"]}}"#;
    let mut since = api
        .sync(&viewer, Some(filter), None, 0, TIMEOUT)
        .await?
        .body["next_batch"]
        .as_str()
        .map(str::to_owned);
    loop {
        let reply = tokio::select! {
            reply = api.sync(&viewer, Some(filter), since.as_deref(), 10_000, TIMEOUT) => reply?,
            _ = stop.changed() => return Ok(()),
        };
        if let Some(number) = owner_status(&reply.body, &owner)
            .and_then(|status| status.strip_prefix("update "))
            .and_then(|number| number.parse::<usize>().ok())
        {
            seen.fetch_max(number, Ordering::SeqCst);
        }
        since = reply.body["next_batch"].as_str().map(str::to_owned);
    }
}

/// One round: `updates` status changes, each waited for by every viewer. Returns the server's
/// CPU ms and the wall ms per update.
async fn round(
    api: &Api,
    owner: &User,
    pid: u32,
    (first, updates): (usize, usize),
    seen: &[Arc<AtomicUsize>],
) -> Result<(f64, f64), String> {
    let stat = format!("/proc/{pid}/stat");
    let ticks = clock_ticks_per_s();
    let cpu_before = cpu_ticks(&stat);
    let started = Instant::now();
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&owner.user_id));
    for number in first..first + updates {
        let body = json!({ "presence": "online", "status_msg": format!("update {number}") });
        api.ok(Method::PUT, &path, Some(&owner.token), Some(&body), TIMEOUT)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.iter().any(|s| s.load(Ordering::SeqCst) < number) {
            if Instant::now() > deadline {
                let behind = seen
                    .iter()
                    .filter(|s| s.load(Ordering::SeqCst) < number)
                    .count();
                return Err(format!("{behind} viewers never saw update {number}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let wall = ms(started.elapsed());
    let cpu_ms = (cpu_ticks(&stat) - cpu_before) as f64 / ticks * 1000.0;
    Ok((cpu_ms / updates as f64, wall / updates as f64))
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let viewers = env_usize("PLAIT_BENCH_VIEWERS", if quick { 20 } else { 100 });
    let updates = env_usize("PLAIT_BENCH_UPDATES", if quick { 30 } else { 200 });
    let rounds = env_usize("PLAIT_BENCH_ROUNDS", if quick { 2 } else { 6 });
    let machine = machine_facts();
    let (server, api) = BenchServer::start_ready(BENCH_LABEL).await?;
    let api = Arc::new(api);
    let owner = api.register("owner").await?;
    let room = api.create_room(&owner, "fan-out").await?;
    let viewers = all_ok(
        "viewers",
        pool(viewers, 4, {
            let (api, room) = (api.clone(), room.clone());
            move |index| {
                let (api, room) = (api.clone(), room.clone());
                async move {
                    let viewer = api.register(&format!("viewer{index}")).await?;
                    api.join(&viewer, &room).await?;
                    Ok(viewer)
                }
            }
        })
        .await,
    )?;
    let mut direct = serde_json::Map::new();
    for viewer in &viewers {
        let dm = direct_room(&api, &owner, viewer).await?;
        direct.insert(viewer.user_id.to_string(), json!([dm]));
    }
    let account_data = |kind: &str| {
        format!(
            "/_matrix/client/v3/user/{}/account_data/{kind}",
            enc(&owner.user_id)
        )
    };
    api.ok(
        Method::PUT,
        &account_data("m.direct"),
        Some(&owner.token),
        Some(&Value::Object(direct)),
        TIMEOUT,
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: Vec<Arc<AtomicUsize>> = viewers.iter().map(|_| Arc::default()).collect();
    let mut watchers = Vec::new();
    for (viewer, seen) in viewers.iter().zip(&seen) {
        watchers.push(tokio::spawn(watch_owner(
            api.clone(),
            viewer.clone(),
            owner.user_id.clone(),
            seen.clone(),
            stop_rx.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    for index in 0..rounds {
        let (name, settings) = if index % 2 == 0 {
            ("everyone", json!({}))
        } else {
            ("contacts", json!({ "presence": "contacts" }))
        };
        let path = account_data("io.plait.privacy");
        api.ok(
            Method::PUT,
            &path,
            Some(&owner.token),
            Some(&settings),
            TIMEOUT,
        )
        .await?;
        let (cpu, wall) = round(
            &api,
            &owner,
            server.pid(),
            (1 + index * updates, updates),
            &seen,
        )
        .await?;
        println!("round {index}: {name:8} server CPU {cpu:.3} ms/update, wall {wall:.3} ms/update");
        results.push((name, cpu, wall));
    }
    let _ = stop_tx.send(true);
    for watcher in watchers {
        watcher.await.map_err(|e| e.to_string())??;
    }
    let median = |name: &str, pick: fn(&(&str, f64, f64)) -> f64| {
        Stats::of(results.iter().filter(|r| r.0 == name).map(pick).collect()).p50
    };
    let (everyone, contacts) = (median("everyone", |r| r.1), median("contacts", |r| r.1));
    println!(
        "presence bench on {} ({} cores, load average {}): {} viewers, {updates} updates per \
         round; median server CPU per update: everyone {everyone:.3} ms, contacts {contacts:.3} \
         ms ({:+.1} %)",
        machine.cpu_model,
        machine.nproc,
        machine.loadavg,
        viewers.len(),
        (contacts / everyone - 1.0) * 100.0
    );
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "viewers": viewers.len(), "updates": updates,
            "cpu_ms_per_update": {"everyone": r3(everyone), "contacts": r3(contacts)},
            "wall_ms_per_update": {"everyone": r3(median("everyone", |r| r.2)),
                "contacts": r3(median("contacts", |r| r.2))}})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(60 * 60), run);
}
