//! What both benchmarks share: a small Matrix client-server API client over reqwest, bounded
//! concurrency helpers, latency statistics, the sync watcher and sender that measure delivery, and
//! a child-process server (`child.rs`). Included with `mod common;` by every benchmark, each of
//! which names itself in `BENCH_LABEL`.

#![allow(dead_code)]

use super::*;

mod child;
mod machine;
#[allow(unused_imports)] // only the single-server benchmarks start a child this way
pub(crate) use child::*;
pub(crate) use machine::*;

/// A number from the environment variable `name`, else `default`.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A benchmark's `main`: prints `LABEL bench: skipped` unless `PLAIT_BENCH_QUICK`,
/// `PLAIT_BENCH_FORCE` or `--bench` asks for a run, then runs `run` within `limit` and exits
/// with its outcome (1 on failure or time-out, 130 when interrupted).
pub(crate) fn bench_main<F>(limit: Duration, run: impl FnOnce() -> F)
where
    F: Future<Output = Result<(), String>>,
{
    let label = super::BENCH_LABEL;
    let wanted = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|v| v == "1")
        || std::env::var("PLAIT_BENCH_FORCE").is_ok_and(|v| v == "1")
        || std::env::args().any(|arg| arg == "--bench");
    if !wanted {
        println!("{label} bench: skipped");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Leaving `run` (done, failed, timed out or interrupted) drops its servers, which kills them.
    let code = runtime.block_on(async {
        tokio::select! {
            outcome = tokio::time::timeout(limit, run()) => match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(error)) => { eprintln!("{label} bench failed: {error}"); 1 }
                Err(_) => { eprintln!("{label} bench: time limit of {limit:?} reached"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("{label} bench: interrupted"); 130 }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// HTTP / Matrix client-server API

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Arc<str>,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    /// When the whole response body had arrived.
    pub(crate) at: Instant,
    pub(crate) bytes: usize,
}

#[derive(Clone)]
pub(crate) struct User {
    pub(crate) user_id: Arc<str>,
    pub(crate) token: Arc<str>,
}

pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

impl Api {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .timeout(timeout);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| format!("{method} {}: {e}", strip_query(path)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {}: body: {e}", strip_query(path)))?;
        let at = Instant::now();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned())
        });
        Ok(Reply {
            status,
            body,
            at,
            bytes: bytes.len(),
        })
    }

    /// `GET path` as `user`, whatever it answers.
    pub(crate) async fn get(&self, user: &User, path: &str) -> Result<Reply, String> {
        let timeout = Duration::from_secs(60);
        self.call(Method::GET, path, Some(&user.token), None, timeout)
            .await
    }

    /// A call that must answer 200.
    pub(crate) async fn ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let r = self
            .call(method.clone(), path, token, body, timeout)
            .await?;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!(
                "{method} {} {}-> {} {}",
                strip_query(path),
                body.map(|b| format!("{} ", short(b))).unwrap_or_default(),
                r.status,
                short(&r.body)
            ))
        }
    }

    /// Registration with user-interactive auth: the first request gets a 401
    /// with a `session` and the flows; the second completes `m.login.dummy`.
    pub(crate) async fn register(&self, username: &str) -> Result<User, String> {
        const PATH: &str = "/_matrix/client/v3/register";
        let t = Duration::from_secs(60);
        let mut body = json!({
            "username": username,
            "password": PASSWORD,
            "initial_device_display_name": format!("plait {} bench", super::BENCH_LABEL),
        });
        let first = self.call(Method::POST, PATH, None, Some(&body), t).await?;
        let done = if first.status == 200 {
            first // a server may skip UIA; accept it
        } else if first.status == 401 {
            let dummy_flow = first.body["flows"].as_array().is_some_and(|flows| {
                flows.iter().any(|f| {
                    f["stages"]
                        .as_array()
                        .is_some_and(|s| s.len() == 1 && s[0] == "m.login.dummy")
                })
            });
            if !dummy_flow {
                return Err(format!(
                    "POST {PATH} -> 401 without an [m.login.dummy] flow: {}",
                    short(&first.body)
                ));
            }
            let mut auth = json!({ "type": "m.login.dummy" });
            if let Some(s) = first.body.get("session") {
                auth["session"] = s.clone();
            }
            body["auth"] = auth;
            self.ok(Method::POST, PATH, None, Some(&body), t).await?
        } else {
            return Err(format!(
                "POST {PATH} {} -> {} {}",
                short(&body),
                first.status,
                short(&first.body)
            ));
        };
        let user_id = done.body["user_id"].as_str();
        let token = done.body["access_token"].as_str();
        match (user_id, token) {
            (Some(u), Some(tk)) => Ok(User {
                user_id: u.into(),
                token: tk.into(),
            }),
            _ => Err(format!(
                "POST {PATH} -> 200 without user_id/access_token: {}",
                short(&done.body)
            )),
        }
    }

    pub(crate) async fn create_room(&self, user: &User, name: &str) -> Result<String, String> {
        let body = json!({ "preset": "public_chat", "name": name });
        let r = self
            .ok(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                Some(&body),
                Duration::from_secs(60),
            )
            .await?;
        r.body["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "POST /_matrix/client/v3/createRoom -> 200 without room_id: {}",
                    short(&r.body)
                )
            })
    }

    pub(crate) async fn join(&self, user: &User, room_id: &str) -> Result<(), String> {
        let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
        let r = self
            .call(
                Method::POST,
                &path,
                Some(&user.token),
                Some(&json!({})),
                Duration::from_secs(60),
            )
            .await?;
        if r.status == 200 {
            return Ok(());
        }
        // Fall back to the other spec'd join endpoint if this one is not routed.
        if r.status == 404 && r.body["errcode"] == "M_UNRECOGNIZED" {
            let path = format!("/_matrix/client/v3/join/{}", enc(room_id));
            self.ok(
                Method::POST,
                &path,
                Some(&user.token),
                Some(&json!({})),
                Duration::from_secs(60),
            )
            .await?;
            return Ok(());
        }
        Err(format!(
            "POST {path} {{}} -> {} {}",
            r.status,
            short(&r.body)
        ))
    }

    pub(crate) async fn send(
        &self,
        user: &User,
        room_id: &str,
        txn: &str,
        content: &Value,
    ) -> Result<(), String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room_id),
            enc(txn)
        );
        let r = self
            .ok(
                Method::PUT,
                &path,
                Some(&user.token),
                Some(content),
                Duration::from_secs(60),
            )
            .await?;
        if r.body["event_id"].as_str().is_none() {
            return Err(format!(
                "PUT {path} -> 200 without event_id: {}",
                short(&r.body)
            ));
        }
        Ok(())
    }

    pub(crate) async fn sync(
        &self,
        user: &User,
        filter: Option<&str>,
        since: Option<&str>,
        timeout_ms: u64,
        request_timeout: Duration,
    ) -> Result<Reply, String> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(f) = filter {
            let _ = write!(path, "&filter={}", enc(f));
        }
        if let Some(s) = since {
            let _ = write!(path, "&since={}", enc(s));
        }
        self.ok(Method::GET, &path, Some(&user.token), None, request_timeout)
            .await
    }

    /// Uploads the delivery clients' filter: only m.room.message timeline
    /// events of the load room. Falls back to an inline JSON filter.
    pub(crate) async fn make_filter(
        &self,
        user: &User,
        room_id: &str,
        limit: usize,
    ) -> (String, Option<String>) {
        let none = json!({ "not_types": ["*"] });
        let filter = json!({
            "presence": none,
            "account_data": none,
            "room": {
                "rooms": [room_id],
                "timeline": { "limit": limit, "types": ["m.room.message"] },
                "state": none,
                "ephemeral": none,
                "account_data": none,
            },
        });
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&user.user_id));
        match self
            .ok(
                Method::POST,
                &path,
                Some(&user.token),
                Some(&filter),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(r) => match r.body["filter_id"].as_str() {
                Some(id) => (id.to_owned(), None),
                None => (
                    filter.to_string(),
                    Some(format!("no filter_id in {}", short(&r.body))),
                ),
            },
            Err(e) => (filter.to_string(), Some(e)),
        }
    }
}

pub(crate) fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Runs `f(0..n)` with at most `conc` calls in flight; results in index order.
pub(crate) async fn pool<T, F, Fut>(n: usize, conc: usize, f: F) -> Vec<Result<T, String>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..conc.clamp(1, n.max(1)) {
        let (f, next) = (f.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(i).await));
            }
            out
        }));
    }
    let mut slots: Vec<Option<Result<T, String>>> = (0..n).map(|_| None).collect();
    for w in workers {
        match w.await {
            Ok(items) => {
                for (i, r) in items {
                    slots[i] = Some(r);
                }
            }
            Err(e) => return vec![Err(format!("worker task failed: {e}"))],
        }
    }
    slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err("not run".into())))
        .collect()
}

/// Collects results, or the first error together with how many failed.
pub(crate) fn all_ok<T>(what: &str, rs: Vec<Result<T, String>>) -> Result<Vec<T>, String> {
    let failed = rs.iter().filter(|r| r.is_err()).count();
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        match r {
            Ok(v) => out.push(v),
            Err(e) => return Err(format!("{what}: {failed} failed; first error: {e}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Statistics

#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) count: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `xs` (milliseconds).
    pub(crate) fn of(mut xs: Vec<f64>) -> Stats {
        if xs.is_empty() {
            return Stats {
                mean: f64::NAN,
                p50: f64::NAN,
                p90: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
                count: 0,
            };
        }
        xs.sort_by(|a, b| a.total_cmp(b));
        let n = xs.len();
        let pct = |p: f64| xs[(((p / 100.0) * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stats {
            count: n,
            mean: xs.iter().sum::<f64>() / n as f64,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: xs[n - 1],
        }
    }
    pub(crate) fn json(&self) -> Value {
        json!({ "count": self.count, "mean": r3(self.mean), "p50": r3(self.p50), "p90": r3(self.p90),
                "p99": r3(self.p99), "max": r3(self.max) })
    }
    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  (n={})",
            num(self.p50, 2),
            num(self.p90, 2),
            num(self.p99, 2),
            num(self.max, 2),
            self.count
        )
    }
}

/// Rounds to 3 decimals; NaN becomes JSON null.
pub(crate) fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// A number for the table, "n/a" when there is none.
pub(crate) fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "n/a".into()
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Load phases

#[derive(Clone, Copy)]
pub(crate) struct Ctl {
    /// Number of successful sends once known (usize::MAX while sending).
    pub(crate) expected: usize,
    pub(crate) stop: bool,
}

pub(crate) struct WatchOut {
    pub(crate) since: String,
    pub(crate) seen: Vec<Option<Instant>>,
    pub(crate) duplicates: u64,
    pub(crate) limited: u64,
    pub(crate) responses: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

/// One long-polling /sync client: records when it first sees each benchmark
/// event of run `tag` in `room`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch_room(
    api: Api,
    user: User,
    room: Arc<str>,
    filter: Arc<str>,
    mut since: String,
    tag: Arc<str>,
    n_ids: usize,
    timeout_ms: u64,
    mut ctl: watch::Receiver<Ctl>,
    deadline: Instant,
) -> WatchOut {
    let mut seen: Vec<Option<Instant>> = vec![None; n_ids];
    let (mut count, mut duplicates, mut limited, mut responses, mut errors) = (0usize, 0, 0, 0, 0);
    let mut first_error = None;
    let request_timeout = Duration::from_millis(timeout_ms) + Duration::from_secs(30);
    'outer: loop {
        let c = *ctl.borrow();
        if c.stop || count >= c.expected || Instant::now() >= deadline {
            break;
        }
        let res = {
            let fut = api.sync(
                &user,
                Some(&filter),
                Some(&since),
                timeout_ms,
                request_timeout,
            );
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    r = &mut fut => break r,
                    ch = ctl.changed() => {
                        let c = *ctl.borrow();
                        if ch.is_err() || c.stop || count >= c.expected { break 'outer; }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => break 'outer,
                }
            }
        };
        match res {
            Ok(r) => {
                responses += 1;
                if let Some(nb) = r.body["next_batch"].as_str() {
                    since = nb.to_owned();
                }
                let room_v = &r.body["rooms"]["join"][&*room];
                if room_v["timeline"]["limited"].as_bool() == Some(true) {
                    limited += 1;
                }
                for ev in room_v["timeline"]["events"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let content = &ev["content"];
                    if content[KEY_RUN].as_str() != Some(&*tag) {
                        continue;
                    }
                    let Some(id) = content[KEY_ID]
                        .as_u64()
                        .map(|i| i as usize)
                        .filter(|&i| i < n_ids)
                    else {
                        continue;
                    };
                    if seen[id].is_none() {
                        seen[id] = Some(r.at);
                        count += 1;
                    } else {
                        duplicates += 1;
                    }
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    WatchOut {
        since,
        seen,
        duplicates,
        limited,
        responses,
        errors,
        first_error,
    }
}

pub(crate) struct SendRec {
    pub(crate) id: usize,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) ok: bool,
}

pub(crate) async fn send_one(
    api: &Api,
    user: &User,
    room: &str,
    tag: &str,
    id: usize,
) -> (SendRec, Option<String>) {
    let sent_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let content = json!({
        "msgtype": "m.text",
        "body": format!("plait {} bench {tag} #{id}", super::BENCH_LABEL),
        KEY_RUN: tag,
        KEY_ID: id,
        KEY_SENT_MS: sent_ms,
    });
    let txn = format!("bench-{tag}-{id}");
    let start = Instant::now();
    let r = api.send(user, room, &txn, &content).await;
    let end = Instant::now();
    let ok = r.is_ok();
    (SendRec { id, start, end, ok }, r.err())
}
