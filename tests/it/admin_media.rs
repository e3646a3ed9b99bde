//! The admin room's `media` commands and Synapse's media admin API: details, a user's media in
//! an order, deleting by mxc, event, user and old remote cache, and quarantine of one item, a
//! room's media or a user's uploads (404 to all but admins, never fetched again); bad arguments
//! and non-admins change nothing.

use serde_json::json;

use crate::admin_rooms::AdminRoom;
use crate::common::{assert_error, enc, Client};
use crate::federation::two_servers;
use crate::media::{get_raw, mxc_path, upload_ok};

/// The status of an authenticated download of `mxc`.
async fn download_status(client: &Client, mxc: &str) -> u16 {
    let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(mxc));
    get_raw(client, &path).await.status().as_u16()
}

#[tokio::test]
async fn media_commands_show_delete_and_quarantine_local_media() {
    let server = crate::common::TestServer::start().await;
    let admin = AdminRoom::join(&server).await;
    let bob = server.register("bob").await;
    let host = server.server_name();
    let kept = upload_ok(&bob, b"kept bytes".to_vec(), "text/plain", Some("kept.txt")).await;
    let by_mxc = upload_ok(&bob, b"by mxc".to_vec(), "text/plain", None).await;
    let run = |line: String| admin.run(line);

    let info = run(format!("!admin media info {kept}")).await;
    for line in [
        "content type\ttext/plain",
        "file name\tkept.txt",
        "size\t10 bytes",
        &format!("uploader\t@bob:{host}"),
        "quarantined\tno",
    ] {
        assert!(info.contains(line), "{line} not in {info}");
    }
    // Bad arguments: an error, nothing changed.
    for (line, expected) in [
        (
            "!admin media info not-an-mxc".to_owned(),
            "error: invalid mxc URI not-an-mxc".to_owned(),
        ),
        (
            format!("!admin media delete mxc mxc://{host}/missing"),
            format!("error: media mxc://{host}/missing not found"),
        ),
        (
            "!admin media delete event nonsense".to_owned(),
            "error: invalid event ID nonsense".to_owned(),
        ),
        (
            "!admin media delete remote-cache soon".to_owned(),
            "error: invalid time soon".to_owned(),
        ),
        (
            format!("!admin media unquarantine {kept}"),
            format!("error: {kept} is not quarantined"),
        ),
    ] {
        let reply = run(line.clone()).await;
        assert!(reply.starts_with(&expected), "{line}: {reply}");
    }
    assert_eq!(download_status(&bob, &kept).await, 200);

    // Quarantine: 404 to bob, served to the admin; lifted, served again.
    assert_eq!(
        run(format!("!admin media quarantine {kept}")).await,
        format!("quarantined {kept}")
    );
    assert_eq!(download_status(&bob, &kept).await, 404);
    let thumbnail = format!(
        "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32",
        mxc_path(&kept)
    );
    assert_eq!(get_raw(&bob, &thumbnail).await.status().as_u16(), 404);
    assert_eq!(download_status(&admin, &kept).await, 200);
    assert!(run(format!("!admin media info {kept}"))
        .await
        .contains("quarantined\tyes"));
    run(format!("!admin media unquarantine {kept}")).await;
    assert_eq!(download_status(&bob, &kept).await, 200);

    // Delete by mxc, then by event, then by user.
    assert_eq!(
        run(format!("!admin media delete mxc {by_mxc}")).await,
        "deleted 1 media"
    );
    assert_eq!(download_status(&bob, &by_mxc).await, 404);
    let in_event = upload_ok(&bob, b"in an event".to_vec(), "image/png", None).await;
    let room_id = bob.create_room(json!({})).await;
    let event_id = bob
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/img",
                enc(&room_id)
            ),
            json!({"msgtype": "m.image", "body": "a picture", "url": in_event}),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        run(format!("!admin media delete event {event_id}")).await,
        "deleted 1 media"
    );
    assert_eq!(download_status(&bob, &in_event).await, 404);
    assert_eq!(download_status(&bob, &kept).await, 200);
    assert_eq!(
        run(format!("!admin media delete user @bob:{host}")).await,
        "deleted 1 media"
    );
    assert_eq!(download_status(&bob, &kept).await, 404);
}

#[tokio::test]
async fn synapse_media_api_lists_deletes_and_quarantines() {
    let server = crate::common::TestServer::start().await;
    let admin = server.register("admin").await;
    let bob = server.register("bob").await;
    let host = server.server_name();
    let first = upload_ok(&bob, b"first".to_vec(), "text/plain", Some("a.txt")).await;
    let second = upload_ok(&bob, b"second!".to_vec(), "text/plain", None).await;
    let list_path = format!(
        "/_synapse/admin/v1/users/{}/media",
        enc(&format!("@bob:{host}"))
    );
    let media_id = |mxc: &str| mxc.rsplit('/').next().unwrap().to_owned();

    // Non-admins are refused, and nothing changes.
    let one = format!("/_synapse/admin/v1/media/{host}/{}", media_id(&first));
    let quarantine = format!(
        "/_synapse/admin/v1/media/quarantine/{host}/{}",
        media_id(&first)
    );
    assert_error(&bob.get(&list_path).await, 403, "M_FORBIDDEN");
    assert_error(&bob.delete(&one, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&bob.post(&quarantine, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &bob.post(
            "/_synapse/admin/v1/purge_media_cache?before_ts=1",
            json!({}),
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(download_status(&bob, &first).await, 200);

    let list = admin.get_ok(&list_path).await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["media"][0]["media_id"], media_id(&second));
    assert_eq!(list["media"][1]["media_id"], media_id(&first));
    assert_eq!(list["media"][1]["upload_name"], "a.txt");
    assert_eq!(list["media"][1]["media_length"], 5);
    assert_eq!(list["media"][1]["quarantined_by"], serde_json::Value::Null);

    assert_eq!(admin.post_ok(&quarantine, json!({})).await, json!({}));
    assert_eq!(download_status(&bob, &first).await, 404);
    let list = admin.get_ok(&list_path).await;
    assert_eq!(list["media"][1]["quarantined_by"], format!("@admin:{host}"));
    let unquarantine = quarantine.replace("/quarantine/", "/unquarantine/");
    admin.post_ok(&unquarantine, json!({})).await;
    assert_eq!(download_status(&bob, &first).await, 200);

    let answer = admin.delete(&one, json!({})).await;
    assert_eq!(
        answer,
        (
            200,
            json!({"deleted_media": [media_id(&first)], "total": 1})
        )
    );
    assert_eq!(download_status(&bob, &first).await, 404);
    assert_error(&admin.delete(&one, json!({})).await, 404, "M_NOT_FOUND");
    let remote = "/_synapse/admin/v1/media/elsewhere.example/abc";
    assert_error(
        &admin.delete(remote, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &admin
            .post("/_synapse/admin/v1/purge_media_cache", json!({}))
            .await,
        400,
        "M_MISSING_PARAM",
    );
    let purged = admin
        .post_ok(
            "/_synapse/admin/v1/purge_media_cache?before_ts=99999999999999",
            json!({}),
        )
        .await;
    assert_eq!(purged, json!({"deleted": 0}));
    // Local media is no cache: it stays.
    assert_eq!(download_status(&bob, &second).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_media_cache_is_purged_and_quarantined_media_is_never_fetched() {
    let (_ca, hs1, hs2) = two_servers().await;
    let admin = AdminRoom::join(&hs1).await;
    let carol = hs1.register("carol").await;
    let bob = hs2.register("bob").await;
    let cached = upload_ok(&bob, b"remote bytes".to_vec(), "text/plain", None).await;
    let other = upload_ok(&bob, b"other remote bytes".to_vec(), "text/plain", None).await;
    assert_eq!(download_status(&carol, &cached).await, 200);
    let media_id = cached.rsplit('/').next().unwrap();
    let remote = ruma::ServerName::parse(hs2.server_name()).unwrap();
    let is_cached = |media_id: &str| hs1.services.media.get(&remote, media_id).unwrap().is_some();
    assert!(is_cached(media_id));

    let reply = admin.run("!admin media delete remote-cache 1h").await;
    assert_eq!(reply, "deleted 0 media");
    let reply = admin.run("!admin media delete remote-cache 0s").await;
    assert_eq!(reply, "deleted 1 media");
    assert!(!is_cached(media_id));
    // Fetched again on demand.
    assert_eq!(download_status(&carol, &cached).await, 200);

    // Quarantined before it was ever fetched: nobody gets it, not even an admin, and this
    // server never asks for it.
    let fetches = hs1.services.media.remote_fetches();
    let reply = admin.run(&format!("!admin media quarantine {other}")).await;
    assert_eq!(reply, format!("quarantined {other}"));
    assert_eq!(download_status(&carol, &other).await, 404);
    assert_eq!(download_status(&admin, &other).await, 404);
    assert_eq!(hs1.services.media.remote_fetches(), fetches);
}

#[tokio::test]
async fn synapse_media_api_orders_a_users_media_and_quarantines_by_room_and_user() {
    let server = crate::common::TestServer::start().await;
    let admin = server.register("admin").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let host = server.server_name();
    let media_id = |mxc: &str| mxc.rsplit('/').next().unwrap().to_owned();
    let three = upload_ok(&bob, b"aaa".to_vec(), "text/plain", Some("a.txt")).await;
    let one = upload_ok(&bob, b"c".to_vec(), "text/plain", Some("c.txt")).await;
    let two = upload_ok(&bob, b"bb".to_vec(), "text/plain", Some("b.txt")).await;
    let list_path = format!(
        "/_synapse/admin/v1/users/{}/media",
        enc(&format!("@bob:{host}"))
    );
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list["media"]
            .as_array()
            .unwrap()
            .iter()
            .map(|media| media["media_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (one_id, two_id, three_id) = (media_id(&one), media_id(&two), media_id(&three));
    let (one_id, two_id, three_id) = (one_id.as_str(), two_id.as_str(), three_id.as_str());

    // Orders: by length, reversed, by name; a page of two has a next token.
    let by_length = admin
        .get_ok(&format!("{list_path}?order_by=media_length"))
        .await;
    assert_eq!(ids(&by_length), [one_id, two_id, three_id], "{by_length}");
    let reversed = admin
        .get_ok(&format!("{list_path}?order_by=media_length&dir=b"))
        .await;
    assert_eq!(ids(&reversed), [three_id, two_id, one_id]);
    let by_name = admin
        .get_ok(&format!("{list_path}?order_by=upload_name"))
        .await;
    assert_eq!(ids(&by_name), [three_id, two_id, one_id]);
    let page = admin
        .get_ok(&format!("{list_path}?order_by=media_length&limit=2"))
        .await;
    assert_eq!(ids(&page), [one_id, two_id]);
    assert_eq!(
        (page["total"].clone(), page["next_token"].clone()),
        (json!(3), json!(2))
    );
    for bad in ["order_by=size", "dir=sideways"] {
        let answer = admin.get(&format!("{list_path}?{bad}")).await;
        assert_error(&answer, 400, "M_INVALID_PARAM");
    }

    // Quarantine by room: what the room's events name, nothing else.
    let picture = upload_ok(&carol, b"picture".to_vec(), "image/png", Some("p.png")).await;
    let room_id = carol.create_room(json!({})).await;
    let send = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/pic",
        enc(&room_id)
    );
    let image = json!({"msgtype": "m.image", "body": "p.png", "url": picture});
    carol.put_ok(&send, image).await;
    let by_room = format!("/_synapse/admin/v1/room/{}/media/quarantine", enc(&room_id));
    assert_error(&carol.post(&by_room, json!({})).await, 403, "M_FORBIDDEN");
    assert_eq!(download_status(&carol, &picture).await, 200);
    let unknown_room = format!(
        "/_synapse/admin/v1/room/{}/media/quarantine",
        enc(&format!("!nope:{host}"))
    );
    assert_error(
        &admin.post(&unknown_room, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        admin.post_ok(&by_room, json!({})).await,
        json!({"num_quarantined": 1})
    );
    assert_eq!(download_status(&carol, &picture).await, 404);
    assert_eq!(download_status(&bob, &one).await, 200);

    // Quarantine by user: every upload of bob's.
    let by_user = format!(
        "/_synapse/admin/v1/user/{}/media/quarantine",
        enc(&format!("@bob:{host}"))
    );
    assert_error(&bob.post(&by_user, json!({})).await, 403, "M_FORBIDDEN");
    let remote = "/_synapse/admin/v1/user/@x:elsewhere.example/media/quarantine";
    assert_error(&admin.post(remote, json!({})).await, 400, "M_INVALID_PARAM");
    assert_eq!(
        admin.post_ok(&by_user, json!({})).await,
        json!({"num_quarantined": 3})
    );
    for mxc in [&one, &two, &three] {
        assert_eq!(download_status(&bob, mxc).await, 404);
    }
    let list = admin.get_ok(&list_path).await;
    assert_eq!(list["media"][0]["quarantined_by"], format!("@admin:{host}"));
    // One item is released again.
    let release = format!("/_synapse/admin/v1/media/unquarantine/{host}/{one_id}");
    admin.post_ok(&release, json!({})).await;
    assert_eq!(download_status(&bob, &one).await, 200);

    // Deleting a user's media takes the list's order and limit.
    let delete = format!("{list_path}?order_by=media_length&limit=1");
    assert_error(&bob.delete(&delete, json!({})).await, 403, "M_FORBIDDEN");
    assert_eq!(
        admin.delete(&delete, json!({})).await,
        (200, json!({"deleted_media": [one_id], "total": 1}))
    );
    assert_eq!(download_status(&admin, &one).await, 404);
    let list = admin.get_ok(&list_path).await;
    assert_eq!(ids(&list).len(), 2, "{list}");
}
