//! Server-side key backups: `/room_keys/version` and `/room_keys/keys`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::{
        client::backup::{
            add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
            create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
            delete_backup_keys_for_session, delete_backup_version, get_backup_info,
            get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
            get_latest_backup_info, update_backup_version, BackupAlgorithm, KeyBackupData,
            RoomKeyBackup,
        },
        error::{ErrorKind, WrongRoomKeysVersionErrorData},
    },
    serde::Raw,
    OwnedRoomId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    api::Ctx,
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

/// The JSON of a ruma `Raw` value as sent.
fn value_of<T>(raw: &Raw<T>) -> Result<Value> {
    raw.deserialize_as::<Value>()
        .map_err(|error| Error::bad_json(format!("invalid JSON: {error}")))
}

/// Stored JSON as a ruma `Raw` value.
fn raw_of<T>(value: &Value) -> Result<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(Error::internal)
}

/// A number of keys as the `count` of an answer.
fn count_of(count: usize) -> UInt {
    UInt::try_from(count).unwrap_or(UInt::MAX)
}

/// The stored version `version` of `user_id`, or `404 M_NOT_FOUND`.
fn stored_version(services: &Services, user_id: &UserId, version: u64) -> Result<Backup> {
    services
        .key_backup
        .get_version(user_id, version)?
        .ok_or_else(|| Error::not_found(format!("unknown backup version {version}")))
}

/// A version's algorithm, key count, etag and number, as `respond` (the constructor of a
/// `GET /room_keys/version` response) takes them.
fn version_info<T>(
    services: &Services,
    (user_id, version, backup): (&UserId, u64, &Backup),
    respond: fn(Raw<BackupAlgorithm>, UInt, String, String) -> T,
) -> Result<T> {
    let algorithm = raw_of(&json!({
        "algorithm": backup.algorithm,
        "auth_data": backup.auth_data,
    }))?;
    let count = services.key_backup.count_keys(user_id, version)?;
    Ok(respond(
        algorithm,
        count_of(count),
        backup.etag.to_string(),
        version.to_string(),
    ))
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
pub async fn create_backup_version(
    services: Arc<Services>,
    ctx: Ctx,
    request: create_backup_version::v3::Request,
) -> Result<create_backup_version::v3::Response> {
    let (algorithm, auth_data) = version_body(&value_of(&request.algorithm)?)?;
    let version =
        services
            .key_backup
            .create_version(&services.globals, ctx.user(), algorithm, auth_data)?;
    Ok(create_backup_version::v3::Response::new(
        version.to_string(),
    ))
}

/// `GET /_matrix/client/v3/room_keys/version`
///
/// The newest version, or `404 M_NOT_FOUND` when there is none.
pub async fn get_latest_backup_info(
    services: Arc<Services>,
    ctx: Ctx,
    _request: get_latest_backup_info::v3::Request,
) -> Result<get_latest_backup_info::v3::Response> {
    let (version, backup) = services
        .key_backup
        .get_latest_version(ctx.user())?
        .ok_or_else(|| Error::not_found("no backup version"))?;
    version_info(
        &services,
        (ctx.user(), version, &backup),
        get_latest_backup_info::v3::Response::new,
    )
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_backup_info::v3::Request,
) -> Result<get_backup_info::v3::Response> {
    let version = parse_version(&request.version)?;
    let backup = stored_version(&services, ctx.user(), version)?;
    version_info(
        &services,
        (ctx.user(), version, &backup),
        get_backup_info::v3::Response::new,
    )
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
///
/// Only `auth_data` can change: another algorithm, or a `version` in the body that differs from
/// the path, is `400 M_INVALID_PARAM`.
pub async fn update_backup_version(
    services: Arc<Services>,
    ctx: Ctx,
    request: update_backup_version::v3::Request,
) -> Result<update_backup_version::v3::Response> {
    let version = parse_version(&request.version)?;
    let body = value_of(&request.algorithm)?;
    let (algorithm, auth_data) = version_body(&body)?;
    let backup = stored_version(&services, ctx.user(), version)?;
    if let Some(body_version) = body.get("version") {
        if body_version.as_str() != Some(request.version.as_str()) {
            return Err(Error::invalid_param("version does not match the path"));
        }
    }
    if algorithm != backup.algorithm {
        return Err(Error::invalid_param("algorithm does not match"));
    }
    services
        .key_backup
        .update_version(ctx.user(), version, auth_data)?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_backup_version::v3::Request,
) -> Result<delete_backup_version::v3::Response> {
    let version = parse_version(&request.version)?;
    services.key_backup.require_version(ctx.user(), version)?;
    services.key_backup.delete_version(ctx.user(), version)?;
    Ok(delete_backup_version::v3::Response::new())
}

/// The `version` query parameter of a keys request, which must name an existing version.
fn keys_version(services: &Services, user_id: &UserId, version: &str) -> Result<u64> {
    let version = parse_version(version)?;
    services.key_backup.require_version(user_id, version)?;
    Ok(version)
}

/// The `version` of a keys upload, which must be the newest one: another existing version is
/// `403 M_WRONG_ROOM_KEYS_VERSION` with the current version.
fn writable_version(services: &Services, user_id: &UserId, version: &str) -> Result<u64> {
    let version = keys_version(services, user_id, version)?;
    let latest = services
        .key_backup
        .get_latest_version(user_id)?
        .map(|(latest, _)| latest);
    if latest != Some(version) {
        return Err(Error::matrix(
            ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                latest.map(|latest| latest.to_string()).unwrap_or_default(),
            )),
            format!("backup version {version} is not the current one"),
        ));
    }
    Ok(version)
}

/// The etag and key count of a version after a change.
fn counts(services: &Services, user_id: &UserId, version: u64) -> Result<(String, UInt)> {
    let backup = stored_version(services, user_id, version)?;
    let count = services.key_backup.count_keys(user_id, version)?;
    Ok((backup.etag.to_string(), count_of(count)))
}

/// Stores uploaded keys in `version`, which must be the newest one, and answers the version's
/// etag and key count. A stored key is kept when it is better than the new one (verified, then
/// lower first message index, then fewer forwards).
fn put_keys(
    services: &Services,
    user_id: &UserId,
    version: &str,
    rooms: impl IntoIterator<Item = (OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>)>,
) -> Result<(String, UInt)> {
    let version = writable_version(services, user_id, version)?;
    let mut keys = RoomKeys::new();
    for (room_id, sessions) in rooms {
        let mut checked = BTreeMap::new();
        for (session_id, data) in sessions {
            checked.insert(session_id, key_data(&data)?);
        }
        keys.insert(room_id.to_string(), checked);
    }
    services
        .key_backup
        .put_keys(&services.globals, user_id, version, &keys)?;
    counts(services, user_id, version)
}

/// One `KeyBackupData` as sent, after checking its fields.
fn key_data(data: &Raw<KeyBackupData>) -> Result<Value> {
    let data = value_of(data)?;
    let valid = data["first_message_index"].is_u64()
        && data["forwarded_count"].is_u64()
        && data["is_verified"].is_boolean()
        && data["session_data"].is_object();
    if valid {
        Ok(data)
    } else {
        Err(Error::bad_json(
            "key data needs first_message_index, forwarded_count, is_verified and session_data",
        ))
    }
}

/// `PUT /_matrix/client/v3/room_keys/keys`
///
/// Keys go only into the newest version; see [`put_keys`].
pub async fn add_backup_keys(
    services: Arc<Services>,
    ctx: Ctx,
    request: add_backup_keys::v3::Request,
) -> Result<add_backup_keys::v3::Response> {
    let rooms = request
        .rooms
        .into_iter()
        .map(|(room_id, room)| (room_id, room.sessions));
    let (etag, count) = put_keys(&services, ctx.user(), &request.version, rooms)?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: add_backup_keys_for_room::v3::Request,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let rooms = [(request.room_id, request.sessions)];
    let (etag, count) = put_keys(&services, ctx.user(), &request.version, rooms)?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    services: Arc<Services>,
    ctx: Ctx,
    request: add_backup_keys_for_session::v3::Request,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let sessions = BTreeMap::from([(request.session_id, request.session_data)]);
    let rooms = [(request.room_id, sessions)];
    let (etag, count) = put_keys(&services, ctx.user(), &request.version, rooms)?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

/// The stored sessions of one room as ruma's map of raw key data.
fn raw_sessions(sessions: BTreeMap<String, Value>) -> Result<BTreeMap<String, Raw<KeyBackupData>>> {
    sessions
        .into_iter()
        .map(|(session_id, data)| Ok((session_id, raw_of(&data)?)))
        .collect()
}

/// `GET /_matrix/client/v3/room_keys/keys`
///
/// A stored room ID that is not a valid one (older versions stored the `rooms` keys of an
/// upload unchecked) is left out with a warning.
pub async fn get_backup_keys(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_backup_keys::v3::Request,
) -> Result<get_backup_keys::v3::Response> {
    let version = keys_version(&services, ctx.user(), &request.version)?;
    let keys = services
        .key_backup
        .get_keys(ctx.user(), version, None, None)?;
    let mut rooms = BTreeMap::new();
    for (room_id, sessions) in keys {
        let Ok(room_id) = OwnedRoomId::try_from(room_id.as_str()) else {
            tracing::warn!(%room_id, "backed-up keys under an invalid room ID left out");
            continue;
        };
        rooms.insert(room_id, RoomKeyBackup::new(raw_sessions(sessions)?));
    }
    Ok(get_backup_keys::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
///
/// A room without keys is an empty `sessions` object.
pub async fn get_backup_keys_for_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_backup_keys_for_room::v3::Request,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let version = keys_version(&services, ctx.user(), &request.version)?;
    let room_id = request.room_id.as_str();
    let mut keys = services
        .key_backup
        .get_keys(ctx.user(), version, Some(room_id), None)?;
    let sessions = keys.remove(room_id).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(raw_sessions(
        sessions,
    )?))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
///
/// A missing session is `404 M_NOT_FOUND`.
pub async fn get_backup_keys_for_session(
    services: Arc<Services>,
    ctx: Ctx,
    request: get_backup_keys_for_session::v3::Request,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let version = keys_version(&services, ctx.user(), &request.version)?;
    let (room_id, session_id) = (request.room_id.as_str(), request.session_id.as_str());
    let data = services
        .key_backup
        .get_keys(ctx.user(), version, Some(room_id), Some(session_id))?
        .remove(room_id)
        .and_then(|mut sessions| sessions.remove(session_id))
        .ok_or_else(|| Error::not_found(format!("no key for session {session_id}")))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_of(
        &data,
    )?))
}

/// Deletes keys of an existing version (all, one room's or one session) and answers the
/// version's etag and key count.
fn delete_keys(
    services: &Services,
    user_id: &UserId,
    version: &str,
    (room_id, session_id): (Option<&str>, Option<&str>),
) -> Result<(String, UInt)> {
    let version = keys_version(services, user_id, version)?;
    services
        .key_backup
        .delete_keys(&services.globals, user_id, version, room_id, session_id)?;
    counts(services, user_id, version)
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_backup_keys::v3::Request,
) -> Result<delete_backup_keys::v3::Response> {
    let (etag, count) = delete_keys(&services, ctx.user(), &request.version, (None, None))?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_backup_keys_for_room::v3::Request,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let room = (Some(request.room_id.as_str()), None);
    let (etag, count) = delete_keys(&services, ctx.user(), &request.version, room)?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    services: Arc<Services>,
    ctx: Ctx,
    request: delete_backup_keys_for_session::v3::Request,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let session = (
        Some(request.room_id.as_str()),
        Some(request.session_id.as_str()),
    );
    let (etag, count) = delete_keys(&services, ctx.user(), &request.version, session)?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag, count,
    ))
}
