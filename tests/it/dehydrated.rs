//! Dehydrated devices (MSC3814): upload, download, the inbox read through `/events`, and
//! replacement, driven over HTTP.

use serde_json::{json, Value};

use crate::{
    common::{assert_error, Client, TestServer},
    e2ee::{alice_and_bob, whoami},
};

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn events_path(device_id: &str) -> String {
    format!("{DEHYDRATED}/{device_id}/events")
}

/// A dehydrated device upload for `user_id` as a client makes it.
fn upload(user_id: &str, device_id: &str, pickle: &str) -> Value {
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": { "algorithm": "org.matrix.msc3814.v2", "device_pickle": pickle, "nonce": "n" },
        "device_keys": {
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device_id}"): format!("curve-{pickle}"),
                format!("ed25519:{device_id}"): format!("ed-{pickle}"),
            },
            "dehydrated": true,
            "signatures": {},
        },
        "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk", "signatures": {} } },
        "fallback_keys": { "signed_curve25519:BBBB": { "key": "fb", "fallback": true, "signatures": {} } },
    })
}

async fn device_ids(client: &Client) -> Vec<String> {
    let devices = client.get_ok("/_matrix/client/v3/devices").await;
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|device| device["device_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn send_to(sender: &Client, user_id: &str, device_id: &str, txn: &str, n: u32) {
    sender
        .put_ok(
            &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}"),
            json!({"messages": { user_id: { device_id: { "n": n } } }}),
        )
        .await;
}

#[tokio::test]
async fn a_dehydrated_device_keeps_its_messages_until_read_and_is_replaced_whole() {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (alice_id, _) = whoami(&alice).await;
    let versions = server.client().get_ok("/_matrix/client/versions").await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc3814"], true);
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");

    let put = alice
        .put_ok(DEHYDRATED, upload(&alice_id, "DEHYD1", "one"))
        .await;
    assert_eq!(put["device_id"], "DEHYD1");
    let got = alice.get_ok(DEHYDRATED).await;
    assert_eq!(got["device_id"], "DEHYD1");
    assert_eq!(got["device_data"]["device_pickle"], "one");
    assert!(device_ids(&alice).await.contains(&"DEHYD1".to_owned()));
    // Other users see it with its keys, and can claim its one-time key.
    let query = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": { &alice_id: [] }}),
        )
        .await;
    let keys = &query["device_keys"][&alice_id]["DEHYD1"];
    assert_eq!(keys["dehydrated"], true, "{query}");
    assert_eq!(keys["keys"]["curve25519:DEHYD1"], "curve-one");
    let claim = bob
        .post_ok(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": { &alice_id: { "DEHYD1": "signed_curve25519" } }}),
        )
        .await;
    assert!(claim["one_time_keys"][&alice_id]["DEHYD1"]["signed_curve25519:AAAA"].is_object());

    // Messages sent while no real device is online wait in its inbox.
    for n in 0..3 {
        send_to(&bob, &alice_id, "DEHYD1", &format!("t{n}"), n).await;
    }
    let first = alice.post_ok(&events_path("DEHYD1"), json!({})).await;
    let numbers: Vec<u64> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1, 2], "{first}");
    assert_eq!(first["events"][0]["sender"], "@bob:localhost");
    let token = first["next_batch"].as_str().unwrap().to_owned();
    // Asking again from the start gets them again; from the token, nothing more.
    let again = alice.post_ok(&events_path("DEHYD1"), json!({})).await;
    assert_eq!(again["events"].as_array().unwrap().len(), 3);
    let done = alice
        .post_ok(&events_path("DEHYD1"), json!({ "next_batch": token }))
        .await;
    assert_eq!(done["events"], json!([]));
    // The token acknowledged them: they are gone even from the start.
    let gone = alice.get_ok(&events_path("DEHYD1")).await;
    assert_eq!(gone["events"], json!([]), "{gone}");
    assert!(gone.get("next_batch").is_none());

    // A new upload replaces the old device: its keys and inbox go with it.
    send_to(&bob, &alice_id, "DEHYD1", "t9", 9).await;
    alice
        .put_ok(DEHYDRATED, upload(&alice_id, "DEHYD2", "two"))
        .await;
    let devices = device_ids(&alice).await;
    assert!(devices.contains(&"DEHYD2".to_owned()) && !devices.contains(&"DEHYD1".to_owned()));
    let query = bob
        .post_ok(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": { &alice_id: [] }}),
        )
        .await;
    assert!(
        query["device_keys"][&alice_id].get("DEHYD1").is_none(),
        "{query}"
    );
    assert_error(
        &alice.post(&events_path("DEHYD1"), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let fresh = alice.post_ok(&events_path("DEHYD2"), json!({})).await;
    assert_eq!(fresh["events"], json!([]));

    let deleted = alice.delete(DEHYDRATED, json!({})).await;
    assert_eq!(deleted, (200, json!({ "device_id": "DEHYD2" })));
    assert!(!device_ids(&alice).await.contains(&"DEHYD2".to_owned()));
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");
    assert_error(
        &alice.delete(DEHYDRATED, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn bad_dehydrated_device_uploads_change_nothing() {
    let server = TestServer::start().await;
    let (alice, _, _) = alice_and_bob(&server).await;
    let (alice_id, alice_device) = whoami(&alice).await;

    // The ID of a real device: refused, and that device keeps working.
    assert_error(
        &alice
            .put(DEHYDRATED, upload(&alice_id, &alice_device, "x"))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    alice.get_ok("/_matrix/client/v3/account/whoami").await;
    // No device keys, keys of someone else, no algorithm, a bad token.
    let mut no_keys = upload(&alice_id, "D1", "x");
    no_keys.as_object_mut().unwrap().remove("device_keys");
    assert_eq!(alice.put(DEHYDRATED, no_keys).await.0, 400);
    assert_error(
        &alice
            .put(DEHYDRATED, upload("@bob:localhost", "D1", "x"))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let mut no_algorithm = upload(&alice_id, "D1", "x");
    no_algorithm["device_data"] = json!({ "device_pickle": "x" });
    assert_eq!(alice.put(DEHYDRATED, no_algorithm).await.0, 400);
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");
    assert_eq!(device_ids(&alice).await, vec![alice_device]);

    alice.put_ok(DEHYDRATED, upload(&alice_id, "D1", "x")).await;
    assert_error(
        &alice
            .post(&events_path("D1"), json!({ "next_batch": "zzz" }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    // Removing the device through /devices leaves no dehydrated device behind.
    let (status, _) = alice
        .delete(
            "/_matrix/client/v3/devices/D1",
            json!({ "auth": { "type": "m.login.password", "user": "alice", "password": "password" } }),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(&alice.get(DEHYDRATED).await, 404, "M_NOT_FOUND");
}
