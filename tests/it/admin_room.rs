//! The admin room: the first user to register is a server admin invited to `#admins`, and the
//! `!admin` commands sent there answer as `m.notice`s from `@plait`; a non-admin's command and a
//! command in another room do nothing.

use std::time::Duration;

use ruma::UserId;
use serde_json::{json, Value};

use crate::common::{enc, Client, TestServer};

/// The first user (an admin) joined to the admin room, and the room's ID.
pub(crate) async fn admin_in_room(server: &TestServer) -> (Client, String) {
    let admin = server.register("alice").await;
    let alias = format!("#admins:{}", server.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    let resolved = admin.get_ok(&path).await;
    let room_id = resolved["room_id"].as_str().unwrap().to_owned();
    join_when_invited(&admin, &room_id).await;
    (admin, room_id)
}

/// Joins a room once the invite (sent by the admin worker) has arrived.
pub(crate) async fn join_when_invited(client: &Client, room_id: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
    for _ in 0..100 {
        let (status, body) = client.post(&path, json!({})).await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 403, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never invited to {room_id}");
}

/// The `m.notice`s from the server user after `event_id`, oldest first.
pub(crate) async fn notices_after(
    client: &Client,
    server: &TestServer,
    room_id: &str,
    event_id: &str,
) -> Vec<Value> {
    let sender = format!("@plait:{}", server.server_name());
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        enc(room_id)
    );
    let chunk = client.get_ok(&path).await["chunk"]
        .as_array()
        .unwrap()
        .clone();
    let mut notices: Vec<Value> = chunk
        .into_iter()
        .take_while(|event| event["event_id"] != event_id)
        .filter(|event| event["sender"] == sender && event["content"]["msgtype"] == "m.notice")
        .map(|event| event["content"].clone())
        .collect();
    notices.reverse();
    notices
}

/// Sends a command and waits for its reply; returns the reply's content.
pub(crate) async fn command(
    client: &Client,
    server: &TestServer,
    room_id: &str,
    text: &str,
) -> Value {
    let txn = format!("t{}", rand_suffix());
    let event_id = client.send_text(room_id, &txn, text).await;
    reply_to(client, server, room_id, &event_id, text).await
}

/// Waits for the first reply after `event_id` (the message `text`).
async fn reply_to(
    client: &Client,
    server: &TestServer,
    room_id: &str,
    event_id: &str,
    text: &str,
) -> Value {
    for _ in 0..200 {
        if let Some(reply) = notices_after(client, server, room_id, event_id)
            .await
            .into_iter()
            .next()
        {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no reply to {text}");
}

/// The reply's plain text.
pub(crate) async fn command_text(
    client: &Client,
    server: &TestServer,
    room_id: &str,
    text: &str,
) -> String {
    let reply = command(client, server, room_id, text).await;
    reply["body"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn user(server: &TestServer, localpart: &str) -> ruma::OwnedUserId {
    UserId::parse(format!("@{localpart}:{}", server.server_name())).unwrap()
}

/// Logs in with a password; answers the status and body.
async fn log_in(server: &TestServer, localpart: &str, password: &str) -> (u16, Value) {
    server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password",
                   "identifier": {"type": "m.id.user", "user": localpart},
                   "password": password}),
        )
        .await
}

#[tokio::test]
async fn the_first_user_is_an_admin_invited_to_the_admin_room() {
    let server = TestServer::start().await;
    let (_admin, room_id) = admin_in_room(&server).await;
    assert!(server
        .services
        .users
        .is_admin(&user(&server, "alice"))
        .unwrap());
    assert_eq!(server.services.admin.get_room().unwrap().as_str(), room_id);
    let bob = server.register("bob").await;
    assert!(!server
        .services
        .users
        .is_admin(&user(&server, "bob"))
        .unwrap());
    // The room is invite-only: bob, who is no admin and was not invited, cannot join.
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    // The room is made once: after a restart it is the same room.
    let dir = server.stop().await.unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    assert_eq!(server.services.admin.get_room().unwrap().as_str(), room_id);
    drop(dir);
}

/// The room's `m.room.encryption` state as this client sees it (`None` when there is none).
async fn encryption(client: &Client, room_id: &str) -> Option<Value> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.encryption/",
        enc(room_id)
    );
    let (status, body) = client.get(&path).await;
    assert!(status == 200 || status == 404, "{status} {body}");
    (status == 200).then_some(body)
}

#[tokio::test]
async fn help_and_bad_commands_answer_clap_text() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    // The admin room is not encrypted: the server reads the commands.
    assert!(encryption(&admin, &room_id).await.is_none());
    let help = command(&admin, &server, &room_id, "!admin help").await;
    let text = help["body"].as_str().unwrap();
    assert!(text.contains("users") && text.contains("server"), "{text}");
    assert_eq!(help["format"], "org.matrix.custom.html");
    assert!(help["formatted_body"]
        .as_str()
        .unwrap()
        .starts_with("<pre>"));
    let text = command_text(&admin, &server, &room_id, "!admin users --help").await;
    for name in ["list", "reset-password", "make-admin", "logout-all"] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    let text = command_text(&admin, &server, &room_id, "!admin users frobnicate").await;
    assert!(
        text.contains("unrecognized subcommand 'frobnicate'"),
        "{text}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin users info").await;
    assert!(
        text.contains("required arguments were not provided"),
        "{text}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin users info nobody").await;
    assert!(text.contains("does not exist"), "{text}");
}

#[tokio::test]
async fn users_list_and_info_show_admins_devices_and_rooms() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    server.register("bob").await;
    let reply = command(&admin, &server, &room_id, "!admin users list").await;
    let text = reply["body"].as_str().unwrap();
    let alice = format!("@alice:{}", server.server_name());
    let bob = format!("@bob:{}", server.server_name());
    assert!(text.starts_with("2 users\n"), "{text}");
    assert!(text.contains(&format!("{alice}\tyes\tno\t1\t")), "{text}");
    assert!(text.contains(&format!("{bob}\tno\tno\t1\t")), "{text}");
    assert!(!text.contains("@plait:"), "{text}");
    let html = reply["formatted_body"].as_str().unwrap();
    assert!(
        html.contains(&format!("<tr><td>{bob}</td><td>no</td>")),
        "{html}"
    );
    let text = command_text(&admin, &server, &room_id, "!admin users info alice").await;
    assert!(text.contains("admin\tyes"), "{text}");
    assert!(text.contains("joined rooms\t1"), "{text}");
    assert!(text.contains("display name\talice"), "{text}");
    let text = command_text(
        &admin,
        &server,
        &room_id,
        &format!("!admin users info {bob}"),
    )
    .await;
    assert!(
        text.contains("admin\tno") && text.contains("devices\t1"),
        "{text}"
    );
}

#[tokio::test]
async fn users_create_makes_accounts_and_admins() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin users create carol --password \"s3cret words\"",
    )
    .await;
    assert_eq!(
        text,
        format!("created account @carol:{}", server.server_name())
    );
    assert_eq!(log_in(&server, "carol", "s3cret words").await.0, 200);
    assert!(!server
        .services
        .users
        .is_admin(&user(&server, "carol"))
        .unwrap());
    // Without a password one is generated and shown.
    let text = command_text(
        &admin,
        &server,
        &room_id,
        "!admin users create dave --admin",
    )
    .await;
    let password = text.rsplit(' ').next().unwrap();
    assert!(text.contains("created server admin @dave:"), "{text}");
    let (status, body) = log_in(&server, "dave", password).await;
    assert_eq!(status, 200, "{body}");
    assert!(server
        .services
        .users
        .is_admin(&user(&server, "dave"))
        .unwrap());
    let dave = Client {
        token: Some(body["access_token"].as_str().unwrap().to_owned()),
        ..server.client()
    };
    join_when_invited(&dave, &room_id).await;
    let text = command_text(&admin, &server, &room_id, "!admin users create carol").await;
    assert!(text.contains("already taken"), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin users create plait").await;
    assert!(text.contains("already taken"), "{text}");
}

#[tokio::test]
async fn users_reset_password_sets_one_and_logs_devices_out() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let text = command_text(&admin, &server, &room_id, "!admin users reset-password bob").await;
    let password = text.rsplit(' ').next().unwrap();
    assert!(text.contains("the new password is"), "{text}");
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert_eq!(log_in(&server, "bob", "password").await.0, 403);
    assert_eq!(log_in(&server, "bob", password).await.0, 200);
    command_text(
        &admin,
        &server,
        &room_id,
        "!admin users reset-password bob chosen-one",
    )
    .await;
    assert_eq!(log_in(&server, "bob", "chosen-one").await.0, 200);
}

#[tokio::test]
async fn users_deactivate_leaves_rooms_and_blocks_logins() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let room = bob.create_room(json!({})).await;
    let text = command_text(&admin, &server, &room_id, "!admin users deactivate bob").await;
    assert_eq!(text, format!("deactivated @bob:{}", server.server_name()));
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 401);
    let (status, body) = log_in(&server, "bob", "password").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_USER_DEACTIVATED"))
    );
    let member = server
        .services
        .rooms
        .members
        .get_membership(&ruma::RoomId::parse(&room).unwrap(), &user(&server, "bob"))
        .unwrap();
    assert_eq!(
        member,
        Some(ruma::events::room::member::MembershipState::Leave)
    );
    let text = command_text(&admin, &server, &room_id, "!admin users deactivate bob").await;
    assert!(text.contains("already deactivated"), "{text}");

    // With --erase, the display name goes too.
    let carol = server.register("carol").await;
    let profile = format!("/_matrix/client/v3/profile/@carol:{}", server.server_name());
    carol
        .put_ok(
            &format!("{profile}/displayname"),
            json!({"displayname": "Carol C"}),
        )
        .await;
    let line = "!admin users deactivate --erase carol";
    let text = command_text(&admin, &server, &room_id, line).await;
    assert_eq!(
        text,
        format!("deactivated and erased @carol:{}", server.server_name())
    );
    let (status, body) = admin.get(&format!("{profile}/displayname")).await;
    assert!(
        status == 404 || body.get("displayname").is_none(),
        "{status} {body}"
    );
}

#[tokio::test]
async fn users_make_admin_invites_and_remove_admin_kicks() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let text = command_text(&admin, &server, &room_id, "!admin users make-admin bob").await;
    assert!(text.ends_with("is now a server admin"), "{text}");
    assert!(server
        .services
        .users
        .is_admin(&user(&server, "bob"))
        .unwrap());
    join_when_invited(&bob, &room_id).await;
    let text = command_text(&bob, &server, &room_id, "!admin server version").await;
    assert!(text.starts_with("Plait "), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin users remove-admin bob").await;
    assert!(text.ends_with("is no longer a server admin"), "{text}");
    assert!(!server
        .services
        .users
        .is_admin(&user(&server, "bob"))
        .unwrap());
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room_id),
        enc(&format!("@bob:{}", server.server_name()))
    );
    let member = admin.get_ok(&path).await;
    assert_eq!(member["membership"], "leave");
    let text = command_text(&admin, &server, &room_id, "!admin users remove-admin bob").await;
    assert!(text.contains("is not a server admin"), "{text}");
}

#[tokio::test]
async fn users_list_devices_and_logout_all() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let (status, second) = log_in(&server, "bob", "password").await;
    assert_eq!(status, 200);
    let device = second["device_id"].as_str().unwrap();
    let text = command_text(&admin, &server, &room_id, "!admin users list-devices bob").await;
    assert!(text.starts_with("2 devices of @bob:"), "{text}");
    assert!(text.contains(device), "{text}");
    let text = command_text(&admin, &server, &room_id, "!admin users logout-all bob").await;
    assert!(text.starts_with("logged out 2 devices of @bob:"), "{text}");
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert!(server
        .services
        .users
        .iter_devices(&user(&server, "bob"))
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn server_stats_and_version() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    server.register("bob").await.create_room(json!({})).await;
    let reply = command(&admin, &server, &room_id, "!admin server stats").await;
    let text = reply["body"].as_str().unwrap();
    for line in [
        "users\t2",
        "server admins\t1",
        "rooms\t2",
        "uptime\t0d 00:00:",
    ] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    assert!(
        text.contains("resident memory\t") && text.contains(" MiB"),
        "{text}"
    );
    assert!(reply["formatted_body"]
        .as_str()
        .unwrap()
        .contains("<table>"));
    let text = command_text(&admin, &server, &room_id, "!admin server version").await;
    assert_eq!(
        text,
        format!(
            "Plait {} on {}",
            env!("CARGO_PKG_VERSION"),
            server.server_name()
        )
    );
}

/// The `field\tvalue` rows of a `server stats` reply.
fn stats_rows(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(field, value)| (field.to_owned(), value.to_owned()))
        .collect()
}

/// Runs `server stats` and answers its numbers by field.
async fn stats(
    admin: &Client,
    server: &TestServer,
    room_id: &str,
) -> std::collections::HashMap<String, u64> {
    let text = command_text(admin, server, room_id, "!admin server stats").await;
    stats_rows(&text)
        .into_iter()
        .filter_map(|(field, value)| Some((field, value.parse().ok()?)))
        .collect()
}

fn check_stats(stats: &std::collections::HashMap<String, u64>, expected: &[(&str, u64)]) {
    for (field, value) in expected {
        assert_eq!(stats.get(*field), Some(value), "{field} in {stats:?}");
    }
}

/// The timeline's events and messages counted by a scan, to hold the counters against.
fn scanned_events(server: &TestServer) -> (u64, u64) {
    let (mut events, mut messages) = (0, 0);
    for entry in server.services.rooms.timeline.iter_all() {
        let (_, pdu) = entry.unwrap();
        events += 1;
        let kind = pdu.kind.to_string();
        if kind == "m.room.message" || kind == "m.room.encrypted" {
            messages += 1;
        }
    }
    (events, messages)
}

#[tokio::test]
async fn server_stats_are_exact_counters_that_survive_a_restart() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    // Registered without a request since: not active.
    server.register("dave").await;
    let bobs_room = bob.create_room(json!({})).await;
    carol.create_room(json!({})).await;
    crate::media::upload_ok(&bob, b"hello".to_vec(), "text/plain", None).await;
    crate::media::upload_ok(&carol, vec![7; 1000], "application/octet-stream", None).await;
    let text = command_text(&admin, &server, &room_id, "!admin users deactivate dave").await;
    assert!(text.starts_with("deactivated"), "{text}");
    let before = stats(&admin, &server, &room_id).await;
    let (events, messages) = scanned_events(&server);
    check_stats(
        &before,
        &[
            ("users", 4),
            ("deactivated users", 1),
            ("active users, 1 day", 3),
            ("active users, 7 days", 3),
            ("active users, 30 days", 3),
            ("server admins", 1),
            ("rooms", 3),
            ("media files", 2),
            ("media bytes", 1005),
            ("federation peers", 0),
            // The reply to the command is not written yet.
            ("events", events - 1),
            ("local events", events - 1),
            ("messages today", messages - 1),
        ],
    );
    for index in 0..3 {
        bob.send_text(&bobs_room, &format!("m{index}"), "hello")
            .await;
    }
    // The previous reply, three messages and this command.
    let after = stats(&admin, &server, &room_id).await;
    for field in ["events", "local events", "messages today"] {
        assert_eq!(after[field], before[field] + 5, "{field}");
    }
    assert_eq!(after["rooms"], 3);

    let dir = server.stop().await.unwrap();
    let server = TestServer::start_at(dir.path(), |_| {}).await;
    let admin = Client {
        base: server.base.clone(),
        ..admin
    };
    let restarted = stats(&admin, &server, &room_id).await;
    let (events, messages) = scanned_events(&server);
    check_stats(
        &restarted,
        &[
            ("users", 4),
            ("deactivated users", 1),
            ("active users, 1 day", 3),
            ("active users, 30 days", 3),
            ("rooms", 3),
            ("media files", 2),
            ("media bytes", 1005),
            ("events", events - 1),
            ("local events", events - 1),
            ("messages today", messages - 1),
        ],
    );
    let text = command_text(&admin, &server, &room_id, "!admin server stats").await;
    let rows = stats_rows(&text);
    assert!(rows["database size: pduid_pdu"].ends_with(" MiB"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_peers_count_the_servers_talked_to() {
    let (_ca, hs1, hs2) = crate::federation::two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let room = alice.create_room(json!({})).await;
    assert_eq!(hs1.services.stats.snapshot().unwrap().peers, 0);
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob.user_id().await }),
        )
        .await;
    crate::federation::wait_for_invite(&bob, &room).await;
    crate::federation::join_via(&bob, &room, &hs1).await;
    for index in 0..3 {
        alice.send_text(&room, &format!("p{index}"), "hi").await;
    }
    alice.send_text(&room, "last", "last").await;
    crate::federation::wait_for_event(&bob, &room, "the last message", |event| {
        event["content"]["body"] == "last"
    })
    .await;
    for server in [&hs1, &hs2] {
        let snapshot = server.services.stats.snapshot().unwrap();
        assert_eq!(snapshot.peers, 1, "{snapshot:?}");
        assert_eq!(snapshot.events, scanned_events(server).0, "{snapshot:?}");
    }
    // The events of hs1's room that hs2 holds are not local there.
    let remote = hs2.services.stats.snapshot().unwrap();
    assert!(remote.local_events < remote.events, "{remote:?}");
}

#[tokio::test]
async fn server_backup_create_list_and_verify() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let created = command_text(&admin, &server, &room_id, "!admin server backup create").await;
    let name = created
        .strip_prefix("backup ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected reply {created}"))
        .to_owned();
    assert!(name.starts_with("backup-"), "{created}");
    let listed = command_text(&admin, &server, &room_id, "!admin server backup list").await;
    assert!(listed.contains(&name), "{listed}");
    let verified = command_text(
        &admin,
        &server,
        &room_id,
        &format!("!admin server backup verify {name}"),
    )
    .await;
    assert!(
        verified.starts_with(&format!("backup {name} is sound: ")),
        "{verified}"
    );
    let refused = command_text(
        &admin,
        &server,
        &room_id,
        "!admin server backup verify ../elsewhere",
    )
    .await;
    assert!(refused.contains("is not a backup name"), "{refused}");
}

#[tokio::test]
async fn commands_of_non_admins_and_outside_the_admin_room_are_ignored() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let bob = bob_in_the_admin_room(&server, &admin, &room_id).await;
    let ignored = bob
        .send_text(&room_id, "b1", "!admin users make-admin bob")
        .await;
    // An admin's command outside the admin room is an ordinary message.
    let elsewhere = admin.create_room(json!({})).await;
    admin
        .send_text(&elsewhere, "a1", "!admin users make-admin bob")
        .await;
    only_the_next_command_is_answered(&server, &admin, &room_id, &ignored).await;
    let messages = admin
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            enc(&elsewhere)
        ))
        .await;
    let senders: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["sender"].as_str())
        .collect();
    assert!(
        !senders.iter().any(|sender| sender.starts_with("@plait:")),
        "{senders:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plait_admin_runs_commands_through_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;

    use crate::common::{
        ip, plait_process::run_captured, plait_process::PlaitProcess, tls::TestCa,
    };

    let plait = PlaitProcess::start(ip("127.0.0.21"), &TestCa::new()).await;
    let socket = plait.database_dir().join("admin.sock");
    // The socket's worker starts beside the listeners.
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let env = plait.env();
    let run = |args: &'static [&'static str]| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || run_captured(args, &env, |_| false))
    };
    let created = run(&["admin", "users", "create", "bob", "--password", "pw 1"])
        .await
        .unwrap();
    assert!(created.status.success(), "{}", created.output);
    assert!(
        created.output.contains("created account @bob:"),
        "{}",
        created.output
    );
    let client = plait.client(None);
    let (status, body) = client
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password",
                   "identifier": {"type": "m.id.user", "user": "bob"},
                   "password": "pw 1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let listed = run(&["admin", "users", "list"]).await.unwrap();
    assert!(listed.output.contains("\tno\tno\t1\t"), "{}", listed.output);
    let help = run(&["admin", "users", "--help"]).await.unwrap();
    assert!(help.output.contains("reset-password"), "{}", help.output);
    let bad = run(&["admin", "users", "frobnicate"]).await.unwrap();
    assert!(
        bad.output.contains("unrecognized subcommand"),
        "{}",
        bad.output
    );
}

#[test]
fn plait_admin_without_a_running_server_says_so() {
    use crate::common::plait_process::run_captured;

    let dir = tempfile::tempdir().unwrap();
    let env = vec![(
        "PLAIT_DATABASE_PATH".to_owned(),
        dir.path().display().to_string(),
    )];
    let run = run_captured(&["admin", "server", "version"], &env, |_| false);
    assert!(!run.status.success());
    assert!(
        run.output.contains("cannot reach the running server"),
        "{}",
        run.output
    );
}

/// A plain user `bob` with a room of his own, where he sent one message; the room and event.
pub(crate) async fn bob_with_a_message(server: &TestServer) -> (Client, String, String) {
    let bob = server.register("bob").await;
    let room = bob.create_room(json!({})).await;
    let event_id = bob.send_text(&room, "b0", "before").await;
    (bob, room, event_id)
}

/// A client pointed at a restarted server.
pub(crate) fn at(server: &TestServer, client: &Client) -> Client {
    Client {
        base: server.base.clone(),
        ..client.clone()
    }
}

#[tokio::test]
async fn messages_addressed_to_the_server_user_are_commands() {
    let server = TestServer::start().await;
    let (admin, room_id) = admin_in_room(&server).await;
    let text = command_text(&admin, &server, &room_id, "plait: server version").await;
    assert!(text.starts_with("Plait "), "{text}");
    // A pill: Element writes the display name and lists the user in m.mentions.
    let server_user = format!("@plait:{}", server.server_name());
    let content = json!({
        "msgtype": "m.text",
        "body": "Plait users list",
        "m.mentions": {"user_ids": [server_user]},
    });
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/mention1",
        enc(&room_id)
    );
    let event_id = admin.put_ok(&path, content).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = reply_to(&admin, &server, &room_id, &event_id, "mention").await;
    assert!(
        reply["body"].as_str().unwrap().starts_with("1 users\n"),
        "{reply}"
    );
    // Messages to somebody else, or a non-admin's command, get no answer.
    let ignored = admin
        .send_text(&room_id, "n1", "bob: plait: users list")
        .await;
    let bob = bob_in_the_admin_room(&server, &admin, &room_id).await;
    bob.send_text(&room_id, "b1", "plait: users make-admin bob")
        .await;
    only_the_next_command_is_answered(&server, &admin, &room_id, &ignored).await;
}

/// `bob`, registered, invited by the admin and joined to the admin room, but no server admin.
async fn bob_in_the_admin_room(server: &TestServer, admin: &Client, room_id: &str) -> Client {
    let bob = server.register("bob").await;
    admin
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
            json!({"user_id": format!("@bob:{}", server.server_name())}),
        )
        .await;
    bob.join(room_id).await;
    bob
}

/// Sends a command and checks that its reply is the only one since `ignored` (commands are
/// answered in order: once the admin's is, an earlier one would have been), and that bob is
/// still no server admin.
async fn only_the_next_command_is_answered(
    server: &TestServer,
    admin: &Client,
    room_id: &str,
    ignored: &str,
) {
    command_text(admin, server, room_id, "!admin server version").await;
    assert_eq!(
        notices_after(admin, server, room_id, ignored).await.len(),
        1
    );
    assert!(!server
        .services
        .users
        .is_admin(&user(server, "bob"))
        .unwrap());
}
