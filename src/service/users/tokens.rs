//! Access tokens and their refresh (client-server API, "Refreshing access tokens"): a refresh
//! issues a new pair and ends the old access token, but the refresh token it used stays valid
//! until the new access token or the new refresh token is first used, so a client that lost the
//! answer can refresh again. Such a retry replaces the unused pair with another one.

use ruma::OwnedDeviceId;

use super::{hex, unhex, Session, Tokens, Users};
use crate::{
    crypto::token_hash,
    error::{Error, Result},
    store::{key, Batch},
};

impl Users {
    /// Who an access token belongs to. The first use of an access token from a refresh ends the
    /// refresh token that refresh replaced.
    pub fn find_token(&self, token: &str) -> Result<Option<Session>> {
        let hash = token_hash(token);
        let Some(bytes) = self.tokenhash_session.get(&hash)? else {
            return Ok(None);
        };
        let mut session: Session =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("tokenhash_session", e))?;
        if let Some(replaced) = session.replaces_refresh.take() {
            let _rotation = self.rotation.lock();
            let mut batch = Batch::default();
            batch.remove(&self.refreshhash_session, &unhex(&replaced));
            batch.insert(
                &self.tokenhash_session,
                &hash,
                &serde_json::to_vec(&session).map_err(Error::internal)?,
            );
            self.forget_previous_refresh(
                &session.user_id,
                &session.device_id,
                &replaced,
                &mut batch,
            )?;
            self.tokenhash_session.db().write(batch)?;
        }
        Ok(Some(session))
    }

    /// Clears a device's record of the refresh token a refresh replaced, if it is still `hash`.
    fn forget_previous_refresh(
        &self,
        user_id: &ruma::UserId,
        device_id: &OwnedDeviceId,
        hash: &str,
        batch: &mut Batch,
    ) -> Result<()> {
        let Some(mut device) = self.get_device(user_id, device_id.as_str())? else {
            return Ok(());
        };
        if device.previous_refresh_hash.as_deref() != Some(hash) {
            return Ok(());
        }
        device.previous_refresh_hash = None;
        batch.insert(
            &self.userdeviceid_device,
            &key::join(&[user_id.as_bytes(), device_id.as_bytes()]),
            &serde_json::to_vec(&device).map_err(Error::internal)?,
        );
        Ok(())
    }

    /// Who a refresh token belongs to (the device's current one, or the one its last refresh
    /// replaced while unused), without using it.
    pub fn find_refresh_session(&self, refresh_token: &str) -> Result<Option<Session>> {
        let Some(bytes) = self.refreshhash_session.get(&token_hash(refresh_token))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt("refreshhash_session", e))
    }

    /// Makes an access token expire at `expires_at` (ms since the epoch); `M_NOT_FOUND` for an
    /// unknown token.
    pub fn set_token_expiry(&self, token: &str, expires_at: u64) -> Result<()> {
        let hash = token_hash(token);
        let bytes = self
            .tokenhash_session
            .get(&hash)?
            .ok_or_else(|| Error::not_found("unknown access token"))?;
        let mut session: Session =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("tokenhash_session", e))?;
        session.expires_at = Some(expires_at);
        self.tokenhash_session.insert(
            &hash,
            &serde_json::to_vec(&session).map_err(Error::internal)?,
        )
    }

    /// Trades a refresh token for new tokens: the device's current refresh token, or the one the
    /// last refresh replaced while that refresh's tokens are unused. `None` for any other.
    pub fn refresh(&self, refresh_token: &str, lifetime_ms: u64) -> Result<Option<Tokens>> {
        let raw_hash = token_hash(refresh_token);
        let hash = hex(&raw_hash);
        let Some(bytes) = self.refreshhash_session.get(&raw_hash)? else {
            return Ok(None);
        };
        let session: Session =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("refreshhash_session", e))?;
        let _rotation = self.rotation.lock();
        let Some(device) = self.get_device(&session.user_id, session.device_id.as_str())? else {
            return Ok(None);
        };
        let mut batch = Batch::default();
        // The old access token ends in either case.
        batch.remove(&self.tokenhash_session, &unhex(&device.token_hash));
        if device.refresh_hash.as_deref() == Some(hash.as_str()) {
            // A refresh with the current token: an older one kept for a retry goes now.
            if let Some(older) = &device.previous_refresh_hash {
                batch.remove(&self.refreshhash_session, &unhex(older));
            }
        } else if device.previous_refresh_hash.as_deref() == Some(hash.as_str()) {
            // A retry: the pair the last refresh issued was never used, and goes.
            if let Some(unused) = &device.refresh_hash {
                batch.remove(&self.refreshhash_session, &unhex(unused));
            }
        } else {
            return Ok(None);
        }
        let tokens = self.issue_tokens_in_batch(
            (&session.user_id, &session.device_id),
            device.display_name,
            true,
            lifetime_ms,
            Some(hash),
            &mut batch,
        )?;
        self.tokenhash_session.db().write(batch)?;
        Ok(Some(tokens))
    }
}
