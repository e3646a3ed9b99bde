//! Client-server routes for calls: TURN credentials, MatrixRTC transports, delayed events
//! (MSC4140) and Plait's call history.

use http::Method;

use crate::api::client::{calls, delayed_events, voip};
use crate::http::{route, Auth, Route};
use Auth::Required as Token;

/// TURN, RTC transports, delayed events and the call history.
pub(super) fn calls() -> Vec<Route> {
    vec![
        route(
            Method::GET,
            "/_matrix/client/v3/voip/turnServer",
            Token,
            voip::get_turn_server_info,
        ),
        route(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            Token,
            voip::get_rtc_transports,
        ),
        route(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            Token,
            delayed_events::get_delayed_events,
        ),
        route(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}",
            Token,
            delayed_events::update_delayed_event,
        ),
        route(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}",
            Token,
            delayed_events::update_delayed_event_by_path,
        ),
        route(
            Method::GET,
            "/_plait/client/v1/calls",
            Token,
            calls::get_calls,
        ),
    ]
}
