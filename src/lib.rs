//! Plait, a Matrix homeserver.
//!
//! Layers, from the edge inward (see `docs/ARCHITECTURE.md`): `http` (routing, auth, errors),
//! `api` (one handler per endpoint), `service` (domain logic; `service::rooms::timeline::commit`
//! is the one path that writes events), `federation` (the outgoing server-server client),
//! `crypto` (pure functions), `store` (RocksDB).

pub mod api;
pub mod config;
pub mod crypto;
pub mod error;
pub mod federation;
pub mod http;
pub mod service;
pub mod store;
pub mod util;

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

pub use crate::{config::Config, error::Error, service::Services};

/// The already bound listeners: the client API (plain HTTP, no server-server routes) and, when
/// federation is on, the TLS listener that serves federation and the client API.
pub struct Listeners {
    pub client: TcpListener,
    pub federation: Option<TcpListener>,
}

/// Serves on already bound listeners until `shutdown` completes.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let services = Services::build(Arc::new(config))?;
    serve(listeners, services, shutdown).await
}

/// Serves with already built services (tests that inspect services use this), then waits for the
/// background workers to stop.
pub async fn serve(
    listeners: Listeners,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let stopped = stop_signal(&services, shutdown);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let tls = match (
        &listeners.federation,
        &services.config.tls_cert,
        &services.config.tls_key,
    ) {
        (None, _, _) => None,
        (Some(_), Some(cert), Some(key)) => Some(http::tls::load_config(cert, key)?),
        (Some(_), _, _) => {
            return Err(Error::Config(
                "invalid configuration key `federation_listen`: needs `tls_cert` and `tls_key`"
                    .to_owned(),
            ))
        }
    };
    let open_files = http::listener::raise_open_file_limit();
    let connections = http::listener::Connections::new(&services.config, open_files);
    tracing::info!(
        open_files,
        max_connections = connections.max_total(),
        "connection limits"
    );
    service::admin::start(&services).await?;
    let metrics = match services.config.metrics_address {
        Some(address) => {
            let listener = TcpListener::bind(address).await.map_err(|error| {
                Error::Config(format!(
                    "cannot listen on {address} (metrics_address): {error}"
                ))
            })?;
            Some(tokio::spawn(http::metrics::serve(
                listener,
                Arc::clone(&services),
                wait(stopped.clone()),
            )))
        }
        None => None,
    };
    let mut workers = service::start_workers(&services, wait(stopped.clone()));
    workers.push(tokio::spawn(http::trim::run(
        Arc::clone(&connections),
        std::time::Duration::from_millis(services.config.memory_trim_quiet_ms),
        wait(stopped.clone()),
    )));
    let router = http::router(Arc::clone(&services), http::Listener::Client);
    let federation = match (listeners.federation, tls) {
        (Some(listener), Some(tls)) => Some(tokio::spawn(http::listener::serve(
            listener,
            http::router(Arc::clone(&services), http::Listener::Federation),
            Some(tls),
            Arc::clone(&connections),
            wait(stopped.clone()),
        ))),
        _ => None,
    };
    http::listener::serve(listeners.client, router, None, connections, wait(stopped)).await;
    for listener in [federation, metrics].into_iter().flatten() {
        let _ = listener.await;
    }
    for worker in workers {
        let _ = worker.await;
    }
    // Everything the workers wrote is on disk before the process exits.
    services.globals.durable().await
}

/// Turns true on the caller's `shutdown` or on an admin's `server shutdown`.
fn stop_signal(
    services: &Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut requested = services.admin.watch_shutdown();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = requested.wait_for(|stop| *stop) => {}
        }
        let _ = stop.send(true);
    });
    stopped
}
