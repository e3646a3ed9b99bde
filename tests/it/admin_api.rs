//! Synapse's admin API as Plait serves it: shared-secret registration and server notices, in the
//! steps Complement's `TestRegistration`, `TestCanRegisterAdmin` and `TestServerNotices` take.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

use crate::common::{assert_error, enc, Client, TestServer};

pub(crate) const SECRET: &str = "complement";
const REGISTER: &str = "/_synapse/admin/v1/register";
const NOTICE: &str = "/_synapse/admin/v1/send_server_notice";

pub(crate) async fn server_with_secret() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.registration_shared_secret = Some(SECRET.to_owned());
    })
    .await;
    server.dir = Some(dir);
    server
}

/// The hex HMAC-SHA1 a client computes for a registration.
fn mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    let role = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0{password}\0{role}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn nonce(client: &Client) -> String {
    client.get_ok(REGISTER).await["nonce"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Registers `user` through a fresh nonce with a MAC made with `secret`; the answer.
pub(crate) async fn register_signed(
    server: &TestServer,
    secret: &str,
    user: &str,
    admin: bool,
) -> (u16, Value) {
    let client = server.client();
    let nonce = nonce(&client).await;
    let mac = mac(secret, &nonce, user, "sUp3rs3kr1t", admin);
    client
        .post(
            REGISTER,
            json!({"nonce": nonce, "username": user, "password": "sUp3rs3kr1t", "admin": admin, "mac": mac}),
        )
        .await
}

/// A logged-in client from a registration answer.
pub(crate) fn logged_in(server: &TestServer, answer: &Value) -> Client {
    Client {
        token: Some(answer["access_token"].as_str().unwrap().to_owned()),
        ..server.client()
    }
}

#[tokio::test]
async fn shared_secret_registration_makes_admins_and_plain_users() {
    let server = server_with_secret().await;
    let (status, admin) = register_signed(&server, SECRET, "adminuser", true).await;
    assert_eq!(status, 200, "{admin}");
    let host = server.server_name();
    assert_eq!(admin["user_id"], format!("@adminuser:{host}"));
    assert_eq!(admin["home_server"], host);
    assert!(admin["device_id"].is_string());
    let whoami = logged_in(&server, &admin)
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
    assert_eq!(whoami["user_id"], format!("@adminuser:{host}"));
    assert_eq!(whoami["device_id"], admin["device_id"]);

    let (status, plain) = register_signed(&server, SECRET, "user-shared-secret", false).await;
    assert_eq!(status, 200, "{plain}");
    let users = &server.services.users;
    let admin_id = ruma::UserId::parse(admin["user_id"].as_str().unwrap()).unwrap();
    let plain_id = ruma::UserId::parse(plain["user_id"].as_str().unwrap()).unwrap();
    assert!(users.is_admin(&admin_id).unwrap());
    assert!(!users.is_admin(&plain_id).unwrap());
    // The password works for a normal login.
    server
        .client()
        .post_ok(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "user-shared-secret"}, "password": "sUp3rs3kr1t"}),
        )
        .await;
    // The name is taken now.
    assert_error(
        &register_signed(&server, SECRET, "adminuser", false).await,
        400,
        "M_USER_IN_USE",
    );
}

#[tokio::test]
async fn shared_secret_registration_refuses_bad_macs_nonces_and_names() {
    let server = server_with_secret().await;
    assert_error(
        &register_signed(&server, "not-the-secret", "mallory", true).await,
        403,
        "M_FORBIDDEN",
    );
    // A MAC for `notadmin` does not make an admin.
    let client = server.client();
    let nonce_value = nonce(&client).await;
    let plain_mac = mac(SECRET, &nonce_value, "mallory", "pw", false);
    let body = json!({"nonce": nonce_value, "username": "mallory", "password": "pw", "admin": true, "mac": plain_mac});
    assert_error(&client.post(REGISTER, body).await, 403, "M_FORBIDDEN");

    // A nonce is used once, even by a request that succeeded.
    let nonce_value = nonce(&client).await;
    let good_mac = mac(SECRET, &nonce_value, "once", "pw", false);
    let body = json!({"nonce": nonce_value, "username": "once", "password": "pw", "mac": good_mac});
    assert_eq!(client.post(REGISTER, body.clone()).await.0, 200);
    let mut again = body;
    again["username"] = json!("twice");
    again["mac"] = json!(mac(SECRET, &nonce_value, "twice", "pw", false));
    assert_error(&client.post(REGISTER, again).await, 400, "M_UNKNOWN");
    // A nonce the server never handed out.
    let forged = json!({"nonce": "made-up", "username": "forged", "password": "pw", "mac": mac(SECRET, "made-up", "forged", "pw", false)});
    assert_error(&client.post(REGISTER, forged).await, 400, "M_UNKNOWN");

    assert_error(
        &register_signed(&server, SECRET, "us,er", false).await,
        400,
        "M_INVALID_USERNAME",
    );
    let (status, upper) = register_signed(&server, SECRET, "user-UPPER-shared-SECRET", false).await;
    assert_eq!(status, 200, "{upper}");
    assert_eq!(
        upper["user_id"],
        format!("@user-upper-shared-secret:{}", server.server_name())
    );
    assert!(upper["access_token"].is_string());
    // The server notices user's name is kept from registration.
    assert_error(
        &register_signed(&server, SECRET, "_server", false).await,
        400,
        "M_USER_IN_USE",
    );
}

#[tokio::test]
async fn shared_secret_registration_is_off_without_a_secret() {
    let server = TestServer::start().await;
    let client = server.client();
    assert_error(&client.get(REGISTER).await, 400, "M_UNKNOWN");
    let body = json!({"nonce": "n", "username": "u", "password": "p", "mac": mac("", "n", "u", "p", false)});
    assert_error(&client.post(REGISTER, body).await, 400, "M_UNKNOWN");
}

/// Syncs until the user has an invite from the notices user; the room ID.
async fn notice_invite(client: &Client, notices_user: &str) -> String {
    for _ in 0..50 {
        let sync = client.get_ok("/_matrix/client/v3/sync?timeout=0").await;
        if let Some(invites) = sync["rooms"]["invite"].as_object() {
            for (room_id, room) in invites {
                if room["invite_state"]["events"][0]["sender"] == notices_user {
                    return room_id.clone();
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no invite from {notices_user}");
}

async fn send_notice(admin: &Client, body: &Value, txn: Option<&str>) -> String {
    let answer = match txn {
        Some(txn) => {
            admin
                .put_ok(&format!("{NOTICE}/{}", enc(txn)), body.clone())
                .await
        }
        None => admin.post_ok(NOTICE, body.clone()).await,
    };
    answer["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn server_notices_follow_complements_steps() {
    let server = server_with_secret().await;
    let (_, admin) = register_signed(&server, SECRET, "admin", true).await;
    let admin = logged_in(&server, &admin);
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let notices_user = format!("@_server:{}", server.server_name());
    let body = json!({"user_id": alice_id, "content": {"msgtype": "m.text", "body": "hello from server notices!"}});

    // Not for normal users, whatever the body; not without a token.
    assert_error(&alice.post(NOTICE, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&alice.post(NOTICE, body.clone()).await, 403, "M_FORBIDDEN");
    assert_error(
        &server.client().post(NOTICE, body.clone()).await,
        401,
        "M_MISSING_TOKEN",
    );

    let event_id = send_notice(&admin, &body, None).await;
    let room_id = notice_invite(&alice, &notices_user).await;
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id));
    assert_error(
        &alice.post(&leave, json!({})).await,
        403,
        "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
    );

    alice
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            json!({}),
        )
        .await;
    let sync = alice.get_ok("/_matrix/client/v3/sync?timeout=0").await;
    let joined = &sync["rooms"]["join"][&room_id];
    let events = joined["timeline"]["events"].as_array().unwrap();
    let notice = events
        .iter()
        .find(|event| event["event_id"] == event_id.as_str())
        .expect("the notice is in the joined room's timeline");
    assert_eq!(notice["sender"], notices_user.as_str());
    assert_eq!(notice["type"], "m.room.message");
    assert_eq!(notice["content"]["body"], "hello from server notices!");
    let tags = alice
        .get_ok(&format!(
            "/_matrix/client/v3/user/{}/rooms/{}/tags",
            enc(&alice_id),
            enc(&room_id)
        ))
        .await;
    assert_eq!(tags["tags"]["m.server_notice"], json!({}));
    let name = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            enc(&room_id)
        ))
        .await;
    assert_eq!(name["name"], "Server Notices");
    // Only the server writes in the room.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/reply",
        enc(&room_id)
    );
    assert_error(
        &alice
            .put(&path, json!({"msgtype": "m.text", "body": "hi"}))
            .await,
        403,
        "M_FORBIDDEN",
    );

    // Once joined, the user may leave; the next notice invites them to the same room.
    alice.post_ok(&leave, json!({})).await;
    send_notice(&admin, &body, None).await;
    assert_eq!(notice_invite(&alice, &notices_user).await, room_id);

    let first = send_notice(&admin, &body, Some("1")).await;
    let second = send_notice(&admin, &body, Some("1")).await;
    assert_eq!(first, second);
    let third = send_notice(&admin, &body, Some("2")).await;
    assert_ne!(first, third);
}

#[tokio::test]
async fn server_notices_need_a_local_user_and_content() {
    let server = server_with_secret().await;
    let (_, admin) = register_signed(&server, SECRET, "admin", true).await;
    let admin = logged_in(&server, &admin);
    assert_error(
        &admin
            .post(
                NOTICE,
                json!({"user_id": "@nobody:elsewhere.example", "content": {}}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let local_nobody = format!("@nobody:{}", server.server_name());
    assert_error(
        &admin
            .post(NOTICE, json!({"user_id": local_nobody, "content": {}}))
            .await,
        404,
        "M_NOT_FOUND",
    );
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    assert_error(
        &admin.post(NOTICE, json!({"user_id": alice_id})).await,
        400,
        "M_MISSING_PARAM",
    );
    // A notice with `msgtype: m.server_notice` is passed through as sent.
    let body = json!({"user_id": alice_id, "content": {"msgtype": "m.server_notice", "body": "limit", "server_notice_type": "m.server_notice.usage_limit_reached", "limit_type": "monthly_active_user"}});
    let event_id = send_notice(&admin, &body, None).await;
    let room_id = notice_invite(&alice, &format!("@_server:{}", server.server_name())).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            json!({}),
        )
        .await;
    let event = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room_id),
            enc(&event_id)
        ))
        .await;
    assert_eq!(event["content"], body["content"]);
}
