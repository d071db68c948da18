//! weft's PostgreSQL store: the configuration objects, the references between them, IPAM, the
//! change log and API tokens. The API is its only writer of configuration.
//!
//! ```text
//!   Txn::create/replace/delete ─► objects, refs, ip_allocations   (validated, checked)
//!          │ commit()
//!          ▼
//!   revision_state (row lock) ─► changes (one revision per transaction) ─► NOTIFY weft_changes
//!                                     ▲
//!   Store::changes_since(r) ──────────┘  (followers: the watch endpoint, later the controller)
//! ```
//!
//! # Why a counter row orders commits
//!
//! A follower that has read up to revision r must never later see a change with a revision
//! <= r. If revisions came from a sequence, a transaction could take revision 7, stall, and
//! commit after the one holding 8 was already read. The two ways out are a follower that reads
//! only below the oldest in-flight transaction, or writers that commit in revision order.
//!
//! PostgreSQL cannot tell a follower which revision an in-flight transaction holds, so the
//! first way needs extra bookkeeping on every read (pg_locks, or a table of reservations) and
//! delays every follower by the slowest writer. weft takes the second: every write
//! transaction does its work (validation, object rows, references, IPAM) concurrently with
//! others and, as its very last step, increments the single `revision_state` row. That row
//! lock is held until COMMIT and released only after the commit is visible, so the next
//! writer's revision is assigned after the previous one is visible, and a snapshot that sees
//! revision r sees every revision below it. The cost is that the tail of each write — one
//! UPDATE, one INSERT of its change rows and the commit's WAL flush — is serialised; the
//! object writes themselves are not. `weft bench api` measures the throughput against pgbench.

mod changes;
pub mod embedded;
mod error;
mod ipam;
mod objects;
pub mod tokens;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;
use weft_model::Kind;

pub use changes::{Change, ChangeOp, ChangePage};
pub use error::{ConflictKind, Result, StoreError};
pub use objects::{ListPage, ListQuery, MAX_PAGE, Txn};

/// The migrations in the workspace's `migrations/` folder, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The PostgreSQL channel on which every commit announces its revision.
pub const CHANGES_CHANNEL: &str = "weft_changes";

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

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

impl StoredObject {
    /// The object as served: the server-assigned fields first, then the body, without
    /// decoding and re-encoding the body.
    pub fn to_json(&self) -> String {
        let rest = self.body.trim_start().strip_prefix('{').unwrap_or("}").trim_start();
        let sep = if rest.starts_with('}') { "" } else { "," };
        format!(
            "{{\"id\":\"{}\",\"revision\":{},\"created_at\":\"{}\",\"updated_at\":\"{}\"{sep}{rest}",
            self.id,
            self.revision,
            self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )
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
        let options: PgConnectOptions = url.parse()?;
        // Statements are not logged: they are many, and a token digest is a bound value.
        let options = options.disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The revision of the last committed write.
    pub async fn current_revision(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT revision FROM revision_state").fetch_one(&self.pool).await?)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
