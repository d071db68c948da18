//! What can go wrong in the store, in terms the API maps to HTTP statuses one to one.

use weft_model::{Kind, ValidationErrors};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a write conflicts with what is stored; each becomes a stable problem `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// Another object of the kind already has the name in that scope.
    Duplicate,
    /// Other objects still reference the one being deleted.
    InUse,
    /// A project or network still has children and `cascade` was not asked for.
    HasChildren,
    /// An address asked for is already held by another port.
    AddressInUse,
    /// A port's interface on its node is already another port's.
    InterfaceInUse,
    /// A network's subnets have no free address left.
    AddressesExhausted,
    /// A block assigned to a node overlaps another node's block, or one of the node's own
    /// that still holds addresses.
    BlockInUse,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Duplicate => "duplicate",
            ConflictKind::InUse => "in-use",
            ConflictKind::HasChildren => "has-children",
            ConflictKind::AddressInUse => "address-in-use",
            ConflictKind::InterfaceInUse => "interface-in-use",
            ConflictKind::AddressesExhausted => "addresses-exhausted",
            ConflictKind::BlockInUse => "block-in-use",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object fails validation, or names something that does not exist.
    #[error("invalid object: {0}")]
    Invalid(ValidationErrors),
    #[error("{kind} {key} not found")]
    NotFound { kind: Kind, key: String },
    #[error("{detail}")]
    Conflict { kind: ConflictKind, detail: String },
    /// `If-Match` named a revision other than the object's.
    #[error("the object is at revision {current}, not {expected}")]
    PreconditionFailed { expected: i64, current: i64 },
    /// A change-log read asked for entries that compaction removed.
    #[error("revision {requested} is compacted: the change log starts after revision {compacted}")]
    Compacted { requested: i64, compacted: i64 },
    /// A credential or join token that is unknown, expired or used up.
    #[error("{0}")]
    Denied(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored body no longer decodes: a bug or a hand-edited row.
    #[error("corrupt stored object {id}: {source}")]
    Corrupt { id: uuid::Uuid, source: serde_json::Error },
}

impl StoreError {
    pub(crate) fn invalid(pointer: &str, detail: impl Into<String>) -> Self {
        StoreError::Invalid(ValidationErrors::single(pointer, detail))
    }

    pub(crate) fn conflict(kind: ConflictKind, detail: impl Into<String>) -> Self {
        StoreError::Conflict { kind, detail: detail.into() }
    }

    /// Maps constraint violations raised by concurrent writers (which checks done before the
    /// write cannot see) to conflicts; everything else stays a database error.
    pub(crate) fn from_db(e: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                Some("23505") => {
                    return StoreError::conflict(ConflictKind::Duplicate, format!("{} already exists", what()));
                }
                Some("23503") => {
                    return StoreError::conflict(
                        ConflictKind::InUse,
                        format!("{} is referenced by or references an object changed concurrently", what()),
                    );
                }
                _ => {}
            }
        }
        StoreError::Database(e)
    }
}

impl StoreError {
    /// Whether PostgreSQL refused a value the request carried (a data exception, class 22: a
    /// character it cannot store, a number out of range): bad input that validation let
    /// through, not a fault of the server.
    pub fn is_bad_value(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c.starts_with("22")))
    }

    /// Whether the database cannot be reached or cannot take the request now (down, restarting,
    /// out of connections, or the pool timed out waiting for one): a caller should try again
    /// shortly, and the request itself was not wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exceptions; 57P01-57P03: the server is shutting down or
                // starting; 53300: too many connections.
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                }),
                _ => false,
            },
            _ => false,
        }
    }
}
