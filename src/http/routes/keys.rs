//! Client-server routes for end-to-end encryption: device and cross-signing keys, to-device
//! messages and server-side key backups.

use http::Method;

use crate::api::client::{backup, cross_signing, dehydrated, keys as client_keys, to_device};
use crate::http::{route, typed, Auth, Route};
use Auth::Required as Token;

/// Device keys, one-time keys, key changes, cross-signing and to-device messages.
pub(super) fn keys() -> Vec<Route> {
    vec![
        route(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Token,
            client_keys::upload_keys,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Token,
            client_keys::get_keys,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Token,
            client_keys::claim_keys,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/keys/changes",
            Token,
            client_keys::get_key_changes,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/keys/device_signing/upload",
            Token,
            cross_signing::upload_cross_signing_keys,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/keys/signatures/upload",
            Token,
            cross_signing::upload_signatures,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/{eventType}/{txnId}",
            Token,
            to_device::send_event_to_device,
        ),
    ]
}

/// The unstable prefix of dehydrated devices (MSC3814).
const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// Dehydrated devices (MSC3814): the device and its inbox.
pub(super) fn dehydrated_devices() -> Vec<Route> {
    const EVENTS: &str =
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events";
    vec![
        typed(
            Method::PUT,
            DEHYDRATED,
            Token,
            dehydrated::put_dehydrated_device,
        ),
        typed(
            Method::GET,
            DEHYDRATED,
            Token,
            dehydrated::get_dehydrated_device,
        ),
        typed(
            Method::DELETE,
            DEHYDRATED,
            Token,
            dehydrated::delete_dehydrated_device,
        ),
        typed(
            Method::POST,
            EVENTS,
            Token,
            dehydrated::post_dehydrated_events,
        ),
        route(
            Method::GET,
            EVENTS,
            Token,
            dehydrated::get_dehydrated_events,
        ),
    ]
}

/// Server-side key backup versions.
pub(super) fn backup_versions() -> Vec<Route> {
    vec![
        typed(
            Method::POST,
            "/_matrix/client/v3/room_keys/version",
            Token,
            backup::create_backup_version,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/room_keys/version",
            Token,
            backup::get_latest_backup_info,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/room_keys/version/{version}",
            Token,
            backup::get_backup_info,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/room_keys/version/{version}",
            Token,
            backup::update_backup_version,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/room_keys/version/{version}",
            Token,
            backup::delete_backup_version,
        ),
    ]
}

/// The keys in a server-side backup, all of them, by room or by session.
pub(super) fn backup_keys() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/v3/room_keys/keys",
            Token,
            backup::get_backup_keys,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/room_keys/keys",
            Token,
            backup::add_backup_keys,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/room_keys/keys",
            Token,
            backup::delete_backup_keys,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/room_keys/keys/{roomId}",
            Token,
            backup::get_backup_keys_for_room,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/room_keys/keys/{roomId}",
            Token,
            backup::add_backup_keys_for_room,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/room_keys/keys/{roomId}",
            Token,
            backup::delete_backup_keys_for_room,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}",
            Token,
            backup::get_backup_keys_for_session,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}",
            Token,
            backup::add_backup_keys_for_session,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}",
            Token,
            backup::delete_backup_keys_for_session,
        ),
    ]
}
