//! Pagination tokens: `end` on short `/messages` pages, and `/members?at=` with the
//! `prev_batch` of an initial sync and with a token from before the room's first event.

use serde_json::{json, Value};

use crate::common::{enc, TestServer};

#[tokio::test]
async fn a_short_page_of_messages_still_has_an_end_and_the_next_page_has_none() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "t1", "text").await;
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/f1",
                enc(&room)
            ),
            json!({"msgtype": "m.file", "body": "a.png", "url": "mxc://localhost/abc"}),
        )
        .await;
    let base = format!("/_matrix/client/v3/rooms/{}/messages", enc(&room));
    let filter = enc(r#"{"contains_url":true}"#);
    let page = alice.get_ok(&format!("{base}?dir=b&filter={filter}")).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1, "{page}");
    let end = page["end"].as_str().expect("a page with events has an end");
    let after = alice
        .get_ok(&format!("{base}?dir=b&filter={filter}&from={}", enc(end)))
        .await;
    assert_eq!(after["chunk"], json!([]), "{after}");
    assert!(after.get("end").is_none(), "{after}");
    // Forwards to the newest event: the token lets the client continue later.
    let forwards = alice.get_ok(&format!("{base}?dir=f&limit=50")).await;
    assert!(forwards["end"].is_string(), "{forwards}");
}

#[tokio::test]
async fn members_at_an_initial_syncs_prev_batch_and_before_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.send_text(&room, "m1", "hello").await;
    let initial = alice.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    let timeline = &initial["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["events"][0]["type"], "m.room.create", "{timeline}");
    let prev_batch = timeline["prev_batch"].as_str().unwrap().to_owned();
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    bob.send_text(&room, "m2", "hello back").await;
    let members = |body: &Value| -> Vec<String> {
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let base = format!("/_matrix/client/v3/rooms/{}/members", enc(&room));
    // The timeline reached back to the room's creation: its token is the sync's position.
    let at_sync = alice
        .get_ok(&format!("{base}?at={}", enc(&prev_batch)))
        .await;
    assert_eq!(members(&at_sync), ["@alice:localhost"], "{at_sync}");
    // Before the room's first event there were no members.
    let before = alice.get_ok(&format!("{base}?at=s0")).await;
    assert!(members(&before).is_empty(), "{before}");
}
