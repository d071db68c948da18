//! weft's node agent (DESIGN.md §6, §7): one gRPC stream to a controller; a snapshot of the
//! node's span and then deltas, each applied to the datapath and acked; fail static — the last
//! good state stays enforced whatever happens to the controller or the stream.
//!
//! ```text
//!   start: state dir ─► last span ─► datapath (before the controller answers)
//!   stream: hello ─► snapshot/deltas ─► datapath.apply ─► state dir ─► ack
//!   stream lost: keep enforcing, reconnect with backoff, converge on the next snapshot
//! ```

pub mod cni;
pub mod datapath;
pub mod flows;
pub mod link;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod routes;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_compiler::{NodeSpan, SpanDelta};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{self, AgentMessage, agent_message};

pub use datapath::{Datapath, DatapathError, MemoryDatapath, Shared};
pub use nft::NftDatapath;
pub use state::{Saved, StateDir};

/// The largest message the agent accepts: a delta that defines a set of every pod in a large
/// cluster is a few MiB (snapshots come in 1 MiB parts).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    /// The controller, e.g. `http://127.0.0.1:8081` or `https://weft.example:8081`.
    pub server: String,
    pub node: String,
    pub state_dir: StateDir,
    /// A credential given on the command line; else the one in the state dir.
    pub credential: Option<String>,
    /// Registers the node when there is no credential yet.
    pub join_token: Option<String>,
    /// PEM CA that signs the controller's certificate.
    pub ca: Option<Vec<u8>>,
    /// First and longest pause between reconnection attempts.
    pub backoff: (Duration, Duration),
    /// Where applies and what is in force are recorded, when metrics are served.
    pub metrics: Option<std::sync::Arc<metrics::AgentMetrics>>,
    /// The node's addresses on the network between nodes, said in the hello: where the other
    /// nodes route this node's pods.
    pub underlay: Vec<std::net::IpAddr>,
    /// The connection to the controller, shared by the agent's streams (a clone of the config
    /// shares it).
    pub connection: Connection,
}

/// The agent's one connection to the controller, which its streams (the span's, the routes',
/// the flows') share: the controller holds HTTP/2 state and buffers for each connection (h2's
/// alone some 30 KiB, by a heap profile), so a connection a stream was an estimated 300-400 MiB
/// more at 5,000 nodes (issue 23). Made by the first stream that needs it; the channel
/// connects again by itself after it broke.
#[derive(Debug, Clone, Default)]
pub struct Connection(Arc<tokio::sync::Mutex<Option<Channel>>>);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no node credential: give --credential, or --join-token to register {0}")]
    NoCredential(String),
    #[error("cannot reach the controller at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the stream to the controller failed: {0}")]
    Stream(#[source] tonic::Status),
    #[error("the controller refused: {0}")]
    Refused(tonic::Status),
    /// The stream broke the protocol (DESIGN.md §6): the agent drops it and asks again.
    #[error("the controller's stream broke the protocol: {0}")]
    Protocol(String),
    #[error("state dir: {0}")]
    State(#[from] std::io::Error),
}

/// What the agent has in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The revision of the span in the datapath (0: none yet).
    pub revision: i64,
    /// Whether a stream to a controller is up and its snapshot applied.
    pub synced: bool,
    /// The node's ports whose policy is in the datapath, by (project, name): what the CNI
    /// plugin's ADD waits for.
    pub ports: Arc<LocalPorts>,
    /// The span in the datapath: what the flow reports attribute connections against.
    pub span: Arc<NodeSpan>,
    /// Whether the last update failed to apply: the datapath holds the last good state, and
    /// what came after it is not enforced (CNI STATUS says so).
    pub apply_failing: bool,
}

/// A port of the node's span, as a pod's wiring needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPort {
    pub id: uuid::Uuid,
    pub instance: Option<String>,
    pub interface: String,
    /// The addresses it is dispatched by (a contested one is not among them).
    pub addresses: Vec<std::net::IpAddr>,
}

pub type LocalPorts = std::collections::BTreeMap<(String, String), LocalPort>;

fn local_ports(span: &NodeSpan) -> Arc<LocalPorts> {
    Arc::new(
        span.ports
            .iter()
            .map(|(id, p)| {
                let port = LocalPort {
                    id: *id,
                    instance: p.instance.clone(),
                    interface: p.interface.clone(),
                    addresses: p.addresses.clone(),
                };
                ((p.project.clone(), p.name.clone()), port)
            })
            .collect(),
    )
}

/// Runs the agent until `shutdown` turns true. `progress` follows what is in force.
pub async fn run(
    config: Config,
    mut datapath: impl Datapath,
    progress: watch::Sender<Progress>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut current = match config.state_dir.load(&config.node) {
        Some(saved) => {
            // Enforce what the node had before anyone answers: no window without policy.
            let started = std::time::Instant::now();
            match datapath.apply(&NodeSpan::default(), &saved.span, None) {
                Ok(()) => {
                    if let Some(m) = &config.metrics {
                        m.applied(true, started.elapsed(), saved.revision, &saved.span);
                    }
                    tracing::info!(
                        revision = saved.revision,
                        ports = saved.span.ports.len(),
                        "enforcing the saved span"
                    )
                }
                Err(e) => tracing::error!(error = %e, "cannot enforce the saved span"),
            }
            saved
        }
        None => {
            if let Err(e) = datapath.hold() {
                tracing::error!(error = %e, "cannot close the datapath before the controller answers");
            }
            Saved { node: config.node.clone(), ..Saved::default() }
        }
    };
    progress.send_replace(Progress {
        revision: current.revision,
        synced: false,
        ports: local_ports(&current.span),
        span: Arc::new(current.span.clone()),
        apply_failing: false,
    });
    let mut pause = config.backoff.0;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let outcome = tokio::select! {
            outcome = session(&config, &mut datapath, &mut current, &progress) => outcome,
            _ = shutdown.changed() => return Ok(()),
        };
        progress.send_modify(|p| p.synced = false);
        if let Some(m) = &config.metrics {
            m.connected(false);
        }
        match outcome {
            Ok(()) => {
                tracing::warn!("the controller ended the stream; reconnecting");
                pause = config.backoff.0;
            }
            Err(AgentError::NoCredential(node)) => return Err(AgentError::NoCredential(node)),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "no stream to the controller; enforcing the last span")
            }
        }
        // Jitter keeps a thousand agents from reconnecting in step after a controller restart.
        let jitter = pause.mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(pause + jitter) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        pause = (pause * 2).min(config.backoff.1);
    }
}

/// The agent's connection to the controller ([`Connection`]).
pub(crate) async fn channel(config: &Config) -> Result<Channel, AgentError> {
    let mut shared = config.connection.0.lock().await;
    if let Some(channel) = &*shared {
        return Ok(channel.clone());
    }
    let channel = connect(config).await?;
    *shared = Some(channel.clone());
    Ok(channel)
}

async fn connect(config: &Config) -> Result<Channel, AgentError> {
    let transport = |source| AgentError::Connect { server: config.server.clone(), source };
    let mut endpoint = Endpoint::from_shared(config.server.clone())
        .map_err(transport)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(ca) = &config.ca {
        endpoint =
            endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))).map_err(transport)?;
    }
    endpoint.connect().await.map_err(transport)
}

/// The credential, from the command line, the state dir, or a join.
async fn credential(config: &Config, client: &mut AgentClient<Channel>) -> Result<String, AgentError> {
    if let Some(c) = config.credential.clone().or_else(|| config.state_dir.credential()) {
        return Ok(c);
    }
    let Some(token) = &config.join_token else { return Err(AgentError::NoCredential(config.node.clone())) };
    let request = v1::JoinRequest { join_token: token.clone(), node: config.node.clone() };
    let credential = client.join(request).await.map_err(AgentError::Refused)?.into_inner().credential;
    config.state_dir.save_credential(&credential)?;
    tracing::info!(node = %config.node, "joined: node credential saved in the state dir");
    Ok(credential)
}

/// One stream: hello, then updates until the stream ends.
async fn session(
    config: &Config,
    datapath: &mut impl Datapath,
    current: &mut Saved,
    progress: &watch::Sender<Progress>,
) -> Result<(), AgentError> {
    let mut client = AgentClient::new(channel(config).await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let credential = credential(config, &mut client).await?;
    let (outbound, rx) = mpsc::channel(16);
    let hello = v1::Hello {
        node: config.node.clone(),
        credential,
        last_revision: current.revision,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        underlay: config.underlay.iter().map(weft_proto::encode_address).collect(),
    };
    let _ = outbound.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await;
    let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
            tracing::error!(node = %config.node, error = %status.message(), "the controller refuses this node's credential");
            return Err(AgentError::Refused(status));
        }
        Err(status) => return Err(AgentError::Stream(status)),
    };
    tracing::info!(server = %config.server, node = %config.node, "stream open");
    let mut parts: Vec<v1::ControllerMessage> = Vec::new();
    // A stream starts with a snapshot; a delta is only ever applied on top of this stream's.
    let mut snapshotted = false;
    // What the last ack reported as refused: logged when it changes, not with every ack.
    let mut refused: Vec<String> = Vec::new();
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(status) => return Err(AgentError::Stream(status)),
        };
        let last = message.last;
        parts.push(message);
        if !last {
            continue;
        }
        let update = std::mem::take(&mut parts);
        let revision = update[0].revision;
        // A delta applies to the span it was computed against: one that comes before this
        // stream's snapshot, or that does not move the revision on, would be applied to
        // another span. Nothing of it is applied; a new stream brings a snapshot.
        if update[0].snapshot {
            snapshotted = true;
        } else if !snapshotted {
            return Err(AgentError::Protocol(format!("an update to revision {revision} before the stream's snapshot")));
        } else if revision <= current.revision {
            return Err(AgentError::Protocol(format!(
                "an update to revision {revision} after revision {}: out of order",
                current.revision
            )));
        }
        let started = std::time::Instant::now();
        let mut problems = Vec::new();
        let error = match apply(datapath, current, &update) {
            Ok(delta) => {
                if let Some(m) = &config.metrics {
                    let full = update.len() > 1 || update[0].snapshot;
                    m.applied(full, started.elapsed(), current.revision, &current.span);
                    m.connected(true);
                }
                // Durable before the ack: a delta is appended, anything else saved whole.
                let saved = match &delta {
                    Some(delta) => config.state_dir.append(delta, current),
                    None => config.state_dir.save(current),
                };
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "cannot save the span in the state dir");
                }
                progress.send_replace(Progress {
                    revision: current.revision,
                    synced: true,
                    ports: local_ports(&current.span),
                    span: Arc::new(current.span.clone()),
                    apply_failing: false,
                });
                problems = datapath::problems(&current.span);
                if problems != refused {
                    for problem in problems.iter().filter(|p| !refused.contains(p)) {
                        tracing::warn!(revision, "{problem}");
                    }
                    refused.clone_from(&problems);
                }
                String::new()
            }
            Err(e) => {
                tracing::error!(revision, error = %e, "cannot apply an update; keeping the last good state");
                if let Some(m) = &config.metrics {
                    m.failed();
                }
                progress.send_modify(|p| p.apply_failing = true);
                e
            }
        };
        let ack = v1::Ack { revision, error, problems };
        if outbound.send(AgentMessage { kind: Some(agent_message::Kind::Ack(ack)) }).await.is_err() {
            return Ok(());
        }
    }
}

/// Applies one whole update: decoded, turned into the next span, enforced; `current` moves on
/// only when all of that worked. Returns the delta when the update was one (not a snapshot,
/// not in parts), for the state dir to append.
fn apply(
    datapath: &mut impl Datapath,
    current: &mut Saved,
    update: &[v1::ControllerMessage],
) -> Result<Option<SpanDelta>, String> {
    let snapshot = update[0].snapshot;
    let mut span = if snapshot { NodeSpan::default() } else { current.span.clone() };
    let mut deltas: Vec<SpanDelta> = Vec::with_capacity(update.len());
    for part in update {
        let d = weft_proto::from_proto(part.delta.as_ref().unwrap_or(&v1::SpanDelta::default()))
            .map_err(|e| format!("undecodable update: {e}"))?;
        span.apply(&d);
        deltas.push(d);
    }
    // A datapath gets the delta when the update is one; a snapshot (or an update in parts) is
    // applied from scratch.
    let delta = match (snapshot, deltas.as_slice()) {
        (false, [one]) => Some(one),
        _ => None,
    };
    datapath.apply(&current.span, &span, delta).map_err(|e| e.to_string())?;
    current.span = span;
    current.revision = update[0].revision;
    Ok(delta.cloned())
}
