//! Third-party invites: inviting an email address through an identity server (a fake one served
//! by the test on loopback, signing with its own ed25519 key), the pending
//! `m.room.third_party_invite`, redeeming it with `/3pid/onbind` on the invitee's server (through
//! `/exchange_third_party_invite` when the inviter is on another server), bound addresses, and
//! bad input on every step.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonValue,
};
use serde_json::{json, Value};

use crate::{
    common::{assert_error, enc, ip, tls::TestCa, Client, TestServer},
    federation::{is_membership, wait_for_event, wait_for_invite},
};

const ACCESS_TOKEN: &str = "is-token";
const PEPPER: &str = "pepper";

/// What the fake identity server knows and was asked.
#[derive(Default)]
struct IdentityState {
    /// Bound email addresses → Matrix user IDs.
    bindings: HashMap<String, String>,
    /// Every request: `"METHOD /path"` and its JSON body (`null` for none).
    requests: Vec<(String, Value)>,
    /// Whether `/pubkey/isvalid` vouches for the key.
    revoked: bool,
    invites: usize,
}

/// An identity server on 127.0.0.1 implementing `/hash_details`, `/lookup` (sha256),
/// `/store-invite` and `/pubkey/isvalid`, with the access token [`ACCESS_TOKEN`].
struct FakeIdentityServer {
    host: String,
    key: Arc<Ed25519KeyPair>,
    public_key: String,
    state: Arc<Mutex<IdentityState>>,
}

impl FakeIdentityServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let document = Ed25519KeyPair::generate();
        let key = Arc::new(Ed25519KeyPair::from_der(&document, "0".to_owned()).unwrap());
        let public_key = STANDARD_NO_PAD.encode(key.public_key());
        let state = Arc::new(Mutex::new(IdentityState::default()));
        let app = {
            let (state, host, public_key) = (state.clone(), host.clone(), public_key.clone());
            axum::Router::new().fallback(
                move |method: http::Method,
                      uri: http::Uri,
                      headers: http::HeaderMap,
                      body: axum::body::Bytes| {
                    let answer = answer(&state, &host, &public_key, &method, &uri, &headers, &body);
                    async move {
                        let (status, body) = answer;
                        (
                            http::StatusCode::from_u16(status).unwrap(),
                            [(http::header::CONTENT_TYPE, "application/json")],
                            body.to_string(),
                        )
                    }
                },
            )
        };
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            host,
            key,
            public_key,
            state,
        }
    }

    fn bind(&self, address: &str, user: &str) {
        let mut state = self.state.lock().unwrap();
        state.bindings.insert(address.to_owned(), user.to_owned());
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().requests.clone()
    }

    fn asked(&self, what: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(request, _)| request == what)
            .map(|(_, body)| body)
            .collect()
    }

    /// The `signed` block the identity server hands out when `mxid` binds the address invited
    /// with `token`, signed with `key` (this server's key unless another is given).
    fn signed(&self, mxid: &str, token: &str, sender: &str, key: Option<&Ed25519KeyPair>) -> Value {
        let value = json!({ "mxid": mxid, "token": token, "sender": sender });
        let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value).unwrap()
        else {
            unreachable!()
        };
        sign_json("id.example", key.unwrap_or(self.key.as_ref()), &mut object).unwrap();
        serde_json::to_value(&object).unwrap()
    }

    /// The invite of an address to a room by a sender, with text fields in an invite body.
    fn invite_body(&self, address: &str) -> Value {
        json!({
            "id_server": self.host,
            "id_access_token": ACCESS_TOKEN,
            "medium": "email",
            "address": address,
        })
    }
}

/// The fake identity server's answer to one request: status and JSON body.
fn answer(
    state: &Mutex<IdentityState>,
    host: &str,
    public_key: &str,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (u16, Value) {
    let mut state = state.lock().unwrap();
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    state
        .requests
        .push((format!("{method} {}", uri.path()), body.clone()));
    let authorised = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        == Some(&format!("Bearer {ACCESS_TOKEN}"));
    let unauthorised = (
        401,
        json!({ "errcode": "M_UNAUTHORIZED", "error": "bad token" }),
    );
    match (method.as_str(), uri.path()) {
        ("GET", "/_matrix/identity/v2/hash_details") if authorised => (
            200,
            json!({ "lookup_pepper": PEPPER, "algorithms": ["none", "sha256"] }),
        ),
        ("POST", "/_matrix/identity/v2/lookup") if authorised => {
            assert_eq!(body["algorithm"], "sha256", "{body}");
            assert_eq!(body["pepper"], PEPPER, "{body}");
            let mut mappings = serde_json::Map::new();
            for (address, user) in &state.bindings {
                let hash = plait::service::identity::lookup_hash("email", address, PEPPER);
                if body["addresses"].as_array().unwrap().contains(&json!(hash)) {
                    mappings.insert(hash, json!(user));
                }
            }
            (200, json!({ "mappings": mappings }))
        }
        ("POST", "/_matrix/identity/v2/store-invite") if authorised => {
            state.invites += 1;
            let address = body["address"].as_str().unwrap_or_default();
            (
                200,
                json!({
                    "token": format!("token{}", state.invites),
                    "display_name": format!("{}...", &address[..1]),
                    "public_keys": [
                        {
                            "public_key": public_key,
                            "key_validity_url":
                                format!("http://{host}/_matrix/identity/v2/pubkey/isvalid"),
                        },
                        {
                            "public_key": "ZXBoZW1lcmFsIGtleSB0aGF0IHNpZ25zIG5vdGhpbmc",
                            "key_validity_url":
                                format!("http://{host}/_matrix/identity/v2/pubkey/ephemeral/isvalid"),
                        },
                    ],
                }),
            )
        }
        ("GET", "/_matrix/identity/v2/pubkey/isvalid") => {
            let asked = uri.query().unwrap_or_default();
            let expected = format!("public_key={}", enc(public_key));
            (200, json!({ "valid": asked == expected && !state.revoked }))
        }
        (_, path) if path.starts_with("/_matrix/identity/v2/") && !authorised => unauthorised,
        _ => (404, json!({ "errcode": "M_UNRECOGNIZED" })),
    }
}

async fn server_allowing_http() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.identity_server_allow_http = true;
    })
    .await;
    server.dir = Some(dir);
    server
}

async fn invite(client: &Client, room: &str, body: Value) -> (u16, Value) {
    client
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            body,
        )
        .await
}

/// The onbind request an identity server sends once `mxid` bound `address`.
fn onbind(address: &str, mxid: &str, invites: &[(&str, &str, Value)]) -> Value {
    let invites: Vec<Value> = invites
        .iter()
        .map(|(room, sender, signed)| {
            json!({
                "medium": "email",
                "address": address,
                "mxid": mxid,
                "room_id": room,
                "sender": sender,
                "signed": signed,
            })
        })
        .collect();
    json!({ "medium": "email", "address": address, "mxid": mxid, "invites": invites })
}

async fn third_party_invite_state(client: &Client, room: &str, token: &str) -> (u16, Value) {
    client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.third_party_invite/{token}",
            enc(room)
        ))
        .await
}

#[tokio::test]
async fn email_invite_to_an_unbound_address_is_redeemed_on_bind_across_servers() {
    let ca = TestCa::new();
    let hs1 = TestServer::start_federated_with(ip("127.0.0.2"), &ca, None, |config| {
        config.identity_server_allow_http = true;
    })
    .await;
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, None).await;
    let identity = FakeIdentityServer::start().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Bookclub" }))
        .await;

    let answer = invite(&alice, &room, identity.invite_body("bob@example.org")).await;
    assert_eq!(answer, (200, json!({})));
    let stored = identity.asked("POST /_matrix/identity/v2/store-invite");
    assert_eq!(stored.len(), 1, "{:?}", identity.requests());
    assert_eq!(stored[0]["medium"], "email");
    assert_eq!(stored[0]["address"], "bob@example.org");
    assert_eq!(stored[0]["room_id"], room);
    assert_eq!(stored[0]["sender"], alice_id);
    assert_eq!(stored[0]["room_name"], "Bookclub");
    assert_eq!(
        identity.asked("POST /_matrix/identity/v2/lookup")[0]["addresses"],
        json!([plait::service::identity::lookup_hash(
            "email",
            "bob@example.org",
            PEPPER
        )])
    );
    let (status, pending) = third_party_invite_state(&alice, &room, "token1").await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["display_name"], "b...");
    assert_eq!(pending["public_key"], identity.public_key);
    assert!(pending["key_validity_url"]
        .as_str()
        .unwrap()
        .ends_with("/_matrix/identity/v2/pubkey/isvalid"));
    assert_eq!(pending["public_keys"].as_array().unwrap().len(), 2);

    // Bob binds the address: the identity server tells hs2, which asks hs1 to issue the invite.
    let signed = identity.signed(&bob_id, "token1", &alice_id, None);
    let bind = onbind("bob@example.org", &bob_id, &[(&room, &alice_id, signed)]);
    let answer = hs2
        .client()
        .put("/_matrix/federation/v1/3pid/onbind", bind)
        .await;
    assert_eq!(answer, (200, json!({})));
    assert_eq!(
        identity
            .asked("GET /_matrix/identity/v2/pubkey/isvalid")
            .len(),
        1,
        "hs1 checked the key's validity"
    );
    wait_for_invite(&bob, &room).await;
    let member = wait_for_event(
        &alice,
        &room,
        "bob's invite",
        is_membership(&bob_id, "invite"),
    )
    .await;
    assert_eq!(member["sender"], alice_id);
    assert_eq!(
        member["content"]["third_party_invite"]["display_name"],
        "b..."
    );
    assert_eq!(
        member["content"]["third_party_invite"]["signed"]["token"],
        "token1"
    );
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    wait_for_event(&alice, &room, "bob's join", is_membership(&bob_id, "join")).await;

    // A second pending invite: a signature by another key, and a key the identity server no
    // longer vouches for, are refused by hs1, and hs2 passes the refusal on.
    let carol = hs2.register("carol").await;
    let carol_id = carol.user_id().await;
    let answer = invite(&alice, &room, identity.invite_body("carol@example.org")).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let other_key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).unwrap();
    let forged = identity.signed(&carol_id, "token2", &alice_id, Some(&other_key));
    let bind = onbind(
        "carol@example.org",
        &carol_id,
        &[(&room, &alice_id, forged)],
    );
    assert_error(
        &hs2.client()
            .put("/_matrix/federation/v1/3pid/onbind", bind)
            .await,
        403,
        "M_FORBIDDEN",
    );
    identity.state.lock().unwrap().revoked = true;
    let signed = identity.signed(&carol_id, "token2", &alice_id, None);
    let bind = onbind(
        "carol@example.org",
        &carol_id,
        &[(&room, &alice_id, signed)],
    );
    assert_error(
        &hs2.client()
            .put("/_matrix/federation/v1/3pid/onbind", bind.clone())
            .await,
        403,
        "M_FORBIDDEN",
    );
    let members = alice
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)))
        .await;
    assert!(
        !members["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["state_key"] == carol_id),
        "carol was not invited: {members}"
    );
    identity.state.lock().unwrap().revoked = false;
    let answer = hs2
        .client()
        .put("/_matrix/federation/v1/3pid/onbind", bind)
        .await;
    assert_eq!(answer, (200, json!({})));
    wait_for_invite(&carol, &room).await;
}

#[tokio::test]
async fn email_invite_to_a_bound_address_invites_the_user() {
    let server = server_allowing_http().await;
    let identity = FakeIdentityServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_id = bob.user_id().await;
    identity.bind("bob@example.org", &bob_id);
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    // The address is looked up in its canonical form (the domain, here all of it, lowercased).
    let answer = invite(&alice, &room, identity.invite_body("Bob@Example.ORG")).await;
    assert_eq!(answer, (200, json!({})));
    wait_for_invite(&bob, &room).await;
    assert!(identity
        .asked("POST /_matrix/identity/v2/store-invite")
        .is_empty());
    let state = alice
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)))
        .await;
    assert!(
        !state
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "m.room.third_party_invite"),
        "{state}"
    );
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn third_party_invites_refuse_bad_input() {
    let server = server_allowing_http().await;
    let identity = FakeIdentityServer::start().await;
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let body = identity.invite_body("dave@example.org");
    let with = |key: &str, value: Value| {
        let mut body = body.clone();
        body[key] = value;
        body
    };
    let mut missing = body.clone();
    missing.as_object_mut().unwrap().remove("id_access_token");
    assert_error(
        &invite(&alice, &room, missing).await,
        400,
        "M_MISSING_PARAM",
    );
    assert_error(
        &invite(&alice, &room, with("medium", json!(7))).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &invite(&alice, &room, with("medium", json!("pigeon"))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &invite(
            &alice,
            &room,
            with("address", json!("Dave <dave@example.org>")),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &invite(&alice, &room, with("id_server", json!("id.example/../x"))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &invite(&carol, &room, body.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    assert!(identity.requests().is_empty(), "{:?}", identity.requests());
    // An identity server that refuses the token, and one that is not there.
    assert_error(
        &invite(&alice, &room, with("id_access_token", json!("wrong"))).await,
        502,
        "M_UNKNOWN",
    );
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert_error(
        &invite(&alice, &room, with("id_server", json!(nobody))).await,
        502,
        "M_UNKNOWN",
    );
    assert!(identity
        .asked("POST /_matrix/identity/v2/store-invite")
        .is_empty());

    // Onbind on the inviter's own server redeems the invite here; bad notifications are refused.
    let dave = server.register("dave").await;
    let dave_id = dave.user_id().await;
    assert_eq!(invite(&alice, &room, body.clone()).await, (200, json!({})));
    let signed = identity.signed(&dave_id, "token1", &alice_id, None);
    let onbind_path = "/_matrix/federation/v1/3pid/onbind";
    let anonymous = server.client();
    let check = |body: Value, status: u16, errcode: &'static str| {
        let anonymous = &anonymous;
        async move { assert_error(&anonymous.put(onbind_path, body).await, status, errcode) }
    };
    let mut no_invites = onbind("dave@example.org", &dave_id, &[]);
    no_invites.as_object_mut().unwrap().remove("invites");
    check(no_invites, 400, "M_MISSING_PARAM").await;
    check(
        onbind("dave@example.org", "@dave:elsewhere.example", &[]),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    let nobody_id = format!("@nobody:{}", server.server_name());
    check(
        onbind("dave@example.org", &nobody_id, &[]),
        404,
        "M_NOT_FOUND",
    )
    .await;
    let carol_id = carol.user_id().await;
    check(
        onbind(
            "dave@example.org",
            &carol_id,
            &[(&room, &alice_id, signed.clone())],
        ),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    let mut tampered = signed.clone();
    tampered["token"] = json!("token9");
    check(
        onbind(
            "dave@example.org",
            &dave_id,
            &[(&room, &alice_id, tampered)],
        ),
        403,
        "M_FORBIDDEN",
    )
    .await;
    let other_key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).unwrap();
    let forged = identity.signed(&dave_id, "token1", &alice_id, Some(&other_key));
    check(
        onbind("dave@example.org", &dave_id, &[(&room, &alice_id, forged)]),
        403,
        "M_FORBIDDEN",
    )
    .await;
    assert_eq!(
        dave.get_ok("/_matrix/client/v3/sync?timeout=0").await["rooms"]["invite"].get(&room),
        None
    );
    let answer = anonymous
        .put(
            onbind_path,
            onbind("dave@example.org", &dave_id, &[(&room, &alice_id, signed)]),
        )
        .await;
    assert_eq!(answer, (200, json!({})));
    wait_for_invite(&dave, &room).await;
    dave.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn identity_servers_on_denied_addresses_are_not_contacted() {
    // Without `identity_server_allow_http`, identity servers are reached over https and never on
    // loopback or private addresses.
    let server = TestServer::start().await;
    let identity = FakeIdentityServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    assert_error(
        &invite(&alice, &room, identity.invite_body("bob@example.org")).await,
        403,
        "M_FORBIDDEN",
    );
    assert!(identity.requests().is_empty());
}

/// `/exchange_third_party_invite` from `from` to `to`, signed as `from`: the error's debug text
/// (which names the errcode), or `ok`.
async fn exchange(from: &TestServer, to: &TestServer, room: &str, event: &Value) -> String {
    let services = &from.services;
    let destination = ruma::OwnedServerName::try_from(to.server_name()).unwrap();
    let answer = services
        .federation
        .request(
            services.globals.server_name(),
            services.globals.signing_key(),
            &destination,
            http::Method::PUT,
            &format!(
                "/_matrix/federation/v1/exchange_third_party_invite/{}",
                enc(room)
            ),
            Some(event),
        )
        .await;
    match answer {
        Ok(value) => {
            assert_eq!(value, json!({}));
            "ok".to_owned()
        }
        Err(error) => format!("{error:?}"),
    }
}

#[tokio::test]
async fn exchange_requests_that_do_not_match_the_pending_invite_are_refused() {
    let ca = TestCa::new();
    let hs1 = TestServer::start_federated_with(ip("127.0.0.2"), &ca, None, |config| {
        config.identity_server_allow_http = true;
    })
    .await;
    let hs2 = TestServer::start_federated(ip("127.0.0.3"), &ca, None).await;
    let identity = FakeIdentityServer::start().await;
    let alice = hs1.register("alice").await;
    let alice_id = alice.user_id().await;
    let carol = hs1.register("carol").await;
    let carol_id = carol.user_id().await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    let answer = invite(&alice, &room, identity.invite_body("bob@example.org")).await;
    assert_eq!(answer, (200, json!({})));
    let signed = identity.signed(&bob_id, "token1", &alice_id, None);
    let event = |sender: &str, target: &str, signed: &Value| {
        json!({
            "type": "m.room.member",
            "room_id": room,
            "sender": sender,
            "state_key": target,
            "content": { "membership": "invite", "third_party_invite": { "signed": signed } },
        })
    };
    let check = |answer: String, expected: &str| {
        assert!(answer.contains(expected), "{answer} should say {expected}");
    };
    // The invitee must be a user of the asking server, the sender a user of this one and the
    // sender of the pending invite; the token must match a pending invite; the signed block must
    // name the invitee and be signed by one of the pending invite's keys.
    check(
        exchange(&hs2, &hs1, &room, &event(&alice_id, &carol_id, &signed)).await,
        "Forbidden",
    );
    check(
        exchange(&hs2, &hs1, &room, &event(&bob_id, &bob_id, &signed)).await,
        "Forbidden",
    );
    check(
        exchange(&hs2, &hs1, &room, &event(&carol_id, &bob_id, &signed)).await,
        "Forbidden",
    );
    let unknown_token = identity.signed(&bob_id, "token7", &alice_id, None);
    check(
        exchange(
            &hs2,
            &hs1,
            &room,
            &event(&alice_id, &bob_id, &unknown_token),
        )
        .await,
        "Forbidden",
    );
    let other_key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).unwrap();
    let forged = identity.signed(&bob_id, "token1", &alice_id, Some(&other_key));
    check(
        exchange(&hs2, &hs1, &room, &event(&alice_id, &bob_id, &forged)).await,
        "Forbidden",
    );
    let someone_else = identity.signed("@eve:127.0.0.3:1", "token1", &alice_id, None);
    check(
        exchange(&hs2, &hs1, &room, &event(&alice_id, &bob_id, &someone_else)).await,
        "Forbidden",
    );
    let mut message = event(&alice_id, &bob_id, &signed);
    message["type"] = json!("m.room.message");
    check(exchange(&hs2, &hs1, &room, &message).await, "M_BAD_JSON");
    let other_room = "!elsewhere:127.0.0.2";
    check(
        exchange(&hs2, &hs1, other_room, &event(&alice_id, &bob_id, &signed)).await,
        "NotFound",
    );
    check(
        exchange(&hs2, &hs1, &room, &{
            let mut moved = event(&alice_id, &bob_id, &signed);
            moved["room_id"] = json!(other_room);
            moved
        })
        .await,
        "M_BAD_JSON",
    );
    let members = alice
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)))
        .await;
    assert!(
        !members["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|member| member["state_key"] == bob_id),
        "{members}"
    );

    // The matching request is answered once the invite is sent.
    check(
        exchange(&hs2, &hs1, &room, &event(&alice_id, &bob_id, &signed)).await,
        "ok",
    );
    wait_for_invite(&bob, &room).await;
}
