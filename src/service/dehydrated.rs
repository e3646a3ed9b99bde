//! Dehydrated devices (MSC3814): a device a client leaves on the server, with its keys and its
//! encrypted pickle (`device_data`), so that messages sent while all of a user's real devices are
//! offline can still be decrypted. Other users see it as one more device of the user; a new
//! device of the user downloads it, reads its to-device inbox through `/events`, and uploads a
//! fresh one.
//!
//! A user has at most one: uploading a new one removes the old device (its keys, inbox and
//! tokens) first. The device is an ordinary device record whose tokens are issued and thrown
//! away, so nobody can log in as it. Once the device is removed some other way (`/devices`, an
//! admin), its record no longer counts.

use std::sync::Arc;

use parking_lot::Mutex;
use ruma::{OwnedDeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    service::{
        keys::upload::{self, Upload},
        users::devices,
        Services,
    },
    store::{Db, Tree},
};

/// Most to-device messages one `/events` answer holds.
pub const MAX_EVENTS: usize = 100;

/// Owns `userid_dehydrateddevice` (user ID → JSON [`Record`]).
pub struct Dehydrated {
    userid_dehydrateddevice: Tree,
    /// Serialises uploads and deletions, each a read, a device change and a write.
    change: Mutex<()>,
}

/// A user's dehydrated device as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub device_id: OwnedDeviceId,
    /// The client's opaque device data, an object with an `algorithm`.
    pub device_data: Value,
}

/// What a client uploads (`PUT /dehydrated_device`).
pub struct NewDehydrated {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub device_data: Value,
    pub keys: Upload,
}

impl Dehydrated {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            userid_dehydrateddevice: db.tree("userid_dehydrateddevice"),
            change: Mutex::new(()),
        }
    }

    /// The user's dehydrated device record as stored (see [`current`]).
    fn get(&self, user_id: &UserId) -> Result<Option<Record>> {
        let Some(bytes) = self.userid_dehydrateddevice.get(user_id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("userid_dehydrateddevice", e))
    }
}

/// The user's dehydrated device, if any: a record whose device was removed since (through
/// `/devices`, a logout of all devices or an admin) counts as none.
pub fn current(services: &Services, user_id: &UserId) -> Result<Option<Record>> {
    let Some(record) = services.dehydrated.get(user_id)? else {
        return Ok(None);
    };
    let exists = services
        .users
        .get_device(user_id, record.device_id.as_str())?
        .is_some();
    Ok(exists.then_some(record))
}

/// Stores a user's new dehydrated device, replacing the old one: checks everything first, then
/// removes the old device, records the new one, creates its device and uploads its keys.
/// The record is written before the device, so a crash in between leaves a record the next
/// upload or deletion cleans up, never a device nobody knows is dehydrated.
pub fn put(services: &Services, user_id: &UserId, new: NewDehydrated) -> Result<OwnedDeviceId> {
    let dehydrated = &services.dehydrated;
    let _guard = dehydrated.change.lock();
    if !new
        .device_data
        .get("algorithm")
        .is_some_and(Value::is_string)
    {
        return Err(Error::bad_json("device_data needs an algorithm"));
    }
    if new.keys.device_keys.is_none() {
        return Err(Error::missing_param("device_keys are required"));
    }
    upload::check(user_id, new.device_id.as_str(), &new.keys)?;
    let old = current(services, user_id)?;
    let taken = services
        .users
        .get_device(user_id, new.device_id.as_str())?
        .is_some();
    if taken && old.as_ref().map(|old| &old.device_id) != Some(&new.device_id) {
        return Err(Error::invalid_param(format!(
            "device ID {} is already one of your devices",
            new.device_id
        )));
    }
    if let Some(old) = &old {
        devices::remove(services, user_id, old.device_id.as_str())?;
    }
    let record = Record {
        device_id: new.device_id.clone(),
        device_data: new.device_data,
    };
    dehydrated.userid_dehydrateddevice.insert(
        user_id.as_bytes(),
        &serde_json::to_vec(&record).map_err(Error::internal)?,
    )?;
    // Tokens are issued and dropped: a dehydrated device is never logged in as.
    services.users.create_device(
        user_id,
        Some(new.device_id.clone()),
        new.display_name,
        false,
        0,
    )?;
    upload::upload(services, (user_id, new.device_id.as_str()), &new.keys)?;
    Ok(new.device_id)
}

/// Deletes the user's dehydrated device (`M_NOT_FOUND` when there is none) and returns its ID.
pub fn delete(services: &Services, user_id: &UserId) -> Result<OwnedDeviceId> {
    let dehydrated = &services.dehydrated;
    let _guard = dehydrated.change.lock();
    let record = current(services, user_id)?
        .ok_or_else(|| Error::not_found("no dehydrated device available"))?;
    devices::remove(services, user_id, record.device_id.as_str())?;
    dehydrated
        .userid_dehydrateddevice
        .remove(user_id.as_bytes())?;
    Ok(record.device_id)
}

/// One `/events` answer: the messages and the token that acknowledges them.
pub struct Events {
    pub events: Vec<Value>,
    /// The position of the newest message returned (the `after` asked for when none).
    pub next_batch: u64,
    /// Whether more messages may follow.
    pub limited: bool,
}

/// The to-device messages of the user's dehydrated device after `after` (a `next_batch` of an
/// earlier answer, which acknowledges and deletes everything up to it). Only the user's current
/// dehydrated device may be read (`M_FORBIDDEN` otherwise).
pub fn events(
    services: &Services,
    user_id: &UserId,
    device_id: &str,
    after: u64,
    limit: usize,
) -> Result<Events> {
    let record = current(services, user_id)?
        .ok_or_else(|| Error::forbidden("no dehydrated device exists"))?;
    if record.device_id.as_str() != device_id {
        return Err(Error::forbidden(
            "only the messages of your dehydrated device may be fetched",
        ));
    }
    let limit = limit.clamp(1, MAX_EVENTS);
    let (events, highest) = services
        .to_device
        .take_after(user_id, device_id, after, limit)?;
    Ok(Events {
        limited: events.len() == limit,
        events,
        next_batch: highest.unwrap_or(after),
    })
}

/// Reads a `next_batch` token (a stream position; none is the start).
pub fn parse_token(token: Option<&str>) -> Result<u64> {
    match token {
        None | Some("") => Ok(0),
        Some(token) => token
            .parse()
            .map_err(|_| Error::invalid_param(format!("{token} is not a next_batch token"))),
    }
}

/// The keys of an upload from a JSON body's fields.
pub fn keys_from(body: &Map<String, Value>) -> Upload {
    let object = |field: &str| body.get(field).and_then(Value::as_object).cloned();
    Upload {
        device_keys: object("device_keys"),
        one_time_keys: object("one_time_keys"),
        fallback_keys: object("fallback_keys"),
    }
}
