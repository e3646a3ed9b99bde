//! Crash durability: an event whose send returned 200 survives `kill -9` of the real binary, and
//! a simulated power cut (everything the database files received after their last fsync lost).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

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
    spawn_with(dir, port, &[]).await
}

async fn spawn_with(dir: &std::path::Path, port: u16, env: &[(&str, String)]) -> (Child, Client) {
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_plait"))
            .envs(env.iter().map(|(key, value)| (key, value)))
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

/// Registers alice on a fresh server (as a client would, through user-interactive auth) and
/// creates a room of hers: her client and the room.
async fn alice_with_a_room(client: Client) -> (Client, String) {
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
    (alice, room)
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
    let (alice, room) = alice_with_a_room(client).await;
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

/// The shim of `tests/common/synclog.c`, compiled for this run.
fn build_sync_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/synclog.c");
    let shim = dir.join("synclog.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fsync-recording shim");
    assert!(status.success(), "compiling {}", source.display());
    shim
}

/// A power cut after the process died: every file under `dir` is cut back to the size it had
/// at its last fsync (per the shim's log), and files never synced are deleted. What is left is
/// then recorded as synced, since it is what the disk holds when the server starts again.
fn cut_power(dir: &Path, log: &Path) {
    let mut synced: HashMap<u64, u64> = HashMap::new();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["sync", inode, size] => {
                synced.insert(inode.parse().unwrap(), size.parse().unwrap());
            }
            ["forget", inode] => {
                synced.remove(&inode.parse().unwrap());
            }
            _ => panic!("unexpected line in the sync log: {line:?}"),
        }
    }
    let mut kept = String::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                folders.push(path);
                continue;
            }
            match synced.get(&metadata.ino()) {
                None => std::fs::remove_file(&path).unwrap(),
                Some(&size) => {
                    if metadata.len() > size {
                        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                        file.set_len(size).unwrap();
                    }
                    kept.push_str(&format!(
                        "sync {} {}\n",
                        metadata.ino(),
                        size.min(metadata.len())
                    ));
                }
            }
        }
    }
    std::fs::write(log, kept).unwrap();
}

/// Every event ID of a room's timeline, paging `/messages` backwards from the end.
async fn timeline_ids(client: &Client, room: &str) -> Option<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut from = String::new();
    loop {
        let (status, page) = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000{from}",
                enc(room)
            ))
            .await;
        if status != 200 {
            return None;
        }
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        if chunk.is_empty() {
            return Some(ids);
        }
        ids.extend(
            chunk
                .iter()
                .filter_map(|event| event["event_id"].as_str().map(str::to_owned)),
        );
        match page["end"].as_str() {
            Some(end) => from = format!("&from={}", enc(end)),
            None => return Some(ids),
        }
    }
}

/// Sends one message; the event ID only if the server answered 200.
async fn send(client: &Client, room: &str, txn: &str) -> Option<String> {
    let response = client
        .http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            client.base,
            enc(room)
        ))
        .bearer_auth(client.token.as_deref().unwrap())
        .json(&json!({"msgtype": "m.text", "body": txn}))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    Some(body["event_id"].as_str()?.to_owned())
}

/// What [`power_cuts`] saw: events whose send answered 200, and how many of those were gone
/// after a power cut.
struct PowerCutOutcome {
    acknowledged: usize,
    lost: usize,
}

/// Runs `rounds` of: start the binary under the shim, send from 8 concurrent clients, kill it
/// with SIGKILL after a random 0.2–1.2 s, cut the power, restart, and check every event ever
/// acknowledged is still in the room's timeline.
async fn power_cuts(sync_writes: bool, rounds: usize) -> PowerCutOutcome {
    let work = tempfile::tempdir().unwrap();
    let shim = build_sync_shim(work.path());
    let db = work.path().join("db");
    let log = work.path().join("sync.log");
    let env = [
        ("LD_PRELOAD", shim.display().to_string()),
        ("PLAIT_SYNC_LOG", log.display().to_string()),
        ("PLAIT_SYNC_WRITES", sync_writes.to_string()),
    ];
    let port = free_port();
    let (mut child, client) = spawn_with(&db, port, &env).await;
    let (alice, room) = alice_with_a_room(client).await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut outcome = PowerCutOutcome {
        acknowledged: 0,
        lost: 0,
    };
    for round in 0..rounds {
        let senders: Vec<_> = (0..8)
            .map(|sender| {
                let (alice, room, acknowledged) =
                    (alice.clone(), room.clone(), Arc::clone(&acknowledged));
                tokio::spawn(async move {
                    for index in 0..400 {
                        let txn = format!("r{round}s{sender}n{index}");
                        // Requests in flight when the server dies fail: never acknowledged.
                        let Some(event_id) = send(&alice, &room, &txn).await else {
                            return;
                        };
                        acknowledged.lock().unwrap().push(event_id);
                    }
                })
            })
            .collect();
        let delay = rand::random::<u64>() % 1000 + 200;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        for sender in senders {
            sender.await.unwrap();
        }
        cut_power(&db, &log);
        let restarted;
        (child, restarted) = spawn_with(&db, port, &env).await;
        let client = Client {
            token: alice.token.clone(),
            ..restarted
        };
        let present = timeline_ids(&client, &room).await.unwrap_or_default();
        let acknowledged = acknowledged.lock().unwrap();
        outcome.acknowledged = acknowledged.len();
        outcome.lost = acknowledged
            .iter()
            .filter(|id| !present.contains(*id))
            .count();
        if outcome.lost > 0 {
            break;
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_twenty_power_cuts() {
    let outcome = power_cuts(true, 20).await;
    eprintln!(
        "20 power cuts with sync_writes: {} acknowledged, {} lost",
        outcome.acknowledged, outcome.lost
    );
    assert_eq!(
        outcome.lost, 0,
        "{} of {} acknowledged events were lost to a power cut",
        outcome.lost, outcome.acknowledged
    );
    assert!(
        outcome.acknowledged > 100,
        "too few sends to mean anything: {}",
        outcome.acknowledged
    );
}

/// The control: without fsyncs the same simulated power cut does lose acknowledged events, so
/// the shim and the cut are real and the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_sync_writes_a_power_cut_loses_acknowledged_events() {
    let outcome = power_cuts(false, 1).await;
    eprintln!(
        "a power cut without sync_writes: {} acknowledged, {} lost",
        outcome.acknowledged, outcome.lost
    );
    assert!(outcome.acknowledged > 0);
    assert!(
        outcome.lost > 0,
        "no acknowledged event was lost without fsync: the cut is not real"
    );
}
