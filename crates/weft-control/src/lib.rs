//! weft's controller (DESIGN.md §1, §5, §6): loads a consistent snapshot from PostgreSQL,
//! follows the change log, feeds the incremental compiler and serves every connected agent its
//! node's span over a gRPC stream — a snapshot, then the updates meant for it, each encoded
//! once and shared by every stream that needs it.
//!
//! ```text
//!   store.snapshot() ─► Compiler::load ─┐
//!   change log ─► follower ─► Compiler::apply ─► DeltaEncoder ─► Hub ring ─► session ─► agent
//!                                        └────── span(node) for a snapshot ─┘     ◄── acks ─► nodes table
//! ```

mod accept;
pub mod flows;
mod follower;
mod hub;
mod session;
pub mod supervise;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::server::agent_server::{Agent, AgentServer};
use weft_proto::{Encoded, EncodedRoutes, RouteVersions, v1};
use weft_store::{Store, StoreError, patiently};

pub use hub::{Encoding, Hub, RING_UPDATES};
pub use session::MESSAGE_BYTES;

/// How often the controller tells the database which agents it still holds.
const SEEN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// PEM certificate chain and key; plaintext when absent.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How often the change log is polled when no notification arrives.
    pub poll: Duration,
    /// This control process's name in node status.
    pub name: String,
    /// How many recent updates are kept for agents that are behind (past it: a snapshot).
    pub ring_updates: usize,
    /// How long the flow log keeps a flow.
    pub flow_retention: Duration,
    /// How long the per-minute rollups of the nodes' flow windows are kept.
    pub flow_rollup_retention: Duration,
    /// What the flows held in memory may take (estimated): the newest records and the last
    /// hour of the nodes' windows, half each.
    pub flow_memory: usize,
    /// How many snapshots may be on their way at once ([`session::SnapshotSlots`]), and how
    /// long an agent that does not ack its snapshot holds its slot.
    pub snapshots_in_flight: usize,
    pub snapshot_slot_timeout: Duration,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Config {
        let name = format!("control-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Config {
            listen,
            tls: None,
            poll: Duration::from_secs(1),
            name,
            ring_updates: hub::RING_UPDATES,
            flow_retention: Duration::from_secs(3600),
            flow_rollup_retention: Duration::from_secs(7 * 86_400),
            flow_memory: FLOW_MEMORY,
            snapshots_in_flight: session::SNAPSHOTS_IN_FLIGHT,
            snapshot_slot_timeout: session::SNAPSHOT_SLOT_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// A running controller.
#[derive(Debug)]
pub struct Control {
    pub hub: Arc<Hub>,
    pub local_addr: SocketAddr,
    /// Whether the gRPC service is serving: false once its server has ended (an error, or
    /// shutdown). Readiness says so.
    pub serving: Arc<std::sync::atomic::AtomicBool>,
    /// What the agents report their datapaths saw (DESIGN.md §10).
    pub flows: Arc<flows::FlowLog>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    death: supervise::Death,
}

/// How many streams being opened use the database at once (each authenticates its agent's
/// credential, and a span's stream records the connection). When 5,000 agents connected at
/// once, each took a connection of the pool for itself: the pool's waiters timed out and
/// retried, and so did the agents, while status writes and the change log's horizon waited
/// behind them (`weft bench fanout --agents 5000`: no snapshot within 300 s). Waiting here
/// instead costs nothing, and leaves the rest of the pool to everything else.
const HELLOS_AT_ONCE: usize = 8;

/// What the flows a controller holds in memory may take by default (`--flow-memory`).
pub const FLOW_MEMORY: usize = 256 << 20;

/// What else follows the change log through a [`Follower`]: told each event before the
/// compiler takes it.
pub type Observer = Box<dyn FnMut(&weft_store::follow::Event<'_>) + Send>;

/// A compiler kept current from the change log: what the controller serves agents from
/// ([`Encoding::ForAgents`]), and what an API process answers explain, reach and realization
/// from ([`Encoding::None`] when no controller runs there: nothing is encoded for agents).
#[derive(Debug)]
pub struct Follower {
    pub hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    death: supervise::Death,
}

impl Follower {
    /// Starts following up to `horizon`, the process's [`Store::revision_watch`] (one per
    /// process: each costs a LISTEN connection and a horizon query per round); a critical
    /// task ([`Follower::death`]).
    pub fn start(store: Store, horizon: watch::Receiver<i64>, ring_updates: usize, encoding: Encoding) -> Follower {
        Follower::start_with(store, horizon, ring_updates, encoding, None)
    }

    /// [`Follower::start`], also telling `observer` every event it reads, before the compiler
    /// takes it: the process's other follower of the store (the API's object cache) reads
    /// through this one, and the database is read once.
    pub fn start_with(
        store: Store,
        horizon: watch::Receiver<i64>,
        ring_updates: usize,
        encoding: Encoding,
        observer: Option<Observer>,
    ) -> Follower {
        let hub = Arc::new(Hub::new(ring_updates, encoding));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = follower::run(store, Arc::clone(&hub), horizon, shutdown_rx.clone(), observer);
        let (_, death) = supervise::spawn_critical(
            "the change-log follower",
            async move {
                task.await;
                Ok(())
            },
            shutdown_rx,
        );
        Follower { hub, shutdown, death }
    }

    /// Resolves if the follower ends without being stopped.
    pub fn death(&self) -> supervise::Death {
        self.death.clone()
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Control {
    /// Starts following the change log and serving agents.
    pub async fn start(store: Store, config: Config) -> Result<Control, ControlError> {
        let horizon = store.revision_watch(config.poll).await?;
        let follower = Follower::start(store.clone(), horizon, config.ring_updates, Encoding::ForAgents);
        let hub = Arc::clone(&follower.hub);
        let control = Control::serve(store, hub, config).await?;
        // The follower stops with the controller.
        let mut stopped = control.shutdown.subscribe();
        tokio::spawn(async move {
            let _ = stopped.wait_for(|s| *s).await;
            drop(follower);
        });
        Ok(control)
    }

    /// Serves agents from a hub another part of the process keeps current.
    pub async fn serve(store: Store, hub: Arc<Hub>, config: Config) -> Result<Control, ControlError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sessions: Sessions = Arc::default();
        tokio::spawn(heartbeat(store.clone(), config.name.clone(), Arc::clone(&sessions), shutdown_rx.clone()));
        tokio::spawn(end_deleted_nodes(store.clone(), Arc::clone(&sessions), shutdown_rx.clone()));
        let statuses = Arc::new(session::StatusWriter::default());
        tokio::spawn(Arc::clone(&statuses).run(store.clone(), config.name.clone(), shutdown_rx.clone()));
        let (routes_tx, routes) = watch::channel(None);
        tokio::spawn(route_feed(store.clone(), routes_tx, shutdown_rx.clone()));
        let flows = Arc::new(flows::FlowLog::new(config.flow_memory));
        let retention = (config.flow_retention, config.flow_rollup_retention);
        tokio::spawn(flows::write(Arc::clone(&flows), store.clone(), retention, shutdown_rx.clone()));
        let service = Service {
            hellos: Arc::new(tokio::sync::Semaphore::new(HELLOS_AT_ONCE)),
            snapshot_slots: Arc::new(session::SnapshotSlots::new(
                config.snapshots_in_flight,
                config.snapshot_slot_timeout,
            )),
            flows: Arc::clone(&flows),
            statuses,
            routes,
            store,
            hub: Arc::clone(&hub),
            controller: config.name.clone(),
            sessions,
            shutdown: shutdown_rx.clone(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControlError::Listen { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| ControlError::Listen { addr: config.listen, source })?;
        let listener = Arc::new(listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &config.tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| ControlError::Tls(e.to_string()))?;
        }
        let mut stop = shutdown_rx.clone();
        let router = builder.add_service(AgentServer::new(service));
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&serving);
        let (server, death) = supervise::spawn_critical(
            "the agents' gRPC server",
            async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let incoming = accept::incoming(move || {
                    let listener = std::sync::Arc::clone(&listener);
                    async move { listener.accept().await.map(|(stream, _)| stream) }
                });
                let served = router.serve_with_incoming_shutdown(incoming, stopped).await;
                flag.store(false, std::sync::atomic::Ordering::Relaxed);
                served.map_err(|e| e.to_string())
            },
            shutdown_rx,
        );
        tracing::info!(addr = %local_addr, tls = config.tls.is_some(), "serving agents");
        Ok(Control { hub, local_addr, serving, flows, shutdown, server, death })
    }

    /// Resolves if the gRPC server ends without being shut down.
    pub fn death(&self) -> supervise::Death {
        self.death.clone()
    }

    /// Stops serving: every stream ends, agents reconnect elsewhere or later.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.server.await;
    }
}

/// The stream this process holds for each node: its number (a node that reconnects gets a new
/// one) and what ends it when the node is deleted.
type Sessions = Arc<std::sync::Mutex<std::collections::BTreeMap<String, (u64, watch::Sender<bool>)>>>;

/// Ends the stream of a deleted node, if this process holds it.
fn end_session(sessions: &Sessions, node: &str) {
    if let Some((_, end)) = sessions.lock().unwrap_or_else(|e| e.into_inner()).get(node) {
        end.send_replace(true);
    }
}

async fn heartbeat(store: Store, controller: String, sessions: Sessions, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SEEN_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let nodes: Vec<String> = sessions.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        if nodes.is_empty() {
            continue;
        }
        match store.nodes_seen(&controller, &nodes).await {
            // A deletion whose notification was lost is found here.
            Ok(existing) => {
                for gone in nodes.iter().filter(|n| !existing.contains(n)) {
                    end_session(&sessions, gone);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot record which agents are connected"),
        }
    }
}

/// Ends a deleted node's stream as soon as any process deletes it.
async fn end_deleted_nodes(store: Store, sessions: Sessions, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut deleted) = mpsc::channel(64);
    let follower = tokio::spawn(async move { store.follow_node_deletions(tx).await });
    loop {
        tokio::select! {
            name = deleted.recv() => match name {
                Some(name) => end_session(&sessions, &name),
                None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    follower.abort();
}

struct Service {
    statuses: Arc<session::StatusWriter>,
    /// Streams being opened that may use the database now ([`HELLOS_AT_ONCE`]).
    hellos: Arc<tokio::sync::Semaphore>,
    snapshot_slots: Arc<session::SnapshotSlots>,
    /// The route table every agent is served, encoded once for all, kept current by
    /// [`route_feed`]. None until the table was first read: an agent is never told there are
    /// no routes.
    routes: watch::Receiver<Option<Arc<EncodedRoutes>>>,
    flows: Arc<flows::FlowLog>,
    store: Store,
    hub: Arc<Hub>,
    controller: String,
    sessions: Sessions,
    shutdown: watch::Receiver<bool>,
}

/// How often the controller asks whether the route table may have changed: a pod's address
/// outside its node's blocks, a new block, a node's new underlay address are routed within it.
const ROUTES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the route table current: read again from the database (a query over every port)
/// only when the configuration's revision or a node's underlay changed, sent on when it
/// changed. A read that fails keeps the last table (agents keep their routes).
async fn route_feed(
    store: Store,
    routes: watch::Sender<Option<Arc<EncodedRoutes>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut read_at: Option<(i64, String)> = None;
    let mut versions = RouteVersions::new(session::MESSAGE_BYTES);
    loop {
        let version = match (store.current_revision().await, store.route_fingerprint().await) {
            (Ok(revision), Ok(underlay)) => Some((revision, underlay)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot tell whether the route table changed");
                None
            }
        };
        let stale = version.is_some() && version != read_at;
        let read = if stale { Some(read_route_table(&store).await) } else { None };
        match read {
            None => {}
            Some(Ok((rows, cluster))) => {
                read_at = version;
                let table = v1::RouteTable {
                    routes: rows
                        .into_iter()
                        .map(|(destination, node, via)| v1::Route {
                            destination: weft_proto::encode_address(&destination.addr()),
                            prefix: u32::from(destination.prefix_len()),
                            node,
                            via: via.iter().map(weft_proto::encode_address).collect(),
                        })
                        .collect(),
                    cluster: cluster.iter().map(weft_proto::encode_prefix).collect(),
                    ..Default::default()
                };
                if let Some(next) = versions.next(table) {
                    routes.send_replace(Some(Arc::new(next)));
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "cannot read the route table; agents keep the last one"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUTES_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

type RouteRows = Vec<(ipnet::IpNet, String, Vec<std::net::IpAddr>)>;

async fn read_route_table(store: &Store) -> Result<(RouteRows, Vec<ipnet::IpNet>), StoreError> {
    Ok((store.route_table().await?, store.cluster_prefixes().await?))
}

fn unavailable(e: StoreError) -> Status {
    tracing::warn!(error = %e, "the database is unavailable to an agent request");
    Status::unavailable("the controller cannot reach its database; retry")
}

impl Service {
    /// Waits for the database's turn of a stream being opened ([`HELLOS_AT_ONCE`]).
    async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.hellos.acquire().await.map_err(|_| Status::unavailable("the controller is stopping"))
    }

    /// The node a credential is, when it is one (admitted as [`Service::admit`] says).
    async fn authenticate(&self, credential: &str) -> Result<Option<String>, Status> {
        let _admitted = self.admit().await?;
        patiently(|| self.store.authenticate_node(credential)).await.map_err(unavailable)
    }
}

#[tonic::async_trait]
impl Agent for Service {
    type SyncStream = ReceiverStream<Result<Encoded, Status>>;

    async fn sync(&self, request: Request<Streaming<v1::AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::failed_precondition("the first message on a stream is hello")),
        };
        // Admitted a few at a time: the database's pool serves everything else too.
        let admitted = self.admit().await?;
        let Some(node) = patiently(|| self.store.authenticate_node(&hello.credential)).await.map_err(unavailable)?
        else {
            tracing::warn!(peer = %peer, claimed = %hello.node, "refused an agent: unknown node credential");
            return Err(Status::unauthenticated("unknown node credential"));
        };
        if node != hello.node {
            tracing::warn!(peer = %peer, claimed = %hello.node, credential_of = %node, "refused an agent: its credential names another node");
            return Err(Status::permission_denied(format!("this credential is node {node}'s, not {}'s", hello.node)));
        }
        // An address that is not one is dropped: the node is served all the same.
        let underlay: Vec<std::net::IpAddr> =
            hello.underlay.iter().filter_map(|b| weft_proto::parse_address(b).ok()).collect();
        patiently(|| self.store.node_connected(&node, &self.controller, &peer, &hello.agent_version, &underlay))
            .await
            .map_err(unavailable)?;
        drop(admitted);
        tracing::info!(node = %node, peer = %peer, last_revision = hello.last_revision, version = %hello.agent_version, "agent connected");
        if hello.agent_version != env!("CARGO_PKG_VERSION") {
            // A mixed cluster mid-upgrade works (docs/operations.md); an agent left behind is
            // worth a line, and weft node list shows each agent's version.
            tracing::warn!(node = %node, agent = %hello.agent_version, controller = env!("CARGO_PKG_VERSION"), "an agent of another version connected");
        }
        let (end, ended) = watch::channel(false);
        let id = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let id = sessions.get(&node).map_or(1, |(n, _)| n + 1);
            sessions.insert(node.clone(), (id, end));
            id
        };
        let (outbound, rx) = mpsc::channel(8);
        let session = session::Session {
            node: node.clone(),
            controller: self.controller.clone(),
            hub: Arc::clone(&self.hub),
            store: self.store.clone(),
            statuses: Arc::clone(&self.statuses),
            snapshot_slots: Arc::clone(&self.snapshot_slots),
        };
        let (sessions, shutdown) = (Arc::clone(&self.sessions), self.shutdown.clone());
        tokio::spawn(async move {
            session.run(hello.last_revision, inbound, outbound, shutdown, ended).await;
            let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.get(&node).is_some_and(|(n, _)| *n == id) {
                sessions.remove(&node);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RoutesStream = ReceiverStream<Result<Encoded, Status>>;

    async fn routes(&self, request: Request<v1::RoutesRequest>) -> Result<Response<Self::RoutesStream>, Status> {
        let v1::RoutesRequest { node, credential, incremental } = request.into_inner();
        let Some(known) = self.authenticate(&credential).await? else {
            return Err(Status::unauthenticated("unknown node credential"));
        };
        if known != node {
            return Err(Status::permission_denied(format!("this credential is node {known}'s, not {node}'s")));
        }
        let (tx, rx) = mpsc::channel(4);
        let mut routes = self.routes.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // The version this stream sent last: the next is sent as changes when it follows.
            let mut sent: Option<u64> = None;
            loop {
                let table = routes.borrow_and_update().clone();
                if let Some(table) = table {
                    for message in table.messages(incremental, sent) {
                        if tx.send(Ok(Encoded(vec![message.clone()]))).await.is_err() {
                            return;
                        }
                    }
                    sent = Some(table.version);
                }
                tokio::select! {
                    changed = routes.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn flows(&self, request: Request<Streaming<v1::FlowReport>>) -> Result<Response<v1::FlowReceipt>, Status> {
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Ok(Response::new(v1::FlowReceipt::default()));
        };
        let Some(known) = self.authenticate(&first.credential).await? else {
            return Err(Status::unauthenticated("unknown node credential"));
        };
        if known != first.node {
            return Err(Status::permission_denied(format!("this credential is node {known}'s, not {}'s", first.node)));
        }
        // Records are checked against the configuration: wait until it is loaded.
        let mut loaded = self.hub.revision.subscribe();
        let mut stopping = self.shutdown.clone();
        let ready = tokio::select! {
            ready = loaded.wait_for(|r| r.is_some()) => ready.is_ok(),
            _ = stopping.wait_for(|s| *s) => false,
        };
        if !ready {
            return Err(Status::unavailable("the controller is stopping"));
        }
        let mut receipt = v1::FlowReceipt::default();
        let mut report = Some(first);
        // The stream is the agent's to end, or the controller's when it stops: an open
        // client stream would hold the server's graceful shutdown for ever.
        let mut shutdown = self.shutdown.clone();
        while let Some(r) = report {
            let taken = self.hub.with_compiler(|compiler, _| self.flows.take(&known, r, compiler));
            let (accepted, refused) =
                taken.ok_or_else(|| Status::unavailable("the controller has not loaded the configuration yet"))?;
            receipt.accepted += accepted;
            receipt.refused += refused;
            if refused > 0 {
                tracing::debug!(node = %known, refused, "flow records about ports not on the node refused");
            }
            report = tokio::select! {
                next = inbound.message() => next?,
                _ = shutdown.wait_for(|s| *s) => None,
            };
        }
        Ok(Response::new(receipt))
    }

    async fn join(&self, request: Request<v1::JoinRequest>) -> Result<Response<v1::JoinResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let v1::JoinRequest { join_token, node } = request.into_inner();
        match patiently(|| self.store.join(&join_token, &node)).await {
            Ok(credential) => {
                tracing::info!(node = %node, peer = %peer, "node joined");
                Ok(Response::new(v1::JoinResponse { credential }))
            }
            Err(StoreError::Denied(reason)) => {
                tracing::warn!(node = %node, peer = %peer, "refused a join: {reason}");
                Err(Status::permission_denied(reason))
            }
            Err(StoreError::Conflict { detail, .. }) => Err(Status::already_exists(detail)),
            Err(StoreError::Invalid(errors)) => Err(Status::invalid_argument(errors.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }
}
