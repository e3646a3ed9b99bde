//! The metrics listener (`metrics_address`): `GET /metrics` in the Prometheus text format and
//! nothing else, in plain HTTP, apart from the client and federation routers so that it can stay
//! on a private address.

use std::{future::Future, sync::Arc};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header::CONTENT_TYPE, StatusCode};
use tokio::net::TcpListener;

use crate::service::Services;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(services);
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "the metrics listener failed");
    }
}

/// `GET /metrics`: every metric, with the database sizes and the federation queue read now.
async fn scrape(State(services): State<Arc<Services>>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let depths = services.sending.queue_depths()?;
        services.metrics.render(&depths)
    })
    .await;
    match rendered {
        Ok(Ok(text)) => ([(CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Ok(Err(error)) => {
            tracing::error!(%error, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(error) => {
            tracing::error!(%error, "the metrics task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
