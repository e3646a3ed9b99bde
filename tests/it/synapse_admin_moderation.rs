//! Synapse's admin API for room moderation as admin tools call it: deleting a room in the
//! background with its status (v2) or at once (v1), purging history with its status, and room blocks; a plain user
//! is refused and bad requests change nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin_api::{logged_in, register_signed, server_with_secret, SECRET};
use crate::common::{assert_error, enc, Client, TestServer};

/// A server with a shared secret, an admin made through it, and plain users bob and carol.
async fn admin_bob_and_carol() -> (TestServer, Client, Client, Client) {
    let server = server_with_secret().await;
    let (status, answer) = register_signed(&server, SECRET, "root", true).await;
    assert_eq!(status, 200, "{answer}");
    let admin = logged_in(&server, &answer);
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    (server, admin, bob, carol)
}

/// Polls a status path until `status` is no longer `active`; answers the last body.
async fn settled(admin: &Client, path: &str) -> Value {
    for _ in 0..200 {
        let body = admin.get_ok(path).await;
        if body["status"] != "active" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} stayed active");
}

/// Starts a history purge of `path` with `body` and waits until it reports `complete`.
async fn purge_to_completion(admin: &Client, path: &str, body: Value) {
    let purge_id = admin.post_ok(path, body).await["purge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status_path = format!("/_synapse/admin/v1/purge_history_status/{purge_id}");
    assert_eq!(settled(admin, &status_path).await["status"], "complete");
}

async fn join_status(client: &Client, room_id: &str) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
    client.post(&path, json!({})).await
}

#[tokio::test]
async fn delete_room_v2_moves_users_to_a_notice_room_and_reports_its_status() {
    let (server, admin, bob, carol) = admin_bob_and_carol().await;
    let host = server.server_name();
    let room_id = bob
        .create_room(json!({"preset": "public_chat", "room_alias_name": "bad"}))
        .await;
    carol.join(&room_id).await;
    let message = bob.send_text(&room_id, "m1", "bad content").await;
    let path = format!("/_synapse/admin/v2/rooms/{}", enc(&room_id));

    // Bad requests first: nothing is started, nothing changes.
    assert_error(&bob.delete(&path, json!({})).await, 403, "M_FORBIDDEN");
    let unknown = format!("/_synapse/admin/v2/rooms/{}", enc(&format!("!nope:{host}")));
    assert_error(&admin.delete(&unknown, json!({})).await, 404, "M_NOT_FOUND");
    let stranger = json!({"new_room_user_id": "@someone:elsewhere.example"});
    assert_error(&admin.delete(&path, stranger).await, 400, "M_INVALID_PARAM");
    let status_by_room = format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&room_id));
    assert_error(&admin.get(&status_by_room).await, 404, "M_NOT_FOUND");
    let members = format!("/_synapse/admin/v1/rooms/{}/members", enc(&room_id));
    assert_eq!(admin.get_ok(&members).await["total"], 2);

    let body = json!({
        "new_room_user_id": format!("@root:{host}"),
        "room_name": "Gone",
        "message": "This room broke the rules.",
        "block": true,
        "purge": true,
    });
    let (status, started) = admin.delete(&path, body).await;
    assert_eq!(status, 200, "{started}");
    let delete_id = started["delete_id"].as_str().unwrap().to_owned();
    let status = settled(
        &admin,
        &format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}"),
    )
    .await;
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["room_id"], room_id.as_str());
    assert_eq!(status["delete_id"], delete_id.as_str());
    let shutdown = &status["shutdown_room"];
    let mut kicked: Vec<String> = serde_json::from_value(shutdown["kicked_users"].clone()).unwrap();
    kicked.sort();
    assert_eq!(kicked, [format!("@bob:{host}"), format!("@carol:{host}")]);
    assert_eq!(shutdown["failed_to_kick_users"], json!([]));
    assert_eq!(shutdown["local_aliases"], json!([format!("#bad:{host}")]));
    let new_room_id = shutdown["new_room_id"].as_str().unwrap().to_owned();
    let by_room = admin.get_ok(&status_by_room).await;
    assert_eq!(by_room["results"][0]["delete_id"], delete_id.as_str());

    // Bob and carol are in the notice room, which has the message and the old alias.
    for client in [&bob, &carol] {
        let joined = client.get_ok("/_matrix/client/v3/joined_rooms").await;
        assert_eq!(joined["joined_rooms"], json!([new_room_id]), "{joined}");
        assert_error(&join_status(client, &room_id).await, 403, "M_FORBIDDEN");
    }
    let messages = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(&new_room_id)
    );
    let chunk = bob.get_ok(&messages).await["chunk"].to_string();
    assert!(chunk.contains("This room broke the rules."), "{chunk}");
    let alias = format!(
        "/_matrix/client/v3/directory/room/{}",
        enc(&format!("#bad:{host}"))
    );
    assert_eq!(bob.get_ok(&alias).await["room_id"], new_room_id.as_str());
    // Purged: the message is gone; blocked, by the admin.
    let event = format!(
        "/_synapse/admin/v1/rooms/{}/messages?limit=100",
        enc(&room_id)
    );
    assert!(!admin.get_ok(&event).await.to_string().contains(&message));
    let block = format!("/_synapse/admin/v1/rooms/{}/block", enc(&room_id));
    assert_eq!(
        admin.get_ok(&block).await,
        json!({"block": true, "user_id": format!("@root:{host}")})
    );
    let missing = "/_synapse/admin/v2/rooms/delete_status/nosuchid";
    assert_error(&admin.get(missing).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn purge_history_deletes_old_events_and_reports_its_status() {
    let (server, admin, bob, carol) = admin_bob_and_carol().await;
    let room_id = bob.create_room(json!({"preset": "public_chat"})).await;
    carol.join(&room_id).await;
    let bobs_old = bob.send_text(&room_id, "m1", "old from bob").await;
    let old = carol.send_text(&room_id, "m2", "old from carol").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = bob.send_text(&room_id, "m3", "newer").await;
    let path = format!("/_synapse/admin/v1/purge_history/{}", enc(&room_id));

    assert_error(
        &bob.post(&path, json!({"purge_up_to_ts": 1})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&admin.post(&path, json!({})).await, 400, "M_MISSING_PARAM");
    let unknown = format!(
        "/_synapse/admin/v1/purge_history/{}",
        enc(&format!("!nope:{}", server.server_name()))
    );
    assert_error(
        &admin.post(&unknown, json!({"purge_up_to_ts": 1})).await,
        404,
        "M_NOT_FOUND",
    );

    // Up to the newer event, local events kept (the default): nothing of this server goes.
    let to_event = format!("{path}/{}", enc(&newer));
    let started = admin.post_ok(&to_event, json!({})).await;
    let purge_id = started["purge_id"].as_str().unwrap().to_owned();
    let status_path = format!("/_synapse/admin/v1/purge_history_status/{purge_id}");
    assert_eq!(
        settled(&admin, &status_path).await,
        json!({"status": "complete"})
    );
    let event = |id: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room_id),
            enc(id)
        )
    };
    assert_eq!(carol.get(&event(&old)).await.0, 200);

    // With delete_local_events, by time: both old messages go, the newer one stays.
    let newer_ts = carol.get_ok(&event(&newer)).await["origin_server_ts"]
        .as_u64()
        .unwrap();
    let body = json!({"delete_local_events": true, "purge_up_to_ts": newer_ts});
    purge_to_completion(&admin, &path, body).await;
    assert_error(&carol.get(&event(&old)).await, 404, "M_NOT_FOUND");
    assert_error(&carol.get(&event(&bobs_old)).await, 404, "M_NOT_FOUND");
    assert_eq!(carol.get(&event(&newer)).await.0, 200);
    let missing = "/_synapse/admin/v1/purge_history_status/nosuchid";
    assert_error(&admin.get(missing).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn rooms_are_blocked_and_unblocked_through_the_api() {
    let (server, admin, bob, carol) = admin_bob_and_carol().await;
    let room_id = bob.create_room(json!({"preset": "public_chat"})).await;
    let block = format!("/_synapse/admin/v1/rooms/{}/block", enc(&room_id));
    assert_eq!(admin.get_ok(&block).await, json!({"block": false}));
    assert_error(
        &bob.put(&block, json!({"block": true})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&bob.get(&block).await, 403, "M_FORBIDDEN");
    assert_error(
        &admin.put(&block, json!({"block": "yes"})).await,
        400,
        "M_BAD_JSON",
    );
    assert_eq!(admin.get_ok(&block).await, json!({"block": false}));

    assert_eq!(
        admin.put_ok(&block, json!({"block": true})).await,
        json!({"block": true})
    );
    assert_error(&join_status(&carol, &room_id).await, 403, "M_FORBIDDEN");
    assert_eq!(
        admin.put_ok(&block, json!({"block": false})).await,
        json!({"block": false})
    );
    carol.join(&room_id).await;
    // A room unknown here is blocked ahead of time.
    let unknown = format!(
        "/_synapse/admin/v1/rooms/{}/block",
        enc(&format!("!later:{}", server.server_name()))
    );
    admin.put_ok(&unknown, json!({"block": true})).await;
    assert_eq!(admin.get_ok(&unknown).await["block"], true);
}

#[tokio::test]
async fn delete_room_v1_answers_once_the_room_is_deleted() {
    let (server, admin, bob, carol) = admin_bob_and_carol().await;
    let host = server.server_name();
    let room_id = bob
        .create_room(json!({"preset": "public_chat", "room_alias_name": "old"}))
        .await;
    carol.join(&room_id).await;
    let path = format!("/_synapse/admin/v1/rooms/{}", enc(&room_id));
    assert_error(&bob.delete(&path, json!({})).await, 403, "M_FORBIDDEN");
    let stranger = json!({"new_room_user_id": "@someone:elsewhere.example"});
    assert_error(&admin.delete(&path, stranger).await, 400, "M_INVALID_PARAM");
    assert_eq!(
        bob.get_ok("/_matrix/client/v3/joined_rooms").await["joined_rooms"],
        json!([room_id])
    );

    // The answer comes once everything is done: nobody local is left in the room.
    let (status, answer) = admin.delete(&path, json!({"purge": false})).await;
    assert_eq!(status, 200, "{answer}");
    let mut kicked: Vec<String> = serde_json::from_value(answer["kicked_users"].clone()).unwrap();
    kicked.sort();
    assert_eq!(kicked, [format!("@bob:{host}"), format!("@carol:{host}")]);
    assert_eq!(answer["failed_to_kick_users"], json!([]));
    assert_eq!(answer["local_aliases"], json!([format!("#old:{host}")]));
    assert_eq!(answer["new_room_id"], Value::Null);
    for client in [&bob, &carol] {
        let joined = client.get_ok("/_matrix/client/v3/joined_rooms").await;
        assert_eq!(joined["joined_rooms"], json!([]), "{joined}");
    }
    // Not blocked (block defaults to false): bob may join again.
    assert_eq!(join_status(&bob, &room_id).await.0, 200);

    // A room unknown here: refused without block, only blocked with it.
    let unknown = format!("!elsewhere:{host}");
    let unknown_path = format!("/_synapse/admin/v1/rooms/{}", enc(&unknown));
    assert_error(
        &admin.delete(&unknown_path, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    let blocked = admin.delete(&unknown_path, json!({"block": true})).await;
    assert_eq!(blocked.0, 200, "{}", blocked.1);
    assert_eq!(blocked.1["kicked_users"], json!([]));
    let block = format!("/_synapse/admin/v1/rooms/{}/block", enc(&unknown));
    assert_eq!(admin.get_ok(&block).await["block"], true);
}

/// A purge that deletes every reply of a thread, all in one batch, takes the thread out of the
/// thread list: removing the latest reply must not move the thread to an earlier reply that the
/// same batch deletes.
#[tokio::test]
async fn purging_every_reply_of_a_thread_takes_it_out_of_the_thread_list() {
    let (_server, admin, bob, _carol) = admin_bob_and_carol().await;
    let room_id = bob.create_room(json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    // The root is a state event, which history purges keep.
    let topic_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    let root = bob.put_ok(&topic_path, json!({"topic": "root"})).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for txn in ["r1", "r2"] {
        let reply = json!({
            "msgtype": "m.text",
            "body": txn,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        });
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        bob.put_ok(&path, reply).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = bob.send_text(&room_id, "m3", "newer").await;
    let threads_path = format!("/_matrix/client/v1/rooms/{room}/threads");
    let threads = bob.get_ok(&threads_path).await;
    assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");

    let event_path = format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&newer));
    let newer_ts = bob.get_ok(&event_path).await["origin_server_ts"]
        .as_u64()
        .unwrap();
    let path = format!("/_synapse/admin/v1/purge_history/{room}");
    let body = json!({"delete_local_events": true, "purge_up_to_ts": newer_ts});
    purge_to_completion(&admin, &path, body).await;
    let threads = bob.get_ok(&threads_path).await;
    assert_eq!(threads["chunk"], json!([]), "{threads}");
}
