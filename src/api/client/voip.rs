//! VoIP: TURN credentials (`/voip/turnServer`) and MatrixRTC transport discovery (MSC4143).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{voip::turn_credentials, Services},
    util,
};

/// `GET /_matrix/client/v3/voip/turnServer`
///
/// Time-limited credentials for the TURN servers of `turn_uris` from `turn_shared_secret`
/// (the scheme of coturn's `use-auth-secret`); `{}` while TURN is not configured.
/// Untyped: ruma's response has no form for "no TURN server" (`{}`).
pub async fn get_turn_server_info(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    match turn_credentials(&services.config, ctx.user(), util::now_millis()) {
        Some(credentials) => serde_json::to_value(credentials).map_err(Error::internal),
        None => Ok(json!({})),
    }
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
///
/// The LiveKit JWT services of `rtc_livekit_service_urls`, as MatrixRTC transports.
/// Untyped: ruma has the endpoint only behind its `unstable-msc4143` feature.
pub async fn get_rtc_transports(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(json!({ "rtc_transports": rtc_foci(&services) }))
}

/// The configured LiveKit services as MSC4143 foci (`{"type": "livekit", ...}`).
pub fn rtc_foci(services: &Services) -> Vec<Value> {
    services
        .config
        .rtc_livekit_service_urls
        .iter()
        .map(|url| json!({ "type": "livekit", "livekit_service_url": url }))
        .collect()
}
