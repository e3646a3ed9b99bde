//! Plait, a Matrix homeserver.
//!
//! Layers, from the edge inward (see `docs/ARCHITECTURE.md`): `http` (routing, auth, errors),
//! `api` (one handler per endpoint), `service` (domain logic; `service::rooms::timeline::commit`
//! is the one path that writes events), `crypto` (pure functions), `store` (RocksDB).

pub mod api;
pub mod config;
pub mod crypto;
pub mod error;
pub mod http;
pub mod service;
pub mod store;
pub mod util;

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

pub use crate::{config::Config, error::Error, service::Services};

/// Serves the client API on an already bound listener until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let services = Services::build(Arc::new(config))?;
    serve(listener, services, shutdown).await
}

/// Serves with already built services (tests that inspect services use this).
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let router = http::router(services);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|error| Error::Internal(format!("server failed: {error}")))
}
