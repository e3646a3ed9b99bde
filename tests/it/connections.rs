//! Connections as a hostile client holds them: silent sockets, heads and bodies sent in part,
//! idle keep-alive connections, too many connections from one address, and bodies sent to be
//! read before the credentials are checked. Driven over raw TCP, since an HTTP client would not
//! misbehave.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::common::TestServer;

/// Long enough for any deadline under test to pass on a loaded machine, short enough for a
/// server that never closes to fail the test rather than hang it.
const PATIENCE: Duration = Duration::from_secs(20);

fn address(server: &TestServer) -> std::net::SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the test server listens on an IP address")
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(address(server)).await.unwrap()
}

/// Reads until the server closes the connection; fails when it does not within [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> String {
    let mut received = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await {
        Ok(_) => String::from_utf8_lossy(&received).into_owned(),
        Err(_) => panic!("the server kept {what} open"),
    }
}

/// Reads one response head and the `Content-Length` body that follows it.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the server answers in time")
            .unwrap();
        assert!(read > 0, "the server closed before answering: {text}");
        received.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_half_sent_and_idle_connections_are_closed_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.http_header_timeout_ms = 500;
    })
    .await;
    let mut silent = connect(&server).await;
    let mut half_sent = connect(&server).await;
    half_sent
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n")
        .await
        .unwrap();
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    read_until_closed(&mut silent, "a socket that sent nothing").await;
    read_until_closed(&mut half_sent, "a half-sent request head").await;
    read_until_closed(&mut idle, "an idle keep-alive connection").await;
    // The server still serves.
    let (status, _) = server.client().get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_stalls_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.http_body_timeout_ms = 500;
    })
    .await;
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: plait\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\"",
        )
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("M_UNKNOWN"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_of_one_address_are_closed_and_other_addresses_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.max_connections_per_ip = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&server).await);
    }
    // Each held connection is admitted: it gets answers.
    for stream in &mut held {
        stream
            .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let mut over = connect(&server).await;
    let _ = over
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut over, "a fifth connection from one address").await;
    assert!(
        answer.is_empty(),
        "the fifth connection was served: {answer}"
    );
    // Another address is served meanwhile.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(address(&server)).await.unwrap();
    other
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A closed connection frees its place.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut stream = connect(&server).await;
        let _ = stream
            .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: plait\r\n\r\n")
            .await;
        let mut first = [0u8; 12];
        if tokio::time::timeout(PATIENCE, stream.read_exact(&mut first))
            .await
            .is_ok_and(|read| read.is_ok())
        {
            again = Some(String::from_utf8_lossy(&first).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.as_deref(), Some("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_checked_before_the_body_is_read() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = alice.token.clone().unwrap();
    // No token and a body that is not JSON: the missing token is what is wrong.
    let (status, body) = server
        .client()
        .send_raw(reqwest::Method::POST, "/_matrix/client/v3/createRoom", "{")
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN"))
    );
    // A declared body over the limit, none of it sent: refused at once, with or without a token.
    for (authorization, expected) in [
        (String::new(), "HTTP/1.1 401"),
        (format!("Authorization: Bearer {token}\r\n"), "HTTP/1.1 413"),
    ] {
        let mut stream = connect(&server).await;
        let head = format!(
            "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: plait\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with(expected), "{answer}");
    }
    // Federation routes are not served on the client listener (this server does not federate):
    // a transaction is refused as unknown before its body is read. (A malformed X-Matrix header
    // on the federation listener is refused before the body too: `federation::hostile_federation_input_is_rejected`.)
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"PUT /_matrix/federation/v1/send/1 HTTP/1.1\r\nHost: plait\r\n\
              Authorization: X-Matrix nonsense\r\nContent-Type: application/json\r\n\
              Content-Length: 1\r\n\r\n{",
        )
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
