//! The admin room's `federation` commands and Synapse's federation destinations API between two
//! Plait servers: destinations with their back-off while the other server is down, the rooms
//! shared with one, retrying now, and denying a server (its requests refused, nothing sent to it, kept over a restart).

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin_rooms::AdminRoom;
use crate::common::{assert_error, enc, federation_ask, ip, Client, TestServer};
use crate::federation::{is_membership, join_via, two_servers, wait_for_event};

/// Runs an admin command until its reply passes `done`; answers that reply.
async fn command_until(admin: &AdminRoom<'_>, line: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        last = admin.run(line).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{line} never answered as expected: {last}");
}

/// The row of `server` in a `federation destinations` reply.
fn row<'a>(reply: &'a str, server: &str) -> &'a str {
    reply
        .lines()
        .find(|line| line.starts_with(&format!("{server}\t")))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_destinations_retry_now_and_deny() {
    let (ca, hs1, hs2) = two_servers().await;
    let admin = AdminRoom::join(&hs1).await;
    let carol = hs1.register("carol").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let remote = hs2.server_name();
    let room = admin.create_room(json!({"preset": "public_chat"})).await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&admin, &room, "bob's join", is_membership(&bob_id, "join")).await;
    admin.send_text(&room, "m1", "hello").await;
    wait_for_event(&bob, &room, "hello", |event| {
        event["content"]["body"] == "hello"
    })
    .await;
    let reply = command_until(&admin, "!admin federation destinations", |reply| {
        row(reply, &remote).contains("\tok\t")
    })
    .await;
    assert!(reply.contains("server\tstate\tqueued"), "{reply}");

    // The other server goes down: sends to it fail and the sender backs off.
    let hs2_dir = hs2.stop().await.unwrap();
    admin.send_text(&room, "m2", "while down").await;
    let reply = command_until(&admin, "!admin federation destinations", |reply| {
        row(reply, &remote).contains("backing off")
    })
    .await;
    assert!(row(&reply, &remote).contains("failures"), "{reply}");
    let destination = format!(
        "/_synapse/admin/v1/federation/destinations/{}",
        enc(&remote)
    );
    let details = admin.get_ok(&destination).await;
    assert_eq!(details["destination"], remote.as_str());
    assert!(details["failure_ts"].as_u64().unwrap() > 0, "{details}");
    assert!(details["retry_last_ts"].as_u64().unwrap() > 0, "{details}");
    let list = admin
        .get_ok("/_synapse/admin/v1/federation/destinations")
        .await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["destinations"][0]["destination"], remote.as_str());
    // The rooms shared with it: the one bob joined, not the admin room.
    let rooms = format!("{destination}/rooms");
    assert_eq!(
        admin.get_ok(&rooms).await,
        json!({"rooms": [{"room_id": room, "stream_ordering": null}], "total": 1})
    );
    assert_error(&carol.get(&rooms).await, 403, "M_FORBIDDEN");
    let unknown_rooms = "/_synapse/admin/v1/federation/destinations/nowhere.example/rooms";
    assert_error(&admin.get(unknown_rooms).await, 404, "M_NOT_FOUND");
    // Non-admins and unknown destinations are refused.
    assert_error(&carol.get(&destination).await, 403, "M_FORBIDDEN");
    let reset = format!("{destination}/reset_connection");
    assert_error(&carol.post(&reset, json!({})).await, 403, "M_FORBIDDEN");
    let unknown = "/_synapse/admin/v1/federation/destinations/nowhere.example";
    assert_error(&admin.get(unknown).await, 404, "M_NOT_FOUND");
    let reply = admin
        .run("!admin federation retry-now nowhere.example")
        .await;
    assert_eq!(reply, "error: nowhere.example is not being backed off from");
    // Retry now, through the command and through the API (each waits for a back-off between
    // attempts, which fail fast while the server is down).
    command_until(
        &admin,
        &format!("!admin federation retry-now {remote}"),
        |reply| reply == format!("retrying {remote} now"),
    )
    .await;
    let mut reset_answer = (0, Value::Null);
    for _ in 0..100 {
        reset_answer = admin.post(&reset, json!({})).await;
        if reset_answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reset_answer, (200, json!({})));

    // Back up: what was queued arrives.
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, Some(hs2_dir.path())).await;
    let bob = Client {
        token: bob.token.clone(),
        ..hs2.client()
    };
    command_until(
        &admin,
        &format!("!admin federation retry-now {remote}"),
        |_| true,
    )
    .await;
    wait_for_event(&bob, &room, "while down", |event| {
        event["content"]["body"] == "while down"
    })
    .await;

    // Denied: its requests are refused and nothing is sent to it.
    for (line, expected) in [
        (
            "!admin federation deny not_a_server!".to_owned(),
            "error: invalid server name not_a_server!".to_owned(),
        ),
        (
            format!("!admin federation allow {remote}"),
            format!("error: {remote} is not denied"),
        ),
        (
            format!("!admin federation deny {remote}"),
            format!("denied {remote}"),
        ),
    ] {
        assert_eq!(admin.run(&line).await, expected);
    }
    let profile = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&format!("@carol:{}", hs1.server_name()))
    );
    match federation_ask(&hs2, &hs1, http::Method::GET, &profile, None).await {
        Err(plait::Error::Matrix {
            kind: ruma::api::error::ErrorKind::Forbidden,
            ..
        }) => {}
        other => panic!("a denied server's query answered {other:?}"),
    }
    admin.send_text(&room, "m3", "while denied").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
        enc(&room)
    );
    let seen = bob.get_ok(&path).await.to_string();
    assert!(!seen.contains("while denied"), "{seen}");
    let reply = admin.run("!admin federation destinations").await;
    assert!(
        row(&reply, &remote).starts_with(&format!("{remote}\tdenied\t0\t")),
        "{reply}"
    );

    // The denial is kept over a restart, and lifted by allow.
    let (token, admin_room) = (admin.client.token.clone(), admin.room.clone());
    drop(admin);
    let hs1_dir = hs1.stop().await.unwrap();
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, Some(hs1_dir.path())).await;
    let admin = AdminRoom {
        server: &hs1,
        client: Client {
            token,
            ..hs1.client()
        },
        room: admin_room,
    };
    let remote_name = ruma::ServerName::parse(&remote).unwrap();
    assert!(hs1.services.admin.blocks.is_server_denied(&remote_name));
    let reply = admin.run("!admin federation denied").await;
    assert_eq!(reply, format!("1 denied servers\nserver\n{remote}"));
    let reply = admin
        .run(&format!("!admin federation allow {remote}"))
        .await;
    assert_eq!(reply, format!("allowed {remote}"));
    federation_ask(&hs2, &hs1, http::Method::GET, &profile, None)
        .await
        .expect("an allowed server's query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_force_join_joins_a_room_of_another_server_over_federation() {
    let (_ca, hs1, hs2) = two_servers().await;
    let admin = AdminRoom::join(&hs1).await;
    let carol = hs1.register("carol").await;
    let dave = hs1.register("dave").await;
    let bob = hs2.register("bob").await;
    let remote = hs2.server_name();
    let first = bob
        .create_room(json!({"preset": "public_chat", "room_alias_name": "far"}))
        .await;
    let second = bob.create_room(json!({"preset": "public_chat"})).await;
    let (carol_id, dave_id) = (carol.user_id().await, dave.user_id().await);

    // By another server's alias, which that server resolves.
    let reply = admin
        .run(format!("!admin users force-join carol #far:{remote}"))
        .await;
    assert_eq!(reply, format!("{carol_id} joined {first}"));
    wait_for_event(
        &bob,
        &first,
        "carol's join",
        is_membership(&carol_id, "join"),
    )
    .await;
    let joined = carol.get_ok("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(joined["joined_rooms"], json!([first]));

    // By room ID through a named server (the room ID's own server is also a candidate).
    let reply = admin
        .run(format!(
            "!admin users force-join dave {second} --via {remote}"
        ))
        .await;
    assert_eq!(reply, format!("{dave_id} joined {second}"));
    wait_for_event(
        &bob,
        &second,
        "dave's join",
        is_membership(&dave_id, "join"),
    )
    .await;
}
