//! The admin room's `tokens`, `reports` and `server notice`/`server shutdown` commands:
//! registration tokens made, listed and revoked; reports announced, listed and resolved; server
//! notices to one user or all; a graceful shutdown that exits with status 0. Bad arguments answer
//! an error and change nothing.

use std::time::Duration;

use serde_json::json;

use crate::admin_room::{admin_in_room, at, bob_with_a_message, command_text, notices_after, user};
use crate::common::{enc, Client, TestServer};

/// Registers `name` with a registration token; the status.
async fn register_with_token(server: &TestServer, name: &str, token: &str) -> u16 {
    let client = server.client();
    let body = json!({"username": name, "password": "password"});
    let (status, first) = client.post("/_matrix/client/v3/register", body).await;
    assert_eq!(status, 401, "{first}");
    let auth =
        json!({"type": "m.login.registration_token", "token": token, "session": first["session"]});
    let body = json!({"username": name, "password": "password", "auth": auth});
    client.post("/_matrix/client/v3/register", body).await.0
}

#[tokio::test]
async fn tokens_create_list_and_revoke_registration_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let (admin, room_id) = admin_in_room(&server).await;
    server.stop().await;
    let server = TestServer::start_at(dir.path(), |config| {
        config.registration = plait::config::Registration::Token;
    })
    .await;
    let admin = at(&server, &admin);
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin tokens create --token invite-1 --uses 1 --expires 7d",
    )
    .await;
    assert!(
        text.starts_with("created registration token invite-1 (1 uses, expires 20"),
        "{text}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin tokens create").await;
    let random = text.split_whitespace().nth(3).unwrap().to_owned();
    assert_eq!(random.len(), 16, "{text}");
    assert!(
        text.ends_with("(any number of uses, never expires)"),
        "{text}"
    );
    assert_eq!(register_with_token(&server, "carol", "invite-1").await, 200);
    assert_eq!(register_with_token(&server, "dave", "invite-1").await, 401);
    let text = command_text(&admin, &server, &room_id, "!admin tokens list").await;
    assert!(text.starts_with("2 registration tokens\n"), "{text}");
    assert!(text.contains("invite-1\t1\t1 uses\texpires 20"), "{text}");
    assert!(
        text.contains(&format!(
            "{random}\t0\tany number of uses\tnever expires\tyes"
        )),
        "{text}"
    );
    let text = command_text(
        &admin,
        &server,
        &room_id,
        &format!("!admin tokens revoke {random}"),
    )
    .await;
    assert_eq!(text, format!("revoked registration token {random}"));
    assert_eq!(register_with_token(&server, "erin", &random).await, 401);
    for (line, expected) in [
        ("!admin tokens create --expires soon", "invalid expiry soon"),
        (
            "!admin tokens create --expires 2020-01-01",
            "is in the past",
        ),
        ("!admin tokens create --uses many", "invalid value 'many'"),
        ("!admin tokens create --token invite-1", "already exists"),
        (
            "!admin tokens create --token \"bad token\"",
            "invalid registration token",
        ),
        ("!admin tokens revoke nothing", "not found"),
    ] {
        let text = command_text(&admin, &server, &room_id, line).await;
        assert!(text.contains(expected), "{line}: {text}");
    }
    let text = command_text(&admin, &server, &room_id, "!admin tokens list").await;
    assert!(text.starts_with("1 registration tokens\n"), "{text}");
    drop(dir);
}

#[tokio::test]
async fn reports_are_announced_listed_and_resolved() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let (bob, bob_room, event_id) = bob_with_a_message(&server).await;
    let before = admin.send_text(&room_id, "x0", "waiting for reports").await;
    let alice_id = format!("@alice:{}", server.server_name());
    bob.post_ok(
        &format!("/_matrix/client/v3/users/{}/report", enc(&alice_id)),
        json!({"reason": "rude"}),
    )
    .await;
    bob.post_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/report/{}",
            enc(&bob_room),
            enc(&event_id)
        ),
        json!({"reason": "oops"}),
    )
    .await;
    let mut announced = Vec::new();
    for _ in 0..200 {
        announced = notices_after(&admin, &server, &room_id, &before).await;
        if announced.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(announced.len(), 2, "{announced:?}");
    let first = announced[0]["body"].as_str().unwrap();
    assert!(
        first.starts_with(&format!(
            "new report 1: @bob:{} reported user {alice_id} (rude)",
            server.server_name()
        )),
        "{first}"
    );
    let second = announced[1]["body"].as_str().unwrap();
    assert!(
        second.contains(&format!("reported event {event_id}")),
        "{second}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin reports list").await;
    assert!(text.starts_with("2 open reports\n"), "{text}");
    assert!(
        text.contains(&format!("1\tuser {alice_id}\t@bob:")),
        "{text}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin reports resolve 1").await;
    assert_eq!(text, format!("resolved report 1 about user {alice_id}"));
    let text = command_text(&admin, &server, &room_id, "!admin reports list").await;
    assert!(text.starts_with("1 open reports\n"), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin reports list --all").await;
    assert!(text.starts_with("2 reports\n"), "{text}");
    for (line, expected) in [
        ("!admin reports resolve 1", "already resolved"),
        ("!admin reports resolve 99", "report 99 not found"),
        ("!admin reports resolve one", "invalid value 'one'"),
    ] {
        let text = command_text(&admin, &server, &room_id, line).await;
        assert!(text.contains(expected), "{line}: {text}");
    }
}

/// The bodies of the messages in `user`'s server notices room.
async fn notices_of(server: &TestServer, client: &Client, localpart: &str) -> Vec<String> {
    let Some(room) = server
        .services
        .server_notices
        .get_room(&user(server, localpart))
        .unwrap()
    else {
        return Vec::new();
    };
    client.join(room.as_str()).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
        enc(room.as_str())
    );
    client.get_ok(&path).await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn server_notice_reaches_one_user_or_all() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin server notice bob Maintenance at noon",
    )
    .await;
    assert_eq!(
        text,
        format!("sent a server notice to @bob:{}", server.server_name())
    );
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin server notice --all Back soon",
    )
    .await;
    assert_eq!(text, "sent a server notice to 2 users");
    assert_eq!(
        notices_of(&server, &bob, "bob").await,
        ["Maintenance at noon", "Back soon"]
    );
    assert_eq!(notices_of(&server, &admin, "alice").await, ["Back soon"]);
    for (line, expected) in [
        (
            "!admin server notice",
            "required arguments were not provided",
        ),
        ("!admin server notice nobody hello", "does not exist"),
        ("!admin server notice bob", "the message is empty"),
    ] {
        let text = command_text(&admin, &server, &room_id, line).await;
        assert!(text.contains(expected), "{line}: {text}");
    }
    assert_eq!(notices_of(&server, &bob, "bob").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_stops_the_process_with_status_0() {
    use crate::common::{
        ip, plait_process::run_captured, plait_process::PlaitProcess, tls::TestCa,
    };

    let mut plait = PlaitProcess::start(ip("127.0.0.22"), &TestCa::new()).await;
    let alice = plait.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let event_id = alice.send_text(&room, "t1", "kept").await;
    let socket = plait.database_dir().join("admin.sock");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = plait.env();
    let run = tokio::task::spawn_blocking(move || {
        run_captured(&["admin", "server", "shutdown"], &env, |_| false)
    })
    .await
    .unwrap();
    assert!(run.output.contains("shutting down"), "{}", run.output);
    let status = plait.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|status| status.success()),
        "{status:?}\n{}",
        plait.log_tail(30)
    );
    // What was written before is there after a restart.
    plait.restart().await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room),
        enc(&event_id)
    );
    let (status, body) = plait.client(alice.token.as_deref()).get(&path).await;
    assert_eq!(status, 200, "{body}");
}
