//! Loads a consistent snapshot from PostgreSQL, then follows the change log (woken by the
//! store's horizon watch, which LISTEN/NOTIFY and polling drive), feeding the compiler and
//! publishing each revision's updates to the hub. A follower that falls behind what the change
//! log keeps reloads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_compiler::{Change, Compiler};
use weft_model::{Kind, Resource};
use weft_proto::DeltaEncoder;
use weft_store::{ChangeOp, Store, StoreError, StoredObject};

use crate::hub::Hub;

/// The compiler's view of one change-log entry (networks do not affect policy).
fn to_change(op: ChangeOp, object: &StoredObject) -> Option<Change> {
    match op {
        ChangeOp::Put => match object.decode() {
            Ok(Resource::Project(p)) => Some(Change::UpsertProject(p)),
            Ok(Resource::Port(p)) => Some(Change::UpsertPort(p)),
            Ok(Resource::SecurityGroup(g)) => Some(Change::UpsertGroup(g)),
            Ok(Resource::VirtualNetwork(_)) => None,
            Err(e) => {
                tracing::error!(id = %object.id, error = %e, "a stored object does not decode; the controller skips it");
                None
            }
        },
        ChangeOp::Delete => match object.kind {
            Kind::Project => Some(Change::DeleteProject(object.id)),
            Kind::Port => Some(Change::DeletePort(object.id)),
            Kind::SecurityGroup => Some(Change::DeleteGroup(object.id)),
            Kind::VirtualNetwork => None,
        },
    }
}

/// Clears the hub's `following` when the follower ends, however it ends.
struct Following(Arc<Hub>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.following.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs until `shutdown` turns true.
pub(crate) async fn run(store: Store, hub: Arc<Hub>, poll: Duration, mut shutdown: watch::Receiver<bool>) {
    hub.following.store(true, std::sync::atomic::Ordering::Relaxed);
    let _following = Following(Arc::clone(&hub));
    loop {
        if *shutdown.borrow() {
            return;
        }
        match follow(&store, &hub, poll, &mut shutdown).await {
            Ok(()) => return,
            Err(StoreError::Compacted { requested, compacted }) => {
                tracing::warn!(
                    requested,
                    compacted,
                    "the controller fell behind the change log's compaction; reloading"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the change log; starting again from a snapshot");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn follow(
    store: &Store,
    hub: &Arc<Hub>,
    poll: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut horizon = store.revision_watch(poll).await?;
    let started = std::time::Instant::now();
    // The compiler takes the objects a chunk at a time as they stream in: the stored text of
    // the whole configuration is never held at once.
    let mut compiler = Compiler::new();
    let mut objects = 0;
    let (revision, included) = store
        .snapshot_in_chunks(1000, |chunk| {
            objects += chunk.len();
            compiler.load(0, chunk.iter().filter_map(|o| to_change(ChangeOp::Put, o)));
        })
        .await?;
    compiler.load(revision, []);
    let loaded = compiler;
    {
        let mut state = hub.compiler.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = loaded;
        state.1 = revision;
    }
    hub.reset(revision, included.iter().next_back().copied().unwrap_or(0));
    tracing::info!(objects, revision, elapsed_ms = started.elapsed().as_millis() as u64, "controller loaded");
    let mut cursor = revision;
    loop {
        let target = *horizon.borrow_and_update();
        while cursor < target {
            // The database busy or away for a moment: the same page again shortly, not a
            // reload of everything (the pool waits for a connection only so long).
            let page = match store.changes_until(cursor, target, 1000).await {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "cannot read the change log now; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                page => page?,
            };
            let mut i = 0;
            while i < page.changes.len() {
                let revision = page.changes[i].revision;
                let end =
                    page.changes[i..].iter().position(|c| c.revision != revision).map_or(page.changes.len(), |n| i + n);
                if !included.contains(&revision) {
                    let batch: Vec<Change> =
                        page.changes[i..end].iter().filter_map(|c| to_change(c.op, &c.object)).collect();
                    apply(hub, revision, batch);
                }
                i = end;
            }
            cursor = page.up_to;
            advance(hub, cursor);
        }
        tokio::select! {
            changed = horizon.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// One revision's changes through the compiler, its updates encoded once and published.
fn apply(hub: &Hub, revision: i64, batch: Vec<Change>) {
    let deltas = {
        let mut state = hub.compiler.lock().unwrap_or_else(|e| e.into_inner());
        let started = std::time::Instant::now();
        let deltas = state.0.apply(revision, batch);
        hub.compile_seconds.observe(started.elapsed().as_secs_f64());
        state.1 = revision;
        deltas
    };
    let updates = (!deltas.is_empty()).then(|| DeltaEncoder::new(&deltas));
    hub.publish(revision, updates);
}

/// Revisions without changes for the compiler (rolled back, or networks only) still move
/// every node's realized revision on.
fn advance(hub: &Hub, revision: i64) {
    {
        let mut state = hub.compiler.lock().unwrap_or_else(|e| e.into_inner());
        state.1 = state.1.max(revision);
    }
    hub.publish(revision, None);
}
