//! Prometheus metrics (the `prometheus` crate, without its protobuf feature): what the HTTP edge,
//! the timeline and the federation sender count as they go, and the database's sizes read when
//! scraped. `http/metrics.rs` serves [`Metrics::render`] on `metrics_address`.
//!
//! Labels are bounded: a route is its template (`/_matrix/client/v3/rooms/{roomId}/send/…`),
//! never the raw path, and a method the router does not know is `other`; destinations are the
//! servers this one federates with.

use std::{sync::Arc, time::Duration};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use ruma::ServerName;

use crate::{
    error::{Error, Result},
    store::Db,
};

/// Upper bounds of the request latency buckets, in seconds: 1 ms to 30 s (a `/sync` long-poll
/// lands in the last ones).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    db: Arc<Db>,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGaugeVec,
    events_committed: IntCounter,
    transactions: IntCounterVec,
    tree_bytes: IntGaugeVec,
}

/// A request in flight; dropping it takes it off `plait_http_requests_in_flight`.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Registers a metric and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric names and labels are valid constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    /// Builds the registry.
    pub fn new(db: &Arc<Db>) -> Self {
        let registry = Registry::new();
        let requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "plait_http_requests_total",
                    "HTTP requests answered, by method, route template and status",
                ),
                &["method", "route", "status"],
            ),
        );
        let latency = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "plait_http_request_duration_seconds",
                    "Time from a request's head to its response, by method and route template",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            ),
        );
        let in_flight = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "plait_http_requests_in_flight",
                    "Requests being answered, by route template (for /sync: open long-polls)",
                ),
                &["route"],
            ),
        );
        let events_committed = register(
            &registry,
            IntCounter::new(
                "plait_events_committed_total",
                "Room events written to the timeline (local, received and backfilled)",
            ),
        );
        let transactions = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "plait_federation_transactions_total",
                    "Federation transactions sent, by destination and result (sent or failed)",
                ),
                &["destination", "result"],
            ),
        );
        let tree_bytes = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "plait_database_tree_bytes",
                    "Bytes of each tree's table files (RocksDB column family SST files)",
                ),
                &["tree"],
            ),
        );
        Self {
            registry,
            db: Arc::clone(db),
            requests,
            latency,
            in_flight,
            events_committed,
            transactions,
            tree_bytes,
        }
    }

    /// Counts a request as in flight until the returned guard is dropped (when it is answered,
    /// or when its client goes away first).
    pub fn request_started(&self, route: &str) -> InFlight {
        let gauge = self.in_flight.with_label_values(&[route]);
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts an answered request with its status and latency.
    pub fn request_finished(&self, method: &str, route: &str, status: u16, latency: Duration) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[method, route])
            .observe(latency.as_secs_f64());
    }

    /// Counts one event written to a room's timeline.
    pub fn event_committed(&self) {
        self.events_committed.inc();
    }

    /// Counts one federation transaction to `destination`, sent or failed.
    pub fn transaction(&self, destination: &ServerName, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.transactions
            .with_label_values(&[destination.as_str(), result])
            .inc();
    }

    /// Every metric in the Prometheus text format, with the database sizes read now.
    pub fn render(&self, queue_depths: &[(String, u64)]) -> Result<String> {
        for (tree, bytes) in self.db.tree_sizes()? {
            self.tree_bytes
                .with_label_values(&[tree])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut families = self.registry.gather();
        // The encoder refuses a family without samples (the registry leaves those out itself).
        families.extend(
            queue_family(queue_depths)?
                .into_iter()
                .filter(|family| !family.get_metric().is_empty()),
        );
        TextEncoder::new()
            .encode_to_string(&families)
            .map_err(|error| Error::Internal(format!("encoding metrics: {error}")))
    }
}

/// The federation queue's depth per destination as a gauge family of its own, built per scrape
/// so that a destination whose queue emptied disappears.
fn queue_family(queue_depths: &[(String, u64)]) -> Result<Vec<prometheus::proto::MetricFamily>> {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "plait_federation_queue_depth",
            "Items (PDUs and EDUs) waiting to be sent, by destination",
        ),
        &["destination"],
    )
    .map_err(|error| Error::Internal(format!("queue metric: {error}")))?;
    for (destination, depth) in queue_depths {
        gauge
            .with_label_values(&[destination.as_str()])
            .set(i64::try_from(*depth).unwrap_or(i64::MAX));
    }
    Ok(prometheus::core::Collector::collect(&gauge))
}

/// A method as a label: the standard ones by name, anything else as `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_with_their_route_template_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let metrics = Metrics::new(&db);
        drop(metrics.request_started("/_matrix/client/v3/sync"));
        metrics.request_finished(
            "GET",
            "/_matrix/client/v3/sync",
            200,
            Duration::from_millis(3),
        );
        metrics.event_committed();
        let text = metrics.render(&[("remote.example".to_owned(), 4)]).unwrap();
        assert!(text.contains(
            r#"plait_http_requests_total{method="GET",route="/_matrix/client/v3/sync",status="200"} 1"#
        ));
        assert!(text.contains("plait_events_committed_total 1"));
        assert!(text.contains(r#"plait_federation_queue_depth{destination="remote.example"} 4"#));
        assert!(text.contains(r#"plait_database_tree_bytes{tree="pduid_pdu"}"#));
        let idle = metrics.render(&[]).unwrap();
        assert!(!idle.contains("plait_federation_queue_depth"), "{idle}");
        assert!(
            text.contains(r#"plait_http_requests_in_flight{route="/_matrix/client/v3/sync"} 0"#)
        );
    }
}
