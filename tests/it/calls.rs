//! Calls: TURN credentials checked by a real coturn (Debian's `coturn`, installed with apt-get
//! when missing), MatrixRTC transport discovery, and the call history built from real
//! `m.call.*` and `m.call.member` sequences on one server and across two; call invites ring.

use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

use crate::{
    common::{assert_error, enc, Client, TestServer},
    federation::{join_via, two_servers, wait_for_event, wait_for_invite},
};

const CALLS: &str = "/_plait/client/v1/calls";
const TURN: &str = "/_matrix/client/v3/voip/turnServer";

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `turnserver` is there, installing Debian's `coturn` when it is not.
fn coturn_installed() -> bool {
    crate::common::debian::installed("turnserver", "coturn")
}

/// MD5 (RFC 1321), for the long-term credential key of STUN's MESSAGE-INTEGRITY; no crate of
/// the lock file has it.
fn md5(input: &[u8]) -> [u8; 16] {
    const SHIFTS: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let constants: Vec<u32> = (0..64)
        .map(|index| ((f64::from(index) + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut state = [0x6745_2301_u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut message = input.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((input.len() as u64) * 8).to_le_bytes());
    for chunk in message.chunks(64) {
        let words: Vec<u32> = chunk
            .chunks(4)
            .map(|word| u32::from_le_bytes(word.try_into().unwrap()))
            .collect();
        let [mut a, mut b, mut c, mut d] = state;
        for round in 0..64 {
            let (mix, word) = match round / 16 {
                0 => ((b & c) | (!b & d), round),
                1 => ((d & b) | (!d & c), (5 * round + 1) % 16),
                2 => (b ^ c ^ d, (3 * round + 5) % 16),
                _ => (c ^ (b | !d), (7 * round) % 16),
            };
            let sum = mix
                .wrapping_add(a)
                .wrapping_add(constants[round])
                .wrapping_add(words[word]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(sum.rotate_left(SHIFTS[(round / 16) * 4 + round % 4]));
        }
        for (value, add) in state.iter_mut().zip([a, b, c, d]) {
            *value = value.wrapping_add(add);
        }
    }
    let mut digest = [0; 16];
    for (index, value) in state.iter().enumerate() {
        digest[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
    }
    digest
}

fn stun_attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut attribute = kind.to_be_bytes().to_vec();
    attribute.extend_from_slice(&(value.len() as u16).to_be_bytes());
    attribute.extend_from_slice(value);
    attribute.resize(attribute.len() + (4 - value.len() % 4) % 4, 0);
    attribute
}

/// A TURN Allocate request (RFC 5766) with `attributes`, and MESSAGE-INTEGRITY under `key`.
fn allocate_request(attributes: &[Vec<u8>], key: Option<&[u8]>) -> Vec<u8> {
    let mut body: Vec<u8> = attributes.concat();
    let header = |length: usize| {
        let mut header = 0x0003_u16.to_be_bytes().to_vec();
        header.extend_from_slice(&(length as u16).to_be_bytes());
        header.extend_from_slice(&0x2112_A442_u32.to_be_bytes());
        header.extend_from_slice(b"plaittxn0001");
        header
    };
    if let Some(key) = key {
        let mut signed = header(body.len() + 24);
        signed.extend_from_slice(&body);
        let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
        mac.update(&signed);
        body.extend(stun_attribute(0x0008, &mac.finalize().into_bytes()));
    }
    let mut request = header(body.len());
    request.extend_from_slice(&body);
    request
}

/// A STUN response's type and attributes.
fn parse_stun(packet: &[u8]) -> (u16, Vec<(u16, Vec<u8>)>) {
    let kind = u16::from_be_bytes([packet[0], packet[1]]);
    let length = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let mut attributes = Vec::new();
    let mut at = 20;
    while at < 20 + length {
        let attribute = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let size = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        attributes.push((attribute, packet[at + 4..at + 4 + size].to_vec()));
        at += 4 + size + (4 - size % 4) % 4;
    }
    (kind, attributes)
}

/// Runs the long-term credential exchange of an Allocate: the server's 401 with realm and
/// nonce, then the signed request. Returns whether the allocation succeeded (0x0103).
fn allocate(server: std::net::SocketAddr, username: &str, password: &str) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let transport = stun_attribute(0x0019, &[17, 0, 0, 0]);
    let mut packet = [0; 2048];
    socket
        .send_to(
            &allocate_request(std::slice::from_ref(&transport), None),
            server,
        )
        .unwrap();
    let size = socket.recv(&mut packet).unwrap();
    let (kind, attributes) = parse_stun(&packet[..size]);
    assert_eq!(kind, 0x0113, "an unauthenticated Allocate is refused");
    let find = |wanted: u16| {
        attributes
            .iter()
            .find(|(kind, _)| *kind == wanted)
            .map(|(_, value)| value.clone())
            .unwrap()
    };
    let (realm, nonce) = (find(0x0014), find(0x0015));
    let mut key_input = format!("{username}:").into_bytes();
    key_input.extend_from_slice(&realm);
    key_input.extend_from_slice(format!(":{password}").as_bytes());
    let key = md5(&key_input);
    let signed = allocate_request(
        &[
            transport,
            stun_attribute(0x0006, username.as_bytes()),
            stun_attribute(0x0014, &realm),
            stun_attribute(0x0015, &nonce),
        ],
        Some(&key),
    );
    socket.send_to(&signed, server).unwrap();
    let size = socket.recv(&mut packet).unwrap();
    parse_stun(&packet[..size]).0 == 0x0103
}

fn turn_password(secret: &str, username: &str) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn turn_credentials_from_plait_allocate_on_a_real_coturn_and_altered_or_expired_ones_fail() {
    assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        hex(&md5(b"The quick brown fox jumps over the lazy dog")),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    // Without TURN configured: `{}`; without a token: 401.
    let plain = TestServer::start().await;
    let alice = plain.register("alice").await;
    assert_eq!(alice.get_ok(TURN).await, json!({}));
    assert_error(&plain.client().get(TURN).await, 401, "M_MISSING_TOKEN");
    // Guests are denied, so none can hold a token to ask for TURN: their registration is
    // refused and no account is made.
    let guest = plain
        .client()
        .post(
            "/_matrix/client/v3/register?kind=guest",
            json!({ "initial_device_display_name": "guest" }),
        )
        .await;
    assert_error(&guest, 403, "M_GUEST_ACCESS_FORBIDDEN");
    plain.stop().await;

    if !tokio::task::spawn_blocking(coturn_installed).await.unwrap() {
        eprintln!("SKIPPED the coturn part: Debian's `coturn` package could not be installed");
        return;
    }
    let secret = "a shared secret";
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let _coturn = Coturn(
        Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
            ])
            .args(["--realm=plait.test", "--no-tls", "--no-dtls", "--no-cli"])
            .arg(format!("--pidfile={}", dir.path().join("pid").display()))
            .arg(format!("--log-file={}", dir.path().join("log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver"),
    );
    let dir_db = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir_db.path(), |config| {
        config.turn_uris = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
        config.turn_shared_secret = Some(secret.to_owned());
        config.turn_ttl_ms = 600_000;
    })
    .await;
    let alice = server.register("alice").await;
    let alice_id = alice.user_id().await;
    let answer = alice.get_ok(TURN).await;
    assert_eq!(answer["ttl"], 600, "{answer}");
    assert_eq!(
        answer["uris"],
        json!([format!("turn:127.0.0.1:{port}?transport=udp")])
    );
    let username = answer["username"].as_str().unwrap().to_owned();
    let password = answer["password"].as_str().unwrap().to_owned();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice_id);
    let expiry: u64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );

    let turn = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let accepted = tokio::task::spawn_blocking(move || {
        // coturn needs a moment to listen.
        let started = Instant::now();
        loop {
            match std::panic::catch_unwind(|| allocate(turn, &username, &password)) {
                Ok(accepted) => break (accepted, username, password),
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => std::panic::resume_unwind(error),
            }
        }
    })
    .await
    .unwrap();
    let (allocated, username, password) = accepted;
    assert!(allocated, "coturn refused Plait's credentials");
    let checks = tokio::task::spawn_blocking(move || {
        let altered_password = allocate(turn, &username, &format!("{password}x"));
        let altered_user = allocate(turn, &username.replace("@alice", "@mallory"), &password);
        let expired_name = format!("{}:{user}", now - 10, user = alice_id);
        let expired = allocate(turn, &expired_name, &turn_password(secret, &expired_name));
        (altered_password, altered_user, expired)
    })
    .await
    .unwrap();
    assert_eq!(
        checks,
        (false, false, false),
        "altered or expired credentials were accepted"
    );
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn rtc_transports_and_well_known_foci_come_from_config_and_new_rooms_let_members_join_calls()
{
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), |config| {
        config.rtc_livekit_service_urls = vec!["https://livekit-jwt.example.org".to_owned()];
    })
    .await;
    let alice = server.register("alice").await;
    let focus =
        json!([{"type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org"}]);
    let transports = alice
        .get_ok("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
        .await;
    assert_eq!(transports["rtc_transports"], focus);
    let well_known = server.client().get_ok("/.well-known/matrix/client").await;
    assert_eq!(well_known["org.matrix.msc4143.rtc_foci"], focus);
    assert!(
        well_known["m.homeserver"]["base_url"].is_string(),
        "{well_known}"
    );
    let room = alice.create_room(json!({})).await;
    let levels = alice
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&room)
        ))
        .await;
    for event_type in [
        "m.call.member",
        "org.matrix.msc3401.call.member",
        "m.rtc.member",
    ] {
        assert_eq!(levels["events"][event_type], 0, "{levels}");
    }
    server.stop().await;
    let plain = TestServer::start().await;
    let well_known = plain.client().get_ok("/.well-known/matrix/client").await;
    assert!(
        well_known.get("org.matrix.msc4143.rtc_foci").is_none(),
        "{well_known}"
    );
    plain.stop().await;
}

/// Sends a call event; returns its event ID.
async fn call_event(client: &Client, room: &str, event_type: &str, content: Value) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let txn = format!("call{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/{event_type}/{txn}",
        enc(room)
    );
    client.put_ok(&path, content).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn invite(call_id: &str, video: bool) -> Value {
    let media = if video {
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    } else {
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    };
    json!({
        "call_id": call_id, "party_id": "ALICEDEVICE", "version": "1", "lifetime": 60_000,
        "offer": {"type": "offer", "sdp": format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n{media}")},
    })
}

fn answer(call_id: &str) -> Value {
    json!({"call_id": call_id, "party_id": "BOBDEVICE", "version": "1",
        "answer": {"type": "answer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}})
}

fn hangup(call_id: &str, party: &str, reason: &str) -> Value {
    json!({"call_id": call_id, "party_id": party, "version": "1", "reason": reason})
}

async fn event_ts(client: &Client, room: &str, event_id: &str) -> u64 {
    client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event_id)
        ))
        .await["origin_server_ts"]
        .as_u64()
        .unwrap()
}

/// The user's calls by call ID.
async fn call_log(client: &Client) -> std::collections::HashMap<String, Value> {
    let page = client.get_ok(&format!("{CALLS}?limit=100")).await;
    page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| (call["call_id"].as_str().unwrap().to_owned(), call.clone()))
        .collect()
}

#[tokio::test]
async fn the_call_log_shows_completed_missed_declined_and_ongoing_calls_to_both_sides() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_id = bob.user_id().await;
    let alice_id = alice.user_id().await;
    let room = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob_id], "is_direct": true}),
        )
        .await;
    bob.join(&room).await;

    call_event(&alice, &room, "m.call.invite", invite("completed", true)).await;
    let answered = call_event(&bob, &room, "m.call.answer", answer("completed")).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let hung_up = call_event(
        &alice,
        &room,
        "m.call.hangup",
        hangup("completed", "ALICEDEVICE", "user_hangup"),
    )
    .await;
    let talked = event_ts(&alice, &room, &hung_up).await - event_ts(&alice, &room, &answered).await;
    assert!(talked >= 1_200, "{talked}");

    call_event(&alice, &room, "m.call.invite", invite("missed", false)).await;
    call_event(
        &alice,
        &room,
        "m.call.hangup",
        hangup("missed", "ALICEDEVICE", "invite_timeout"),
    )
    .await;
    call_event(&alice, &room, "m.call.invite", invite("declined", false)).await;
    call_event(
        &bob,
        &room,
        "m.call.reject",
        json!({"call_id": "declined", "party_id": "BOBDEVICE", "version": "1"}),
    )
    .await;
    call_event(&alice, &room, "m.call.invite", invite("ongoing", false)).await;
    call_event(&bob, &room, "m.call.answer", answer("ongoing")).await;

    for (client, direction) in [(&alice, "outgoing"), (&bob, "incoming")] {
        let log = call_log(client).await;
        assert_eq!(log.len(), 4, "{log:?}");
        let completed = &log["completed"];
        assert_eq!(completed["outcome"], "completed");
        assert_eq!(completed["type"], "video");
        assert_eq!(completed["duration_ms"], talked, "{completed}");
        assert_eq!(completed["direction"], direction);
        assert_eq!(completed["caller"], alice_id.as_str());
        assert_eq!(completed["callees"], json!([bob_id]));
        assert_eq!(completed["room_id"], room.as_str());
        assert_eq!(log["missed"]["outcome"], "missed");
        assert_eq!(log["missed"]["type"], "voice");
        assert_eq!(log["declined"]["outcome"], "declined");
        assert_eq!(log["ongoing"]["outcome"], "ongoing");
        assert!(log["ongoing"]["end_ts"].is_null());
    }
    // Newest first, one per page, and the pages chain.
    let first = alice.get_ok(&format!("{CALLS}?limit=1")).await;
    assert_eq!(first["calls"][0]["call_id"], "ongoing");
    let token = first["next_batch"].as_str().unwrap();
    let second = alice.get_ok(&format!("{CALLS}?limit=1&from={token}")).await;
    assert_eq!(second["calls"][0]["call_id"], "declined");
    assert_error(
        &alice.get(&format!("{CALLS}?from=not-a-token")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.get(&format!("{CALLS}?limit=many")).await,
        400,
        "M_INVALID_PARAM",
    );
    // A user who joins later sees none of them (history before the join, "shared" aside: they
    // were not members when the calls started).
    let carol = server.register("carol").await;
    assert!(call_log(&carol).await.is_empty());
    server.stop().await;
}

/// Only calls whose first event the user may see are listed: an invite naming a user who was
/// only invited to a room with `joined` history visibility is indexed for them, but hidden
/// from them, before their join and after it.
#[tokio::test]
async fn the_call_log_lists_only_calls_the_user_may_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (bob_id, carol_id) = (bob.user_id().await, carol.user_id().await);
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "invite": [bob_id, carol_id],
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "joined"}}],
        }))
        .await;
    bob.join(&room).await;
    // Carol is only invited: the call names her, and she may not see it.
    let ring_carol = json!({"call_id": "to-carol", "lifetime": 60000, "version": "1",
        "party_id": "ALICEDEVICE", "invitee": carol_id,
        "offer": {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}});
    call_event(&alice, &room, "m.call.invite", ring_carol).await;
    call_event(&alice, &room, "m.call.invite", invite("to-bob", false)).await;
    assert_eq!(call_log(&bob).await.len(), 2);
    assert!(
        call_log(&carol).await.is_empty(),
        "{:?}",
        call_log(&carol).await
    );
    // Once joined, carol still may not see what was sent before her join.
    carol.join(&room).await;
    assert!(call_log(&carol).await.is_empty());
    server.stop().await;
}

async fn set_member(client: &Client, room: &str, state_key: &str, content: Value) -> String {
    client
        .put_ok(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/org.matrix.msc3401.call.member/{}",
                enc(room),
                enc(state_key)
            ),
            content,
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_group_call_lists_its_participants_with_their_durations() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;
    let (alice_id, bob_id) = (alice.user_id().await, bob.user_id().await);
    let membership = |device: &str| {
        json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": device,
            "m.call.intent": "audio", "focus_active": {"type": "livekit"}})
    };
    let (alice_key, bob_key) = (format!("_{alice_id}_A"), format!("_{bob_id}_B"));
    let alice_in = set_member(&alice, &room, &alice_key, membership("A")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_in = set_member(&bob, &room, &bob_key, membership("B")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let bob_out = set_member(&bob, &room, &bob_key, json!({})).await;
    let ongoing = call_log(&alice).await;
    assert_eq!(ongoing[""]["outcome"], "ongoing", "{ongoing:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alice_out = set_member(&alice, &room, &alice_key, json!({})).await;
    let ts = |event: String| {
        let alice = alice.clone();
        let room = room.clone();
        async move { event_ts(&alice, &room, &event).await }
    };
    let (alice_in, bob_in, bob_out, alice_out) = (
        ts(alice_in).await,
        ts(bob_in).await,
        ts(bob_out).await,
        ts(alice_out).await,
    );
    for client in [&alice, &bob] {
        let log = call_log(client).await;
        let call = &log[""];
        assert_eq!(call["group"], true, "{call}");
        assert_eq!(call["outcome"], "completed", "{call}");
        assert_eq!(call["type"], "voice");
        assert_eq!(call["caller"], alice_id.as_str());
        assert_eq!(call["duration_ms"], alice_out - alice_in);
        let participants = call["participants"].as_array().unwrap();
        assert_eq!(participants.len(), 2, "{call}");
        assert_eq!(participants[0]["user_id"], alice_id.as_str());
        assert_eq!(participants[0]["duration_ms"], alice_out - alice_in);
        assert_eq!(participants[1]["user_id"], bob_id.as_str());
        assert_eq!(participants[1]["duration_ms"], bob_out - bob_in);
    }
    // Carol was in the room and never joined the call: missed for her.
    assert_eq!(call_log(&carol).await[""]["outcome"], "missed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_with_a_user_on_another_server_is_in_both_logs() {
    let (_ca, hs1, hs2) = two_servers().await;
    let alice = hs1.register("alice").await;
    let bob = hs2.register("bob").await;
    let bob_id = bob.user_id().await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob_id }),
        )
        .await;
    wait_for_invite(&bob, &room).await;
    join_via(&bob, &room, &hs1).await;
    wait_for_event(&alice, &room, "bob's join", |event| {
        event["type"] == "m.room.member" && event["state_key"] == bob_id.as_str()
    })
    .await;
    call_event(&alice, &room, "m.call.invite", invite("across", true)).await;
    wait_for_event(&bob, &room, "the call invite", |event| {
        event["type"] == "m.call.invite"
    })
    .await;
    let answered = call_event(&bob, &room, "m.call.answer", answer("across")).await;
    wait_for_event(&alice, &room, "the answer", |event| {
        event["type"] == "m.call.answer"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hung_up = call_event(
        &alice,
        &room,
        "m.call.hangup",
        hangup("across", "ALICEDEVICE", "user_hangup"),
    )
    .await;
    wait_for_event(&bob, &room, "the hangup", |event| {
        event["type"] == "m.call.hangup"
    })
    .await;
    let talked = event_ts(&alice, &room, &hung_up).await - event_ts(&alice, &room, &answered).await;
    for (client, direction) in [(&alice, "outgoing"), (&bob, "incoming")] {
        let log = call_log(client).await;
        let call = &log["across"];
        assert_eq!(call["outcome"], "completed", "{call}");
        assert_eq!(call["direction"], direction);
        assert_eq!(call["duration_ms"], talked, "{call}");
        assert_eq!(call["type"], "video");
    }
    hs1.stop().await;
    hs2.stop().await;
}

#[tokio::test]
async fn a_call_invite_rings_the_callee_through_the_call_push_rule() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let invite_id = call_event(&alice, &room, "m.call.invite", invite("ring", false)).await;
    let list = bob.get_ok("/_matrix/client/v3/notifications").await;
    let rung = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|notification| notification["event"]["event_id"] == invite_id.as_str())
        .unwrap_or_else(|| panic!("no notification for the call invite: {list}"));
    let actions = rung["actions"].as_array().unwrap();
    assert!(actions.contains(&json!("notify")), "{rung}");
    assert!(
        actions.contains(&json!({"set_tweak": "sound", "value": "ring"})),
        "{rung}"
    );
    server.stop().await;
}
