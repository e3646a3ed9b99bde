//! The admin room's `media` commands and Synapse's media admin API: details, deleting by mxc,
//! event, user and old remote cache, and quarantine (404 to all but admins, never fetched
//! again); bad arguments and non-admins change nothing.

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
