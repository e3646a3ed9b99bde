//! Receiving and sending events around gaps in what a server has: a redaction of an event the
//! redacting server never saw, and a pushed event whose history and auth chain its sender
//! cannot fully provide.

use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc},
    federation::{join_via, two_servers, wait_for_event},
};

/// An event ID of the room version 12 form that no server has.
const UNSEEN: &str = "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redaction_of_an_unseen_event_is_sent_by_a_user_who_may_redact() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;

    // Alice (the creator) has the redact level: hs1 sends her redaction although it does not
    // have the event, and hs2 receives it.
    let answer = alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(UNSEEN)
            ),
            json!({ "reason": "spam seen elsewhere" }),
        )
        .await;
    let redaction = answer["event_id"].as_str().unwrap().to_owned();
    let received = wait_for_event(&bob, &room, "the redaction", |event: &Value| {
        event["event_id"] == redaction.as_str()
    })
    .await;
    assert_eq!(received["type"], "m.room.redaction", "{received}");
    assert_eq!(received["content"]["redacts"], UNSEEN, "{received}");

    // Bob may only redact his own events, which his server would have: an unknown one is 404.
    let refused = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r2",
                enc(&room),
                enc(UNSEEN)
            ),
            json!({}),
        )
        .await;
    assert_error(&refused, 404, "M_NOT_FOUND");
    // A known event of another user stays forbidden to him.
    let message = alice.send_text(&room, "m1", "hello").await;
    wait_for_event(&bob, &room, "alice's message", |event: &Value| {
        event["event_id"] == message.as_str()
    })
    .await;
    let refused = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r3",
                enc(&room),
                enc(&message)
            ),
            json!({}),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}
