//! Crash durability: an event whose send returned 200 survives `kill -9` of the real binary.

use std::{process::Stdio, time::Duration};

use serde_json::json;

use crate::common::{enc, Client};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(dir: &std::path::Path, port: u16) -> (Child, Client) {
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_plait"))
            .env("PLAIT_DATABASE_PATH", dir)
            .env("PLAIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PLAIT_LOG", "warn")
            .env("PLAIT_RATE_LIMITS_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = Client {
        base: format!("http://127.0.0.1:{port}"),
        token: None,
        http: reqwest::Client::new(),
    };
    for _ in 0..200 {
        if client
            .http
            .get(format!("{}/_matrix/client/versions", client.base))
            .send()
            .await
            .is_ok()
        {
            return (child, client);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("plait did not start");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn acknowledged_events_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut child, client) = spawn(dir.path(), port).await;
    let first = client
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "alice", "password": "pw"}),
        )
        .await;
    let registered = client.post_ok("/_matrix/client/v3/register", json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy", "session": first.1["session"]}})).await;
    let alice = Client {
        token: Some(registered["access_token"].as_str().unwrap().to_owned()),
        ..client
    };
    let room = alice.create_room(json!({})).await;
    let mut sent = Vec::new();
    for index in 0..20 {
        sent.push(
            alice
                .send_text(&room, &format!("t{index}"), &format!("m{index}"))
                .await,
        );
    }
    // SIGKILL right after the last 200: no shutdown code runs.
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let (_child, restarted) = spawn(dir.path(), port).await;
    let alice = Client {
        token: alice.token.clone(),
        ..restarted
    };
    for event in &sent {
        let fetched = alice
            .get_ok(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(event)
            ))
            .await;
        assert!(fetched["content"]["body"]
            .as_str()
            .unwrap()
            .starts_with('m'));
    }
    let messages = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
            enc(&room)
        ))
        .await;
    assert_eq!(
        messages["chunk"][0]["event_id"],
        sent.last().unwrap().as_str()
    );
}
