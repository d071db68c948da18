//! Prometheus metrics of the server: requests by method, route and status, and their
//! latency; how far the controller and each agent are behind the configuration (read when
//! scraped); how long the compiler takes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/v1/ports/{key}`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Debug)]
pub struct Metrics {
    /// The configuration's revision (the change log's safe horizon).
    config_revision: Gauge,
    /// The revision this process's compiler is at, and how far behind the configuration.
    controller_revision: Gauge,
    controller_lag: Gauge,
    /// Since the first revision the compiler has not reached was committed: what agents wait,
    /// whatever holds the compiler back (its own work, or a long transaction that keeps every
    /// follower of the change log below it).
    controller_delay: Gauge<f64, std::sync::atomic::AtomicU64>,
    agents_connected: Gauge,
    agent_connected: Family<NodeLabels, Gauge>,
    /// Revisions between the configuration and what the node has realized.
    agent_lag: Family<NodeLabels, Gauge>,
    /// The bytes the process holds, and the bytes of memory its allocator keeps for them
    /// (jemalloc's `stats.allocated` and `stats.resident`: the `weft` binary's allocator).
    heap_allocated: Gauge,
    heap_resident: Gauge,
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    /// GETs answered from the object cache, and those that had to ask PostgreSQL.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
}

impl Metrics {
    /// `compile_seconds`: the compiler's own histogram, where this process holds one that
    /// keeps it.
    pub fn new(compile_seconds: Option<Histogram>) -> Self {
        let mut registry = Registry::with_prefix("weft_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request", latency.clone());
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        registry.register("object_cache_hits", "GETs answered from the object cache", cache_hits.clone());
        registry.register("object_cache_misses", "GETs answered by PostgreSQL", cache_misses.clone());
        let server = registry.sub_registry_with_prefix("server");
        let config_revision = Gauge::default();
        let controller_revision = Gauge::default();
        let controller_lag = Gauge::default();
        let controller_delay = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let agents_connected = Gauge::default();
        let agent_connected = Family::<NodeLabels, Gauge>::default();
        let agent_lag = Family::<NodeLabels, Gauge>::default();
        server.register("config_revision", "The configuration's revision", config_revision.clone());
        server.register(
            "controller_revision",
            "The revision this process's compiler is at",
            controller_revision.clone(),
        );
        server.register(
            "controller_lag_revisions",
            "Revisions committed that the compiler has not reached (change-log lag, whatever holds it back)",
            controller_lag.clone(),
        );
        server.register(
            "controller_lag_seconds",
            "Seconds since the first revision the compiler has not reached was committed (0: caught up)",
            controller_delay.clone(),
        );
        if let Some(compile_seconds) = compile_seconds {
            server.register("compile_seconds", "Time the compiler takes over one revision's changes", compile_seconds);
        }
        server.register("agents_connected", "Nodes with an agent connected to a controller", agents_connected.clone());
        let (heap_allocated, heap_resident) = (Gauge::default(), Gauge::default());
        server.register(
            "heap_allocated_bytes",
            "Bytes the process holds (jemalloc stats.allocated)",
            heap_allocated.clone(),
        );
        server.register(
            "heap_resident_bytes",
            "Bytes of memory the allocator keeps, held or not yet returned (jemalloc stats.resident)",
            heap_resident.clone(),
        );
        server.register(
            "agent_connected",
            "Whether the node's agent is connected (1) or not (0)",
            agent_connected.clone(),
        );
        server.register(
            "agent_lag_revisions",
            "Revisions between the configuration and what the node has realized",
            agent_lag.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            cache_hits,
            cache_misses,
            config_revision,
            controller_revision,
            controller_lag,
            controller_delay,
            agents_connected,
            agent_connected,
            agent_lag,
            heap_allocated,
            heap_resident,
        }
    }

    /// Reads what is only known by asking: revisions and the nodes' status.
    async fn refresh(&self, state: &AppState) {
        let compiled = state.policy.revision().unwrap_or(0);
        // What is committed, not only what followers can read yet: a long transaction that
        // holds the change log back shows as lag here (issue 17: it read 0 while agents got
        // nothing for 19 s).
        let (config, delay) = match crate::health::behind(state).await {
            Ok(Some((last, since))) => (last, (chrono::Utc::now() - since).num_milliseconds().max(0) as f64 / 1e3),
            _ => ((*state.revisions.borrow()).max(compiled), 0.0),
        };
        self.config_revision.set(config);
        self.controller_revision.set(compiled);
        self.controller_lag.set((config - compiled).max(0));
        self.controller_delay.set(delay);
        let _ = tikv_jemalloc_ctl::epoch::advance();
        let as_gauge = |bytes: Result<usize, _>| bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        self.heap_allocated.set(as_gauge(tikv_jemalloc_ctl::stats::allocated::read()));
        self.heap_resident.set(as_gauge(tikv_jemalloc_ctl::stats::resident::read()));
        match state.store.list_nodes().await {
            Ok(nodes) => {
                self.agent_connected.clear();
                self.agent_lag.clear();
                self.agents_connected.set(nodes.iter().filter(|n| n.connected).count() as i64);
                for n in nodes {
                    let labels = NodeLabels { node: n.name };
                    self.agent_connected.get_or_create(&labels).set(i64::from(n.connected));
                    self.agent_lag.get_or_create(&labels).set((config - n.realized_revision).max(0));
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the nodes"),
        }
    }
}

pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    state.metrics.requests.get_or_create(&labels).inc();
    state.metrics.latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    response
}

pub async fn render(State(state): State<AppState>) -> Response {
    state.metrics.refresh(&state).await;
    render_registry(&state.metrics)
}

fn render_registry(metrics: &Arc<Metrics>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
