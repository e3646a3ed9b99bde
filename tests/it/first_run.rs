//! What a new operator sees on a first run of the real binary: the help, a second instance on
//! the same database, log output to a pipe, the size of an empty database, and the log line of a
//! peer whose TLS certificate is refused.

use std::{os::unix::fs::MetadataExt, path::Path};

use crate::common::{
    ip,
    plait_process::{run_captured, PlaitProcess},
    tls::TestCa,
    TestServer,
};

#[test]
fn help_names_the_defaults_the_environment_and_the_example_config() {
    let run = run_captured(&["--help"], &[], |_| false);
    assert!(run.status.success(), "{}", run.output);
    for expected in [
        "--config",
        "http://127.0.0.1:8008",
        "./data",
        "PLAIT_<KEY>",
        "PLAIT_SERVER_NAME",
        "docs/config.example.toml",
    ] {
        assert!(
            run.output.contains(expected),
            "--help does not mention {expected}:\n{}",
            run.output
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_database_stops_with_a_plain_message() {
    let ca = TestCa::new();
    let first = PlaitProcess::start(ip("127.0.0.20"), &ca).await;
    // Other ports than the first instance's, so that only the database is shared.
    let mut env = first.env();
    for (name, value) in &mut env {
        if name == "PLAIT_LISTEN" || name == "PLAIT_FEDERATION_LISTEN" {
            *value = "127.0.0.20:0".to_owned();
        }
    }
    let second = tokio::task::spawn_blocking(move || run_captured(&[], &env, |_| false))
        .await
        .unwrap();
    assert!(
        !second.terminated && !second.status.success(),
        "the second instance kept running or succeeded ({}):\n{}",
        second.status,
        second.output
    );
    let expected = format!(
        "another Plait process holds the database at {}",
        first.database_dir().display()
    );
    assert!(
        second.output.contains(&expected),
        "no plain message:\n{}",
        second.output
    );
    assert!(
        !second.output.contains("serving") && !second.output.contains("LOCK"),
        "the second instance announced itself or showed RocksDB's error:\n{}",
        second.output
    );
    // The first one is unharmed.
    first.register("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_output_to_a_pipe_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "PLAIT_DATABASE_PATH",
            dir.path().join("db").display().to_string(),
        ),
        ("PLAIT_LISTEN", "127.0.0.21:0".to_owned()),
        ("PLAIT_LOG", "debug".to_owned()),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    // SIGTERM as soon as it serves: the signal handlers are installed before it announces
    // itself, and shutting down logs through `tracing`.
    let run = tokio::task::spawn_blocking(move || {
        run_captured(&[], &env, |output| output.contains("point a Matrix client"))
    })
    .await
    .unwrap();
    assert!(run.terminated, "plait stopped by itself:\n{}", run.output);
    assert!(
        run.output.contains("shutting down"),
        "no log lines to check:\n{}",
        run.output
    );
    assert!(
        !run.output.contains('\u{1b}'),
        "escape codes in piped output:\n{:?}",
        run.output
    );
}

/// Bytes on disk (allocated blocks, as `du` counts them) under `path`.
fn disk_usage(path: &Path) -> u64 {
    let metadata = std::fs::symlink_metadata(path).unwrap();
    let own = metadata.blocks() * 512;
    if !metadata.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .unwrap()
        .map(|entry| disk_usage(&entry.unwrap().path()))
        .sum::<u64>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_stays_small_on_disk() {
    let ca = TestCa::new();
    let plait = PlaitProcess::start(ip("127.0.0.20"), &ca).await;
    plait.register("alice").await;
    let bytes = disk_usage(&plait.database_dir());
    eprintln!("empty database after start: {bytes} bytes on disk");
    assert!(
        bytes < 16 << 20,
        "an empty database takes {bytes} bytes on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_peer_certificate_is_logged_with_its_cause() {
    // The peer's certificate comes from a CA the Plait process does not trust.
    let plait = PlaitProcess::start(ip("127.0.0.20"), &TestCa::new()).await;
    let peer = TestServer::start_federated(ip("127.0.0.22"), &TestCa::new(), None).await;
    peer.register("bob").await;
    let alice = plait.register("alice").await;
    let bob_id = format!("@bob:{}", peer.server_name());
    let path = format!("/_matrix/client/v3/profile/{}", crate::common::enc(&bob_id));
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, 502, "{body}");
    let log = plait.log_tail(200);
    let line = log
        .lines()
        .find(|line| line.contains("remote server failed"))
        .unwrap_or_else(|| panic!("no warning about the peer:\n{log}"));
    assert!(
        line.contains("error sending request") && line.contains("invalid peer certificate"),
        "the warning lacks the TLS cause: {line}"
    );
}
