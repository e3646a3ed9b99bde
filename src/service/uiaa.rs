//! User-interactive authentication: which flows an action needs, validating each submitted
//! stage, and the sessions that remember which stages a client completed.
//!
//! User-interactive auth: the flows of each action (registration by mode, the password for an account's own sensitive actions), validation of each submitted stage (the password through `users`), and the sessions, in memory.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{api::error::ErrorKind, UserId};
use serde_json::{json, Value};

use crate::{
    config::Registration,
    error::{Error, Result},
    service::{rate_limits::Limit, Services},
    util,
};

/// Sessions live in memory: a restart only makes a client start its UIA flow again.
#[derive(Default)]
pub struct Uiaa {
    sessions: Mutex<HashMap<String, Vec<String>>>,
}

impl Uiaa {
    /// Starts a session.
    pub fn create(&self) -> String {
        let session = util::random_string(24);
        let mut sessions = self.sessions.lock();
        if sessions.len() > 100_000 {
            sessions.clear();
        }
        sessions.insert(session.clone(), Vec::new());
        session
    }

    /// Whether a session exists.
    pub fn exists(&self, session: &str) -> bool {
        self.sessions.lock().contains_key(session)
    }

    /// Stages a session has completed.
    pub fn completed(&self, session: &str) -> Vec<String> {
        self.sessions
            .lock()
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a completed stage.
    pub fn complete(&self, session: &str, stage: &str) {
        if let Some(stages) = self.sessions.lock().get_mut(session) {
            if !stages.iter().any(|done| done == stage) {
                stages.push(stage.to_owned());
            }
        }
    }

    /// Ends a session once its flow succeeded.
    pub fn finish(&self, session: &str) {
        self.sessions.lock().remove(session);
    }
}

/// The one flow of an account's own sensitive actions (password change, deactivation, device
/// deletion, replacing cross-signing keys): the account's password.
const PASSWORD_FLOWS: &[&[&str]] = &[&["m.login.password"]];

/// Runs user-interactive auth for registration: `m.login.dummy` when registration is open,
/// `m.login.registration_token` in token mode. Fails with the UIA `401` body until the flow is
/// complete.
pub async fn check_registration(services: &Services, auth: Option<&Value>) -> Result<()> {
    check(services, auth, registration_flows(services)?, None).await
}

/// The registration flows of the configured mode; closed registration is `M_FORBIDDEN`.
pub fn registration_flows(services: &Services) -> Result<&'static [&'static [&'static str]]> {
    match services.config.registration {
        Registration::Open => Ok(&[&["m.login.dummy"]]),
        Registration::Token => Ok(&[&["m.login.registration_token"]]),
        Registration::Closed => Err(Error::forbidden("registration is disabled")),
    }
}

/// Runs user-interactive auth with `m.login.password` as `user_id`. Fails with the UIA `401`
/// body until the password stage is complete.
pub async fn check_password(
    services: &Services,
    auth: Option<&Value>,
    user_id: &UserId,
) -> Result<()> {
    check(services, auth, PASSWORD_FLOWS, Some(user_id)).await
}

/// Runs user-interactive auth for one of `flows` (each a list of stage names) with `password_user`
/// as the account whose password `m.login.password` checks.
async fn check(
    services: &Services,
    auth: Option<&Value>,
    flows: &[&[&str]],
    password_user: Option<&UserId>,
) -> Result<()> {
    let uiaa = &services.uiaa;
    let session = match auth
        .and_then(|auth| auth.get("session"))
        .and_then(Value::as_str)
    {
        Some(session) if uiaa.exists(session) => session.to_owned(),
        Some(_) => {
            return Err(Error::matrix(
                ErrorKind::NotFound,
                "unknown user-interactive auth session",
            ))
        }
        None => uiaa.create(),
    };
    let mut error = None;
    if let Some(auth) = auth {
        match run_stage(services, auth, password_user).await? {
            Ok(Some(stage)) => uiaa.complete(&session, stage),
            Ok(None) => {}
            Err(stage_error) => error = Some(stage_error),
        }
    }
    let completed = uiaa.completed(&session);
    let flow_done = |flow: &&[&str]| {
        flow.iter()
            .all(|stage| completed.iter().any(|done| done == stage))
    };
    if flows.iter().any(flow_done) {
        uiaa.finish(&session);
        return Ok(());
    }
    let flows: Vec<Value> = flows
        .iter()
        .map(|stages| json!({ "stages": stages }))
        .collect();
    let mut body =
        json!({ "flows": flows, "params": {}, "session": session, "completed": completed });
    if let Some((errcode, message)) = error {
        body["errcode"] = json!(errcode);
        body["error"] = json!(message);
    }
    Err(Error::Uiaa(body))
}

/// A stage's outcome: the stage completed (or `None` when `auth` names no stage), or the
/// `errcode` and message the next `401` carries.
type StageOutcome = std::result::Result<Option<&'static str>, (&'static str, String)>;

/// Validates the stage that `auth` submits.
async fn run_stage(
    services: &Services,
    auth: &Value,
    password_user: Option<&UserId>,
) -> Result<StageOutcome> {
    let forbidden = |message: &str| Err(("M_FORBIDDEN", message.to_owned()));
    Ok(match auth.get("type").and_then(Value::as_str) {
        Some("m.login.dummy") => Ok(Some("m.login.dummy")),
        Some("m.login.registration_token") => {
            let given = auth.get("token").and_then(Value::as_str).unwrap_or("");
            if is_valid_registration_token(services, given)? {
                Ok(Some("m.login.registration_token"))
            } else {
                forbidden("invalid registration token")
            }
        }
        Some("m.login.password") => {
            match check_password_stage(services, auth, password_user).await? {
                true => Ok(Some("m.login.password")),
                false => forbidden("invalid password"),
            }
        }
        Some(other) => Err(("M_UNRECOGNIZED", format!("unsupported auth type {other}"))),
        None => Ok(None),
    })
}

/// Whether an `m.login.password` stage names `password_user` (by full ID or localpart, or not at
/// all) with the right password. Naming another account is `M_FORBIDDEN` outright (Synapse and
/// Complement expect 403, not another 401).
async fn check_password_stage(
    services: &Services,
    auth: &Value,
    password_user: Option<&UserId>,
) -> Result<bool> {
    let given_user = auth
        .get("identifier")
        .and_then(|id| id.get("user"))
        .or_else(|| auth.get("user"))
        .and_then(Value::as_str);
    let password = auth.get("password").and_then(Value::as_str).unwrap_or("");
    let Some(user) = password_user else {
        return Ok(false);
    };
    if let Some(given) = given_user {
        if given != user.as_str() && given != user.localpart() {
            return Err(Error::matrix(
                ErrorKind::Forbidden,
                "user-interactive auth names another user than the requester",
            ));
        }
    }
    // Guessing the password with a stolen access token is as slow as with logins.
    services
        .rate_limits
        .check_failures(Limit::UiaFailedAttempts, user)?;
    let matches = services.users.check_password(user, password).await?;
    if !matches {
        services
            .rate_limits
            .record_failure(Limit::UiaFailedAttempts, user);
    }
    Ok(matches)
}

/// Whether `token` is the configured registration token or a valid one an admin made (whose use
/// the registration counts when it completes, [`spend_registration_token`]).
pub fn is_valid_registration_token(services: &Services, token: &str) -> Result<bool> {
    let configured = services.config.registration_token.as_deref().unwrap_or("");
    if !configured.is_empty() && constant_time_eq(token.as_bytes(), configured.as_bytes()) {
        return Ok(true);
    }
    services.registration_tokens.is_valid(token)
}

/// `GET /register/m.login.registration_token/validity`: whether `token` may register now.
/// `M_FORBIDDEN` while registration is closed; each check spends one of the address's
/// registration rate-limit tokens, so that guessing tokens is as slow as registering.
pub fn check_registration_token(
    services: &Services,
    token: &str,
    client_ip: Option<std::net::IpAddr>,
) -> Result<bool> {
    registration_flows(services)?;
    services
        .rate_limits
        .take_address(Limit::Registration, client_ip)?;
    is_valid_registration_token(services, token)
}

/// Counts a completed registration against the admin-made token its `auth` submitted, if any;
/// `M_FORBIDDEN` when that token ran out since its stage was checked.
pub fn spend_registration_token(services: &Services, auth: Option<&Value>) -> Result<()> {
    let Some(auth) = auth.filter(|auth| auth["type"] == "m.login.registration_token") else {
        return Ok(());
    };
    let token = auth.get("token").and_then(Value::as_str).unwrap_or("");
    services.registration_tokens.spend(token)?;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
