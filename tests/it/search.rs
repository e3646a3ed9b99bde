//! Server-side search over HTTP: what a user may find, ordering, filters, context, pagination,
//! redaction and bad requests.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// Searches `room_events` with extra criteria merged in; returns the category's answer.
async fn search(client: &Client, term: &str, extra: Value) -> Value {
    search_page(client, term, extra, None).await
}

async fn search_page(client: &Client, term: &str, extra: Value, next: Option<&str>) -> Value {
    let mut criteria = json!({ "search_term": term });
    if let (Some(criteria), Some(extra)) = (criteria.as_object_mut(), extra.as_object()) {
        criteria.extend(extra.clone());
    }
    let path = match next {
        Some(token) => format!("/_matrix/client/v3/search?next_batch={}", enc(token)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    client
        .post_ok(
            &path,
            json!({ "search_categories": { "room_events": criteria } }),
        )
        .await["search_categories"]["room_events"]
        .clone()
}

/// The result events' IDs in order.
fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["result"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn join(client: &Client, room: &str) {
    client
        .post_ok(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .await;
}

#[tokio::test]
async fn search_finds_visible_words_in_rank_and_recent_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Martian Hall", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    let secret = alice
        .send_text(&room, "t0", "martians before bob joined")
        .await;
    join(&bob, &room).await;
    let once = bob.send_text(&room, "t1", "The Martians are coming").await;
    let twice = alice
        .send_text(&room, "t2", "martians, MARTIANS and men")
        .await;
    let unrelated = alice.send_text(&room, "t3", "nothing to see").await;
    let other_room = carol.create_room(json!({"preset": "private_chat"})).await;
    carol
        .send_text(&other_room, "t4", "martians in a private room")
        .await;

    // Rank (the default): more occurrences first; only what bob may see.
    let answer = search(&bob, "martians", json!({})).await;
    assert_eq!(ids(&answer), vec![twice.clone(), once.clone()], "{answer}");
    assert_eq!(answer["count"], 2);
    assert_eq!(answer["highlights"], json!(["martians"]));
    assert_eq!(answer["results"][0]["rank"], 2);
    assert_eq!(
        answer["results"][0]["result"]["sender"],
        alice.user_id().await
    );
    assert!(answer["results"][0]["result"]["unsigned"]["age"].is_u64());
    assert!(answer.get("next_batch").is_none());

    // Alice created the room, so she also finds her first message; words are case-folded.
    let answer = search(&alice, "MARTIANS", json!({"order_by": "recent"})).await;
    assert_eq!(ids(&answer), vec![twice.clone(), once.clone(), secret]);

    // Every word must match; the room name is found by content.name (by alice: it was set
    // before bob joined, and the history is visible to joined members only).
    let answer = search(&bob, "martians men", json!({})).await;
    assert_eq!(ids(&answer), vec![twice.clone()]);
    assert_eq!(answer["highlights"], json!(["martians", "men"]));
    assert_eq!(search(&bob, "hall", json!({})).await["count"], 0);
    let answer = search(&alice, "hall", json!({"keys": ["content.name"]})).await;
    assert_eq!(answer["count"], 1);
    assert_eq!(answer["results"][0]["result"]["type"], "m.room.name");
    let answer = search(&alice, "hall", json!({"keys": ["content.body"]})).await;
    assert_eq!(answer["count"], 0);
    assert_eq!(
        search(&bob, "see", json!({})).await["results"][0]["result"]["event_id"],
        unrelated
    );
    assert_eq!(search(&bob, "nowhere", json!({})).await["count"], 0);

    // Carol sees her own room only; the filter narrows rooms and senders.
    let answer = search(&carol, "martians", json!({})).await;
    assert_eq!(answer["count"], 1);
    assert_eq!(answer["results"][0]["result"]["room_id"], other_room);
    let answer = search(&alice, "martians", json!({"filter": {"not_rooms": [room]}})).await;
    assert_eq!(answer["count"], 0);
    let bob_id = bob.user_id().await;
    let answer = search(&alice, "martians", json!({"filter": {"senders": [bob_id]}})).await;
    assert_eq!(ids(&answer), vec![once]);

    // After leaving, bob still finds what he could see, but nothing sent later.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    alice
        .send_text(&room, "t5", "martians after bob left")
        .await;
    let answer = search(&bob, "martians", json!({"order_by": "recent"})).await;
    assert_eq!(ids(&answer)[0], twice);
    assert_eq!(answer["count"], 2);
}

#[tokio::test]
async fn search_pages_with_next_batch_and_returns_context_state_and_groups() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    join(&bob, &room).await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&bob.user_id().await)
        ),
        json!({"displayname": "Bobby"}),
    )
    .await;
    let mut sent = Vec::new();
    for index in 0..5 {
        alice.send_text(&room, &format!("a{index}"), "filler").await;
        sent.push(
            bob.send_text(
                &room,
                &format!("b{index}"),
                &format!("needle number {index}"),
            )
            .await,
        );
    }
    let after = alice.send_text(&room, "last", "closing words").await;

    // Recent order, two per page, until no next_batch is left.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..5 {
        let answer = search_page(
            &bob,
            "needle",
            json!({"order_by": "recent", "filter": {"limit": 2}}),
            next.as_deref(),
        )
        .await;
        assert_eq!(answer["count"], 5);
        seen.extend(ids(&answer));
        next = answer["next_batch"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // Rank order pages too (all ranks equal: newest first).
    let first = search(&bob, "needle", json!({"filter": {"limit": 3}})).await;
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let second = search_page(
        &bob,
        "needle",
        json!({"filter": {"limit": 3}}),
        Some(&token),
    )
    .await;
    let mut all = ids(&first);
    all.extend(ids(&second));
    assert_eq!(all, newest_first);
    assert!(second.get("next_batch").is_none());
    // A full page always has a next_batch (as Synapse answers), even if the next page is empty.
    let full = search(&bob, "needle", json!({"filter": {"limit": 5}})).await;
    let full_token = full["next_batch"].as_str().unwrap().to_owned();
    let empty = search_page(
        &bob,
        "needle",
        json!({"filter": {"limit": 5}}),
        Some(&full_token),
    )
    .await;
    assert_eq!(empty["results"], json!([]), "{empty}");
    assert!(empty.get("next_batch").is_none());
    // A token of the other order is refused.
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/search?next_batch={token}"),
            json!({"search_categories": {"room_events": {"search_term": "needle", "order_by": "recent"}}}),
        )
        .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");

    // Context around the newest needle: the filler before it, the closing words after it.
    let answer = search(
        &bob,
        "number 4",
        json!({"event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
               "include_state": true,
               "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]}}),
    )
    .await;
    assert_eq!(ids(&answer), vec![sent[4].clone()]);
    let context = &answer["results"][0]["context"];
    assert_eq!(context["events_before"][0]["content"]["body"], "filler");
    assert_eq!(context["events_after"][0]["event_id"], after);
    assert!(context["start"].as_str().unwrap().starts_with('t'));
    assert!(context["end"].as_str().unwrap().starts_with('t'));
    assert_eq!(
        context["profile_info"][bob.user_id().await]["displayname"],
        "Bobby"
    );
    let state = answer["state"][&room].as_array().unwrap();
    assert!(state.iter().any(|event| event["type"] == "m.room.create"));
    assert_eq!(
        answer["groups"]["room_id"][&room]["results"],
        json!([sent[4]])
    );
    assert_eq!(answer["groups"]["sender"][bob.user_id().await]["order"], 1);
}

#[tokio::test]
async fn redacted_messages_leave_the_search_index() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let gone = alice
        .send_text(&room, "t1", "secret password hunter2")
        .await;
    let kept = alice.send_text(&room, "t2", "another secret").await;
    assert_eq!(search(&alice, "secret", json!({})).await["count"], 2);
    alice
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&gone)
            ),
            json!({"reason": "oops"}),
        )
        .await;
    let answer = search(&alice, "secret", json!({})).await;
    assert_eq!(ids(&answer), vec![kept]);
    assert_eq!(search(&alice, "hunter2", json!({})).await["count"], 0);
}

#[tokio::test]
async fn bad_search_requests_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let path = "/_matrix/client/v3/search";
    let check = |body: Value, errcode: &'static str| {
        let alice = alice.clone();
        async move {
            let response = alice.post(path, body.clone()).await;
            assert_eq!(response.1["errcode"], errcode, "{body}: {}", response.1);
            assert_eq!(response.0, 400, "{body}");
        }
    };
    check(json!({}), "M_BAD_JSON").await;
    check(
        json!({"search_categories": {"room_events": {}}}),
        "M_BAD_JSON",
    )
    .await;
    check(
        json!({"search_categories": {"room_events": {"search_term": 5}}}),
        "M_BAD_JSON",
    )
    .await;
    check(
        json!({"search_categories": {"people": {"search_term": "x"}}}),
        "M_INVALID_PARAM",
    )
    .await;
    check(
        json!({"search_categories": {"room_events": {"search_term": "x", "order_by": "best"}}}),
        "M_INVALID_PARAM",
    )
    .await;
    check(json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.url"]}}}), "M_INVALID_PARAM").await;
    check(
        json!({"search_categories": {"room_events": {"search_term": "x", "keys": "content.body"}}}),
        "M_BAD_JSON",
    )
    .await;
    check(
        json!({"search_categories": {"room_events": {"search_term": "x", "filter": []}}}),
        "M_BAD_JSON",
    )
    .await;
    check(json!({"search_categories": {"room_events": {"search_term": "x", "event_context": {"before_limit": -1}}}}), "M_INVALID_PARAM").await;
    check(json!({"search_categories": {"room_events": {"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}}}), "M_INVALID_PARAM").await;
    let many = (0..20)
        .map(|index| format!("w{index}"))
        .collect::<Vec<_>>()
        .join(" ");
    check(
        json!({"search_categories": {"room_events": {"search_term": many}}}),
        "M_INVALID_PARAM",
    )
    .await;
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/search?next_batch=garbage",
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await;
    assert_error(&(status, body), 400, "M_INVALID_PARAM");
    let unauthenticated = server
        .client()
        .post(
            path,
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await;
    assert_error(&unauthenticated, 401, "M_MISSING_TOKEN");
    // A term without words finds nothing rather than everything.
    let answer = search(&alice, " ... ", json!({})).await;
    assert_eq!(answer["count"], 0);
}
