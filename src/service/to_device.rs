//! Send-to-device messages: one inbox per device, read by `/sync` and emptied once the device
//! acknowledges them, plus the transaction IDs that make sending idempotent.
//!
//! The spec's rule (client-server API, "Send-to-Device messaging"): a message is delivered in
//! every `/sync` response until the client syncs with a `since` token from a response that held
//! it. So a response records the highest position it delivered together with its own
//! `next_batch`; a later sync whose `since` is at or past that `next_batch` deletes everything up
//! to the recorded position. A client retrying with an older token gets the messages again.
//!
//! One inbox per device at stream positions; a `/sync` response records its `next_batch` and the highest position it delivered, and a later sync whose `since` reaches that `next_batch` deletes what was delivered (the spec's acknowledgement), so a retried sync gets the messages again.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{api::error::ErrorKind, OwnedServerName, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    service::{notify::Topic, Services},
    store::{key, Batch, Db, Tree},
    util,
};

/// Most messages one `/sync` response delivers to a device; the rest follow in later syncs.
pub const MAX_PER_SYNC: usize = 100;

/// Owns `userdevicecount_todevice` (user ID 0xff device ID 0xff stream position u64 → JSON
/// event), `userdeviceid_todevicemark` (user ID 0xff device ID → `next_batch` u64, highest
/// delivered position u64) and `senderdevicetxnid_todevice` (sender user ID 0xff sender device
/// ID (empty for a remote sender) 0xff transaction or message ID → empty).
pub struct ToDevice {
    db: Arc<Db>,
    userdevicecount_todevice: Tree,
    userdeviceid_todevicemark: Tree,
    senderdevicetxnid_todevice: Tree,
}

/// One message for one device.
pub struct Delivery {
    pub user_id: OwnedUserId,
    pub device_id: String,
    /// The event as `/sync` shows it: `type`, `sender`, `content`.
    pub event: Value,
}

impl ToDevice {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
            userdevicecount_todevice: db.tree("userdevicecount_todevice"),
            userdeviceid_todevicemark: db.tree("userdeviceid_todevicemark"),
            senderdevicetxnid_todevice: db.tree("senderdevicetxnid_todevice"),
        }
    }

    /// The store the inboxes live in, for batches that add messages (`Globals::write_with_count`).
    pub fn store(&self) -> &Db {
        &self.db
    }

    fn txn_key(sender: &UserId, sender_device: &str, txn_id: &str) -> Vec<u8> {
        key::join(&[
            sender.as_bytes(),
            sender_device.as_bytes(),
            txn_id.as_bytes(),
        ])
    }

    /// Whether a sender's transaction (or a remote message ID) was already handled.
    pub fn has_txn(&self, sender: &UserId, sender_device: &str, txn_id: &str) -> Result<bool> {
        self.senderdevicetxnid_todevice
            .contains(&Self::txn_key(sender, sender_device, txn_id))
    }

    /// Records a transaction and puts its messages in the inboxes at stream position `count`.
    pub fn add_in_batch<'a>(
        &self,
        batch: &mut Batch,
        count: u64,
        (sender, sender_device, txn_id): (&UserId, &str, &str),
        deliveries: impl IntoIterator<Item = &'a Delivery>,
    ) {
        batch.insert(
            &self.senderdevicetxnid_todevice,
            &Self::txn_key(sender, sender_device, txn_id),
            b"",
        );
        for delivery in deliveries {
            batch.insert(
                &self.userdevicecount_todevice,
                &key::join(&[
                    delivery.user_id.as_bytes(),
                    delivery.device_id.as_bytes(),
                    &key::u64_bytes(count),
                ]),
                delivery.event.to_string().as_bytes(),
            );
        }
    }

    /// For a `/sync` of a device with `since` and `next_batch` `next`: deletes the messages the
    /// device acknowledged, then returns the oldest pending ones at or before `next`.
    pub fn take_for_sync(
        &self,
        user_id: &UserId,
        device_id: &str,
        since: Option<u64>,
        next: u64,
    ) -> Result<Vec<Value>> {
        let device = key::join(&[user_id.as_bytes(), device_id.as_bytes()]);
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut batch = Batch::default();
        let mark = self.userdeviceid_todevicemark.get(&device)?;
        let acknowledged = match (&mark, since) {
            (Some(mark), Some(since)) if key::read_u64(mark).unwrap_or(u64::MAX) <= since => {
                key::read_u64(mark.get(8..).unwrap_or_default()).unwrap_or(0)
            }
            _ => 0,
        };
        let mut events = Vec::new();
        let mut highest = 0;
        let mut acknowledged_any = false;
        for entry in self.userdevicecount_todevice.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let position = key::read_u64(&db_key[prefix.len()..])
                .ok_or_else(|| Error::corrupt("userdevicecount_todevice", "short key"))?;
            if position <= acknowledged {
                batch.remove(&self.userdevicecount_todevice, &db_key);
                acknowledged_any = true;
                continue;
            }
            if position > next || events.len() == MAX_PER_SYNC {
                break;
            }
            events.push(
                serde_json::from_slice(&value)
                    .map_err(|e| Error::corrupt("userdevicecount_todevice", e))?,
            );
            highest = position;
        }
        if !events.is_empty() {
            let mut value = key::u64_bytes(next).to_vec();
            value.extend_from_slice(&key::u64_bytes(highest));
            batch.insert(&self.userdeviceid_todevicemark, &device, &value);
        }
        // Most syncs change nothing here; skip the write (and its fsync with `sync_writes`).
        if acknowledged_any || !events.is_empty() {
            self.db.write(batch)?;
        }
        Ok(events)
    }

    /// For a device read by position instead of by `/sync` (a dehydrated device's
    /// `/events`): deletes the messages at or before `after` (the position the client says it
    /// has), then returns up to `limit` of the next ones with the highest position among them.
    pub fn take_after(
        &self,
        user_id: &UserId,
        device_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>)> {
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut batch = Batch::default();
        let mut events = Vec::new();
        let mut highest = None;
        let mut acknowledged_any = false;
        for entry in self.userdevicecount_todevice.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let position = key::read_u64(&db_key[prefix.len()..])
                .ok_or_else(|| Error::corrupt("userdevicecount_todevice", "short key"))?;
            if position <= after {
                batch.remove(&self.userdevicecount_todevice, &db_key);
                acknowledged_any = true;
                continue;
            }
            if events.len() == limit {
                break;
            }
            events.push(
                serde_json::from_slice(&value)
                    .map_err(|e| Error::corrupt("userdevicecount_todevice", e))?,
            );
            highest = Some(position);
        }
        if acknowledged_any {
            self.db.write(batch)?;
        }
        Ok((events, highest))
    }

    /// Drops a removed device's inbox.
    pub fn delete_device_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<()> {
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        for entry in self.userdevicecount_todevice.iter_prefix(&prefix) {
            batch.remove(&self.userdevicecount_todevice, &entry?.0);
        }
        batch.remove(
            &self.userdeviceid_todevicemark,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
        );
        Ok(())
    }
}

/// Most devices one request may address, counting each device a `*` expands to.
const MAX_DEVICES_PER_REQUEST: usize = 10_000;

/// Largest content of one message in bytes: what fits in a federation EDU (64 KiB) with room
/// for the envelope.
const MAX_CONTENT_BYTES: usize = 60 * 1024;

/// One send-to-device request: who sends, under which transaction ID, which event type, and
/// `messages` mapping user IDs to device IDs (or `*` for every device) to contents.
pub struct Send<'a> {
    pub sender: &'a UserId,
    pub sender_device: &'a str,
    pub txn_id: &'a str,
    pub event_type: &'a str,
    pub messages: &'a Map<String, Value>,
}

/// Sends messages to devices. A transaction ID already used by the sending device is a no-op.
/// Local devices get the message in their inbox; each remote server gets one
/// `m.direct_to_device` EDU. Unknown local devices are skipped. Inboxes and EDUs are written in
/// one batch.
pub fn send(services: &Services, request: Send<'_>) -> Result<()> {
    let Send {
        sender,
        sender_device,
        txn_id,
        event_type,
        messages,
    } = request;
    if services.to_device.has_txn(sender, sender_device, txn_id)? {
        return Ok(());
    }
    let mut deliveries = Vec::new();
    let mut remote: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
    for (user, devices) in messages {
        let user_id = OwnedUserId::try_from(user.as_str())
            .map_err(|_| Error::invalid_param(format!("invalid user ID {user}")))?;
        let devices = devices
            .as_object()
            .ok_or_else(|| Error::bad_json(format!("messages for {user} must be an object")))?;
        check_contents(&user_id, devices)?;
        if user_id.server_name() != services.globals.server_name() {
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user.clone(), Value::Object(devices.clone()));
            continue;
        }
        deliveries.extend(expand_local(
            services, sender, event_type, &user_id, devices,
        )?);
    }
    let remote_count: usize = remote.values().map(Map::len).sum();
    if deliveries.len() + remote_count > MAX_DEVICES_PER_REQUEST {
        return Err(Error::invalid_param(format!(
            "one request may address at most {MAX_DEVICES_PER_REQUEST} devices"
        )));
    }
    let destinations: Vec<OwnedServerName> = remote.keys().cloned().collect();
    services.globals.write_with_count(|batch, count| {
        let txn = (sender, sender_device, txn_id);
        add_local_in_batch(services, batch, count, txn, &deliveries)?;
        for (server, users) in &remote {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": event_type,
                    "message_id": util::random_string(16),
                    "messages": users,
                },
            });
            let destination = std::slice::from_ref(server);
            services
                .sending
                .queue_edu_in_batch(batch, destination, count, &edu);
        }
        Ok(())
    })?;
    wake_recipients(services, &deliveries);
    services.sending.wake(&destinations);
    Ok(())
}

/// Each content must be an object of at most [`MAX_CONTENT_BYTES`].
fn check_contents(user_id: &UserId, devices: &Map<String, Value>) -> Result<()> {
    for content in devices.values() {
        if !content.is_object() {
            return Err(Error::bad_json("each message content must be an object"));
        }
        if content.to_string().len() > MAX_CONTENT_BYTES {
            return Err(Error::matrix(
                ErrorKind::TooLarge,
                format!("a message to {user_id} is over {MAX_CONTENT_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Delivers an `m.direct_to_device` EDU from `sender` (already checked to be the origin's) to
/// local devices, once per `message_id`; entries for other servers' users are skipped.
pub fn receive_remote(services: &Services, sender: &UserId, content: &Value) -> Result<()> {
    let event_type = content["type"]
        .as_str()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs a type"))?;
    let message_id = content["message_id"]
        .as_str()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs a message_id"))?;
    if services.to_device.has_txn(sender, "", message_id)? {
        return Ok(());
    }
    let messages = content["messages"]
        .as_object()
        .ok_or_else(|| Error::bad_json("m.direct_to_device needs messages"))?;
    let mut deliveries = Vec::new();
    for (user, devices) in messages {
        let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        let Some(devices) = devices.as_object() else {
            continue;
        };
        if user_id.server_name() != services.globals.server_name() {
            continue;
        }
        deliveries.extend(expand_local(
            services, sender, event_type, &user_id, devices,
        )?);
    }
    services.globals.write_with_count(|batch, count| {
        add_local_in_batch(
            services,
            batch,
            count,
            (sender, "", message_id),
            &deliveries,
        )
    })?;
    wake_recipients(services, &deliveries);
    Ok(())
}

/// Puts messages for local devices in their inboxes and, for users of an appservice's
/// namespaces, in its queue (MSC4203), in one batch at stream position `count`; users that only
/// an appservice reads ([`Appservices::keeps_in_inbox`]) get no inbox entry.
///
/// [`Appservices::keeps_in_inbox`]: crate::service::appservice::Appservices::keeps_in_inbox
fn add_local_in_batch(
    services: &Services,
    batch: &mut Batch,
    count: u64,
    txn: (&UserId, &str, &str),
    deliveries: &[Delivery],
) -> Result<()> {
    let appservices = &services.appservices;
    let inbox = deliveries
        .iter()
        .filter(|delivery| appservices.keeps_in_inbox(&delivery.user_id));
    services.to_device.add_in_batch(batch, count, txn, inbox);
    appservices.queue_to_device_in_batch(batch, count, deliveries.iter())
}

/// The deliveries for one local user's `{device ID or "*": content}` map: `*` reaches every
/// device of the user, and unknown devices are skipped. A user who ignores the sender gets
/// nothing (the messages are dropped, as Synapse does; the sender is not told).
pub fn expand_local(
    services: &Services,
    sender: &UserId,
    event_type: &str,
    user_id: &UserId,
    devices: &Map<String, Value>,
) -> Result<Vec<Delivery>> {
    let mut deliveries = Vec::new();
    if services
        .account_data
        .ignored_users(user_id)?
        .contains(sender)
    {
        return Ok(deliveries);
    }
    for (device_id, content) in devices {
        let event = json!({ "type": event_type, "sender": sender, "content": content });
        let targets: Vec<String> = if device_id == "*" {
            services
                .users
                .iter_devices(user_id)?
                .into_iter()
                .map(|device| device.device_id.to_string())
                .collect()
        } else if services.users.get_device(user_id, device_id)?.is_some() {
            vec![device_id.clone()]
        } else {
            Vec::new()
        };
        deliveries.extend(targets.into_iter().map(|target| Delivery {
            user_id: user_id.to_owned(),
            device_id: target,
            event: event.clone(),
        }));
    }
    Ok(deliveries)
}

/// Wakes the syncs of every user who got a message.
pub fn wake_recipients(services: &Services, deliveries: &[Delivery]) {
    services.appservices.wake_all();
    let users: std::collections::BTreeSet<&UserId> = deliveries
        .iter()
        .map(|delivery| &*delivery.user_id)
        .collect();
    for user_id in users {
        services.notifier.wake(Topic::User(user_id.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn messages_stay_until_a_later_sync_acknowledges_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let inbox = ToDevice::open(&db);
        let user = <&UserId>::try_from("@bob:localhost").unwrap();
        let mut batch = Batch::default();
        let delivery = Delivery {
            user_id: user.to_owned(),
            device_id: "DEV".into(),
            event: json!({ "type": "m.test", "sender": "@alice:localhost", "content": {} }),
        };
        inbox.add_in_batch(&mut batch, 3, (user, "A", "txn"), &[delivery]);
        db.write(batch).unwrap();
        assert!(inbox.has_txn(user, "A", "txn").unwrap());
        assert_eq!(inbox.take_for_sync(user, "DEV", None, 4).unwrap().len(), 1);
        // A retry with the old token gets the message again; the new token acknowledges it.
        assert_eq!(
            inbox.take_for_sync(user, "DEV", Some(2), 5).unwrap().len(),
            1
        );
        assert!(inbox
            .take_for_sync(user, "DEV", Some(5), 6)
            .unwrap()
            .is_empty());
        assert!(inbox
            .take_for_sync(user, "DEV", Some(2), 6)
            .unwrap()
            .is_empty());
    }
}
