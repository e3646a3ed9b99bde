//! Server ACLs (`m.room.server_acl`) on what a denied server asks of a room: reads, backfill,
//! joins, invites and events are all refused with 403, and nothing it sends is stored.

use serde_json::{json, Value};

use crate::{
    common::{enc, federation_ask as ask},
    federation::{is_membership, join_via, two_servers, wait_for_event},
};

/// The remote answered 403 `M_FORBIDDEN` (which the client passes on as that kind).
fn assert_denied(answer: Result<Value, plait::Error>, what: &str) {
    match answer {
        Ok(body) => panic!("{what} answered {body}"),
        Err(plait::Error::Matrix {
            kind: ruma::api::error::ErrorKind::Forbidden,
            ..
        }) => {}
        Err(error) => panic!("{what}: {error:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_the_acl_denies_gets_nothing_from_the_room() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let carol = hs1.register("carol").await;
    let bob_id = bob.user_id().await;
    let carol_id = carol.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let message = alice.send_text(&room, "m1", "hello").await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;

    // Before the ACL, hs2 may read the room.
    let path_event = format!("/_matrix/federation/v1/event/{}", enc(&message));
    let path_state = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room),
        enc(&message)
    );
    let path_backfill = format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=5",
        enc(&room),
        enc(&message)
    );
    for path in [&path_event, &path_state, &path_backfill] {
        ask(&hs2, &hs1, http::Method::GET, path, None)
            .await
            .unwrap_or_else(|error| panic!("{path} before the ACL: {error}"));
    }

    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            json!({ "allow": ["*"], "deny": ["127.0.0.3"], "allow_ip_literals": true }),
        )
        .await;
    wait_for_event(&bob, &room, "the ACL on hs2", |event| {
        event["type"] == "m.room.server_acl"
    })
    .await;

    for (path, what) in [
        (&path_event, "/event"),
        (&path_state, "/state_ids"),
        (&path_backfill, "/backfill"),
    ] {
        assert_denied(ask(&hs2, &hs1, http::Method::GET, path, None).await, what);
    }
    let path_auth = format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        enc(&room),
        enc(&message)
    );
    assert_denied(
        ask(&hs2, &hs1, http::Method::GET, &path_auth, None).await,
        "/event_auth",
    );
    let path_join = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc(&room),
        enc("@dave:127.0.0.3")
    );
    assert_denied(
        ask(&hs2, &hs1, http::Method::GET, &path_join, None).await,
        "make_join",
    );

    // An invite from the denied server is refused, so bob's invite fails.
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": carol_id }),
        )
        .await;
    assert_ne!(status, 200, "hs1 took an invite from a denied server");
    let (status, sync) = carol.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200);
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");

    // A message from the denied server never reaches hs1's timeline.
    let sent = bob.send_text(&room, "b1", "from a denied server").await;
    alice.send_text(&room, "m2", "after").await;
    wait_for_event(&alice, &room, "alice's later message", |event| {
        event["content"]["body"] == "after"
    })
    .await;
    let (status, _) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&sent)
        ))
        .await;
    assert_eq!(status, 404, "the denied server's event was stored");
}
