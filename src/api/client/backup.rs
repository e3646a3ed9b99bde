//! Server-side key backups: `/room_keys/version` and `/room_keys/keys`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::api::error::{ErrorKind, WrongRoomKeysVersionErrorData};
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        key_backup::{Backup, RoomKeys},
        Services,
    },
};

/// A version string as stored (versions are decimal numbers).
fn parse_version(version: &str) -> Result<u64> {
    version
        .parse()
        .map_err(|_| Error::not_found(format!("unknown backup version {version}")))
}

fn version_json(services: &Services, ctx: &Ctx, version: u64, backup: &Backup) -> Result<Value> {
    Ok(json!({
        "version": version.to_string(),
        "algorithm": backup.algorithm,
        "auth_data": backup.auth_data,
        "count": services.key_backup.count_keys(ctx.user(), version)?,
        "etag": backup.etag.to_string(),
    }))
}

/// `algorithm` and `auth_data` of a version body.
fn version_body(body: &Value) -> Result<(String, Value)> {
    let algorithm = body
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("algorithm must be a string"))?;
    let auth_data = body
        .get("auth_data")
        .filter(|data| data.is_object())
        .ok_or_else(|| Error::bad_json("auth_data must be an object"))?;
    Ok((algorithm.to_owned(), auth_data.clone()))
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (algorithm, auth_data) = version_body(&ctx.body)?;
    let version =
        services
            .key_backup
            .create_version(&services.globals, ctx.user(), algorithm, auth_data)?;
    Ok(json!({ "version": version.to_string() }))
}

/// `GET /_matrix/client/v3/room_keys/version`
///
/// The newest version, or `404 M_NOT_FOUND` when there is none.
pub async fn get_latest_backup_info(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let (version, backup) = services
        .key_backup
        .get_latest_version(ctx.user())?
        .ok_or_else(|| Error::not_found("no backup version"))?;
    version_json(&services, &ctx, version, &backup)
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = parse_version(ctx.param(0))?;
    let backup = services
        .key_backup
        .get_version(ctx.user(), version)?
        .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
    version_json(&services, &ctx, version, &backup)
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
///
/// Only `auth_data` can change: another algorithm, or a `version` in the body that differs from
/// the path, is `400 M_INVALID_PARAM`.
pub async fn update_backup_version(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = parse_version(ctx.param(0))?;
    let (algorithm, auth_data) = version_body(&ctx.body)?;
    let backup = services
        .key_backup
        .get_version(ctx.user(), version)?
        .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
    if let Some(body_version) = ctx.body.get("version") {
        if body_version.as_str() != Some(ctx.param(0)) {
            return Err(Error::invalid_param("version does not match the path"));
        }
    }
    if algorithm != backup.algorithm {
        return Err(Error::invalid_param("algorithm does not match"));
    }
    services
        .key_backup
        .update_version(ctx.user(), version, auth_data)?;
    Ok(json!({}))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = parse_version(ctx.param(0))?;
    services.key_backup.require_version(ctx.user(), version)?;
    services.key_backup.delete_version(ctx.user(), version)?;
    Ok(json!({}))
}

/// The `version` query parameter of a keys request, which must name an existing version.
fn keys_version(services: &Services, ctx: &Ctx) -> Result<u64> {
    let version = ctx
        .query("version")
        .ok_or_else(|| Error::missing_param("version is required"))?;
    let version = parse_version(version)?;
    services.key_backup.require_version(ctx.user(), version)?;
    Ok(version)
}

/// `count` and `etag` after a change.
fn counts(services: &Services, ctx: &Ctx, version: u64) -> HandlerResult {
    let backup = services
        .key_backup
        .get_version(ctx.user(), version)?
        .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))?;
    Ok(json!({
        "count": services.key_backup.count_keys(ctx.user(), version)?,
        "etag": backup.etag.to_string(),
    }))
}

/// `PUT /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]`
///
/// Keys go only into the newest version: another existing version is
/// `403 M_WRONG_ROOM_KEYS_VERSION` with the current version. A stored key is kept when it is
/// better than the new one (verified, then lower first message index, then fewer forwards).
pub async fn add_backup_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = keys_version(&services, &ctx)?;
    let latest = services
        .key_backup
        .get_latest_version(ctx.user())?
        .map(|(latest, _)| latest);
    if latest != Some(version) {
        return Err(Error::matrix(
            ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                latest.map(|latest| latest.to_string()).unwrap_or_default(),
            )),
            format!("backup version {version} is not the current one"),
        ));
    }
    let keys: RoomKeys = match ctx.params.len() {
        0 => {
            let rooms = ctx
                .body
                .get("rooms")
                .ok_or_else(|| Error::bad_json("rooms is required"))?;
            let rooms: BTreeMap<String, Value> = serde_json::from_value(rooms.clone())
                .map_err(|_| Error::bad_json("rooms must be an object"))?;
            let mut keys = RoomKeys::new();
            for (room_id, room) in rooms {
                keys.insert(room_id, sessions_of(&room)?);
            }
            keys
        }
        1 => BTreeMap::from([(ctx.room_param(0)?.to_string(), sessions_of(&ctx.body)?)]),
        _ => {
            check_key_data(&ctx.body)?;
            BTreeMap::from([(
                ctx.room_param(0)?.to_string(),
                BTreeMap::from([(ctx.param(1).to_owned(), ctx.body.clone())]),
            )])
        }
    };
    services
        .key_backup
        .put_keys(&services.globals, ctx.user(), version, &keys)?;
    counts(&services, &ctx, version)
}

/// The sessions of a `{"sessions": {…}}` room object.
fn sessions_of(room: &Value) -> Result<BTreeMap<String, Value>> {
    let sessions: BTreeMap<String, Value> = room
        .get("sessions")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|_| Error::bad_json("sessions must be an object"))?
        .ok_or_else(|| Error::bad_json("sessions is required"))?;
    for data in sessions.values() {
        check_key_data(data)?;
    }
    Ok(sessions)
}

/// Checks the fields of one `KeyBackupData`.
fn check_key_data(data: &Value) -> Result<()> {
    let valid = data["first_message_index"].is_u64()
        && data["forwarded_count"].is_u64()
        && data["is_verified"].is_boolean()
        && data["session_data"].is_object();
    if valid {
        Ok(())
    } else {
        Err(Error::bad_json(
            "key data needs first_message_index, forwarded_count, is_verified and session_data",
        ))
    }
}

/// `GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]`
///
/// A missing session is `404 M_NOT_FOUND`; a room without keys is an empty `sessions` object.
pub async fn get_backup_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = keys_version(&services, &ctx)?;
    let room_id = match ctx.params.is_empty() {
        true => None,
        false => Some(ctx.room_param(0)?.to_string()),
    };
    let session_id = ctx.params.get(1).map(String::as_str);
    let mut keys =
        services
            .key_backup
            .get_keys(ctx.user(), version, room_id.as_deref(), session_id)?;
    match (room_id, session_id) {
        (None, _) => {
            let rooms: BTreeMap<String, Value> = keys
                .into_iter()
                .map(|(room, sessions)| (room, json!({ "sessions": sessions })))
                .collect();
            Ok(json!({ "rooms": rooms }))
        }
        (Some(room_id), None) => {
            let sessions = keys.remove(&room_id).unwrap_or_default();
            Ok(json!({ "sessions": sessions }))
        }
        (Some(room_id), Some(session_id)) => keys
            .remove(&room_id)
            .and_then(|mut sessions| sessions.remove(session_id))
            .ok_or_else(|| Error::not_found(format!("no key for session {session_id}"))),
    }
}

/// `DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]`
pub async fn delete_backup_keys(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let version = keys_version(&services, &ctx)?;
    let room_id = match ctx.params.is_empty() {
        true => None,
        false => Some(ctx.room_param(0)?.to_string()),
    };
    services.key_backup.delete_keys(
        &services.globals,
        ctx.user(),
        version,
        room_id.as_deref(),
        ctx.params.get(1).map(String::as_str),
    )?;
    counts(&services, &ctx, version)
}
