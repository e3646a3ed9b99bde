//! The admin room's `rooms` commands: listing and inspecting rooms, deleting one (its local
//! users leave, it is blocked, unpublished and loses its aliases, optionally purged), purging
//! old history, blocks, the directory and aliases; and their bad arguments.

use serde_json::{json, Value};

use crate::admin_room::{admin_in_room, command_text};
use crate::common::{assert_error, enc, Client, TestServer};

/// A server admin (the first user) joined to the admin room, sending commands there; it
/// dereferences to the admin's client.
pub(crate) struct AdminRoom<'a> {
    pub server: &'a TestServer,
    pub client: Client,
    pub room: String,
}

impl<'a> AdminRoom<'a> {
    /// Registers the first user (an admin) and joins the admin room.
    pub async fn join(server: &'a TestServer) -> Self {
        let (client, room) = admin_in_room(server).await;
        Self {
            server,
            client,
            room,
        }
    }

    /// Sends a command and answers the reply's text.
    pub async fn run(&self, line: impl AsRef<str>) -> String {
        command_text(&self.client, self.server, &self.room, line.as_ref()).await
    }
}

impl std::ops::Deref for AdminRoom<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A public room of bob's with the alias `#<alias>:<server>`, joined by carol; answers its ID.
async fn public_room(bob: &Client, carol: &Client, alias: &str) -> String {
    let room_id = bob
        .create_room(json!({"preset": "public_chat", "name": "Lobby", "room_alias_name": alias}))
        .await;
    carol.join(&room_id).await;
    room_id
}

/// The IDs of the rooms in this server's public directory.
async fn directory(client: &Client) -> Vec<String> {
    client.get_ok("/_matrix/client/v3/publicRooms").await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["room_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The bodies of the room's `m.room.message` events a member's `/messages` returns.
async fn message_bodies(client: &Client, room_id: &str) -> Vec<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        enc(room_id)
    );
    let mut bodies: Vec<String> = client.get_ok(&path).await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.reverse();
    bodies
}

async fn join_status(client: &Client, room_id: &str) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
    client.post(&path, json!({})).await
}

#[tokio::test]
async fn rooms_list_info_and_members() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let (bob, carol) = (server.register("bob").await, server.register("carol").await);
    let room_id = public_room(&bob, &carol, "lobby").await;
    let host = server.server_name();

    let list = admin.run("!admin rooms list").await;
    let row = list
        .lines()
        .find(|line| line.starts_with(room_id.as_str()))
        .unwrap_or_else(|| panic!("{room_id} not in {list}"));
    let cells: Vec<&str> = row.split('\t').collect();
    // room, name, members, local members, events, version
    assert_eq!(cells[1], "Lobby", "{row}");
    assert_eq!(&cells[2..4], ["2", "2"], "{row}");
    assert!(cells[4].parse::<u32>().unwrap() >= 7, "{row}");
    assert!(list.contains("local members\tevents\tversion"), "{list}");

    let info = admin.run(&format!("!admin rooms info #lobby:{host}")).await;
    for line in [
        "name\tLobby",
        "members\t2",
        &format!("local aliases\t#lobby:{host}"),
        "published\tno",
        "blocked\tno",
    ] {
        assert!(info.contains(line), "{line} not in {info}");
    }
    let members = admin.run(&format!("!admin rooms members {room_id}")).await;
    assert!(
        members.contains(&format!("@carol:{host}\tjoin")),
        "{members}"
    );
    assert!(members.contains(&format!("@bob:{host}\tjoin")), "{members}");
}

#[tokio::test]
async fn rooms_bad_arguments_answer_errors_and_change_nothing() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let host = server.server_name();
    let bob = server.register("bob").await;
    let room_id = bob
        .create_room(json!({"preset": "public_chat", "room_alias_name": "kept"}))
        .await;
    for (line, expected) in [
        (
            format!("!admin rooms info !nowhere:{host}"),
            format!("error: room !nowhere:{host} is unknown to this server"),
        ),
        (
            "!admin rooms delete not-a-room".to_owned(),
            "error: invalid room ID or alias not-a-room".to_owned(),
        ),
        (
            format!("!admin rooms delete #missing:{host}"),
            format!("error: alias #missing:{host} not found"),
        ),
        (
            format!("!admin rooms purge-history {room_id} yesterday"),
            "error: invalid time yesterday".to_owned(),
        ),
        (
            format!("!admin rooms alias set #kept:{host} {room_id}"),
            format!("error: #kept:{host} already points to {room_id}"),
        ),
        (
            format!("!admin rooms alias set #x:elsewhere.example {room_id}"),
            "error: #x:elsewhere.example is not an alias of this server".to_owned(),
        ),
        (
            format!("!admin rooms unblock {room_id}"),
            format!("error: {room_id} is not blocked"),
        ),
        (
            format!("!admin rooms delete {}", admin.room),
            "error: the admin room cannot be deleted".to_owned(),
        ),
    ] {
        let reply = admin.run(&line).await;
        assert!(reply.starts_with(&expected), "{line}: {reply}");
    }
    let reply = admin.run("!admin rooms delete").await;
    assert!(
        reply.contains("required arguments were not provided"),
        "{reply}"
    );
    // Nothing changed: bob is still in his room, which still has its alias.
    let info = admin.run(&format!("!admin rooms info {room_id}")).await;
    assert!(info.contains("members\t1"), "{info}");
    assert!(
        info.contains(&format!("local aliases\t#kept:{host}")),
        "{info}"
    );
    assert!(info.contains("blocked\tno"), "{info}");
}

#[tokio::test]
async fn rooms_delete_makes_local_users_leave_and_blocks_the_room() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let (bob, carol) = (server.register("bob").await, server.register("carol").await);
    let host = server.server_name();
    let room_id = public_room(&bob, &carol, "doomed").await;
    bob.put_ok(
        &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room_id)),
        json!({"visibility": "public"}),
    )
    .await;
    assert!(directory(&bob).await.contains(&room_id));
    let message = bob.send_text(&room_id, "m1", "before the end").await;

    let reply = admin
        .run(&format!("!admin rooms delete #doomed:{host}"))
        .await;
    assert!(
        reply.starts_with(&format!(
            "deleted and blocked {room_id}: 2 local users left"
        )),
        "{reply}"
    );
    assert!(
        reply.contains(&format!("removed aliases: #doomed:{host}")),
        "{reply}"
    );
    // Both left through the normal event path (each one's leave is in the room's state) and
    // cannot join again.
    let members = admin.run(&format!("!admin rooms members {room_id}")).await;
    for (client, localpart) in [(&bob, "bob"), (&carol, "carol")] {
        assert!(
            members.contains(&format!("@{localpart}:{host}\tleave")),
            "{members}"
        );
        assert_error(&join_status(client, &room_id).await, 403, "M_FORBIDDEN");
    }
    let alias_path = format!(
        "/_matrix/client/v3/directory/room/{}",
        enc(&format!("#doomed:{host}"))
    );
    assert_error(&bob.get(&alias_path).await, 404, "M_NOT_FOUND");
    assert!(!directory(&bob).await.contains(&room_id));
    let info = admin.run(&format!("!admin rooms info {room_id}")).await;
    assert!(
        info.contains("blocked\tyes") && info.contains("members\t0"),
        "{info}"
    );
    // Without --purge the events stay.
    let event_path = format!(
        "/_synapse/admin/v1/rooms/{}/messages?limit=100",
        enc(&room_id)
    );
    let chunk = admin.get_ok(&event_path).await["chunk"].clone();
    assert!(chunk
        .as_array()
        .unwrap()
        .iter()
        .any(|event| event["event_id"] == message.as_str()));

    // Unblocked, the room can be joined again (it is public; nobody here is in it, so the join
    // goes nowhere: the room is unknown to other servers, and no longer blocked).
    let reply = admin.run(&format!("!admin rooms unblock {room_id}")).await;
    assert_eq!(reply, format!("unblocked {room_id}"));
    let (status, body) = join_status(&bob, &room_id).await;
    assert_ne!(body["errcode"], "M_FORBIDDEN", "{status} {body}");
}

#[tokio::test]
async fn rooms_delete_with_purge_drops_the_events() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let (bob, carol) = (server.register("bob").await, server.register("carol").await);
    let room_id = public_room(&bob, &carol, "purged").await;
    let message = bob.send_text(&room_id, "m1", "gone soon").await;
    let reply = admin
        .run(&format!("!admin rooms delete {room_id} --purge"))
        .await;
    assert!(reply.contains("; purged "), "{reply}");
    let event_path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room_id),
        enc(&message)
    );
    assert_error(&bob.get(&event_path).await, 404, "M_NOT_FOUND");
    let chunk = admin
        .get_ok(&format!(
            "/_synapse/admin/v1/rooms/{}/messages?limit=100",
            enc(&room_id)
        ))
        .await["chunk"]
        .clone();
    // Only the local users' member events are kept (so their clients still read the leave).
    for event in chunk.as_array().unwrap() {
        assert_eq!(event["type"], "m.room.member", "{event}");
    }
    // The room is gone from bob's rooms and from his initial sync.
    let joined = bob.get_ok("/_matrix/client/v3/joined_rooms").await;
    assert!(!joined["joined_rooms"].to_string().contains(&room_id));
    let sync = bob.get_ok("/_matrix/client/v3/sync").await;
    assert!(sync["rooms"]["join"].get(&room_id).is_none(), "{sync}");
    assert_error(&join_status(&bob, &room_id).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn rooms_purge_history_deletes_old_messages_but_not_state_or_the_newest() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let (bob, carol) = (server.register("bob").await, server.register("carol").await);
    let room_id = public_room(&bob, &carol, "history").await;
    bob.send_text(&room_id, "m1", "one").await;
    let second = bob.send_text(&room_id, "m2", "two").await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room_id),
        enc(&second)
    );
    let cutoff = bob.get_ok(&path).await["origin_server_ts"]
        .as_u64()
        .unwrap()
        + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    bob.send_text(&room_id, "m3", "three").await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.topic",
            enc(&room_id)
        ),
        json!({"topic": "kept"}),
    )
    .await;
    carol.send_text(&room_id, "m4", "four").await;

    let reply = admin
        .run(&format!("!admin rooms purge-history {room_id} {cutoff}"))
        .await;
    assert!(
        reply.starts_with(&format!("deleted 2 events of {room_id}")),
        "{reply}"
    );
    assert_eq!(message_bodies(&carol, &room_id).await, ["three", "four"]);
    // Everything older than a day in the future: the state stays, and so does the newest event.
    let reply = admin
        .run(&format!(
            "!admin rooms purge-history {room_id} {}",
            cutoff + 86_400_000
        ))
        .await;
    assert!(reply.starts_with("deleted 1 events"), "{reply}");
    assert_eq!(message_bodies(&carol, &room_id).await, ["four"]);
    let state = carol
        .get_ok(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room_id)))
        .await;
    let kinds = state.to_string();
    for kind in [
        "m.room.create",
        "m.room.topic",
        "m.room.name",
        "m.room.member",
    ] {
        assert!(kinds.contains(kind), "{kind} not in {kinds}");
    }
    // `server stats` counts the purged events out: its count is the timeline's, less the reply
    // to the stats command itself, written after the numbers were read.
    let stats = admin.run("!admin server stats").await;
    let counted = |field: &str| -> usize {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}\t")))
            .unwrap_or_else(|| panic!("no {field} in {stats}"))
            .parse()
            .unwrap()
    };
    let scanned = server.services.rooms.timeline.iter_all().count();
    assert_eq!(counted("events"), scanned - 1, "{stats}");
    // The room still works.
    carol.send_text(&room_id, "m5", "five").await;
    assert_eq!(message_bodies(&bob, &room_id).await, ["four", "five"]);
}

#[tokio::test]
async fn rooms_block_publish_and_aliases() {
    let server = TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let host = server.server_name();
    let room_id = bob.create_room(json!({"preset": "public_chat"})).await;
    let run = |line: String| admin.run(line);

    assert_eq!(
        run(format!("!admin rooms block {room_id}")).await,
        format!("blocked {room_id}")
    );
    assert_error(&join_status(&carol, &room_id).await, 403, "M_FORBIDDEN");
    // A room unknown here can be blocked ahead of time.
    let unknown = format!("!unknown:{host}");
    assert_eq!(
        run(format!("!admin rooms block {unknown}")).await,
        format!("blocked {unknown}")
    );
    run(format!("!admin rooms unblock {room_id}")).await;
    carol.join(&room_id).await;

    assert!(!directory(&carol).await.contains(&room_id));
    run(format!("!admin rooms publish {room_id}")).await;
    assert!(directory(&carol).await.contains(&room_id));
    run(format!("!admin rooms unpublish {room_id}")).await;
    assert!(!directory(&carol).await.contains(&room_id));

    let alias = format!("#side:{host}");
    let alias_path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    assert_eq!(
        run(format!("!admin rooms alias set {alias} {room_id}")).await,
        format!("{alias} now points to {room_id}")
    );
    assert_eq!(carol.get_ok(&alias_path).await["room_id"], room_id.as_str());
    assert_eq!(
        run(format!("!admin rooms alias remove {alias}")).await,
        format!("removed {alias} (it pointed to {room_id})")
    );
    assert_error(&carol.get(&alias_path).await, 404, "M_NOT_FOUND");
}
