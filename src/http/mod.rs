//! The HTTP edge: the route table, body limits, access-token authentication, CORS, the
//! per-request span, and error responses. Knows nothing about rooms.
//!
//! Routing (axum on hyper), body limits (`max_request_bytes` → `413 M_TOO_LARGE`), JSON parsing (`M_NOT_JSON`, `M_BAD_JSON`), access-token lookup (`M_MISSING_TOKEN`, `M_UNKNOWN_TOKEN` with `soft_logout` for expired refreshable tokens), CORS, one span per request, and `http/error.rs`, the only place that maps an `Error` to errcode and status.
//! Every authenticated request counts as the user's activity for presence (`Presence::touch`, memory only), except routes marked `without_activity` (`/sync`, which applies `set_presence` itself).
//! Unknown paths get `404 M_UNRECOGNIZED`, known paths with the wrong method `405 M_UNRECOGNIZED`.
//! Raw routes (`http::raw_route`, the content repository's table in `http/media_routes.rs`) skip the JSON body: the handler gets the unread body in `Ctx::raw_body` and the request headers, reads the body with its own limit (`max_upload_bytes`, streamed to disk), and returns a whole response (media bytes with their headers, or `multipart/mixed` for federation).

pub mod ctx;
pub mod error;
pub mod listener;
pub mod metrics;
mod routes;
pub mod tls;
pub mod trim;
mod x_matrix;

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use axum::{
    extract::{MatchedPath, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter, MethodRouter},
    Router,
};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use ruma::api::{IncomingRequest, OutgoingResponse};
use serde_json::{json, Value};
use tracing::Instrument;

pub use crate::api::ctx::{Auth, Ctx, HandlerResult, RawResult};
use crate::{error::Error, service::Services};

/// The boxed future a handler returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An async handler function: it gets the services and the request and answers with `T`.
pub trait HandlerFn<T>: Send + Sync + 'static {
    fn call(&self, services: Arc<Services>, ctx: Ctx) -> BoxFuture<T>;
}

impl<T, F, Fut> HandlerFn<T> for F
where
    F: Fn(Arc<Services>, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    fn call(&self, services: Arc<Services>, ctx: Ctx) -> BoxFuture<T> {
        Box::pin(self(services, ctx))
    }
}

/// A JSON handler (the body is parsed for it), a typed one (the body is read for it and parsed
/// into the endpoint's ruma request type, its ruma response serialised), or a raw one that reads
/// the body itself and builds its own response (the content repository).
#[derive(Clone)]
enum Handler {
    Json(Arc<dyn HandlerFn<HandlerResult>>),
    Typed(Arc<dyn HandlerFn<RawResult>>),
    Raw(Arc<dyn HandlerFn<RawResult>>),
}

/// One served endpoint.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub auth: Auth,
    /// Whether a request by a user counts as that user's activity for presence.
    activity: bool,
    handler: Handler,
    /// For a typed route, the method its ruma request type declares (checked by the router).
    typed_method: Option<Method>,
}

impl Route {
    fn new(method: Method, path: &'static str, auth: Auth, handler: Handler) -> Self {
        Self {
            method,
            path,
            auth,
            activity: true,
            handler,
            typed_method: None,
        }
    }

    /// Marks a route whose handler records presence activity itself (`/sync`, where
    /// `set_presence=offline` must not count).
    pub fn without_activity(mut self) -> Self {
        self.activity = false;
        self
    }
}

/// Builds a [`Route`] from an async handler function.
pub fn route(
    method: Method,
    path: &'static str,
    auth: Auth,
    handler: impl HandlerFn<HandlerResult>,
) -> Route {
    Route::new(method, path, auth, Handler::Json(Arc::new(handler)))
}

/// Builds a [`Route`] from a typed handler: it gets the request parsed into `R`, the ruma request
/// type of its endpoint ([`Ctx::parse`]), and returns `R`'s response, which is serialised as ruma
/// defines it.
pub fn typed<R, F, Fut>(method: Method, path: &'static str, auth: Auth, handler: F) -> Route
where
    R: IncomingRequest + Send + 'static,
    F: Fn(Arc<Services>, Ctx, R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::error::Result<R::OutgoingResponse>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let typed = move |services, ctx: Ctx| {
        let handler = handler.clone();
        async move {
            let request = ctx.parse::<R>()?;
            let response = handler(services, ctx, request).await?;
            let response = response
                .try_into_http_response::<Vec<u8>>()
                .map_err(|error| Error::Internal(format!("serialising a response: {error}")))?;
            Ok(response.map(axum::body::Body::from).into_response())
        }
    };
    let mut route = Route::new(method, path, auth, Handler::Typed(Arc::new(typed)));
    route.typed_method = Some(R::METHOD);
    route
}

/// Builds a [`Route`] whose handler gets the unread body in [`Ctx::raw_body`] and the request
/// headers, and answers with a whole response.
pub fn raw_route(
    method: Method,
    path: &'static str,
    auth: Auth,
    handler: impl HandlerFn<RawResult>,
) -> Route {
    Route::new(method, path, auth, Handler::Raw(Arc::new(handler)))
}

/// Every (method, path template) the router serves, for the conformance map in `spec/`.
pub fn registered_endpoints() -> Vec<(Method, String)> {
    routes::all()
        .into_iter()
        .flat_map(|route| {
            served_paths(route.path)
                .into_iter()
                .map(move |path| (route.method.clone(), path))
        })
        .collect()
}

/// The paths a route answers on: its own, and for a client-server `v3` route also the `r0`
/// prefix of the same endpoint (spec r0.6.1, which v1.1 renamed to `v3` unchanged), which older
/// clients, bridges and parts of Complement still use.
fn served_paths(path: &str) -> Vec<String> {
    let mut paths = vec![path.to_owned()];
    if let Some(rest) = path.strip_prefix("/_matrix/client/v3/") {
        paths.push(format!("/_matrix/client/r0/{rest}"));
    }
    paths
}

/// Which listener a router serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The client API in plain HTTP: no server-server routes.
    Client,
    /// The TLS federation listener: every route.
    Federation,
}

/// Server-server paths also served on the client listener: they take no `X-Matrix` signature
/// and trigger no key fetch; identity servers (`/3pid/onbind`) and integration managers
/// (`/openid/userinfo`) reach homeservers without federation, and any server they make this
/// one call goes through the outgoing address policy.
const ON_BOTH_LISTENERS: &[&str] = &[
    "/_matrix/federation/v1/openid/userinfo",
    "/_matrix/federation/v1/3pid/onbind",
];

/// Whether a route belongs to the server-server API and is served only on the federation
/// listener (so not at all while federation is off): routes that other servers sign, and the
/// key and federation paths, which could make this server fetch keys from, or call out to,
/// servers a stranger names.
fn is_federation_only(route: &Route) -> bool {
    matches!(route.auth, Auth::Server)
        || ((route.path.starts_with("/_matrix/federation/")
            || route.path.starts_with("/_matrix/key/"))
            && !ON_BOTH_LISTENERS.contains(&route.path))
}

/// The router of `listener` with its routes, CORS, limits and error fallbacks; a path it does
/// not serve answers `404 M_UNRECOGNIZED`.
pub fn router(services: Arc<Services>, listener: Listener) -> Router {
    let mut by_path: BTreeMap<String, MethodRouter<Arc<Services>>> = BTreeMap::new();
    for route in routes::all() {
        let filter =
            MethodFilter::try_from(route.method.clone()).expect("routes use standard methods");
        if listener == Listener::Client && is_federation_only(&route) {
            // Not served here: `404 M_UNRECOGNIZED`, without reading anything of the request.
            // The path still knows its method, so another method answers `405` as on any
            // known endpoint (Complement's TestUnknownEndpoints asks this of the client port).
            add_route(
                &mut by_path,
                route.path,
                on(filter, || async { unrecognized() }),
            );
            continue;
        }
        assert!(
            route
                .typed_method
                .as_ref()
                .is_none_or(|typed| *typed == route.method),
            "route {} is registered under another method than its request type's",
            route.path
        );
        let Route {
            path,
            auth,
            activity,
            handler,
            ..
        } = route;
        let method_router = on(
            filter,
            move |State(services): State<Arc<Services>>,
                  params: RawPathParams,
                  request: Request| {
                let handler = handler.clone();
                let malformed = malformed_event_id(&params);
                let params: Vec<String> =
                    params.iter().map(|(_, value)| value.to_owned()).collect();
                let route = (auth, activity, malformed);
                async move { dispatch(services, route, handler, params, request).await }
            },
        );
        add_route(&mut by_path, path, method_router);
    }
    let mut router = Router::new();
    for (path, method_router) in by_path {
        router = router.route(&path, method_router);
    }
    router
        .fallback(|| async { unrecognized() })
        .method_not_allowed_fallback(|| async {
            error::json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"errcode": "M_UNRECOGNIZED", "error": "method not allowed"}),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&services),
            edge,
        ))
        .with_state(services)
}

/// Adds a method's handler at every path `path` is served under, next to the other methods.
fn add_route(
    by_path: &mut BTreeMap<String, MethodRouter<Arc<Services>>>,
    path: &str,
    method_router: MethodRouter<Arc<Services>>,
) {
    for path in served_paths(path) {
        let entry = match by_path.remove(&path) {
            Some(existing) => existing.merge(method_router.clone()),
            None => method_router.clone(),
        };
        by_path.insert(path, entry);
    }
}

/// `404 M_UNRECOGNIZED`: a path this listener does not serve.
fn unrecognized() -> Response {
    error::json_response(
        StatusCode::NOT_FOUND,
        &json!({"errcode": "M_UNRECOGNIZED", "error": "unrecognized request"}),
    )
}

/// The `{eventId}` of a path that is no event ID of any room version: neither `$` and 43
/// characters of (URL-safe or standard) unpadded base64 (version 3 on), nor `$localpart:server`
/// (versions 1 and 2). Such a path is `M_INVALID_PARAM` once the request is authenticated.
fn malformed_event_id(params: &RawPathParams) -> Option<String> {
    // axum has already percent-decoded the value (a `+` of standard base64 stays a `+`).
    let (_, id) = params.iter().find(|(name, _)| *name == "eventId")?;
    let well_formed = match id.strip_prefix('$') {
        Some(hash) if !hash.contains(':') => {
            hash.len() == 43
                && hash
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"+/-_".contains(&byte))
        }
        Some(local) => !local.starts_with(':') && <&ruma::EventId>::try_from(id).is_ok(),
        None => false,
    };
    (!well_formed).then(|| id.to_owned())
}

/// Who made a request, as `dispatch` found it: put in the response's extensions for the request
/// log line.
#[derive(Clone)]
struct Caller {
    user: Option<String>,
    origin: Option<String>,
}

/// CORS for browser clients, one span per request with a request ID, and per request one
/// metrics sample and one log line at info on target `plait::requests` (method, route template,
/// status, latency, user or origin server; never the raw path or query, which may carry an
/// access token).
async fn edge(
    State(services): State<Arc<Services>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let in_flight = services.metrics.request_started(&route);
    let mut response = if method == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        let span = tracing::info_span!(
            "request",
            %method,
            route = %route,
            request_id = %crate::util::random_string(8),
            user = tracing::field::Empty,
            origin = tracing::field::Empty,
        );
        next.run(request).instrument(span).await
    };
    drop(in_flight);
    let latency = started.elapsed();
    let status = response.status().as_u16();
    let method = crate::service::metrics::method_label(&method);
    services
        .metrics
        .request_finished(method, &route, status, latency);
    let caller = response.extensions_mut().remove::<Caller>();
    tracing::info!(
        target: "plait::requests",
        method = %method,
        route = %route,
        status,
        latency_ms = latency.as_micros() as f64 / 1000.0,
        user = caller
            .as_ref()
            .and_then(|caller| caller.user.as_deref())
            .map(tracing::field::display),
        origin = caller
            .as_ref()
            .and_then(|caller| caller.origin.as_deref())
            .map(tracing::field::display),
        "request"
    );
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

/// Authenticates and parses a request, records the user's activity (in memory) unless the
/// route opts out, and runs the handler.
async fn dispatch(
    services: Arc<Services>,
    (auth, activity, malformed): (Auth, bool, Option<String>),
    handler: Handler,
    params: Vec<String>,
    request: Request,
) -> Response {
    let raw = matches!(handler, Handler::Raw(_));
    match prepare(&services, (auth, malformed), params, request, raw).await {
        Ok(ctx) => {
            let caller = Caller {
                user: ctx.user.as_ref().map(ToString::to_string),
                origin: ctx.origin.as_ref().map(ToString::to_string),
            };
            if let Some(user) = &ctx.user {
                tracing::Span::current().record("user", tracing::field::display(user));
                if activity {
                    if let Err(error) = services.presence.touch(user) {
                        tracing::error!(%error, "recording presence activity failed");
                    }
                }
            }
            let result = match handler {
                Handler::Json(handler) => handler
                    .call(Arc::clone(&services), ctx)
                    .await
                    .map(|body| error::json_response(StatusCode::OK, &body)),
                Handler::Typed(handler) | Handler::Raw(handler) => {
                    handler.call(Arc::clone(&services), ctx).await
                }
            };
            // Group commit: nothing is answered (success or not) before what it wrote, and
            // anything it read that others wrote, is on disk.
            let mut response = match services.globals.durable().await {
                Ok(()) => result.unwrap_or_else(IntoResponse::into_response),
                Err(error) => error.into_response(),
            };
            response.extensions_mut().insert(caller);
            response
        }
        Err(error) => error.into_response(),
    }
}

/// Authenticates a request from its headers, then reads and parses its body: a request without
/// valid credentials, with a malformed `{eventId}`, or declaring a body over the limit, is refused
/// before any of its body is read; a body must arrive within `http_body_timeout_ms`. Federation requests have their
/// `X-Matrix` header checked first and its signature, which covers the body, after; then their
/// origin's `rate_limits.federation` bucket (after the signature, so that nobody can spend
/// another server's tokens).
async fn prepare(
    services: &Services,
    (auth, malformed): (Auth, Option<String>),
    params: Vec<String>,
    request: Request,
    raw: bool,
) -> Result<Ctx, Error> {
    let (parts, body) = request.into_parts();
    let session = ctx::authenticate(services, auth, &parts)?;
    let x_matrix = match auth {
        Auth::Server => Some(x_matrix::parse(services, &parts)?),
        _ => None,
    };
    if let Some(id) = malformed {
        return Err(Error::invalid_param(format!("malformed event ID {id}")));
    }
    if raw {
        // The handler reads the body with its own limit (uploads are larger than JSON bodies).
        let origin = match x_matrix {
            Some(x_matrix) => {
                let origin = x_matrix::verify(services, &parts, x_matrix, None).await?;
                services.rate_limits.take_origin(&origin)?;
                Some(origin)
            }
            None => None,
        };
        let mut ctx = ctx::build(session, params, &parts, (Value::Null, Default::default()));
        ctx.origin = origin;
        ctx.raw_body = parking_lot::Mutex::new(Some(body));
        return Ok(ctx);
    }
    let bytes = read_body(&services.config, &parts, body).await?;
    let empty = bytes.iter().all(u8::is_ascii_whitespace);
    let body = if empty {
        Value::Object(Default::default())
    } else {
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Error::matrix(
                ruma::api::error::ErrorKind::NotJson,
                "request body is not valid JSON",
            )
        })?;
        if !value.is_object() {
            return Err(Error::bad_json("request body must be a JSON object"));
        }
        value
    };
    let origin = match x_matrix {
        Some(x_matrix) => {
            let signed_body = (!empty).then_some(&body);
            let origin = x_matrix::verify(services, &parts, x_matrix, signed_body).await?;
            tracing::Span::current().record("origin", tracing::field::display(&origin));
            services.rate_limits.take_origin(&origin)?;
            Some(origin)
        }
        None => None,
    };
    let mut ctx = ctx::build(session, params, &parts, (body, bytes));
    ctx.origin = origin;
    Ok(ctx)
}

/// Reads a JSON request body: refused up front when its declared `Content-Length` is over
/// `max_request_bytes`, cut off when it grows past it, and `408` when it does not arrive whole
/// within `http_body_timeout_ms`.
async fn read_body(
    config: &crate::config::Config,
    parts: &http::request::Parts,
    body: axum::body::Body,
) -> Result<bytes::Bytes, Error> {
    let limit = config.max_request_bytes;
    let too_large = || {
        Error::matrix(
            ruma::api::error::ErrorKind::TooLarge,
            "request body too large",
        )
    };
    let declared = crate::api::ctx::declared_length(&parts.headers);
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let deadline = std::time::Duration::from_millis(config.http_body_timeout_ms);
    let collected = tokio::time::timeout(
        deadline,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| Error::RequestTimeout("the request body did not arrive in time".to_owned()))?;
    Ok(collected.map_err(|_| too_large())?.to_bytes())
}

#[cfg(test)]
mod tests {
    /// A typed route is registered under the method its ruma request type declares.
    #[test]
    fn typed_routes_use_the_method_of_their_request_type() {
        let mut typed = 0;
        for route in super::routes::all() {
            if let Some(method) = &route.typed_method {
                assert_eq!(method, &route.method, "{}", route.path);
                typed += 1;
            }
        }
        assert!(typed > 0, "no typed route is registered");
    }
}
