//! `weft bench fanout`: many simulated agents on loopback against one real `weft server` that
//! holds the synthetic cluster of DESIGN.md §8. Figures: how long until every agent that
//! connects at once has its snapshot, the server's memory, and the time from a REST write's
//! answer to the ack of every agent it concerns.
//!
//! Once its snapshot is in, each simulated agent also reports what its node's datapath saw on
//! the `Flows` stream, as a real agent does: connections of its ports begun and ended (each
//! allowed by the first ingress rule of the port's first group), a DNS query for every other
//! connection, and the node's 15-second windows; so the server's memory counts its flow store
//! and its time counts taking them. And, as a real agent does, each follows the route table
//! (every node's block on the pod network, through the underlay address its hello gave).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use weft_client::{Client, Key};
use weft_compiler::{Change, synthetic};
use weft_model::{ClusterPolicy, Port, Resource};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{self, AgentMessage, agent_message};
use weft_store::Store;
use weft_store::admin::ScratchDatabase;

use crate::{BenchError, other};

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub database_url: String,
    pub agents: usize,
    pub shape: synthetic::Shape,
    /// Writes of each kind timed after the snapshots.
    pub writes: usize,
    pub weft_exe: PathBuf,
    /// Tiered cluster policies of each tier stored with the cluster
    /// ([`synthetic::cluster_policies`]); with some, admin policies are also added, changed and
    /// reordered, each write timed to every affected agent's ack.
    pub cluster_policies: usize,
    /// New connections each port makes a minute, reported on the agents' flow streams (0:
    /// no flow reports)...
    pub connections_per_port_minute: f64,
    /// ...for at least this long from the snapshots on (the writes happen meanwhile); the
    /// memory after the writes is read then.
    pub flows_for: Duration,
}

#[derive(Debug)]
pub struct WriteFigures {
    pub kind: &'static str,
    pub p50: Duration,
    pub p99: Duration,
    /// Agents each write reached, on average.
    pub agents: f64,
    pub writes: usize,
}

#[derive(Debug)]
pub struct FanoutReport {
    pub description: String,
    pub seeded: Duration,
    pub loaded: Duration,
    pub agents: usize,
    pub snapshots: Duration,
    pub snapshot_bytes: usize,
    /// Loaded, before any agent connected.
    pub server_loaded_rss_mib: f64,
    pub server_rss_mib: f64,
    /// The highest the server's memory had been when the last snapshot arrived.
    pub server_peak_at_snapshots_mib: f64,
    /// And at the end, after the writes.
    pub server_peak_rss_mib: f64,
    /// The server's heap as its allocator counts it (held, resident; MiB): loaded, and when the
    /// last snapshot arrived.
    pub server_heap_loaded: (f64, f64),
    pub server_heap_after_snapshots: (f64, f64),
    /// After the writes, with the agents still connected and reporting flows: RSS, and the
    /// heap held and resident.
    pub server_rss_after_writes_mib: f64,
    pub server_heap_after_writes: (f64, f64),
    /// The heap once every agent has gone (what connections held is given back).
    pub server_heap_after_agents_left: (f64, f64),
    pub writes: Vec<WriteFigures>,
    pub flows: FlowFigures,
    pub routes: RouteFigures,
}

/// The route tables the simulated agents were sent.
#[derive(Debug, Default)]
pub struct RouteFigures {
    /// Updates received (a whole table first, then changes), by all the agents.
    pub updates: u64,
    pub bytes: u64,
    /// The most routes a whole table held.
    pub most: u64,
}

/// What the simulated agents reported on their flow streams, and what the server said of it.
#[derive(Debug, Default)]
pub struct FlowFigures {
    pub connections_per_port_minute: f64,
    /// Records sent (connections begun and ended, DNS queries) and windows sent.
    pub records: u64,
    pub windows: u64,
    /// The server's receipts: records kept, and refused (none should be).
    pub accepted: u64,
    pub refused: u64,
    /// How long the agents reported.
    pub seconds: f64,
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "weft bench fanout: {}", self.description)?;
        writeln!(f, "  stored in            {:.1} s", self.seeded.as_secs_f64())?;
        writeln!(
            f,
            "  server loaded in     {:.1} s (start to compiler at the stored revision)",
            self.loaded.as_secs_f64()
        )?;
        writeln!(
            f,
            "  snapshots            {} agents connecting at once all have theirs after {:.2} s ({:.1} MiB in all)",
            self.agents,
            self.snapshots.as_secs_f64(),
            self.snapshot_bytes as f64 / (1 << 20) as f64
        )?;
        writeln!(
            f,
            "  server memory        {:.0} MiB loaded, {:.0} MiB after the snapshots ({:.0} MiB peak so far), {:.0} MiB peak at the end",
            self.server_loaded_rss_mib,
            self.server_rss_mib,
            self.server_peak_at_snapshots_mib,
            self.server_peak_rss_mib
        )?;
        writeln!(
            f,
            "  server heap          {:.0} MiB held ({:.0} resident) loaded, {:.0} MiB held ({:.0} resident) after the snapshots",
            self.server_heap_loaded.0,
            self.server_heap_loaded.1,
            self.server_heap_after_snapshots.0,
            self.server_heap_after_snapshots.1
        )?;
        writeln!(
            f,
            "  server memory        {:.0} MiB after the writes (heap {:.0} MiB held, {:.0} resident); heap once the agents left {:.0} MiB held ({:.0} resident)",
            self.server_rss_after_writes_mib,
            self.server_heap_after_writes.0,
            self.server_heap_after_writes.1,
            self.server_heap_after_agents_left.0,
            self.server_heap_after_agents_left.1
        )?;
        let fl = &self.flows;
        if fl.connections_per_port_minute > 0.0 {
            writeln!(
                f,
                "  flows                {} records ({:.0} a second) and {} windows over {:.0} s at {} new connections a port a minute: {} kept, {} refused",
                fl.records,
                fl.records as f64 / fl.seconds.max(1e-9),
                fl.windows,
                fl.seconds,
                fl.connections_per_port_minute,
                fl.accepted,
                fl.refused
            )?;
        }
        writeln!(
            f,
            "  route tables         {} updates sent to the agents ({:.1} MiB in all: a whole table each, then changes), {} routes",
            self.routes.updates,
            self.routes.bytes as f64 / (1 << 20) as f64,
            self.routes.most
        )?;
        for w in &self.writes {
            writeln!(
                f,
                "  {:<20} REST answer to the last affected agent's ack: p50 {:.1} ms, p99 {:.1} ms ({} writes, {:.1} agents each)",
                w.kind,
                w.p50.as_secs_f64() * 1e3,
                w.p99.as_secs_f64() * 1e3,
                w.writes,
                w.agents
            )?;
        }
        Ok(())
    }
}

pub async fn fanout(config: FanoutConfig) -> Result<FanoutReport, BenchError> {
    let db = ScratchDatabase::create(&config.database_url, "weft_bench_fanout").await?;
    let result = fanout_on(&config, &db).await;
    db.drop_database().await;
    result
}

/// Stores the synthetic cluster straight through the store (as the API would, without HTTP),
/// several transactions at a time.
async fn seed(store: &Store, shape: &synthetic::Shape, cluster_policies: usize) -> Result<(), BenchError> {
    let mut projects = Vec::new();
    let mut rest = Vec::new();
    for change in synthetic::cluster(shape).into_iter().chain(synthetic::cluster_policies(cluster_policies, false)) {
        match change {
            Change::UpsertProject(mut p) => {
                p.id = None;
                projects.push(Resource::Project(p));
            }
            Change::UpsertPort(mut p) => {
                p.id = None;
                rest.push(Resource::Port(p));
            }
            Change::UpsertGroup(mut g) => {
                g.id = None;
                for r in &mut g.rules {
                    r.id = None;
                }
                rest.push(Resource::SecurityGroup(g));
            }
            Change::UpsertClusterPolicy(mut p) => {
                p.id = None;
                rest.push(Resource::ClusterPolicy(p));
            }
            _ => {}
        }
    }
    for batch in [projects, rest] {
        let chunks: Vec<Vec<Resource>> = batch.chunks(500).map(<[Resource]>::to_vec).collect();
        let results: Vec<Result<(), BenchError>> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let mut txn = store.begin().await?;
                for resource in chunk {
                    txn.create(resource).await?;
                }
                txn.commit().await?;
                Ok(())
            })
            .buffer_unordered(4)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
    }
    Ok(())
}

/// What the simulated agents saw.
#[derive(Debug, Default)]
struct Seen {
    snapshots: AtomicUsize,
    snapshot_bytes: AtomicUsize,
    /// revision → when each agent that got it acked it.
    acks: Mutex<HashMap<i64, Vec<Instant>>>,
    all_synced: Notify,
    /// The run is over: streams ending now are the server stopping.
    finished: std::sync::atomic::AtomicBool,
    /// Tells the agents to close their streams and go.
    leave: tokio::sync::watch::Sender<bool>,
    agents_left: AtomicUsize,
    all_left: Notify,
    flow_records: AtomicU64,
    flow_windows: AtomicU64,
    flows_accepted: AtomicU64,
    flows_refused: AtomicU64,
    route_updates: AtomicU64,
    route_bytes: AtomicU64,
    most_routes: AtomicU64,
}

/// A port of a simulated agent's node, as its snapshot said: what its flow records name.
#[derive(Debug, Clone)]
pub(crate) struct LocalPort {
    pub(crate) id: String,
    pub(crate) address: Vec<u8>,
    /// The group and rule that let its ingress connections in (the first of each).
    pub(crate) allowed_by: Option<(String, String)>,
}

/// The node's ports, from its snapshot's messages.
#[derive(Debug, Default)]
struct SnapshotPorts {
    ports: Vec<v1::PortPolicy>,
    /// A group's first ingress rule, by group id.
    first_rule: HashMap<String, String>,
}

impl SnapshotPorts {
    fn take(&mut self, delta: v1::SpanDelta) {
        self.ports.extend(delta.ports_upserted);
        for g in delta.groups_upserted {
            if let Some(rule) = g.ingress.first() {
                self.first_rule.insert(g.id, rule.rule.clone());
            }
        }
    }

    fn local_ports(self) -> Vec<LocalPort> {
        self.ports
            .into_iter()
            .filter_map(|p| {
                let address = p.addresses.first()?.to_vec();
                let allowed_by = p.ingress.as_ref().and_then(|i| i.groups.first()).and_then(|g| {
                    let rule = self.first_rule.get(g)?;
                    Some((g.clone(), rule.clone()))
                });
                Some(LocalPort { id: p.id, address, allowed_by })
            })
            .collect()
    }
}

pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Connection `id` from `remote` to port 8080 of `port`, as it began or ended (with its
/// counters), allowed by what let the port's ingress connections in.
pub(crate) fn connection_record(
    port: &LocalPort,
    id: u32,
    remote: Vec<u8>,
    at_ms: i64,
    ended: bool,
) -> v1::ConnectionRecord {
    let (group, rule) = port.allowed_by.clone().unwrap_or_default();
    v1::ConnectionRecord {
        port: port.id.clone(),
        ingress: true,
        src: remote,
        dst: port.address.clone(),
        protocol: 6,
        src_port: Some(32_768 + id % 28_000),
        dst_port: Some(8080),
        at_ms,
        isolated: !group.is_empty(),
        group,
        rule,
        ended,
        id,
        counters: ended.then_some(v1::Counters {
            packets_sent: 10,
            bytes_sent: 1_200,
            packets_received: 8,
            bytes_received: 9_000,
        }),
        ..Default::default()
    }
}

/// A window's length (DESIGN.md §10).
const WINDOW_MS: i64 = 15_000;

/// Reports the node's flows, a report a second, until told to leave; adds the receipt to
/// `seen`. Connections come from remote addresses outside the cluster's pods (10.255/16) to
/// port 8080 and last about five seconds.
async fn report_flows(
    channel: tonic::transport::Channel,
    node: String,
    credential: String,
    ports: Vec<LocalPort>,
    per_port_minute: f64,
    seen: Arc<Seen>,
) -> Result<(), BenchError> {
    if ports.is_empty() || per_port_minute <= 0.0 {
        return Ok(());
    }
    let mut leave = seen.leave.subscribe();
    let (tx, rx) = mpsc::channel::<v1::FlowReport>(4);
    let mut client = AgentClient::new(channel);
    let receipt = tokio::spawn(async move { client.flows(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let per_second = ports.len() as f64 * per_port_minute / 60.0;
    let mut owed = 0.0;
    let mut next_id = 0u32;
    // Connections begun, oldest first: (id, port index, remote, began at).
    let mut open: std::collections::VecDeque<(u32, usize, Vec<u8>, i64)> = Default::default();
    // The open window's counts per port: (started, ended).
    let mut window: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut window_start = now_ms() / WINDOW_MS * WINDOW_MS;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut first = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leave.wait_for(|l| *l) => break,
        }
        let now = now_ms();
        let mut report = v1::FlowReport::default();
        if first {
            (report.node, report.credential, first) = (node.clone(), credential.clone(), false);
        }
        owed += per_second;
        let rule_of = |i: usize| ports[i].allowed_by.clone().unwrap_or_default();
        while owed >= 1.0 {
            owed -= 1.0;
            let i = next_id as usize % ports.len();
            let remote = vec![10, 255, (next_id >> 8) as u8, next_id as u8];
            report.connections.push(connection_record(&ports[i], next_id, remote.clone(), now, false));
            if next_id.is_multiple_of(2) {
                report.dns.push(v1::DnsRecord {
                    port: ports[i].id.clone(),
                    server: vec![10, 96, 0, 10],
                    name: format!("svc-{}.bench.svc.cluster.local", next_id % 100),
                    qtype: 1,
                    at_ms: now,
                    src_port: Some(40_000 + next_id % 20_000),
                });
            }
            window.entry(i).or_default().0 += 1;
            open.push_back((next_id, i, remote, now));
            next_id = next_id.wrapping_add(1);
        }
        while open.front().is_some_and(|(_, _, _, at)| now - at >= 5_000) {
            let Some((id, i, remote, _)) = open.pop_front() else { break };
            report.connections.push(connection_record(&ports[i], id, remote, now, true));
            window.entry(i).or_default().1 += 1;
        }
        if now >= window_start + WINDOW_MS {
            let aggregates = std::mem::take(&mut window)
                .into_iter()
                .map(|(i, (started, ended))| {
                    let (group, rule) = rule_of(i);
                    v1::FlowAggregate {
                        port: ports[i].id.clone(),
                        ingress: true,
                        remote: vec![10, 255, 0, 0],
                        protocol: 6,
                        service: Some(8080),
                        isolated: !group.is_empty(),
                        group,
                        rule,
                        started,
                        ended,
                        packets_sent: 10 * ended,
                        bytes_sent: 1_200 * ended,
                        packets_received: 8 * ended,
                        bytes_received: 9_000 * ended,
                        ..Default::default()
                    }
                })
                .collect();
            report.windows.push(v1::FlowWindow {
                start_ms: window_start,
                end_ms: window_start + WINDOW_MS,
                closed: true,
                aggregates,
                ..Default::default()
            });
            window_start += WINDOW_MS;
            seen.flow_windows.fetch_add(1, Ordering::Relaxed);
        }
        let records = report.connections.len() + report.dns.len();
        if tx.send(report).await.is_err() {
            break;
        }
        seen.flow_records.fetch_add(records as u64, Ordering::Relaxed);
    }
    drop(tx);
    let receipt = receipt.await.map_err(other)?.map_err(other)?.into_inner();
    seen.flows_accepted.fetch_add(receipt.accepted, Ordering::Relaxed);
    seen.flows_refused.fetch_add(receipt.refused, Ordering::Relaxed);
    Ok(())
}

/// The pod network split into node blocks, a /24 of 100.64.0.0/10 per node, as the CNI's
/// IPAM has them (DESIGN.md §9): with the underlay address each simulated agent gives in its
/// hello, each node's block is a route of the table every agent follows. The synthetic pods
/// keep their own addresses, so the table holds the blocks only, as in a cluster whose pods
/// all got theirs from their node's block.
async fn pod_network_blocks(store: &Store, nodes: usize) -> Result<(), BenchError> {
    if nodes > 1 << 14 {
        return Err(other(format!("{nodes} nodes: 100.64.0.0/10 holds 16,384 blocks")));
    }
    let network = json!({"name": "pods", "project": "k8s-ns0", "shared": true, "node_blocks": {"ipv4": 24},
                         "subnets": [{"cidr": "100.64.0.0/10"}]});
    let network = serde_json::from_value(network).map_err(other)?;
    let mut txn = store.begin().await?;
    txn.create(Resource::VirtualNetwork(network)).await?;
    txn.commit().await?;
    let assigned: Vec<Result<(), BenchError>> = futures::stream::iter(0..nodes)
        .map(|n| async move {
            let first = std::net::Ipv4Addr::from((100u32 << 24) | (64 << 16) | ((n as u32) << 8));
            let block = ipnet::IpNet::new(first.into(), 24).map_err(other)?;
            store.assign_node_blocks("k8s-ns0/pods", &format!("node-{n}"), &[block]).await?;
            Ok(())
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assigned.into_iter().collect()
}

/// The underlay address simulated node `n` says it has (198.18.0.0/15, the benchmarking range).
fn underlay(n: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::from((198u32 << 24) | (18 << 16) | (n as u32 & 0x1_ffff)).into()
}

/// What a simulated agent reads of a part of a route table: its routes counted, not kept.
/// Keeping the table is a real agent's work on its own node; 5,000 simulated agents doing it
/// on the bench's cores took them from the server (snapshots 25-31 s instead of 9.5 s).
#[derive(Debug, Clone, Default, PartialEq)]
struct RoutePart {
    routes: u64,
    bytes: u64,
    continued: bool,
    changes: bool,
}

impl prost::Message for RoutePart {
    fn encode_raw(&self, _: &mut impl prost::bytes::BufMut) {
        // Only ever received.
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let before = buf.remaining();
        let merged = match tag {
            3 => prost::encoding::bool::merge(wire_type, &mut self.continued, buf, ctx),
            4 => prost::encoding::bool::merge(wire_type, &mut self.changes, buf, ctx),
            _ => {
                self.routes += u64::from(tag == 1);
                prost::encoding::skip_field(wire_type, tag, buf, ctx)
            }
        };
        self.bytes += (prost::encoding::key_len(tag) + before - buf.remaining()) as u64;
        merged
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = RoutePart::default();
    }
}

/// Follows the route table on the agent's connection, as a real agent does (asking for
/// changes), until told to leave.
async fn follow_routes(
    channel: tonic::transport::Channel,
    node: String,
    credential: String,
    seen: Arc<Seen>,
) -> Result<(), BenchError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(other)?;
    let request = tonic::Request::new(v1::RoutesRequest { node, credential, incremental: true });
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/weft.agent.v1.Agent/Routes");
    let codec = weft_proto::LeanCodec::<v1::RoutesRequest, RoutePart>::default();
    let mut parts = grpc.server_streaming(request, path, codec).await.map_err(other)?.into_inner();
    let mut leave = seen.leave.subscribe();
    let mut update = RoutePart::default();
    loop {
        let part = tokio::select! {
            part = parts.message() => match part.map_err(other)? {
                Some(part) => part,
                None => return Ok(()),
            },
            _ = leave.wait_for(|l| *l) => return Ok(()),
        };
        seen.route_bytes.fetch_add(part.bytes, Ordering::Relaxed);
        update.routes += part.routes;
        update.changes |= part.changes;
        if !part.continued {
            let update = std::mem::take(&mut update);
            seen.route_updates.fetch_add(1, Ordering::Relaxed);
            if !update.changes {
                seen.most_routes.fetch_max(update.routes, Ordering::Relaxed);
            }
        }
    }
}

async fn agent(
    grpc: String,
    n: usize,
    credential: String,
    seen: Arc<Seen>,
    total: usize,
    per_port_minute: f64,
) -> Result<(), BenchError> {
    let node = format!("node-{n}");
    // A thousand connections at once can overflow the listen backlog: like a real agent, a
    // simulated one tries again (with backoff) until its stream is open.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).map_err(other)?;
    let mut attempt = 0u32;
    let (tx, mut inbound, channel) = loop {
        let opened = async {
            let channel = endpoint.connect().await.map_err(other)?;
            let mut client = AgentClient::new(channel.clone()).max_decoding_message_size(256 << 20);
            let (tx, rx) = mpsc::channel(16);
            let hello = v1::Hello {
                node: node.clone(),
                credential: credential.clone(),
                last_revision: 0,
                // The server's own version: a simulated agent is not one of another version.
                agent_version: env!("CARGO_PKG_VERSION").into(),
                underlay: vec![weft_proto::encode_address(&underlay(n))],
            };
            let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await;
            let inbound =
                client.sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(other)?.into_inner();
            Ok::<_, BenchError>((tx, inbound, channel))
        }
        .await;
        match opened {
            Ok(open) => break open,
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "could not open the stream; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    };
    {
        let (channel, node, credential, seen) = (channel.clone(), node.clone(), credential.clone(), Arc::clone(&seen));
        tokio::spawn(async move {
            if let Err(e) = follow_routes(channel, node, credential, Arc::clone(&seen)).await
                && !seen.finished.load(Ordering::Acquire)
            {
                tracing::warn!(error = %e, "a simulated agent's route stream failed");
            }
        });
    }
    let mut bytes = 0;
    let mut synced = false;
    let mut snapshot = SnapshotPorts::default();
    let mut flows = None;
    let mut leave = seen.leave.subscribe();
    loop {
        let message = tokio::select! {
            message = inbound.message() => match message.map_err(other)? {
                Some(message) => message,
                None => break,
            },
            _ = leave.wait_for(|l| *l) => break,
        };
        bytes += prost::Message::encoded_len(&message);
        if !synced && let Some(delta) = message.delta {
            snapshot.take(delta);
        }
        if !message.last {
            continue;
        }
        let ack = v1::Ack { revision: message.revision, error: String::new(), problems: vec![] };
        let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Ack(ack)) }).await;
        let now = Instant::now();
        if !synced {
            synced = true;
            seen.snapshot_bytes.fetch_add(bytes, Ordering::Relaxed);
            if seen.snapshots.fetch_add(1, Ordering::AcqRel) + 1 == total {
                seen.all_synced.notify_one();
            }
            let ports = std::mem::take(&mut snapshot).local_ports();
            let (channel, node, credential, seen) =
                (channel.clone(), node.clone(), credential.clone(), Arc::clone(&seen));
            flows = Some(tokio::spawn(report_flows(channel, node, credential, ports, per_port_minute, seen)));
        } else {
            seen.acks.lock().unwrap_or_else(|e| e.into_inner()).entry(message.revision).or_default().push(now);
        }
    }
    drop((tx, inbound));
    let reported = match flows {
        Some(flows) => flows.await.map_err(other).and_then(|r| r),
        None => Ok(()),
    };
    drop(channel);
    if seen.agents_left.fetch_add(1, Ordering::AcqRel) + 1 == total {
        seen.all_left.notify_one();
    }
    reported
}

/// The server's heap as its metrics say (jemalloc's held and resident bytes), in MiB; zeros
/// when they cannot be read.
async fn heap_mib(client: &Client) -> (f64, f64) {
    let text = client.metrics().await.unwrap_or_default();
    let gauge = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |b| b / (1 << 20) as f64)
    };
    (gauge("weft_api_server_heap_allocated_bytes"), gauge("weft_api_server_heap_resident_bytes"))
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").map_err(other)?.local_addr().map_err(other)?.port())
}

async fn fanout_on(config: &FanoutConfig, db: &ScratchDatabase) -> Result<FanoutReport, BenchError> {
    let shape = &config.shape;
    let description = format!(
        "{} agents; {} namespaces, {} pods, {} policies on {} nodes",
        config.agents,
        shape.namespaces,
        shape.namespaces * shape.pods_per_namespace,
        shape.namespaces * 3,
        shape.nodes
    );
    let store = Store::connect(&db.url, 8).await?;
    store.migrate().await?;
    tracing::info!("storing the synthetic cluster");
    let started = Instant::now();
    seed(&store, shape, config.cluster_policies).await?;
    let mut credentials = Vec::with_capacity(config.agents);
    for i in 0..config.agents {
        credentials.push(store.create_node(&format!("node-{i}")).await?);
    }
    pod_network_blocks(&store, config.agents).await?;
    let seeded = started.elapsed();
    let stored_revision = store.current_revision().await?;

    let (rest, grpc) = (free_port()?, free_port()?);
    let data_dir = std::env::temp_dir().join(format!("weft-bench-fanout-{}", uuid::Uuid::new_v4().simple()));
    let started = Instant::now();
    let mut server = tokio::process::Command::new(&config.weft_exe)
        .args(["server", "--listen", &format!("127.0.0.1:{rest}"), "--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--database-url", &db.url, "--data-dir"])
        .arg(&data_dir)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| other(format!("cannot start {}: {e}", config.weft_exe.display())))?;
    let pid = server.id().unwrap_or(0);
    let result = async {
        let probe = Client::new(&format!("http://127.0.0.1:{rest}"), None, None)?;
        while !probe.ready().await.unwrap_or(false) {
            if started.elapsed() > Duration::from_secs(300) {
                return Err(other("weft server was not ready within 300 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(data_dir.join("admin.token")).map_err(other)?.trim().to_string();
        let client = Client::new(&format!("http://127.0.0.1:{rest}"), Some(token), None)?;
        while client.realization(0).await?.compiled < stored_revision {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let loaded = started.elapsed();
        let server_loaded_rss_mib = crate::rss_mib(Some(pid)).0;
        let server_heap_loaded = heap_mib(&client).await;

        tracing::info!(agents = config.agents, "connecting the agents");
        let seen = Arc::new(Seen::default());
        let started = Instant::now();
        let synced = seen.all_synced.notified();
        for (i, credential) in credentials.into_iter().enumerate() {
            let (grpc, seen, total) = (format!("127.0.0.1:{grpc}"), Arc::clone(&seen), config.agents);
            let per_port_minute = config.connections_per_port_minute;
            tokio::spawn(async move {
                let result = agent(grpc, i, credential, Arc::clone(&seen), total, per_port_minute).await;
                if let (Err(e), false) = (result, seen.finished.load(Ordering::Acquire)) {
                    tracing::warn!(agent = i, error = %e, "simulated agent failed");
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(300), synced).await.map_err(|_| other("snapshots took over 300 s"))?;
        let snapshots = started.elapsed();
        let flows_from = Instant::now();
        let (server_rss_mib, server_peak_at_snapshots_mib) = crate::rss_mib(Some(pid));
        let server_heap_after_snapshots = heap_mib(&client).await;

        let mut writes = Vec::new();
        let mut kinds = vec!["pod relabelled", "pod added (platform)"];
        if config.cluster_policies > 0 {
            kinds.extend(["admin policy added", "admin policy changed", "admin policy reordered"]);
        }
        for kind in kinds {
            let mut latencies = Vec::with_capacity(config.writes);
            let mut reached = 0;
            for w in 0..config.writes {
                let ns = (w * 7919 + 13) % shape.namespaces;
                let revision = match kind {
                    "pod relabelled" => {
                        // pod-0 of a namespace not touched before: app0 becomes app1, so it
                        // leaves the members of its namespace's allow-same-app group.
                        let key = Key::Named { project: format!("k8s-ns{ns}"), name: "pod-0".into() };
                        let port: Port = client.patch(&key, &json!({"labels": {"app": "app1"}}), None).await?;
                        port.revision
                    }
                    "admin policy added" | "admin policy changed" | "admin policy reordered" => {
                        let n = config.cluster_policies;
                        // Reorders come in pairs on one policy: moved last, then back.
                        let which = if kind == "admin policy reordered" { (w / 2) % n } else { w % n };
                        let key = Key::Name(format!("admin-{which}"));
                        let mut policy: ClusterPolicy = client.get(&key).await?;
                        policy.status = None;
                        match kind {
                            "admin policy added" => {
                                policy.name = format!("admin-added-{w}");
                                policy.priority = 999;
                                client.create(&policy).await?.revision
                            }
                            "admin policy changed" => {
                                // The ssh rule's port: every port the policy selects is
                                // asked another question.
                                if let Some(p) = policy.ingress[0].protocols.first_mut() {
                                    p.port = Some(weft_model::PortMatch::Single(2200 + w as i64));
                                }
                                client.replace(&key, &policy, None).await?.revision
                            }
                            _ => {
                                // Last in the tier, then back: every port it selects lists its
                                // policies in another order.
                                policy.priority = if w % 2 == 0 { 1000 } else { (which % 1000) as i64 };
                                client.replace(&key, &policy, None).await?.revision
                            }
                        }
                    }
                    _ => {
                        let ns = ns / shape.selected_namespace_every * shape.selected_namespace_every;
                        let body = json!({"name": format!("added-{w}"), "project": format!("k8s-ns{ns}"),
                            "node": format!("node-{}", w % shape.nodes), "ips": [format!("10.250.{}.{}", w / 250, w % 250 + 1)],
                            "labels": {"app": "app0"}, "security_groups": []});
                        let port: Port = client.create(&serde_json::from_value::<Port>(body).map_err(other)?).await?;
                        port.revision
                    }
                };
                let answered = Instant::now();
                let revision = revision.ok_or_else(|| other("a write without a revision"))?;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let realization = client.realization(revision).await?;
                    if realization.complete {
                        break;
                    }
                    if Instant::now() > deadline {
                        // What is behind, and what the simulated agents acked: where to look.
                        let acked = seen.acks.lock().unwrap_or_else(|e| e.into_inner()).get(&revision).map_or(0, Vec::len);
                        let behind: Vec<String> =
                            realization.nodes.iter().filter(|n| n["done"] == false).take(3).map(|n| n.to_string()).collect();
                        return Err(other(format!(
                            "{kind}: revision {revision} not realized within 60 s (compiled {}; {} laggards, {acked} acks heard; e.g. {})",
                            realization.compiled,
                            realization.laggards.len(),
                            behind.join(" ")
                        )));
                    }
                    // (The latency comes from the agents' own clocks; this only says when to
                    // stop waiting, so it need not poll hard.)
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let acks = seen.acks.lock().unwrap_or_else(|e| e.into_inner()).remove(&revision).unwrap_or_default();
                reached += acks.len();
                let last = acks.iter().max().copied().unwrap_or(answered);
                latencies.push(last.saturating_duration_since(answered));
            }
            latencies.sort();
            let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
            writes.push(WriteFigures {
                kind,
                p50: at(0.5),
                p99: at(0.99),
                agents: reached as f64 / config.writes.max(1) as f64,
                writes: config.writes,
            });
        }
        if config.connections_per_port_minute > 0.0 {
            // The run's length, not a wait for a condition: the flow store fills meanwhile.
            tokio::time::sleep_until((flows_from + config.flows_for).into()).await;
        }
        let flows_for = flows_from.elapsed();
        let (server_rss_after_writes_mib, _) = crate::rss_mib(Some(pid));
        let server_heap_after_writes = heap_mib(&client).await;
        // Every agent closes its streams (its flow stream's receipt counted); then what the
        // server still holds of them.
        let left = seen.all_left.notified();
        seen.leave.send_replace(true);
        tokio::time::timeout(Duration::from_secs(60), left)
            .await
            .map_err(|_| other("the agents did not all leave within 60 s"))?;
        let server_heap_after_agents_left = heap_mib(&client).await;
        seen.finished.store(true, Ordering::Release);
        let snapshot_bytes = seen.snapshot_bytes.load(Ordering::Relaxed);
        let flows = FlowFigures {
            connections_per_port_minute: config.connections_per_port_minute,
            records: seen.flow_records.load(Ordering::Relaxed),
            windows: seen.flow_windows.load(Ordering::Relaxed),
            accepted: seen.flows_accepted.load(Ordering::Relaxed),
            refused: seen.flows_refused.load(Ordering::Relaxed),
            seconds: flows_for.as_secs_f64(),
        };
        if flows.refused > 0 {
            return Err(other(format!("the server refused {} of the simulated agents' flow records", flows.refused)));
        }
        Ok(FanoutReport {
            description,
            seeded,
            loaded,
            agents: config.agents,
            snapshots,
            snapshot_bytes,
            server_loaded_rss_mib,
            server_rss_mib,
            server_peak_at_snapshots_mib,
            server_peak_rss_mib: crate::rss_mib(Some(pid)).1,
            server_heap_loaded,
            server_heap_after_snapshots,
            server_rss_after_writes_mib,
            server_heap_after_writes,
            server_heap_after_agents_left,
            writes,
            flows,
            routes: RouteFigures {
                updates: seen.route_updates.load(Ordering::Relaxed),
                bytes: seen.route_bytes.load(Ordering::Relaxed),
                most: seen.most_routes.load(Ordering::Relaxed),
            },
        })
    }
    .await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}
