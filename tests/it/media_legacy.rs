//! The deprecated unauthenticated media endpoints (`/_matrix/media/v3` and `r0` download and
//! thumbnail), served only when `legacy_media_unauthenticated` opens them, and the fetch of
//! another server's media falling back to that server's deprecated endpoint when it does not
//! know the federation media endpoint (checked against a fake origin server on loopback).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use crate::{
    common::{
        assert_error,
        http_stub::{self, Answer},
        ip,
        tls::TestCa,
        TestServer,
    },
    media::{get_json, get_raw, header, image_bytes, mxc_path, upload_ok},
};

/// The sandbox every download is served in.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_media_endpoints_serve_media_only_when_opened() {
    let ca = TestCa::new();
    // hs1 keeps the default (frozen); hs2 opens the deprecated endpoints.
    let hs1 = TestServer::start_federated(ip("127.0.0.2"), &ca, None).await;
    let hs2 = TestServer::start_federated_with(ip("127.0.0.3"), &ca, None, |config| {
        config.legacy_media_unauthenticated = true
    })
    .await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let text = upload_ok(
        &alice,
        b"hello legacy".to_vec(),
        "text/plain",
        Some("notes.txt"),
    )
    .await;
    let picture = upload_ok(
        &alice,
        image_bytes(200, 100, image::ImageFormat::Png),
        "image/png",
        Some("wide.png"),
    )
    .await;

    // Frozen: 404 with or without a token, for media that exists.
    for client in [hs1.client(), alice.clone()] {
        assert_error(
            &get_json(
                &client,
                &format!("/_matrix/media/v3/download/{}", mxc_path(&text)),
            )
            .await,
            404,
            "M_NOT_FOUND",
        );
    }

    // Opened: hs2 serves hs1's media without a token, fetched over federation once, with the
    // headers of the authenticated endpoints. `allow_remote=false` keeps to the cache.
    let anonymous = hs2.client();
    let legacy_text = format!("/_matrix/media/v3/download/{}", mxc_path(&text));
    assert_error(
        &get_json(&anonymous, &format!("{legacy_text}?allow_remote=false")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(hs2.services.media.remote_fetches(), 0);
    let response = get_raw(&anonymous, &legacy_text).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=notes.txt"
    );
    assert_eq!(
        header(&response, "content-security-policy"),
        CONTENT_SECURITY_POLICY
    );
    assert_eq!(
        header(&response, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello legacy");
    let cached = get_raw(&anonymous, &format!("{legacy_text}?allow_remote=false")).await;
    assert_eq!(cached.status(), 200);
    assert_eq!(hs2.services.media.remote_fetches(), 1);

    // A file name in the path, on `r0` too; the same answer with a token.
    let renamed = get_raw(
        &anonymous,
        &format!("/_matrix/media/r0/download/{}/other.txt", mxc_path(&text)),
    )
    .await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(
        header(&renamed, "content-disposition"),
        "inline; filename=other.txt"
    );
    let with_token = get_raw(&bob, &legacy_text).await;
    assert_eq!(with_token.status(), 200);

    // A thumbnail of the remote picture, on `v3` and `r0`.
    for version in ["v3", "r0"] {
        let response = get_raw(
            &anonymous,
            &format!(
                "/_matrix/media/{version}/thumbnail/{}?width=32&height=32&method=crop",
                mxc_path(&picture)
            ),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), "image/png");
        let image = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
        assert_eq!((image.width(), image.height()), (32, 32));
    }

    // Local media: served; a reserved upload not made yet is 504 after `timeout_ms`; an
    // unknown ID is 404.
    let local = upload_ok(&bob, b"local".to_vec(), "text/plain", None).await;
    let response = get_raw(
        &anonymous,
        &format!("/_matrix/media/v3/download/{}", mxc_path(&local)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-disposition"), "inline");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"local");
    let reserved = bob
        .post_ok("/_matrix/media/v1/create", serde_json::json!({}))
        .await;
    let reserved = reserved["content_uri"].as_str().unwrap();
    assert_error(
        &get_json(
            &anonymous,
            &format!(
                "/_matrix/media/v3/download/{}?timeout_ms=0",
                mxc_path(reserved)
            ),
        )
        .await,
        504,
        "M_NOT_YET_UPLOADED",
    );
    assert_error(
        &get_json(
            &anonymous,
            &format!(
                "/_matrix/media/v3/download/{}/nosuchmedia",
                hs2.server_name()
            ),
        )
        .await,
        404,
        "M_NOT_FOUND",
    );

    // The authenticated endpoints still want a token.
    assert_error(
        &get_json(
            &anonymous,
            &format!("/_matrix/client/v1/media/download/{}", mxc_path(&local)),
        )
        .await,
        401,
        "M_MISSING_TOKEN",
    );
}

/// A federation listener on 127.0.0.4 with a certificate from `ca` that answers each request
/// with `answer(path and query)` and records the paths; it checks no signatures. Returns its
/// server name and the recorded paths.
async fn fake_origin(ca: &TestCa, answer: fn(&str) -> Answer) -> (String, Arc<Mutex<Vec<String>>>) {
    let address = ip("127.0.0.4");
    let acceptor = ca.acceptor(address);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(address, 0))
        .await
        .unwrap();
    let server_name = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                http_stub::serve_one(stream, |path| {
                    recorded.lock().unwrap().push(path.to_owned());
                    answer(path)
                })
                .await;
            });
        }
    });
    (server_name, requests)
}

/// The fake origin: `old` is known only on the deprecated endpoint (the new one answers as an
/// unknown endpoint does), `plain` is answered by the new endpoint as the bare file, and
/// `gone` is unknown (a Matrix `404 M_NOT_FOUND`).
fn origin_answer(path: &str) -> Answer {
    let json = "content-type: application/json\r\n".to_owned();
    if path.starts_with("/_matrix/federation/v1/media/download/old?") {
        return (
            "404 Not Found",
            json,
            br#"{"errcode":"M_UNRECOGNIZED","error":"unrecognized request"}"#.to_vec(),
        );
    }
    if path.starts_with("/_matrix/federation/v1/media/download/plain?") {
        return (
            "200 OK",
            "content-type: text/plain\r\ncontent-disposition: inline; filename=plain.txt\r\n"
                .into(),
            b"a bare file".to_vec(),
        );
    }
    if path.starts_with("/_matrix/media/v3/download/") && path.contains("/old?") {
        return (
            "200 OK",
            "content-type: text/plain\r\ncontent-disposition: attachment; filename=old.txt\r\n"
                .into(),
            b"from the deprecated endpoint".to_vec(),
        );
    }
    (
        "404 Not Found",
        json,
        br#"{"errcode":"M_NOT_FOUND","error":"no such media"}"#.to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_media_falls_back_to_the_deprecated_endpoint_of_an_older_server() {
    let ca = TestCa::new();
    let (origin, requests) = fake_origin(&ca, origin_answer).await;
    let server = TestServer::start_federated(ip("127.0.0.2"), &ca, None).await;
    let alice = server.register("alice").await;
    let download =
        |media_id: &str| format!("/_matrix/client/v1/media/download/{origin}/{media_id}");

    // Not known on the federation media endpoint: asked on the deprecated one, without remote
    // fetching on its side.
    let response = get_raw(&alice, &download("old")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=old.txt"
    );
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        b"from the deprecated endpoint"
    );
    let asked = requests.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].starts_with("/_matrix/federation/v1/media/download/old?"));
    assert!(
        asked[1].starts_with(&format!("/_matrix/media/v3/download/{origin}/old?"))
            && asked[1].contains("allow_remote=false"),
        "{asked:?}"
    );

    // The bare file on the federation media endpoint is taken as it is.
    let response = get_raw(&alice, &download("plain")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=plain.txt"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"a bare file");

    // A Matrix 404 is the answer: no second request.
    requests.lock().unwrap().clear();
    assert_error(
        &get_json(&alice, &download("gone")).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(requests.lock().unwrap().len(), 1);
}
