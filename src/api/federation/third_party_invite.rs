//! Third-party invites, server-server side: `/exchange_third_party_invite` (the invitee's server
//! asks this one, the inviter's, to sign and send the invite) and `/3pid/onbind` (an identity
//! server reports that a local user bound an identifier with pending invites).

use std::sync::Arc;

use serde_json::json;

use crate::{
    api::{Ctx, HandlerResult},
    service::{rooms::third_party, Services},
};

/// `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`
///
/// The partial invite must name a user of the asking server and, as sender, the local user who
/// sent the room's `m.room.third_party_invite` with the `signed` token; the signature is
/// verified against that event's public keys and the key's validity URL is asked before the
/// invite is signed here and sent (through `/v2/invite` to the asking server).
/// Untyped: the service checks residency and the ACL before the invite's shape, on the JSON as sent.
pub async fn exchange_third_party_invite(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let room_id = ctx.room_param(0)?;
    third_party::exchange(&services, ctx.origin(), &room_id, &ctx.body).await?;
    Ok(json!({}))
}

/// `PUT /_matrix/federation/v1/3pid/onbind`
///
/// Unauthenticated, as the spec has it (identity servers have no `X-Matrix` key): each invite is
/// only a claim until the inviting server has checked its signature against the room's
/// `m.room.third_party_invite`. The answer is the first invite's failure, if any failed.
/// Untyped: ruma refuses a body without `invites` (or `medium`, `address`, `mxid`) as
/// `M_BAD_JSON`, where `third_party_invites_refuse_bad_input` expects `M_MISSING_PARAM`.
pub async fn on_bind_third_party_identifier(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    third_party::on_bind(&services, &ctx.body).await?;
    Ok(json!({}))
}
