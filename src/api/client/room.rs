//! Room creation.

use std::sync::Arc;

use ruma::{api::error::ErrorKind, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{
    error::Error,
    http::{Ctx, HandlerResult},
    service::{
        rooms::{
            handshake,
            timeline::{create_and_commit, PduBuilder},
            version::rules_for,
        },
        Services,
    },
    util,
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateRoomBody {
    preset: Option<String>,
    visibility: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    room_alias_name: Option<String>,
    invite: Vec<OwnedUserId>,
    is_direct: bool,
    initial_state: Vec<InitialState>,
    power_level_content_override: Option<Map<String, Value>>,
    room_version: Option<String>,
    creation_content: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct InitialState {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: Value,
}

/// `POST /_matrix/client/v3/createRoom`
///
/// Presets `private_chat`, `trusted_private_chat` and `public_chat`; events are sent in the spec's
/// order: create, creator's join, power levels, canonical alias, preset state, initial state,
/// name, topic, invites.
pub async fn create_room(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body: CreateRoomBody = ctx.body_as()?;
    let sender = ctx.user().to_owned();
    let server = services.globals.server_name().to_owned();
    let version_text = body
        .room_version
        .clone()
        .unwrap_or_else(|| services.config.default_room_version.clone());
    let version = RoomVersionId::try_from(version_text.as_str())
        .map_err(|_| Error::matrix(ErrorKind::UnsupportedRoomVersion, "invalid room version"))?;
    let rules = rules_for(&version)?;
    let preset = body.preset.clone().unwrap_or_else(|| {
        if body.visibility.as_deref() == Some("public") {
            "public_chat".into()
        } else {
            "private_chat".into()
        }
    });
    if !["private_chat", "trusted_private_chat", "public_chat"].contains(&preset.as_str()) {
        return Err(Error::bad_json(format!("unknown preset {preset}")));
    }
    let alias = match &body.room_alias_name {
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
    for invitee in &body.invite {
        if invitee.server_name() == server && !services.users.exists(invitee)? {
            return Err(Error::not_found(format!("user {invitee} does not exist")));
        }
    }

    let mut create_content = body.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), json!(version.as_str()));
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), json!(sender));
    }
    // Room version 12: the creator and `additional_creators` are privileged; in a trusted private
    // chat the invitees become creators too.
    let mut additional_creators = additional_creators(&create_content)?;
    if rules.authorization.additional_room_creators {
        if preset == "trusted_private_chat" {
            for invitee in &body.invite {
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
        let mut creators = additional_creators.clone();
        creators.push(sender.clone());
        if let Some(users) = body
            .power_level_content_override
            .as_ref()
            .and_then(|overrides| overrides.get("users"))
        {
            reject_creators_in_users(users, &creators)?;
        }
    }
    let placeholder = OwnedRoomId::try_from(format!("!{}:{server}", util::random_string(18)))
        .map_err(Error::internal)?;
    let (_, room_id) = create_and_commit(
        &services,
        &placeholder,
        &sender,
        PduBuilder::state("m.room.create", "", Value::Object(create_content)),
        None,
    )
    .await?;
    let send = |builder: PduBuilder| create_and_commit(&services, &room_id, &sender, builder, None);

    let profile = services.users.get_profile(&sender)?.unwrap_or_default();
    let mut join = json!({ "membership": "join" });
    for field in ["displayname", "avatar_url"] {
        if let Some(value) = profile.get(field) {
            join[field] = value.clone();
        }
    }
    send(PduBuilder::state("m.room.member", sender.as_str(), join)).await?;

    let mut users = Map::new();
    if !creators_are_privileged {
        users.insert(sender.to_string(), json!(100));
    }
    if preset == "trusted_private_chat" && !creators_are_privileged {
        for invitee in &body.invite {
            users.insert(invitee.to_string(), json!(100));
        }
    }
    let mut power_levels = json!({
        "users": users, "users_default": 0, "events_default": 0, "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": if preset == "public_chat" { 50 } else { 0 },
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50,
            // Upgrading a version 12 room is for its creators (whose power is above any level).
            "m.room.tombstone": if creators_are_privileged { 150 } else { 100 },
            "m.room.server_acl": 100, "m.room.encryption": 100
        },
        "notifications": { "room": 50 }
    });
    if let Some(overrides) = body.power_level_content_override {
        for (key, value) in overrides {
            power_levels[key] = value;
        }
    }
    send(PduBuilder::state("m.room.power_levels", "", power_levels)).await?;
    if let Some(alias) = &alias {
        send(PduBuilder::state(
            "m.room.canonical_alias",
            "",
            json!({ "alias": alias }),
        ))
        .await?;
    }
    let join_rule = if preset == "public_chat" {
        "public"
    } else {
        "invite"
    };
    send(PduBuilder::state(
        "m.room.join_rules",
        "",
        json!({ "join_rule": join_rule }),
    ))
    .await?;
    send(PduBuilder::state(
        "m.room.history_visibility",
        "",
        json!({ "history_visibility": "shared" }),
    ))
    .await?;
    if preset != "public_chat" {
        send(PduBuilder::state(
            "m.room.guest_access",
            "",
            json!({ "guest_access": "can_join" }),
        ))
        .await?;
    }
    for state in body.initial_state {
        send(PduBuilder::state(
            state.kind.as_str(),
            state.state_key,
            state.content,
        ))
        .await?;
    }
    if let Some(name) = body.name {
        send(PduBuilder::state(
            "m.room.name",
            "",
            json!({ "name": name }),
        ))
        .await?;
    }
    if let Some(topic) = body.topic {
        send(PduBuilder::state(
            "m.room.topic",
            "",
            // The plain topic, and the same text as the rich `m.topic` block (spec v1.15).
            json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic, "mimetype": "text/plain" }] } }),
        )).await?;
    }
    // Local invitees are invited in the creation's sequence; those of other servers need their
    // server's countersignature, so they are invited once the room is complete (below).
    let own_server = services.globals.server_name().to_owned();
    let (local_invitees, remote_invitees): (Vec<_>, Vec<_>) = body
        .invite
        .iter()
        .partition(|invitee| invitee.server_name() == own_server);
    for invitee in local_invitees {
        let mut content = json!({ "membership": "invite" });
        if body.is_direct {
            content["is_direct"] = json!(true);
        }
        send(PduBuilder::state(
            "m.room.member",
            invitee.as_str(),
            content,
        ))
        .await?;
    }
    if let Some(alias) = &alias {
        services.rooms.alias.set(alias, &room_id, &sender)?;
    }
    if body.visibility.as_deref() == Some("public") {
        services.rooms.alias.set_public(&room_id, true)?;
    }
    for invitee in remote_invitees {
        let extra = if body.is_direct {
            json!({ "is_direct": true })
        } else {
            json!({})
        };
        // The room exists whatever the other server answers; a failed invite is logged, as
        // Synapse does, rather than failing the whole creation.
        if let Err(error) =
            handshake::invite_remote(&services, &room_id, &sender, invitee, extra).await
        {
            tracing::warn!(%invitee, %error, "inviting a user of another server at room creation failed");
        }
    }
    Ok(json!({ "room_id": room_id }))
}

/// The `additional_creators` of `creation_content`: user IDs, or `M_BAD_JSON`.
fn additional_creators(create_content: &Map<String, Value>) -> Result<Vec<OwnedUserId>, Error> {
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

/// Room creators have no place in `users` of power levels from room version 12: `M_BAD_JSON`.
pub fn reject_creators_in_users(users: &Value, creators: &[OwnedUserId]) -> Result<(), Error> {
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
