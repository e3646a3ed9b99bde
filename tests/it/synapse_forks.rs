//! Concurrent state changes between Plait and Synapse: both change the power levels and the
//! topic while cut off from each other, and once the servers meet again both resolve the fork to
//! the same state, with Plait and with Synapse as the room's creator.
//!
//! The fork is made by outages, not by timing: Synapse is killed before alice's changes, and
//! Plait is killed before Synapse restarts for bob's, so each change has only the shared power
//! levels before it and neither server saw the other's. Plait restarting sends its queued
//! changes; that signed transaction makes Synapse retry Plait at once (see `synapse_outages`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    common::{enc, Client},
    synapse_outages::{meet, send, wait_for_texts, Sides},
};

/// The room's current state as sorted `(type, state_key, event_id)` triples.
async fn state_ids(client: &Client, sides: &Sides) -> Vec<(String, String, String)> {
    let (status, state) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state",
            enc(&sides.room)
        ))
        .await;
    assert_eq!(status, 200, "{state}\n{}", sides.logs());
    let field = |event: &Value, name: &str| event[name].as_str().unwrap_or_default().to_owned();
    let mut ids: Vec<_> = state
        .as_array()
        .into_iter()
        .flatten()
        .map(|event| {
            (
                field(event, "type"),
                field(event, "state_key"),
                field(event, "event_id"),
            )
        })
        .collect();
    ids.sort();
    ids
}

/// Puts a state event and returns its ID, failing with both logs otherwise.
async fn put_state(client: &Client, sides: &Sides, kind: &str, content: Value) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/{kind}/",
        enc(&sides.room)
    );
    let (status, body) = client.put(&path, content).await;
    assert_eq!(status, 200, "{kind}: {body}\n{}", sides.logs());
    body["event_id"].as_str().unwrap().to_owned()
}

/// Polls `/event` until `client`'s server has the event.
async fn wait_for_event_id(client: &Client, sides: &Sides, server: &str, event_id: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&sides.room),
        enc(event_id)
    );
    let mut last = Value::Null;
    for _ in 0..600 {
        let (status, body) = client.get(&path).await;
        if status == 200 {
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{server} never got {event_id}; last answer {last}\n{}",
        sides.logs()
    );
}

async fn fork_resolves_identically(plait_ip: &str, synapse_ip: &str, plait_creates: bool) {
    let mut sides = meet(plait_ip, synapse_ip, plait_creates).await;
    let alice_id = sides.alice.user_id().await;
    let bob_id = sides.bob.user_id().await;
    let (creator, other, other_id) = match plait_creates {
        true => (&sides.alice, &sides.bob, &bob_id),
        false => (&sides.bob, &sides.alice, &alice_id),
    };
    // The one who did not create the room may change the power levels and the topic too.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(&sides.room)
    );
    let mut base = creator.get_ok(&path).await;
    base["users"][other_id] = json!(50);
    base["events"]["m.room.power_levels"] = json!(50);
    base["events"]["m.room.topic"] = json!(50);
    base["invite"] = json!(0);
    base["events_default"] = json!(0);
    let base_id = put_state(creator, &sides, "m.room.power_levels", base.clone()).await;
    wait_for_event_id(other, &sides, "the other server", &base_id).await;

    sides.synapse.kill();
    let mut by_alice = base.clone();
    by_alice["events_default"] = json!(10);
    let alice_power = put_state(&sides.alice, &sides, "m.room.power_levels", by_alice).await;
    let topic = json!({ "topic": "alice's topic" });
    let alice_topic = put_state(&sides.alice, &sides, "m.room.topic", topic).await;
    sides.plait.kill();
    sides.synapse.restart().await;
    let mut by_bob = base.clone();
    by_bob["invite"] = json!(20);
    let bob_power = put_state(&sides.bob, &sides, "m.room.power_levels", by_bob).await;
    let topic = json!({ "topic": "bob's topic" });
    let bob_topic = put_state(&sides.bob, &sides, "m.room.topic", topic).await;
    sides.plait.restart().await;

    for event_id in [&alice_power, &alice_topic, &bob_power, &bob_topic] {
        wait_for_event_id(&sides.alice, &sides, "Plait", event_id).await;
        wait_for_event_id(&sides.bob, &sides, "Synapse", event_id).await;
    }
    // A message from each side merges the fork: its prev events are both servers' last events.
    let merged = [
        "merging at plait".to_owned(),
        "merging at synapse".to_owned(),
    ];
    sides
        .alice
        .send_text(&sides.room, "merge", &merged[0])
        .await;
    wait_for_texts(&sides.bob, &sides, "Synapse", &merged[..1]).await;
    send(&sides.bob, &sides, "merge", &merged[1]).await;
    wait_for_texts(&sides.alice, &sides, "Plait", &merged).await;

    let mut on_plait = state_ids(&sides.alice, &sides).await;
    let mut on_synapse = state_ids(&sides.bob, &sides).await;
    for _ in 0..100 {
        if on_plait == on_synapse {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        on_plait = state_ids(&sides.alice, &sides).await;
        on_synapse = state_ids(&sides.bob, &sides).await;
    }
    assert_eq!(
        on_plait,
        on_synapse,
        "the resolved state differs (left Plait, right Synapse)\n{}",
        sides.logs()
    );
    // State resolution v2 applies the power-level changes in order of their senders' power, the
    // creator's first, so the other user's change (allowed on top of the creator's) wins; the
    // topics follow the power levels' mainline, so the other user's topic, authorised by the
    // winning power levels, wins too.
    let (winning_power, winning_topic) = match plait_creates {
        true => (&bob_power, &bob_topic),
        false => (&alice_power, &alice_topic),
    };
    let current = |kind: &str| {
        on_plait
            .iter()
            .find(|(event_type, state_key, _)| event_type == kind && state_key.is_empty())
            .map(|(_, _, event_id)| event_id.clone())
    };
    assert_eq!(
        current("m.room.power_levels").as_ref(),
        Some(winning_power),
        "{on_plait:?}"
    );
    assert_eq!(
        current("m.room.topic").as_ref(),
        Some(winning_topic),
        "{on_plait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_fork_of_power_levels_resolves_identically_in_a_plait_room() {
    fork_resolves_identically("127.0.0.44", "127.0.0.45", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synapse_fork_of_power_levels_resolves_identically_in_a_synapse_room() {
    fork_resolves_identically("127.0.0.46", "127.0.0.47", false).await;
}
