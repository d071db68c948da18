//! The `weft server` process, wired in one place: the database (configured or private) and
//! its migrations, the compiler kept current from the change log, the controller and the REST
//! API as the role says, the first admin token, change-log compaction, and supervision: the
//! process does not outlive a critical task (the follower, the gRPC server, the compactor).
//! All of it stops on one shutdown signal.
//!
//! ```text
//!   store ──► Follower (compiler + hub) ──► Control (gRPC, agents)        --role control|all
//!                    └── PolicyView ──────► weft_api::AppState (REST)      --role api|all
//! ```
//!
//! The API reads the compiler through `weft_compiler::PolicyView`; only this crate knows
//! that the controller's hub is what implements it. An API-only process keeps a compiler
//! that encodes nothing for agents (`Encoding::None`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_api::{AppState, Config, tls};
use weft_control::supervise::Death;
use weft_control::{Encoding, Follower};
use weft_store::Store;
use weft_store::embedded::{EmbeddedError, PrivatePostgres};

/// The longest an operation waits for a database connection: a request answers 503 (with
/// Retry-After) within a second while PostgreSQL is down or restarting, instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(800);

pub use weft_api::DRAIN_TIMEOUT;

/// How often the change log's horizon is looked at when no notification arrives.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None`: start a private PostgreSQL for `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub tls: Option<tls::TlsFiles>,
    pub auth_enabled: bool,
    pub grpc_address: Option<String>,
    /// How long the change log keeps an entry.
    pub change_retention: Duration,
    /// How long the flow log keeps a flow.
    pub flow_log_retention: Duration,
    /// How long the per-minute flow rollups are kept.
    pub flow_retention: Duration,
    /// What the controller's flows in memory may take, in bytes.
    pub flow_memory: usize,
    /// How long IPAM keeps a released address out of its hands.
    pub address_reuse_grace: Duration,
    pub max_connections: u32,
    pub role: Role,
    /// Where the controller serves agents (gRPC).
    pub grpc_listen: SocketAddr,
    /// PEM certificate chain and key for the gRPC listener.
    pub grpc_tls: Option<tls::TlsFiles>,
}

/// Which parts of weft this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The REST API and the controller (the default).
    All,
    /// The REST API only.
    Api,
    /// The controller only.
    Control,
}

impl Role {
    fn api(self) -> bool {
        self != Role::Control
    }

    fn control(self) -> bool {
        self != Role::Api
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database: {0}")]
    Store(#[from] weft_store::StoreError),
    #[error("private PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("REST API: {0}")]
    Serve(#[from] weft_api::ServeError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("controller: {0}")]
    Control(#[from] weft_control::ControlError),
    /// A critical task ended: the process ends with it, so that it is restarted.
    #[error("{0}; the server stops so that it is restarted")]
    Died(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Runs until `shutdown` completes. The REST listener says where it is bound in the log
/// ("REST API listening"), also when it was told port 0.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    let private = match &config.database_url {
        Some(_) => None,
        None => Some(PrivatePostgres::start(&config.data_dir).await?),
    };
    let url = config.database_url.clone().or_else(|| private.as_ref().map(PrivatePostgres::url)).unwrap_or_default();
    let result = serve_with_database(&config, &url, shutdown).await;
    if let Some(pg) = private {
        tracing::info!("stopping the private PostgreSQL");
        if let Err(e) = pg.stop().await {
            tracing::warn!(error = %e, "could not stop the private PostgreSQL");
        }
    }
    result
}

async fn serve_with_database(
    config: &ServerConfig,
    url: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // One pool, which waits at most ACQUIRE_TIMEOUT for a connection: a request answers 503
    // within a second while the database is away, and the controller's background work retries
    // (two pools, one of them patient, cost 130 MiB at 100,000 pods in `weft bench fanout`).
    let store = Store::connect_waiting(url, config.max_connections, ACQUIRE_TIMEOUT)
        .await?
        .with_address_reuse_grace(config.address_reuse_grace);
    store.migrate().await?;
    let poll = POLL;
    // One watch of the change log's horizon for the process: the compiler's follower and the
    // API's object cache (and its watch streams) read up to it.
    let horizon = store.revision_watch(poll).await?;
    // Encoded updates are for agents: a process without a controller keeps only which nodes
    // each revision concerns, for realization.
    let encoding = if config.role.control() { Encoding::ForAgents } else { Encoding::None };
    // The API's object cache reads what the compiler's follower reads: one snapshot of the
    // database at start, not two.
    let cache = Arc::new(weft_api::cache::ObjectCache::default());
    let observer: Option<weft_control::Observer> = match config.role.api() {
        true => {
            let mut feed = cache.feed();
            Some(Box::new(move |event: &weft_store::follow::Event<'_>| feed.take(event)))
        }
        false => None,
    };
    let follower = Follower::start_with(store.clone(), horizon.clone(), weft_control::RING_UPDATES, encoding, observer);
    let control = match config.role.control() {
        true => {
            let mut settings = weft_control::Config::new(config.grpc_listen);
            settings.poll = poll;
            settings.flow_retention = config.flow_log_retention;
            settings.flow_rollup_retention = config.flow_retention;
            settings.flow_memory = config.flow_memory;
            if let Some(files) = &config.grpc_tls {
                let read = |p: &Path| std::fs::read(p).map_err(io(format!("cannot read {}", p.display())));
                settings.tls = Some((read(&files.cert)?, read(&files.key)?));
            }
            Some(weft_control::Control::serve(store.clone(), Arc::clone(&follower.hub), settings).await?)
        }
        false => None,
    };
    let grpc_address = config.grpc_address.clone().or_else(|| control.as_ref().map(|c| c.local_addr.to_string()));
    // The process does not outlive its follower or its gRPC server (weft_control::supervise).
    let deaths = (follower.death(), control.as_ref().map_or_else(Death::never, weft_control::Control::death));
    let died = async move {
        tokio::select! {
            reason = deaths.0.wait() => reason,
            reason = deaths.1.wait() => reason,
        }
    };
    if !config.role.api() {
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            reason = died => Err(ServerError::Died(reason)),
        };
        if let Some(control) = control {
            control.shutdown().await;
        }
        store.pool().close().await;
        return outcome;
    }
    let grpc_serving = control.as_ref().map(|c| Arc::clone(&c.serving));
    let api = Config {
        auth_enabled: config.auth_enabled,
        grpc_address,
        compile_seconds: Some(follower.hub.compile_seconds.clone()),
        grpc_serving,
        secure_cookies: config.tls.is_some(),
        ..Config::default()
    };
    let result =
        serve_api(config, store.clone(), (Arc::clone(&follower.hub), horizon, cache), api, shutdown, died).await;
    if let Some(control) = control {
        control.shutdown().await;
    }
    store.pool().close().await;
    result
}

/// Serves the REST API until `shutdown` completes, or until a critical task of the process
/// dies (`died`, or the compactor), which is an error naming it (open requests still get the
/// drain).
async fn serve_api(
    config: &ServerConfig,
    store: Store,
    (policy, horizon, cache): (Arc<weft_control::Hub>, watch::Receiver<i64>, Arc<weft_api::cache::ObjectCache>),
    api: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    died: impl Future<Output = String> + Send + 'static,
) -> Result<(), ServerError> {
    if config.auth_enabled {
        bootstrap_admin_token(&store, &config.data_dir).await?;
    } else {
        tracing::warn!("authentication is OFF (--insecure-no-auth): anyone who reaches the API can change everything");
    }
    let state = AppState::with_cache(store.clone(), policy, horizon, cache, api);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (compactor, compactor_death) = weft_control::supervise::spawn_critical(
        "the change-log compactor",
        {
            let stop = stop_rx.clone();
            let compacting = compact_periodically(store.clone(), config.change_retention, stop);
            async move {
                compacting.await;
                Ok(())
            }
        },
        stop_rx,
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("cannot listen on {}", config.listen)))?;
    // Why the API stops: the shutdown signal, or a critical task's death (sent here).
    let (death_tx, mut death_rx) = tokio::sync::oneshot::channel::<String>();
    let stopping = async move {
        tokio::select! {
            () = shutdown => {}
            reason = died => { let _ = death_tx.send(reason); }
            reason = compactor_death.wait() => { let _ = death_tx.send(reason); }
        }
    };
    let served = weft_api::serve(state, listener, config.tls.as_ref(), stopping).await;
    let _ = stop_tx.send(true);
    let _ = compactor.await;
    served?;
    match death_rx.try_recv() {
        Ok(reason) => Err(ServerError::Died(reason)),
        Err(_) => Ok(()),
    }
}

/// On a database without tokens, creates the admin token and writes it to
/// `<data-dir>/admin.token` (mode 0600). The token itself is never logged.
async fn bootstrap_admin_token(store: &Store, data_dir: &Path) -> Result<(), ServerError> {
    let Some(created) = weft_store::patiently(|| store.bootstrap_admin_token()).await? else { return Ok(()) };
    std::fs::create_dir_all(data_dir).map_err(io(format!("cannot create {}", data_dir.display())))?;
    let path = data_dir.join("admin.token");
    write_secret(&path, &format!("{}\n", created.secret)).map_err(io(format!("cannot write {}", path.display())))?;
    tracing::info!(path = %path.display(), "created the first admin token");
    Ok(())
}

fn write_secret(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(content.as_bytes())
}

async fn compact_periodically(store: Store, retention: Duration, mut stop: watch::Receiver<bool>) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match store.compact_older_than(retention).await {
            Ok(mark) => tracing::debug!(compacted = mark, "change log compacted"),
            Err(e) => tracing::warn!(error = %e, "change-log compaction failed"),
        }
    }
}
