//! Accounts, passwords, devices with their access and refresh tokens, profiles and filters.
//!
//! Tokens are random 32-character strings; only their SHA-256 is stored, so a copy of the
//! database does not yield usable tokens, and a lookup by hash needs no timing-sensitive compare.
//!
//! Accounts (argon2 password hashes), devices, access and refresh tokens (only SHA-256 of a token is stored), OpenID tokens (hashed too, an hour each, answered by the unsigned `/_matrix/federation/v1/openid/userinfo`), profiles, filters.
//!
//! `users/account.rs` holds the account operations that span services (registration with its UIA, password login, password change, deactivation), `users/devices.rs` a user's devices as a whole (logging a device in, renaming, and removing one: keys and inbox with the deletion announced, pushers, then the device and its tokens), the one removal every logout and deletion handler uses.

pub mod account;
pub mod deactivation;
pub mod devices;
mod filters;
mod listing;
pub mod password;
mod tokens;

use std::sync::Arc;

use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    crypto::token_hash,
    error::{Error, Result},
    service::stats::{Counter, Counters},
    store::{key, Batch, Db, Tree},
    util,
};

/// The most stored filters kept in memory; past it the cache starts over.
const FILTERS_CACHED: usize = 10_000;

/// Owns `userid_password` (user ID → argon2 PHC string, empty for accounts without password),
/// `userid_deactivated` (user ID → empty), `userid_admin` (user ID → empty, for server admins),
/// `userid_profile` (user ID → JSON profile),
/// `userdeviceid_device` (user ID 0xff device ID → JSON [`Device`]), `tokenhash_session` (SHA-256 of
/// access token → JSON [`Session`]), `refreshhash_session` (SHA-256 of refresh token → JSON
/// [`Session`]), `useridfilterid_filter` (user ID 0xff filter ID → filter JSON) and
/// `openidhash_user` (SHA-256 of an OpenID token → JSON [`OpenIdToken`]).
pub struct Users {
    userid_password: Tree,
    userid_deactivated: Tree,
    userid_admin: Tree,
    userid_profile: Tree,
    userdeviceid_device: Tree,
    tokenhash_session: Tree,
    refreshhash_session: Tree,
    useridfilterid_filter: Tree,
    openidhash_user: Tree,
    /// Held while a refresh or the first use of a refreshed token rewrites a device's tokens.
    rotation: parking_lot::Mutex<()>,
    /// The account counters of `server stats` (`Accounts`, `Deactivated`), written with the
    /// change they count under `count_lock`.
    counters: Counters,
    count_lock: parking_lot::Mutex<()>,
    /// Password hashing, off the async worker threads.
    pub passwords: password::Hasher,
    /// Stored filters by user and ID, as read (a filter never changes once stored).
    filters: Arc<crate::store::WrittenCache<(OwnedUserId, String), Value>>,
}

/// Who an OpenID token vouches for, until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OpenIdToken {
    user_id: OwnedUserId,
    /// Expiry in ms since the epoch.
    expires_at: u64,
}

/// A stored device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
    /// Hex SHA-256 of the device's current access token.
    token_hash: String,
    /// Hex SHA-256 of the device's current refresh token.
    refresh_hash: Option<String>,
    /// Hex SHA-256 of the refresh token the last refresh replaced, while its new tokens are unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_refresh_hash: Option<String>,
}

/// Who a token belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// Expiry in ms since the epoch, for refreshable access tokens.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// For an access token from a refresh that was not used yet: the hex SHA-256 of the refresh
    /// token it replaced, which stays valid until then (see `users/tokens.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaces_refresh: Option<String>,
}

/// Tokens handed to a client at login, registration or refresh.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .filter_map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

impl Users {
    /// Opens the trees.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            userid_password: db.tree("userid_password"),
            userid_deactivated: db.tree("userid_deactivated"),
            userid_admin: db.tree("userid_admin"),
            userid_profile: db.tree("userid_profile"),
            userdeviceid_device: db.tree("userdeviceid_device"),
            tokenhash_session: db.tree("tokenhash_session"),
            refreshhash_session: db.tree("refreshhash_session"),
            useridfilterid_filter: db.tree("useridfilterid_filter"),
            openidhash_user: db.tree("openidhash_user"),
            rotation: parking_lot::Mutex::new(()),
            counters: Counters::open(db),
            count_lock: parking_lot::Mutex::new(()),
            passwords: password::Hasher::default(),
            filters: crate::store::WrittenCache::new(FILTERS_CACHED),
        }
    }

    /// Whether a local account exists (deactivated accounts still exist: their IDs are never reused).
    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        self.userid_password.contains(user_id.as_bytes())
    }

    /// Whether an account was deactivated.
    pub fn is_deactivated(&self, user_id: &UserId) -> Result<bool> {
        self.userid_deactivated.contains(user_id.as_bytes())
    }

    /// Creates an account with an optional password and the localpart as display name, hashing
    /// on the calling thread (unit tests).
    #[cfg(test)]
    pub fn create(&self, user_id: &UserId, password: Option<&str>) -> Result<()> {
        let hash = match password {
            Some(password) => password::hash_now(password)?,
            None => String::new(),
        };
        self.create_hashed(user_id, &hash, None, false)
    }

    /// Creates an account from a password hash made by [`password::Hasher::hash`] (empty for
    /// none), with a display name (the localpart when `None`), as a server admin or not, in one
    /// write.
    pub fn create_hashed(
        &self,
        user_id: &UserId,
        password_hash: &str,
        display_name: Option<&str>,
        admin: bool,
    ) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(
            &self.userid_password,
            user_id.as_bytes(),
            password_hash.as_bytes(),
        );
        if admin {
            batch.insert(&self.userid_admin, user_id.as_bytes(), b"");
        }
        let display_name = display_name.unwrap_or(user_id.localpart());
        let profile = serde_json::json!({ "displayname": display_name });
        batch.insert(
            &self.userid_profile,
            user_id.as_bytes(),
            profile.to_string().as_bytes(),
        );
        let _counting = self.count_lock.lock();
        if !self.exists(user_id)? {
            self.counters
                .add_in_batch(Counter::Accounts, 1, &mut batch)?;
        }
        self.userid_password.db().write(batch)
    }

    /// Whether the account is a server admin (may use the admin API, such as server notices).
    pub fn is_admin(&self, user_id: &UserId) -> Result<bool> {
        self.userid_admin.contains(user_id.as_bytes())
    }

    /// Makes the account a server admin, or no longer one.
    pub fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        if admin {
            self.userid_admin.insert(user_id.as_bytes(), b"")
        } else {
            self.userid_admin.remove(user_id.as_bytes())
        }
    }

    /// Whether `password` is the account's password, deactivated or not (checked against a
    /// hash whatever the account, so that the time taken tells nothing).
    pub async fn password_matches(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let stored = self
            .userid_password
            .get(user_id.as_bytes())?
            .filter(|stored| !stored.is_empty())
            .map(String::from_utf8)
            .transpose()
            .map_err(|e| Error::corrupt("userid_password", e))?;
        self.passwords.verify(stored, password.to_owned()).await
    }

    /// Whether `password` is the password of an account that is not deactivated.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        Ok(self.password_matches(user_id, password).await? && !self.is_deactivated(user_id)?)
    }

    /// Replaces the password.
    pub async fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let hash = self.passwords.hash(password.to_owned()).await?;
        self.userid_password
            .insert(user_id.as_bytes(), hash.as_bytes())
    }

    /// Marks an account deactivated and removes every device and token. The password hash stays,
    /// so that a login tells a deactivated account apart only to whoever knows its password.
    pub fn deactivate(&self, user_id: &UserId) -> Result<()> {
        for device in self.iter_devices(user_id)? {
            self.remove_device(user_id, device.device_id.as_str())?;
        }
        self.set_deactivated(user_id, true)
    }

    /// Lifts a deactivation (the admin API's reactivation); the account has no devices left.
    pub fn reactivate(&self, user_id: &UserId) -> Result<()> {
        self.set_deactivated(user_id, false)
    }

    /// Marks an account deactivated or not, counted in the same batch.
    fn set_deactivated(&self, user_id: &UserId, deactivated: bool) -> Result<()> {
        let _counting = self.count_lock.lock();
        if self.is_deactivated(user_id)? == deactivated {
            return Ok(());
        }
        let mut batch = Batch::default();
        if deactivated {
            batch.insert(&self.userid_deactivated, user_id.as_bytes(), b"");
        } else {
            batch.remove(&self.userid_deactivated, user_id.as_bytes());
        }
        let delta = if deactivated { 1 } else { -1 };
        self.counters
            .add_in_batch(Counter::Deactivated, delta, &mut batch)?;
        self.userid_password.db().write(batch)
    }

    /// Every local account, deactivated ones too, in user ID order.
    pub fn iter_user_ids(&self) -> impl Iterator<Item = Result<OwnedUserId>> + '_ {
        self.userid_password.iter_prefix(b"").map(|entry| {
            let (user_key, _) = entry?;
            let text = String::from_utf8(user_key.to_vec())
                .map_err(|e| Error::corrupt("userid_password", e))?;
            OwnedUserId::try_from(text).map_err(|e| Error::corrupt("userid_password", e))
        })
    }

    /// Creates (or replaces the tokens of) a device and returns fresh tokens.
    pub fn create_device(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        refreshable: bool,
        lifetime_ms: u64,
    ) -> Result<(OwnedDeviceId, Tokens)> {
        let device_id = device_id
            .unwrap_or_else(|| OwnedDeviceId::from(util::random_string(10).to_uppercase()));
        let existing = self.get_device(user_id, device_id.as_str())?;
        let mut batch = Batch::default();
        if let Some(existing) = &existing {
            self.remove_tokens_in_batch(existing, &mut batch);
        }
        let display_name = display_name.or_else(|| {
            existing
                .as_ref()
                .and_then(|device| device.display_name.clone())
        });
        let tokens = self.issue_tokens_in_batch(
            (user_id, &device_id),
            display_name,
            refreshable,
            lifetime_ms,
            None,
            &mut batch,
        )?;
        self.userid_password.db().write(batch)?;
        Ok((device_id, tokens))
    }

    /// Issues tokens for a device in `batch`; `replaces` is the hex hash of the refresh token a
    /// refresh replaces (kept valid until the new tokens are used).
    fn issue_tokens_in_batch(
        &self,
        (user_id, device_id): (&UserId, &OwnedDeviceId),
        display_name: Option<String>,
        refreshable: bool,
        lifetime_ms: u64,
        replaces: Option<String>,
        batch: &mut Batch,
    ) -> Result<Tokens> {
        let access_token = util::random_string(32);
        let refresh_token = refreshable.then(|| util::random_string(32));
        let expires_in_ms = refreshable.then_some(lifetime_ms);
        let session = Session {
            user_id: user_id.to_owned(),
            device_id: device_id.clone(),
            expires_at: expires_in_ms.map(|ms| util::now_millis() + ms),
            replaces_refresh: replaces.clone(),
        };
        let access_hash = token_hash(&access_token);
        batch.insert(
            &self.tokenhash_session,
            &access_hash,
            &serde_json::to_vec(&session).map_err(Error::internal)?,
        );
        let refresh_hash = refresh_token.as_deref().map(token_hash);
        if let Some(hash) = &refresh_hash {
            let refresh_session = Session {
                expires_at: None,
                replaces_refresh: None,
                ..session
            };
            batch.insert(
                &self.refreshhash_session,
                hash,
                &serde_json::to_vec(&refresh_session).map_err(Error::internal)?,
            );
        }
        let device = Device {
            device_id: device_id.clone(),
            display_name,
            last_seen_ts: Some(util::now_millis()),
            last_seen_ip: None,
            token_hash: hex(&access_hash),
            refresh_hash: refresh_hash.map(|hash| hex(&hash)),
            previous_refresh_hash: replaces,
        };
        batch.insert(
            &self.userdeviceid_device,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
            &serde_json::to_vec(&device).map_err(Error::internal)?,
        );
        Ok(Tokens {
            access_token,
            refresh_token,
            expires_in_ms,
        })
    }

    fn remove_tokens_in_batch(&self, device: &Device, batch: &mut Batch) {
        batch.remove(&self.tokenhash_session, &unhex(&device.token_hash));
        let refresh = [&device.refresh_hash, &device.previous_refresh_hash];
        for hash in refresh.into_iter().flatten() {
            batch.remove(&self.refreshhash_session, &unhex(hash));
        }
    }

    /// A new OpenID token for `user_id`, valid for `lifetime_ms`. Other services trade it for the
    /// user's ID through `/_matrix/federation/v1/openid/userinfo`; it grants nothing else.
    pub fn create_openid_token(&self, user_id: &UserId, lifetime_ms: u64) -> Result<String> {
        let token = util::random_string(32);
        let record = OpenIdToken {
            user_id: user_id.to_owned(),
            expires_at: util::now_millis().saturating_add(lifetime_ms),
        };
        let value = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
        self.openidhash_user.insert(&token_hash(&token), &value)?;
        Ok(token)
    }

    /// The user an unexpired OpenID token vouches for; an expired token is forgotten.
    pub fn find_openid_token(&self, token: &str) -> Result<Option<OwnedUserId>> {
        let hash = token_hash(token);
        let Some(bytes) = self.openidhash_user.get(&hash)? else {
            return Ok(None);
        };
        let record: OpenIdToken =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("openidhash_user", e))?;
        if record.expires_at <= util::now_millis() {
            self.openidhash_user.remove(&hash)?;
            return Ok(None);
        }
        Ok(Some(record.user_id))
    }

    /// A device of a user.
    pub fn get_device(&self, user_id: &UserId, device_id: &str) -> Result<Option<Device>> {
        let Some(bytes) = self
            .userdeviceid_device
            .get(&key::join(&[user_id.as_bytes(), device_id.as_bytes()]))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("userdeviceid_device", e))
    }

    /// Every device of a user.
    pub fn iter_devices(&self, user_id: &UserId) -> Result<Vec<Device>> {
        let prefix = key::prefix(&[user_id.as_bytes()]);
        self.userdeviceid_device
            .iter_prefix(&prefix)
            .map(|entry| {
                serde_json::from_slice(&entry?.1)
                    .map_err(|e| Error::corrupt("userdeviceid_device", e))
            })
            .collect()
    }

    /// Renames a device.
    pub fn set_device_display_name(
        &self,
        user_id: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> Result<()> {
        let mut device = self
            .get_device(user_id, device_id)?
            .ok_or_else(|| Error::not_found(format!("device {device_id} not found")))?;
        device.display_name = display_name;
        self.userdeviceid_device.insert(
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
            &serde_json::to_vec(&device).map_err(Error::internal)?,
        )
    }

    /// Removes a device and its tokens (logout).
    pub fn remove_device(&self, user_id: &UserId, device_id: &str) -> Result<()> {
        let Some(device) = self.get_device(user_id, device_id)? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        self.remove_tokens_in_batch(&device, &mut batch);
        batch.remove(
            &self.userdeviceid_device,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
        );
        self.userid_password.db().write(batch)
    }

    /// The profile object (`displayname`, `avatar_url`, and any custom fields).
    pub fn get_profile(&self, user_id: &UserId) -> Result<Option<serde_json::Map<String, Value>>> {
        let Some(bytes) = self.userid_profile.get(user_id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("userid_profile", e))
    }

    /// Sets (or with `None` removes) one profile field.
    pub fn set_profile_field(
        &self,
        user_id: &UserId,
        field: &str,
        value: Option<Value>,
    ) -> Result<()> {
        let mut profile = self.get_profile(user_id)?.unwrap_or_default();
        match value {
            Some(value) => profile.insert(field.to_owned(), value),
            None => profile.remove(field),
        };
        self.userid_profile.insert(
            user_id.as_bytes(),
            &serde_json::to_vec(&profile).map_err(Error::internal)?,
        )
    }
}

/// The ID of a new local account: `localpart` must hold only the characters the spec's user ID
/// grammar allows new IDs to use (lower-case letters, digits, `._=-/+`), and the whole ID fits
/// in 255 bytes; otherwise `M_INVALID_USERNAME`.
pub fn local_user_id(server_name: &ServerName, localpart: &str) -> Result<OwnedUserId> {
    let invalid = || {
        Error::matrix(
            ErrorKind::InvalidUsername,
            format!("invalid username {localpart}"),
        )
    };
    let valid = !localpart.is_empty()
        && localpart.bytes().all(|byte| {
            matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
        });
    if !valid {
        return Err(invalid());
    }
    let user_id =
        OwnedUserId::try_from(format!("@{localpart}:{server_name}")).map_err(|_| invalid())?;
    if user_id.as_str().len() > 255 {
        return Err(Error::matrix(
            ErrorKind::InvalidUsername,
            "user ID too long",
        ));
    }
    Ok(user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_refresh_rotates_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let users = Users::open(&db);
        let user = <&UserId>::try_from("@alice:localhost").unwrap();
        users.create(user, Some("secret")).unwrap();
        assert!(users.check_password(user, "secret").await.unwrap());
        assert!(!users.check_password(user, "wrong").await.unwrap());
        let (device, tokens) = users.create_device(user, None, None, true, 1000).unwrap();
        assert_eq!(
            users
                .find_token(&tokens.access_token)
                .unwrap()
                .unwrap()
                .device_id,
            device
        );
        let stored = db
            .tree("tokenhash_session")
            .iter_prefix(b"")
            .next()
            .unwrap()
            .unwrap()
            .0;
        assert_ne!(&*stored, tokens.access_token.as_bytes());
        let fresh = users
            .refresh(tokens.refresh_token.as_deref().unwrap(), 1000)
            .unwrap()
            .unwrap();
        assert!(users.find_token(&tokens.access_token).unwrap().is_none());
        // The replaced refresh token still works until the new tokens are used: a retry.
        let retried = users
            .refresh(tokens.refresh_token.as_deref().unwrap(), 1000)
            .unwrap()
            .unwrap();
        assert!(users.find_token(&fresh.access_token).unwrap().is_none());
        assert!(users
            .refresh(fresh.refresh_token.as_deref().unwrap(), 1000)
            .unwrap()
            .is_none());
        // The first use of the new access token ends the replaced refresh token.
        assert!(users.find_token(&retried.access_token).unwrap().is_some());
        assert!(users
            .refresh(tokens.refresh_token.as_deref().unwrap(), 1000)
            .unwrap()
            .is_none());
        assert!(users.find_token(&retried.access_token).unwrap().is_some());
        let fresh = retried;
        users.deactivate(user).unwrap();
        assert!(users.find_token(&fresh.access_token).unwrap().is_none());
        assert!(!users.check_password(user, "secret").await.unwrap());
        // The hash stays: a login can tell the right password of a deactivated account.
        assert!(users.password_matches(user, "secret").await.unwrap());
        assert!(users.exists(user).unwrap());
    }

    #[test]
    fn admin_flag_is_stored_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let users = Users::open(&db);
        let admin = <&UserId>::try_from("@root:localhost").unwrap();
        let plain = <&UserId>::try_from("@bob:localhost").unwrap();
        users.create_hashed(admin, "", Some("Root"), true).unwrap();
        users.create(plain, None).unwrap();
        assert!(users.is_admin(admin).unwrap());
        assert!(!users.is_admin(plain).unwrap());
        assert_eq!(
            users.get_profile(admin).unwrap().unwrap()["displayname"],
            "Root"
        );
        users.set_admin(admin, false).unwrap();
        users.set_admin(plain, true).unwrap();
        assert!(!users.is_admin(admin).unwrap());
        assert!(users.is_admin(plain).unwrap());
    }
}
