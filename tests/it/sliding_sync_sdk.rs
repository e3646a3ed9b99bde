//! matrix-rust-sdk's own sliding sync against the server, as Element X drives it: the
//! `matrix-sdk-ui` `SyncService` (the `room-list` connection of `RoomListService` and the
//! `encryption` connection with the `to_device` and `e2ee` extensions), its room list and a
//! room's `Timeline`.

use std::time::Duration;

use futures_util::StreamExt;
use matrix_sdk::{
    config::SyncSettings,
    ruma::{
        api::client::room::create_room::v3::Request as CreateRoomRequest,
        events::{
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
            InitialStateEvent,
        },
        OwnedRoomId, OwnedUserId,
    },
    sliding_sync::VersionBuilder,
    Client as SdkClient, RoomState,
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{filters::new_filter_non_left, RoomListItem},
    sync_service::SyncService,
    timeline::{RoomExt, Timeline},
};
use serde_json::json;

use crate::common::TestServer;

/// How long the SDK gets to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// A matrix-sdk client logged in as `name`, which finds sliding sync in `/versions` as Element X
/// does (it refuses a server that does not advertise it).
async fn sdk_login(server: &TestServer, name: &str) -> SdkClient {
    let client = SdkClient::builder()
        .homeserver_url(&server.base)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username(name, "password")
        .send()
        .await
        .unwrap();
    assert!(matches!(
        client.sliding_sync_version(),
        matrix_sdk::sliding_sync::Version::Native
    ));
    client
}

/// The SDK's `SyncService`, started.
async fn start_sync(client: &SdkClient) -> SyncService {
    let sync = SyncService::builder(client.clone()).build().await.unwrap();
    sync.start().await;
    sync
}

/// The message bodies a timeline shows, oldest first; undecryptable events as `<utd>`.
async fn timeline_bodies(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event())
        .filter_map(|event| {
            let content = event.content();
            if let Some(message) = content.as_message() {
                Some(message.body().to_owned())
            } else if content.is_unable_to_decrypt() {
                Some("<utd>".to_owned())
            } else {
                None
            }
        })
        .collect()
}

/// Waits until the timeline's bodies satisfy `done`, and returns them.
async fn wait_for_bodies(timeline: &Timeline, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let bodies = timeline_bodies(timeline).await;
        if done(&bodies) {
            return bodies;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timeline shows {bodies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The room list as the SDK's sorted, filtered entries stream shows it, followed until `done`.
struct RoomListView<S> {
    stream: S,
    rooms: Vector<RoomListItem>,
}

impl<
        S: futures_util::Stream<Item = Vec<matrix_sdk_ui::eyeball_im::VectorDiff<RoomListItem>>>
            + Unpin,
    > RoomListView<S>
{
    async fn wait_until(&mut self, done: impl Fn(&[(OwnedRoomId, RoomState)]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let shown = self.shown();
            if done(&shown) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(diffs)) => {
                    for diff in diffs {
                        diff.apply(&mut self.rooms);
                    }
                }
                _ => panic!("the room list shows {shown:?}"),
            }
        }
    }

    fn shown(&self) -> Vec<(OwnedRoomId, RoomState)> {
        self.rooms
            .iter()
            .map(|room| (room.room_id().to_owned(), room.state()))
            .collect()
    }
}

/// A user in 30 rooms: the room list comes in recency order, a room opens with its latest events
/// and paginates back to its start through `/messages` from the sliding-sync `prev_batch`, a new
/// message reaches the open timeline and moves its room to the top, and an invite shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_list_and_timeline_through_matrix_sdk_ui() {
    let server = TestServer::start().await;
    server.register("first").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for index in 0..30 {
        let room = alice
            .create_room(json!({"preset": "public_chat", "name": format!("room {index}")}))
            .await;
        rooms.push(room);
    }
    let busy = rooms[0].clone();
    bob.join(&busy).await;
    for index in 0..45 {
        bob.send_text(&busy, &format!("h{index}"), &format!("history {index}"))
            .await;
    }
    // One message per room in an order unlike creation or name order; the last sent is the
    // most recent. Timestamps a few milliseconds apart keep the SDK's own order unambiguous.
    let mut sent_order = Vec::new();
    for step in 0..30 {
        let room = &rooms[(step * 7) % 30];
        alice
            .send_text(room, &format!("m{step}"), &format!("latest {step}"))
            .await;
        sent_order.push(OwnedRoomId::try_from(room.as_str()).unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let recency: Vec<OwnedRoomId> = sent_order.iter().rev().cloned().collect();

    let client = sdk_login(&server, "alice").await;
    let sync = start_sync(&client).await;
    let room_list_service = sync.room_list_service();
    let all_rooms = room_list_service.all_rooms().await.unwrap();
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(100);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut view = RoomListView {
        stream: Box::pin(stream),
        rooms: Vector::new(),
    };
    view.wait_until(|shown| {
        shown.iter().map(|(room, _)| room).eq(recency.iter())
            && shown.iter().all(|(_, state)| *state == RoomState::Joined)
    })
    .await;
    let alice_id = client.user_id().unwrap().to_owned();
    let (connections, _) = server.services.sliding.connections.held(&alice_id);
    assert_eq!(connections, 2, "the room-list and encryption connections");

    // Open the busy room as Element X does: a subscription, then its timeline.
    let busy_id = OwnedRoomId::try_from(busy.as_str()).unwrap();
    room_list_service.subscribe_to_rooms(&[&busy_id]).await;
    let room = room_list_service.room(&busy_id).unwrap();
    let timeline = room.timeline().await.unwrap();
    let busy_latest = format!("latest {}", 0);
    wait_for_bodies(&timeline, |bodies| bodies.last() == Some(&busy_latest)).await;
    let mut at_start = false;
    for _ in 0..20 {
        if at_start {
            break;
        }
        at_start = timeline.paginate_backwards(20).await.unwrap();
    }
    assert!(at_start, "pagination reaches the room's start");
    let mut expected: Vec<String> = (0..45).map(|index| format!("history {index}")).collect();
    expected.push(busy_latest);
    assert_eq!(timeline_bodies(&timeline).await, expected);

    // A live message reaches the open timeline and moves the room to the top of the list.
    bob.send_text(&busy, "live", "live message").await;
    wait_for_bodies(&timeline, |bodies| {
        bodies.last().map(String::as_str) == Some("live message")
    })
    .await;
    view.wait_until(|shown| shown.first().map(|(room, _)| room) == Some(&busy_id))
        .await;

    // An invite shows up as an invited room.
    let invited = bob
        .create_room(json!({"name": "invitation", "invite": [alice_id.as_str()]}))
        .await;
    let invited = OwnedRoomId::try_from(invited.as_str()).unwrap();
    view.wait_until(|shown| {
        shown.len() == 31 && shown.contains(&(invited.clone(), RoomState::Invited))
    })
    .await;
    sync.stop().await;
}

/// An encrypted conversation between an Element X-like client (sliding sync: its device keys,
/// key claims and room keys go through the `encryption` connection's `e2ee` and `to_device`
/// extensions) and a matrix-sdk client on `/sync` v3, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_conversation_decrypts_through_the_encryption_sync() {
    let server = TestServer::start().await;
    server.register("first").await;
    server.register("alice").await;
    server.register("bob").await;
    let alice = sdk_login(&server, "alice").await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let alice_device = alice.device_id().unwrap().to_owned();
    let sync = start_sync(&alice).await;
    let bob = sdk_login(&server, "bob").await;
    bob.sync_once(SyncSettings::default()).await.unwrap();

    // The encryption sync uploads alice's device keys.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server
        .services
        .keys
        .get_device_keys(&alice_id, alice_device.as_str())
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "no device keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut request = CreateRoomRequest::new();
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    request.invite = vec![alice_id.clone()];
    let bob_room = bob.create_room(request).await.unwrap();
    let room_id = bob_room.room_id().to_owned();

    // Alice sees the invite through her room list and joins.
    let room_list_service = sync.room_list_service();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let room = loop {
        if let Ok(room) = room_list_service.room(&room_id) {
            if room.state() == RoomState::Invited {
                break room;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no invite");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    room.join().await.unwrap();
    room_list_service.subscribe_to_rooms(&[&room_id]).await;
    let timeline = room.timeline().await.unwrap();

    // Bob's client learns of alice's device, encrypts for it and sends the room key to-device.
    bob.sync_once(SyncSettings::default()).await.unwrap();
    bob_room
        .send(RoomMessageEventContent::text_plain("secret hello"))
        .await
        .unwrap();
    wait_for_bodies(&timeline, |bodies| {
        bodies.iter().any(|body| body == "secret hello")
    })
    .await;
    let event = room
        .messages(matrix_sdk::room::MessagesOptions::backward())
        .await
        .unwrap()
        .chunk
        .into_iter()
        .find(|event| event.raw().json().get().contains("secret hello"))
        .expect("the message decrypts through /messages too");
    assert!(event.encryption_info().is_some(), "it came encrypted");

    // Alice's reply: her client queries bob's devices, claims a one-time key and shares its
    // room key; bob decrypts it.
    timeline
        .send(RoomMessageEventContent::text_plain("secret reply").into())
        .await
        .unwrap();
    let bob_id: OwnedUserId = bob.user_id().unwrap().to_owned();
    assert!(
        crate::sync::sdk_sees_text(&bob, &room_id, "secret reply", true).await,
        "bob ({bob_id}) decrypts alice's reply"
    );
    sync.stop().await;
}
