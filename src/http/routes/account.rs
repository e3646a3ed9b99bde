//! Client-server routes for server discovery, accounts and sessions, devices, profiles,
//! presence and the user directory, and the few Synapse admin endpoints Plait serves.

use http::Method;

use crate::api::{
    client::{
        account, appservice, device, discovery, oauth, presence, profile, thirdparty,
        user_directory,
    },
    synapse_admin,
};
use crate::http::{raw_route, route, typed, Auth, Route};
use Auth::{None as Open, Required as Token};

/// Server discovery: supported versions, `.well-known` files and capabilities.
pub(super) fn discovery() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/versions",
            Open,
            discovery::get_supported_versions,
        ),
        route(
            Method::GET,
            "/.well-known/matrix/client",
            Open,
            discovery::client_well_known,
        ),
        typed(
            Method::GET,
            "/.well-known/matrix/server",
            Open,
            discovery::server_well_known,
        ),
        typed(
            Method::GET,
            "/.well-known/matrix/policy_server",
            Open,
            discovery::discover_policy_server,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/capabilities",
            Token,
            discovery::get_capabilities,
        ),
    ]
}

/// The OAuth 2.0 API: server metadata (spec and MSC2965 paths), and the authorization server's
/// own endpoints under `/_plait/oauth/`.
pub(super) fn oauth() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_matrix/client/v1/auth_metadata",
            Open,
            oauth::auth_metadata,
        ),
        route(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
            Open,
            oauth::auth_metadata,
        ),
        route(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer",
            Open,
            oauth::auth_issuer,
        ),
        raw_route(
            Method::POST,
            "/_plait/oauth/register",
            Open,
            oauth::register_client,
        ),
        raw_route(
            Method::GET,
            "/_plait/oauth/authorize",
            Open,
            oauth::authorize_page,
        ),
        raw_route(
            Method::POST,
            "/_plait/oauth/authorize",
            Open,
            oauth::authorize_submit,
        ),
        raw_route(Method::POST, "/_plait/oauth/token", Open, oauth::token),
        raw_route(Method::POST, "/_plait/oauth/revoke", Open, oauth::revoke),
    ]
}

/// Registration, login and logout, token refresh, OpenID tokens and account management.
pub(super) fn account() -> Vec<Route> {
    vec![
        route(
            Method::POST,
            "/_matrix/client/v3/register",
            Open,
            account::register,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/register/available",
            Open,
            account::get_username_availability,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            Open,
            account::check_registration_token_validity,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/login",
            Open,
            account::get_login_types,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/login",
            Open,
            account::login,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/refresh",
            Open,
            account::refresh,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/logout",
            Token,
            account::logout,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/logout/all",
            Token,
            account::logout_all,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/user/{userId}/openid/request_token",
            Token,
            account::request_openid_token,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Token,
            account::whoami,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Token,
            account::change_password,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Token,
            account::deactivate,
        ),
    ]
}

/// What application services call as clients beyond the rest of the API, and the third-party
/// lookups clients make of them.
pub(super) fn appservices() -> Vec<Route> {
    vec![
        typed(
            Method::POST,
            "/_matrix/client/v1/appservice/{appserviceId}/ping",
            Token,
            appservice::request_ping,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/protocols",
            Token,
            thirdparty::get_protocols,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/protocol/{protocol}",
            Token,
            thirdparty::get_protocol,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/location/{protocol}",
            Token,
            thirdparty::get_location_for_protocol,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/user/{protocol}",
            Token,
            thirdparty::get_user_for_protocol,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/location",
            Token,
            thirdparty::get_location_for_room_alias,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/thirdparty/user",
            Token,
            thirdparty::get_user_for_user_id,
        ),
    ]
}

/// Device management.
pub(super) fn devices() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/v3/devices",
            Token,
            device::get_devices,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/devices/{deviceId}",
            Token,
            device::get_device,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/devices/{deviceId}",
            Token,
            device::update_device,
        ),
        route(
            Method::DELETE,
            "/_matrix/client/v3/devices/{deviceId}",
            Token,
            device::delete_device,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Token,
            device::delete_devices,
        ),
    ]
}

/// Profiles, presence and the user directory.
pub(super) fn profiles_and_presence() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/v3/profile/{userId}",
            Auth::Optional,
            profile::get_profile,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/profile/{userId}/{keyName}",
            Auth::Optional,
            profile::get_profile_field,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/profile/{userId}/{keyName}",
            Token,
            profile::set_profile_field,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/profile/{userId}/{keyName}",
            Token,
            profile::delete_profile_field,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/presence/{userId}/status",
            Token,
            presence::get_presence,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/presence/{userId}/status",
            Token,
            presence::set_presence,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/user_directory/search",
            Token,
            user_directory::search_users,
        ),
    ]
}

/// Synapse's admin API (docs/admin_api.md).
pub(super) fn synapse_admin() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_synapse/admin/v1/register",
            Open,
            synapse_admin::get_register_nonce,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/register",
            Open,
            synapse_admin::shared_secret_register,
        ),
        route(
            Method::POST,
            "/_synapse/admin/v1/send_server_notice",
            Token,
            synapse_admin::send_server_notice,
        ),
        route(
            Method::PUT,
            "/_synapse/admin/v1/send_server_notice/{txnId}",
            Token,
            synapse_admin::send_server_notice_txn,
        ),
    ]
}
