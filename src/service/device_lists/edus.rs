//! The encryption EDUs of a received federation transaction: device list updates, signing key
//! updates and to-device messages.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{OwnedUserId, ServerName};
use serde_json::Value;

use super::remote;
use crate::{
    error::{Error, Result},
    service::{to_device, Services},
};

/// Acts on the EDUs of a received transaction that concern encryption; other EDU types are
/// left to their own handlers. A bad EDU is skipped: the spec gives no way to reject one.
/// Device lists that an update could not be applied to are fetched again in the background.
pub fn receive_edus(services: &Arc<Services>, origin: &ServerName, edus: &[Value]) {
    let mut resync = BTreeSet::new();
    for edu in edus {
        let content = &edu["content"];
        let result = match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.device_list_update") => origin_user(origin, &content["user_id"])
                .and_then(|user_id| {
                    let stale = remote::receive_device_list_update(services, &user_id, content)?;
                    Ok(stale.then_some(user_id))
                })
                .map(|stale| resync.extend(stale)),
            Some("m.signing_key_update") => {
                origin_user(origin, &content["user_id"]).and_then(|user_id| {
                    remote::receive_signing_key_update(services, &user_id, content)
                })
            }
            Some("m.direct_to_device") => origin_user(origin, &content["sender"])
                .and_then(|sender| to_device::receive_remote(services, &sender, content)),
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(%origin, %error, "ignored an encryption EDU");
        }
    }
    for user_id in resync {
        let services = Arc::clone(services);
        tokio::spawn(async move {
            if let Err(error) = remote::resync(&services, &user_id).await {
                tracing::warn!(%user_id, %error, "fetching a remote device list failed");
            }
        });
    }
}

/// The user an EDU speaks for, who must belong to the origin server.
fn origin_user(origin: &ServerName, value: &Value) -> Result<OwnedUserId> {
    let user_id = value
        .as_str()
        .and_then(|user| OwnedUserId::try_from(user).ok())
        .ok_or_else(|| Error::bad_json("the EDU names no valid user"))?;
    if user_id.server_name() != origin {
        return Err(Error::forbidden(format!(
            "{origin} cannot speak for {user_id}"
        )));
    }
    Ok(user_id)
}
