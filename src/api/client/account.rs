//! Accounts: registration with user-interactive auth, login, logout, token refresh, whoami,
//! password change and deactivation.

use std::sync::Arc;

use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{Ctx, HandlerResult},
    config::Registration,
    error::{Error, Result},
    service::{device_lists, users, Services},
    util,
};

#[derive(Deserialize)]
struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<OwnedDeviceId>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    #[serde(default)]
    refresh_token: bool,
    auth: Option<Value>,
}

/// Runs user-interactive auth for one of `flows` (each a list of stage names) with `password_user`
/// as the account whose password `m.login.password` checks. Fails with the UIA `401` body until a
/// flow is complete.
pub fn check_uiaa(
    services: &Services,
    auth: Option<&Value>,
    flows: &[&[&str]],
    password_user: Option<&UserId>,
) -> Result<()> {
    let session = auth
        .and_then(|auth| auth.get("session"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let session = match session {
        Some(session) if services.uiaa.exists(&session) => session,
        Some(_) => {
            return Err(Error::matrix(
                ErrorKind::NotFound,
                "unknown user-interactive auth session",
            ))
        }
        None => services.uiaa.create(),
    };
    let mut error = None;
    if let Some(auth) = auth {
        match auth.get("type").and_then(Value::as_str) {
            Some("m.login.dummy") => services.uiaa.complete(&session, "m.login.dummy"),
            Some("m.login.registration_token") => {
                let given = auth.get("token").and_then(Value::as_str).unwrap_or("");
                let expected = services.config.registration_token.as_deref().unwrap_or("");
                if !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    services
                        .uiaa
                        .complete(&session, "m.login.registration_token");
                } else {
                    error = Some(
                        json!({"errcode": "M_FORBIDDEN", "error": "invalid registration token"}),
                    );
                }
            }
            Some("m.login.password") => {
                let given_user = auth
                    .get("identifier")
                    .and_then(|id| id.get("user"))
                    .or_else(|| auth.get("user"))
                    .and_then(Value::as_str);
                let password = auth.get("password").and_then(Value::as_str).unwrap_or("");
                // Authenticating as another account than the one the request acts for is
                // forbidden outright (Synapse and Complement expect 403, not another 401).
                if let (Some(given), Some(user)) = (given_user, password_user) {
                    if given != user.as_str() && given != user.localpart() {
                        return Err(Error::matrix(
                            ErrorKind::Forbidden,
                            "user-interactive auth names another user than the requester",
                        ));
                    }
                }
                let user_ok = match (given_user, password_user) {
                    (Some(given), Some(user)) => {
                        given == user.as_str() || given == user.localpart()
                    }
                    (None, Some(_)) => true,
                    _ => false,
                };
                match password_user {
                    Some(user) if user_ok && services.users.check_password(user, password)? => {
                        services.uiaa.complete(&session, "m.login.password")
                    }
                    _ => {
                        error = Some(json!({"errcode": "M_FORBIDDEN", "error": "invalid password"}))
                    }
                }
            }
            Some(other) => {
                error = Some(
                    json!({"errcode": "M_UNRECOGNIZED", "error": format!("unsupported auth type {other}")}),
                )
            }
            None => {}
        }
    }
    let completed = services.uiaa.completed(&session);
    if flows.iter().any(|flow| {
        flow.iter()
            .all(|stage| completed.iter().any(|done| done == stage))
    }) {
        services.uiaa.finish(&session);
        return Ok(());
    }
    let flows: Vec<Value> = flows
        .iter()
        .map(|stages| json!({ "stages": stages }))
        .collect();
    let mut body =
        json!({ "flows": flows, "params": {}, "session": session, "completed": completed });
    if let Some(error) = error {
        body["errcode"] = error["errcode"].clone();
        body["error"] = error["error"].clone();
    }
    Err(Error::Uiaa(body))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn user_for_localpart(services: &Services, localpart: &str) -> Result<OwnedUserId> {
    let user_id = users::local_user_id(services.globals.server_name(), localpart)?;
    services
        .server_notices
        .check_registration(&services.config, &user_id)?;
    Ok(user_id)
}

/// `POST /_matrix/client/v3/register`
///
/// Flows: `m.login.dummy` when registration is open, `m.login.registration_token` in token mode.
/// Guest registration (`kind=guest`) is refused.
pub async fn register(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    if ctx.query("kind") == Some("guest") {
        return Err(Error::matrix(
            ErrorKind::GuestAccessForbidden,
            "guest access is disabled",
        ));
    }
    let body: RegisterBody = ctx.body_as()?;
    let flows: &[&[&str]] = match services.config.registration {
        Registration::Open => &[&["m.login.dummy"]],
        Registration::Token => &[&["m.login.registration_token"]],
        Registration::Closed => return Err(Error::forbidden("registration is disabled")),
    };
    let user_id = match &body.username {
        Some(name) => user_for_localpart(&services, &name.to_lowercase())?,
        None => user_for_localpart(&services, &util::random_string(12).to_lowercase())?,
    };
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    if body
        .password
        .as_ref()
        .is_some_and(|password| password.len() > 512)
    {
        return Err(Error::bad_json("password too long"));
    }
    check_uiaa(&services, body.auth.as_ref(), flows, None)?;
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    services.users.create(&user_id, body.password.as_deref())?;
    tracing::info!(user = %user_id, "registered");
    if body.inhibit_login {
        return Ok(json!({ "user_id": user_id }));
    }
    let (device_id, tokens) = services.users.create_device(
        &user_id,
        body.device_id,
        body.initial_device_display_name,
        body.refresh_token,
        services.config.refreshable_token_lifetime_ms,
    )?;
    // Starts the user's device list chain, so that every later update names a prev_id.
    device_lists::announce_device(&services, &user_id, device_id.as_str())?;
    Ok(tokens_json(&user_id, &device_id, tokens))
}

fn tokens_json(
    user_id: &UserId,
    device_id: &OwnedDeviceId,
    tokens: crate::service::users::Tokens,
) -> Value {
    let mut body =
        json!({ "user_id": user_id, "device_id": device_id, "access_token": tokens.access_token });
    if let Some(refresh) = tokens.refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(expires) = tokens.expires_in_ms {
        body["expires_in_ms"] = json!(expires);
    }
    body
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let username = ctx
        .query("username")
        .ok_or_else(|| Error::missing_param("missing username"))?;
    let user_id = user_for_localpart(&services, &username.to_lowercase())?;
    if services.users.exists(&user_id)? {
        return Err(Error::matrix(
            ErrorKind::UserInUse,
            format!("{user_id} is already taken"),
        ));
    }
    Ok(json!({ "available": true }))
}

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(_services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(json!({ "flows": [{ "type": "m.login.password" }] }))
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Value>,
    user: Option<String>,
    password: Option<String>,
    device_id: Option<OwnedDeviceId>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
}

/// `POST /_matrix/client/v3/login`
///
/// Supports `m.login.password` with a user identifier (full ID or localpart).
pub async fn login(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body: LoginBody = ctx.body_as()?;
    if body.kind != "m.login.password" {
        return Err(Error::matrix(
            ErrorKind::Unknown,
            format!("unsupported login type {}", body.kind),
        ));
    }
    let name = match &body.identifier {
        Some(identifier) => {
            if identifier.get("type").and_then(Value::as_str) != Some("m.id.user") {
                return Err(Error::matrix(
                    ErrorKind::Unknown,
                    "unsupported identifier type",
                ));
            }
            identifier
                .get("user")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }
        None => body.user.clone(),
    }
    .ok_or_else(|| Error::bad_json("missing user identifier"))?;
    let user_id = if name.starts_with('@') {
        OwnedUserId::try_from(name.to_lowercase())
            .map_err(|_| Error::invalid_param("invalid user ID"))?
    } else {
        user_for_localpart(&services, &name.to_lowercase())
            .map_err(|_| Error::forbidden("invalid username or password"))?
    };
    let password = body.password.as_deref().unwrap_or("");
    if user_id.server_name() != services.globals.server_name()
        || !services.users.check_password(&user_id, password)?
    {
        if services.users.is_deactivated(&user_id)? {
            return Err(Error::matrix(
                ErrorKind::UserDeactivated,
                "this account was deactivated",
            ));
        }
        return Err(Error::forbidden("invalid username or password"));
    }
    let known_device = match &body.device_id {
        Some(device_id) => services.users.get_device(&user_id, device_id.as_str())?,
        None => None,
    };
    let (device_id, tokens) = services.users.create_device(
        &user_id,
        body.device_id,
        body.initial_device_display_name,
        body.refresh_token,
        services.config.refreshable_token_lifetime_ms,
    )?;
    // A new device (or a new name for a known one) is a device list change for everyone who
    // shares a room with the user, here and on other servers.
    let renamed = known_device.as_ref().is_some_and(|known| {
        services
            .users
            .get_device(&user_id, device_id.as_str())
            .ok()
            .flatten()
            .is_some_and(|device| device.display_name != known.display_name)
    });
    if known_device.is_none() || renamed {
        device_lists::announce_device(&services, &user_id, device_id.as_str())?;
    }
    let mut response = tokens_json(&user_id, &device_id, tokens);
    response["home_server"] = json!(services.globals.server_name());
    Ok(response)
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let token = ctx
        .body
        .get("refresh_token")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing refresh_token"))?;
    let tokens = services
        .users
        .refresh(token, services.config.refreshable_token_lifetime_ms)?
        .ok_or_else(|| {
            Error::matrix(
                ErrorKind::UnknownToken(crate::api::ctx::unknown_token_data(false)),
                "unknown refresh token",
            )
        })?;
    Ok(
        json!({ "access_token": tokens.access_token, "refresh_token": tokens.refresh_token, "expires_in_ms": tokens.expires_in_ms }),
    )
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    device_lists::delete_device(&services, ctx.user(), ctx.device())?;
    services
        .push
        .pushers
        .delete_device_pushers(ctx.user(), ctx.device())?;
    services.users.remove_device(ctx.user(), ctx.device())?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    for device in services.users.iter_devices(ctx.user())? {
        device_lists::delete_device(&services, ctx.user(), device.device_id.as_str())?;
        services
            .push
            .pushers
            .delete_device_pushers(ctx.user(), device.device_id.as_str())?;
        services
            .users
            .remove_device(ctx.user(), device.device_id.as_str())?;
    }
    Ok(json!({}))
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(_services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    Ok(json!({ "user_id": ctx.user(), "device_id": ctx.device(), "is_guest": false }))
}

/// `POST /_matrix/client/v3/account/password`
///
/// UIA with `m.login.password`; `logout_devices` (default true) logs out every other device.
pub async fn change_password(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let new_password = ctx
        .body
        .get("new_password")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("missing new_password"))?
        .to_owned();
    check_uiaa(
        &services,
        ctx.body.get("auth"),
        &[&["m.login.password"]],
        Some(ctx.user()),
    )?;
    services.users.set_password(ctx.user(), &new_password)?;
    if ctx
        .body
        .get("logout_devices")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        for device in services.users.iter_devices(ctx.user())? {
            if device.device_id.as_str() != ctx.device() {
                device_lists::delete_device(&services, ctx.user(), device.device_id.as_str())?;
                services
                    .push
                    .pushers
                    .delete_device_pushers(ctx.user(), device.device_id.as_str())?;
                services
                    .users
                    .remove_device(ctx.user(), device.device_id.as_str())?;
            }
        }
    }
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/account/deactivate`
///
/// UIA with `m.login.password`; the user leaves every joined room first.
pub async fn deactivate(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    check_uiaa(
        &services,
        ctx.body.get("auth"),
        &[&["m.login.password"]],
        Some(ctx.user()),
    )?;
    let user = ctx.user().to_owned();
    for membership in services.rooms.members.iter_rooms(&user)? {
        if matches!(
            membership.membership,
            ruma::events::room::member::MembershipState::Join
                | ruma::events::room::member::MembershipState::Invite
        ) {
            let _ = super::membership::set_membership(
                &services,
                &membership.room_id,
                &user,
                &user,
                "leave",
                None,
            )
            .await;
        }
    }
    for device in services.users.iter_devices(&user)? {
        device_lists::delete_device(&services, &user, device.device_id.as_str())?;
    }
    services.push.pushers.delete_user_pushers(&user)?;
    services.users.deactivate(&user)?;
    Ok(json!({ "id_server_unbind_result": "no-support" }))
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
///
/// A token that a third party (an integration manager, a widget host) can trade for the user's ID
/// at this server's `/_matrix/federation/v1/openid/userinfo`; valid for an hour.
pub async fn request_openid_token(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    const LIFETIME_MS: u64 = 3_600_000;
    let user_id = ctx.user_param(0)?;
    if user_id != ctx.user() {
        return Err(Error::forbidden(
            "cannot request an OpenID token for another user",
        ));
    }
    let token = services.users.create_openid_token(&user_id, LIFETIME_MS)?;
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": services.globals.server_name(),
        "expires_in": LIFETIME_MS / 1000,
    }))
}
