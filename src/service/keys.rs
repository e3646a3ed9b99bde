//! End-to-end encryption keys: device identity keys, one-time and fallback keys, cross-signing
//! keys, and the stream of users whose keys changed (for `/keys/changes` and `/sync`).
//!
//! The server never looks inside a key beyond its IDs: clients sign and verify them.
//!
//! End-to-end encryption keys the server only stores and hands out: device identity keys, one-time keys (a claim removes one under a lock, in one batch), fallback keys (claimed when no one-time key is left, kept and marked used), cross-signing keys, the key-change stream (one entry per user at the position of their last change) behind `/keys/changes` and `device_lists`, and each local user's device list `stream_id` (`userid_devicelistid`, the last `m.device_list_update` sent, which the next names as `prev_id` and `/user/devices` answers).

pub mod cross_signing;
pub mod upload;

use std::{collections::BTreeMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    store::{key, Batch, Db, Tree},
};

/// Owns `userdeviceid_devicekeys` (user ID 0xff device ID → JSON device keys),
/// `userdevicekeyid_onetimekey` (user ID 0xff device ID 0xff `algorithm:key_id` → upload position
/// as 8 big-endian bytes, then the JSON key),
/// `userdevicealgorithm_fallbackkey` (user ID 0xff device ID 0xff algorithm → JSON
/// [`FallbackKey`]), `useridkind_crosssigningkey` (user ID 0xff `master`/`self_signing`/
/// `user_signing` → JSON key), `countuserid_keychange` (stream position u64 0xff user ID → empty:
/// the last change of each user's keys) and `userid_keychangecount` (user ID → stream position
/// u64, to find and replace a user's entry in `countuserid_keychange`) and
/// `userid_devicelistid` (local user ID → the `stream_id` u64 of the user's last
/// `m.device_list_update`, the `prev_id` of the next one).
pub struct Keys {
    db: Arc<Db>,
    userdeviceid_devicekeys: Tree,
    userdevicekeyid_onetimekey: Tree,
    userdevicealgorithm_fallbackkey: Tree,
    useridkind_crosssigningkey: Tree,
    countuserid_keychange: Tree,
    userid_keychangecount: Tree,
    userid_devicelistid: Tree,
    /// Serialises claims, so that two claimers never get the same one-time key.
    claim_lock: Mutex<()>,
}

/// The kinds of cross-signing key, as named in `/keys/device_signing/upload`.
pub const CROSS_SIGNING_KINDS: [&str; 3] = ["master", "self_signing", "user_signing"];

/// A device's fallback key for one algorithm.
#[derive(serde::Serialize, serde::Deserialize)]
struct FallbackKey {
    /// `algorithm:key_id`.
    key_id: String,
    key: Value,
    used: bool,
}

/// One key handed out by a claim: `algorithm:key_id` and the key object.
pub type ClaimedKey = (String, Value);

fn device_key(user_id: &UserId, device_id: &str) -> Vec<u8> {
    key::join(&[user_id.as_bytes(), device_id.as_bytes()])
}

fn parse(tree: &'static str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(tree, e))
}

impl Keys {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            db: Arc::clone(db),
            userdeviceid_devicekeys: db.tree("userdeviceid_devicekeys"),
            userdevicekeyid_onetimekey: db.tree("userdevicekeyid_onetimekey"),
            userdevicealgorithm_fallbackkey: db.tree("userdevicealgorithm_fallbackkey"),
            useridkind_crosssigningkey: db.tree("useridkind_crosssigningkey"),
            countuserid_keychange: db.tree("countuserid_keychange"),
            userid_keychangecount: db.tree("userid_keychangecount"),
            userid_devicelistid: db.tree("userid_devicelistid"),
            claim_lock: Mutex::new(()),
        }
    }

    /// The store this service writes to: operations that change its trees together with other
    /// services' write one batch there with `Globals::write_with_count`.
    pub fn store(&self) -> &Db {
        &self.db
    }

    /// A device's identity keys as the client uploaded them (with signatures added since).
    pub fn get_device_keys(&self, user_id: &UserId, device_id: &str) -> Result<Option<Value>> {
        self.userdeviceid_devicekeys
            .get(&device_key(user_id, device_id))?
            .map(|bytes| parse("userdeviceid_devicekeys", &bytes))
            .transpose()
    }

    /// Every device of a user that uploaded identity keys, by device ID.
    pub fn iter_device_keys(&self, user_id: &UserId) -> Result<BTreeMap<String, Value>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        let mut devices = BTreeMap::new();
        for entry in self.userdeviceid_devicekeys.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let device_id = String::from_utf8_lossy(&db_key[prefix.len()..]).into_owned();
            devices.insert(device_id, parse("userdeviceid_devicekeys", &value)?);
        }
        Ok(devices)
    }

    /// Stores a device's identity keys.
    pub fn set_device_keys_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
        keys: &Value,
    ) {
        batch.insert(
            &self.userdeviceid_devicekeys,
            &device_key(user_id, device_id),
            keys.to_string().as_bytes(),
        );
    }

    /// Adds one-time keys (`algorithm:key_id` → key), uploaded at stream position `upload`
    /// (claims hand keys out in upload order). Uploading a stored key again is a no-op; another
    /// key under a stored key ID is `400 M_INVALID_PARAM`, as the ID names one key.
    pub fn add_one_time_keys_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
        keys: &Map<String, Value>,
        upload: u64,
    ) -> Result<()> {
        for (key_id, one_time_key) in keys {
            let db_key = key::join(&[user_id.as_bytes(), device_id.as_bytes(), key_id.as_bytes()]);
            if let Some(stored) = self.userdevicekeyid_onetimekey.get(&db_key)? {
                if parse_one_time_key(&stored)?.1 != *one_time_key {
                    return Err(Error::invalid_param(format!(
                        "one-time key {key_id} already exists with another value"
                    )));
                }
                continue;
            }
            let mut value = key::u64_bytes(upload).to_vec();
            value.extend_from_slice(one_time_key.to_string().as_bytes());
            batch.insert(&self.userdevicekeyid_onetimekey, &db_key, &value);
        }
        Ok(())
    }

    /// Replaces the fallback key of each algorithm given (`algorithm:key_id` → key); a new key
    /// starts unused.
    pub fn set_fallback_keys_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
        keys: &Map<String, Value>,
    ) -> Result<()> {
        for (key_id, fallback_key) in keys {
            let algorithm = key_id.split(':').next().unwrap_or_default();
            let db_key = key::join(&[
                user_id.as_bytes(),
                device_id.as_bytes(),
                algorithm.as_bytes(),
            ]);
            let stored = FallbackKey {
                key_id: key_id.clone(),
                key: fallback_key.clone(),
                used: false,
            };
            let value = serde_json::to_vec(&stored).map_err(Error::internal)?;
            batch.insert(&self.userdevicealgorithm_fallbackkey, &db_key, &value);
        }
        Ok(())
    }

    /// How many one-time keys of each algorithm a device has left; `signed_curve25519` is always
    /// listed, because some clients only upload keys when they see it at zero.
    pub fn count_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut counts = BTreeMap::from([("signed_curve25519".to_owned(), 0)]);
        for entry in self.userdevicekeyid_onetimekey.iter_prefix(&prefix) {
            let (db_key, _) = entry?;
            let key_id = String::from_utf8_lossy(&db_key[prefix.len()..]).into_owned();
            let algorithm = key_id.split(':').next().unwrap_or_default().to_owned();
            *counts.entry(algorithm).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The algorithms for which a device has a fallback key that nobody claimed yet.
    pub fn iter_unused_fallback_key_types(
        &self,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<Vec<String>> {
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut algorithms = Vec::new();
        for entry in self.userdevicealgorithm_fallbackkey.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let stored: FallbackKey = serde_json::from_slice(&value)
                .map_err(|e| Error::corrupt("userdevicealgorithm_fallbackkey", e))?;
            if !stored.used {
                algorithms.push(String::from_utf8_lossy(&db_key[prefix.len()..]).into_owned());
            }
        }
        Ok(algorithms)
    }

    /// Claims one key per `(user, device, algorithm)`: a one-time key, which is removed, or else
    /// the fallback key, which stays and is marked used. All removals are one batch, written
    /// under a lock so that no key is handed out twice.
    pub fn claim(
        &self,
        wanted: &[(OwnedUserId, String, String)],
    ) -> Result<Vec<Option<ClaimedKey>>> {
        let _guard = self.claim_lock.lock();
        let mut batch = Batch::default();
        let mut claimed = Vec::with_capacity(wanted.len());
        for (user_id, device_id, algorithm) in wanted {
            let prefix = key::join(&[
                user_id.as_bytes(),
                device_id.as_bytes(),
                format!("{algorithm}:").as_bytes(),
            ]);
            // The earliest upload first (MSC4225: a client that lost track of its keys can then
            // tell which ones were handed out); ties by key ID. A device holds a bounded number
            // of keys in practice (clients keep about 50), so the scan is short.
            let mut oldest: Option<(u64, Vec<u8>, Value)> = None;
            for entry in self.userdevicekeyid_onetimekey.iter_prefix(&prefix) {
                let (db_key, value) = entry?;
                let (upload, one_time_key) = parse_one_time_key(&value)?;
                if oldest.as_ref().is_none_or(|(first, ..)| upload < *first) {
                    oldest = Some((upload, db_key.to_vec(), one_time_key));
                }
            }
            if let Some((_, db_key, one_time_key)) = oldest {
                let device_prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
                let key_id = String::from_utf8_lossy(&db_key[device_prefix.len()..]).into_owned();
                batch.remove(&self.userdevicekeyid_onetimekey, &db_key);
                claimed.push(Some((key_id, one_time_key)));
                continue;
            }
            let db_key = key::join(&[
                user_id.as_bytes(),
                device_id.as_bytes(),
                algorithm.as_bytes(),
            ]);
            match self.userdevicealgorithm_fallbackkey.get(&db_key)? {
                Some(value) => {
                    let mut stored: FallbackKey = serde_json::from_slice(&value)
                        .map_err(|e| Error::corrupt("userdevicealgorithm_fallbackkey", e))?;
                    claimed.push(Some((stored.key_id.clone(), stored.key.clone())));
                    if !stored.used {
                        stored.used = true;
                        let value = serde_json::to_vec(&stored).map_err(Error::internal)?;
                        batch.insert(&self.userdevicealgorithm_fallbackkey, &db_key, &value);
                    }
                }
                None => claimed.push(None),
            }
        }
        self.db.write(batch)?;
        Ok(claimed)
    }

    /// Removes a device's identity, one-time and fallback keys.
    pub fn delete_device_keys_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<()> {
        batch.remove(
            &self.userdeviceid_devicekeys,
            &device_key(user_id, device_id),
        );
        let prefix = key::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        for tree in [
            &self.userdevicekeyid_onetimekey,
            &self.userdevicealgorithm_fallbackkey,
        ] {
            for entry in tree.iter_prefix(&prefix) {
                batch.remove(tree, &entry?.0);
            }
        }
        Ok(())
    }

    /// A cross-signing key (`kind` is one of [`CROSS_SIGNING_KINDS`]).
    pub fn get_cross_signing_key(&self, user_id: &UserId, kind: &str) -> Result<Option<Value>> {
        self.useridkind_crosssigningkey
            .get(&key::join(&[user_id.as_bytes(), kind.as_bytes()]))?
            .map(|bytes| parse("useridkind_crosssigningkey", &bytes))
            .transpose()
    }

    /// Stores a cross-signing key.
    pub fn set_cross_signing_key_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        kind: &str,
        signing_key: &Value,
    ) {
        batch.insert(
            &self.useridkind_crosssigningkey,
            &key::join(&[user_id.as_bytes(), kind.as_bytes()]),
            signing_key.to_string().as_bytes(),
        );
    }

    /// Records that a user's keys changed at stream position `count`, replacing the user's
    /// earlier entry so that the stream holds one entry per user.
    pub fn mark_changed_in_batch(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        count: u64,
    ) -> Result<()> {
        if let Some(previous) = self.userid_keychangecount.get(user_id.as_bytes())? {
            batch.remove(
                &self.countuserid_keychange,
                &key::join(&[&previous, user_id.as_bytes()]),
            );
        }
        let position = key::u64_bytes(count);
        batch.insert(
            &self.countuserid_keychange,
            &key::join(&[&position, user_id.as_bytes()]),
            b"",
        );
        batch.insert(&self.userid_keychangecount, user_id.as_bytes(), &position);
        Ok(())
    }

    /// The stream position of a user's last key change.
    pub fn get_change_count(&self, user_id: &UserId) -> Result<Option<u64>> {
        Ok(self
            .userid_keychangecount
            .get(user_id.as_bytes())?
            .and_then(|bytes| key::read_u64(&bytes)))
    }

    /// The `stream_id` of a local user's last `m.device_list_update`.
    pub fn get_device_list_id(&self, user_id: &UserId) -> Result<Option<u64>> {
        Ok(self
            .userid_devicelistid
            .get(user_id.as_bytes())?
            .and_then(|bytes| key::read_u64(&bytes)))
    }

    /// Records the `stream_id` of a local user's latest `m.device_list_update`.
    pub fn set_device_list_id_in_batch(&self, batch: &mut Batch, user_id: &UserId, id: u64) {
        batch.insert(
            &self.userid_devicelistid,
            user_id.as_bytes(),
            &key::u64_bytes(id),
        );
    }

    /// Users whose keys last changed after `from` and at or before `to`.
    pub fn iter_changed_users(&self, from: u64, to: u64) -> Result<Vec<OwnedUserId>> {
        let mut users = Vec::new();
        let start = key::u64_bytes(from.saturating_add(1));
        for entry in self.countuserid_keychange.iter_from(&start, false) {
            let (db_key, _) = entry?;
            if key::read_u64(&db_key).unwrap_or(u64::MAX) > to {
                break;
            }
            let user = db_key.get(9..).unwrap_or_default();
            let user_id = OwnedUserId::try_from(String::from_utf8_lossy(user).as_ref())
                .map_err(|e| Error::corrupt("countuserid_keychange", e))?;
            users.push(user_id);
        }
        Ok(users)
    }
}

/// A stored one-time key: the stream position of its upload (8 bytes) and the key's JSON.
fn parse_one_time_key(value: &[u8]) -> Result<(u64, Value)> {
    let corrupt = |e: String| Error::corrupt("userdevicekeyid_onetimekey", e);
    let (upload, json) = value
        .split_at_checked(8)
        .ok_or_else(|| corrupt("value shorter than its upload position".to_owned()))?;
    let upload = u64::from_be_bytes(upload.try_into().map_err(|_| corrupt(String::new()))?);
    Ok((upload, parse("userdevicekeyid_onetimekey", json)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_take_one_time_keys_then_the_fallback_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let keys = Keys::open(&db);
        let user = <&UserId>::try_from("@alice:localhost").unwrap();
        let mut batch = Batch::default();
        let one_time = json!({ "signed_curve25519:AAA": { "key": "one" } });
        let fallback = json!({ "signed_curve25519:BBB": { "key": "fallback" } });
        keys.add_one_time_keys_in_batch(&mut batch, user, "DEV", one_time.as_object().unwrap(), 1)
            .unwrap();
        keys.set_fallback_keys_in_batch(&mut batch, user, "DEV", fallback.as_object().unwrap())
            .unwrap();
        keys.mark_changed_in_batch(&mut batch, user, 5).unwrap();
        db.write(batch).unwrap();
        assert_eq!(
            keys.count_one_time_keys(user, "DEV").unwrap()["signed_curve25519"],
            1
        );
        let wanted = [(
            user.to_owned(),
            "DEV".to_owned(),
            "signed_curve25519".to_owned(),
        )];
        let first = keys.claim(&wanted).unwrap();
        assert_eq!(first[0].as_ref().unwrap().0, "signed_curve25519:AAA");
        assert_eq!(
            keys.count_one_time_keys(user, "DEV").unwrap()["signed_curve25519"],
            0
        );
        let second = keys.claim(&wanted).unwrap();
        assert_eq!(second[0].as_ref().unwrap().0, "signed_curve25519:BBB");
        assert!(keys
            .iter_unused_fallback_key_types(user, "DEV")
            .unwrap()
            .is_empty());
        assert_eq!(
            keys.iter_changed_users(4, 5).unwrap(),
            vec![user.to_owned()]
        );
        assert!(keys.iter_changed_users(5, 9).unwrap().is_empty());
    }
}
