//! `PUT /send/{txnId}`: PDUs and EDUs pushed by other servers.

use std::sync::Arc;

use ruma::OwnedRoomId;
use serde_json::{json, Map, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{
        presence, receipts,
        rooms::{handshake, incoming, timeline::SendTo},
        typing, Services,
    },
};

/// Limits of one transaction (server-server API, "Transactions").
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// `PUT /_matrix/federation/v1/send/{txnId}`
///
/// Each PDU goes through `incoming::handle` (the spec's receipt checks, then commit), one room
/// after another in the order given. The answer maps every event ID to `{}` (accepted, soft-failed
/// or rejected by the auth rules) or `{"error": …}` (dropped, or not processed); a retried
/// transaction gets the stored answer. PDUs from servers a room's ACL denies are refused.
/// EDUs are applied after the PDUs (so that a join in the same transaction counts): `m.typing`,
/// `m.receipt` and `m.presence` through their services, which ignore what the origin may not
/// say; the encryption EDUs (device list and signing key updates, to-device messages) through
/// `device_lists::edus::receive_edus`; other EDU types are accepted and ignored. An EDU that is malformed
/// or not the origin's to send is skipped without failing the transaction.
pub async fn send_transaction_message(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let origin = ctx.origin().to_owned();
    let txn_id = ctx.param(0).to_owned();
    if ctx.body.get("origin").and_then(Value::as_str) != Some(origin.as_str()) {
        return Err(Error::forbidden(
            "the transaction's origin is not the signing server",
        ));
    }
    if let Some(response) = services.received.get_response(&origin, &txn_id)? {
        return Ok(response);
    }
    let pdus = ctx
        .body
        .get("pdus")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let edus = ctx
        .body
        .get("edus")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "a transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let mut results = Map::new();
    for pdu in &pdus {
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
            results.insert(
                fallback_id,
                json!({ "error": "pdu without a valid room_id" }),
            );
            continue;
        };
        if !incoming::server_allowed(&services, &room_id, &origin)? {
            results.insert(
                fallback_id,
                json!({ "error": "the room's server ACL denies the origin" }),
            );
            continue;
        }
        // A room this server is not in only sends membership changes of our invitees/knockers.
        let outside = match handshake::is_resident(&services, &room_id)? {
            true => Ok(None),
            false => handshake::outside_membership_update(&services, &origin, &room_id, pdu).await,
        };
        let outcome = match outside {
            Ok(Some(event_id)) => Ok(event_id),
            Ok(None) => incoming::handle(&services, &origin, &room_id, pdu, SendTo::Nobody)
                .await
                .map(|(event_id, _)| event_id),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(event_id) => {
                results.insert(event_id.to_string(), json!({}));
            }
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
                results.insert(event_id, result);
            }
        }
    }
    for edu in edus {
        let content = edu.get("content").unwrap_or(&Value::Null);
        match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.typing") => typing::receive_edu(&services, &origin, content)?,
            Some("m.receipt") => receipts::receive_edu(&services, &origin, content)?,
            Some("m.presence") => presence::receive_edu(&services, &origin, content)?,
            Some(other) => tracing::trace!(edu_type = other, "an EDU for user_keys or ignored"),
            None => tracing::debug!("ignoring an EDU without edu_type"),
        }
    }
    crate::service::device_lists::edus::receive_edus(&services, &origin, edus);
    let response = json!({ "pdus": results });
    services
        .received
        .set_response(&origin, &txn_id, &response)?;
    Ok(response)
}
