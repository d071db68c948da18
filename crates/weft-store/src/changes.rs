//! Reading the change log: what followers (the watch endpoint, later the controller) consume,
//! its compaction, and the notification that wakes them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;
use weft_model::Kind;

use crate::error::{Result, StoreError};
use crate::{CHANGES_CHANNEL, Store, StoredObject};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Put,
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Put => "put",
            ChangeOp::Delete => "delete",
        }
    }
}

/// One entry of the change log: an object written (put) or removed (delete) at a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: i64,
    /// Position within the revision's transaction.
    pub seq: i32,
    pub op: ChangeOp,
    /// After a put, the object as written; after a delete, its last state. Its `revision` is
    /// the change's.
    pub object: StoredObject,
}

impl Change {
    /// One line of the watch stream: `{"revision":..,"op":..,"kind":..,"id":..,"object":{..}}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"revision\":{},\"op\":\"{}\",\"kind\":\"{}\",\"id\":\"{}\",\"object\":{}}}",
            self.revision,
            self.op.as_str(),
            self.object.kind,
            self.object.id,
            self.object.to_json()
        )
    }
}

/// A run of whole revisions from the change log.
#[derive(Debug)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// The last committed revision when the page was read. When `changes` is empty the reader
    /// is up to date with it.
    pub revision: i64,
}

impl ChangePage {
    /// The revision a follower has reached after this page.
    pub fn last_revision(&self, since: i64) -> i64 {
        self.changes.last().map_or(since, |c| c.revision)
    }
}

impl Store {
    /// The changes after `since`, at most `max_revisions` whole revisions of them. Fails with
    /// [`StoreError::Compacted`] when compaction has removed entries the caller has not seen.
    pub async fn changes_since(&self, since: i64, max_revisions: i64) -> Result<ChangePage> {
        // One snapshot for the compaction mark and the rows, so that a compaction running
        // between the two cannot hide entries.
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let (revision, compacted): (i64, i64) =
            sqlx::query_as("SELECT revision, compacted FROM revision_state").fetch_one(&mut *tx).await?;
        if since < compacted {
            return Err(StoreError::Compacted { requested: since, compacted });
        }
        let rows = sqlx::query(
            "SELECT revision, seq, kind, id, op, body::text AS body, created_at, updated_at FROM changes \
             WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq",
        )
        .bind(since)
        .bind(since.saturating_add(max_revisions.max(1)))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let op: String = row.try_get("op")?;
            let revision: i64 = row.try_get("revision")?;
            let id: Uuid = row.try_get("id")?;
            changes.push(Change {
                revision,
                seq: row.try_get("seq")?,
                op: if op == "delete" { ChangeOp::Delete } else { ChangeOp::Put },
                object: StoredObject {
                    id,
                    kind: Kind::ALL.into_iter().find(|k| k.as_str() == kind).ok_or_else(|| {
                        StoreError::Database(sqlx::Error::Decode(format!("unknown kind {kind:?}").into()))
                    })?,
                    revision,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    body: row.try_get("body")?,
                },
            });
        }
        Ok(ChangePage { changes, revision })
    }

    /// The revision below which the change log has been compacted (entries <= it are gone).
    pub async fn compacted_revision(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT compacted FROM revision_state").fetch_one(&self.pool).await?)
    }

    /// Removes the entries with revision <= `through` (never the current revision's) and
    /// returns the new compaction mark.
    pub async fn compact_through(&self, through: i64) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        // Lock the counter row: a compaction and a commit never interleave, and the mark only
        // moves forward.
        let (revision, compacted): (i64, i64) =
            sqlx::query_as("SELECT revision, compacted FROM revision_state FOR UPDATE").fetch_one(&mut *tx).await?;
        let through = through.min(revision - 1);
        if through <= compacted {
            tx.commit().await?;
            return Ok(compacted);
        }
        sqlx::query("DELETE FROM changes WHERE revision <= $1").bind(through).execute(&mut *tx).await?;
        sqlx::query("UPDATE revision_state SET compacted = $1").bind(through).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(through)
    }

    /// Compacts the entries committed before `now - retention`.
    pub async fn compact_older_than(&self, retention: Duration) -> Result<i64> {
        let cutoff: DateTime<Utc> = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let through: Option<i64> = sqlx::query_scalar("SELECT max(revision) FROM changes WHERE committed_at < $1")
            .bind(cutoff)
            .fetch_one(&self.pool)
            .await?;
        match through {
            Some(through) => self.compact_through(through).await,
            None => self.compacted_revision().await,
        }
    }

    /// Follows the latest committed revision: woken by NOTIFY on every commit, and polling every
    /// `poll` as well, so that a lost notification or connection only delays followers. The
    /// task ends when every receiver is dropped.
    pub async fn revision_watch(&self, poll: Duration) -> Result<watch::Receiver<i64>> {
        let (tx, rx) = watch::channel(self.current_revision().await?);
        let store = self.clone();
        tokio::spawn(async move {
            let mut listener: Option<PgListener> = None;
            loop {
                if listener.is_none() {
                    listener = match PgListener::connect_with(&store.pool).await {
                        Ok(mut l) => match l.listen(CHANGES_CHANNEL).await {
                            Ok(()) => Some(l),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot LISTEN for changes; polling");
                                None
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot connect a change listener; polling");
                            None
                        }
                    };
                }
                let woken = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await.map(|n| n.is_some()).unwrap_or(false),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = woken => if !ok { listener = None },
                    _ = tokio::time::sleep(poll) => {},
                    _ = tx.closed() => return,
                }
                match store.current_revision().await {
                    Ok(r) => {
                        tx.send_if_modified(|cur| {
                            let newer = r > *cur;
                            if newer {
                                *cur = r;
                            }
                            newer
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the current revision"),
                }
            }
        });
        Ok(rx)
    }
}
