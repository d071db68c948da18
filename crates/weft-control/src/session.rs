//! One agent's stream: a snapshot of its node's span, then the updates meant for it, in
//! revision order, at the pace the agent takes them; its acks become the node's realization
//! status. A slow agent only slows its own session: updates wait in the hub's ring, and one
//! that falls behind the ring gets a fresh snapshot instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_proto::{Encoded, v1};
use weft_store::Store;

use crate::hub::Hub;

/// Snapshot messages and route table parts stay under about this size. Small on purpose: the
/// gRPC stack encodes each message whole into its stream's buffer, and the buffer keeps the
/// largest size it grew to for as long as the stream lives. With messages of up to 1 MiB,
/// 1,000 connected agents kept 243 MiB of such buffers after their snapshots (the server's
/// heap, 635 -> 878 MiB); with 16 KiB, 101 MiB (`weft bench fanout`), in the same snapshot
/// time (each set's parts are encoded once for all the snapshots in flight:
/// `weft_proto::SnapshotEncoder`). At 5,000 agents a heap profile still found 35 KiB an agent
/// in these buffers (the span's stream and the route table's): hence 4 KiB.
pub const MESSAGE_BYTES: usize = 4 << 10;

/// How many snapshots a controller sends at once by default ([`SnapshotSlots`]).
pub const SNAPSHOTS_IN_FLIGHT: usize = 64;
/// How long an agent that has not acked its snapshot holds its slot by default.
pub const SNAPSHOT_SLOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds the snapshots on their way at once: a snapshot waits in its session's queue and the
/// gRPC stack's buffers until its agent reads it, so with thousands of agents connecting at
/// once and reading slowly, every snapshot could be held at the same moment. A bound on that
/// worst case, not a measured gain: with the bench's simulated agents, which read at once,
/// the server's memory after 1,000 snapshots was the same with it (844 MiB) as without
/// (836-899). A session takes a slot before it builds its snapshot and gives it back when the
/// agent acks it, or after `timeout` (an agent that never acks holds up the others that long,
/// once), or when the stream ends.
#[derive(Debug)]
pub(crate) struct SnapshotSlots {
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

impl SnapshotSlots {
    pub fn new(slots: usize, timeout: Duration) -> SnapshotSlots {
        SnapshotSlots { slots: Arc::new(tokio::sync::Semaphore::new(slots.max(1))), timeout }
    }
}

/// What the controller knows of one agent's progress.
#[derive(Debug, Default)]
struct Progress {
    /// Every update up to here has been sent (or did not concern the node).
    cursor: i64,
    /// Revisions sent and not yet acked.
    pending: VecDeque<i64>,
    /// The last revision acked.
    acked: i64,
    /// Every update meant for the node up to here is in its datapath.
    realized: i64,
    /// The realized revision last handed to the status writer.
    recorded: i64,
    error: Option<String>,
    /// What the agent reported it refuses to enforce as asked, with its last good ack.
    problems: Vec<String>,
}

impl Progress {
    /// Hands the node's status to the writer (which coalesces and batches it).
    fn record(&mut self, statuses: &StatusWriter, node: &str) {
        self.recorded = self.realized;
        statuses.record(
            node,
            NodeStatus {
                acked: self.acked,
                realized: self.realized,
                error: self.error.clone(),
                problems: self.problems.clone(),
            },
        );
    }
}

pub(crate) struct Session {
    pub node: String,
    pub controller: String,
    pub hub: Arc<Hub>,
    pub store: Store,
    pub statuses: Arc<StatusWriter>,
    pub snapshot_slots: Arc<SnapshotSlots>,
}

impl Session {
    /// Serves the stream until the agent goes away, the controller shuts down or the node is
    /// deleted (`ended`; the agent is then told its credential no longer works).
    pub async fn run(
        self,
        last_revision: i64,
        mut inbound: Streaming<v1::AgentMessage>,
        outbound: mpsc::Sender<Result<Encoded, Status>>,
        mut shutdown: watch::Receiver<bool>,
        mut ended: watch::Receiver<bool>,
    ) {
        let closing = outbound.clone();
        // Resolves once the node is deleted; never when a newer stream of the same node took
        // the session's place (its sender is dropped then).
        let deleted = async move {
            loop {
                if ended.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if *ended.borrow() {
                    return;
                }
            }
        };
        tokio::pin!(deleted);
        let progress =
            Arc::new(Mutex::new(Progress { realized: last_revision, recorded: last_revision, ..Progress::default() }));
        // The last revision acked, for a snapshot's slot to be given back.
        let (acked_tx, acked_rx) = watch::channel(0i64);
        let sender = {
            let (hub, node, progress, statuses) =
                (Arc::clone(&self.hub), self.node.clone(), Arc::clone(&progress), Arc::clone(&self.statuses));
            let slots = (Arc::clone(&self.snapshot_slots), acked_rx);
            tokio::spawn(async move { send(hub, node, progress, statuses, slots, outbound).await })
        };
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = shutdown.changed() => break,
                () = &mut deleted => {
                    sender.abort();
                    tracing::warn!(node = %self.node, "the node was deleted: ending its agent's stream");
                    let deleted = Status::unauthenticated(format!("node {} was deleted: its credential no longer works", self.node));
                    let _ = closing.send(Err(deleted)).await;
                    break;
                }
            };
            match message {
                Ok(Some(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Ack(ack)) })) => {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    while p.pending.front().is_some_and(|r| *r <= ack.revision) {
                        p.pending.pop_front();
                    }
                    p.acked = p.acked.max(ack.revision);
                    acked_tx.send_replace(p.acked);
                    if ack.error.is_empty() {
                        p.error = None;
                        if p.problems != ack.problems {
                            for problem in ack.problems.iter().filter(|x| !p.problems.contains(x)) {
                                tracing::warn!(node = %self.node, revision = ack.revision, "the agent refuses: {problem}");
                            }
                            p.problems = ack.problems;
                        }
                        p.realized = if p.pending.is_empty() { p.cursor } else { ack.revision };
                    } else {
                        tracing::warn!(node = %self.node, revision = ack.revision, error = %ack.error, "the agent could not apply an update");
                        p.error = Some(ack.error);
                    }
                    p.record(&self.statuses, &self.node);
                }
                Ok(Some(_)) => tracing::debug!(node = %self.node, "ignoring an unexpected message after hello"),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "agent stream ended");
                    break;
                }
            }
        }
        sender.abort();
        self.statuses.flush(&self.store, &self.controller).await;
        if let Err(e) = weft_store::patiently(|| self.store.node_disconnected(&self.node, &self.controller)).await {
            tracing::warn!(node = %self.node, error = %e, "cannot record the node's disconnection");
        }
        tracing::info!(node = %self.node, "agent disconnected");
    }
}

/// Sends the snapshot, then every update for the node, as the agent takes them.
async fn send(
    hub: Arc<Hub>,
    node: String,
    progress: Arc<Mutex<Progress>>,
    statuses: Arc<StatusWriter>,
    (slots, acked): (Arc<SnapshotSlots>, watch::Receiver<i64>),
    outbound: mpsc::Sender<Result<Encoded, Status>>,
) {
    let mut revisions = hub.subscribe();
    if revisions.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut fresh = true;
    loop {
        let cursor = progress.lock().unwrap_or_else(|e| e.into_inner()).cursor;
        // The revision first: every update up to it is in the ring by then.
        let target = hub.revision().unwrap_or(0);
        let updates = if fresh { None } else { hub.updates_after(cursor) };
        match updates {
            None => {
                let Ok(slot) = Arc::clone(&slots.slots).acquire_owned().await else { return };
                let Some((span, revision)) = hub.with_compiler(|c, revision| (c.span(&node), revision)) else {
                    // The compiler is being loaded again (one failed halfway): wait for it.
                    if revisions.wait_for(Option::is_some).await.is_err() {
                        return;
                    }
                    continue;
                };
                // Encoded as built: what waits to be sent is bytes, not decoded structures, and
                // each set's bytes are shared with the other snapshots in flight.
                let messages = hub.snapshots.encode(revision, &span, MESSAGE_BYTES);
                drop(span);
                for message in messages {
                    if outbound.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                // The slot is given back when the agent has the snapshot (its ack), after the
                // timeout, or when the stream ends (the session drops its sender of acks).
                let (mut acked, timeout) = (acked.clone(), slots.timeout);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, acked.wait_for(|a| *a >= revision)).await;
                    drop(slot);
                });
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.cursor = revision;
                p.pending.push_back(revision);
                fresh = false;
            }
            Some(updates) => {
                let mut sent_to = cursor;
                for (revision, update) in updates.into_iter().filter(|(r, _)| *r <= target) {
                    if let Some(message) = update.for_node(&node) {
                        if outbound.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                        progress.lock().unwrap_or_else(|e| e.into_inner()).pending.push_back(revision);
                    }
                    sent_to = revision;
                }
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.cursor = sent_to.max(target);
                // Revisions that sent the node nothing need no write: realization looks for
                // updates after the recorded revision. The record only moves on now and then, so
                // that it stays within the history the hub keeps.
                if p.pending.is_empty() {
                    p.realized = p.cursor;
                    let through_included = p.recorded < hub.included_through() && p.realized >= hub.included_through();
                    if through_included || p.realized - p.recorded >= (hub.history() / 4).max(1) as i64 {
                        p.record(&statuses, &node);
                    }
                }
            }
        }
        let cursor = progress.lock().unwrap_or_else(|e| e.into_inner()).cursor;
        if revisions.wait_for(|r| r.is_some_and(|r| r > cursor)).await.is_err() {
            return;
        }
    }
}

/// What a node's session last learnt of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeStatus {
    acked: i64,
    realized: i64,
    error: Option<String>,
    problems: Vec<String>,
}

/// Node status from every session of one controller, written together: one statement per
/// round, not one per ack (a set change that reaches a thousand agents is a thousand acks, and
/// a statement per ack would queue the API's own writes behind them).
#[derive(Debug, Default)]
pub(crate) struct StatusWriter {
    pending: Mutex<std::collections::BTreeMap<String, NodeStatus>>,
    wake: tokio::sync::Notify,
}

impl StatusWriter {
    pub fn record(&self, node: &str, status: NodeStatus) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(node.to_string(), status);
        self.wake.notify_one();
    }

    /// Writes what is pending; false when it could not, and keeps it for the next round.
    pub async fn flush(&self, store: &Store, controller: &str) -> bool {
        let batch: Vec<weft_store::nodes::Acked> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .map(|(node, s)| weft_store::nodes::Acked {
                    node,
                    acked: s.acked,
                    realized: s.realized,
                    error: s.error,
                    problems: s.problems,
                })
                .collect();
        if batch.is_empty() {
            return true;
        }
        if let Err(e) = store.nodes_acked(controller, &batch).await {
            tracing::warn!(nodes = batch.len(), error = %e, "cannot record node status; keeping it for the next round");
            // Kept unless a newer status of the node came meanwhile.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for s in batch {
                pending.entry(s.node.clone()).or_insert(NodeStatus {
                    acked: s.acked,
                    realized: s.realized,
                    error: s.error,
                    problems: s.problems,
                });
            }
            drop(pending);
            // The writer's next round, should this flush be a session's last.
            self.wake.notify_one();
            return false;
        }
        true
    }

    /// Writes as statuses come in, until `shutdown`.
    pub async fn run(self: Arc<Self>, store: Store, controller: String, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {
                    self.flush(&store, &controller).await;
                    return;
                }
            }
            while !self.flush(&store, &controller).await {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits (at most 10 s) until `ready` holds.
    async fn until(mut ready: impl FnMut() -> bool) {
        weft_testkit::eventually("the condition", Duration::from_secs(10), || {
            let holds = ready();
            async move { weft_testkit::when(holds, "not yet") }
        })
        .await;
    }

    /// A controller whose snapshot already held revision 2 though it committed after the
    /// snapshot's horizon (1) publishes nothing at 2; another process that loaded earlier has
    /// node-1's update there. Node-1's realization through 2 is written down at once, not
    /// when the record next catches up, or that process waits on a stale record.
    #[tokio::test]
    async fn realization_through_revisions_the_snapshot_held_is_recorded_at_once() {
        let hub = Arc::new(Hub::new(1000, crate::hub::Encoding::ForAgents));
        hub.install(weft_compiler::Compiler::new(), 1, 2);
        let statuses = Arc::new(StatusWriter::default());
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (outbound, mut sent) = mpsc::channel(16);
        let sender = tokio::spawn(send(
            Arc::clone(&hub),
            "node-1".into(),
            Arc::clone(&progress),
            Arc::clone(&statuses),
            (Arc::new(SnapshotSlots::new(1, Duration::from_secs(10))), watch::channel(0).1),
            outbound,
        ));
        // The snapshot, labelled 1, goes out; the agent acks it.
        assert!(sent.recv().await.is_some());
        until(|| progress.lock().unwrap_or_else(|e| e.into_inner()).pending.len() == 1).await;
        {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            p.pending.clear();
            p.acked = 1;
            p.realized = 1;
            p.record(&statuses, "node-1");
        }
        // The follower passes revision 2: nothing in it for anyone here.
        hub.publish(2, None);
        let realized = || statuses.pending.lock().unwrap_or_else(|e| e.into_inner()).get("node-1").map(|s| s.realized);
        until(|| realized() == Some(2)).await;
        sender.abort();
    }
}
