//! `PUT /send/{txnId}`: PDUs and EDUs pushed by other servers.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    error::Error,
    service::{presence, receipts, rooms::transaction, typing, Services},
};

/// Limits of one transaction (server-server API, "Transactions").
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// `PUT /_matrix/federation/v1/send/{txnId}`
///
/// Each PDU goes through `incoming::handle` (the spec's receipt checks, then commit), one room
/// after another in the order given (see [`transaction::receive_pdus`]); a retried transaction
/// gets the stored answer.
/// EDUs are applied after the PDUs (so that a join in the same transaction counts): `m.typing`,
/// `m.receipt` and `m.presence` through their services, which ignore what the origin may not
/// say; the encryption EDUs (device list and signing key updates, to-device messages) through
/// `device_lists::edus::receive_edus`; other EDU types are accepted and ignored. An EDU that is malformed
/// or not the origin's to send is skipped without failing the transaction.
/// Untyped: ruma's response maps event IDs, where a PDU without a valid room ID is answered under
/// the `event_id` it carries, which may be missing (`""`) or not an event ID.
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
    let results = transaction::receive_pdus(&services, &origin, &pdus).await?;
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
