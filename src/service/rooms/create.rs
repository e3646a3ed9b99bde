//! Room creation (`createRoom`): the checks, then the room's first events in the spec's order.
//!
//! `createRoom`'s checks and the room's first events in the spec's order (create, join, power levels, alias, preset state, initial state, name, topic, invites); `send_create_event` is shared with upgrades.

use ruma::{
    api::error::ErrorKind, room_version_rules::RoomVersionRules, OwnedRoomAliasId, OwnedRoomId,
    OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            handshake, retention,
            timeline::{create_and_commit, PduBuilder},
            version::rules_for,
        },
        Services,
    },
    util,
};

/// What `createRoom` asks for; every field is optional.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NewRoom {
    pub preset: Option<String>,
    pub visibility: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub room_alias_name: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub initial_state: Vec<InitialState>,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
}

/// One event of `initial_state`.
#[derive(Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Value,
}

/// What the checks settle before the first event is sent.
struct Plan {
    preset: String,
    alias: Option<OwnedRoomAliasId>,
    create_content: Map<String, Value>,
    creators_are_privileged: bool,
    rules: RoomVersionRules,
}

/// Creates a room for `sender`; answers its ID.
///
/// Presets `private_chat`, `trusted_private_chat` and `public_chat`; events are sent in the spec's
/// order: create, creator's join, power levels, canonical alias, preset state, initial state,
/// name, topic, invites. Invitees of other servers are invited once the room is complete.
#[tracing::instrument(skip_all, fields(sender = %sender))]
pub async fn create(services: &Services, sender: &UserId, request: NewRoom) -> Result<OwnedRoomId> {
    let plan = plan(services, sender, &request)?;
    // Checked before the first event: a power levels event the auth rules refuse would leave a
    // room with its creator joined and nothing else.
    let power_levels = power_levels(&plan, sender, &request);
    check_power_levels(&plan.rules, &power_levels)?;
    let room_id = send_create_event(services, sender, plan.create_content.clone()).await?;
    let profile = services.users.get_profile(sender)?.unwrap_or_default();
    let mut join = json!({ "membership": "join" });
    for field in ["displayname", "avatar_url"] {
        if let Some(value) = profile.get(field) {
            join[field] = value.clone();
        }
    }
    let send = |builder: PduBuilder| create_and_commit(services, &room_id, sender, builder, None);
    send(PduBuilder::state("m.room.member", sender.as_str(), join)).await?;
    send(PduBuilder::state("m.room.power_levels", "", power_levels)).await?;
    if let Some(alias) = &plan.alias {
        let content = json!({ "alias": alias });
        send(PduBuilder::state("m.room.canonical_alias", "", content)).await?;
    }
    send_initial_state(services, &room_id, sender, &plan, &request).await?;
    if let Some(alias) = &plan.alias {
        services.rooms.alias.set(alias, &room_id, sender)?;
    }
    if request.visibility.as_deref() == Some("public") {
        services.rooms.alias.set_public(&room_id, true)?;
    }
    invite_remote(services, &room_id, sender, &request).await;
    Ok(room_id)
}

/// Sends the create event of a new room with `content`; answers the room's ID (a random one, or
/// the event's hash from room version 12).
pub async fn send_create_event(
    services: &Services,
    sender: &UserId,
    content: Map<String, Value>,
) -> Result<OwnedRoomId> {
    let server = services.globals.server_name();
    let placeholder = OwnedRoomId::try_from(format!("!{}:{server}", util::random_string(18)))
        .map_err(Error::internal)?;
    let builder = PduBuilder::state("m.room.create", "", Value::Object(content));
    let (_, room_id) = create_and_commit(services, &placeholder, sender, builder, None).await?;
    Ok(room_id)
}

/// Checks the invitees (local ones must exist; a story room's must be allowed by the sender's
/// `stories` setting, `service::stories`) and the room type, which is a string when present.
fn check_invitees_and_type(services: &Services, sender: &UserId, request: &NewRoom) -> Result<()> {
    let server = services.globals.server_name();
    let kind = request
        .creation_content
        .as_ref()
        .and_then(|content| content.get("type"));
    if kind.is_some_and(|kind| !kind.is_string() && !kind.is_null()) {
        return Err(Error::bad_json("creation_content.type must be a string"));
    }
    let story_room = kind.is_some_and(|kind| kind == retention::STORY_ROOM_TYPE);
    for invitee in &request.invite {
        if invitee.server_name() == server && !services.users.exists(invitee)? {
            return Err(Error::not_found(format!("user {invitee} does not exist")));
        }
        if story_room {
            services.stories.check_audience(services, sender, invitee)?;
        }
    }
    Ok(())
}

/// Checks the request (room version, preset, alias, invitees, creators) and builds the create
/// event's content.
fn plan(services: &Services, sender: &UserId, request: &NewRoom) -> Result<Plan> {
    let server = services.globals.server_name();
    let version_text = request
        .room_version
        .clone()
        .unwrap_or_else(|| services.config.default_room_version.clone());
    let version = RoomVersionId::try_from(version_text.as_str())
        .map_err(|_| Error::matrix(ErrorKind::UnsupportedRoomVersion, "invalid room version"))?;
    let rules = rules_for(&version)?;
    let preset = request.preset.clone().unwrap_or_else(|| {
        if request.visibility.as_deref() == Some("public") {
            "public_chat".into()
        } else {
            "private_chat".into()
        }
    });
    if !["private_chat", "trusted_private_chat", "public_chat"].contains(&preset.as_str()) {
        return Err(Error::bad_json(format!("unknown preset {preset}")));
    }
    let alias = match &request.room_alias_name {
        Some(local) => {
            let alias = OwnedRoomAliasId::try_from(format!("#{local}:{server}"))
                .map_err(|_| Error::invalid_param("invalid room_alias_name"))?;
            if services.rooms.alias.get(&alias)?.is_some() {
                return Err(Error::matrix(
                    ErrorKind::RoomInUse,
                    format!("alias {alias} is taken"),
                ));
            }
            Some(alias)
        }
        None => None,
    };
    check_invitees_and_type(services, sender, request)?;
    let mut create_content = request.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), json!(version.as_str()));
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), json!(sender));
    }
    // Room version 12: the creator and `additional_creators` are privileged; in a trusted private
    // chat the invitees become creators too.
    let mut additional_creators = additional_creators(&create_content)?;
    if rules.authorization.additional_room_creators {
        if preset == "trusted_private_chat" {
            for invitee in &request.invite {
                if !additional_creators.contains(invitee) {
                    additional_creators.push(invitee.clone());
                }
            }
        }
        if !additional_creators.is_empty() {
            create_content.insert("additional_creators".into(), json!(additional_creators));
        }
    }
    let creators_are_privileged = rules.authorization.explicitly_privilege_room_creators;
    if creators_are_privileged {
        let mut creators = additional_creators;
        creators.push(sender.to_owned());
        if let Some(users) = request
            .power_level_content_override
            .as_ref()
            .and_then(|overrides| overrides.get("users"))
        {
            reject_creators_in_users(users, &creators)?;
        }
    }
    Ok(Plan {
        preset,
        alias,
        create_content,
        creators_are_privileged,
        rules,
    })
}

/// The power levels of the preset, with `power_level_content_override` laid over them.
fn power_levels(plan: &Plan, sender: &UserId, request: &NewRoom) -> Value {
    let privileged = plan.creators_are_privileged;
    let mut users = Map::new();
    if !privileged {
        users.insert(sender.to_string(), json!(100));
        if plan.preset == "trusted_private_chat" {
            for invitee in &request.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users, "users_default": 0, "events_default": 0, "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50,
        "invite": if plan.preset == "public_chat" { 50 } else { 0 },
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50,
            // Upgrading a version 12 room is for its creators (whose power is above any level).
            "m.room.tombstone": if privileged { 150 } else { 100 },
            "m.room.server_acl": 100, "m.room.encryption": 100,
            // Group calls: every member may say they are in the room's call (MatrixRTC).
            "m.call.member": 0, "org.matrix.msc3401.call.member": 0, "m.rtc.member": 0
        },
        "notifications": { "room": 50 }
    });
    for (key, value) in request.power_level_content_override.iter().flatten() {
        power_levels[key] = value.clone();
    }
    power_levels
}

/// Sends the preset's state, `initial_state`, the name and topic, and the invites of local users
/// (those of other servers need their server's countersignature: [`invite_remote`]).
async fn send_initial_state(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    plan: &Plan,
    request: &NewRoom,
) -> Result<()> {
    let public = plan.preset == "public_chat";
    let join_rule = if public { "public" } else { "invite" };
    let mut events = vec![
        ("m.room.join_rules", json!({ "join_rule": join_rule })),
        (
            "m.room.history_visibility",
            json!({ "history_visibility": "shared" }),
        ),
    ];
    if !public {
        events.push(("m.room.guest_access", json!({ "guest_access": "can_join" })));
    }
    let send = |builder: PduBuilder| create_and_commit(services, room_id, sender, builder, None);
    for (kind, content) in events {
        send(PduBuilder::state(kind, "", content)).await?;
    }
    for state in &request.initial_state {
        let builder = PduBuilder::state(
            state.kind.as_str(),
            state.state_key.clone(),
            state.content.clone(),
        );
        send(builder).await?;
    }
    if let Some(name) = &request.name {
        send(PduBuilder::state(
            "m.room.name",
            "",
            json!({ "name": name }),
        ))
        .await?;
    }
    if let Some(topic) = &request.topic {
        // The plain topic, and the same text as the rich `m.topic` block (spec v1.15).
        let content = json!({
            "topic": topic,
            "m.topic": { "m.text": [{ "body": topic, "mimetype": "text/plain" }] }
        });
        send(PduBuilder::state("m.room.topic", "", content)).await?;
    }
    let server = services.globals.server_name();
    for invitee in request
        .invite
        .iter()
        .filter(|invitee| invitee.server_name() == server)
    {
        let mut content = json!({ "membership": "invite" });
        if request.is_direct {
            content["is_direct"] = json!(true);
        }
        send(PduBuilder::state(
            "m.room.member",
            invitee.as_str(),
            content,
        ))
        .await?;
    }
    Ok(())
}

/// Invites the invitees of other servers. The room exists whatever the other server answers; a
/// failed invite is logged, as Synapse does, rather than failing the whole creation.
async fn invite_remote(services: &Services, room_id: &RoomId, sender: &UserId, request: &NewRoom) {
    let server = services.globals.server_name();
    for invitee in request
        .invite
        .iter()
        .filter(|invitee| invitee.server_name() != server)
    {
        let extra = if request.is_direct {
            json!({ "is_direct": true })
        } else {
            json!({})
        };
        if let Err(error) =
            handshake::invite_remote(services, room_id, sender, invitee, extra).await
        {
            tracing::warn!(%invitee, %error, "inviting a user of another server at room creation failed");
        }
    }
}

/// The `additional_creators` of `creation_content`: user IDs, or `M_BAD_JSON`.
fn additional_creators(create_content: &Map<String, Value>) -> Result<Vec<OwnedUserId>> {
    let Some(value) = create_content.get("additional_creators") else {
        return Ok(Vec::new());
    };
    let invalid = || Error::bad_json("additional_creators must be an array of user IDs");
    value
        .as_array()
        .ok_or_else(invalid)?
        .iter()
        .map(|creator| {
            creator
                .as_str()
                .and_then(|text| OwnedUserId::try_from(text).ok())
                .ok_or_else(invalid)
        })
        .collect()
}

/// The shape the auth rules ask of power levels: levels are integers (from room version 10 JSON
/// integers, before that also strings holding one), `events`, `notifications` and `users` are
/// objects of levels, and `users` is keyed by user IDs. `M_BAD_JSON` otherwise.
fn check_power_levels(rules: &RoomVersionRules, content: &Value) -> Result<()> {
    let is_level = |value: &Value| {
        value.is_i64()
            || (!rules.authorization.integer_power_levels
                && value
                    .as_str()
                    .is_some_and(|text| text.trim().parse::<i64>().is_ok()))
    };
    let invalid = |field: &str| Error::bad_json(format!("invalid power levels: `{field}`"));
    let levels = ["ban", "invite", "kick", "redact"];
    let defaults = ["events_default", "state_default", "users_default"];
    for field in levels.iter().chain(&defaults) {
        if content.get(field).is_some_and(|value| !is_level(value)) {
            return Err(invalid(field));
        }
    }
    for field in ["events", "notifications", "users"] {
        let Some(value) = content.get(field) else {
            continue;
        };
        let map = value.as_object().ok_or_else(|| invalid(field))?;
        for (key, level) in map {
            let bad_key = field == "users" && <&UserId>::try_from(key.as_str()).is_err();
            if bad_key || !is_level(level) {
                return Err(invalid(&format!("{field}.{key}")));
            }
        }
    }
    Ok(())
}

/// Room creators have no place in `users` of power levels from room version 12: `M_BAD_JSON`.
pub fn reject_creators_in_users(users: &Value, creators: &[OwnedUserId]) -> Result<()> {
    if let Some(creator) = creators
        .iter()
        .find(|creator| users.get(creator.as_str()).is_some())
    {
        return Err(Error::bad_json(format!(
            "{creator} is a room creator and cannot be given a power level"
        )));
    }
    Ok(())
}
