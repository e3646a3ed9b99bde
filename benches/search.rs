//! Plait search benchmark (`cargo bench --bench search`); see docs/performance.md.
//!
//! Starts the plait binary on 127.0.0.1 with a fresh temporary database and, over the
//! client-server API only:
//!
//! 1. sends `PLAIT_BENCH_PLAIN` (10,000) events of a custom type with message-like bodies, which
//!    the search index skips, then `PLAIT_BENCH_MESSAGES` (100,000) `m.room.message` events with
//!    the same kind of bodies, which it indexes, each with `PLAIT_BENCH_SENDERS` (16) concurrent
//!    senders, then the unindexed type again into the now big room: the throughputs show what
//!    indexing costs per commit;
//! 2. times `POST /search` (`PLAIT_BENCH_REPS`, 30, repetitions each) for single words of
//!    several frequencies and for two-word queries, in `recent` and `rank` order, and prints
//!    p50/p99 with the result counts.
//!
//! Bodies are 8 to 15 words drawn from a Zipf distribution (s = 1) over 5,000 words, so that
//! the most frequent word occurs in most messages and the rarest in a handful.
//! `PLAIT_BENCH_QUICK=1` runs 2,000 + 10,000 events. Built as a test it prints
//! `search bench: skipped` unless `PLAIT_BENCH_QUICK` or `PLAIT_BENCH_FORCE` is set.

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
const BENCH_LABEL: &str = "search";
const KEY_RUN: &str = "plait.bench.run";
const KEY_ID: &str = "plait.bench.id";
const KEY_SENT_MS: &str = "plait.bench.sent_ms";
/// Distinct words in the generated bodies.
const VOCABULARY: usize = 5000;

mod common;
use common::*;

/// The `rank`-th word of the vocabulary (0 is the most frequent): letters only, distinct.
fn word(rank: usize) -> String {
    let mut text = String::from("w");
    let mut n = rank;
    loop {
        text.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    text
}

/// A small deterministic generator (xorshift), so every run sends the same bodies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf (s = 1) sampling through the cumulative weights.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(words: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=words)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Self { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let target = rng.unit() * self.cumulative.last().copied().unwrap_or(1.0);
        self.cumulative
            .partition_point(|weight| *weight < target)
            .min(self.cumulative.len() - 1)
    }
}

fn body(zipf: &Zipf, rng: &mut Rng) -> String {
    let words = 8 + (rng.next() % 8) as usize;
    (0..words)
        .map(|_| word(zipf.sample(rng)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends `bodies` as `event_type` with `senders` concurrent loops; returns events per second.
async fn send_all(
    api: &Api,
    user: &User,
    room: &str,
    event_type: &str,
    bodies: Arc<Vec<String>>,
    senders: usize,
) -> Result<f64, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (api, user, next, bodies) = (api.clone(), user.clone(), next.clone(), bodies.clone());
        let event_type = event_type.to_owned();
        let path = format!("/_matrix/client/v3/rooms/{}/send/{event_type}/", enc(room));
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(text) = bodies.get(index) else {
                    return Ok::<(), String>(());
                };
                let body = json!({"msgtype": "m.text", "body": text});
                api.ok(
                    Method::PUT,
                    &format!("{path}{event_type}-{index}"),
                    Some(&user.token),
                    Some(&body),
                    Duration::from_secs(60),
                )
                .await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(bodies.len() as f64 / start.elapsed().as_secs_f64())
}

async fn run() -> Result<(), String> {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let plain = env_usize("PLAIT_BENCH_PLAIN", if quick { 2_000 } else { 10_000 });
    let messages = env_usize("PLAIT_BENCH_MESSAGES", if quick { 10_000 } else { 100_000 });
    let senders = env_usize("PLAIT_BENCH_SENDERS", 16);
    let reps = env_usize("PLAIT_BENCH_REPS", if quick { 10 } else { 30 });

    let machine = machine_facts();
    let mut server = BenchServer::start(&bench_binary(), "search")?;
    let api = Api {
        http: reqwest::Client::new(),
        base: Arc::from(server.base.as_str()),
    };
    server.wait_ready(&api).await?;
    let user = api.register("searcher").await?;
    let room = api
        .ok(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&user.token),
            Some(&json!({})),
            Duration::from_secs(60),
        )
        .await?
        .body["room_id"]
        .as_str()
        .ok_or("createRoom without room_id")?
        .to_owned();

    let zipf = Zipf::new(VOCABULARY);
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let plain_bodies: Arc<Vec<String>> =
        Arc::new((0..plain).map(|_| body(&zipf, &mut rng)).collect());
    let indexed_bodies: Arc<Vec<String>> =
        Arc::new((0..messages).map(|_| body(&zipf, &mut rng)).collect());
    let plain_rate = send_all(&api, &user, &room, "m.bench.plain", plain_bodies, senders).await?;
    let indexed_rate = send_all(
        &api,
        &user,
        &room,
        "m.room.message",
        indexed_bodies,
        senders,
    )
    .await?;
    // The unindexed type again, now into the big room: separates the index's cost from the
    // room's growth.
    let again_bodies: Arc<Vec<String>> =
        Arc::new((0..plain).map(|_| body(&zipf, &mut rng)).collect());
    let again_rate = send_all(&api, &user, &room, "m.bench.after", again_bodies, senders).await?;

    let queries: Vec<(String, String)> = [
        ("1 word, rank 1 (most frequent)", vec![0]),
        ("1 word, rank 10", vec![9]),
        ("1 word, rank 100", vec![99]),
        ("1 word, rank 1000", vec![999]),
        ("2 words, ranks 1 + 10", vec![0, 9]),
        ("2 words, ranks 10 + 100", vec![9, 99]),
    ]
    .into_iter()
    .map(|(label, ranks)| {
        let term = ranks.iter().map(|rank| word(*rank)).collect::<Vec<_>>();
        (label.to_owned(), term.join(" "))
    })
    .collect();
    let mut table = String::new();
    let mut results = Vec::new();
    for (label, term) in &queries {
        for order in ["recent", "rank"] {
            let request = json!({"search_categories": {"room_events": {
                "search_term": term, "order_by": order, "filter": {"limit": 10}}}});
            let mut times = Vec::new();
            let mut count = 0;
            for _ in 0..reps {
                let start = Instant::now();
                let reply = api
                    .ok(
                        Method::POST,
                        "/_matrix/client/v3/search",
                        Some(&user.token),
                        Some(&request),
                        Duration::from_secs(120),
                    )
                    .await?;
                times.push(ms(start.elapsed()));
                count = reply.body["search_categories"]["room_events"]["count"]
                    .as_u64()
                    .unwrap_or(0);
            }
            let stats = Stats::of(times);
            let _ = writeln!(
                table,
                "{label:<32} {order:<7} {count:>7} results  p50 {} ms  p99 {} ms",
                num(stats.p50, 2),
                num(stats.p99, 2)
            );
            results.push(json!({"query": label, "order": order, "count": count,
                "p50_ms": r3(stats.p50), "p99_ms": r3(stats.p99)}));
        }
    }
    println!(
        "search bench on {} ({} cores): {plain} unindexed + {messages} indexed events, {senders} senders",
        machine.cpu_model, machine.nproc
    );
    println!("send, unindexed type:  {:.0} events/s", plain_rate);
    println!("send, m.room.message:  {:.0} events/s", indexed_rate);
    println!("send, unindexed after: {:.0} events/s", again_rate);
    print!("{table}");
    println!(
        "BENCH_JSON {}",
        json!({"bench": BENCH_LABEL, "plain": plain, "messages": messages,
            "send_unindexed_per_s": r3(plain_rate), "send_indexed_per_s": r3(indexed_rate),
            "send_unindexed_after_per_s": r3(again_rate),
            "searches": results})
    );
    drop(server);
    Ok(())
}

fn main() {
    bench_main(Duration::from_secs(60 * 60), run);
}
