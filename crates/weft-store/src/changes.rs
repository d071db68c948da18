//! Reading the change log: what followers (the watch endpoint, the controller) consume,
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
    /// The page covers every revision up to here (revisions without entries were rolled back):
    /// the next read starts after it.
    pub up_to: i64,
    /// The safe horizon when the page was read; `up_to == horizon` means caught up.
    pub horizon: i64,
}

impl ChangePage {
    pub fn caught_up(&self) -> bool {
        self.up_to >= self.horizon
    }
}

/// The shortest time between two rounds of the horizon follower: the most it adds to a
/// follower's delay, and what bounds its cost under load.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(5);

/// After this long waiting for in-flight transactions, the horizon follower says so in the log.
const LONG_TRANSACTION: Duration = Duration::from_secs(5);

/// How long a horizon computation waits, between checks, for in-flight transactions to end.
const IN_FLIGHT_CHECK: Duration = Duration::from_micros(200);

impl Store {
    /// The safe horizon: the highest revision H such that every revision <= H is committed and
    /// visible, or was rolled back. See the crate docs for why this is correct.
    pub async fn safe_horizon(&self) -> Result<i64> {
        let (last, running) = {
            let mut conn = self.pool.acquire().await?;
            // 1. The last revision handed out (0 before the first).
            let last: i64 = sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM revisions")
                .fetch_one(&mut *conn)
                .await?;
            // 2. Then: the transactions of this database still running, by session and xid.
            let running: Vec<(i32, String)> = sqlx::query_as(
                "SELECT pid, backend_xid::text FROM pg_stat_activity \
                 WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut *conn)
            .await?;
            (last, running)
        };
        if running.is_empty() {
            return Ok(last);
        }
        // The connection goes back to the pool between checks: a long transaction must not
        // also pin a connection for every follower and request waiting on it.
        // 3. Wait until each has ended: its session no longer holds that xid.
        let (pids, xids): (Vec<i32>, Vec<String>) = running.into_iter().unzip();
        let mut pause = IN_FLIGHT_CHECK;
        let started = std::time::Instant::now();
        let mut warned = false;
        loop {
            let still: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity a JOIN unnest($1::int[], $2::text[]) AS r(pid, xid) \
                 ON a.pid = r.pid AND a.backend_xid::text = r.xid",
            )
            .bind(&pids)
            .bind(&xids)
            .fetch_one(&self.pool)
            .await?;
            if still == 0 {
                return Ok(last);
            }
            if !warned && started.elapsed() > LONG_TRANSACTION {
                warned = true;
                tracing::warn!(
                    sessions = ?pids,
                    "followers of the change log are waiting for long transactions in weft's database to end"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The last revision handed out, committed or not (0 before the first): no revision after
    /// it exists yet.
    pub async fn last_revision(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM revisions")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The changes after `since` up to the safe horizon, at most `max_revisions` revisions'
    /// worth. Fails with [`StoreError::Compacted`] when compaction has removed entries the
    /// caller has not seen.
    pub async fn changes_since(&self, since: i64, max_revisions: i64) -> Result<ChangePage> {
        let horizon = self.safe_horizon().await?;
        self.changes_until(since, horizon, max_revisions).await
    }

    /// As [`Store::changes_since`], for a caller that already knows a safe horizon (from
    /// [`Store::revision_watch`]).
    pub async fn changes_until(&self, since: i64, horizon: i64, max_revisions: i64) -> Result<ChangePage> {
        let up_to = horizon.min(since.saturating_add(max_revisions.max(1))).max(since);
        // One statement, so one snapshot for the compaction mark and the rows: a compaction
        // running meanwhile cannot hide entries. The mark comes on every row, or alone.
        let rows = sqlx::query(
            "SELECT m.compacted, c.revision, c.seq, c.kind, c.id, c.op, c.body::text AS body, c.created_at, c.updated_at \
             FROM revision_state m LEFT JOIN changes c ON c.revision > $1 AND c.revision <= $2 \
             ORDER BY c.revision, c.seq",
        )
        .bind(since)
        .bind(up_to)
        .fetch_all(&self.pool)
        .await?;
        let compacted: i64 = match rows.first() {
            Some(row) => row.try_get("compacted")?,
            None => 0,
        };
        if since < compacted {
            return Err(StoreError::Compacted { requested: since, compacted });
        }
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(revision) = row.try_get::<Option<i64>, _>("revision")? else { continue };
            let kind: String = row.try_get("kind")?;
            let op: String = row.try_get("op")?;
            let id: Uuid = row.try_get("id")?;
            changes.push(Change {
                revision,
                seq: row.try_get("seq")?,
                op: if op == "delete" { ChangeOp::Delete } else { ChangeOp::Put },
                object: StoredObject {
                    id,
                    kind: Kind::from_name(&kind).ok_or_else(|| {
                        StoreError::Database(sqlx::Error::Decode(format!("unknown kind {kind:?}").into()))
                    })?,
                    revision,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    body: row.try_get("body")?,
                },
            });
        }
        Ok(ChangePage { changes, up_to, horizon })
    }

    /// The revision below which the change log has been compacted (entries <= it are gone).
    pub async fn compacted_revision(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT compacted FROM revision_state").fetch_one(&self.pool).await?)
    }

    /// Removes the entries with revision <= `through` (never beyond the safe horizon, never the
    /// latest revision's) and returns the new compaction mark.
    pub async fn compact_through(&self, through: i64) -> Result<i64> {
        let horizon = self.safe_horizon().await?;
        let mut tx = self.pool.begin().await?;
        // The row lock orders compactions; the mark only moves forward.
        let compacted: i64 =
            sqlx::query_scalar("SELECT compacted FROM revision_state FOR UPDATE").fetch_one(&mut *tx).await?;
        let through = through.min(horizon - 1);
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

    /// Follows the safe horizon. It is recomputed when this process commits, when another
    /// process announces a commit (NOTIFY, which this task also sends for this process's
    /// commits, coalesced) and every `poll`, so that a lost notification only delays followers.
    /// The task ends when every receiver is dropped.
    pub async fn revision_watch(&self, poll: Duration) -> Result<watch::Receiver<i64>> {
        let (tx, rx) = watch::channel(crate::patiently(|| self.safe_horizon()).await?);
        let store = self.clone();
        let mut local = self.local_commits();
        tokio::spawn(async move {
            let mut listener: Option<PgListener> = None;
            let mut announced = 0;
            loop {
                if listener.is_none() {
                    listener = connect_listener(&store).await;
                }
                let remote = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await.map(|n| n.is_some()).unwrap_or(false),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = remote => if !ok { listener = None },
                    changed = local.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(poll) => {},
                    _ = tx.closed() => return,
                }
                // Under a stream of commits, one round per interval covers all of them: each
                // round costs a NOTIFY transaction and a look at pg_stat_activity.
                tokio::time::sleep(MIN_ROUND_INTERVAL).await;
                let latest_local = *local.borrow_and_update();
                if latest_local > announced {
                    announced = latest_local;
                    let _ = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANGES_CHANNEL)
                        .bind(latest_local.to_string())
                        .execute(&store.pool)
                        .await;
                }
                match store.safe_horizon().await {
                    Ok(h) => {
                        tx.send_if_modified(|cur| {
                            let newer = h > *cur;
                            if newer {
                                *cur = h;
                            }
                            newer
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot compute the change log's horizon"),
                }
            }
        });
        Ok(rx)
    }
}

async fn connect_listener(store: &Store) -> Option<PgListener> {
    match PgListener::connect_with(&store.pool).await {
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
    }
}
