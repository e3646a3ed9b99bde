//! The cache of other servers' users' device lists and cross-signing keys.
//!
//! Server-server API, "Device Management": a server keeps the device lists of remote users who
//! share a room with one of its users, updated by their servers' `m.device_list_update` and
//! `m.signing_key_update` EDUs. What is cached, when it is trusted and when it is dropped is
//! decided by `service::device_lists`; this module only stores it.
//!
//! The cache of remote users' device lists and master and self-signing keys (`userid_remotedevicelist`: `stream_id`, stale flag, cross-signing keys; `userdeviceid_remotedevice`: each device's keys and display name); `device_lists` decides what goes in.
//! Invariant: a remote user's list is cached only while the user is joined to a room with a local member ("tracked"); every cache write checks this under the commit lock, and `commit` drops the list in the batch of the membership change that ends it, so a list that was not kept up to date is never answered.

use std::{collections::BTreeMap, sync::Arc};

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// What is cached of one remote user besides their devices.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteUser {
    /// The `stream_id` of the user's server that the cached list is at.
    pub stream_id: u64,
    /// The `prev_id` of the update the cached list is at: another device's update with the same
    /// `stream_id` and `prev_id` belongs to the same change.
    #[serde(default)]
    pub last_prev_ids: Vec<u64>,
    /// An update could not be applied (an unknown `prev_id`): the list must be fetched again
    /// before it is trusted.
    pub stale: bool,
    /// The highest `stream_id` announced while stale: a fetched list older than it is still stale.
    #[serde(default)]
    pub pending_stream_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Value>,
}

/// One cached device of a remote user; a device that has not uploaded keys yet has none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_display_name: Option<String>,
}

/// Owns `userid_remotedevicelist` (remote user ID → JSON [`RemoteUser`]; present exactly while
/// the user's list is cached) and `userdeviceid_remotedevice` (remote user ID 0xff device ID →
/// JSON [`RemoteDevice`]).
pub struct RemoteKeys {
    userid_remotedevicelist: Tree,
    userdeviceid_remotedevice: Tree,
}

impl RemoteKeys {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            userid_remotedevicelist: db.tree("userid_remotedevicelist"),
            userdeviceid_remotedevice: db.tree("userdeviceid_remotedevice"),
        }
    }

    /// The cached record of a remote user, if their list is cached.
    pub fn get_user(&self, user_id: &UserId) -> Result<Option<RemoteUser>> {
        self.userid_remotedevicelist
            .get(user_id.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("userid_remotedevicelist", e))
            })
            .transpose()
    }

    /// The cached devices of a remote user, by device ID.
    pub fn iter_devices(&self, user_id: &UserId) -> Result<BTreeMap<String, RemoteDevice>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        let mut devices = BTreeMap::new();
        for entry in self.userdeviceid_remotedevice.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let device_id = String::from_utf8_lossy(&db_key[prefix.len()..]).into_owned();
            let device = serde_json::from_slice(&value)
                .map_err(|e| Error::corrupt("userdeviceid_remotedevice", e))?;
            devices.insert(device_id, device);
        }
        Ok(devices)
    }

    /// One cached device of a remote user.
    pub fn get_device(&self, user_id: &UserId, device_id: &str) -> Result<Option<RemoteDevice>> {
        self.userdeviceid_remotedevice
            .get(&key::join(&[user_id.as_bytes(), device_id.as_bytes()]))?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("userdeviceid_remotedevice", e))
            })
            .transpose()
    }

    /// Stores a remote user's record.
    pub fn set_user_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        user: &RemoteUser,
    ) -> Result<()> {
        let value = serde_json::to_vec(user).map_err(Error::internal)?;
        batch.insert(&self.userid_remotedevicelist, user_id.as_bytes(), &value);
        Ok(())
    }

    /// Stores (or replaces) one cached device.
    pub fn set_device_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
        device: &RemoteDevice,
    ) -> Result<()> {
        let value = serde_json::to_vec(device).map_err(Error::internal)?;
        batch.insert(
            &self.userdeviceid_remotedevice,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
            &value,
        );
        Ok(())
    }

    /// Removes one cached device.
    pub fn delete_device_in_batch(&self, batch: &mut Batch, user_id: &UserId, device_id: &str) {
        batch.remove(
            &self.userdeviceid_remotedevice,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
        );
    }

    /// Forgets everything cached about a remote user.
    pub fn drop_user_in_batch(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        batch.remove(&self.userid_remotedevicelist, user_id.as_bytes());
        let prefix = key::prefix(&[user_id.as_bytes()]);
        for entry in self.userdeviceid_remotedevice.iter_prefix(&prefix) {
            batch.remove(&self.userdeviceid_remotedevice, &entry?.0);
        }
        Ok(())
    }

    /// Replaces a remote user's cached list with a fetched one.
    pub fn replace_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        user: &RemoteUser,
        devices: &BTreeMap<String, RemoteDevice>,
    ) -> Result<()> {
        self.drop_user_in_batch(batch, user_id)?;
        self.set_user_in_batch(batch, user_id, user)?;
        for (device_id, device) in devices {
            self.set_device_in_batch(batch, user_id, device_id, device)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_replaced_list_keeps_only_the_fetched_devices() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let cache = RemoteKeys::open(&db);
        let user = <&UserId>::try_from("@bob:remote").unwrap();
        let other = <&UserId>::try_from("@bobby:remote").unwrap();
        let device = RemoteDevice {
            keys: Some(json!({ "device_id": "OLD" })),
            device_display_name: None,
        };
        let mut batch = Batch::default();
        cache
            .set_user_in_batch(&mut batch, user, &RemoteUser::default())
            .unwrap();
        cache
            .set_device_in_batch(&mut batch, user, "OLD", &device)
            .unwrap();
        cache
            .set_device_in_batch(&mut batch, other, "KEEP", &device)
            .unwrap();
        db.write(batch).unwrap();

        let fetched = RemoteUser {
            stream_id: 7,
            ..RemoteUser::default()
        };
        let devices = BTreeMap::from([("NEW".to_owned(), RemoteDevice::default())]);
        let mut batch = Batch::default();
        cache
            .replace_in_batch(&mut batch, user, &fetched, &devices)
            .unwrap();
        db.write(batch).unwrap();
        assert_eq!(cache.get_user(user).unwrap(), Some(fetched));
        assert_eq!(
            cache
                .iter_devices(user)
                .unwrap()
                .into_keys()
                .collect::<Vec<_>>(),
            ["NEW"]
        );
        // `@bob:remote` is a prefix of `@bobby:remote` only without the separator.
        assert_eq!(cache.iter_devices(other).unwrap().len(), 1);

        let mut batch = Batch::default();
        cache.drop_user_in_batch(&mut batch, user).unwrap();
        db.write(batch).unwrap();
        assert_eq!(cache.get_user(user).unwrap(), None);
        assert!(cache.iter_devices(user).unwrap().is_empty());
    }
}
