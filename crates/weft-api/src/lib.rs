//! weft's REST service: the config API over the store, with bearer-token authentication,
//! problem+json errors, a streaming watch of the change log, health and Prometheus metrics.
//!
//! ```text
//!  request ─► metrics ─► /healthz /readyz /metrics (open)
//!                    └─► authenticate ─► /v1/... handlers ─► weft_store::Txn ─► PostgreSQL
//!                                             └─► /v1/changes ◄─ revision watch (LISTEN/NOTIFY)
//! ```

pub mod auth;
mod batch;
mod body;
pub mod cache;
mod changes;
mod cluster_status;
mod flows;
mod guard;
mod health;
mod metrics;
pub mod nodes;
pub mod openapi;
pub mod problem;
pub mod reach;
mod resources;
mod serve;
pub mod tls;
mod tokens;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Router, middleware};
use tokio::sync::watch;
use weft_compiler::PolicyView;
use weft_model::Kind;
use weft_store::Store;

pub use batch::{BatchRequest, Operation};
pub use problem::{ApiError, InvalidField, Problem};
pub use serve::{DRAIN_TIMEOUT, ServeError, serve};

/// How the API process is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// `false` only with `--insecure-no-auth`.
    pub auth_enabled: bool,
    /// The gRPC address agents should use, as `/v1/info` reports it.
    pub grpc_address: Option<String>,
    /// The histogram of the compiler's time per revision, registered with the API's
    /// metrics when this process keeps one.
    pub compile_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Whether this process's gRPC service for agents is serving, when it runs one.
    pub grpc_serving: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// How long the compiler may be behind a committed revision before `/readyz` fails.
    pub stuck_after: Duration,
    /// The page's session cookie is Secure (the API is served over TLS).
    pub secure_cookies: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auth_enabled: true,
            grpc_address: None,
            compile_seconds: None,
            grpc_serving: None,
            stuck_after: health::STUCK_AFTER,
            secure_cookies: false,
        }
    }
}

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub auth_enabled: bool,
    pub tokens: Arc<auth::TokenCache>,
    pub metrics: Arc<metrics::Metrics>,
    /// The change log's safe horizon (every revision up to it is visible), kept current by
    /// this process's commits, LISTEN/NOTIFY and polling.
    pub revisions: watch::Receiver<i64>,
    /// Every object, for GETs without a database round trip.
    pub cache: Arc<cache::ObjectCache>,
    pub grpc_address: Option<String>,
    /// The compiler kept current from the change log (explain, reach, realization), as
    /// the process's wiring gives it.
    pub policy: Arc<dyn PolicyView>,
    /// Whether this process's gRPC service for agents is serving, when it runs one.
    pub grpc_serving: Option<Arc<std::sync::atomic::AtomicBool>>,
    pub stuck_after: Duration,
    pub secure_cookies: bool,
    /// Who is computing a reach matrix: one per token, a few on the server.
    pub reach_limits: Arc<reach::ReachLimits>,
    /// Set when the server begins to shut down: long-lived responses (watch streams) end, so
    /// that draining the open requests finishes.
    stopping: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// `revisions` is the process's one [`Store::revision_watch`], shared with its compiler's
    /// follower.
    pub fn new(store: Store, policy: Arc<dyn PolicyView>, revisions: watch::Receiver<i64>, config: Config) -> AppState {
        let cache = Arc::new(cache::ObjectCache::default());
        cache.spawn_follower(store.clone(), revisions.clone());
        AppState::with_cache(store, policy, revisions, cache, config)
    }

    /// [`AppState::new`] with an object cache that something else keeps current: the
    /// server's compiler follower feeds it ([`cache::ObjectCache::feed`]), so that the
    /// configuration is read from the database once.
    pub fn with_cache(
        store: Store,
        policy: Arc<dyn PolicyView>,
        revisions: watch::Receiver<i64>,
        cache: Arc<cache::ObjectCache>,
        config: Config,
    ) -> AppState {
        let metrics = Arc::new(metrics::Metrics::new(config.compile_seconds));
        AppState {
            policy,
            stopping: Arc::new(watch::channel(false).0),
            cache,
            store,
            auth_enabled: config.auth_enabled,
            tokens: Arc::default(),
            metrics,
            revisions,
            grpc_address: config.grpc_address,
            grpc_serving: config.grpc_serving,
            stuck_after: config.stuck_after,
            secure_cookies: config.secure_cookies,
            reach_limits: Arc::default(),
        }
    }
}

impl AppState {
    /// Ends the watch streams; the server stops accepting and drains the rest.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Completes once shutdown has begun.
    pub async fn stopped(&self) {
        let _ = self.stopping.subscribe().wait_for(|s| *s).await;
    }
}

/// The whole REST service.
pub fn router(state: AppState) -> Router {
    let mut v1 = Router::new()
        .route("/v1/batch", post(batch::batch))
        .route("/v1/changes", get(changes::changes))
        .route("/v1/info", get(info))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/nodes", post(nodes::create).get(nodes::list))
        .route("/v1/nodes/{name}", delete(nodes::delete))
        .route("/v1/nodes/{name}/blocks", put(nodes::assign_blocks))
        .route("/v1/join-tokens", post(nodes::create_join_token).get(nodes::list_join_tokens))
        .route("/v1/join-tokens/{id}", delete(nodes::revoke_join_token))
        .route("/v1/realization", get(nodes::realization))
        .route("/v1/explain", post(reach::explain))
        .route("/v1/flows", get(flows::flows))
        .route("/v1/flows/graph", get(flows::flow_graph))
        .route("/v1/reach", get(reach::reach))
        .route("/v1/security-groups/{key}/status", get(nodes::group_status))
        .route("/v1/security-groups/{project}/{name}/status", get(nodes::group_status_by_name))
        .route("/v1/security-groups/{project}/{name}/hits", get(flows::group_hits));
    for kind in Kind::ALL {
        v1 = v1.merge(resources::routes(kind));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::root))
        .route("/ui/sign-in", get(ui::sign_in_page).post(ui::sign_in))
        .route("/ui/sign-out", axum::routing::post(ui::sign_out))
        .route("/ui/traffic-groups", get(ui::traffic_groups))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/info and api/openapi.yaml") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn(guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// Without TCP_NODELAY the tail of a response can wait for the client's delayed ACK (~40 ms).
pub(crate) fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Info {
    pub version: String,
    /// The last revision every reader can see (the change log's safe horizon).
    pub revision: i64,
    /// Change-log entries up to this revision are compacted away.
    pub compacted: i64,
    /// Where agents connect (gRPC), when this server runs the controller.
    pub grpc_address: Option<String>,
}

async fn info(State(state): State<AppState>) -> Result<axum::Json<Info>, ApiError> {
    Ok(axum::Json(Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: state.store.safe_horizon().await?,
        compacted: state.store.compacted_revision().await?,
        grpc_address: state.grpc_address.clone(),
    }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let problems = health::problems(&state).await;
    if problems.is_empty() {
        return "ready\n".into_response();
    }
    let detail = problems.join("; ");
    tracing::warn!("not ready: {detail}");
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail);
    for problem in problems {
        e = e.with_error(problem);
    }
    e.into_response()
}
