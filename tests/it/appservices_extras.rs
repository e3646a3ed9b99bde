//! What appservice transactions carry beside room events: MSC2409 ephemeral events (typing,
//! receipts, presence), MSC4203 to-device messages and the MSC3202 extensions (device lists,
//! one-time key counts, unused fallback keys), proven with an encrypted message from a
//! matrix-sdk client that the appservice's own Olm account (vodozemac) decrypts; and the
//! third-party lookups passed on to appservices.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path as UrlPath, RawQuery, State},
    routing::get,
    Router,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::appservices::{
    as_client, fake_appservice, register_ghost, registration, server_with, FakeAppservice,
};
use crate::common::{assert_error, enc, Client};

/// Waits up to 20 s for `done`; panics with `what` and the transactions received.
async fn wait_until(fake: &FakeAppservice, what: &str, done: impl Fn(&FakeAppservice) -> bool) {
    for _ in 0..400 {
        if done(fake) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", fake.bodies());
}

/// Whether a list of ephemeral events holds one of `kind` in `room`.
fn has(events: &[Value], kind: &str, room: &str) -> bool {
    events
        .iter()
        .any(|event| event["type"] == kind && event["room_id"] == room)
}

#[tokio::test]
async fn appservices_that_ask_receive_typing_receipts_and_presence_of_their_rooms() {
    let (stable, stable_url) = fake_appservice().await;
    let (unstable, unstable_url) = fake_appservice().await;
    let (plain, plain_url) = fake_appservice().await;
    let (server, _folder) = server_with(&[
        (
            "stable.yaml",
            registration("stable", "st", &stable_url) + "receive_ephemeral: true\n",
        ),
        (
            "unstable.yaml",
            registration("unstable", "un", &unstable_url)
                + "de.sorunome.msc2409.push_ephemeral: true\n",
        ),
        ("plain.yaml", registration("plain", "pl", &plain_url)),
    ])
    .await;
    let name = server.server_name();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().await;
    let portal = alice.create_room(json!({"preset": "public_chat"})).await;
    // Each appservice has a ghost in the portal; none is in alice and bob's own room.
    for (token, ghost) in [
        ("as-stable", "st_g"),
        ("as-unstable", "un_g"),
        ("as-plain", "pl_g"),
    ] {
        let bridge = as_client(&server, token);
        assert_eq!(register_ghost(&bridge, ghost).await.0, 200);
        let ghost_id = format!("@{ghost}:{name}");
        bridge
            .post_ok(
                &format!(
                    "/_matrix/client/v3/join/{}?user_id={}",
                    enc(&portal),
                    enc(&ghost_id)
                ),
                json!({}),
            )
            .await;
    }
    let private = alice
        .create_room(json!({"invite": [bob.user_id().await]}))
        .await;
    bob.join(&private).await;

    let typing =
        |room: &str, user: &str| format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(user));
    alice
        .put_ok(
            &typing(&portal, &alice_id),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    bob.put_ok(
        &typing(&private, &bob.user_id().await),
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    let event = alice.send_text(&portal, "t1", "read me").await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{portal}/receipt/m.read/{event}"),
            json!({}),
        )
        .await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{portal}/receipt/m.read.private/{event}"),
            json!({}),
        )
        .await;
    alice
        .put_ok(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            json!({"presence": "online", "status_msg": "bridging"}),
        )
        .await;
    // Everything queued before this message arrives before it.
    alice.send_text(&portal, "t2", "marker").await;
    for fake in [&stable, &unstable, &plain] {
        wait_until(fake, "the marker", |fake| {
            fake.texts().contains(&"marker".to_owned())
        })
        .await;
    }

    for (fake, field, other) in [
        (&stable, "ephemeral", "de.sorunome.msc2409.ephemeral"),
        (&unstable, "de.sorunome.msc2409.ephemeral", "ephemeral"),
    ] {
        let events = fake.items(field);
        assert!(fake.items(other).is_empty(), "{field} only: {events:?}");
        let typing = events
            .iter()
            .find(|event| event["type"] == "m.typing" && event["room_id"] == portal)
            .unwrap_or_else(|| panic!("typing in the portal: {events:?}"));
        assert_eq!(typing["content"]["user_ids"], json!([alice_id]));
        // Typing in a room without its users is not its business.
        assert!(!has(&events, "m.typing", &private), "{events:?}");
        let receipt = events
            .iter()
            .find(|event| event["type"] == "m.receipt")
            .unwrap_or_else(|| panic!("a receipt: {events:?}"));
        assert_eq!(receipt["room_id"], portal);
        assert!(receipt["content"][&event]["m.read"][&alice_id]["ts"].is_u64());
        // Alice's private receipt is hers alone: not one of the appservice's users.
        assert!(
            !events
                .iter()
                .any(|event| event.to_string().contains("m.read.private")),
            "{events:?}"
        );
        let presence = events
            .iter()
            .find(|event| event["type"] == "m.presence" && event["sender"] == alice_id)
            .unwrap_or_else(|| panic!("alice's presence: {events:?}"));
        assert_eq!(presence["content"]["presence"], "online");
        assert_eq!(presence["content"]["status_msg"], "bridging");
    }
    // An appservice that did not ask gets none.
    for body in plain.bodies() {
        assert!(body.get("ephemeral").is_none(), "{body}");
        assert!(
            body.get("de.sorunome.msc2409.ephemeral").is_none(),
            "{body}"
        );
    }
}

/// Signs `object` (without `signatures` and `unsigned`) with the account's ed25519 key, as
/// device keys and one-time keys are signed.
fn sign(account: &vodozemac::olm::Account, user: &str, device: &str, object: &mut Value) {
    let mut unsigned = object.clone();
    let fields = unsigned.as_object_mut().unwrap();
    fields.remove("signatures");
    fields.remove("unsigned");
    let canonical = plait::crypto::canonical_json(&unsigned).unwrap();
    let signature = account.sign(canonical.as_bytes()).to_base64();
    object["signatures"] = json!({ user: { format!("ed25519:{device}"): signature } });
}

/// Uploads the account's identity keys, five signed one-time keys and a fallback key for
/// `device`, through the appservice's token with `user_id` and `device_id` masquerading.
async fn upload_keys(
    bridge: &Client,
    account: &mut vodozemac::olm::Account,
    (user, device): (&str, &str),
) {
    let identity = account.identity_keys();
    let mut device_keys = json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): identity.curve25519.to_base64(),
            format!("ed25519:{device}"): identity.ed25519.to_base64(),
        },
    });
    sign(account, user, device, &mut device_keys);
    account.generate_one_time_keys(5);
    account.generate_fallback_key();
    let signed = |account: &vodozemac::olm::Account, key_id: String, mut object: Value| {
        sign(account, user, device, &mut object);
        (format!("signed_curve25519:{key_id}"), object)
    };
    let one_time_keys: serde_json::Map<String, Value> = account
        .one_time_keys()
        .into_iter()
        .map(|(id, key)| signed(account, id.to_base64(), json!({ "key": key.to_base64() })))
        .collect();
    let fallback_keys: serde_json::Map<String, Value> = account
        .fallback_key()
        .into_iter()
        .map(|(id, key)| {
            let object = json!({ "key": key.to_base64(), "fallback": true });
            signed(account, id.to_base64(), object)
        })
        .collect();
    account.mark_keys_as_published();
    let path = format!(
        "/_matrix/client/v3/keys/upload?user_id={}&device_id={device}",
        enc(user)
    );
    let body = json!({
        "device_keys": device_keys,
        "one_time_keys": one_time_keys,
        "fallback_keys": fallback_keys,
    });
    let counts = bridge.post_ok(&path, body).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 5);
}

/// Encrypted bridging (MSC3202, MSC4203, MSC4326): the appservice logs a ghost's device in
/// with `m.login.application_service` and uploads its keys as that device; a matrix-sdk client
/// sends an encrypted message to the portal room; the room key reaches the appservice as a
/// to-device message in a transaction (not the device's inbox: the ghost is exclusive) and
/// decrypts with the device's Olm account; device list changes and key counts come along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_bridge_receives_room_keys_device_lists_and_key_counts() {
    use matrix_sdk::{config::SyncSettings, ruma::events::room::message::RoomMessageEventContent};

    let (fake, url) = fake_appservice().await;
    let yaml = registration("crypto", "cr", &url) + "org.matrix.msc3202: true\n";
    let (server, _folder) = server_with(&[("crypto.yaml", yaml)]).await;
    let name = server.server_name();
    let bridge = as_client(&server, "as-crypto");
    assert_eq!(register_ghost(&bridge, "cr_ghost").await.0, 200);
    let ghost = format!("@cr_ghost:{name}");
    let login = json!({
        "type": "m.login.application_service",
        "identifier": {"type": "m.id.user", "user": "cr_ghost"},
    });
    let session = bridge.post_ok("/_matrix/client/v3/login", login).await;
    let device = session["device_id"].as_str().unwrap().to_owned();
    let mut account = vodozemac::olm::Account::new();
    upload_keys(&bridge, &mut account, (&ghost, &device)).await;

    let alice_http = server.register("alice").await;
    let carol = server.register("carol").await;
    let alice_id = alice_http.user_id().await;
    let encryption = json!({"algorithm": "m.megolm.v1.aes-sha2"});
    let room_id = alice_http
        .create_room(json!({
            "invite": [ghost],
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": encryption}],
        }))
        .await;
    bridge
        .post_ok(
            &format!(
                "/_matrix/client/v3/join/{}?user_id={}",
                enc(&room_id),
                enc(&ghost)
            ),
            json!({}),
        )
        .await;
    // Alice's matrix-sdk client with its crypto machine shares the room key with the ghost's
    // device when it sends: a key query, a claim of one of its one-time keys, an Olm message.
    let alice = crate::sync::sdk_login(&server, "alice").await;
    alice.sync_once(SyncSettings::default()).await.unwrap();
    let room = alice
        .get_room(&ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap())
        .expect("alice's client knows the room");
    room.send(RoomMessageEventContent::text_plain("secret hello"))
        .await
        .unwrap();

    // The room key, for the ghost's device, in a transaction under both names.
    wait_until(&fake, "the room key", |fake| {
        !fake.items("to_device").is_empty()
    })
    .await;
    let to_device = fake.items("to_device");
    assert_eq!(to_device, fake.items("de.sorunome.msc2409.to_device"));
    let message = to_device
        .iter()
        .find(|message| message["type"] == "m.room.encrypted")
        .unwrap_or_else(|| panic!("an encrypted to-device message: {to_device:?}"));
    assert_eq!(message["to_user_id"], ghost);
    assert_eq!(message["to_device_id"], device);
    assert_eq!(message["sender"], alice_id);
    let content = &message["content"];
    assert_eq!(content["algorithm"], "m.olm.v1.curve25519-aes-sha2");
    let own_key = account.identity_keys().curve25519.to_base64();
    let ciphertext = &content["ciphertext"][&own_key];
    assert_eq!(ciphertext["type"], 0, "a pre-key message: {content}");
    let pre_key =
        vodozemac::olm::PreKeyMessage::from_base64(ciphertext["body"].as_str().unwrap()).unwrap();
    let sender_key =
        vodozemac::Curve25519PublicKey::from_base64(content["sender_key"].as_str().unwrap())
            .unwrap();
    let inbound = account
        .create_inbound_session(
            vodozemac::olm::SessionConfig::version_1(),
            sender_key,
            &pre_key,
        )
        .expect("the appservice decrypts the room key");
    let plaintext: Value = serde_json::from_slice(&inbound.plaintext).unwrap();
    assert_eq!(plaintext["type"], "m.room_key", "{plaintext}");
    assert_eq!(plaintext["content"]["room_id"], room_id);
    assert_eq!(plaintext["recipient"], ghost);
    // The exclusive ghost's device reads to-device messages through transactions only.
    let ghost_id = ruma::OwnedUserId::try_from(ghost.as_str()).unwrap();
    let inbox = server
        .services
        .to_device
        .take_after(&ghost_id, &device, 0, 100)
        .unwrap();
    assert!(inbox.0.is_empty(), "{:?}", inbox.0);

    // One-time key counts (alice's client claimed one of five) and the unused fallback key.
    let body = fake
        .bodies()
        .into_iter()
        .rev()
        .find(|body| body.get("to_device").is_some())
        .unwrap();
    let counts = &body["org.matrix.msc3202.device_one_time_keys_count"][&ghost][&device];
    assert_eq!(counts["signed_curve25519"], 4, "{body}");
    assert_eq!(
        body["org.matrix.msc3202.device_unused_fallback_key_types"][&ghost][&device],
        json!(["signed_curve25519"])
    );

    // Device lists: alice's new device is a change (she shares the portal with the ghost);
    // carol joins and leaves, and ends up in `left`.
    alice_http
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}),
        )
        .await;
    let device_lists = |fake: &FakeAppservice, key: &str, user: &str| {
        fake.bodies().iter().any(|body| {
            body["org.matrix.msc3202.device_lists"][key]
                .as_array()
                .is_some_and(|users| users.iter().any(|listed| listed == user))
        })
    };
    wait_until(&fake, "alice in changed", |fake| {
        device_lists(fake, "changed", &alice_id)
    })
    .await;
    let carol_id = carol.user_id().await;
    alice_http
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": carol_id}),
        )
        .await;
    carol.join(&room_id).await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{room_id}/leave"),
            json!({}),
        )
        .await;
    wait_until(&fake, "carol in left", |fake| {
        device_lists(fake, "left", &carol_id)
    })
    .await;
    // A user the appservice never shared a room with is in neither list.
    let stranger = server.register("stranger").await;
    stranger
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "stranger"}, "password": "password"}),
        )
        .await;
    alice_http
        .send_text(&room_id, "m1", "after the stranger")
        .await;
    wait_until(&fake, "the last message", |fake| {
        fake.events()
            .iter()
            .any(|event| event["content"]["body"] == "after the stranger")
    })
    .await;
    let stranger_id = stranger.user_id().await;
    assert!(!device_lists(&fake, "changed", &stranger_id));
}

/// What a fake third-party appservice was asked.
#[derive(Default)]
struct Asked {
    paths: Mutex<Vec<String>>,
}

/// An appservice answering the third-party API for protocol `protocol` with `network` in its
/// answers.
async fn thirdparty_appservice(network: &'static str) -> (Arc<Asked>, String) {
    let asked = Arc::new(Asked::default());
    let record = |asked: &Asked, path: String, query: Option<String>| {
        asked
            .paths
            .lock()
            .push(format!("{path}?{}", query.unwrap_or_default()));
    };
    let app = Router::new()
        .route(
            "/_matrix/app/v1/thirdparty/protocol/{protocol}",
            get(
                move |State(asked): State<Arc<Asked>>, UrlPath(protocol): UrlPath<String>| async move {
                    record(&asked, format!("protocol/{protocol}"), None);
                    json!({
                        "user_fields": ["nick"],
                        "location_fields": ["channel"],
                        "icon": "mxc://example.org/icon",
                        "field_types": {
                            "nick": {"regexp": ".*", "placeholder": "nick"},
                            "channel": {"regexp": "#.*", "placeholder": "#channel"},
                        },
                        "instances": [{
                            "desc": network,
                            "network_id": network,
                            "fields": {},
                        }],
                    }).to_string()
                },
            ),
        )
        .route(
            "/_matrix/app/v1/thirdparty/location/{protocol}",
            get(
                move |State(asked): State<Arc<Asked>>,
                      UrlPath(protocol): UrlPath<String>,
                      RawQuery(query): RawQuery| async move {
                    record(&asked, format!("location/{protocol}"), query);
                    json!([{
                        "alias": format!("#{network}_channel:example.org"),
                        "protocol": protocol,
                        "fields": {"channel": "#channel", "network": network},
                    }]).to_string()
                },
            ),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user",
            get(
                move |State(asked): State<Arc<Asked>>, RawQuery(query): RawQuery| async move {
                    record(&asked, "user".to_owned(), query);
                    json!([{
                        "userid": "@irc_nick:example.org",
                        "protocol": "irc",
                        "fields": {"nick": "nick", "network": network},
                    }]).to_string()
                },
            ),
        )
        .with_state(Arc::clone(&asked));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (asked, url)
}

#[tokio::test]
async fn thirdparty_lookups_reach_the_appservices_that_declare_the_protocol() {
    let (libera, libera_url) = thirdparty_appservice("libera").await;
    let (oftc, oftc_url) = thirdparty_appservice("oftc").await;
    let (other, other_url) = thirdparty_appservice("other").await;
    let irc = "protocols: [irc]\n";
    let (server, _folder) = server_with(&[
        (
            "libera.yaml",
            registration("libera", "li", &libera_url) + irc,
        ),
        ("oftc.yaml", registration("oftc", "of", &oftc_url) + irc),
        (
            "other.yaml",
            registration("other", "ot", &other_url) + "protocols: [slack]\n",
        ),
    ])
    .await;
    let alice = server.register("alice").await;

    // The protocols, each described by its appservices, with every appservice's instances.
    let protocols = alice
        .get_ok("/_matrix/client/v3/thirdparty/protocols")
        .await;
    let instances = |protocol: &Value| -> Vec<String> {
        protocol["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|instance| instance["network_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut irc_networks = instances(&protocols["irc"]);
    irc_networks.sort();
    assert_eq!(irc_networks, ["libera", "oftc"], "{protocols}");
    assert_eq!(instances(&protocols["slack"]), ["other"]);
    assert_eq!(protocols["irc"]["user_fields"], json!(["nick"]));
    let slack = alice
        .get_ok("/_matrix/client/v3/thirdparty/protocol/slack")
        .await;
    assert_eq!(instances(&slack), ["other"]);
    assert_error(
        &alice
            .get("/_matrix/client/v3/thirdparty/protocol/matrix2")
            .await,
        404,
        "M_NOT_FOUND",
    );

    // Lookups go to the protocol's appservices with the fields, never the caller's token.
    let path = "/_matrix/client/v3/thirdparty/location/irc?channel=%23channel";
    let token = alice.token.clone().unwrap();
    let with_token = format!("{path}&access_token={token}");
    let locations = Client {
        token: None,
        ..alice.clone()
    }
    .get_ok(&with_token)
    .await;
    let mut aliases: Vec<&str> = locations
        .as_array()
        .unwrap()
        .iter()
        .map(|location| location["alias"].as_str().unwrap())
        .collect();
    aliases.sort();
    assert_eq!(
        aliases,
        ["#libera_channel:example.org", "#oftc_channel:example.org"]
    );
    assert_eq!(
        *libera.paths.lock().last().unwrap(),
        "location/irc?channel=%23channel"
    );
    assert!(other
        .paths
        .lock()
        .iter()
        .all(|path| path.starts_with("protocol/")));
    let users = alice
        .get_ok("/_matrix/client/v3/thirdparty/user?userid=%40irc_nick%3Aexample.org")
        .await;
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");
    assert_eq!(
        *oftc.paths.lock().last().unwrap(),
        "user?userid=%40irc_nick%3Aexample.org"
    );
    assert_error(
        &alice
            .get("/_matrix/client/v3/thirdparty/user/matrix2?nick=x")
            .await,
        404,
        "M_NOT_FOUND",
    );
    // Only for signed-in users.
    assert_error(
        &server
            .client()
            .get("/_matrix/client/v3/thirdparty/protocols")
            .await,
        401,
        "M_MISSING_TOKEN",
    );
}
