//! Routes of Synapse's admin API beyond registration and notices (`docs/admin_api.md`): accounts,
//! rooms, registration tokens and event reports, all of them for admins but the server version;
//! and the client-server API's reporting endpoints, whose reports the admins read.

use http::Method;

use crate::api::client::{admin, report};
use crate::api::synapse_admin::{moderation, registration_tokens as tokens, reports, rooms, users};
use crate::http::{route, typed, Auth, Route};
use Auth::{None as Open, Required as Token};

/// Accounts: the list, details, create and modify, deactivation, passwords, sessions, devices
/// and joined rooms; and the server version.
pub(super) fn users() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_synapse/admin/v1/server_version",
            Open,
            users::server_version,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v2/users",
            Token,
            users::list_users,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v3/users",
            Token,
            users::list_users_v3,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v2/users/{userId}",
            Token,
            users::get_user,
        ),
        route(
            Method::PUT,
            "/_synapse/admin/v2/users/{userId}",
            Token,
            users::put_user,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/deactivate/{userId}",
            Token,
            users::deactivate,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/reset_password/{userId}",
            Token,
            users::reset_password,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/whois/{userId}",
            Token,
            users::whois,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v2/users/{userId}/devices",
            Token,
            users::list_devices,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/users/{userId}/joined_rooms",
            Token,
            users::joined_rooms,
        ),
    ]
}

/// Account moderation: login-as and rate-limit overrides, and the client-server API's locks and
/// suspensions (spec v1.18).
pub(super) fn moderation() -> Vec<Route> {
    const OVERRIDE: &str = "/_synapse/admin/v1/users/{userId}/override_ratelimit";
    const LOCK: &str = "/_matrix/client/v1/admin/lock/{userId}";
    const SUSPEND: &str = "/_matrix/client/v1/admin/suspend/{userId}";
    vec![
        typed(Method::GET, LOCK, Token, admin::is_user_locked),
        typed(Method::PUT, LOCK, Token, admin::lock_user),
        typed(Method::GET, SUSPEND, Token, admin::is_user_suspended),
        typed(Method::PUT, SUSPEND, Token, admin::suspend_user),
        route(
            Method::POST,
            "/_synapse/admin/v1/users/{userId}/login",
            Token,
            moderation::login_as,
        ),
        route(
            Method::GET,
            OVERRIDE,
            Token,
            moderation::get_override_ratelimit,
        ),
        route(
            Method::POST,
            OVERRIDE,
            Token,
            moderation::set_override_ratelimit,
        ),
        route(
            Method::DELETE,
            OVERRIDE,
            Token,
            moderation::delete_override_ratelimit,
        ),
    ]
}

/// Rooms: the list, details, members, state and messages.
pub(super) fn rooms() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_synapse/admin/v1/rooms",
            Token,
            rooms::list_rooms,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/rooms/{roomId}",
            Token,
            rooms::get_room,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/rooms/{roomId}/members",
            Token,
            rooms::room_members,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/rooms/{roomId}/state",
            Token,
            rooms::room_state,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/rooms/{roomId}/messages",
            Token,
            rooms::room_messages,
        ),
    ]
}

/// Registration tokens: list, create, read, change and delete.
pub(super) fn registration_tokens() -> Vec<Route> {
    const ONE: &str = "/_synapse/admin/v1/registration_tokens/{token}";
    vec![
        route(
            Method::GET,
            "/_synapse/admin/v1/registration_tokens",
            Token,
            tokens::list_tokens,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/registration_tokens/new",
            Token,
            tokens::create_token,
        ),
        route(Method::GET, ONE, Token, tokens::get_token),
        route(Method::PUT, ONE, Token, tokens::update_token),
        route(Method::DELETE, ONE, Token, tokens::delete_token),
    ]
}

/// Reporting content (client-server API) and the admins' event reports.
pub(super) fn reports() -> Vec<Route> {
    const ONE: &str = "/_synapse/admin/v1/event_reports/{reportId}";
    vec![
        typed(
            Method::POST,
            "/_matrix/client/v3/rooms/{roomId}/report/{eventId}",
            Token,
            report::report_content,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/rooms/{roomId}/report",
            Token,
            report::report_room,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/users/{userId}/report",
            Token,
            report::report_user,
        ),
        route(
            Method::GET,
            "/_synapse/admin/v1/event_reports",
            Token,
            reports::list_event_reports,
        ),
        route(Method::GET, ONE, Token, reports::get_event_report),
        route(Method::DELETE, ONE, Token, reports::delete_event_report),
    ]
}
