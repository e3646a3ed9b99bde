//! Either server killed with SIGKILL in the middle of a conversation with Synapse, and started
//! again on its database: every message either side acknowledged is then visible on both, with
//! Plait and with Synapse as the room's creator.
//!
//! What makes each side retry at once instead of after its back-off: Synapse clears the back-off
//! of a destination, and sends what it kept for it, as soon as that server sends it any request
//! it can authenticate (in Synapse 1.163, `Authenticator.authenticate_request` →
//! `reset_retry_timings` → `notify_remote_server_up`); Plait does the same for any signed
//! request (`Sending::heard_from`, called from `http/x_matrix.rs`). So after Plait restarts, the
//! first transaction it sends wakes Synapse's queue for it; after Synapse restarts, a signed
//! profile query from Synapse wakes Plait's.

use std::{net::IpAddr, time::Duration};

use serde_json::{json, Value};

use crate::common::{enc, plait_process::PlaitProcess, synapse::Synapse, tls::TestCa, Client};

/// A Plait process and a Synapse sharing a room: `alice` on Plait, `bob` on Synapse.
pub struct Sides {
    pub plait: PlaitProcess,
    pub synapse: Synapse,
    pub alice: Client,
    pub bob: Client,
    pub room: String,
}

impl Sides {
    /// Both servers' recent logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.plait.log_tail(40), self.synapse.log_tail(40))
    }
}

/// Starts both servers, registers alice and bob, and has one create a public room that the other
/// joins; one message each way shows that federation works both ways before anything is killed.
pub async fn meet(plait_ip: &str, synapse_ip: &str, plait_creates: bool) -> Sides {
    let ca = TestCa::new();
    let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
    let (plait, synapse) = tokio::join!(
        PlaitProcess::start(ip(plait_ip), &ca),
        Synapse::start(ip(synapse_ip), &ca)
    );
    let alice = plait.register("alice").await;
    let (_, bob_token) = synapse.register("bob", "password").await;
    let bob = synapse.client(Some(&bob_token));
    let (creator, joiner, via) = match plait_creates {
        true => (&alice, &bob, plait.server_name()),
        false => (&bob, &alice, synapse.server_name().to_owned()),
    };
    let room = creator
        .create_room(json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = joiner
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(&via)
            ),
            json!({}),
        )
        .await;
    let sides = Sides {
        plait,
        synapse,
        alice,
        bob,
        room,
    };
    assert_eq!(status, 200, "{body}\n{}", sides.logs());
    let hello = ["hello from plait".to_owned()];
    sides.alice.send_text(&sides.room, "hello", &hello[0]).await;
    wait_for_texts(&sides.bob, &sides, "Synapse", &hello).await;
    let hello = ["hello from synapse".to_owned()];
    send(&sides.bob, &sides, "hello", &hello[0]).await;
    wait_for_texts(&sides.alice, &sides, "Plait", &hello).await;
    sides
}

/// Sends a text message, failing with both logs if the server does not acknowledge it.
pub async fn send(client: &Client, sides: &Sides, txn: &str, text: &str) -> String {
    let (status, body) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(&sides.room)
            ),
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", sides.logs());
    body["event_id"].as_str().unwrap().to_owned()
}

/// The message bodies of the room as `client` sees them paginating back from the newest event.
async fn texts(client: &Client, room: &str) -> Vec<String> {
    let (status, page) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
            enc(room)
        ))
        .await;
    if status != 200 {
        return Vec::new();
    }
    page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == "m.room.message")
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Polls until every text of `expected` is a message `client` sees in the room; fails after a
/// minute (a retry that waits out a back-off may take that long) naming the missing ones.
pub async fn wait_for_texts(client: &Client, sides: &Sides, server: &str, expected: &[String]) {
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen = texts(client, &sides.room).await;
        if expected.iter().all(|text| seen.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|text| !seen.contains(text))
        .collect();
    panic!(
        "{server} never showed {missing:?}; it has {seen:?}\n{}",
        sides.logs()
    );
}

/// Plait is killed right after acknowledging alice's messages (so some may still be queued),
/// Synapse's user keeps talking while Plait is down, and Plait restarts on its database.
async fn plait_killed_mid_conversation(sides: &mut Sides) -> Vec<String> {
    let mut expected = Vec::new();
    for index in 0..3 {
        let text = format!("plait, just before the kill {index}");
        sides
            .alice
            .send_text(&sides.room, &format!("pk{index}"), &text)
            .await;
        expected.push(text);
    }
    sides.plait.kill();
    for index in 0..3 {
        let text = format!("synapse, while plait is down {index}");
        send(&sides.bob, sides, &format!("pd{index}"), &text).await;
        expected.push(text);
    }
    // Plait restarts in about a second, within the retries of one Synapse transaction; stay
    // down until Synapse has given up and backs off from Plait, so that what it sent while
    // Plait was down comes through its catch-up (only the room's newest event is sent, and
    // Plait fetches the ones before it with /get_missing_events).
    wait_until_synapse_backs_off_from_plait(sides).await;
    sides.plait.restart().await;
    // The conversation goes on: Plait's next transaction is the signed request after which
    // Synapse retries Plait at once, and alice's message may be the only thing queued.
    let text = "plait, after its restart".to_owned();
    sides.alice.send_text(&sides.room, "pr", &text).await;
    expected.push(text);
    wait_for_texts(&sides.alice, sides, "Plait", &expected).await;
    wait_for_texts(&sides.bob, sides, "Synapse", &expected).await;
    expected
}

/// Polls Synapse's admin API until it has marked Plait as down (a retry time is set).
async fn wait_until_synapse_backs_off_from_plait(sides: &Sides) {
    let (_, token) = sides
        .synapse
        .register_admin("admin", "admin password")
        .await;
    let admin = sides.synapse.client(Some(&token));
    let path = format!(
        "/_synapse/admin/v1/federation/destinations/{}",
        enc(&sides.plait.server_name())
    );
    let mut last = Value::Null;
    for _ in 0..600 {
        let (status, body) = admin.get(&path).await;
        if status == 200 && body["retry_last_ts"].as_u64().is_some_and(|ts| ts > 0) {
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "Synapse never backed off from Plait; last answer {last}\n{}",
        sides.logs()
    );
}

/// Synapse is killed right after acknowledging bob's messages, alice keeps talking while it is
/// down (Plait keeps her messages queued and backs off), and Synapse restarts on its database.
async fn synapse_killed_mid_conversation(sides: &mut Sides) -> Vec<String> {
    let mut expected = Vec::new();
    for index in 0..3 {
        let text = format!("synapse, just before the kill {index}");
        send(&sides.bob, sides, &format!("sk{index}"), &text).await;
        expected.push(text);
    }
    sides.synapse.kill();
    for index in 0..3 {
        let text = format!("plait, while synapse is down {index}");
        sides
            .alice
            .send_text(&sides.room, &format!("sd{index}"), &text)
            .await;
        expected.push(text);
    }
    sides.synapse.restart().await;
    // Bob looks alice up: Synapse asks Plait over federation with a signed request, which is
    // what tells Plait's sender that Synapse is back (no transaction from Synapse needed).
    let alice_id = sides.alice.user_id().await;
    let (status, profile) = sides
        .bob
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&alice_id)))
        .await;
    assert_eq!(status, 200, "{profile}\n{}", sides.logs());
    wait_for_texts(&sides.bob, sides, "Synapse", &expected).await;
    wait_for_texts(&sides.alice, sides, "Plait", &expected).await;
    let text = "synapse, after its restart".to_owned();
    send(&sides.bob, sides, "sr", &text).await;
    expected.push(text);
    wait_for_texts(&sides.alice, sides, "Plait", &expected).await;
    expected
}

/// Runs both outages in one room and checks that, in the end, both servers show every message
/// of the whole conversation.
async fn both_outages(plait_ip: &str, synapse_ip: &str, plait_creates: bool) {
    let mut sides = meet(plait_ip, synapse_ip, plait_creates).await;
    let mut expected = plait_killed_mid_conversation(&mut sides).await;
    expected.extend(synapse_killed_mid_conversation(&mut sides).await);
    for (server, client) in [("Plait", &sides.alice), ("Synapse", &sides.bob)] {
        let seen = texts(client, &sides.room).await;
        let lost: Vec<&String> = expected
            .iter()
            .filter(|text| !seen.contains(text))
            .collect();
        assert!(lost.is_empty(), "{server} lost {lost:?}: {seen:?}");
        // Each message exactly once: no retry after a restart stored one twice.
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seen.len(),
            "{server} shows a message twice: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_outages_lose_nothing_in_a_plait_room() {
    both_outages("127.0.0.40", "127.0.0.41", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_outages_lose_nothing_in_a_synapse_room() {
    both_outages("127.0.0.42", "127.0.0.43", false).await;
}
