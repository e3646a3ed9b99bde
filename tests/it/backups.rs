//! Online backups and `plait restore`: a backup taken while a client keeps sending holds every
//! event acknowledged before it began, and a second server started on the restored copy serves
//! them through `/messages` and `/sync`; a restore into a folder that is not empty and a backup
//! folder that cannot be written fail clearly and change nothing.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::{json, Value};

use crate::common::{enc, plait_process::run_captured, TestServer};

/// Runs `plait restore <backup> <target>` and returns its exit success and output.
fn restore_with_the_binary(backup: &Path, target: &Path) -> (bool, String) {
    let run = run_captured(
        &[
            "restore",
            &backup.display().to_string(),
            &target.display().to_string(),
        ],
        &[],
        |_| false,
    );
    assert!(
        !run.terminated,
        "plait restore did not finish: {}",
        run.output
    );
    (run.status.success(), run.output)
}

/// Every event ID of `room` that `/messages` pages back to, newest first.
async fn all_messages(client: &crate::common::Client, room: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(room)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let page = client.get_ok(&path).await;
        for event in page["chunk"].as_array().unwrap() {
            ids.push(event["event_id"].as_str().unwrap().to_owned());
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => {
                from = Some(end.to_owned())
            }
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_sending_restores_every_acknowledged_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "backed up"})).await;
    let mut before = Vec::new();
    for index in 0..20 {
        before.push(alice.send_text(&room, &format!("b{index}"), "before").await);
    }
    // A sender that keeps going while the backup is taken; each entry is an event ID with the
    // instant its `200` arrived.
    let acknowledged: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sender = {
        let (alice, room, acknowledged) = (alice.clone(), room.clone(), Arc::clone(&acknowledged));
        tokio::spawn(async move {
            let mut index = 0;
            while !*stopped.borrow_and_update() {
                let id = alice.send_text(&room, &format!("d{index}"), "during").await;
                acknowledged.lock().unwrap().push((id, Instant::now()));
                index += 1;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let began = Instant::now();
    let backup = plait::service::backup::create(&server.services)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    sender.await.unwrap();
    let after = alice.send_text(&room, "a0", "after").await;

    let listed = plait::service::backup::list(&server.services)
        .await
        .unwrap();
    assert_eq!(listed, vec![backup.clone()]);
    assert!(backup.size_bytes > 0);
    let check = plait::service::backup::verify(&server.services, &backup.name)
        .await
        .unwrap();
    assert!(check.entries > 100, "{check:?}");

    let expected: Vec<String> = before
        .into_iter()
        .chain(
            acknowledged
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, at)| *at < began)
                .map(|(id, _)| id.clone()),
        )
        .collect();
    let during = acknowledged.lock().unwrap().len();
    assert!(
        expected.len() > 21 && during > expected.len() - 20,
        "the sender kept sending across the backup: {} before, {during} during",
        expected.len()
    );

    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("db");
    let (ok, output) = restore_with_the_binary(&backup.path, &target);
    assert!(ok, "{output}");
    assert!(output.contains("restored"), "{output}");

    let second = TestServer::start_at(&target, |_| {}).await;
    let mut on_second = alice.clone();
    on_second.base = second.base.clone();
    let served = all_messages(&on_second, &room).await;
    for id in &expected {
        assert!(
            served.contains(id),
            "{id} acknowledged before the backup is missing"
        );
    }
    assert!(
        !served.contains(&after),
        "an event sent after the backup is there"
    );
    let sync = on_second.get_ok("/_matrix/client/v3/sync").await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        timeline.as_array().is_some_and(|events| !events.is_empty()),
        "{sync}"
    );
    // The restored database takes new events: its state and indexes are whole.
    let new = on_second
        .send_text(&room, "r0", "on the restored copy")
        .await;
    let event: Value = on_second
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&new)
        ))
        .await;
    assert_eq!(event["content"]["body"], "on the restored copy");
    second.stop().await;
}

#[tokio::test]
async fn restore_refuses_a_folder_that_is_not_empty_and_changes_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    alice.create_room(json!({})).await;
    let backup = plait::service::backup::create(&server.services)
        .await
        .unwrap();
    let occupied = tempfile::tempdir().unwrap();
    std::fs::write(occupied.path().join("notes.txt"), b"keep me").unwrap();
    let (ok, output) = restore_with_the_binary(&backup.path, occupied.path());
    assert!(!ok, "{output}");
    assert!(output.contains("not empty"), "{output}");
    let names: Vec<_> = std::fs::read_dir(occupied.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
    assert_eq!(
        std::fs::read(occupied.path().join("notes.txt")).unwrap(),
        b"keep me"
    );
    // Nothing was left beside it either (the staging folder goes when a restore fails).
    let parent = occupied.path().parent().unwrap();
    let leftovers = std::fs::read_dir(parent)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().contains(".restoring-")
        })
        .count();
    assert_eq!(leftovers, 0);

    // A folder that is no backup is refused too.
    let target = occupied.path().join("new");
    let (ok, output) = restore_with_the_binary(occupied.path(), &target);
    assert!(!ok, "{output}");
    assert!(output.contains("not a database backup"), "{output}");
    assert!(!target.exists());
}

#[tokio::test]
async fn a_backup_folder_that_cannot_be_written_fails_clearly_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A file where a folder should be: even root cannot create a folder under it.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let server = TestServer::start_at(&dir.path().join("db"), |config| {
        config.backup_path = Some(blocker.join("backups"));
    })
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let error = plait::service::backup::create(&server.services)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot create backup folder") && error.contains("blocker"),
        "{error}"
    );
    assert!(plait::service::backup::list(&server.services)
        .await
        .is_err_and(|error| error.to_string().contains("blocker")));
    let unknown = plait::service::backup::verify(&server.services, "backup-1").await;
    assert!(unknown.is_err());
    let traversal = plait::service::backup::verify(&server.services, "../db").await;
    assert!(traversal
        .unwrap_err()
        .to_string()
        .contains("not a backup name"));
    alice.send_text(&room, "t0", "still serving").await;
    server.stop().await;
}
