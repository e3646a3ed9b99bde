//! `GET /_matrix/client/v1/mutual_rooms`: the rooms two users share, paged.

use serde_json::json;

use crate::common::{assert_error, enc, TestServer};

#[tokio::test]
async fn mutual_rooms_lists_shared_joined_rooms_in_pages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut shared = Vec::new();
    for n in 0..103 {
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        if n % 3 == 2 {
            // Bob is invited to this one only, which does not count.
            alice
                .post_ok(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                    json!({ "user_id": "@bob:localhost" }),
                )
                .await;
            continue;
        }
        bob.join(&room).await;
        shared.push(room);
    }
    // A room Bob left does not count either.
    let left = shared.pop().unwrap();
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)),
        json!({}),
    )
    .await;
    shared.sort();
    assert!(shared.len() < 100, "one page");
    let page = alice
        .get_ok("/_matrix/client/v1/mutual_rooms?user_id=%40bob%3Alocalhost")
        .await;
    assert_eq!(page["count"], shared.len());
    assert_eq!(page["joined"], json!(shared));
    assert!(page.get("next_batch").is_none());
    let unstable = bob
        .get_ok("/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id=%40alice%3Alocalhost")
        .await;
    assert_eq!(unstable["joined"], json!(shared));

    let nobody = alice
        .get_ok("/_matrix/client/v1/mutual_rooms?user_id=%40nobody%3Alocalhost")
        .await;
    assert_eq!(nobody, json!({ "count": 0, "joined": [] }));
    for query in [
        "",
        "?user_id=%40alice%3Alocalhost",
        "?user_id=bad",
        "?user_id=%40bob%3Alocalhost&from=bad",
    ] {
        let response = alice
            .get(&format!("/_matrix/client/v1/mutual_rooms{query}"))
            .await;
        assert_eq!(response.0, 400, "{query}: {response:?}");
    }
    assert_error(
        &alice
            .get("/_matrix/client/v1/mutual_rooms?user_id=%40alice%3Alocalhost")
            .await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn mutual_rooms_pages_past_one_hundred() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut shared = Vec::new();
    for _ in 0..102 {
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        bob.join(&room).await;
        shared.push(room);
    }
    shared.sort();
    let first = alice
        .get_ok("/_matrix/client/v1/mutual_rooms?user_id=%40bob%3Alocalhost")
        .await;
    assert_eq!(first["count"], 102);
    assert_eq!(first["joined"], json!(shared[..100]));
    let token = first["next_batch"].as_str().unwrap();
    let second = alice
        .get_ok(&format!(
            "/_matrix/client/v1/mutual_rooms?user_id=%40bob%3Alocalhost&from={}",
            enc(token)
        ))
        .await;
    assert_eq!(second["joined"], json!(shared[100..]));
    assert!(second.get("next_batch").is_none());
}
