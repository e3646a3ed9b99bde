//! Server-side key backups: versions, keys, counts and etags, and the version checks.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, TestServer};

fn session(first_message_index: u64, verified: bool) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": 0,
        "is_verified": verified,
        "session_data": { "ciphertext": format!("c{first_message_index}") },
    })
}

#[tokio::test]
async fn key_backup_round_trip_and_version_checks() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_error(
        &alice.get("/_matrix/client/v3/room_keys/version").await,
        404,
        "M_NOT_FOUND",
    );
    let version_body = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}});
    let first = alice
        .post_ok("/_matrix/client/v3/room_keys/version", version_body.clone())
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/room_keys/version",
                json!({"algorithm": 1}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );

    let room = "!room:localhost";
    let keys_path = |version: &str, suffix: &str| {
        format!("/_matrix/client/v3/room_keys/keys{suffix}?version={version}")
    };
    let stored = alice
        .put_ok(
            &keys_path(&first, ""),
            json!({"rooms": { room: { "sessions": { "s1": session(5, false) } } }}),
        )
        .await;
    assert_eq!(stored["count"], 1);
    let etag = stored["etag"].as_str().unwrap().to_owned();
    // A worse key does not replace the stored one; a better one does.
    let session_path = keys_path(&first, &format!("/{}/s1", enc(room)));
    alice.put_ok(&session_path, session(9, false)).await;
    assert_eq!(alice.get_ok(&session_path).await["first_message_index"], 5);
    let better = alice.put_ok(&session_path, session(7, true)).await;
    assert_ne!(better["etag"], etag);
    assert_eq!(alice.get_ok(&session_path).await["first_message_index"], 7);
    alice
        .put_ok(
            &keys_path(&first, &format!("/{}", enc(room))),
            json!({"sessions": { "s2": session(0, false) }}),
        )
        .await;
    let all = alice.get_ok(&keys_path(&first, "")).await;
    assert_eq!(all["rooms"][room]["sessions"].as_object().unwrap().len(), 2);
    let info = alice.get_ok("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(info["version"], first.as_str());
    assert_eq!(info["count"], 2);
    assert_error(
        &alice
            .put(&session_path, json!({"first_message_index": 1}))
            .await,
        400,
        "M_BAD_JSON",
    );

    // A newer version makes the old one read-only for uploads.
    let second = alice
        .post_ok("/_matrix/client/v3/room_keys/version", version_body.clone())
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = alice.put(&session_path, session(1, true)).await;
    assert_error(&wrong, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(wrong.1["current_version"], second.as_str());
    assert_error(
        &alice.get(&keys_path("999999", "")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .get(&keys_path(&second, &format!("/{}/s1", enc(room))))
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .put(
                &format!("/_matrix/client/v3/room_keys/version/{second}"),
                json!({"algorithm": "other", "auth_data": {}}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    alice
        .put_ok(
            &format!("/_matrix/client/v3/room_keys/version/{second}"),
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "def"}}),
        )
        .await;

    let deleted = alice.delete(&session_path, json!({})).await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    assert_eq!(deleted.1["count"], 1);
    alice
        .delete(
            &format!("/_matrix/client/v3/room_keys/version/{first}"),
            json!({}),
        )
        .await;
    assert_error(
        &alice
            .get(&format!("/_matrix/client/v3/room_keys/version/{first}"))
            .await,
        404,
        "M_NOT_FOUND",
    );
    let latest = alice.get_ok("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(latest["auth_data"]["public_key"], "def");
}

#[tokio::test]
async fn key_backup_request_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = alice
        .post_ok(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}}),
        )
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys = "/_matrix/client/v3/room_keys/keys";
    assert_error(&alice.get(keys).await, 400, "M_MISSING_PARAM");
    assert_error(
        &alice.get(&format!("{keys}?version=abc")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice.get("/_matrix/client/v3/room_keys/version/abc").await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &alice
            .get(&format!("{keys}/not-a-room?version={version}"))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    // A `rooms` key that is not a room ID is refused like any malformed body (it was stored
    // unchecked before the endpoint took ruma's request type).
    assert_error(
        &alice
            .put(
                &format!("{keys}?version={version}"),
                json!({"rooms": { "not-a-room": { "sessions": {} } }}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .put(
                &format!("{keys}?version={version}"),
                json!({"rooms": { "!room:localhost": {} }}),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    let empty = alice.get_ok(&format!("{keys}?version={version}")).await;
    assert_eq!(empty, json!({"rooms": {}}));
    let info = alice.get_ok("/_matrix/client/v3/room_keys/version").await;
    assert!(info["etag"].is_string(), "{info}");
    assert_eq!(
        info,
        json!({
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {},
            "count": 0,
            "etag": info["etag"],
            "version": version,
        })
    );
}
