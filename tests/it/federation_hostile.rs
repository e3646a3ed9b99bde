//! Federation against hostile input and hostile servers: requests that would make this server
//! connect to its own network (a key query or an `X-Matrix` origin naming an internal address),
//! the server-server routes on the client listener, transactions over the spec's size limits,
//! events signed after their key expired, and remote servers that answer slowly or too much.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::{
    common::{assert_error, http_stub, ip, tls::TestCa, TestServer},
    federation::{forge_shaped, join_via, two_servers},
    federation_misc::signed,
};

/// How long a fake server waits for connections that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// A TCP listener that counts the connections it accepts (and closes them at once): the
/// internal service a hostile request would have this server connect to.
struct Victim {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Victim {
    async fn start(ip: IpAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { address, accepted }
    }

    /// The connections accepted so far, after a moment for any in flight.
    async fn accepted(&self) -> usize {
        tokio::time::sleep(QUIET).await;
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A federating server on `address` that keeps the default `ip_range_denylist` and allows
/// nothing back (the test servers otherwise allow loopback).
async fn server_with_default_denylist(ca: &TestCa, address: &str) -> TestServer {
    TestServer::start_federated_with(ip(address), ca, None, |config| {
        config.ip_range_allowlist = Vec::new();
    })
    .await
}

/// `GET` on `server`'s federation listener, without signature.
async fn federation_get(ca: &TestCa, server: &TestServer, path: &str) -> (u16, Value) {
    let response = ca
        .https_client()
        .get(format!("https://{}{path}", server.server_name()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An `X-Matrix` header as a stranger would forge it: `origin` of its choosing, a well-formed
/// ed25519 key ID and a signature of the right length that verifies nothing.
fn forged_x_matrix(origin: &str, destination: &str, key: &str, signature_bytes: usize) -> String {
    use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
    let sig = STANDARD_NO_PAD.encode(vec![7u8; signature_bytes]);
    format!(
        "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{key}\",sig=\"{sig}\""
    )
}

/// A `GET` of a signed federation route on `server`'s federation listener with a forged
/// `X-Matrix` header naming `origin`; the status.
async fn forged_get(ca: &TestCa, server: &TestServer, authorization: String) -> u16 {
    ca.https_client()
        .get(format!(
            "https://{}/_matrix/federation/v1/query/profile?user_id=%40a%3Aexample.org",
            server.server_name()
        ))
        .header(http::header::AUTHORIZATION, authorization)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_query_for_an_internal_address_makes_no_connection() {
    let ca = TestCa::new();
    let server = server_with_default_denylist(&ca, "127.0.0.30").await;
    let victim = Victim::start(ip("127.0.0.1")).await;
    let port = victim.address.port();
    // An IP literal (as the server name itself), a name that resolves to loopback, and the
    // batch form: answered as for an unreachable server, with no keys, and nothing connected.
    for name in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, answer) =
            federation_get(&ca, &server, &format!("/_matrix/key/v2/query/{name}")).await;
        assert_eq!(
            (status, &answer["server_keys"]),
            (200, &json!([])),
            "{name}"
        );
    }
    let response = ca
        .https_client()
        .post(format!(
            "https://{}/_matrix/key/v2/query",
            server.server_name()
        ))
        .json(&json!({ "server_keys": { format!("127.0.0.1:{port}"): {} } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        victim.accepted().await,
        0,
        "the server connected to loopback"
    );

    // The check has teeth: a server that allows loopback does connect for the same query.
    let allowing = TestServer::start_federated(ip("127.0.0.31"), &ca, None).await;
    federation_get(
        &ca,
        &allowing,
        &format!("/_matrix/key/v2/query/127.0.0.1:{port}"),
    )
    .await;
    assert!(victim.accepted().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_x_matrix_origin_naming_an_internal_address_makes_no_connection() {
    let ca = TestCa::new();
    let server = server_with_default_denylist(&ca, "127.0.0.32").await;
    let victim = Victim::start(ip("127.0.0.1")).await;
    let name = server.server_name();
    for origin in [
        victim.address.to_string(),
        format!("localhost:{}", victim.address.port()),
    ] {
        let status = forged_get(
            &ca,
            &server,
            forged_x_matrix(&origin, &name, "ed25519:a", 64),
        )
        .await;
        assert_eq!(status, 401, "{origin}");
    }
    assert_eq!(
        victim.accepted().await,
        0,
        "the server connected to loopback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_origins_cost_at_most_one_key_fetch_per_origin_and_malformed_signatures_none() {
    let ca = TestCa::new();
    // Loopback allowed: the victim stands for a reachable server that is not a homeserver.
    let server = TestServer::start_federated(ip("127.0.0.33"), &ca, None).await;
    let victim = Victim::start(ip("127.0.0.34")).await;
    let origin = victim.address.to_string();
    let name = server.server_name();
    // A signature that cannot verify whatever the key (wrong length, or not ed25519) is
    // refused before any key is fetched.
    for header in [
        forged_x_matrix(&origin, &name, "ed25519:a", 12),
        forged_x_matrix(&origin, &name, "curve25519:a", 64),
    ] {
        assert_eq!(forged_get(&ca, &server, header).await, 401);
    }
    assert_eq!(
        victim.accepted().await,
        0,
        "a key fetch for a malformed signature"
    );
    // A flood of well-formed forgeries, at once and one after another: one fetch of the
    // origin's keys, whose failure is remembered.
    let header = forged_x_matrix(&origin, &name, "ed25519:a", 64);
    let flood: Vec<_> = (0..20)
        .map(|_| forged_get(&ca, &server, header.clone()))
        .collect();
    for status in futures_util::future::join_all(flood).await {
        assert_eq!(status, 401);
    }
    for _ in 0..10 {
        assert_eq!(forged_get(&ca, &server, header.clone()).await, 401);
    }
    assert_eq!(victim.accepted().await, 1, "key fetches for one origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_server_routes_are_not_served_on_the_client_listener() {
    let victim = Victim::start(ip("127.0.0.1")).await;
    // Federation off: the routes are served nowhere, and nothing is fetched.
    let server = TestServer::start().await;
    let client = server.client();
    for path in [
        "/_matrix/key/v2/server".to_owned(),
        format!("/_matrix/key/v2/query/{}", victim.address),
        "/_matrix/federation/v1/version".to_owned(),
    ] {
        assert_error(&client.get(&path).await, 404, "M_UNRECOGNIZED");
    }
    let send = client
        .put("/_matrix/federation/v1/send/1", json!({ "pdus": [] }))
        .await;
    assert_error(&send, 404, "M_UNRECOGNIZED");
    // A known server-server path asked with a method it does not take is still 405, as on any
    // known endpoint (Complement's TestUnknownEndpoints).
    let wrong_method = client
        .put("/_matrix/federation/v1/version", json!({}))
        .await;
    assert_error(&wrong_method, 405, "M_UNRECOGNIZED");
    assert_eq!(victim.accepted().await, 0);
    // Federation on: on the federation listener only.
    let ca = TestCa::new();
    let federating = TestServer::start_federated(ip("127.0.0.35"), &ca, None).await;
    assert_error(
        &federating.client().get("/_matrix/key/v2/server").await,
        404,
        "M_UNRECOGNIZED",
    );
    let (status, document) = federation_get(&ca, &federating, "/_matrix/key/v2/server").await;
    assert_eq!(status, 200);
    assert_eq!(document["server_name"], federating.server_name());
}

/// Two federating servers, and a public room of alice on hs1 that bob of hs2 joined: the CA,
/// both servers, the room and bob's user ID.
async fn room_across_two_servers() -> (TestCa, TestServer, TestServer, String, String) {
    let (ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &hs1).await;
    (ca, hs1, hs2, room, bob_id)
}

/// A message in `room` from `sender`, built and signed by `server` (not committed there), with
/// `shape` applied to its template before signing and `sign` after; its event ID and JSON.
fn message(
    server: &TestServer,
    (room, sender): (&str, &str),
    text: &str,
    shape: impl FnOnce(&mut ruma::CanonicalJsonObject),
    sign: impl FnOnce(&mut Value),
) -> (String, Value) {
    let builder = plait::service::rooms::timeline::PduBuilder::timeline(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": text }),
    );
    forge_shaped(server, room, sender, builder, shape, |value| {
        value.as_object_mut().unwrap().remove("event_id");
        sign(value);
    })
}

/// Whether `server` stored the event.
fn is_stored(server: &TestServer, event_id: &str) -> bool {
    server
        .services
        .rooms
        .timeline
        .get_pdu_id(&ruma::OwnedEventId::try_from(event_id).unwrap())
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_over_50_pdus_or_100_edus_are_refused_whole() {
    let (ca, hs1, hs2, room, bob_id) = room_across_two_servers().await;
    let messages = |count: usize| -> (Vec<String>, Vec<Value>) {
        (0..count)
            .map(|number| {
                let text = format!("message {number}");
                message(&hs2, (&room, &bob_id), &text, |_| {}, |_| {})
            })
            .unzip()
    };
    let stored = |event_id: &String| is_stored(&hs1, event_id);
    let typing = json!({
        "edu_type": "m.typing",
        "content": { "room_id": room, "user_id": bob_id, "typing": true },
    });
    let transaction = |pdus: Vec<Value>, edus: Vec<Value>| {
        json!({
            "origin": hs2.server_name(), "origin_server_ts": 1, "pdus": pdus, "edus": edus,
        })
    };

    // 51 PDUs: none of them is stored.
    let (ids, pdus) = messages(51);
    let path = "/_matrix/federation/v1/send/too-many-pdus";
    let body = transaction(pdus, Vec::new());
    let (status, answer) = signed(&ca, &hs2, &hs1, http::Method::PUT, path, Some(body)).await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("M_BAD_JSON"))
    );
    assert!(!ids.iter().any(stored), "a PDU of a refused transaction");
    // One PDU with 101 EDUs: the PDU is not stored either.
    let (ids, pdus) = messages(1);
    let path = "/_matrix/federation/v1/send/too-many-edus";
    let body = transaction(pdus.clone(), vec![typing.clone(); 101]);
    let (status, answer) = signed(&ca, &hs2, &hs1, http::Method::PUT, path, Some(body)).await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("M_BAD_JSON"))
    );
    assert!(!stored(&ids[0]));
    // At the limits, 50 PDUs and 100 EDUs, the transaction is taken.
    let (ids, pdus) = messages(50);
    let body = transaction(pdus, vec![typing; 100]);
    let path = "/_matrix/federation/v1/send/at-the-limits";
    let (status, answer) = signed(&ca, &hs2, &hs1, http::Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(ids.iter().all(stored));
}

/// A message like [`message`] sent at `origin_server_ts` and signed for `server` with `key`
/// alone.
fn signed_with(
    server: &TestServer,
    key: &plait::crypto::SigningKey,
    room_and_sender: (&str, &str),
    text: &str,
    origin_server_ts: u64,
) -> (String, Value) {
    let room_id = ruma::OwnedRoomId::try_from(room_and_sender.0).unwrap();
    let (_, version) = server.services.rooms.room_version(&room_id).unwrap();
    let rules = plait::service::rooms::version::rules_for(&version).unwrap();
    let at = ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(origin_server_ts).unwrap());
    let shape = |object: &mut ruma::CanonicalJsonObject| {
        object.insert("origin_server_ts".into(), at);
    };
    message(server, room_and_sender, text, shape, |value| {
        value.as_object_mut().unwrap().remove("signatures");
        let ruma::CanonicalJsonValue::Object(mut object) =
            ruma::CanonicalJsonValue::try_from(value.clone()).unwrap()
        else {
            unreachable!()
        };
        plait::crypto::hash_and_sign_event(&server.server_name(), key, &mut object, &rules)
            .unwrap();
        *value = serde_json::to_value(&object).unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_signed_after_their_key_expired_are_refused_and_before_accepted() {
    let (_ca, hs1, hs2, room, bob_id) = room_across_two_servers().await;
    // hs2 had another key, which its key document said was valid until a minute ago; hs1
    // learnt that document (as it would have then). hs2 no longer publishes the key.
    let now = plait::util::now_millis();
    let expired_at = now - 60_000;
    let old_key = plait::crypto::SigningKey::generate("old").unwrap();
    let hs2_name = ruma::OwnedServerName::try_from(hs2.server_name()).unwrap();
    let document = json!({
        "server_name": hs2_name,
        "valid_until_ts": expired_at,
        "verify_keys": { old_key.key_id(): { "key": old_key.public_key_base64() } },
        "old_verify_keys": {},
    });
    let ruma::CanonicalJsonValue::Object(mut document) =
        ruma::CanonicalJsonValue::try_from(document).unwrap()
    else {
        unreachable!()
    };
    plait::crypto::sign_json(hs2_name.as_str(), &old_key, &mut document).unwrap();
    hs1.services
        .server_keys
        .store_document(&hs2_name, &serde_json::to_value(&document).unwrap(), None)
        .unwrap();
    // Signed with it before it expired: accepted. After: refused (room versions 5 and up:
    // server-server API, "Validating hashes and signatures on received events").
    let stored = |event_id: &str| is_stored(&hs1, event_id);
    let room_and_sender = (room.as_str(), bob_id.as_str());
    let (before, value) = signed_with(&hs2, &old_key, room_and_sender, "before", now - 120_000);
    let answer = crate::common::send_pdus(&hs2, &hs1, "before", vec![value]).await;
    assert_eq!(answer["pdus"][&before], json!({}), "{answer}");
    assert!(stored(&before));
    let (after, value) = signed_with(&hs2, &old_key, room_and_sender, "after", now - 30_000);
    let answer = crate::common::send_pdus(&hs2, &hs1, "after", vec![value]).await;
    let error = answer["pdus"][&after]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no valid key"), "{answer}");
    assert!(!stored(&after));
}

/// A fake homeserver on `address` whose every answer to `/_matrix/key/v2/server` is `answer`
/// run on the TLS stream; the number of bytes it managed to write comes back through the
/// counter.
async fn misbehaving_server<F, Fut>(
    ca: &TestCa,
    address: IpAddr,
    answer: F,
) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Arc<AtomicUsize>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let acceptor = ca.acceptor(address);
    let listener = tokio::net::TcpListener::bind((address, 0)).await.unwrap();
    let name = listener.local_addr().unwrap().to_string();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counter, answer) =
                (acceptor.clone(), Arc::clone(&counter), Arc::clone(&answer));
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                if http_stub::read_head(&mut stream).await.is_none() {
                    return;
                }
                answer(stream, counter).await;
            });
        }
    });
    (name, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_servers_that_answer_slowly_or_too_much_are_cut_off() {
    let ca = TestCa::new();
    let server = TestServer::start_federated_with(ip("127.0.0.36"), &ca, None, |config| {
        config.federation_request_timeout_ms = 1500;
    })
    .await;
    // A server that takes the request and never answers.
    let (slow, _) = misbehaving_server(&ca, ip("127.0.0.37"), |stream, _| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    })
    .await;
    let started = Instant::now();
    let (status, answer) =
        federation_get(&ca, &server, &format!("/_matrix/key/v2/query/{slow}")).await;
    assert_eq!((status, &answer["server_keys"]), (200, &json!([])));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the key query took {:?}",
        started.elapsed()
    );
    // A server that answers its key document with 100 MB.
    let (huge, written) =
        misbehaving_server(&ca, ip("127.0.0.38"), |mut stream, counter| async move {
            let total = 100 * 1024 * 1024;
            let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
        );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
                counter.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        })
        .await;
    let (status, answer) =
        federation_get(&ca, &server, &format!("/_matrix/key/v2/query/{huge}")).await;
    assert_eq!((status, &answer["server_keys"]), (200, &json!([])));
    tokio::time::sleep(QUIET).await;
    // What the fake server wrote before the connection was dropped: the read limit of a key
    // document (1 MiB) and what the socket buffers hold, far from 100 MB.
    let written = written.load(Ordering::SeqCst);
    assert!(written < 16 * 1024 * 1024, "{written} bytes were taken");
}
