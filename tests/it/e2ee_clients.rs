//! End-to-end encryption between servers (key queries and claims, to-device messages and
//! device list updates over federation) and between real matrix-sdk clients.

use serde_json::{json, Value};

use crate::common::{enc, Client, TestServer};
use crate::e2ee::{device_keys, signing_key, whoami};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_to_device_messages_cross_two_servers() {
    let ca = crate::common::tls::TestCa::new();
    let hs1 = TestServer::start_federated("127.0.0.2".parse().unwrap(), &ca, None).await;
    let hs2 = TestServer::start_federated("127.0.0.3".parse().unwrap(), &ca, None).await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let (alice_id, _) = whoami(&alice).await;
    let (bob_id, bob_device) = whoami(&bob).await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.post_ok(
        &format!(
            "/_matrix/client/v3/join/{}?via={}",
            enc(&room),
            enc(&hs1.server_name())
        ),
        json!({}),
    )
    .await;
    bob.post_ok(
        "/_matrix/client/v3/keys/upload",
        json!({
            "device_keys": device_keys(&bob_id, &bob_device, "bob-identity"),
            "one_time_keys": { "signed_curve25519:B1": { "key": "bob-otk" } },
        }),
    )
    .await;
    bob.post_ok(
        "/_matrix/client/v3/keys/device_signing/upload",
        json!({"master_key": signing_key(&bob_id, "master", "BOBMASTER")}),
    )
    .await;

    // Alice's server answers from its cache of bob's keys, which bob's server keeps current
    // with device list and signing key updates: it may take a moment to hold the master key.
    let mut query = Value::Null;
    for _ in 0..100 {
        query = alice
            .post_ok(
                "/_matrix/client/v3/keys/query",
                json!({"device_keys": { &bob_id: [] }}),
            )
            .await;
        if query["master_keys"][&bob_id]["keys"]["ed25519:BOBMASTER"] == "BOBMASTER" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        query["device_keys"][&bob_id][&bob_device]["keys"][format!("curve25519:{bob_device}")],
        "bob-identity",
        "{query}"
    );
    assert_eq!(
        query["master_keys"][&bob_id]["keys"]["ed25519:BOBMASTER"],
        "BOBMASTER"
    );
    let claim = alice
        .post_ok(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": { &bob_id: { &bob_device: "signed_curve25519" } }}),
        )
        .await;
    assert_eq!(
        claim["one_time_keys"][&bob_id][&bob_device]["signed_curve25519:B1"]["key"],
        "bob-otk"
    );
    let counts = bob.get_ok("/_matrix/client/v3/sync").await;
    assert_eq!(
        counts["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );

    // A to-device message crosses as an m.direct_to_device EDU.
    let bob_since = counts["next_batch"].as_str().unwrap().to_owned();
    alice
        .put_ok(
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/remote1",
            json!({"messages": { &bob_id: { "*": { "secret": "for bob" } } }}),
        )
        .await;
    let mut delivered = Value::Null;
    for _ in 0..100 {
        let sync = bob
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={bob_since}&timeout=200"
            ))
            .await;
        if !sync["to_device"]["events"].as_array().unwrap().is_empty() {
            delivered = sync["to_device"]["events"][0].clone();
            break;
        }
    }
    assert_eq!(delivered["content"]["secret"], "for bob", "{delivered}");
    assert_eq!(delivered["sender"], alice_id.as_str());

    // A new device of bob's reaches alice's device list through m.device_list_update.
    let alice_since = alice.get_ok("/_matrix/client/v3/sync").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let login = hs2
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "password"}),
        )
        .await;
    let bob_phone = Client {
        token: Some(login["access_token"].as_str().unwrap().to_owned()),
        ..hs2.client()
    };
    let phone_device = login["device_id"].as_str().unwrap();
    bob_phone
        .post_ok(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&bob_id, phone_device, "phone")}),
        )
        .await;
    let mut changed = Value::Null;
    for _ in 0..100 {
        let sync = alice
            .get_ok(&format!(
                "/_matrix/client/v3/sync?since={alice_since}&timeout=200"
            ))
            .await;
        if !sync["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            changed = sync["device_lists"]["changed"].clone();
            break;
        }
    }
    assert_eq!(changed, json!([bob_id]));

    // The resident side of a device list resync, asked as hs1.
    let devices = hs1
        .services
        .federation_request(
            hs2.services.globals.server_name(),
            http::Method::GET,
            &format!("/_matrix/federation/v1/user/devices/{}", enc(&bob_id)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(devices["user_id"], bob_id.as_str());
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
    assert_eq!(
        devices["master_key"]["keys"]["ed25519:BOBMASTER"],
        "BOBMASTER"
    );
    assert!(devices["stream_id"].as_u64().unwrap() > 0);
}

/// matrix-sdk with its crypto machine: uploads keys after login, and alice's message to an
/// encrypted room reaches bob through a key query, a claim and a to-device room key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_sdk_clients_exchange_an_encrypted_message() {
    use matrix_sdk::{
        config::SyncSettings,
        ruma::{
            api::client::room::create_room::v3::Request as CreateRoomRequest,
            events::{
                room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
                InitialStateEvent,
            },
            OwnedUserId,
        },
    };

    let server = TestServer::start().await;
    server.register("alice").await;
    server.register("bob").await;
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        let client = crate::sync::sdk_login(&server, name).await;
        client.sync_once(SyncSettings::default()).await.unwrap();
        clients.push(client);
    }
    let (alice, bob) = (&clients[0], &clients[1]);
    let alice_device = alice.device_id().unwrap().to_owned();
    let alice_id = alice.user_id().unwrap().to_owned();
    let uploaded = server
        .services
        .keys
        .get_device_keys(&alice_id, alice_device.as_str())
        .unwrap();
    assert!(uploaded.is_some(), "matrix-sdk uploaded its device keys");

    let mut request = CreateRoomRequest::new();
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    let room = alice.create_room(request).await.unwrap();
    let bob_id = OwnedUserId::try_from("@bob:localhost").unwrap();
    room.invite_user_by_id(&bob_id).await.unwrap();
    bob.sync_once(SyncSettings::default()).await.unwrap();
    bob.get_room(room.room_id())
        .expect("bob sees the invite")
        .join()
        .await
        .unwrap();
    alice.sync_once(SyncSettings::default()).await.unwrap();

    room.send(RoomMessageEventContent::text_plain("secret hello"))
        .await
        .unwrap();
    let decrypted = crate::sync::sdk_sees_text(bob, room.room_id(), "secret hello", true).await;
    assert!(decrypted, "bob decrypts alice's message");
}
