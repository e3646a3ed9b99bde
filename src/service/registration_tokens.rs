//! Registration tokens made by admins (Synapse's admin API, `docs/admin_api.md`): each allows a
//! number of registrations (or any) until an expiry time (or forever). Registration's
//! `m.login.registration_token` stage accepts a valid one (`service::uiaa`), and the
//! registration that completes with it spends one use ([`RegistrationTokens::spend`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    store::{Db, Tree},
    util,
};

/// Longest token, and longest generated token, in characters.
const MAX_TOKEN_LENGTH: usize = 64;
/// Length of a generated token when the admin names none.
const DEFAULT_TOKEN_LENGTH: usize = 16;

/// Owns `registrationtoken_info` (token → JSON [`RegistrationToken`]).
pub struct RegistrationTokens {
    registrationtoken_info: Tree,
    /// Held while a use is counted or a token is created, so that two registrations never both
    /// spend a token's last use and two admins never both create one token.
    write: parking_lot::Mutex<()>,
}

/// A stored token with its limits and use counts, in the shape the admin API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    pub token: String,
    /// How many registrations it may complete; `None` for any number.
    pub uses_allowed: Option<u64>,
    /// Uses begun but not completed: always 0 here, since the one request that completes the
    /// token stage also completes the registration.
    pub pending: u64,
    /// Registrations completed with it.
    pub completed: u64,
    /// Last valid moment, in ms since the epoch; `None` for never expiring.
    pub expiry_time: Option<u64>,
}

impl RegistrationToken {
    /// Whether it may still complete a registration at `now` (ms since the epoch).
    pub fn is_valid_at(&self, now: u64) -> bool {
        let uses_left = self
            .uses_allowed
            .is_none_or(|allowed| self.pending + self.completed < allowed);
        uses_left && self.expiry_time.is_none_or(|expiry| now <= expiry)
    }
}

/// The limits an admin sets: each `None` leaves that limit as it is, `Some(None)` removes it.
#[derive(Debug, Default)]
pub struct TokenLimits {
    pub uses_allowed: Option<Option<u64>>,
    pub expiry_time: Option<Option<u64>>,
}

impl TokenLimits {
    /// Reads `uses_allowed` (a non-negative integer or `null`) and `expiry_time` (a time in ms
    /// that has not passed, or `null`) from a request body; `M_INVALID_PARAM` otherwise.
    pub fn from_body(body: &Value) -> Result<Self> {
        let uses_allowed = optional_integer(body, "uses_allowed")?;
        let expiry_time = optional_integer(body, "expiry_time")?;
        if let Some(Some(expiry)) = expiry_time {
            if expiry < util::now_millis() {
                return Err(Error::invalid_param("expiry_time must not be in the past"));
            }
        }
        Ok(Self {
            uses_allowed,
            expiry_time,
        })
    }
}

/// A field that is absent, `null`, or a non-negative integer.
fn optional_integer(body: &Value, field: &str) -> Result<Option<Option<u64>>> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => value
            .as_u64()
            .map(|number| Some(Some(number)))
            .ok_or_else(|| {
                Error::invalid_param(format!("{field} must be a non-negative integer or null"))
            }),
    }
}

/// What creating a token asks for.
#[derive(Debug, Default)]
pub struct NewToken {
    /// The token itself; a random one of `length` characters when `None`.
    pub token: Option<String>,
    pub length: Option<u64>,
    pub limits: TokenLimits,
}

impl NewToken {
    /// Reads `token`, `length`, `uses_allowed` and `expiry_time` from a request body.
    pub fn from_body(body: &Value) -> Result<Self> {
        let token = match body.get("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) => Some(token.clone()),
            Some(_) => return Err(Error::invalid_param("token must be a string")),
        };
        let length = optional_integer(body, "length")?.flatten();
        Ok(Self {
            token,
            length,
            limits: TokenLimits::from_body(body)?,
        })
    }
}

impl RegistrationTokens {
    /// Opens the tree.
    pub fn open(db: &Arc<Db>) -> Self {
        Self {
            registrationtoken_info: db.tree("registrationtoken_info"),
            write: parking_lot::Mutex::new(()),
        }
    }

    /// A stored token.
    pub fn get(&self, token: &str) -> Result<Option<RegistrationToken>> {
        self.registrationtoken_info
            .get(token.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("registrationtoken_info", e))
            })
            .transpose()
    }

    /// A stored token; `M_NOT_FOUND` when there is none.
    pub fn get_existing(&self, token: &str) -> Result<RegistrationToken> {
        self.get(token)?
            .ok_or_else(|| Error::not_found(format!("registration token {token} not found")))
    }

    /// Every stored token in token order; with `valid`, only the valid (or only the invalid) ones.
    pub fn iter_tokens(&self, valid: Option<bool>) -> Result<Vec<RegistrationToken>> {
        let now = util::now_millis();
        let mut tokens = Vec::new();
        for entry in self.registrationtoken_info.iter_prefix(b"") {
            let (_, bytes) = entry?;
            let token: RegistrationToken = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt("registrationtoken_info", e))?;
            if valid.is_none_or(|valid| token.is_valid_at(now) == valid) {
                tokens.push(token);
            }
        }
        Ok(tokens)
    }

    /// Creates a token; `M_INVALID_PARAM` for a token with other characters than
    /// `A-Z a-z 0-9 . _ ~ -` or over 64 of them, a length outside 1 to 64, or a token that
    /// exists.
    pub fn create(&self, new: NewToken) -> Result<RegistrationToken> {
        let token = match new.token {
            Some(token) => {
                check_token(&token)?;
                token
            }
            None => {
                let length = new.length.unwrap_or(DEFAULT_TOKEN_LENGTH as u64);
                if !(1..=MAX_TOKEN_LENGTH as u64).contains(&length) {
                    return Err(Error::invalid_param("length must be between 1 and 64"));
                }
                util::random_string(length as usize)
            }
        };
        let record = RegistrationToken {
            token,
            uses_allowed: new.limits.uses_allowed.flatten(),
            pending: 0,
            completed: 0,
            expiry_time: new.limits.expiry_time.flatten(),
        };
        let _write = self.write.lock();
        if self.get(&record.token)?.is_some() {
            return Err(Error::invalid_param(format!(
                "registration token {} already exists",
                record.token
            )));
        }
        self.store(&record)?;
        Ok(record)
    }

    /// Changes a token's limits; `M_NOT_FOUND` for an unknown token.
    pub fn update(&self, token: &str, limits: TokenLimits) -> Result<RegistrationToken> {
        let _write = self.write.lock();
        let mut record = self.get_existing(token)?;
        if let Some(uses_allowed) = limits.uses_allowed {
            record.uses_allowed = uses_allowed;
        }
        if let Some(expiry_time) = limits.expiry_time {
            record.expiry_time = expiry_time;
        }
        self.store(&record)?;
        Ok(record)
    }

    /// Deletes a token; `M_NOT_FOUND` for an unknown token.
    pub fn delete(&self, token: &str) -> Result<()> {
        let _write = self.write.lock();
        self.get_existing(token)?;
        self.registrationtoken_info.remove(token.as_bytes())
    }

    /// Whether a stored token may complete a registration now.
    pub fn is_valid(&self, token: &str) -> Result<bool> {
        Ok(self
            .get(token)?
            .is_some_and(|record| record.is_valid_at(util::now_millis())))
    }

    /// Counts a completed registration against a stored token: `Ok(false)` when `token` is no
    /// stored token (the configured one, which has no count), `M_FORBIDDEN` when it expired or
    /// was used up since its stage was checked.
    pub fn spend(&self, token: &str) -> Result<bool> {
        let _write = self.write.lock();
        let Some(mut record) = self.get(token)? else {
            return Ok(false);
        };
        if !record.is_valid_at(util::now_millis()) {
            return Err(Error::forbidden("invalid registration token"));
        }
        record.completed += 1;
        self.store(&record)?;
        Ok(true)
    }

    fn store(&self, record: &RegistrationToken) -> Result<()> {
        self.registrationtoken_info.insert(
            record.token.as_bytes(),
            &serde_json::to_vec(record).map_err(Error::internal)?,
        )
    }
}

/// `M_INVALID_PARAM` unless `token` is 1 to 64 characters of `A-Z a-z 0-9 . _ ~ -`.
fn check_token(token: &str) -> Result<()> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._~-".contains(&byte);
    if token.is_empty() || token.len() > MAX_TOKEN_LENGTH || !token.bytes().all(allowed) {
        return Err(Error::invalid_param(format!(
            "invalid registration token {token}: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(
        uses_allowed: Option<u64>,
        completed: u64,
        expiry_time: Option<u64>,
    ) -> RegistrationToken {
        RegistrationToken {
            token: "t".to_owned(),
            uses_allowed,
            pending: 0,
            completed,
            expiry_time,
        }
    }

    #[test]
    fn validity_follows_uses_and_expiry() {
        assert!(token(None, 99, None).is_valid_at(5));
        assert!(token(Some(2), 1, None).is_valid_at(5));
        assert!(!token(Some(2), 2, None).is_valid_at(5));
        assert!(!token(Some(0), 0, None).is_valid_at(5));
        assert!(token(None, 0, Some(5)).is_valid_at(5));
        assert!(!token(None, 0, Some(4)).is_valid_at(5));
    }

    #[test]
    fn tokens_are_checked_created_and_spent_once_per_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let tokens = RegistrationTokens::open(&db);
        for bad in ["", "has space", "ünï", &"a".repeat(65)] {
            assert!(check_token(bad).is_err(), "{bad}");
        }
        let new = NewToken::from_body(&serde_json::json!({"token": "abc", "uses_allowed": 1}));
        let created = tokens.create(new.unwrap()).unwrap();
        assert_eq!(created.uses_allowed, Some(1));
        let again = NewToken::from_body(&serde_json::json!({"token": "abc"})).unwrap();
        assert!(tokens.create(again).is_err());
        assert!(tokens.is_valid("abc").unwrap());
        assert!(tokens.spend("abc").unwrap());
        assert!(!tokens.is_valid("abc").unwrap());
        assert!(tokens.spend("abc").is_err());
        assert!(!tokens.spend("not-stored").unwrap());
        let random = tokens.create(NewToken::default()).unwrap();
        assert_eq!(random.token.len(), DEFAULT_TOKEN_LENGTH);
    }
}
