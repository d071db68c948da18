//! weft's PostgreSQL store: the configuration objects, the references between them, IPAM, the
//! change log and API tokens. The API is its only writer of configuration.
//!
//! ```text
//!   Txn::create/replace/delete ─► objects, refs, ip_allocations   (validated, checked)
//!          │ commit(): nextval('revisions') ─► changes (one revision per transaction)
//!          ▼
//!   Store::safe_horizon() ─► H: every revision <= H is committed and visible, or never will be
//!          │
//!   Store::changes_since(r) reads (r, H] ─► followers (the watch endpoint, the controller)
//! ```
//!
//! # How followers never skip a revision
//!
//! A follower that has read up to revision r must never later see a change with a revision
//! <= r. Revisions come from a sequence, taken as the last statement of each write transaction,
//! so transactions can commit out of revision order: 7 can still be in flight when 8 is
//! visible. The two ways out are writers that commit in revision order (a lock held from taking
//! the revision to the end of COMMIT) or followers that read only below the oldest in-flight
//! transaction. The lock serialises every commit's WAL flush: measured here it capped creates
//! at about 1,200 per second where PostgreSQL itself commits 7,400 of the same shape, because
//! concurrent commits can no longer share a flush. So weft takes the second way, and writers
//! never wait for each other:
//!
//! 1. read the sequence's last value S;
//! 2. then list the sessions of this database that hold a transaction id (`pg_stat_activity`);
//! 3. wait until each of those transactions has ended.
//!
//! Any transaction that took a revision <= S had a transaction id before step 1 (it wrote its
//! objects first), so at step 2 it had either ended or is in the list, and after step 3 it is
//! committed (and visible) or rolled back. S is then the safe horizon H. The cost moves to the
//! followers: they trail the slowest in-flight write by its remaining time, typically well
//! under a millisecond, and any long transaction in weft's database holds them back — weft's
//! database is weft's alone.
//!
//! Writers do not NOTIFY inside their transaction either: PostgreSQL serialises the commits of
//! notifying transactions on one lock. A commit wakes followers in its own process directly, and
//! other processes through one coalesced NOTIFY sent after the commit (and polling, should a
//! notification be lost).

pub mod admin;
mod changes;
pub mod embedded;
mod error;
pub mod flows;
pub mod follow;
mod ipam;
pub mod nodes;
mod objects;
pub mod tokens;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;
use weft_model::Kind;

pub use changes::{Change, ChangeOp, ChangePage};

/// How long startup and background work wait out a database that is busy or away before they
/// give up on it (see [`patiently`]).
pub const DATABASE_PATIENCE: Duration = Duration::from_secs(10);

/// Runs a database operation again and again while the database is busy or away
/// ([`StoreError::is_unavailable`]), for up to [`DATABASE_PATIENCE`]. The server's pool gives up
/// waiting for a connection after a moment so that a REST request answers 503 at once; what
/// must not fail for a moment's congestion (startup, an agent caught in a connect storm of a
/// thousand others) queues here instead: 610 of 1,000 agents were turned away in `weft bench
/// fanout` without it, and a server could fail to start after a bulk load.
pub async fn patiently<T, Fut>(mut op: impl FnMut() -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + DATABASE_PATIENCE;
    loop {
        match op().await {
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => return outcome,
        }
    }
}
pub use error::{ConflictKind, Result, StoreError};
pub use objects::{CreateFailed, ListPage, ListQuery, MAX_PAGE, PolicyPlace, Snapshot, Txn};

/// The migrations in the workspace's `migrations/` folder, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The PostgreSQL channel on which every commit announces its revision.
pub const CHANGES_CHANNEL: &str = "weft_changes";

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// The revision of the last commit made through this handle (or its clones): wakes this
    /// process's followers without a round trip to the database.
    committed: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
    /// How long an address released stays out of IPAM's hands.
    address_reuse_grace: Duration,
}

/// How long a released address is not handed out again unless a store says otherwise: longer
/// than a closed TCP connection's conntrack entry lingers (TIME_WAIT, 120 s) and than a
/// neighbour entry stays reachable.
pub const ADDRESS_REUSE_GRACE: Duration = Duration::from_secs(300);

/// How an object is named in a request: by id, or by project and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKey {
    Id(Uuid),
    /// `project` is `None` for projects.
    Name {
        project: Option<String>,
        name: String,
    },
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectKey::Id(id) => write!(f, "{id}"),
            ObjectKey::Name { project: Some(p), name } => write!(f, "{p}/{name}"),
            ObjectKey::Name { project: None, name } => f.write_str(name),
        }
    }
}

/// An object as stored: the body JSON as written plus the server-assigned fields.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub id: Uuid,
    pub kind: Kind,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The body without id, revision and timestamps: a JSON object's text.
    pub body: String,
}

/// An object as served ([`StoredObject::to_json`]) from its parts: the server-assigned fields
/// (id, revision, created and updated) first, then the stored body.
pub fn served_json(
    id: Uuid,
    revision: i64,
    (created_at, updated_at): (DateTime<Utc>, DateTime<Utc>),
    body: &str,
) -> String {
    let rest = body.trim_start().strip_prefix('{').unwrap_or("}").trim_start();
    let sep = if rest.starts_with('}') { "" } else { "," };
    format!(
        "{{\"id\":\"{}\",\"revision\":{},\"created_at\":\"{}\",\"updated_at\":\"{}\"{sep}{rest}",
        id,
        revision,
        created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        updated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

impl StoredObject {
    /// The object as served: the server-assigned fields first, then the body, without
    /// decoding and re-encoding the body.
    pub fn to_json(&self) -> String {
        served_json(self.id, self.revision, (self.created_at, self.updated_at), &self.body)
    }

    /// Decodes the object into its model type with the server-assigned fields filled in.
    pub fn decode(&self) -> Result<weft_model::Resource> {
        let value: serde_json::Value =
            serde_json::from_str(&self.to_json()).map_err(|source| StoreError::Corrupt { id: self.id, source })?;
        weft_model::Resource::from_json(self.kind, value).map_err(|source| StoreError::Corrupt { id: self.id, source })
    }
}

impl Store {
    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Store::connect_waiting(url, max_connections, Duration::from_secs(10)).await
    }

    /// [`Store::connect`], waiting at most `acquire_timeout` for a connection: past it an
    /// operation fails as unavailable ([`StoreError::is_unavailable`]) instead of waiting on.
    pub async fn connect_waiting(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Store> {
        let options: PgConnectOptions = url.parse()?;
        // Statements are not logged: they are many, and a token digest is a bound value.
        // JIT off: weft's statements are small and run often, and JIT compiles any whose
        // estimated cost is high (the change-log read after a bulk load, before statistics
        // catch up) for tens of milliseconds each time — measured: 35 ms for a 0.1 ms read.
        let options = options.disable_statement_logging().options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Store::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store {
            pool,
            committed: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            address_reuse_grace: ADDRESS_REUSE_GRACE,
        }
    }

    /// The same store, keeping released addresses out of IPAM's hands for `grace`.
    pub fn with_address_reuse_grace(mut self, grace: Duration) -> Store {
        self.address_reuse_grace = grace;
        self
    }

    /// Follows the revisions committed through this process.
    pub fn local_commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.committed.subscribe()
    }

    pub(crate) fn committed(&self, revision: i64) {
        self.committed.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<()> {
        // Startup waits out a busy or restarting database (a connection, then the migrations on
        // it) rather than failing because the pool gave up waiting after a moment.
        let mut connection = patiently(|| async { Ok(self.pool.acquire().await?) }).await?;
        MIGRATOR.run(&mut *connection).await?;
        drop(connection);
        for (port, interface) in patiently(|| self.claim_interfaces()).await? {
            tracing::warn!(port = %port, interface = %interface, "a port written before interfaces were unique shares its interface with another port: its agent refuses the interface until one of them changes");
        }
        Ok(())
    }

    /// The safe horizon now: every revision up to it is committed and visible, or rolled back.
    pub async fn current_revision(&self) -> Result<i64> {
        self.safe_horizon().await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
