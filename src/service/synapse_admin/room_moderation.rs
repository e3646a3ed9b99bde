//! Room moderation as the Synapse admin API does it: deleting a room (`DELETE
//! /_synapse/admin/v2/rooms/{roomId}`) and purging history (`purge_history`) run in the
//! background with an ID to poll (v1's delete answers once done), and blocking rooms. Task states live in memory, as Synapse
//! keeps them (until a restart); the work itself is `rooms::shutdown` and `rooms::purge`.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, RoomId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Admin;
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            purge::{self, HistoryPurge},
            shutdown::{self, DeleteRoom, NoticeRoom, Outcome},
        },
        Services,
    },
    util,
};

/// Length of a generated task ID.
const TASK_ID_LENGTH: usize = 16;
/// Synapse's defaults for the notice room.
const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// A background task's state, as Synapse names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Active,
    Complete,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
struct DeleteTask {
    room_id: OwnedRoomId,
    status: Status,
    error: Option<String>,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
struct PurgeTask {
    status: Status,
    error: Option<String>,
}

/// The room deletions and history purges started through the API, by ID (memory only).
#[derive(Default)]
pub struct ModerationTasks {
    deletes: Mutex<HashMap<String, DeleteTask>>,
    purges: Mutex<HashMap<String, PurgeTask>>,
}

/// The body of `DELETE /_synapse/admin/v2/rooms/{roomId}`.
#[derive(Deserialize)]
pub struct DeleteRequest {
    new_room_user_id: Option<ruma::OwnedUserId>,
    room_name: Option<String>,
    message: Option<String>,
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
}

fn yes() -> bool {
    true
}

impl DeleteRequest {
    /// The deletion the body asks for, with Synapse's defaults for the notice room.
    fn into_delete(self, admin: &Admin) -> DeleteRoom {
        let new_room = self.new_room_user_id.map(|creator| NoticeRoom {
            creator,
            name: self
                .room_name
                .unwrap_or_else(|| DEFAULT_ROOM_NAME.to_owned()),
            message: self.message.unwrap_or_else(|| DEFAULT_MESSAGE.to_owned()),
        });
        DeleteRoom {
            by: admin.user_id().to_owned(),
            block: self.block,
            purge: self.purge,
            new_room,
        }
    }
}

/// Deletes a room and answers once done (`DELETE /_synapse/admin/v1/rooms/{roomId}`, the
/// synchronous version): `kicked_users`, `failed_to_kick_users`, `local_aliases` and
/// `new_room_id`, as v2's `shutdown_room`. As in Synapse, a room unknown here is only blocked
/// when `block` is set (nothing else to do) and refused (`400`) otherwise.
pub async fn delete_now(
    services: &Services,
    admin: &Admin,
    room_id: &RoomId,
    body: DeleteRequest,
) -> Result<Value> {
    let request = body.into_delete(admin);
    let is_admin_room = services.admin.get_room().as_deref() == Some(room_id);
    if !is_admin_room && !services.rooms.exists(room_id)? {
        if !request.block {
            return Err(Error::invalid_param(format!(
                "room {room_id} is unknown to this server; only block can be set for it"
            )));
        }
        services
            .admin
            .blocks
            .set_room_blocked(room_id, admin.user_id(), true)?;
        return Ok(json!(Outcome::default()));
    }
    let outcome = shutdown::delete_room(services, room_id, &request).await?;
    Ok(json!(outcome))
}

/// Starts deleting a room in the background; answers `delete_id`. The checks (a known room,
/// not the admin room, a local `new_room_user_id`) are made before, so that a bad request is
/// refused with nothing started.
pub fn start_delete(
    services: &Arc<Services>,
    admin: &Admin,
    room_id: &RoomId,
    body: DeleteRequest,
) -> Result<Value> {
    let request = body.into_delete(admin);
    shutdown::check(services, room_id, &request)?;
    let delete_id = util::random_string(TASK_ID_LENGTH);
    let task = DeleteTask {
        room_id: room_id.to_owned(),
        status: Status::Active,
        error: None,
        outcome: Outcome::default(),
    };
    let tasks = &services.moderation_tasks;
    tasks.deletes.lock().insert(delete_id.clone(), task);
    let services = Arc::clone(services);
    let room_id = room_id.to_owned();
    let id = delete_id.clone();
    tokio::spawn(async move {
        let result = shutdown::delete_room(&services, &room_id, &request).await;
        let mut deletes = services.moderation_tasks.deletes.lock();
        let Some(task) = deletes.get_mut(&id) else {
            return;
        };
        match result {
            Ok(outcome) => {
                task.status = Status::Complete;
                task.outcome = outcome;
            }
            Err(error) => {
                tracing::error!(%error, %room_id, "a room deletion failed");
                task.status = Status::Failed;
                task.error = Some(error.shareable());
            }
        }
    });
    Ok(json!({ "delete_id": delete_id }))
}

fn delete_status(delete_id: &str, task: &DeleteTask) -> Value {
    let mut answer = json!({
        "delete_id": delete_id,
        "room_id": task.room_id,
        "status": task.status.as_str(),
        "shutdown_room": task.outcome,
    });
    if let Some(error) = &task.error {
        answer["error"] = json!(error);
    }
    answer
}

/// The deletions of a room started since the server started; `M_NOT_FOUND` when there are none.
pub fn delete_status_by_room(
    services: &Services,
    _admin: &Admin,
    room_id: &RoomId,
) -> Result<Value> {
    let deletes = services.moderation_tasks.deletes.lock();
    let results: Vec<Value> = deletes
        .iter()
        .filter(|(_, task)| task.room_id == room_id)
        .map(|(id, task)| delete_status(id, task))
        .collect();
    if results.is_empty() {
        return Err(Error::not_found(format!("no delete task for {room_id}")));
    }
    Ok(json!({ "results": results }))
}

/// One deletion's state; `M_NOT_FOUND` for an unknown ID.
pub fn delete_status_by_id(services: &Services, _admin: &Admin, delete_id: &str) -> Result<Value> {
    let deletes = services.moderation_tasks.deletes.lock();
    let task = deletes
        .get(delete_id)
        .ok_or_else(|| Error::not_found(format!("delete {delete_id} not found")))?;
    Ok(delete_status(delete_id, task))
}

/// The body of `POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`.
#[derive(Deserialize)]
pub struct PurgeRequest {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<ruma::OwnedEventId>,
    purge_up_to_ts: Option<u64>,
}

/// Starts purging a room's history up to an event (kept, with events at its depth, as in
/// Synapse: here, events sent before it) or a time; answers `purge_id`. Without
/// `delete_local_events` this server's users' events stay.
pub fn start_purge(
    services: &Arc<Services>,
    _admin: &Admin,
    room_id: &RoomId,
    path_event: Option<ruma::OwnedEventId>,
    body: PurgeRequest,
) -> Result<Value> {
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found(format!(
            "room {room_id} is unknown to this server"
        )));
    }
    let before_ts = match (
        path_event.or(body.purge_up_to_event_id),
        body.purge_up_to_ts,
    ) {
        (Some(event_id), _) => {
            let pdu = services
                .rooms
                .timeline
                .get_pdu(&event_id)
                .ok()
                .flatten()
                .filter(|pdu| pdu.room_id.as_deref().is_none_or(|room| room == room_id))
                .ok_or_else(|| Error::not_found(format!("event {event_id} not found")))?;
            u64::from(pdu.origin_server_ts.get())
        }
        (None, Some(ts)) => ts,
        (None, None) => {
            return Err(Error::missing_param(
                "purge_up_to_event_id or purge_up_to_ts is required",
            ))
        }
    };
    let purge_id = util::random_string(TASK_ID_LENGTH);
    let task = PurgeTask {
        status: Status::Active,
        error: None,
    };
    services
        .moderation_tasks
        .purges
        .lock()
        .insert(purge_id.clone(), task);
    let services = Arc::clone(services);
    let room_id = room_id.to_owned();
    let id = purge_id.clone();
    let keep_local = !body.delete_local_events;
    tokio::spawn(async move {
        let server_name = services.globals.server_name().to_owned();
        let purge = HistoryPurge {
            before_ts,
            keep_from: keep_local.then_some(&*server_name),
        };
        let result = purge::purge_history(&services, &room_id, purge);
        let mut purges = services.moderation_tasks.purges.lock();
        let Some(task) = purges.get_mut(&id) else {
            return;
        };
        match result {
            Ok(_) => task.status = Status::Complete,
            Err(error) => {
                tracing::error!(%error, %room_id, "a history purge failed");
                task.status = Status::Failed;
                task.error = Some(error.shareable());
            }
        }
    });
    Ok(json!({ "purge_id": purge_id }))
}

/// One purge's state; `M_NOT_FOUND` for an unknown ID.
pub fn purge_status(services: &Services, _admin: &Admin, purge_id: &str) -> Result<Value> {
    let purges = services.moderation_tasks.purges.lock();
    let task = purges
        .get(purge_id)
        .ok_or_else(|| Error::not_found(format!("purge {purge_id} not found")))?;
    let mut answer = json!({ "status": task.status.as_str() });
    if let Some(error) = &task.error {
        answer["error"] = json!(error);
    }
    Ok(answer)
}

/// Blocks or unblocks a room (known here or not); answers `block`.
pub fn set_block(
    services: &Services,
    admin: &Admin,
    room_id: &RoomId,
    block: bool,
) -> Result<Value> {
    if block && services.admin.get_room().as_deref() == Some(room_id) {
        return Err(Error::forbidden("the admin room cannot be blocked"));
    }
    services
        .admin
        .blocks
        .set_room_blocked(room_id, admin.user_id(), block)?;
    Ok(json!({ "block": block }))
}

/// Whether a room is blocked, and by whom.
pub fn get_block(services: &Services, _admin: &Admin, room_id: &RoomId) -> Result<Value> {
    Ok(match services.admin.blocks.get_room_block(room_id)? {
        Some(user_id) => json!({ "block": true, "user_id": user_id }),
        None => json!({ "block": false }),
    })
}
