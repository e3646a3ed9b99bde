//! Discovery: supported versions, `.well-known`, capabilities.

use std::sync::Arc;

use ruma::{
    api::{
        client::discovery::{
            discover_homeserver::HomeserverInfo, discover_policy_server, get_supported_versions,
        },
        federation::discovery::discover_homeserver as discover_server,
    },
    serde::Base64,
    OwnedServerName,
};
use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    error::{Error, Result},
    service::Services,
};

/// The spec versions this server implements.
/// Up to v1.15, as Synapse: the endpoints the spec data lists as missing in `spec/` are
/// optional ones (third-party IDs, SSO, third-party protocols), the OAuth 2.0 API of v1.15 is an
/// alternative to the legacy one, and v1.18's admin lock and suspend endpoints are not served.
const VERSIONS: [&str; 16] = [
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15",
];

/// The unstable features (MSCs) this server serves, as `/versions` lists them.
const UNSTABLE_FEATURES: &[&str] = &[
    // Simplified sliding sync (MSC4186), without which Element X refuses the server.
    "org.matrix.simplified_msc3575",
    // Room summaries (stable in v1.15; the unstable path is served too).
    "im.nheko.summary",
    // Mutual rooms, under its unstable path too.
    "uk.half-shot.msc2666.query_mutual_rooms",
    // Dehydrated devices.
    "org.matrix.msc3814",
    // `state_after` in `/sync` (`use_state_after`, under its unstable name too).
    "org.matrix.msc4222",
    // Delayed events, which Element Call needs to end a call's membership when a client vanishes.
    "org.matrix.msc4140",
    // MatrixRTC transports (`rtc/transports`).
    "org.matrix.msc4143",
];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions(
    _services: Arc<Services>,
    _ctx: Ctx,
    _request: get_supported_versions::Request,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(
        VERSIONS
            .iter()
            .map(|version| (*version).to_owned())
            .collect(),
    );
    response.unstable_features = UNSTABLE_FEATURES
        .iter()
        .map(|feature| ((*feature).to_owned(), true))
        .collect();
    Ok(response)
}

/// `GET /.well-known/matrix/client`
///
/// `m.homeserver`, and `org.matrix.msc4143.rtc_foci` (MSC4143) when LiveKit services are
/// configured.
/// Untyped: ruma's response has no `rtc_foci` without its `unstable-msc4143` feature.
pub async fn client_well_known(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    let info = HomeserverInfo::new(client_base_url(&services.config));
    let mut answer = json!({ "m.homeserver": info });
    let foci = super::voip::rtc_foci(&services);
    if !foci.is_empty() {
        answer["org.matrix.msc4143.rtc_foci"] = json!(foci);
    }
    Ok(answer)
}

/// The base URL clients are told to use: `client_base_url`, else the listener's address.
fn client_base_url(config: &crate::config::Config) -> String {
    config
        .client_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen))
}

/// `GET /.well-known/matrix/server`
///
/// Server delegation: `m.server` from `well_known_server`. Served by the same router as the
/// client API, so it answers on the client listener (where a reverse proxy for the server name's
/// port 443 sends it) and on the federation listener alike; `404 M_NOT_FOUND` while unset, which
/// tells other servers to connect to the server name itself.
pub async fn server_well_known(
    services: Arc<Services>,
    _ctx: Ctx,
    _request: discover_server::Request,
) -> Result<discover_server::Response> {
    let Some(delegated) = services.config.well_known_server.as_deref() else {
        return Err(Error::not_found("this server does not delegate federation"));
    };
    // `Config::validate` has checked it is a host name with an optional port.
    let server = OwnedServerName::try_from(delegated).map_err(Error::internal)?;
    Ok(discover_server::Response::new(server))
}

/// `GET /.well-known/matrix/policy_server`
///
/// The public key of this server's policy-server role, for a room's `m.room.policy`; `404
/// M_NOT_FOUND` while `policy_server_enabled` is off.
pub async fn discover_policy_server(
    services: Arc<Services>,
    _ctx: Ctx,
    _request: discover_policy_server::Request,
) -> Result<discover_policy_server::Response> {
    let key = services
        .policy
        .public_key()
        .ok_or_else(|| Error::not_found("this server is not a policy server"))?;
    let key = Base64::parse(key).map_err(Error::internal)?;
    Ok(discover_policy_server::Response::new(key))
}

/// `GET /_matrix/client/v3/capabilities`
///
/// Untyped: ruma's `Capabilities` leaves out a capability at its default value
/// (`m.change_password` enabled), and clients get every one today.
/// `m.account_moderation` tells server admins that they may lock and suspend accounts.
pub async fn get_capabilities(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let admin = services.users.is_admin(ctx.user())?;
    let available: serde_json::Map<_, _> = (1..=12)
        .map(|version| (version.to_string(), json!("stable")))
        .collect();
    Ok(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": services.config.default_room_version, "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            "m.account_moderation": { "lock": admin, "suspend": admin }
        }
    }))
}
