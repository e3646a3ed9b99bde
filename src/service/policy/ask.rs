//! Asking a room's policy server for its signature: before a local event is committed
//! ([`sign_local_event`]) and for received events that lack a valid one ([`check_received`],
//! check 7 of "Checks performed on receipt of a PDU").
//!
//! No lock is held here: callers prepare the event under the room lock, release it, ask, and take
//! it again to commit.

use std::time::Duration;

use ruma::{room_version_rules::RoomVersionRules, CanonicalJsonObject, RoomId};

use super::{add_signature, has_valid_signature, is_exempt, room_policy, RoomPolicy};
use crate::{
    error::{Error, Result},
    service::{rooms::pdu::federation_value, Services},
};

/// How long a policy server gets to answer. Synapse gives it 3 s; a little more here, since a
/// timeout fails the client's request (see `docs/policy_servers.md`).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Gets the policy server's signature on `object` (an event as sent over federation, this
/// server's own signature included) and checks it against the key in `m.room.policy`. When the
/// policy server is this server, the event is judged and signed here without a request.
///
/// A refusal is `M_FORBIDDEN` with the policy server's own message; an unreachable policy
/// server, a timeout or a signature that does not verify is [`Error::Remote`].
pub async fn ask(
    services: &Services,
    policy: &RoomPolicy,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String> {
    let value = federation_value(object, rules)?;
    let signature = if policy.via == services.globals.server_name() {
        // A refusal reaches the client as `403 M_FORBIDDEN`, like a remote policy server's.
        super::sign_as_policy_server(services, None, &value).map_err(|error| match error {
            Error::Refused(message) => Error::forbidden(message),
            other => other,
        })?
    } else {
        let request = services.federation_request(
            &policy.via,
            http::Method::POST,
            "/_matrix/policy/v1/sign",
            Some(&value),
        );
        let answer = match tokio::time::timeout(ASK_TIMEOUT, request).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(Error::Matrix { kind, message })) => {
                // The policy server's error goes to the client as it was written (spec,
                // "Validating Policy Server signatures").
                let prefix = format!("{} answered: ", policy.via);
                let message = message
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
                    .unwrap_or(message);
                return Err(Error::matrix(kind, message));
            }
            Ok(Err(other)) => return Err(other),
            Err(_) => return Err(remote(policy, "the policy server did not answer in time")),
        };
        answer
            .get(policy.via.as_str())
            .and_then(|keys| keys.get(super::KEY_ID))
            .and_then(|signature| signature.as_str())
            .map(str::to_owned)
            .ok_or_else(|| remote(policy, "the policy server answered without a signature"))?
    };
    let mut signed = object.clone();
    add_signature(&mut signed, &policy.via, signature.clone());
    if !has_valid_signature(policy, &signed, rules) {
        return Err(remote(
            policy,
            "the policy server's signature does not verify with the key in m.room.policy",
        ));
    }
    Ok(signature)
}

fn remote(policy: &RoomPolicy, message: &'static str) -> Error {
    Error::Remote {
        server: policy.via.to_string(),
        source: message.into(),
    }
}

/// Adds the policy server's signature to a local event of a room that uses one (the caller has
/// checked that the event is not exempt). Any failure fails the event: it is neither stored nor
/// sent.
pub async fn sign_local_event(
    services: &Services,
    policy: &RoomPolicy,
    object: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<()> {
    let signature = ask(services, policy, object, rules).await?;
    add_signature(object, &policy.via, signature);
    Ok(())
}

/// Check 7 on a received event: whether it is recommended for inclusion. True when the room uses
/// no policy server, the event is exempt, or it carries a valid policy-server signature; otherwise
/// the policy server is asked once more (its key may have rotated since it signed) and a valid
/// answer is added to `object`. An error means the event is to be soft-failed; it carries the
/// policy server's refusal, or why it could not be asked.
pub async fn check_received(
    services: &Services,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    object: &mut CanonicalJsonObject,
) -> Result<()> {
    if is_exempt(object) {
        return Ok(());
    }
    let policy = match room_policy(services, room_id) {
        Ok(Some(policy)) => policy,
        Ok(None) => return Ok(()),
        Err(error) => {
            tracing::warn!(%error, "reading the room's policy server failed");
            return Err(error);
        }
    };
    if has_valid_signature(&policy, object, rules) {
        return Ok(());
    }
    match ask(services, &policy, object, rules).await {
        Ok(signature) => {
            add_signature(object, &policy.via, signature);
            Ok(())
        }
        Err(error) => {
            tracing::info!(%error, via = %policy.via, "the policy server does not recommend a received event");
            Err(error)
        }
    }
}
