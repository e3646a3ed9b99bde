//! `GET /metrics` on its own listener (`metrics_address`): the Prometheus text format with
//! requests by route template and status, events committed and the trees' sizes; scraped by a
//! real Prometheus (Debian's `prometheus`, installed with apt-get when missing) whose query API
//! then returns the request counter. Also the request log line: route template, status and user,
//! never the access token.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::common::{enc, plait_process::run_captured, TestServer};

/// A loopback address with a port that was free a moment ago.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The route template of sending a message.
const SEND_ROUTE: &str = "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}";

/// A server with metrics on, where alice has sent `messages` messages.
async fn server_with_traffic(messages: usize) -> (TestServer, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let server = TestServer::start_at(&dir.path().join("db"), |config| {
        config.metrics_address = Some(metrics);
    })
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for index in 0..messages {
        alice.send_text(&room, &format!("m{index}"), "hello").await;
    }
    (server, metrics, dir)
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_in_the_text_format() {
    let (server, metrics, _dir) = server_with_traffic(3).await;
    let response = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let sends = format!(
        "plait_http_requests_total{{method=\"PUT\",route=\"{SEND_ROUTE}\",status=\"200\"}} 3"
    );
    assert!(text.contains(&sends), "{text}");
    assert!(
        text.contains(&format!(
            "plait_http_request_duration_seconds_count{{method=\"PUT\",route=\"{SEND_ROUTE}\"}} 3"
        )),
        "{text}"
    );
    // createRoom commits the room's first events, then three messages.
    let committed: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("plait_events_committed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(committed >= 8, "{committed}");
    assert!(
        text.contains("plait_database_tree_bytes{tree=\"pduid_pdu\"}"),
        "{text}"
    );
    assert!(!text.contains("!"), "no raw room ID in a label: {text}");

    // The client listener does not serve metrics, and the metrics listener nothing else.
    let (status, _) = server.client().get("/metrics").await;
    assert_eq!(status, 404);
    let other = reqwest::get(format!("http://{metrics}/_matrix/client/versions"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    server.stop().await;
}

/// A Prometheus process, killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the `prometheus` binary is there, installing Debian's package when it is not.
fn prometheus_installed() -> bool {
    crate::common::debian::installed("prometheus", "prometheus")
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_request_counter() {
    if !tokio::task::spawn_blocking(prometheus_installed)
        .await
        .unwrap()
    {
        eprintln!(
            "SKIPPED a_real_prometheus_scrapes_the_request_counter: Debian's `prometheus` \
             package could not be installed"
        );
        return;
    }
    let (server, metrics, dir) = server_with_traffic(2).await;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: plait\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = free_address();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = format!(
        "http://{web}/api/v1/query?query={}",
        enc(&format!(
            "plait_http_requests_total{{route=\"{SEND_ROUTE}\",status=\"200\"}}"
        ))
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let answer: Option<Value> = match reqwest::get(&query).await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        if let Some(result) = answer
            .as_ref()
            .and_then(|answer| answer["data"]["result"].as_array())
            .and_then(|result| result.first())
        {
            break result.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not return the counter within 60 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(result["metric"]["method"], "PUT", "{result}");
    assert_eq!(result["metric"]["job"], "plait", "{result}");
    assert_eq!(result["value"][1], "2", "{result}");
    server.stop().await;
}

#[tokio::test]
async fn each_request_is_logged_once_with_its_route_template_and_never_its_token() {
    let client_address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("PLAIT_LISTEN".to_owned(), client_address.to_string()),
        (
            "PLAIT_DATABASE_PATH".to_owned(),
            dir.path().join("db").display().to_string(),
        ),
        ("PLAIT_RATE_LIMITS_ENABLED".to_owned(), "false".to_owned()),
    ];
    let run = tokio::task::spawn_blocking(move || {
        run_captured(&[], &env, |output| {
            output.contains("route=/_matrix/client/v3/account/whoami")
        })
    });
    let base = format!("http://{client_address}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "plait did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let register = |body: Value| {
        http.post(format!("{base}/_matrix/client/v3/register"))
            .json(&body)
            .send()
    };
    let first: Value = register(json!({"username": "alice", "password": "password"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let registered: Value = register(json!({
        "username": "alice",
        "password": "password",
        "auth": {"type": "m.login.dummy", "session": first["session"]},
    }))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let whoami = http
        .get(format!(
            "{base}/_matrix/client/v3/account/whoami?access_token={token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 200);
    let run = run.await.unwrap();
    let output = run.output;
    assert!(
        !output.contains(&token),
        "the access token was logged:\n{output}"
    );
    assert!(!output.contains("password"), "{output}");
    let line = output
        .lines()
        .find(|line| line.contains("route=/_matrix/client/v3/account/whoami"))
        .unwrap_or_else(|| panic!("no request line:\n{output}"));
    for field in [
        " INFO ",
        "plait::requests",
        "method=GET",
        "status=200",
        "latency_ms=",
        "user=@alice:localhost",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let registers = output
        .lines()
        .filter(|line| {
            line.contains("plait::requests: request")
                && line.contains("route=/_matrix/client/v3/register ")
        })
        .count();
    assert_eq!(registers, 2, "one line per request:\n{output}");
}
