//! Accounts: registration with user-interactive auth, login, logout, token refresh, whoami,
//! password change and deactivation.

use std::{sync::Arc, time::Duration};

use ruma::{
    api::{
        client::{
            account::{
                check_registration_token_validity, get_username_availability, request_openid_token,
                whoami,
            },
            session::{
                get_login_types::{
                    self,
                    v3::{LoginType, PasswordLoginType},
                },
                logout, logout_all, refresh_token,
            },
        },
        error::ErrorKind,
    },
    authentication::TokenType,
    OwnedDeviceId, OwnedUserId,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{client::appservice, Ctx, HandlerResult},
    error::{Error, Result},
    service::{
        appservice::{accounts as appservice_accounts, NO_DEVICE},
        rate_limits::Limit,
        rooms::membership,
        uiaa,
        users::{
            self,
            account::{self, Registration, Session},
            devices::{self, NewDevice},
        },
        Services,
    },
};

/// The body of `/register`, read leniently as Synapse does: `auth` may be any stage object (the
/// UIA service validates it), and unknown fields are ignored.
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
    /// `m.login.application_service` for an appservice registering a user of its namespace.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The login and registration type of appservices.
const APPSERVICE_LOGIN: &str = "m.login.application_service";

/// `POST /_matrix/client/v3/register`
///
/// Flows: `m.login.dummy` when registration is open, `m.login.registration_token` in token mode.
/// An appservice registers a user of its namespace with type `m.login.application_service` and
/// its `as_token`, without user-interactive auth, whatever the registration mode; anyone else
/// gets `M_EXCLUSIVE` for a name in an exclusive namespace.
/// Guest registration (`kind=guest`) is refused. Limited per client address
/// (`rate_limits.registration`, spent by the request that creates the account).
/// Untyped: ruma's `AuthData` refuses a stage it cannot read (`m.login.registration_token`
/// without `token`, an `auth` with neither `type` nor `session`) as `400 M_BAD_JSON` where the
/// UIA service answers `401` with the flows, and ruma's response writes `"device_id": null`
/// with `inhibit_login`.
pub async fn register(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    if ctx.query("kind") == Some("guest") {
        return Err(Error::matrix(
            ErrorKind::GuestAccessForbidden,
            "guest access is disabled",
        ));
    }
    let body: RegisterBody = ctx.body_as()?;
    let device = (!body.inhibit_login).then_some(NewDevice {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        refreshable: body.refresh_token,
    });
    if body.kind.as_deref() == Some(APPSERVICE_LOGIN) {
        let appservice = appservice::appservice_of(&services, &ctx)?;
        let username = body
            .username
            .ok_or_else(|| Error::matrix(ErrorKind::MissingParam, "missing username"))?;
        return match appservice_accounts::register(&services, &appservice, &username, device)? {
            (_, Some(session)) => Ok(session_json(session)),
            (user_id, None) => Ok(json!({ "user_id": user_id })),
        };
    }
    let registration = Registration {
        username: body.username,
        password: body.password,
        device,
        auth: body.auth,
        client_ip: ctx.client_ip,
    };
    match account::register(&services, registration).await? {
        (_, Some(session)) => Ok(session_json(session)),
        (user_id, None) => Ok(json!({ "user_id": user_id })),
    }
}

/// The response to a registration or login that logged a device in.
fn session_json(session: Session) -> Value {
    let tokens = session.tokens;
    let mut body = json!({
        "user_id": session.user_id,
        "device_id": session.device_id,
        "access_token": tokens.access_token,
    });
    if let Some(refresh) = tokens.refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(expires) = tokens.expires_in_ms {
        body["expires_in_ms"] = json!(expires);
    }
    body
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(
    services: Arc<Services>,
    _ctx: Ctx,
    request: get_username_availability::v3::Request,
) -> Result<get_username_availability::v3::Response> {
    let user_id = account::user_for_localpart(&services, &request.username.to_lowercase())?;
    account::check_available(&services, &user_id)?;
    services
        .appservices
        .check_user_not_exclusive(&user_id, None)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
///
/// Whether a registration token (the configured one, or one an admin made) may register now;
/// `403 M_FORBIDDEN` while registration is closed. Rate-limited with registration.
pub async fn check_registration_token_validity(
    services: Arc<Services>,
    ctx: Ctx,
    request: check_registration_token_validity::v1::Request,
) -> Result<check_registration_token_validity::v1::Response> {
    let valid = uiaa::check_registration_token(&services, &request.token, ctx.client_ip)?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(
    _services: Arc<Services>,
    _ctx: Ctx,
    _request: get_login_types::v3::Request,
) -> Result<get_login_types::v3::Response> {
    let password = LoginType::Password(PasswordLoginType::new());
    Ok(get_login_types::v3::Response::new(vec![password]))
}

/// The body of `/login`, read leniently: the identifier is looked at only for its `type` and
/// `user`, and the legacy top-level `user` field is accepted.
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
/// Supports `m.login.password` with a user identifier (full ID or localpart), or the legacy
/// top-level `user`; another login or identifier type is `400 M_UNKNOWN`, as Synapse answers.
/// Limited per client address (`rate_limits.login_address`) and per account's failed logins
/// (`rate_limits.login_failed_attempts`, whatever the address).
/// Untyped: ruma's `LoginInfo` indexes the body's `type` and panics when it is missing (we
/// answer `400 M_BAD_JSON`), and refuses a password login without `password` as `M_BAD_JSON`
/// (we answer `403 M_FORBIDDEN`).
pub async fn login(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    services
        .rate_limits
        .take_address(Limit::LoginAddress, ctx.client_ip)?;
    let body: LoginBody = ctx.body_as()?;
    if body.kind == APPSERVICE_LOGIN {
        return log_in_appservice_user(&services, &ctx, body);
    }
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
    let device = NewDevice {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        refreshable: body.refresh_token,
    };
    let password = body.password.as_deref().unwrap_or("");
    let session = account::log_in_with_password(&services, &name, password, device).await?;
    let mut response = session_json(session);
    response["home_server"] = json!(services.globals.server_name());
    Ok(response)
}

/// `/login` with `m.login.application_service`: the appservice's `as_token` logs a device of a
/// user of its namespace in.
fn log_in_appservice_user(services: &Services, ctx: &Ctx, body: LoginBody) -> HandlerResult {
    let appservice = appservice::appservice_of(services, ctx)?;
    let name = body
        .identifier
        .as_ref()
        .and_then(|identifier| identifier.get("user"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(body.user)
        .ok_or_else(|| Error::bad_json("missing user identifier"))?;
    let user_id = match name.starts_with('@') {
        true => OwnedUserId::try_from(name.as_str())
            .map_err(|_| Error::invalid_param(format!("invalid user ID {name}")))?,
        false => users::local_user_id(services.globals.server_name(), &name)?,
    };
    let device = NewDevice {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        refreshable: body.refresh_token,
    };
    let session = appservice_accounts::log_in(services, &appservice, &user_id, device)?;
    let mut response = session_json(session);
    response["home_server"] = json!(services.globals.server_name());
    Ok(response)
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh(
    services: Arc<Services>,
    _ctx: Ctx,
    request: refresh_token::v3::Request,
) -> Result<refresh_token::v3::Response> {
    let tokens = services
        .users
        .refresh(
            &request.refresh_token,
            services.config.refreshable_token_lifetime_ms,
        )?
        .ok_or_else(|| {
            Error::matrix(
                ErrorKind::UnknownToken(crate::api::ctx::unknown_token_data(false)),
                "unknown refresh token",
            )
        })?;
    let mut response = refresh_token::v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(
    services: Arc<Services>,
    ctx: Ctx,
    _request: logout::v3::Request,
) -> Result<logout::v3::Response> {
    devices::remove(&services, ctx.user(), ctx.device())?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    services: Arc<Services>,
    ctx: Ctx,
    _request: logout_all::v3::Request,
) -> Result<logout_all::v3::Response> {
    devices::remove_all(&services, ctx.user(), None)?;
    Ok(logout_all::v3::Response::new())
}

/// `GET /_matrix/client/v3/account/whoami`
///
/// For an appservice, the user it acts as, and the device only when it named one.
pub async fn whoami(
    _services: Arc<Services>,
    ctx: Ctx,
    _request: whoami::v3::Request,
) -> Result<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(ctx.user().to_owned(), false);
    response.device_id = ctx
        .device
        .clone()
        .filter(|device| device.as_str() != NO_DEVICE);
    Ok(response)
}

/// The body of `/account/password`.
#[derive(Deserialize)]
struct ChangePasswordBody {
    new_password: String,
    #[serde(default = "default_true")]
    logout_devices: bool,
}

fn default_true() -> bool {
    true
}

/// `POST /_matrix/client/v3/account/password`
///
/// UIA with `m.login.password`; `logout_devices` (default true) logs out every other device.
/// Untyped: ruma's `AuthData::Password` requires `identifier`, so a password stage with the
/// legacy top-level `user` (which clients and our tests send) would be `400 M_BAD_JSON`.
pub async fn change_password(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let body: ChangePasswordBody = ctx.body_as()?;
    account::change_password(
        &services,
        (ctx.user(), ctx.device()),
        &body.new_password,
        body.logout_devices,
        ctx.body.get("auth"),
    )
    .await?;
    Ok(json!({}))
}

/// `POST /_matrix/client/v3/account/deactivate`
///
/// UIA with `m.login.password`; the user leaves every joined room first. Leaving goes through
/// the membership handlers' event path, which no service offers yet, so this handler runs the
/// UIA, the leaves and the deactivation as three steps.
/// Untyped: ruma refuses the legacy password stage, as for [`change_password`].
pub async fn deactivate(services: Arc<Services>, ctx: Ctx) -> HandlerResult {
    let user = ctx.user().to_owned();
    uiaa::check_password(&services, ctx.body.get("auth"), &user).await?;
    membership::leave_all(&services, &user).await?;
    account::deactivate(&services, &user)?;
    Ok(json!({ "id_server_unbind_result": "no-support" }))
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
///
/// A token that a third party (an integration manager, a widget host) can trade for the user's ID
/// at this server's `/_matrix/federation/v1/openid/userinfo`; valid for an hour.
pub async fn request_openid_token(
    services: Arc<Services>,
    ctx: Ctx,
    request: request_openid_token::v3::Request,
) -> Result<request_openid_token::v3::Response> {
    const LIFETIME: Duration = Duration::from_secs(3600);
    if request.user_id != ctx.user() {
        return Err(Error::forbidden(
            "cannot request an OpenID token for another user",
        ));
    }
    let lifetime_ms = LIFETIME.as_millis() as u64;
    let token = services
        .users
        .create_openid_token(&request.user_id, lifetime_ms)?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        services.globals.server_name().to_owned(),
        LIFETIME,
    ))
}
