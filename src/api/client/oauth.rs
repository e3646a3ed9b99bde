//! The OAuth 2.0 API's endpoints (spec v1.15; the rules are `service::oauth`'s): the server
//! metadata, client registration, the authorization page with its login and sign-up forms
//! (plain server-rendered HTML, no script), the token endpoint and revocation. Everything under
//! `/_plait/oauth/` speaks OAuth (form bodies, `{"error": ...}` answers), not the Matrix API.

use std::{collections::HashMap, sync::Arc};

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use http_body_util::BodyExt;
use ruma::api::error::ErrorKind;
use serde_json::{json, Value};

use crate::{
    api::{
        client::{base_url, escape, html},
        json_response, Ctx, HandlerResult, RawResult,
    },
    error::{Error, Result},
    service::{
        oauth::{self, AuthRequest, OAuthError, RequestError, SignUp},
        Services,
    },
};

/// Largest form or registration body read.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// `GET /_matrix/client/v1/auth_metadata` (and MSC2965's unstable path)
pub async fn auth_metadata(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(oauth::metadata(&services, &base_url(&services)))
}

/// `GET /_matrix/client/unstable/org.matrix.msc2965/auth_issuer`, which older clients ask first.
pub async fn auth_issuer(services: Arc<Services>, _ctx: Ctx) -> HandlerResult {
    Ok(json!({ "issuer": format!("{}/", base_url(&services).trim_end_matches('/')) }))
}

/// Reads a small body whole (16 KiB at most, within the body timeout).
async fn read_small_body(services: &Services, ctx: &Ctx) -> Result<bytes::Bytes> {
    let body = ctx.raw_body.lock().take().unwrap_or_default();
    let deadline = std::time::Duration::from_millis(services.config.http_body_timeout_ms);
    let collected = tokio::time::timeout(
        deadline,
        http_body_util::Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await
    .map_err(|_| Error::RequestTimeout("the request body did not arrive in time".to_owned()))?;
    collected
        .map(|collected| collected.to_bytes())
        .map_err(|_| Error::matrix(ruma::api::error::ErrorKind::TooLarge, "body too large"))
}

/// A form body's fields (the first of a repeated name counts).
async fn read_form(services: &Services, ctx: &Ctx) -> Result<HashMap<String, String>> {
    let bytes = read_small_body(services, ctx).await?;
    let mut fields = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(&bytes) {
        fields
            .entry(name.into_owned())
            .or_insert(value.into_owned());
    }
    Ok(fields)
}

fn oauth_error(status: StatusCode, error: &OAuthError) -> Response {
    json_response(status, &error.to_json())
}

/// `POST /_plait/oauth/register`: dynamic client registration (RFC 7591).
pub async fn register_client(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let bytes = read_small_body(&services, &ctx).await?;
    let Ok(Value::Object(metadata)) = serde_json::from_slice::<Value>(&bytes) else {
        let error = OAuthError {
            error: "invalid_client_metadata",
            description: "the body must be a JSON object".to_owned(),
        };
        return Ok(oauth_error(StatusCode::BAD_REQUEST, &error));
    };
    Ok(match oauth::register_client(&services, &metadata)? {
        Ok(answer) => json_response(StatusCode::CREATED, &answer),
        Err(error) => oauth_error(StatusCode::BAD_REQUEST, &error),
    })
}

/// `GET /_plait/oauth/authorize`: the login page (the sign-up page for `prompt=create`).
pub async fn authorize_page(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let request = match oauth::check_request(&services, |name| ctx.query(name).map(str::to_owned))?
    {
        Ok(request) => request,
        Err(error) => return Ok(request_error(error)),
    };
    Ok(page(&services, &request, request.create, None))
}

/// `POST /_plait/oauth/authorize`: the login or sign-up form; on success the browser goes to the
/// client's redirect URI with a code, otherwise the form comes back with the reason.
pub async fn authorize_submit(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let form = read_form(&services, &ctx).await?;
    let field = |name: &str| form.get(name).cloned();
    let request = match oauth::check_request(&services, field)? {
        Ok(request) => request,
        Err(error) => return Ok(request_error(error)),
    };
    let username = field("username").unwrap_or_default();
    let password = field("password").unwrap_or_default();
    let create = field("action").as_deref() == Some("create");
    let outcome = if create {
        let new = SignUp {
            username,
            password,
            token: field("token"),
            client_ip: ctx.client_ip,
        };
        oauth::sign_up(&services, &request, new).await
    } else {
        oauth::sign_in(&services, &request, (&username, &password)).await
    };
    let (status, reason) = match outcome {
        Ok(location) => return Ok(redirect(&location)),
        Err(Error::Matrix { kind, message }) => {
            let status = match kind {
                ErrorKind::Forbidden | ErrorKind::UserDeactivated => StatusCode::FORBIDDEN,
                ErrorKind::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, message)
        }
        Err(Error::Uiaa(body)) => (
            StatusCode::FORBIDDEN,
            body["error"]
                .as_str()
                .unwrap_or("registration was refused")
                .to_owned(),
        ),
        Err(other) => return Err(other),
    };
    let mut response = page(&services, &request, create, Some(&reason));
    *response.status_mut() = status;
    Ok(response)
}

/// `POST /_plait/oauth/token`: the `authorization_code` and `refresh_token` grants.
pub async fn token(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let form = read_form(&services, &ctx).await?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let outcome = match field("grant_type") {
        "authorization_code" => oauth::exchange_code(
            &services,
            field("code"),
            field("client_id"),
            field("redirect_uri"),
            field("code_verifier"),
        )?,
        "refresh_token" => oauth::refresh(&services, field("refresh_token"))?,
        other => Err(OAuthError {
            error: "unsupported_grant_type",
            description: format!("grant type {other} is not supported"),
        }),
    };
    Ok(match outcome {
        Ok(answer) => {
            let mut response = json_response(StatusCode::OK, &answer.to_json());
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => oauth_error(StatusCode::BAD_REQUEST, &error),
    })
}

/// `POST /_plait/oauth/revoke`: ends the session of an access or refresh token (RFC 7009).
pub async fn revoke(services: Arc<Services>, ctx: Ctx) -> RawResult {
    let form = read_form(&services, &ctx).await?;
    let Some(token) = form.get("token").filter(|token| !token.is_empty()) else {
        let error = OAuthError {
            error: "invalid_request",
            description: "token is required".to_owned(),
        };
        return Ok(oauth_error(StatusCode::BAD_REQUEST, &error));
    };
    oauth::revoke(&services, token)?;
    Ok(json_response(StatusCode::OK, &json!({})))
}

fn redirect(location: &str) -> Response {
    match http::HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => html(
            StatusCode::BAD_REQUEST,
            "Invalid redirect",
            "<p>Invalid redirect URI.</p>",
        ),
    }
}

fn request_error(error: RequestError) -> Response {
    match error {
        RequestError::Show(message) => html(
            StatusCode::BAD_REQUEST,
            "Sign-in request refused",
            &format!("<p>{}</p>", escape(&message)),
        ),
        RequestError::Redirect {
            redirect_uri,
            response_mode,
            state,
            error,
        } => {
            let mut pairs = vec![
                ("error", error.error),
                ("error_description", &error.description),
            ];
            if let Some(state) = &state {
                pairs.push(("state", state));
            }
            redirect(&oauth::redirect_with(&redirect_uri, &response_mode, &pairs))
        }
    }
}

/// The login or sign-up page for a checked request, with `problem` shown when a try failed.
fn page(
    services: &Services,
    request: &AuthRequest,
    create: bool,
    problem: Option<&str>,
) -> Response {
    let client = request
        .client
        .client_name
        .clone()
        .unwrap_or_else(|| request.client.client_uri.clone());
    let server = services.globals.server_name().to_string();
    let mut hidden = String::new();
    let mut params = vec![
        ("client_id", request.client.client_id.clone()),
        ("redirect_uri", request.redirect_uri.clone()),
        ("response_type", "code".to_owned()),
        ("response_mode", request.response_mode.clone()),
        ("scope", request.scope.clone()),
        ("code_challenge", request.code_challenge.clone()),
        ("code_challenge_method", "S256".to_owned()),
    ];
    if let Some(state) = &request.state {
        params.push(("state", state.clone()));
    }
    for (name, value) in params {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
            escape(&value)
        ));
    }
    let registration = services.config.registration;
    let closed = registration == crate::config::Registration::Closed;
    let create = create && !closed;
    let (title, action, button) = match create {
        true => ("Create an account", "create", "Create account"),
        false => ("Sign in", "login", "Sign in"),
    };
    let token_field = if create && registration == crate::config::Registration::Token {
        "<label>Registration token <input name=\"token\" autocomplete=\"off\"></label>\n"
    } else {
        ""
    };
    let problem = problem
        .map(|problem| {
            format!(
                "<p class=\"problem\" role=\"alert\">{}</p>\n",
                escape(problem)
            )
        })
        .unwrap_or_default();
    let switch = match (create, closed) {
        (true, _) => "<p>Already have an account? Use the sign-in page of your app.</p>",
        (false, false) => "<p>No account yet? Ask your app to create one (sign up).</p>",
        (false, true) => "",
    };
    let body = format!(
        "<h1>{title}</h1>\n<p><strong>{client}</strong> asks to use your account on \
         <strong>{server}</strong>.</p>\n{problem}<form method=\"post\" action=\"/_plait/oauth/authorize\">\n\
         {hidden}<input type=\"hidden\" name=\"action\" value=\"{action}\">\n\
         <label>Username <input name=\"username\" autocomplete=\"username\" required></label>\n\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"{pw}\" required></label>\n\
         {token_field}<button type=\"submit\">{button}</button>\n</form>\n{switch}",
        client = escape(&client),
        server = escape(&server),
        pw = if create { "new-password" } else { "current-password" },
    );
    html(StatusCode::OK, title, &body)
}
