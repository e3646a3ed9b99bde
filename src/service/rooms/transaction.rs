//! The PDUs of a transaction pushed by another server (`PUT /send/{txnId}`): each goes through
//! `incoming::handle`, or for a room this server is not in, through the handshake's update of
//! an outside membership.
//!
//! The PDUs of a `/send` transaction, each through `incoming::handle` or the handshake's outside-membership update, with the per-event answer.

use ruma::{OwnedRoomId, ServerName};
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::{
        rooms::{handshake, incoming, timeline::SendTo},
        Services,
    },
};

/// Handles the PDUs of a transaction one after another, in the order given; answers the
/// transaction's `pdus` map (see [`receive_pdu`]).
#[tracing::instrument(skip_all, fields(origin = %origin))]
pub async fn receive_pdus(
    services: &Services,
    origin: &ServerName,
    pdus: &[Value],
) -> Result<Map<String, Value>> {
    let mut results = Map::new();
    for pdu in pdus {
        let (event_id, result) = receive_pdu(services, origin, pdu).await?;
        results.insert(event_id, result);
    }
    Ok(results)
}

/// One PDU of a transaction: its event ID and `{}` (accepted, soft-failed or rejected by the
/// auth rules) or `{"error": …}` (dropped, or not processed). PDUs from servers a room's ACL
/// denies are refused.
async fn receive_pdu(
    services: &Services,
    origin: &ServerName,
    pdu: &Value,
) -> Result<(String, Value)> {
    let room_id = pdu
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|room| OwnedRoomId::try_from(room).ok());
    let fallback_id = pdu
        .get("event_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(room_id) = room_id else {
        return Ok((
            fallback_id,
            json!({ "error": "pdu without a valid room_id" }),
        ));
    };
    if !incoming::server_allowed(services, &room_id, origin)? {
        let error = json!({ "error": "the room's server ACL denies the origin" });
        return Ok((fallback_id, error));
    }
    // A room this server is not in only sends membership changes of our invitees/knockers,
    // checked and committed under the lock an invite arriving meanwhile waits for.
    let resident = handshake::is_resident(services, &room_id)?;
    let _outside_guard = match resident {
        true => None,
        false => Some(services.rooms.handshakes.lock_outside(&room_id).await),
    };
    let outside = match resident {
        true => Ok(None),
        false => handshake::outside_membership_update(services, origin, &room_id, pdu).await,
    };
    let outcome = match outside {
        Ok(Some(event_id)) => Ok(event_id),
        Ok(None) => incoming::handle(services, origin, &room_id, pdu, SendTo::Nobody)
            .await
            .map(|(event_id, _)| event_id),
        Err(error) => Err(error),
    };
    match outcome {
        Ok(event_id) => Ok((event_id.to_string(), json!({}))),
        Err(error) => {
            let event_id = services
                .rooms
                .room_version(&room_id)
                .ok()
                .and_then(|(_, version)| version.rules())
                .and_then(|rules| incoming::parse_pdu(pdu, &room_id, &rules).ok())
                .map(|parsed| parsed.event_id);
            // A rejected event was handled (server-server API, "Rejection": it "should not
            // cause the transaction request to be responded to with an error response");
            // an error tells the origin that the event was dropped or could not be processed.
            let rejected = match &event_id {
                Some(event_id) => services.rooms.rejected.is_rejected(event_id)?,
                None => false,
            };
            let event_id = event_id.map_or(fallback_id, |id| id.to_string());
            tracing::info!(%event_id, %error, rejected, "refused a pdu");
            let result = match rejected {
                true => json!({}),
                false => json!({ "error": error.shareable() }),
            };
            Ok((event_id, result))
        }
    }
}
