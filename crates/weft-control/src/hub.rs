//! What the follower publishes and every agent session reads: the compiler (for snapshots of
//! one node's span), the recent updates encoded once, and the revision they reach.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use weft_compiler::view::Waiting;
use weft_compiler::{Compiler, Deltas, NodeName, PolicyView};
use weft_proto::{DeltaEncoder, SnapshotEncoder};

/// How many recent updates are kept by default for sessions that are behind; a session further
/// behind than this (a slow or stuck agent) gets a fresh snapshot instead.
pub const RING_UPDATES: usize = 4096;
/// And how many bytes of them, at most.
pub const RING_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// A session that has everything up to at least this revision can follow on from the
    /// entries; one behind it needs a snapshot.
    pub floor: i64,
    pub entries: VecDeque<(i64, Update, usize)>,
    pub bytes: usize,
}

/// One revision's updates as the ring keeps them.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    /// Encoded once for the agents this process serves.
    Encoded(Arc<DeltaEncoder>),
    /// Only which nodes it concerns, for realization: what a process that serves no agents
    /// keeps (it encodes nothing).
    Nodes(Arc<[NodeName]>),
}

impl Update {
    fn of(deltas: &Deltas, encode: bool) -> Update {
        if encode {
            Update::Encoded(Arc::new(DeltaEncoder::new(deltas)))
        } else {
            Update::Nodes(deltas.nodes.keys().cloned().collect())
        }
    }

    fn concerns(&self, node: &str) -> bool {
        match self {
            Update::Encoded(e) => e.for_node(node).is_some(),
            Update::Nodes(nodes) => nodes.iter().any(|n| &**n == node),
        }
    }

    fn size(&self) -> usize {
        match self {
            Update::Encoded(e) => e.messages().map(|(_, m)| prost::Message::encoded_len(m)).sum(),
            Update::Nodes(nodes) => nodes.iter().map(|n| n.len() + 16).sum(),
        }
    }
}

/// Whether a hub encodes each revision's updates for agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// For a process that serves agents (the controller).
    ForAgents,
    /// For a process that only answers the API: realization needs which nodes a revision
    /// concerns, not the encoded messages.
    None,
}

#[derive(Debug)]
pub struct Hub {
    /// The compiler, and the revision through which it has every change (revisions without
    /// changes for it included); `None` until one is loaded, and while one that failed
    /// halfway through a revision is replaced.
    compiler: Mutex<Option<(Compiler, i64)>>,
    pub(crate) ring: RwLock<Ring>,
    /// The revision the compiler is at; `None` until the first snapshot is loaded.
    pub(crate) revision: watch::Sender<Option<i64>>,
    /// The last revision the loaded snapshot already held though it committed after the
    /// snapshot's horizon (0: none). Those revisions publish no update here, while another
    /// process that loaded earlier has them as updates: a node's realization through them
    /// must be written down at once, or that process waits on a record that stays behind.
    pub(crate) included_through: std::sync::atomic::AtomicI64,
    ring_updates: usize,
    encode: bool,
    /// Whether the change-log follower that feeds this hub is running (it clears this when it
    /// ends, also by a panic): readiness says so when it is not.
    pub(crate) following: std::sync::atomic::AtomicBool,
    /// Snapshots with each set's encoding shared while in flight.
    pub(crate) snapshots: SnapshotEncoder,
    /// How long the compiler takes over each revision's changes (a metric).
    pub compile_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Hub {
    pub fn new(ring_updates: usize, encoding: Encoding) -> Hub {
        Hub {
            encode: encoding == Encoding::ForAgents,
            compiler: Mutex::new(None),
            ring: RwLock::default(),
            revision: watch::Sender::new(None),
            included_through: std::sync::atomic::AtomicI64::new(0),
            ring_updates: ring_updates.max(1),
            following: std::sync::atomic::AtomicBool::new(false),
            snapshots: SnapshotEncoder::default(),
            compile_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
            ),
        }
    }

    /// Whether the change-log follower feeding this hub runs.
    pub fn following(&self) -> bool {
        self.following.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The revision the compiler is at, once loaded.
    pub fn revision(&self) -> Option<i64> {
        *self.revision.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.revision.subscribe()
    }

    /// Runs `f` on the compiler and the revision it is at (briefly: the follower waits);
    /// `None` while no compiler is loaded.
    pub fn with_compiler<T>(&self, f: impl FnOnce(&Compiler, i64) -> T) -> Option<T> {
        let state = self.compiler.lock().unwrap_or_else(|e| e.into_inner());
        state.as_ref().map(|(compiler, revision)| f(compiler, *revision))
    }

    /// Puts a compiler loaded from a snapshot at `revision` in service: every session starts
    /// again from a snapshot.
    pub(crate) fn install(&self, compiler: Compiler, revision: i64, included_through: i64) {
        *self.compiler.lock().unwrap_or_else(|e| e.into_inner()) = Some((compiler, revision));
        self.reset(revision, included_through);
    }

    /// Runs `f` on the compiler to take in `revision`: `None` when none is loaded, an error
    /// holding the panic when `f` panicked. A compiler that panicked may be half-applied: it
    /// is dropped, and nothing is served until [`Hub::install`] puts a new one in service.
    #[allow(clippy::type_complexity)]
    pub(crate) fn apply<T>(
        &self,
        f: impl FnOnce(&mut Compiler) -> T,
        revision: i64,
    ) -> Option<Result<T, Box<dyn std::any::Any + Send>>> {
        let mut state = self.compiler.lock().unwrap_or_else(|e| e.into_inner());
        let (compiler, at) = state.as_mut()?;
        // Caught inside the lock: the mutex is not poisoned, and no one sees the compiler
        // between the panic and its removal.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(compiler))) {
            Ok(out) => {
                *at = revision;
                Some(Ok(out))
            }
            Err(panic) => {
                *state = None;
                self.revision.send_replace(None);
                Some(Err(panic))
            }
        }
    }

    /// The compiler has every change through `revision` (one without changes for it);
    /// whether one is loaded.
    pub(crate) fn advance(&self, revision: i64) -> bool {
        let mut state = self.compiler.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_mut() {
            Some((_, at)) => {
                *at = (*at).max(revision);
                true
            }
            None => false,
        }
    }

    /// How many updates the ring keeps.
    pub(crate) fn history(&self) -> usize {
        self.ring_updates
    }

    /// See `included_through`.
    pub(crate) fn included_through(&self) -> i64 {
        self.included_through.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new state replaces the old: every session starts again from a snapshot.
    fn reset(&self, revision: i64, included_through: i64) {
        self.included_through.store(included_through, std::sync::atomic::Ordering::Relaxed);
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        *ring = Ring { floor: revision, ..Ring::default() };
        drop(ring);
        self.revision.send_replace(Some(revision));
    }

    /// Publishes one revision's updates (`None`: it changed nothing for any node).
    pub(crate) fn publish(&self, revision: i64, deltas: Option<&Deltas>) {
        if let Some(deltas) = deltas {
            let update = Update::of(deltas, self.encode);
            let size = update.size();
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            ring.entries.push_back((revision, update, size));
            ring.bytes += size;
            while ring.entries.len() > self.ring_updates || ring.bytes > RING_BYTES {
                let Some((evicted, _, size)) = ring.entries.pop_front() else { break };
                ring.floor = evicted;
                ring.bytes -= size;
            }
        }
        self.revision.send_replace(Some(revision));
    }

    /// Whether a node that has realized `realized` has everything meant for it up to
    /// `revision`: `Ok(())`, or `Err(needed)` with the revision it still needs. Only the updates
    /// after `realized` are looked at (a node that keeps up costs a step or two); a node behind
    /// the recent history needs `revision` if it has ports.
    pub fn realized(&self, node: &str, realized: i64, revision: i64, has_ports: bool) -> Result<(), i64> {
        if realized >= revision {
            return Ok(());
        }
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        if realized < ring.floor {
            return if has_ports { Err(revision) } else { Ok(()) };
        }
        let pending = ring
            .entries
            .iter()
            .rev()
            .skip_while(|(r, _, _)| *r > revision)
            .take_while(|(r, _, _)| *r > realized)
            .find(|(_, u, _)| u.concerns(node));
        match pending {
            Some((r, _, _)) => Err(*r),
            None => Ok(()),
        }
    }

    /// The updates after `cursor`, or `None` when the session is too far behind to follow.
    pub(crate) fn updates_after(&self, cursor: i64) -> Option<Vec<(i64, Arc<DeltaEncoder>)>> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        if cursor < ring.floor {
            return None;
        }
        let encoded = ring.entries.iter().filter(|(r, _, _)| *r > cursor).filter_map(|(r, u, _)| match u {
            Update::Encoded(e) => Some((*r, Arc::clone(e))),
            Update::Nodes(_) => None,
        });
        Some(encoded.collect())
    }
}

impl PolicyView for Hub {
    fn revision(&self) -> Option<i64> {
        Hub::revision(self)
    }

    fn reached(&self, revision: i64) -> Waiting<'_> {
        let mut at = self.subscribe();
        Box::pin(async move {
            // The sender lives as long as the hub.
            let _ = at.wait_for(|r| r.is_some_and(|r| r >= revision)).await;
        })
    }

    fn following(&self) -> bool {
        Hub::following(self)
    }

    fn read(&self, f: &mut dyn FnMut(&Compiler, i64)) -> bool {
        self.with_compiler(|compiler, revision| f(compiler, revision)).is_some()
    }

    fn realized(&self, node: &str, realized: i64, revision: i64, has_ports: bool) -> Result<(), i64> {
        Hub::realized(self, node, realized, revision, has_ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas(revision: i64, nodes: &[&str]) -> Deltas {
        Deltas {
            revision,
            nodes: nodes.iter().map(|n| (NodeName::from(*n), Default::default())).collect(),
            ..Deltas::default()
        }
    }

    /// An API-only process answers realization from which nodes each revision concerns, and
    /// encodes nothing for agents it never serves.
    #[test]
    fn a_hub_for_the_api_alone_keeps_whom_revisions_concern_and_encodes_nothing() {
        for encoding in [Encoding::ForAgents, Encoding::None] {
            let hub = Hub::new(16, encoding);
            hub.install(Compiler::new(), 1, 0);
            hub.publish(2, Some(&deltas(2, &["n1"])));
            hub.publish(3, Some(&deltas(3, &["n2"])));
            assert_eq!(hub.realized("n1", 1, 3, true), Err(2), "{encoding:?}");
            assert_eq!(hub.realized("n2", 2, 3, true), Err(3), "{encoding:?}");
            assert_eq!(hub.realized("n1", 2, 3, true), Ok(()), "{encoding:?}");
            let ring = hub.ring.read().unwrap_or_else(|e| e.into_inner());
            let encoded = ring.entries.iter().filter(|(_, u, _)| matches!(u, Update::Encoded(_))).count();
            assert_eq!(encoded, if encoding == Encoding::ForAgents { 2 } else { 0 });
        }
    }
}
