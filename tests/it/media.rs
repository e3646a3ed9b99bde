//! The content repository over HTTP: uploads (direct and reserved), downloads with their safe
//! headers, deduplication on disk, limits, thumbnails and their cache, the frozen legacy
//! endpoints, a `contains_url` media gallery, URL previews (off, on, deny-list, redirects) and
//! media fetched from another Plait server and served from the cache.

use std::{io::Cursor, net::SocketAddr, path::Path};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{assert_error, enc, http_stub, Client, TestServer};

/// Uploads bytes and returns the status and JSON answer.
pub async fn upload(
    client: &Client,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> (u16, Value) {
    let mut path = "/_matrix/media/v3/upload".to_owned();
    if let Some(name) = filename {
        path.push_str(&format!("?filename={}", enc(name)));
    }
    send_bytes(client, reqwest::Method::POST, &path, bytes, content_type).await
}

async fn send_bytes(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> (u16, Value) {
    let mut request = client
        .http
        .request(method, format!("{}{path}", client.base))
        .header("content-type", content_type)
        .body(bytes);
    if let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Uploads bytes that must be accepted and returns the `mxc://` URI.
pub async fn upload_ok(
    client: &Client,
    bytes: Vec<u8>,
    content_type: &str,
    name: Option<&str>,
) -> String {
    let (status, body) = upload(client, bytes, content_type, name).await;
    assert_eq!(status, 200, "{body}");
    body["content_uri"].as_str().unwrap().to_owned()
}

/// `server/media_id` of an `mxc://` URI.
pub fn mxc_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").unwrap().to_owned()
}

/// A raw GET with the client's token.
pub async fn get_raw(client: &Client, path: &str) -> reqwest::Response {
    let mut request = client.http.get(format!("{}{path}", client.base));
    if let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// A GET whose answer is JSON (errors).
pub async fn get_json(client: &Client, path: &str) -> (u16, Value) {
    let response = get_raw(client, path).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header_value(response: &http::Response<Vec<u8>>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// An RGB image encoded as PNG or JPEG.
pub fn image_bytes(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
    }));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Files in the content-addressed store (temporary files excluded).
fn stored_files(media: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for folder in std::fs::read_dir(media).unwrap() {
        let folder = folder.unwrap();
        if folder.file_name() == "tmp" || !folder.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(folder.path()).unwrap() {
            names.push(file.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

#[tokio::test]
async fn upload_and_download_round_trip_with_safe_headers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let text = b"hello media".to_vec();
    let uri = upload_ok(&alice, text.clone(), "text/plain", Some("hello world.txt")).await;
    assert!(
        uri.starts_with(&format!("mxc://{}/", server.server_name())),
        "{uri}"
    );
    let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(&uri));

    // Another user downloads it, with the safe headers.
    let response = get_raw(&bob, &path).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=\"hello world.txt\""
    );
    assert_eq!(
        header(&response, "content-security-policy"),
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
    );
    assert_eq!(
        header(&response, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(response.bytes().await.unwrap().to_vec(), text);

    // A name in the path replaces the stored one, encoded as RFC 8187 when not ASCII.
    let response = get_raw(&bob, &format!("{path}/{}", enc("résumé.txt"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
    );

    // HTML is never inline.
    let html = upload_ok(
        &alice,
        b"<script>alert(1)</script>".to_vec(),
        "text/html",
        None,
    )
    .await;
    let response = get_raw(
        &bob,
        &format!("/_matrix/client/v1/media/download/{}", mxc_path(&html)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-disposition"), "attachment");
    assert_eq!(header(&response, "content-type"), "text/html");

    // No token: 401 on every authenticated media endpoint.
    let anonymous = server.client();
    assert_error(&get_json(&anonymous, &path).await, 401, "M_MISSING_TOKEN");
    assert_error(
        &upload(&anonymous, b"x".to_vec(), "text/plain", None).await,
        401,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &get_json(&anonymous, "/_matrix/client/v1/media/config").await,
        401,
        "M_MISSING_TOKEN",
    );

    // Unknown and malformed media IDs.
    let unknown = format!(
        "/_matrix/client/v1/media/download/{}/nosuchmedia",
        server.server_name()
    );
    assert_error(&get_json(&bob, &unknown).await, 404, "M_NOT_FOUND");
    let bad = format!(
        "/_matrix/client/v1/media/download/{}/{}",
        server.server_name(),
        enc("../../etc/passwd")
    );
    assert_error(&get_json(&bob, &bad).await, 404, "M_NOT_FOUND");
    assert_error(
        &upload(&alice, b"x".to_vec(), "text/plain", Some("bad\nname")).await,
        400,
        "M_INVALID_PARAM",
    );

    // The frozen unauthenticated endpoints (`legacy_media_unauthenticated` is off by default)
    // answer 404 even for existing media, on `v3` and `r0`.
    let mut frozen = Vec::new();
    for version in ["v3", "r0"] {
        frozen.push(format!(
            "/_matrix/media/{version}/download/{}",
            mxc_path(&uri)
        ));
        frozen.push(format!(
            "/_matrix/media/{version}/download/{}/a.txt",
            mxc_path(&uri)
        ));
        frozen.push(format!(
            "/_matrix/media/{version}/thumbnail/{}?width=32&height=32",
            mxc_path(&uri)
        ));
    }
    for legacy in frozen {
        assert_error(&get_json(&anonymous, &legacy).await, 404, "M_NOT_FOUND");
        assert_error(&get_json(&bob, &legacy).await, 404, "M_NOT_FOUND");
    }

    // The config, on the current and the deprecated path.
    for config in [
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/config",
    ] {
        let body = bob.get_ok(config).await;
        assert_eq!(body["m.upload.size"], 50 * 1024 * 1024);
    }
}

#[tokio::test]
async fn same_bytes_are_stored_once_and_large_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        TestServer::start_at(dir.path(), |config| config.max_upload_bytes = 4096).await;
    server.dir = Some(dir);
    let media = server.services.config.media_path();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let bytes = vec![7u8; 3000];
    let first = upload_ok(&alice, bytes.clone(), "application/octet-stream", None).await;
    let second = upload_ok(&bob, bytes.clone(), "image/png", Some("b.png")).await;
    assert_ne!(first, second, "each upload gets its own media ID");
    let files = stored_files(&media);
    assert_eq!(files.len(), 1, "{files:?}");
    // Both IDs serve the bytes, each with its own metadata.
    for (uri, kind) in [(&first, "application/octet-stream"), (&second, "image/png")] {
        let response = get_raw(
            &alice,
            &format!("/_matrix/client/v1/media/download/{}", mxc_path(uri)),
        )
        .await;
        assert_eq!(header(&response, "content-type"), kind);
        assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);
    }

    // Over the limit: 413, and nothing new on disk.
    assert_error(
        &upload(&alice, vec![1u8; 5000], "text/plain", None).await,
        413,
        "M_TOO_LARGE",
    );
    // Without a Content-Length (chunked), the limit holds while the body streams in.
    let address = server.base.strip_prefix("http://").unwrap().to_owned();
    let token = alice.token.clone().unwrap();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..5 {
        let chunk = vec![b'a'; 1000];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("M_TOO_LARGE"), "{answer}");
    assert_eq!(stored_files(&media).len(), 1);
    assert_eq!(std::fs::read_dir(media.join("tmp")).unwrap().count(), 0);
    let config = alice.get_ok("/_matrix/client/v1/media/config").await;
    assert_eq!(config["m.upload.size"], 4096);
}

#[tokio::test]
async fn reserved_uploads_belong_to_their_creator_and_happen_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let created = alice.post_ok("/_matrix/media/v1/create", json!({})).await;
    let uri = created["content_uri"].as_str().unwrap().to_owned();
    let expires = created["unused_expires_at"].as_u64().unwrap();
    assert!(expires > 0);
    let upload_path = format!("/_matrix/media/v3/upload/{}", mxc_path(&uri));
    let download_path = format!("/_matrix/client/v1/media/download/{}", mxc_path(&uri));

    // Not uploaded yet: 504 after the timeout.
    assert_error(
        &get_json(&bob, &format!("{download_path}?timeout_ms=50")).await,
        504,
        "M_NOT_YET_UPLOADED",
    );
    // A download that waits sees the upload.
    let waiting = {
        let bob = bob.clone();
        let path = format!("{download_path}?timeout_ms=30000");
        tokio::spawn(async move {
            let response = get_raw(&bob, &path).await;
            (
                response.status().as_u16(),
                response.bytes().await.unwrap().to_vec(),
            )
        })
    };

    let put = reqwest::Method::PUT;
    assert_error(
        &send_bytes(
            &bob,
            put.clone(),
            &upload_path,
            b"bob's".to_vec(),
            "text/plain",
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    let unknown = format!(
        "/_matrix/media/v3/upload/{}/nosuchmedia",
        server.server_name()
    );
    assert_error(
        &send_bytes(&alice, put.clone(), &unknown, b"x".to_vec(), "text/plain").await,
        404,
        "M_NOT_FOUND",
    );
    let (status, body) = send_bytes(
        &alice,
        put.clone(),
        &upload_path,
        b"reserved".to_vec(),
        "text/plain",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    assert_error(
        &send_bytes(
            &alice,
            put.clone(),
            &upload_path,
            b"again".to_vec(),
            "text/plain",
        )
        .await,
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );
    assert_eq!(waiting.await.unwrap(), (200, b"reserved".to_vec()));
    let response = get_raw(&bob, &download_path).await;
    assert_eq!(response.bytes().await.unwrap().to_vec(), b"reserved");

    // A user may hold ten pending reservations.
    for _ in 0..10 {
        bob.post_ok("/_matrix/media/v1/create", json!({})).await;
    }
    assert_error(
        &bob.post("/_matrix/media/v1/create", json!({})).await,
        429,
        "M_LIMIT_EXCEEDED",
    );
    // Alice's count is her own.
    alice.post_ok("/_matrix/media/v1/create", json!({})).await;
}

#[tokio::test]
async fn thumbnails_scale_crop_and_come_from_the_cache() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let png = upload_ok(
        &alice,
        image_bytes(2000, 1500, image::ImageFormat::Png),
        "image/png",
        Some("big.png"),
    )
    .await;
    let jpeg = upload_ok(
        &alice,
        image_bytes(400, 200, image::ImageFormat::Jpeg),
        "image/jpeg",
        None,
    )
    .await;
    let thumbnail = |uri: &str, query: &str| {
        format!(
            "/_matrix/client/v1/media/thumbnail/{}?{query}",
            mxc_path(uri)
        )
    };
    let check = |uri: String, query: &'static str, kind: &'static str, size: (u32, u32)| {
        let alice = alice.clone();
        let path = thumbnail(&uri, query);
        async move {
            let response = get_raw(&alice, &path).await;
            assert_eq!(response.status(), 200, "{query}");
            assert_eq!(header(&response, "content-type"), kind, "{query}");
            assert!(
                header(&response, "content-disposition").starts_with("inline; filename=thumbnail.")
            );
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            let image = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
            assert_eq!((image.width(), image.height()), size, "{query}");
        }
    };
    check(
        png.clone(),
        "width=320&height=240&method=scale",
        "image/png",
        (320, 240),
    )
    .await;
    check(
        png.clone(),
        "width=320&height=240&method=crop",
        "image/png",
        (320, 240),
    )
    .await;
    check(
        png.clone(),
        "width=96&height=96&method=crop",
        "image/png",
        (96, 96),
    )
    .await;
    // Sizes move up to the next of a few boxes (320x240 for this scale, 320x320 for this crop,
    // cut to the original's height), never smaller than asked.
    check(
        jpeg.clone(),
        "width=100&height=100&method=scale",
        "image/jpeg",
        (320, 160),
    )
    .await;
    check(
        jpeg.clone(),
        "width=100&height=100&method=crop",
        "image/jpeg",
        (320, 200),
    )
    .await;
    // Larger than the original: never enlarged.
    check(
        jpeg.clone(),
        "width=800&height=600",
        "image/jpeg",
        (400, 200),
    )
    .await;

    let generated = server.services.media.thumbnails_generated();
    assert_eq!(generated, 6);
    check(
        png.clone(),
        "width=320&height=240&method=scale",
        "image/png",
        (320, 240),
    )
    .await;
    check(
        jpeg.clone(),
        "width=100&height=100&method=crop",
        "image/jpeg",
        (320, 200),
    )
    .await;
    // Another size in the same box is the same thumbnail.
    check(
        jpeg.clone(),
        "width=300&height=200&method=scale",
        "image/jpeg",
        (320, 160),
    )
    .await;
    assert_eq!(
        server.services.media.thumbnails_generated(),
        generated,
        "the second requests came from the cache"
    );

    // Bad requests.
    let text = upload_ok(&alice, b"not an image".to_vec(), "text/plain", None).await;
    assert_error(
        &get_json(&alice, &thumbnail(&text, "width=32&height=32")).await,
        400,
        "M_UNKNOWN",
    );
    assert_error(
        &get_json(&alice, &thumbnail(&png, "height=32")).await,
        400,
        "M_MISSING_PARAM",
    );
    for query in [
        "width=-5&height=32",
        "width=abc&height=32",
        "width=32&height=32&method=stretch",
        "width=32&height=32&animated=maybe",
    ] {
        assert_error(
            &get_json(&alice, &thumbnail(&png, query)).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    assert_error(
        &get_json(&server.client(), &thumbnail(&png, "width=32&height=32")).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn contains_url_filter_makes_a_media_gallery() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let picture = upload_ok(
        &alice,
        image_bytes(64, 48, image::ImageFormat::Png),
        "image/png",
        Some("cat.png"),
    )
    .await;
    alice.send_text(&room, "t1", "before").await;
    let send = |txn: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(&room)
        )
    };
    alice
        .put_ok(
            &send("i1"),
            json!({"msgtype": "m.image", "body": "cat.png", "url": picture,
                   "info": {"mimetype": "image/png", "w": 64, "h": 48}}),
        )
        .await;
    alice.send_text(&room, "t2", "after").await;

    let messages = |filter: Value| {
        let alice = alice.clone();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&filter={}",
            enc(&room),
            enc(&filter.to_string())
        );
        async move {
            alice.get_ok(&path).await["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|event| event["type"] == "m.room.message")
                .map(|event| event["content"]["body"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(messages(json!({"contains_url": true})).await, ["cat.png"]);
    // The gallery page reached the start of the room and still names an `end`, as Synapse's
    // does (Complement's TestRoomImageRoundtrip); the page after it is empty and has none.
    let gallery = |from: Option<&str>| {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&filter={}",
            enc(&room),
            enc(r#"{"contains_url":true}"#)
        );
        if let Some(from) = from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let alice = alice.clone();
        async move { alice.get_ok(&path).await }
    };
    let page = gallery(None).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let end = page["end"].as_str().expect("a page with events has an end");
    let after = gallery(Some(end)).await;
    assert_eq!(after["chunk"], json!([]));
    assert!(after.get("end").is_none(), "{after}");
    assert_eq!(
        messages(json!({"contains_url": false})).await,
        ["after", "before"]
    );
    // The gallery's URL downloads the picture.
    let response = get_raw(
        &alice,
        &format!("/_matrix/client/v1/media/download/{}", mxc_path(&picture)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "image/png");
}

/// A tiny HTTP server on 127.0.0.1: `/page` is HTML with Open Graph tags, `/logo.png` an image,
/// `/redirect` a redirect to `redirect_to`; anything else is 404.
async fn page_server(redirect_to: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let logo = image_bytes(48, 32, image::ImageFormat::Png);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let logo = logo.clone();
            let redirect_to = redirect_to.clone();
            tokio::spawn(http_stub::serve_one(stream, move |path| match path {
                "/page" => (
                    "200 OK",
                    "content-type: text/html; charset=utf-8\r\n".into(),
                    br#"<html><head><title>Ignored</title>
                            <meta property="og:title" content="A &amp; B">
                            <meta property="og:description" content="Tiny test page">
                            <meta property="og:image" content="/logo.png"></head></html>"#
                        .to_vec(),
                ),
                "/logo.png" => ("200 OK", "content-type: image/png\r\n".into(), logo),
                "/redirect" => (
                    "302 Found",
                    format!("location: {redirect_to}\r\n"),
                    Vec::new(),
                ),
                _ => ("404 Not Found", String::new(), Vec::new()),
            }));
        }
    });
    address
}

fn preview_path(url: &str) -> String {
    format!("/_matrix/client/v1/media/preview_url?url={}", enc(url))
}

#[tokio::test]
async fn url_previews_are_off_by_default_and_respect_the_denylist() {
    let pages = page_server("http://127.0.0.2:9/page".to_owned()).await;
    let page = format!("http://{pages}/page");

    // Off by default.
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_error(
        &get_json(&alice, &preview_path(&page)).await,
        403,
        "M_FORBIDDEN",
    );
    drop(server);

    // On, with the default deny-list: loopback is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        TestServer::start_at(dir.path(), |config| config.url_preview_enabled = true).await;
    server.dir = Some(dir);
    let alice = server.register("alice").await;
    assert_error(
        &get_json(&alice, &preview_path(&page)).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &get_json(&alice, &preview_path("http://[::1]:9/page")).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &get_json(&alice, &preview_path("ftp://example.org/")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &get_json(
            &alice,
            &preview_path(&format!("http://example.org/{}", "a".repeat(5000))),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &get_json(&alice, "/_matrix/client/v1/media/preview_url").await,
        400,
        "M_MISSING_PARAM",
    );
    drop(server);

    // 127.0.0.1 allowed, 127.0.0.2 still denied (checked again after a redirect).
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_at(dir.path(), |config| {
        config.url_preview_enabled = true;
        config.url_preview_ip_denylist = vec!["127.0.0.2/32".to_owned()];
    })
    .await;
    server.dir = Some(dir);
    let alice = server.register("alice").await;
    let preview = alice.get_ok(&preview_path(&page)).await;
    assert_eq!(preview["og:title"], "A & B");
    assert_eq!(preview["og:description"], "Tiny test page");
    assert_eq!(preview["og:image:type"], "image/png");
    assert_eq!(preview["og:image:width"], 48);
    assert_eq!(preview["og:image:height"], 32);
    let image = preview["og:image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("mxc://{}/", server.server_name())),
        "{preview}"
    );
    let response = get_raw(
        &alice,
        &format!("/_matrix/client/v1/media/download/{}", mxc_path(image)),
    )
    .await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(preview["matrix:image:size"], bytes.len());
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 48);

    // The deprecated path answers the same (from the cache).
    let legacy = alice
        .get_ok(&format!("/_matrix/media/v3/preview_url?url={}", enc(&page)))
        .await;
    assert_eq!(legacy, preview);
    assert_error(
        &get_json(&alice, &preview_path(&format!("http://{pages}/redirect"))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &get_json(&server.client(), &preview_path(&page)).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_media_is_fetched_once_and_served_from_the_cache() {
    let (ca, hs1, hs2) = crate::federation::two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let original = image_bytes(640, 480, image::ImageFormat::Png);
    let uri = upload_ok(&alice, original.clone(), "image/png", Some("remote.png")).await;
    assert!(uri.starts_with(&format!("mxc://{}/", hs1.server_name())));
    let download = format!("/_matrix/client/v1/media/download/{}", mxc_path(&uri));
    let thumbnail = format!(
        "/_matrix/client/v1/media/thumbnail/{}?width=320&height=240&method=crop",
        mxc_path(&uri)
    );

    // Three requests at once make one federation fetch.
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let bob = bob.clone();
            let download = download.clone();
            tokio::spawn(async move { get_raw(&bob, &download).await.bytes().await.unwrap() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().to_vec(), original);
    }
    assert_eq!(hs2.services.media.remote_fetches(), 1);
    let response = get_raw(&bob, &download).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "image/png");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=remote.png"
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), original);
    let response = get_raw(&bob, &thumbnail).await;
    assert_eq!(response.status(), 200);
    let image = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((image.width(), image.height()), (320, 240));

    // Unknown remote media is the remote server's 404.
    let unknown = format!(
        "/_matrix/client/v1/media/download/{}/nosuchmedia",
        hs1.server_name()
    );
    assert_error(&get_json(&bob, &unknown).await, 404, "M_NOT_FOUND");

    // hs1's federation endpoints answer multipart/mixed to a signed request, 401 without one.
    let services = &hs2.services;
    let hs1_name = ruma::OwnedServerName::try_from(hs1.server_name()).unwrap();
    let media_id = uri.rsplit('/').next().unwrap();
    let answer = services
        .federation
        .request_bytes(
            services.globals.server_name(),
            services.globals.signing_key(),
            &hs1_name,
            &format!(
                "/_matrix/federation/v1/media/thumbnail/{media_id}?width=96&height=96&method=crop"
            ),
            1 << 20,
        )
        .await
        .unwrap();
    assert!(header_value(&answer, "content-type").starts_with("multipart/mixed; boundary="));
    let parsed = <ruma::api::federation::authenticated_media::get_content_thumbnail::v1::Response
        as ruma::api::IncomingResponse>::try_from_http_response(answer)
    .unwrap();
    let ruma::api::federation::authenticated_media::FileOrLocation::File(content) = parsed.content
    else {
        panic!("expected the file inline");
    };
    assert_eq!(content.content_type.as_deref(), Some("image/png"));
    let image = image::load_from_memory(&content.file).unwrap();
    assert_eq!((image.width(), image.height()), (96, 96));
    let unsigned = ca
        .https_client()
        .get(format!(
            "https://{}/_matrix/federation/v1/media/download/{media_id}",
            hs1.server_name()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    // With hs1 gone, hs2 still serves the media and its thumbnail from its cache.
    drop(hs1.stop().await);
    let response = get_raw(&bob, &download).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), original);
    let response = get_raw(&bob, &thumbnail).await;
    assert_eq!(response.status(), 200);
    assert_eq!(hs2.services.media.thumbnails_generated(), 1);
    // The unknown media was the only other fetch.
    assert_eq!(hs2.services.media.remote_fetches(), 2);
}
