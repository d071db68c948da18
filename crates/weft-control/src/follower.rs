//! The compiler kept current from the change log: [`weft_store::follow`] gives a consistent
//! snapshot, then each revision's changes; the compiler takes them in and each revision's
//! updates are published to the hub, encoded once.
//!
//! A compiler that panics halfway through a revision is never served: it is taken out of
//! the hub at once (explain, reach and new agent snapshots wait, realization says the
//! controller is not loaded), and the follower loads a new one from a snapshot.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use weft_compiler::{Change, Compiler};
use weft_store::follow::{Event, FollowConfig, Next};
use weft_store::{ChangeOp, Store, StoredObject};

use crate::hub::Hub;

/// The compiler's view of one change-log entry (networks do not affect policy).
fn to_change(op: ChangeOp, object: &StoredObject) -> Option<Change> {
    match op {
        ChangeOp::Put => match object.decode() {
            Ok(resource) => Change::upsert(resource),
            Err(e) => {
                tracing::error!(id = %object.id, error = %e, "a stored object does not decode; the controller skips it");
                None
            }
        },
        ChangeOp::Delete => Change::delete(object.kind, object.id),
    }
}

/// Clears the hub's `following` when the follower ends, however it ends.
struct Following(Arc<Hub>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.following.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A compiler being loaded from a snapshot, off to the side until it is whole.
struct Loading {
    compiler: Compiler,
    objects: usize,
    started: Instant,
}

/// Runs until `shutdown` turns true, reading up to `horizon` (the process's one
/// [`Store::revision_watch`]).
pub(crate) async fn run(
    store: Store,
    hub: Arc<Hub>,
    horizon: watch::Receiver<i64>,
    mut shutdown: watch::Receiver<bool>,
    mut observer: Option<crate::Observer>,
) {
    hub.following.store(true, std::sync::atomic::Ordering::Relaxed);
    let _following = Following(Arc::clone(&hub));
    let mut loading: Option<Loading> = None;
    let mut compile = |event: Event<'_>| match event {
        Event::Reset => {
            loading = Some(Loading { compiler: Compiler::new(), objects: 0, started: Instant::now() });
            Next::Continue
        }
        // The compiler takes the objects a chunk at a time as they stream in: the stored text
        // of the whole configuration is never held at once.
        Event::Snapshot(chunk) => {
            if let Some(l) = loading.as_mut() {
                l.objects += chunk.len();
                l.compiler.load(0, chunk.iter().filter_map(|o| to_change(ChangeOp::Put, o)));
            }
            Next::Continue
        }
        Event::Loaded { revision, included } => {
            let Some(Loading { mut compiler, objects, started }) = loading.take() else { return Next::Reload };
            compiler.load(revision, []);
            hub.install(compiler, revision, included.last().copied().unwrap_or(0));
            tracing::info!(objects, revision, elapsed_ms = started.elapsed().as_millis() as u64, "controller loaded");
            Next::Continue
        }
        Event::Batch { revision, changes } => {
            apply(&hub, revision, changes.iter().filter_map(|c| to_change(c.op, &c.object)).collect())
        }
        Event::Advanced(revision) => advance(&hub, revision),
    };
    let sink = |event: Event<'_>| {
        if let Some(observe) = observer.as_mut() {
            observe(&event);
        }
        compile(event)
    };
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    weft_store::follow::follow(&store, horizon, FollowConfig::default(), sink, stop).await;
}

/// One revision's changes through the compiler, its updates encoded once and published. A
/// compiler that panics is taken out of service, and a reload asked for.
fn apply(hub: &Hub, revision: i64, batch: Vec<Change>) -> Next {
    let started = Instant::now();
    let Some(applied) = hub.apply(|compiler| compiler.apply(revision, batch), revision) else {
        // Not loaded: nothing to apply to (a reload is under way).
        return Next::Reload;
    };
    match applied {
        Ok(deltas) => {
            hub.compile_seconds.observe(started.elapsed().as_secs_f64());
            hub.publish(revision, (!deltas.is_empty()).then_some(&deltas));
            Next::Continue
        }
        Err(panic) => {
            let what = weft_model::panic_message(&*panic);
            tracing::error!(revision, panic = %what, "the compiler failed halfway through a revision; it is out of service until a snapshot is loaded again");
            Next::Reload
        }
    }
}

/// Revisions without changes for the compiler (rolled back, or networks only) still move
/// every node's realized revision on.
fn advance(hub: &Hub, revision: i64) -> Next {
    if !hub.advance(revision) {
        return Next::Reload;
    }
    hub.publish(revision, None);
    Next::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiler_that_panics_is_taken_out_of_service_and_a_reload_asked_for() {
        let hub = Hub::new(16, crate::hub::Encoding::None);
        hub.install(Compiler::new(), 7, 0);
        assert_eq!(hub.with_compiler(|_, revision| revision), Some(7));
        let outcome = hub.apply(|_| -> () { panic!("halfway") }, 8);
        assert!(matches!(outcome, Some(Err(_))), "the panic is caught and reported");
        assert_eq!(hub.with_compiler(|_, revision| revision), None, "the half-applied compiler serves nothing");
        assert_eq!(hub.revision(), None, "sessions wait, readiness says not loaded");
        assert_eq!(apply(&hub, 9, Vec::new()), Next::Reload, "nothing to apply to until a reload");
        hub.install(Compiler::new(), 9, 0);
        assert_eq!(apply(&hub, 10, Vec::new()), Next::Continue);
        assert_eq!(hub.with_compiler(|_, revision| revision), Some(10));
    }
}
