//! End-to-end encryption support: device keys, claims, device lists, to-device messages and
//! cross-signing, driven over HTTP; `key_backup.rs` and `e2ee_clients.rs` hold the rest.

use serde_json::{json, Value};

use crate::common::{assert_error, enc, Client, TestServer};

/// Logs `name` in on another device and returns the client and its device ID.
pub(crate) async fn login(server: &TestServer, name: &str) -> (Client, String) {
    let client = server.client();
    let body = client
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "password"}),
        )
        .await;
    (
        Client {
            token: Some(body["access_token"].as_str().unwrap().to_owned()),
            ..client
        },
        body["device_id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn whoami(client: &Client) -> (String, String) {
    let body = client.get_ok("/_matrix/client/v3/account/whoami").await;
    (
        body["user_id"].as_str().unwrap().to_owned(),
        body["device_id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) fn device_keys(user: &str, device: &str, identity: &str) -> Value {
    json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): identity, format!("ed25519:{device}"): format!("ed-{identity}") },
        "signatures": { user: { format!("ed25519:{device}"): "self-signature" } },
    })
}

/// Two users on one server who share a room.
pub(crate) async fn alice_and_bob(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    (alice, bob, room)
}

async fn next_batch(client: &Client, since: Option<&str>) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?since={since}"),
        None => "/_matrix/client/v3/sync".to_owned(),
    };
    client.get_ok(&path).await
}

#[tokio::test]
async fn keys_upload_query_claim_round_trip() {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (alice_id, alice_device) = whoami(&alice).await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/devices/{alice_device}"),
            json!({"display_name": "Alice's laptop"}),
        )
        .await;
    let upload = alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice_id, &alice_device, "identity1"),
                "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk1" } },
                "fallback_keys": { "signed_curve25519:FFFF": { "key": "fallback1", "fallback": true } },
            }),
        )
        .await;
    assert_eq!(upload["one_time_key_counts"]["signed_curve25519"], 1);
    let sync = next_batch(&alice, None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 1);
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // The same keys again are fine; new identity keys replace the old ones (a client that lost
    // its keys re-creates them, as Synapse allows), and others see the new ones.
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, &alice_device, "identity1")}),
        )
        .await;
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, &alice_device, "identity2")}),
        )
        .await;
    let query = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": { &alice_id: [] }}),
        )
        .await;
    assert_eq!(
        query["device_keys"][&alice_id][&alice_device]["keys"]
            [format!("curve25519:{alice_device}")],
        "identity2"
    );
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, &alice_device, "identity1")}),
        )
        .await;
    let other_device = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, "OTHER", "identity3")}),
        )
        .await;
    assert_error(&other_device, 400, "M_INVALID_PARAM");
    let bad_otk = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": { "no-algorithm": {"key": "x"} }}),
        )
        .await;
    assert_error(&bad_otk, 400, "M_BAD_JSON");
    let reused_id = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": { "signed_curve25519:AAAA": { "key": "different" } }}),
        )
        .await;
    assert_error(&reused_id, 400, "M_INVALID_PARAM");
    let not_object = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": []}),
        )
        .await;
    assert_error(&not_object, 400, "M_BAD_JSON");

    let query = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": { &alice_id: [] }}),
        )
        .await;
    let keys = &query["device_keys"][&alice_id][&alice_device];
    assert_eq!(
        keys["keys"][format!("curve25519:{alice_device}")],
        "identity1"
    );
    assert_eq!(
        keys["unsigned"]["device_display_name"], "Alice's laptop",
        "{query}"
    );
    assert_eq!(query["failures"], json!({}));
    assert_error(
        &bob.post("/_matrix/client/v3/keys/query", json!({})).await,
        400,
        "M_BAD_JSON",
    );

    let claim_body =
        json!({"one_time_keys": { &alice_id: { &alice_device: "signed_curve25519" } }});
    let first = bob
        .post_ok("/_matrix/client/v3/keys/claim", claim_body.clone())
        .await;
    assert_eq!(
        first["one_time_keys"][&alice_id][&alice_device]["signed_curve25519:AAAA"]["key"],
        "otk1"
    );
    let sync = next_batch(&alice, None).await;
    assert_eq!(
        sync["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );
    // No one-time key is left: the fallback key is handed out, and stays.
    for _ in 0..2 {
        let fallback = bob
            .post_ok("/_matrix/client/v3/keys/claim", claim_body.clone())
            .await;
        assert_eq!(
            fallback["one_time_keys"][&alice_id][&alice_device]["signed_curve25519:FFFF"]["key"],
            "fallback1"
        );
    }
    let sync = next_batch(&alice, None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn device_lists_report_new_devices_and_room_changes() {
    let server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob(&server).await;
    let carol = server.register("carol").await;
    let (alice_id, _) = whoami(&alice).await;
    let since = next_batch(&bob, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_since = next_batch(&carol, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let (alice_phone, phone_device) = login(&server, "alice").await;
    alice_phone
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, &phone_device, "phone")}),
        )
        .await;
    let sync = next_batch(&bob, Some(&since)).await;
    assert_eq!(sync["device_lists"]["changed"], json!([alice_id]), "{sync}");
    let to = sync["next_batch"].as_str().unwrap();
    let changes = bob
        .get_ok(&format!(
            "/_matrix/client/v3/keys/changes?from={since}&to={to}"
        ))
        .await;
    assert_eq!(changes["changed"], json!([alice_id]));
    let carol_sync = next_batch(&carol, Some(&carol_since)).await;
    assert_eq!(
        carol_sync["device_lists"]["changed"],
        json!([]),
        "carol shares no room with alice"
    );
    assert_error(
        &bob.get("/_matrix/client/v3/keys/changes?from=s0").await,
        400,
        "M_MISSING_PARAM",
    );
    assert_error(
        &bob.get("/_matrix/client/v3/keys/changes?from=x&to=s1")
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // Carol joining makes her a user bob shares a room with; her leaving ends that.
    let since = to.to_owned();
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    let sync = next_batch(&bob, Some(&since)).await;
    assert_eq!(sync["device_lists"]["changed"], json!(["@carol:localhost"]));
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            json!({}),
        )
        .await;
    let sync = next_batch(&bob, Some(&since)).await;
    assert_eq!(sync["device_lists"]["left"], json!(["@carol:localhost"]));

    // Renaming a device with keys is a device list change.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice_phone
        .put_ok(
            &format!("/_matrix/client/v3/devices/{phone_device}"),
            json!({"display_name": "phone"}),
        )
        .await;
    let sync = next_batch(&bob, Some(&since)).await;
    assert_eq!(sync["device_lists"]["changed"], json!([alice_id]));

    // Deleting a device is a device list change too.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice_phone
        .post_ok("/_matrix/client/v3/logout", json!({}))
        .await;
    let sync = next_batch(&bob, Some(&since)).await;
    assert_eq!(sync["device_lists"]["changed"], json!([alice_id]));
    let query = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": { &alice_id: [] }}),
        )
        .await;
    assert!(query["device_keys"][&alice_id].get(&phone_device).is_none());
}

#[tokio::test]
async fn to_device_messages_are_delivered_until_acknowledged() {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (bob_id, bob_device) = whoami(&bob).await;
    let (bob_phone, _) = login(&server, "bob").await;
    let since = next_batch(&bob, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let phone_since = next_batch(&bob_phone, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = "/_matrix/client/v3/sendToDevice/m.room_key_request/txn1";
    let body = json!({"messages": { &bob_id: { &bob_device: { "hello": "laptop" } } }});
    alice.put_ok(path, body.clone()).await;
    // The same transaction again sends nothing.
    alice.put_ok(path, body).await;

    let first = next_batch(&bob, Some(&since)).await;
    let events = first["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!(events[0]["type"], "m.room_key_request");
    assert_eq!(events[0]["sender"], "@alice:localhost");
    assert_eq!(events[0]["content"]["hello"], "laptop");
    // Not acknowledged yet: a retry with the old token gets it again.
    let retry = next_batch(&bob, Some(&since)).await;
    assert_eq!(retry["to_device"]["events"].as_array().unwrap().len(), 1);
    let next = retry["next_batch"].as_str().unwrap();
    let acknowledged = next_batch(&bob, Some(next)).await;
    assert_eq!(acknowledged["to_device"]["events"], json!([]));
    let phone = next_batch(&bob_phone, Some(&phone_since)).await;
    assert_eq!(
        phone["to_device"]["events"],
        json!([]),
        "only the addressed device"
    );

    // `*` reaches every device.
    alice
        .put_ok(
            "/_matrix/client/v3/sendToDevice/m.test/txn2",
            json!({"messages": { &bob_id: { "*": { "to": "all" } } }}),
        )
        .await;
    for (client, since) in [(&bob, next), (&bob_phone, phone_since.as_str())] {
        let sync = next_batch(client, Some(since)).await;
        assert_eq!(sync["to_device"]["events"][0]["content"]["to"], "all");
    }

    assert_error(
        &alice
            .put("/_matrix/client/v3/sendToDevice/m.test/txn3", json!({}))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .put(
                "/_matrix/client/v3/sendToDevice/m.test/txn4",
                json!({"messages": { "not-a-user": { "*": {} } }}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn to_device_message_wakes_a_long_poll() {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (bob_id, bob_device) = whoami(&bob).await;
    let since = next_batch(&bob, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.get_ok(&format!(
                "/_matrix/client/v3/sync?since={since}&timeout=30000"
            ))
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    alice
        .put_ok(
            "/_matrix/client/v3/sendToDevice/m.test/txn",
            json!({"messages": { &bob_id: { &bob_device: { "wake": true } } }}),
        )
        .await;
    let sync = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("woken by the message")
        .unwrap();
    assert_eq!(sync["to_device"]["events"][0]["content"]["wake"], true);
}

/// A signing key whose version is its own public key, as cross-signing key IDs are.
pub(crate) fn key_pair() -> (plait::crypto::SigningKey, String) {
    let first = plait::crypto::SigningKey::generate("tmp").unwrap();
    let public = first.public_key_base64();
    let key = plait::crypto::SigningKey::from_pkcs8(first.pkcs8(), &public).unwrap();
    (key, public)
}

/// `value` with a signature by `entity` added.
pub(crate) fn sign(value: &Value, entity: &str, key: &plait::crypto::SigningKey) -> Value {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
    plait::crypto::sign_json(entity, key, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

pub(crate) fn signing_key(user: &str, usage: &str, public: &str) -> Value {
    json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
}

#[tokio::test]
async fn cross_signing_keys_upload_with_uia_and_signatures() {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (alice_id, alice_device) = whoami(&alice).await;
    let path = "/_matrix/client/v3/keys/device_signing/upload";

    let missing_master = alice
        .post(
            path,
            json!({"self_signing_key": signing_key(&alice_id, "self_signing", "SELF")}),
        )
        .await;
    assert_error(&missing_master, 400, "M_MISSING_PARAM");
    let wrong_user = alice
        .post(
            path,
            json!({"master_key": signing_key("@bob:localhost", "master", "M")}),
        )
        .await;
    assert_error(&wrong_user, 400, "M_INVALID_PARAM");

    // The first upload needs no UIA, and repeating it neither.
    let (master_key, master_public) = key_pair();
    let (self_key, self_public) = key_pair();
    let unsigned_self = signing_key(&alice_id, "self_signing", &self_public);
    let not_signed = alice
        .post(
            path,
            json!({
                "master_key": signing_key(&alice_id, "master", &master_public),
                "self_signing_key": unsigned_self,
            }),
        )
        .await;
    assert_error(&not_signed, 400, "M_INVALID_SIGNATURE");
    let keys = json!({
        "master_key": signing_key(&alice_id, "master", &master_public),
        "self_signing_key": sign(&unsigned_self, &alice_id, &master_key),
        "user_signing_key": sign(&signing_key(&alice_id, "user_signing", "USER1"), &alice_id, &master_key),
    });
    alice.post_ok(path, keys.clone()).await;
    alice.post_ok(path, keys).await;

    let replacement = json!({"master_key": signing_key(&alice_id, "master", "MASTER2")});
    let (status, challenge) = alice.post(path, replacement.clone()).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"][0]["stages"][0], "m.login.password");
    let mut with_auth = replacement.clone();
    with_auth["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong", "session": challenge["session"]});
    assert_eq!(alice.post(path, with_auth.clone()).await.0, 401);
    with_auth["auth"]["password"] = json!("password");
    alice.post_ok(path, with_auth).await;

    let query = json!({"device_keys": { &alice_id: [] }});
    let seen_by_bob = bob
        .post_ok("/_matrix/client/v3/keys/query", query.clone())
        .await;
    assert_eq!(
        seen_by_bob["master_keys"][&alice_id]["keys"]["ed25519:MASTER2"],
        "MASTER2"
    );
    assert_eq!(
        seen_by_bob["self_signing_keys"][&alice_id]["keys"][format!("ed25519:{self_public}")],
        self_public.as_str()
    );
    assert!(
        seen_by_bob["user_signing_keys"].get(&alice_id).is_none(),
        "only alice sees her user-signing key"
    );
    let seen_by_alice = alice
        .post_ok("/_matrix/client/v3/keys/query", query.clone())
        .await;
    assert_eq!(
        seen_by_alice["user_signing_keys"][&alice_id]["keys"]["ed25519:USER1"],
        "USER1"
    );

    // Alice's self-signing key signs her device.
    let device = device_keys(&alice_id, &alice_device, "identity");
    alice
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device}),
        )
        .await;
    let signed = sign(&device, &alice_id, &self_key);
    let cross_signature = signed["signatures"][&alice_id][format!("ed25519:{self_public}")].clone();
    let mut forged = signed.clone();
    forged["signatures"][&alice_id][format!("ed25519:{self_public}")] =
        signed["signatures"][&alice_id][format!("ed25519:{alice_device}")].clone();
    let (stranger, _) = key_pair();
    let by_unknown_key = sign(&device, &alice_id, &stranger);
    let mut tampered = device.clone();
    tampered["keys"]["curve25519:X"] = json!("other");
    for (object, errcode) in [
        (forged, "M_INVALID_SIGNATURE"),
        (by_unknown_key, "M_INVALID_SIGNATURE"),
        (tampered, "M_INVALID_SIGNATURE"),
    ] {
        let result = alice
            .post_ok(
                "/_matrix/client/v3/keys/signatures/upload",
                json!({ &alice_id: { &alice_device: object } }),
            )
            .await;
        assert_eq!(
            result["failures"][&alice_id][&alice_device]["errcode"], errcode,
            "{result}"
        );
    }
    let result = alice
        .post_ok(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice_id: { &alice_device: signed, "UNKNOWN": device } }),
        )
        .await;
    assert_eq!(
        result["failures"][&alice_id]["UNKNOWN"]["errcode"],
        "M_NOT_FOUND"
    );
    assert!(
        result["failures"][&alice_id].get(&alice_device).is_none(),
        "{result}"
    );
    let seen_by_bob = bob.post_ok("/_matrix/client/v3/keys/query", query).await;
    let signatures = &seen_by_bob["device_keys"][&alice_id][&alice_device]["signatures"][&alice_id];
    assert_eq!(
        signatures[format!("ed25519:{self_public}")],
        cross_signature
    );
    assert_eq!(
        signatures[format!("ed25519:{alice_device}")],
        "self-signature"
    );
}

#[tokio::test]
async fn one_time_keys_are_claimed_in_upload_order() {
    let server = TestServer::start().await;
    let (alice, bob, _room) = alice_and_bob(&server).await;
    let (alice_id, alice_device) = whoami(&alice).await;
    // Uploaded last-ID-first: the order of uploads decides, not the key IDs.
    for key_id in ["ZZZZ", "BBBB"] {
        alice
            .post_ok(
                "/_matrix/client/v3/keys/upload",
                json!({"one_time_keys": { format!("signed_curve25519:{key_id}"): { "key": key_id } }}),
            )
            .await;
    }
    let claim_body =
        json!({"one_time_keys": { &alice_id: { &alice_device: "signed_curve25519" } }});
    for expected in ["ZZZZ", "BBBB"] {
        let claimed = bob
            .post_ok("/_matrix/client/v3/keys/claim", claim_body.clone())
            .await;
        assert_eq!(
            claimed["one_time_keys"][&alice_id][&alice_device]
                [format!("signed_curve25519:{expected}")]["key"],
            expected,
            "{claimed}"
        );
    }
    // Nothing left and no fallback key: alice is not in the answer at all.
    let empty = bob
        .post_ok("/_matrix/client/v3/keys/claim", claim_body)
        .await;
    assert_eq!(empty["one_time_keys"], json!({}), "{empty}");
}
