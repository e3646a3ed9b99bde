//! Plait calls benchmark (`cargo bench --bench calls`); see docs/performance.md, "Calls".
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and, over the
//! client-server API only:
//! 1. Delayed events: registers `PLAIT_BENCH_USERS` (1,000) accounts in rooms of 10, sends 300
//!    ordinary messages (the latency with nothing pending), schedules `PLAIT_BENCH_DELAYED`
//!    (10,000) delayed messages spread over those users with due times spread evenly over a
//!    60 s window that starts once all are scheduled, sends 300 messages again while they are
//!    pending, waits for the window to pass, and reads from each user's delayed-events list how
//!    late each one fired (the finalised entry's time minus `running_since + delay`).
//! 2. Call history: alice calls bob `PLAIT_BENCH_CALLS` (10,000) times (`m.call.invite` then
//!    `m.call.hangup`, over 10 rooms), then pages through alice's whole history 20 calls a page
//!    and prints each page's latency.
//!
//! `PLAIT_BENCH_QUICK=1` uses 100 accounts, 1,000 delayed messages and 1,000 calls. Built as a
//! test it prints `calls bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "calls";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";

mod common;
use common::*;

const SENDERS: usize = 16;
const ROOM_SIZE: usize = 10;
const WINDOW_MS: u64 = 60_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends `count` messages round the users and rooms, 16 at a time; the latency of each.
async fn send_latencies(
    api: &Api,
    users: &Arc<Vec<User>>,
    rooms: &Arc<Vec<String>>,
    count: usize,
    tag: &str,
) -> Result<Stats, String> {
    let tag: Arc<str> = tag.into();
    let latencies = all_ok(
        "messages",
        pool(count, SENDERS, {
            let (api, users, rooms, tag) = (api.clone(), users.clone(), rooms.clone(), tag.clone());
            move |index| {
                let (api, users, rooms, tag) =
                    (api.clone(), users.clone(), rooms.clone(), tag.clone());
                async move {
                    let user = &users[index * 7 % users.len()];
                    let room = &rooms[(index * 7 % users.len()) / ROOM_SIZE];
                    let started = Instant::now();
                    api.send(
                        user,
                        room,
                        &format!("{tag}{index}"),
                        &json!({"msgtype": "m.text", "body": "hi"}),
                    )
                    .await?;
                    Ok(ms(started.elapsed()))
                }
            }
        })
        .await,
    )?;
    Ok(Stats::of(latencies))
}

/// Registers the users and puts them in rooms of [`ROOM_SIZE`].
async fn users_in_rooms(
    api: &Api,
    count: usize,
) -> Result<(Arc<Vec<User>>, Arc<Vec<String>>), String> {
    let users = Arc::new(all_ok(
        "registrations",
        pool(count, SENDERS, {
            let api = api.clone();
            move |index| {
                let api = api.clone();
                async move { api.register(&format!("caller{index}")).await }
            }
        })
        .await,
    )?);
    let rooms = Arc::new(all_ok(
        "rooms",
        pool(count.div_ceil(ROOM_SIZE), SENDERS, {
            let (api, users) = (api.clone(), users.clone());
            move |index| {
                let (api, users) = (api.clone(), users.clone());
                async move {
                    api.create_room(&users[index * ROOM_SIZE], &format!("room {index}"))
                        .await
                }
            }
        })
        .await,
    )?);
    all_ok(
        "joins",
        pool(count, SENDERS, {
            let (api, users, rooms) = (api.clone(), users.clone(), rooms.clone());
            move |index| {
                let (api, users, rooms) = (api.clone(), users.clone(), rooms.clone());
                async move {
                    if index % ROOM_SIZE == 0 {
                        return Ok(());
                    }
                    api.join(&users[index], &rooms[index / ROOM_SIZE]).await
                }
            }
        })
        .await,
    )?;
    Ok((users, rooms))
}

/// Part 1: delayed events. Returns the JSON of its figures.
async fn delayed_events(api: &Api, user_count: usize, delayed: usize) -> Result<Value, String> {
    let (users, rooms) = users_in_rooms(api, user_count).await?;
    let idle = send_latencies(api, &users, &rooms, 300, "idle").await?;
    // Long enough to schedule them all before the first is due.
    let lead_ms = 20_000 + delayed as u64 * 6;
    let window_start = now_ms() + lead_ms;
    let started = Instant::now();
    all_ok(
        "delayed messages",
        pool(delayed, SENDERS, {
            let (api, users, rooms) = (api.clone(), users.clone(), rooms.clone());
            move |index| {
                let (api, users, rooms) = (api.clone(), users.clone(), rooms.clone());
                async move {
                    let user = &users[index % users.len()];
                    let room = &rooms[(index % users.len()) / ROOM_SIZE];
                    let due = window_start + index as u64 * WINDOW_MS / delayed as u64;
                    let delay = due.saturating_sub(now_ms());
                    let path = format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/d{index}?org.matrix.msc4140.delay={delay}",
                        enc(room)
                    );
                    let body = json!({"msgtype": "m.text", "body": "scheduled"});
                    api.ok(Method::PUT, &path, Some(&user.token), Some(&body), Duration::from_secs(60)).await.map(drop)
                }
            }
        })
        .await,
    )?;
    let scheduling = started.elapsed();
    if now_ms() + 5_000 > window_start {
        return Err("scheduling took longer than the lead; raise it".to_owned());
    }
    let pending = send_latencies(api, &users, &rooms, 300, "busy").await?;
    tokio::time::sleep(Duration::from_millis(
        (window_start + WINDOW_MS + 10_000).saturating_sub(now_ms()),
    ))
    .await;
    let mut lateness = Vec::new();
    for user in users.iter() {
        let list = api
            .get(
                user,
                "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            )
            .await?;
        if list.body["delayed_events"]
            .as_array()
            .is_some_and(|pending| !pending.is_empty())
        {
            return Err(format!(
                "{} still has pending events: {}",
                user.user_id,
                short(&list.body)
            ));
        }
        for entry in list.body["finalised"].as_array().into_iter().flatten() {
            if entry["outcome"] != "send" {
                return Err(format!("a delayed message did not send: {}", short(entry)));
            }
            let event = &entry["delayed_event"];
            let due =
                event["running_since"].as_u64().unwrap_or(0) + event["delay"].as_u64().unwrap_or(0);
            let fired = entry["origin_server_ts"].as_u64().unwrap_or(0);
            lateness.push(fired.saturating_sub(due) as f64);
        }
    }
    if lateness.len() != delayed {
        return Err(format!(
            "{} of {delayed} delayed messages were finalised",
            lateness.len()
        ));
    }
    let lateness = Stats::of(lateness);
    println!(
        "delayed events: {delayed} over {user_count} users scheduled in {:.1} s",
        scheduling.as_secs_f64()
    );
    println!(
        "  send latency with none pending (ms):        {}",
        idle.line()
    );
    println!(
        "  send latency with {delayed} pending (ms): {}",
        pending.line()
    );
    println!(
        "  firing lateness after the due time (ms):    {}",
        lateness.line()
    );
    Ok(
        json!({"users": user_count, "delayed": delayed, "schedule_s": r3(scheduling.as_secs_f64()),
        "send_idle_ms": idle.json(), "send_pending_ms": pending.json(), "lateness_ms": lateness.json()}),
    )
}

/// Part 2: the call history of a user with `calls` calls. Returns the JSON of its figures.
async fn call_history(api: &Api, calls: usize) -> Result<Value, String> {
    let alice = api.register("alice").await?;
    let bob = api.register("bob").await?;
    let rooms = Arc::new(all_ok(
        "call rooms",
        pool(10, 10, {
            let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
            move |index| {
                let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
                async move {
                    let room = api.create_room(&alice, &format!("calls {index}")).await?;
                    api.join(&bob, &room).await?;
                    Ok(room)
                }
            }
        })
        .await,
    )?);
    let started = Instant::now();
    all_ok(
        "calls",
        pool(calls, SENDERS, {
            let (api, alice, rooms) = (api.clone(), alice.clone(), rooms.clone());
            move |index| {
                let (api, alice, rooms) = (api.clone(), alice.clone(), rooms.clone());
                async move {
                    let room = enc(&rooms[index % rooms.len()]);
                    let call_id = format!("call{index}");
                    let invite = json!({"call_id": call_id, "party_id": "A", "version": "1", "lifetime": 60_000,
                        "offer": {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}});
                    let hangup = json!({"call_id": call_id, "party_id": "A", "version": "1", "reason": "user_hangup"});
                    for (kind, content) in [("m.call.invite", invite), ("m.call.hangup", hangup)] {
                        let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{kind}{index}");
                        api.ok(Method::PUT, &path, Some(&alice.token), Some(&content), Duration::from_secs(60)).await?;
                    }
                    Ok(())
                }
            }
        })
        .await,
    )?;
    let sending = started.elapsed();
    let mut latencies = Vec::new();
    let (mut listed, mut from) = (0, None::<String>);
    loop {
        let path = match &from {
            Some(token) => format!("/_plait/client/v1/calls?limit=20&from={token}"),
            None => "/_plait/client/v1/calls?limit=20".to_owned(),
        };
        let started = Instant::now();
        let page = api
            .ok(
                Method::GET,
                &path,
                Some(&alice.token),
                None,
                Duration::from_secs(60),
            )
            .await?;
        latencies.push(ms(started.elapsed()));
        listed += page.body["calls"].as_array().map_or(0, Vec::len);
        match page.body["next_batch"].as_str() {
            Some(token) => from = Some(token.to_owned()),
            None => break,
        }
    }
    if listed != calls {
        return Err(format!("the history listed {listed} of {calls} calls"));
    }
    let pages = Stats::of(latencies);
    println!(
        "call history: {calls} calls sent in {:.1} s; pages of 20 (ms): {}",
        sending.as_secs_f64(),
        pages.line()
    );
    Ok(json!({"calls": calls, "send_s": r3(sending.as_secs_f64()), "page_ms": pages.json()}))
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let users = env_usize("PLAIT_BENCH_USERS", if quick { 100 } else { 1_000 });
    let delayed = env_usize("PLAIT_BENCH_DELAYED", if quick { 1_000 } else { 10_000 });
    let calls = env_usize("PLAIT_BENCH_CALLS", if quick { 1_000 } else { 10_000 });
    let machine = machine_facts();
    let (server, api) = BenchServer::start_ready(BENCH_LABEL).await?;
    println!(
        "calls bench on {} ({} cores, load average {})",
        machine.cpu_model, machine.nproc, machine.loadavg
    );
    let delayed_figures = delayed_events(&api, users, delayed).await?;
    let history_figures = call_history(&api, calls).await?;
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "delayed_events": delayed_figures, "call_history": history_figures,
            "rss_kb": rss_of(server.pid()).rss_kb})
    );
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(60 * 60), run);
}
