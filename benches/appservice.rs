//! Plait appservice benchmark (`cargo bench --bench appservice`); see docs/performance.md.
//!
//! Part 1, in process: the cost of finding the appservices interested in one event with
//! `PLAIT_BENCH_APPSERVICES` (100) registered, each with a user and an alias namespace of its
//! own (as bridges have), in a room of 20 and of 200 members none of which belongs to any (the
//! worst case: every member is matched). It times the combined `RegexSet` of all appservices
//! (`service::appservice::matcher`, what the commit path uses) against one `RegexSet` per
//! appservice asked in turn.
//!
//! Part 2, over HTTP: starts the plait binary with those registrations (one of which points at
//! a listener in this process and has a ghost in the room), then `PLAIT_BENCH_SENDERS` (16)
//! users send messages into the room as fast as the server takes them for
//! `PLAIT_BENCH_SECONDS` (20), and again paced at half the rate reached. Each message carries
//! its send time; the listener records when its transaction arrived. Prints the send rate and
//! the delivery lag (p50/p99/max) of each phase. `PLAIT_BENCH_QUICK=1` runs 5 s phases.
//! Built as a test it prints `appservice bench: skipped` unless `PLAIT_BENCH_QUICK` or
//! `PLAIT_BENCH_FORCE` is set.

use std::fmt::Write as _;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use plait::service::appservice::{matcher::Matcher, registration, Appservice};

const PASSWORD: &str = "plait-bench-password-0";
/// How the benchmark names itself in device names and messages.
const BENCH_LABEL: &str = "appservice";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The registration of bridge `index`, listening at `url`.
fn registration_yaml(index: usize, url: &str) -> String {
    format!(
        "id: bridge{index}\nurl: {url}\nas_token: as-{index}\nhs_token: hs-{index}\n\
         sender_localpart: bridge{index}bot\nrate_limited: false\nnamespaces:\n  users:\n\
         \x20   - exclusive: true\n      regex: '^@bridge{index}_.*:localhost$'\n  aliases:\n\
         \x20   - exclusive: true\n      regex: '^#bridge{index}_.*:localhost$'\n"
    )
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// Part 1: nanoseconds per event for the combined set and for one set per appservice, with
/// `members` members in the room.
fn matching_cost(appservices: &[Appservice], members: usize) -> (f64, f64) {
    let refs: Vec<&Appservice> = appservices.iter().collect();
    let matcher = Matcher::compile(&refs);
    let member_ids: Vec<String> = (0..members)
        .map(|index| format!("@user{index}:localhost"))
        .collect();
    let sender = "@user0:localhost";
    let room = "!room:localhost";
    let alias = "#room:localhost";
    let rounds = 2_000usize.max(200_000 / members.max(1));
    let started = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        let mut hits = vec![false; appservices.len()];
        matcher.mark_user(sender, &mut hits);
        matcher.mark_room(room, &mut hits);
        matcher.mark_alias(alias, &mut hits);
        for member in &member_ids {
            matcher.mark_user(member, &mut hits);
        }
        found += hits.iter().filter(|hit| **hit).count();
    }
    let combined = started.elapsed().as_nanos() as f64 / rounds as f64;
    let started = Instant::now();
    for _ in 0..rounds {
        for appservice in appservices {
            let user = |id: &str| appservice.users.is_match(id) || id == appservice.sender.as_str();
            let hit = user(sender)
                || appservice.rooms.is_match(room)
                || appservice.aliases.is_match(alias)
                || member_ids.iter().any(|member| user(member));
            found += usize::from(hit);
        }
    }
    let separate = started.elapsed().as_nanos() as f64 / rounds as f64;
    assert_eq!(found, 0, "no appservice is interested");
    (combined, separate)
}

/// What the listener received: (send time, arrival time) in microseconds, per message.
#[derive(Default)]
struct Received {
    lags: Mutex<Vec<(u64, u64)>>,
}

/// Serves the appservice's transaction endpoint on `listener`, recording each message's lag.
fn serve(listener: tokio::net::TcpListener) -> Arc<Received> {
    use axum::{extract::State, routing::put, Router};
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            put(
                |State(received): State<Arc<Received>>, body: axum::body::Bytes| async move {
                    let arrived = now_us();
                    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let mut lags = received.lags.lock();
                    for event in body["events"].as_array().into_iter().flatten() {
                        if let Some(sent) = event["content"]["sent_us"].as_u64() {
                            lags.push((sent, arrived));
                        }
                    }
                    "{}"
                },
            ),
        )
        .with_state(Arc::clone(&received));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    received
}

/// One phase: every sender sends until `seconds` pass, at most `rate` messages per second in
/// all (`None`: as fast as the server answers). Returns the messages sent and the seconds taken.
async fn phase(
    api: &Api,
    senders: &[User],
    room: &str,
    (name, seconds, rate): (&str, u64, Option<f64>),
) -> Result<(usize, f64), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let interval = rate.map(|rate| Duration::from_secs_f64(senders.len() as f64 / rate));
    let mut tasks = Vec::new();
    for (index, sender) in senders.iter().enumerate() {
        let (api, sender, room) = (api.clone(), sender.clone(), room.to_owned());
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let content = json!({
                    "msgtype": "m.text",
                    "body": format!("{name} {index} {sent}"),
                    "sent_us": now_us(),
                });
                api.send(&sender, &room, &format!("{name}-{index}-{sent}"), &content)
                    .await?;
                sent += 1;
            }
            Ok::<usize, String>(sent)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|error| error.to_string())??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Waits until the listener holds `expected` messages (up to 120 s), then returns the lags of
/// the messages after the first `skip`, in milliseconds.
async fn lags(received: &Received, skip: usize, expected: usize) -> Result<Stats, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.lags.lock().len() < expected {
        if Instant::now() > deadline {
            let got = received.lags.lock().len();
            return Err(format!(
                "{got} of {expected} messages reached the appservice"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lags = received.lags.lock();
    Ok(Stats::of(
        lags[skip..expected]
            .iter()
            .map(|(sent, arrived)| arrived.saturating_sub(*sent) as f64 / 1000.0)
            .collect(),
    ))
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let count = env_usize("PLAIT_BENCH_APPSERVICES", 100);
    let senders = env_usize("PLAIT_BENCH_SENDERS", 16);
    let seconds = env_usize("PLAIT_BENCH_SECONDS", if quick { 5 } else { 20 }) as u64;
    let machine = machine_facts();

    let server_name: &ruma::ServerName = "localhost".try_into().map_err(|_| "server name")?;
    let appservices: Vec<Appservice> = (0..count)
        .map(|index| {
            let parsed = registration::parse(&registration_yaml(index, "http://127.0.0.1:9"))?;
            Appservice::compile(parsed, server_name)
        })
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())?;
    let mut report = String::new();
    let mut matching = Vec::new();
    for members in [20, 200] {
        let (combined, separate) = matching_cost(&appservices, members);
        let _ = writeln!(
            report,
            "matching, {count} appservices, {members} members: combined set {:.1} µs/event, \
             one set per appservice {:.1} µs/event",
            combined / 1000.0,
            separate / 1000.0
        );
        matching.push(
            json!({"members": members, "combined_us": r3(combined / 1000.0),
            "separate_us": r3(separate / 1000.0)}),
        );
    }
    print!("{report}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| error.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let received = serve(listener);
    let folder = tempfile::tempdir().map_err(|error| error.to_string())?;
    for index in 0..count {
        // Only bridge 0 is reached; the others listen nowhere and are never interested.
        let target = if index == 0 {
            url.as_str()
        } else {
            "http://127.0.0.1:9"
        };
        std::fs::write(
            folder.path().join(format!("bridge{index}.yaml")),
            registration_yaml(index, target),
        )
        .map_err(|error| error.to_string())?;
    }
    let dir = folder.path().display().to_string();
    let server = BenchServer::start_with(
        &bench_binary(),
        BENCH_LABEL,
        &[("PLAIT_APPSERVICE_DIR", dir.as_str())],
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let api = Api {
        http,
        base: Arc::from(server.base.as_str()),
    };
    let mut server = server;
    server.wait_ready(&api).await?;
    let owner = api.register("owner").await?;
    let room = api.create_room(&owner, "portal").await?;
    let bridge = User {
        user_id: "@bridge0bot:localhost".into(),
        token: "as-0".into(),
    };
    let ghost = "@bridge0_ghost:localhost";
    let body = json!({"type": "m.login.application_service", "username": "bridge0_ghost"});
    api.ok(
        Method::POST,
        "/_matrix/client/v3/register",
        Some(&bridge.token),
        Some(&body),
        TIMEOUT,
    )
    .await?;
    let path = format!(
        "/_matrix/client/v3/join/{}?user_id={}",
        enc(&room),
        enc(ghost)
    );
    api.ok(
        Method::POST,
        &path,
        Some(&bridge.token),
        Some(&json!({})),
        TIMEOUT,
    )
    .await?;
    let senders = all_ok(
        "senders",
        pool(senders, 4, {
            let (api, room) = (api.clone(), room.clone());
            move |index| {
                let (api, room) = (api.clone(), room.clone());
                async move {
                    let sender = api.register(&format!("sender{index}")).await?;
                    api.join(&sender, &room).await?;
                    Ok(sender)
                }
            }
        })
        .await,
    )?;
    // Everything so far (the room's creation, joins) is delivered before the phases start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    received.lags.lock().clear();

    let (sent, took) = phase(&api, &senders, &room, ("saturated", seconds, None)).await?;
    let saturated_rate = sent as f64 / took;
    let saturated = lags(&received, 0, sent).await?;
    let paced_rate = saturated_rate / 2.0;
    let (paced_sent, paced_took) =
        phase(&api, &senders, &room, ("paced", seconds, Some(paced_rate))).await?;
    let paced = lags(&received, sent, sent + paced_sent).await?;
    println!(
        "delivery to one appservice ({count} registered): saturated {:.0} events/s sent, lag ms {}",
        saturated_rate,
        saturated.line()
    );
    println!(
        "delivery to one appservice ({count} registered): paced {:.0} events/s sent, lag ms {}",
        paced_sent as f64 / paced_took,
        paced.line()
    );
    println!(
        "appservice bench on {} ({} cores, load average {})",
        machine.cpu_model, machine.nproc, machine.loadavg
    );
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "appservices": count, "matching": matching,
            "saturated": {"rate": r3(saturated_rate), "lag_ms": saturated.json()},
            "paced": {"rate": r3(paced_sent as f64 / paced_took), "lag_ms": paced.json()}})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(30 * 60), run);
}
