//! Room aliases: deleting an alias takes it out of the room's `m.room.canonical_alias`.

use serde_json::{json, Value};

use crate::common::{enc, Client, TestServer};

async fn canonical_alias(client: &Client, room: &str) -> Value {
    client
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
            enc(room)
        ))
        .await
}

#[tokio::test]
async fn deleting_an_alias_takes_it_out_of_the_canonical_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for alias in ["#main:localhost", "#other:localhost"] {
        alice
            .put_ok(
                &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
                json!({"room_id": room}),
            )
            .await;
    }
    let state = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
        enc(&room)
    );
    alice
        .put_ok(
            &state,
            json!({"alias": "#main:localhost", "alt_aliases": ["#main:localhost", "#other:localhost"]}),
        )
        .await;
    alice
        .delete(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#main:localhost")
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        canonical_alias(&alice, &room).await,
        json!({"alt_aliases": ["#other:localhost"]})
    );
    let (status, _) = alice
        .delete(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#other:localhost")
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(canonical_alias(&alice, &room).await, json!({}));

    // A member who may not change the canonical alias still deletes the alias they made; the
    // canonical alias stays as it was.
    bob.post_ok(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    bob.put_ok(
        &format!(
            "/_matrix/client/v3/directory/room/{}",
            enc("#bobs:localhost")
        ),
        json!({"room_id": room}),
    )
    .await;
    alice
        .put_ok(&state, json!({"alias": "#bobs:localhost"}))
        .await;
    let (status, body) = bob
        .delete(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#bobs:localhost")
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        canonical_alias(&alice, &room).await,
        json!({"alias": "#bobs:localhost"})
    );
}
