//! Server notices (client-server spec, "Server Notices"; sent through Synapse's admin API
//! `send_server_notice`): one notices room per user, made by the notices user on the first notice,
//! tagged `m.server_notice` for the user, who is invited (again after leaving) and cannot reject
//! the invite.
//!
//! Server notices (`/_synapse/admin/v1/send_server_notice`, for admins): one room per user (`userid_servernoticeroom`), made by the notices user through `create_and_commit` on the first notice, tagged `m.server_notice` through `account_data`, the user invited again whenever they are neither joined nor invited; `check_leave` refuses to let the user reject that invite (`M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`).

use ruma::{
    api::error::ErrorKind, events::room::member::MembershipState, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde_json::{json, Map, Value};

use crate::{
    config::Config,
    error::{Error, Result},
    service::{
        notify::Topic,
        rooms::{
            timeline::{create_and_commit, PduBuilder},
            version::rules_for,
        },
        Services,
    },
    store::{Db, Tree},
    util,
};

/// The tag that marks the notices room (spec: "Clients can identify the server notices room by
/// the `m.server_notice` tag on the room").
const NOTICE_TAG: &str = "m.server_notice";
/// Members other than the notices user get this power level, below `events_default`, so that
/// only the server writes in the room (Synapse does the same).
const USERS_DEFAULT_POWER: i64 = -10;

/// Owns `userid_servernoticeroom` (user ID → room ID of the user's notices room).
pub struct ServerNotices {
    userid_servernoticeroom: Tree,
    /// Held while a notice is sent, so that two notices for one user never make two rooms.
    send_lock: tokio::sync::Mutex<()>,
}

/// A notice: whom it is for and the event to send (`type` defaults to `m.room.message`; with a
/// `state_key` it is a state event).
struct Notice {
    user_id: OwnedUserId,
    kind: String,
    state_key: Option<String>,
    content: Value,
}

impl ServerNotices {
    /// Opens the tree.
    pub fn open(db: &std::sync::Arc<Db>) -> Self {
        Self {
            userid_servernoticeroom: db.tree("userid_servernoticeroom"),
            send_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The user's notices room, once one was made.
    pub fn get_room(&self, user_id: &UserId) -> Result<Option<OwnedRoomId>> {
        let Some(bytes) = self.userid_servernoticeroom.get(user_id.as_bytes())? else {
            return Ok(None);
        };
        OwnedRoomId::try_from(String::from_utf8_lossy(&bytes).as_ref())
            .map(Some)
            .map_err(|e| Error::corrupt("userid_servernoticeroom", e))
    }

    /// Refuses to register the notices user's ID (`M_USER_IN_USE`), which the server keeps for
    /// itself.
    pub fn check_registration(&self, config: &Config, user_id: &UserId) -> Result<()> {
        if user_id.localpart() == config.server_notices_localpart {
            return Err(Error::matrix(
                ErrorKind::UserInUse,
                format!("{user_id} is reserved for server notices"),
            ));
        }
        Ok(())
    }

    /// Refuses a leave that would reject the invite to the user's notices room
    /// (`403 M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`, as the spec asks); a joined user may leave.
    pub fn check_leave(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        membership: Option<&MembershipState>,
    ) -> Result<()> {
        if membership == Some(&MembershipState::Invite)
            && self.get_room(user_id)?.as_deref() == Some(room_id)
        {
            return Err(Error::matrix(
                ErrorKind::CannotLeaveServerNoticeRoom,
                format!("the invite to the server notices room {room_id} cannot be rejected"),
            ));
        }
        Ok(())
    }
}

/// The user that sends notices: `server_notices_localpart` on this server.
pub fn notices_user(services: &Services) -> Result<OwnedUserId> {
    OwnedUserId::try_from(format!(
        "@{}:{}",
        services.config.server_notices_localpart,
        services.globals.server_name()
    ))
    .map_err(Error::internal)
}

/// Sends a notice for `admin`, who must be a server admin (`403 M_FORBIDDEN` otherwise), from a
/// request body `{user_id, content, type?, state_key?}`; the target must be a local user.
/// With a transaction (the admin's device and transaction ID) a repeat returns the first
/// event's ID. Returns the event's ID.
///
/// The notices room is made on the first notice and reused; the user is invited whenever they
/// are neither joined nor invited, and the content is sent as given.
#[tracing::instrument(skip_all, fields(admin = %admin))]
pub async fn send(
    services: &Services,
    admin: &UserId,
    body: &Value,
    transaction: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    if !services.users.is_admin(admin)? {
        return Err(Error::forbidden(format!("{admin} is not a server admin")));
    }
    let notice = parse(body)?;
    deliver(services, notice, admin, transaction).await
}

/// Sends a text notice (`m.text`) to a local user; for callers that checked the admin already
/// (the admin room's `server notice`).
pub async fn send_text(services: &Services, user_id: &UserId, text: &str) -> Result<OwnedEventId> {
    let notice = Notice {
        user_id: user_id.to_owned(),
        kind: "m.room.message".to_owned(),
        state_key: None,
        content: json!({ "msgtype": "m.text", "body": text }),
    };
    deliver(services, notice, user_id, None).await
}

/// Sends a parsed notice; `transaction` is the admin's (device, transaction ID), kept apart per
/// `admin`.
async fn deliver(
    services: &Services,
    notice: Notice,
    admin: &UserId,
    transaction: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    if notice.user_id.server_name() != services.globals.server_name() {
        return Err(Error::invalid_param(format!(
            "server notices can only be sent to local users, not {}",
            notice.user_id
        )));
    }
    if !services.users.exists(&notice.user_id)? {
        return Err(Error::not_found(format!(
            "user {} does not exist",
            notice.user_id
        )));
    }
    let sender = notices_user(services)?;
    // Transaction IDs are the admin's, so they are stored under a device name that holds the
    // admin's user and device (the sender is the notices user for every admin).
    let txn_device = transaction.map(|(device, _)| format!("{admin}|{device}"));
    let transaction = txn_device
        .as_deref()
        .zip(transaction.map(|(_, txn_id)| txn_id));

    let _guard = services.server_notices.send_lock.lock().await;
    let room_id = match services.server_notices.get_room(&notice.user_id)? {
        Some(room_id) => room_id,
        None => create_room(services, &sender, &notice.user_id).await?,
    };
    if let Some((device, txn_id)) = transaction {
        let timeline = &services.rooms.timeline;
        if let Some(event_id) =
            timeline.get_transaction(sender.as_str(), device, &room_id, txn_id)?
        {
            return Ok(event_id);
        }
    }
    let membership = services
        .rooms
        .members
        .get_membership(&room_id, &notice.user_id)?;
    if !matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite)
    ) {
        create_and_commit(
            services,
            &room_id,
            &sender,
            PduBuilder::state(
                "m.room.member",
                notice.user_id.as_str(),
                json!({ "membership": "invite" }),
            ),
            None,
        )
        .await?;
    }
    let builder = match notice.state_key {
        Some(state_key) => PduBuilder::state(notice.kind.as_str(), state_key, notice.content),
        None => PduBuilder::timeline(notice.kind.as_str(), notice.content),
    };
    let (event_id, _) =
        create_and_commit(services, &room_id, &sender, builder, transaction).await?;
    tracing::info!(user = %notice.user_id, %event_id, "server notice sent");
    Ok(event_id)
}

fn parse(body: &Value) -> Result<Notice> {
    let user_id = body
        .get("user_id")
        .ok_or_else(|| Error::missing_param("missing user_id"))?
        .as_str()
        .ok_or_else(|| Error::bad_json("user_id must be a string"))?;
    let user_id = OwnedUserId::try_from(user_id)
        .map_err(|_| Error::invalid_param(format!("invalid user ID {user_id}")))?;
    let content = body
        .get("content")
        .ok_or_else(|| Error::missing_param("missing content"))?;
    if !content.is_object() {
        return Err(Error::bad_json("content must be an object"));
    }
    let string_field = |name: &str| -> Result<Option<String>> {
        match body.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_str()
                .map(|text| Some(text.to_owned()))
                .ok_or_else(|| Error::bad_json(format!("{name} must be a string"))),
        }
    };
    Ok(Notice {
        user_id,
        kind: string_field("type")?.unwrap_or_else(|| "m.room.message".to_owned()),
        state_key: string_field("state_key")?,
        content: content.clone(),
    })
}

/// Makes the notices room for `user_id` (a private room of the default version, named
/// `server_notices_room_name`, in which only `sender` may write), creating the notices user on
/// first use, records it, tags it for the user, and returns its ID. The caller invites the user.
async fn create_room(
    services: &Services,
    sender: &UserId,
    user_id: &UserId,
) -> Result<OwnedRoomId> {
    if !services.users.exists(sender)? {
        services.users.create_hashed(sender, "", None, false)?;
        tracing::info!(user = %sender, "created the server notices user");
    }
    let version = RoomVersionId::try_from(services.config.default_room_version.as_str())
        .map_err(Error::internal)?;
    let rules = rules_for(&version)?;
    let mut create_content = json!({ "room_version": version.as_str() });
    if !rules.authorization.use_room_create_sender {
        create_content["creator"] = json!(sender);
    }
    let server = services.globals.server_name();
    let placeholder = OwnedRoomId::try_from(format!("!{}:{server}", util::random_string(18)))
        .map_err(Error::internal)?;
    let (_, room_id) = create_and_commit(
        services,
        &placeholder,
        sender,
        PduBuilder::state("m.room.create", "", create_content),
        None,
    )
    .await?;
    let mut join = json!({ "membership": "join" });
    if let Some(name) = services
        .users
        .get_profile(sender)?
        .and_then(|profile| profile.get("displayname").cloned())
    {
        join["displayname"] = name;
    }
    // Room version 12 gives creators power above any level, and forbids listing them.
    let mut users = Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(sender.to_string(), json!(100));
    }
    let power_levels = json!({
        "users": users, "users_default": USERS_DEFAULT_POWER, "events_default": 0,
        "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 50,
    });
    let name = &services.config.server_notices_room_name;
    for builder in [
        PduBuilder::state("m.room.member", sender.as_str(), join),
        PduBuilder::state("m.room.power_levels", "", power_levels),
        PduBuilder::state("m.room.join_rules", "", json!({ "join_rule": "invite" })),
        PduBuilder::state(
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "shared" }),
        ),
        PduBuilder::state("m.room.name", "", json!({ "name": name })),
    ] {
        create_and_commit(services, &room_id, sender, builder, None).await?;
    }
    services
        .server_notices
        .userid_servernoticeroom
        .insert(user_id.as_bytes(), room_id.as_bytes())?;
    services.account_data.update(
        &services.globals,
        (user_id, Some(&room_id), "m.tag"),
        |current| {
            let mut content = current
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            if !content.get("tags").is_some_and(Value::is_object) {
                content["tags"] = json!({});
            }
            content["tags"][NOTICE_TAG] = json!({});
            Ok(Some(content))
        },
    )?;
    services.notifier.wake(Topic::User(user_id.to_string()));
    tracing::info!(user = %user_id, %room_id, "created a server notices room");
    Ok(room_id)
}
