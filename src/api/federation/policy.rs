//! The policy-server endpoint (server-server API, "Policy Servers"): signing events for rooms
//! whose `m.room.policy` names this server.

use std::sync::Arc;

use ruma::api::federation::policy::sign_event;
use serde_json::Value;

use crate::{
    api::Ctx,
    error::{Error, Result},
    service::{policy, Services},
};

/// `POST /_matrix/policy/v1/sign`
///
/// Answers `{ "<server name>": { "ed25519:policy_server": "<signature>" } }` when this server is
/// the room's policy server and its policy accepts the event (`service::policy::serve`).
/// `404 M_UNRECOGNIZED` while `policy_server_enabled` is off, `404 M_NOT_FOUND` for a room this
/// server is not the policy server of, `400 M_BAD_JSON` for a malformed PDU, `413 M_TOO_LARGE`
/// over 65536 bytes, `403 M_FORBIDDEN` for a server the room's ACL denies and `400 M_FORBIDDEN`
/// when the policy refuses the event.
pub async fn sign_event(
    services: Arc<Services>,
    ctx: Ctx,
    request: sign_event::v1::Request,
) -> Result<sign_event::v1::Response> {
    let pdu: Value = serde_json::from_str(request.pdu.get())
        .map_err(|error| Error::bad_json(format!("invalid PDU: {error}")))?;
    let signature = policy::sign_as_policy_server(&services, Some(ctx.origin()), &pdu)?;
    Ok(sign_event::v1::Response::new(
        services.globals.server_name().to_owned(),
        signature,
    ))
}
