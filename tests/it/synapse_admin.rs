//! Synapse's admin API for accounts and rooms as admin tools call it: an admin made by
//! shared-secret registration drives every endpoint over HTTP, and a plain user is refused.

use serde_json::{json, Value};

use crate::admin_api::{logged_in, register_signed, server_with_secret, SECRET};
use crate::common::{assert_error, enc, Client, TestServer};

/// A server with a shared secret, an admin made through it, and a plain user `alice`.
pub(crate) async fn admin_and_alice() -> (TestServer, Client, Client) {
    let server = server_with_secret().await;
    let (status, answer) = register_signed(&server, SECRET, "root", true).await;
    assert_eq!(status, 200, "{answer}");
    let admin = logged_in(&server, &answer);
    let alice = server.register("alice").await;
    (server, admin, alice)
}

pub(crate) async fn login(server: &TestServer, user: &str, password: &str) -> (u16, Value) {
    server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
}

pub(crate) fn names(list: &Value) -> Vec<String> {
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every request of `requests` answers a plain user `403 M_FORBIDDEN` and a caller without a
/// token `401`.
pub(crate) async fn refused_to_non_admins(
    server: &TestServer,
    user: &Client,
    requests: &[(&str, String)],
) {
    for (method, path) in requests {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = if method == reqwest::Method::GET {
            ""
        } else {
            "{}"
        };
        let answer = user.send_raw(method.clone(), path, body).await;
        assert_error(&answer, 403, "M_FORBIDDEN");
        let answer = server.client().send_raw(method, path, body).await;
        assert_error(&answer, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn admins_list_search_and_page_through_accounts() {
    let (server, admin, alice) = admin_and_alice().await;
    let host = server.server_name();
    server.register("bob").await;
    let version = server
        .client()
        .get_ok("/_synapse/admin/v1/server_version")
        .await;
    assert!(version["server_version"].is_string(), "{version}");

    let all = admin.get_ok("/_synapse/admin/v2/users").await;
    // The admin room's server user is an account too.
    assert_eq!(all["total"], 4, "{all}");
    assert!(all.get("next_token").is_none(), "{all}");
    assert_eq!(
        names(&all),
        [
            format!("@alice:{host}"),
            format!("@bob:{host}"),
            format!("@plait:{host}"),
            format!("@root:{host}")
        ]
    );
    let alice_entry = &all["users"][0];
    assert_eq!(alice_entry["admin"], false);
    assert_eq!(alice_entry["deactivated"], false);
    assert_eq!(alice_entry["displayname"], "alice");
    assert_eq!(all["users"][3]["admin"], true);

    let first = admin.get_ok("/_synapse/admin/v2/users?limit=2").await;
    assert_eq!(names(&first).len(), 2);
    assert_eq!(first["next_token"], "2");
    assert_eq!(first["total"], 4);
    let rest = admin
        .get_ok("/_synapse/admin/v2/users?limit=2&from=2&guests=false")
        .await;
    assert_eq!(
        names(&rest),
        [format!("@plait:{host}"), format!("@root:{host}")]
    );
    assert!(rest.get("next_token").is_none(), "{rest}");

    let found = admin.get_ok("/_synapse/admin/v2/users?name=LIC").await;
    assert_eq!(names(&found), [format!("@alice:{host}")]);
    let admins = admin.get_ok("/_synapse/admin/v2/users?admins=true").await;
    assert_eq!(names(&admins), [format!("@root:{host}")]);
    for bad in ["from=-1", "limit=many", "deactivated=maybe", "guests=1"] {
        let answer = admin.get(&format!("/_synapse/admin/v2/users?{bad}")).await;
        assert_error(&answer, 400, "M_INVALID_PARAM");
    }

    let alice_id = format!("@alice:{host}");
    let details = admin
        .get_ok(&format!("/_synapse/admin/v2/users/{}", enc(&alice_id)))
        .await;
    assert_eq!(details["name"], alice_id);
    assert_eq!(details["threepids"], json!([]));
    let unknown = format!(
        "/_synapse/admin/v2/users/{}",
        enc(&format!("@nobody:{host}"))
    );
    assert_error(&admin.get(&unknown).await, 404, "M_NOT_FOUND");
    let remote = format!(
        "/_synapse/admin/v2/users/{}",
        enc("@alice:elsewhere.example")
    );
    assert_error(&admin.get(&remote).await, 400, "M_INVALID_PARAM");
    assert_error(
        &admin.get("/_synapse/admin/v2/users/not-a-user").await,
        400,
        "M_INVALID_PARAM",
    );

    let alice_path = enc(&alice_id);
    refused_to_non_admins(
        &server,
        &alice,
        &[
            ("GET", "/_synapse/admin/v2/users".to_owned()),
            ("GET", format!("/_synapse/admin/v2/users/{alice_path}")),
            ("PUT", format!("/_synapse/admin/v2/users/{alice_path}")),
            (
                "POST",
                format!("/_synapse/admin/v1/deactivate/{alice_path}"),
            ),
            (
                "POST",
                format!("/_synapse/admin/v1/reset_password/{alice_path}"),
            ),
            ("GET", format!("/_synapse/admin/v1/whois/{alice_path}")),
            (
                "GET",
                format!("/_synapse/admin/v2/users/{alice_path}/devices"),
            ),
            (
                "GET",
                format!("/_synapse/admin/v1/users/{alice_path}/joined_rooms"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn admins_create_modify_reset_and_deactivate_accounts() {
    let (server, admin, alice) = admin_and_alice().await;
    let host = server.server_name();
    let carol_path = format!(
        "/_synapse/admin/v2/users/{}",
        enc(&format!("@carol:{host}"))
    );
    let created = admin
        .put_ok(
            &carol_path,
            json!({"password": "carols-secret", "displayname": "Carol", "admin": true}),
        )
        .await;
    assert_eq!(created["name"], format!("@carol:{host}"));
    assert_eq!(created["displayname"], "Carol");
    assert_eq!(created["admin"], true);
    let (status, carol_login) = login(&server, "carol", "carols-secret").await;
    assert_eq!(status, 200, "{carol_login}");
    let changed = admin
        .put_ok(
            &carol_path,
            json!({"displayname": "Carol C", "admin": false}),
        )
        .await;
    assert_eq!(changed["displayname"], "Carol C");
    assert_eq!(changed["admin"], false);
    let bad = admin.put(&carol_path, json!({"admin": "yes"})).await;
    assert_error(&bad, 400, "M_BAD_JSON");
    let root_path = format!("/_synapse/admin/v2/users/{}", enc(&format!("@root:{host}")));
    let demote = admin.put(&root_path, json!({"admin": false})).await;
    assert_error(&demote, 400, "M_INVALID_PARAM");

    // Alice's sessions, devices and rooms.
    let alice_id = alice.user_id().await;
    let alice_path = enc(&alice_id);
    let room_id = alice.create_room(json!({})).await;
    let whois = admin
        .get_ok(&format!("/_synapse/admin/v1/whois/{alice_path}"))
        .await;
    assert_eq!(whois["user_id"], alice_id);
    assert_eq!(whois["devices"].as_object().unwrap().len(), 1, "{whois}");
    let devices = admin
        .get_ok(&format!("/_synapse/admin/v2/users/{alice_path}/devices"))
        .await;
    assert_eq!(devices["total"], 1, "{devices}");
    assert_eq!(devices["devices"][0]["user_id"], alice_id);
    let rooms_path = format!("/_synapse/admin/v1/users/{alice_path}/joined_rooms");
    let joined = admin.get_ok(&rooms_path).await;
    assert_eq!(joined, json!({"total": 1, "joined_rooms": [room_id]}));

    // A password reset logs every device out.
    let reset_path = format!("/_synapse/admin/v1/reset_password/{alice_path}");
    let missing = admin.post(&reset_path, json!({})).await;
    assert_error(&missing, 400, "M_MISSING_PARAM");
    admin
        .post_ok(&reset_path, json!({"new_password": "new-alice"}))
        .await;
    let whoami = alice.get("/_matrix/client/v3/account/whoami").await;
    assert_error(&whoami, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(login(&server, "alice", "new-alice").await.0, 200);
    assert_eq!(login(&server, "alice", "password").await.0, 403);

    // Deactivation leaves the rooms and hides the account from the default list.
    let deactivated = admin
        .post_ok(
            &format!("/_synapse/admin/v1/deactivate/{alice_path}"),
            json!({"erase": true}),
        )
        .await;
    assert_eq!(deactivated["id_server_unbind_result"], "success");
    assert_eq!(admin.get_ok(&rooms_path).await["total"], 0);
    let (status, refused) = login(&server, "alice", "new-alice").await;
    assert_eq!(
        (status, &refused["errcode"]),
        (403, &json!("M_USER_DEACTIVATED"))
    );
    let listed = admin.get_ok("/_synapse/admin/v2/users").await;
    assert!(!names(&listed).contains(&alice_id), "{listed}");
    let with_deactivated = admin
        .get_ok("/_synapse/admin/v2/users?deactivated=true")
        .await;
    let entry = with_deactivated["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["name"] == alice_id.as_str())
        .unwrap();
    assert_eq!(entry["deactivated"], true);
    assert_eq!(entry["displayname"], Value::Null);

    // Reactivation needs a password.
    let alice_admin_path = format!("/_synapse/admin/v2/users/{alice_path}");
    let no_password = admin
        .put(&alice_admin_path, json!({"deactivated": false}))
        .await;
    assert_error(&no_password, 400, "M_MISSING_PARAM");
    let back = admin
        .put_ok(
            &alice_admin_path,
            json!({"deactivated": false, "password": "back-again"}),
        )
        .await;
    assert_eq!(back["deactivated"], false);
    assert_eq!(login(&server, "alice", "back-again").await.0, 200);
    // An account of another server cannot be made.
    let remote = format!("/_synapse/admin/v2/users/{}", enc("@eve:elsewhere.example"));
    assert_error(
        &admin.put(&remote, json!({"password": "x"})).await,
        400,
        "M_INVALID_PARAM",
    );
}

fn room_entry<'a>(list: &'a Value, room_id: &str) -> &'a Value {
    list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == room_id)
        .unwrap_or_else(|| panic!("{room_id} not in {list}"))
}

#[tokio::test]
async fn admins_list_and_read_every_room() {
    let (server, admin, alice) = admin_and_alice().await;
    let bob = server.register("bob").await;
    let pizza = alice
        .create_room(json!({"name": "Pizza Talk", "topic": "crusts", "preset": "public_chat", "visibility": "public", "room_alias_name": "pizza"}))
        .await;
    let quiet = alice
        .create_room(json!({"name": "Another room", "preset": "private_chat"}))
        .await;
    bob.join(&pizza).await;
    for text in ["one", "two", "three"] {
        alice.send_text(&pizza, text, text).await;
    }

    let list = admin.get_ok("/_synapse/admin/v1/rooms").await;
    // The admin room (named "Admins") is listed too.
    assert_eq!(list["total_rooms"], 3, "{list}");
    assert_eq!(list["offset"], 0);
    // Ordered by name by default.
    assert_eq!(list["rooms"][0]["name"], "Admins");
    assert_eq!(list["rooms"][1]["room_id"], quiet);
    let entry = room_entry(&list, &pizza);
    assert_eq!(entry["name"], "Pizza Talk");
    assert_eq!(
        entry["canonical_alias"],
        format!("#pizza:{}", server.server_name())
    );
    assert_eq!(entry["joined_members"], 2);
    assert_eq!(entry["joined_local_members"], 2);
    assert_eq!(entry["creator"], alice.user_id().await);
    assert_eq!(entry["public"], true);
    assert_eq!(entry["join_rules"], "public");
    assert_eq!(entry["encryption"], Value::Null);
    assert!(entry["version"].is_string(), "{entry}");
    assert!(entry["state_events"].as_u64().unwrap() >= 6, "{entry}");

    let by_size = admin
        .get_ok("/_synapse/admin/v1/rooms?order_by=joined_members&limit=1")
        .await;
    assert_eq!(by_size["rooms"][0]["room_id"], pizza);
    assert_eq!(by_size["next_batch"], 1);
    let reversed = admin
        .get_ok("/_synapse/admin/v1/rooms?order_by=name&dir=b&from=1")
        .await;
    assert_eq!(reversed["rooms"][0]["room_id"], quiet);
    assert_eq!(reversed["prev_batch"], 0);
    let searched = admin
        .get_ok("/_synapse/admin/v1/rooms?search_term=pizza")
        .await;
    assert_eq!(searched["total_rooms"], 1);
    assert_eq!(searched["rooms"][0]["room_id"], pizza);
    for bad in ["order_by=colour", "dir=up", "limit=-3"] {
        let answer = admin.get(&format!("/_synapse/admin/v1/rooms?{bad}")).await;
        assert_error(&answer, 400, "M_INVALID_PARAM");
    }

    let room_path = format!("/_synapse/admin/v1/rooms/{}", enc(&pizza));
    let details = admin.get_ok(&room_path).await;
    assert_eq!(details["topic"], "crusts");
    assert_eq!(details["joined_members"], 2);
    let members = admin.get_ok(&format!("{room_path}/members")).await;
    assert_eq!(members["total"], 2);
    assert!(members["members"]
        .as_array()
        .unwrap()
        .contains(&json!(bob.user_id().await)));
    let state = admin.get_ok(&format!("{room_path}/state")).await;
    let types: Vec<&str> = state["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"m.room.create") && types.contains(&"m.room.name"),
        "{types:?}"
    );

    // The admin reads the messages of a room they are not in, newest first, a page at a time.
    let page = admin
        .get_ok(&format!("{room_path}/messages?dir=b&limit=2"))
        .await;
    let bodies = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["content"]["body"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(bodies(&page), ["three", "two"]);
    let end = page["end"].as_str().unwrap();
    let next = admin
        .get_ok(&format!(
            "{room_path}/messages?dir=b&limit=1&from={}",
            enc(end)
        ))
        .await;
    assert_eq!(bodies(&next), ["one"]);
    let forwards = admin.get_ok(&format!("{room_path}/messages")).await;
    assert_eq!(forwards["chunk"][0]["type"], "m.room.create");

    let unknown = format!("/_synapse/admin/v1/rooms/{}", enc("!nowhere:localhost"));
    assert_error(&admin.get(&unknown).await, 404, "M_NOT_FOUND");
    assert_error(
        &admin.get(&format!("{unknown}/state")).await,
        404,
        "M_NOT_FOUND",
    );
    refused_to_non_admins(
        &server,
        &alice,
        &[
            ("GET", "/_synapse/admin/v1/rooms".to_owned()),
            ("GET", room_path.clone()),
            ("GET", format!("{room_path}/members")),
            ("GET", format!("{room_path}/state")),
            ("GET", format!("{room_path}/messages")),
        ],
    )
    .await;
}

/// Registers `name` through the `m.login.registration_token` stage with `token`; the last answer.
async fn register_with_token(server: &TestServer, name: &str, token: &str) -> (u16, Value) {
    let client = server.client();
    let body = json!({"username": name, "password": "password"});
    let (status, first) = client.post("/_matrix/client/v3/register", body).await;
    assert_eq!(status, 401, "{first}");
    assert_eq!(
        first["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let auth =
        json!({"type": "m.login.registration_token", "token": token, "session": first["session"]});
    client
        .post(
            "/_matrix/client/v3/register",
            json!({"username": name, "password": "password", "auth": auth}),
        )
        .await
}

async fn is_valid(server: &TestServer, token: &str) -> bool {
    let path = format!(
        "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
        enc(token)
    );
    let answer = server.client().get_ok(&path).await;
    answer["valid"].as_bool().unwrap()
}

#[tokio::test]
async fn admin_registration_tokens_register_until_used_up_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.registration_shared_secret = Some(SECRET.to_owned());
        config.registration = plait::config::Registration::Token;
    })
    .await;
    server.dir = Some(dir);
    let (_, answer) = register_signed(&server, SECRET, "root", true).await;
    let admin = logged_in(&server, &answer);
    const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";

    let made = admin
        .post_ok(
            &format!("{TOKENS}/new"),
            json!({"token": "pizza-night", "uses_allowed": 1}),
        )
        .await;
    assert_eq!(
        made,
        json!({"token": "pizza-night", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null})
    );
    let random = admin.post_ok(&format!("{TOKENS}/new"), json!({})).await;
    assert_eq!(random["token"].as_str().unwrap().len(), 16);
    assert_eq!(random["uses_allowed"], Value::Null);
    let short = admin
        .post_ok(&format!("{TOKENS}/new"), json!({"length": 5}))
        .await;
    assert_eq!(short["token"].as_str().unwrap().len(), 5);
    for bad in [
        json!({"token": "has space"}),
        json!({"token": "pizza-night"}),
        json!({"uses_allowed": -1}),
        json!({"uses_allowed": "two"}),
        json!({"expiry_time": 1000}),
        json!({"length": 0}),
        json!({"length": 65}),
    ] {
        let answer = admin.post(&format!("{TOKENS}/new"), bad.clone()).await;
        assert_error(&answer, 400, "M_INVALID_PARAM");
    }
    let listed = admin.get_ok(TOKENS).await;
    assert_eq!(listed["registration_tokens"].as_array().unwrap().len(), 3);
    assert_eq!(admin.get_ok(&format!("{TOKENS}/pizza-night")).await, made);
    assert_error(
        &admin.get(&format!("{TOKENS}/unknown")).await,
        404,
        "M_NOT_FOUND",
    );

    // One use: the first registration spends it, the second is refused.
    assert!(is_valid(&server, "pizza-night").await);
    assert!(!is_valid(&server, "made-up").await);
    let (status, registered) = register_with_token(&server, "first", "pizza-night").await;
    assert_eq!(status, 200, "{registered}");
    let spent = admin.get_ok(&format!("{TOKENS}/pizza-night")).await;
    assert_eq!(spent["completed"], 1);
    assert!(!is_valid(&server, "pizza-night").await);
    let refused = register_with_token(&server, "second", "pizza-night").await;
    assert_error(&refused, 401, "M_FORBIDDEN");
    let invalid = admin.get_ok(&format!("{TOKENS}?valid=false")).await;
    assert_eq!(invalid["registration_tokens"][0]["token"], "pizza-night");
    assert_eq!(
        admin.get_ok(&format!("{TOKENS}?valid=true")).await["registration_tokens"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Lifting the limit makes it valid again, until it expires.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let changed = admin
        .put_ok(
            &format!("{TOKENS}/pizza-night"),
            json!({"uses_allowed": null, "expiry_time": soon}),
        )
        .await;
    assert_eq!(changed["uses_allowed"], Value::Null);
    assert_eq!(changed["expiry_time"], soon);
    assert_eq!(changed["completed"], 1);
    let (status, second) = register_with_token(&server, "second", "pizza-night").await;
    assert_eq!(status, 200, "{second}");
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert!(!is_valid(&server, "pizza-night").await);
    let expired = register_with_token(&server, "third", "pizza-night").await;
    assert_error(&expired, 401, "M_FORBIDDEN");

    // A deleted token is gone.
    let short_token = short["token"].as_str().unwrap();
    assert_eq!(
        admin
            .delete(&format!("{TOKENS}/{short_token}"), json!({}))
            .await,
        (200, json!({}))
    );
    assert_error(
        &admin.get(&format!("{TOKENS}/{short_token}")).await,
        404,
        "M_NOT_FOUND",
    );
    let deleted = register_with_token(&server, "fourth", short_token).await;
    assert_error(&deleted, 401, "M_FORBIDDEN");
    let unknown = admin
        .put(&format!("{TOKENS}/gone"), json!({"uses_allowed": 1}))
        .await;
    assert_error(&unknown, 404, "M_NOT_FOUND");

    let (status, fifth) =
        register_with_token(&server, "fifth", random["token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{fifth}");
    let plain = logged_in(&server, &fifth);
    refused_to_non_admins(
        &server,
        &plain,
        &[
            ("GET", TOKENS.to_owned()),
            ("POST", format!("{TOKENS}/new")),
            ("GET", format!("{TOKENS}/pizza-night")),
            ("PUT", format!("{TOKENS}/pizza-night")),
            ("DELETE", format!("{TOKENS}/pizza-night")),
        ],
    )
    .await;
}

#[tokio::test]
async fn users_report_content_and_admins_read_the_event_reports() {
    let (server, admin, alice) = admin_and_alice().await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"name": "Reported", "preset": "public_chat"}))
        .await;
    bob.join(&room).await;
    let rude = alice.send_text(&room, "t1", "something rude").await;
    let fine = alice.send_text(&room, "t2", "something fine").await;
    let room_path = enc(&room);
    let report =
        |event: &str| format!("/_matrix/client/v3/rooms/{room_path}/report/{}", enc(event));
    bob.post_ok(&report(&rude), json!({"reason": "rude", "score": -100}))
        .await;
    bob.post_ok(&report(&fine), json!({})).await;
    // Only members may report, and only events of the room.
    let carol = server.register("carol").await;
    assert_error(
        &carol.post(&report(&rude), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let elsewhere = bob.create_room(json!({})).await;
    let stray = format!(
        "/_matrix/client/v3/rooms/{}/report/{}",
        enc(&elsewhere),
        enc(&rude)
    );
    assert_error(&bob.post(&stray, json!({})).await, 404, "M_NOT_FOUND");
    // Rooms and users.
    carol
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{room_path}/report"),
            json!({"reason": "spam room"}),
        )
        .await;
    let unknown_room = format!(
        "/_matrix/client/v3/rooms/{}/report",
        enc("!nowhere:localhost")
    );
    assert_error(
        &carol.post(&unknown_room, json!({"reason": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
    let alice_id = alice.user_id().await;
    carol
        .post_ok(
            &format!("/_matrix/client/v3/users/{}/report", enc(&alice_id)),
            json!({"reason": "spammer"}),
        )
        .await;
    let ghost = format!(
        "/_matrix/client/v3/users/{}/report",
        enc(&format!("@ghost:{}", server.server_name()))
    );
    assert_error(
        &carol.post(&ghost, json!({"reason": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
    let no_reason = format!("/_matrix/client/v3/users/{}/report", enc(&alice_id));
    assert_error(&carol.post(&no_reason, json!({})).await, 400, "M_BAD_JSON");

    // The admin sees the two event reports, newest first.
    let list = admin.get_ok("/_synapse/admin/v1/event_reports").await;
    assert_eq!(list["total"], 2, "{list}");
    let newest = &list["event_reports"][0];
    assert_eq!(newest["event_id"], fine);
    let oldest = &list["event_reports"][1];
    assert_eq!(oldest["event_id"], rude);
    assert_eq!(oldest["reason"], "rude");
    assert_eq!(oldest["user_id"], bob.user_id().await);
    assert_eq!(oldest["sender"], alice_id);
    assert_eq!(oldest["room_id"], room);
    assert_eq!(oldest["name"], "Reported");
    let page = admin
        .get_ok("/_synapse/admin/v1/event_reports?dir=f&limit=1")
        .await;
    assert_eq!(page["event_reports"][0]["event_id"], rude);
    assert_eq!(page["next_token"], 1);
    let by_room = admin
        .get_ok(&format!(
            "/_synapse/admin/v1/event_reports?room_id={}",
            enc(&elsewhere)
        ))
        .await;
    assert_eq!(by_room["total"], 0);
    let id = oldest["id"].as_u64().unwrap();
    let one = admin
        .get_ok(&format!("/_synapse/admin/v1/event_reports/{id}"))
        .await;
    assert_eq!(one["event_json"]["content"]["body"], "something rude");
    assert_eq!(
        admin
            .delete(&format!("/_synapse/admin/v1/event_reports/{id}"), json!({}))
            .await,
        (200, json!({}))
    );
    let gone = admin
        .get(&format!("/_synapse/admin/v1/event_reports/{id}"))
        .await;
    assert_error(&gone, 404, "M_NOT_FOUND");
    assert_eq!(
        admin.get_ok("/_synapse/admin/v1/event_reports").await["total"],
        1
    );
    for bad in [
        "/_synapse/admin/v1/event_reports/zero",
        "/_synapse/admin/v1/event_reports?dir=x",
    ] {
        assert_error(&admin.get(bad).await, 400, "M_INVALID_PARAM");
    }
    refused_to_non_admins(
        &server,
        &bob,
        &[
            ("GET", "/_synapse/admin/v1/event_reports".to_owned()),
            ("GET", format!("/_synapse/admin/v1/event_reports/{id}")),
            ("DELETE", format!("/_synapse/admin/v1/event_reports/{id}")),
        ],
    )
    .await;
}

/// An admin made or unmade through the admin API is invited to the admin room or kicked from it,
/// as the admin room's own commands do.
#[tokio::test]
async fn admins_made_through_the_api_are_invited_to_the_admin_room() {
    let (server, admin, alice) = admin_and_alice().await;
    let alice_id = alice.user_id().await;
    let alias = format!("#admins:{}", server.server_name());
    let room_id = admin
        .get_ok(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user_path = format!("/_synapse/admin/v2/users/{}", enc(&alice_id));
    let in_section = |sync: &Value, section: &str| sync["rooms"][section].get(&room_id).is_some();
    assert!(!in_section(
        &alice.get_ok("/_matrix/client/v3/sync").await,
        "invite"
    ));
    admin.put_ok(&user_path, json!({"admin": true})).await;
    let sync = alice.get_ok("/_matrix/client/v3/sync").await;
    assert!(in_section(&sync, "invite"), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    admin.put_ok(&user_path, json!({"admin": false})).await;
    let later = alice
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"))
        .await;
    assert!(in_section(&later, "leave"), "{later}");
}

#[tokio::test]
async fn admins_list_users_v3_filtered_by_deactivation_and_lock_and_sorted() {
    let (server, admin, alice) = admin_and_alice().await;
    let host = server.server_name();
    let id = |name: &str| format!("@{name}:{host}");
    server.register("bob").await;
    admin
        .post_ok(
            &format!("/_synapse/admin/v1/deactivate/{}", enc(&id("bob"))),
            json!({}),
        )
        .await;
    // PUT with fields Plait keeps no record of: they are accepted and ignored.
    let carol_path = format!("/_synapse/admin/v2/users/{}", enc(&id("carol")));
    let carol = admin
        .put_ok(
            &carol_path,
            json!({"password": "pw", "displayname": "Zed", "locked": true,
                   "threepids": [{"medium": "email", "address": "carol@example.org"}],
                   "external_ids": [], "user_type": null}),
        )
        .await;
    assert_eq!(
        (&carol["locked"], &carol["displayname"]),
        (&json!(true), &json!("Zed"))
    );
    let (status, login) = login(&server, "carol", "pw").await;
    assert_eq!(status, 200, "{login}");
    let carol_client = crate::admin_api::logged_in(&server, &login);
    let answer = carol_client.get("/_matrix/client/v3/account/whoami").await;
    assert_error(&answer, 401, "M_USER_LOCKED");
    let list = |query: &'static str| {
        let admin = admin.clone();
        async move { names(&admin.get_ok(&format!("/_synapse/admin/{query}")).await) }
    };
    let ids = |names: &[&str]| names.iter().map(|name| id(name)).collect::<Vec<_>>();
    assert_eq!(
        list("v3/users").await,
        ids(&["alice", "bob", "plait", "root"])
    );
    assert_eq!(list("v3/users?deactivated=true").await, ids(&["bob"]));
    assert_eq!(
        list("v3/users?deactivated=false").await,
        ids(&["alice", "plait", "root"])
    );
    assert_eq!(list("v2/users").await, ids(&["alice", "plait", "root"]));
    assert_eq!(
        list("v2/users?locked=true").await,
        ids(&["alice", "carol", "plait", "root"])
    );
    assert_eq!(
        list("v3/users?order_by=admin&dir=b").await,
        ids(&["root", "plait", "bob", "alice"])
    );
    assert_eq!(
        list("v3/users?order_by=displayname&locked=true&deactivated=false").await,
        ids(&["plait", "carol", "alice", "root"])
    );
    for bad in ["order_by=shoe_size", "dir=up", "locked=perhaps"] {
        let answer = admin.get(&format!("/_synapse/admin/v3/users?{bad}")).await;
        assert_error(&answer, 400, "M_INVALID_PARAM");
    }
    // Unlocked through the same PUT, with the display name removed by an empty one.
    let carol = admin
        .put_ok(&carol_path, json!({"locked": false, "displayname": ""}))
        .await;
    assert_eq!(
        (&carol["locked"], &carol["displayname"]),
        (&json!(false), &Value::Null)
    );
    carol_client
        .get_ok("/_matrix/client/v3/account/whoami")
        .await;
    refused_to_non_admins(
        &server,
        &alice,
        &[("GET", "/_synapse/admin/v3/users".to_owned())],
    )
    .await;
}
