//! Client-server routes for what a client syncs and configures about its own view: `/sync`
//! and sliding sync,
//! typing and receipts, push rules and pushers, account data, filters and tags.

use http::Method;

use crate::api::client::{
    account_data, push_rules, pushers, receipt, sliding_sync, sync, tags, typing,
};
use crate::http::{route, typed, Auth, Route};
use Auth::Required as Token;

/// `/sync`, typing notifications, receipts and read markers.
pub(super) fn sync_and_ephemeral() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_matrix/client/v3/sync",
            Token,
            sync::sync_events,
        )
        .without_activity(),
        route(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Token,
            sliding_sync::sync_events_v5,
        )
        .without_activity(),
        route(
            Method::PUT,
            "/_matrix/client/v3/rooms/{roomId}/typing/{userId}",
            Token,
            typing::create_typing_event,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}",
            Token,
            receipt::create_receipt,
        ),
        typed(
            Method::POST,
            "/_matrix/client/v3/rooms/{roomId}/read_markers",
            Token,
            receipt::set_read_marker,
        ),
    ]
}

/// Push rules.
pub(super) fn push_rules() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_matrix/client/v3/pushrules/",
            Token,
            push_rules::get_pushrules_all,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/",
            Token,
            push_rules::get_pushrules_global_scope,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}",
            Token,
            push_rules::get_pushrule,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}",
            Token,
            push_rules::set_pushrule,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}",
            Token,
            push_rules::delete_pushrule,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled",
            Token,
            push_rules::is_pushrule_enabled,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled",
            Token,
            push_rules::set_pushrule_enabled,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions",
            Token,
            push_rules::get_pushrule_actions,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions",
            Token,
            push_rules::set_pushrule_actions,
        ),
    ]
}

/// Pushers and the notifications list.
pub(super) fn pushers() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/v3/pushers",
            Token,
            pushers::get_pushers,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Token,
            pushers::set_pusher,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v3/notifications",
            Token,
            pushers::get_notifications,
        ),
    ]
}

/// Account data, filters and room tags.
pub(super) fn account_data() -> Vec<Route> {
    vec![
        typed(
            Method::GET,
            "/_matrix/client/v3/user/{userId}/account_data/{type}",
            Token,
            account_data::get_global_account_data,
        ),
        typed(
            Method::PUT,
            "/_matrix/client/v3/user/{userId}/account_data/{type}",
            Token,
            account_data::set_global_account_data,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}",
            Token,
            account_data::get_room_account_data,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}",
            Token,
            account_data::set_room_account_data,
        ),
        route(
            Method::POST,
            "/_matrix/client/v3/user/{userId}/filter",
            Token,
            account_data::create_filter,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/user/{userId}/filter/{filterId}",
            Token,
            account_data::get_filter,
        ),
        route(
            Method::GET,
            "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags",
            Token,
            tags::get_room_tags,
        ),
        route(
            Method::PUT,
            "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}",
            Token,
            tags::set_room_tag,
        ),
        typed(
            Method::DELETE,
            "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}",
            Token,
            tags::delete_room_tag,
        ),
    ]
}
