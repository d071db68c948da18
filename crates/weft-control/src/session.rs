//! One agent's stream: a snapshot of its node's span, then the updates meant for it, in
//! revision order, at the pace the agent takes them; its acks become the node's realization
//! status. A slow agent only slows its own session: updates wait in the hub's ring, and one
//! that falls behind the ring gets a fresh snapshot instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_proto::{Encoded, snapshot, v1};
use weft_store::Store;

use crate::hub::Hub;

/// Snapshot messages stay under this size (gRPC's default limit is 4 MiB).
pub const SNAPSHOT_MESSAGE_BYTES: usize = 1 << 20;

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
    error: Option<String>,
}

impl Progress {
    fn status(&self) -> (i64, i64, Option<String>) {
        (self.acked, self.realized, self.error.clone())
    }
}

pub(crate) struct Session {
    pub node: String,
    pub controller: String,
    pub hub: Arc<Hub>,
    pub store: Store,
}

impl Session {
    /// Serves the stream until the agent goes away or the controller shuts down.
    pub async fn run(
        self,
        last_revision: i64,
        mut inbound: Streaming<v1::AgentMessage>,
        outbound: mpsc::Sender<Result<Encoded, Status>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let progress = Arc::new(Mutex::new(Progress { realized: last_revision, ..Progress::default() }));
        let (status_tx, status_rx) = watch::channel((0, last_revision, None));
        let writer =
            tokio::spawn(write_status(self.store.clone(), self.node.clone(), self.controller.clone(), status_rx));
        let sender = {
            let (hub, node, progress, status) =
                (Arc::clone(&self.hub), self.node.clone(), Arc::clone(&progress), status_tx.clone());
            tokio::spawn(async move { send(hub, node, progress, status, outbound).await })
        };
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = shutdown.changed() => break,
            };
            match message {
                Ok(Some(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Ack(ack)) })) => {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    while p.pending.front().is_some_and(|r| *r <= ack.revision) {
                        p.pending.pop_front();
                    }
                    p.acked = p.acked.max(ack.revision);
                    if ack.error.is_empty() {
                        p.error = None;
                        p.realized = if p.pending.is_empty() { p.cursor } else { ack.revision };
                    } else {
                        tracing::warn!(node = %self.node, revision = ack.revision, error = %ack.error, "the agent could not apply an update");
                        p.error = Some(ack.error);
                    }
                    status_tx.send_replace(p.status());
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
        drop(status_tx);
        let _ = writer.await;
        if let Err(e) = self.store.node_disconnected(&self.node, &self.controller).await {
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
    status: watch::Sender<(i64, i64, Option<String>)>,
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
                let (span, revision) = hub.with_compiler(|c, revision| (c.span(&node), revision));
                for message in snapshot(revision, &span, SNAPSHOT_MESSAGE_BYTES) {
                    if outbound.send(Ok(Encoded::of(&message))).await.is_err() {
                        return;
                    }
                }
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
                if p.pending.is_empty() {
                    p.realized = p.cursor;
                    status.send_replace(p.status());
                }
            }
        }
        let cursor = progress.lock().unwrap_or_else(|e| e.into_inner()).cursor;
        if revisions.wait_for(|r| r.is_some_and(|r| r > cursor)).await.is_err() {
            return;
        }
    }
}

/// Writes the node's status as it changes; a burst of acks is one write.
async fn write_status(
    store: Store,
    node: String,
    controller: String,
    mut status: watch::Receiver<(i64, i64, Option<String>)>,
) {
    while status.changed().await.is_ok() {
        let (acked, realized, error) = status.borrow_and_update().clone();
        if let Err(e) = store.node_acked(&node, &controller, acked, realized, error.as_deref()).await {
            tracing::warn!(node = %node, error = %e, "cannot record the node's status");
        }
    }
}
