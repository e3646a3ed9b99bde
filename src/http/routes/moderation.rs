//! Routes of Synapse's admin API for moderation (`docs/admin_api.md`, "Room moderation"):
//! deleting, purging and blocking rooms, federation destinations and media; all for server
//! admins.

use http::Method;

use crate::api::synapse_admin::room_moderation as moderation;
use crate::http::{route, Auth, Route};
use Auth::Required as Token;

/// Room deletion with its status, history purges with theirs, and room blocks.
pub(super) fn rooms() -> Vec<Route> {
    const BLOCK: &str = "/_synapse/admin/v1/rooms/{roomId}/block";
    vec![
        route(
            Method::DELETE,
            "/_synapse/admin/v2/rooms/{roomId}",
            Token,
            moderation::delete_room,
        ),
        route(
            Method::DELETE,
            "/_synapse/admin/v1/rooms/{roomId}",
            Token,
            moderation::delete_room_v1,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v2/rooms/{roomId}/delete_status",
            Token,
            moderation::delete_status_by_room,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v2/rooms/delete_status/{deleteId}",
            Token,
            moderation::delete_status_by_id,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/purge_history/{roomId}",
            Token,
            moderation::purge_history,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/purge_history/{roomId}/{eventId}",
            Token,
            moderation::purge_history_to_event,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/purge_history_status/{purgeId}",
            Token,
            moderation::purge_history_status,
        ),
        route(Method::PUT, BLOCK, Token, moderation::set_room_block),
        route(Method::GET, BLOCK, Token, moderation::get_room_block),
    ]
}

/// Federation destinations: the list, one, the rooms shared with one, and retrying one now.
pub(super) fn federation() -> Vec<Route> {
    const ONE: &str = "/_synapse/admin/v1/federation/destinations/{destination}";
    vec![
        route(
            Method::GET,
            "/_synapse/admin/v1/federation/destinations",
            Token,
            moderation::list_destinations,
        ),
        route(Method::GET, ONE, Token, moderation::get_destination),
        route(
            Method::GET,
            "/_synapse/admin/v1/federation/destinations/{destination}/rooms",
            Token,
            moderation::destination_rooms,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/federation/destinations/{destination}/reset_connection",
            Token,
            moderation::reset_connection,
        ),
    ]
}

/// Media: a user's uploads, deleting, quarantine and the remote cache.
pub(super) fn media() -> Vec<Route> {
    const USER_MEDIA: &str = "/_synapse/admin/v1/users/{userId}/media";
    vec![
        route(Method::GET, USER_MEDIA, Token, moderation::list_user_media),
        route(
            Method::DELETE,
            USER_MEDIA,
            Token,
            moderation::delete_user_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/room/{roomId}/media/quarantine",
            Token,
            moderation::quarantine_room_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/quarantine_media/{roomId}",
            Token,
            moderation::quarantine_room_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/user/{userId}/media/quarantine",
            Token,
            moderation::quarantine_user_media,
        ),
        route(
            Method::DELETE,
            "/_synapse/admin/v1/media/{serverName}/{mediaId}",
            Token,
            moderation::delete_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}",
            Token,
            moderation::quarantine_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}",
            Token,
            moderation::unquarantine_media,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/purge_media_cache",
            Token,
            moderation::purge_media_cache,
        ),
    ]
}
