//! `weft bench memory`: where the server's bytes are, structure by structure, on the synthetic
//! cluster — counted by the allocator (jemalloc's `stats.allocated`, the bytes the program
//! holds), not estimated. The server's own parts are built here as the server builds them: the
//! stored objects streamed a thousand at a time into the compiler and the API's object cache,
//! then every node's snapshot encoded. The compiler is then taken apart and each structure
//! dropped in turn: what the allocator gets back is what it held.
//!
//! Meaningful in the `weft` binary, whose allocator is jemalloc; elsewhere every figure is 0.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_compiler::{Change, Compiler, synthetic};
use weft_model::Resource;
use weft_store::StoredObject;
use weft_store::follow::Event;

use crate::{BenchError, other};

#[derive(Debug)]
pub struct MemoryReport {
    pub description: String,
    pub objects: usize,
    /// The stored text of every object (the rows as the database gives them), for scale.
    pub stored_text: usize,
    /// (structure, bytes held), in the order they were counted.
    pub parts: Vec<(String, usize)>,
    pub load: Duration,
    /// Every node's snapshot, encoded: what agents connecting at once would be sent.
    pub snapshots: usize,
    pub snapshot_bytes: usize,
    /// The largest of them.
    pub largest_snapshot: usize,
    /// What they hold when all are encoded at once, each set's encoding shared
    /// (`weft_proto::SnapshotEncoder`, as the controller encodes them).
    pub snapshots_held: usize,
    /// Bytes held by the program when the compiler and the cache were loaded.
    pub loaded: usize,
    pub flows: Option<FlowStoreFigures>,
}

/// The controller's flow store fed what the nodes would report, as the controller takes it
/// (`FlowLog::take`, the writer's `due` and `minutes_due` each second, their output dropped).
#[derive(Debug)]
pub struct FlowStoreFigures {
    /// What the store may take, as configured (`--flow-memory`), and what it held after.
    pub budget: usize,
    pub held: usize,
    pub seconds: usize,
    pub records: usize,
    pub windows: usize,
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "weft bench memory: {}", self.description)?;
        writeln!(
            f,
            "  {} objects, {:.1} MiB of stored text; compiler and cache loaded in {:.1} s",
            self.objects,
            mib(self.stored_text),
            self.load.as_secs_f64()
        )?;
        let total: usize = self.parts.iter().map(|(_, b)| b).sum();
        for (name, bytes) in &self.parts {
            writeln!(
                f,
                "  {:<36} {:>8.1} MiB  {:>5.1} %",
                name,
                mib(*bytes),
                100.0 * *bytes as f64 / total.max(1) as f64
            )?;
        }
        writeln!(f, "  {:<36} {:>8.1} MiB", "all of the above", mib(total))?;
        writeln!(
            f,
            "  snapshots            {} nodes' snapshots encoded: {:.1} MiB sent in all, the largest {:.1} KiB; {:.1} MiB held when all are in flight at once",
            self.snapshots,
            mib(self.snapshot_bytes),
            self.largest_snapshot as f64 / 1024.0,
            mib(self.snapshots_held)
        )?;
        if let Some(fl) = &self.flows {
            writeln!(
                f,
                "  flow store           {} records and {} windows ({} s of every port's connections): {:.1} MiB held, against a budget of {:.0} MiB",
                fl.records,
                fl.windows,
                fl.seconds,
                mib(fl.held),
                mib(fl.budget)
            )?;
        }
        Ok(())
    }
}

/// The bytes the program holds now, as the allocator counts them.
fn allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}

/// The synthetic cluster as the store would give it: each object's body without the
/// server-assigned fields.
fn stored(changes: Vec<Change>) -> Result<Vec<StoredObject>, BenchError> {
    let now = chrono::Utc::now();
    let mut out = Vec::with_capacity(changes.len());
    for (n, change) in changes.into_iter().enumerate() {
        let mut resource = match change {
            Change::UpsertProject(p) => Resource::Project(p),
            Change::UpsertPort(p) => Resource::Port(p),
            Change::UpsertGroup(g) => Resource::SecurityGroup(g),
            Change::UpsertClusterPolicy(p) => Resource::ClusterPolicy(p),
            _ => continue,
        };
        let id = resource.id().ok_or_else(|| other("a synthetic object without an id"))?;
        resource.clear_meta();
        // (Resource serialises as the object it holds, as the store writes a body.)
        let body = serde_json::to_string(&resource).map_err(other)?;
        out.push(StoredObject {
            id,
            kind: resource.kind(),
            revision: n as i64 + 1,
            created_at: now,
            updated_at: now,
            body,
        });
    }
    Ok(out)
}

/// What the flow store is fed: `seconds` of every port taking `per_port_minute` new
/// connections a minute (begun, ended five seconds later, a DNS query every other one) and
/// each node's 15-second windows, with a store of `budget` bytes.
#[derive(Debug, Clone, Copy)]
pub struct FlowLoad {
    pub seconds: usize,
    pub per_port_minute: f64,
    pub budget: usize,
}

pub fn run(
    shape: &synthetic::Shape,
    cluster_policies: usize,
    flow_load: Option<FlowLoad>,
) -> Result<MemoryReport, BenchError> {
    let description = format!(
        "{} namespaces, {} pods, {} policies on {} nodes{}",
        shape.namespaces,
        shape.namespaces * shape.pods_per_namespace,
        shape.namespaces * 3,
        shape.nodes,
        if cluster_policies > 0 {
            format!(", {cluster_policies} admin and baseline policies each")
        } else {
            String::new()
        }
    );
    let changes: Vec<Change> =
        synthetic::cluster(shape).into_iter().chain(synthetic::cluster_policies(cluster_policies, false)).collect();
    let objects = stored(changes)?;
    let stored_text = objects.iter().map(|o| o.body.len()).sum();
    let revision = objects.len() as i64;

    let before = allocated();
    let started = Instant::now();
    let cache = Arc::new(weft_api::cache::ObjectCache::default());
    let mut feed = cache.feed();
    let mut compiler = Compiler::new();
    feed.take(&Event::Reset);
    let decode = |o: &StoredObject| o.decode().ok().and_then(Change::upsert);
    let mut cache_bytes = 0;
    for chunk in objects.chunks(1000) {
        // The server hands each chunk to both, the compiler with the objects decoded.
        let event = Event::Snapshot(chunk.to_vec());
        let at = allocated();
        feed.take(&event);
        cache_bytes += allocated().saturating_sub(at);
        compiler.load(0, chunk.iter().filter_map(decode));
    }
    feed.take(&Event::Loaded { revision, included: &BTreeSet::new() });
    compiler.load(revision, []);
    let load = started.elapsed();
    let loaded = allocated().saturating_sub(before);

    let mut snapshots = 0;
    let mut snapshot_bytes = 0;
    let mut largest_snapshot = 0;
    let nodes: Vec<String> = compiler.nodes().map(str::to_string).collect();
    let encoder = weft_proto::SnapshotEncoder::default();
    let at = allocated();
    let mut in_flight = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let messages = encoder.encode(revision, &compiler.span(node), weft_control::MESSAGE_BYTES);
        let bytes: usize = messages.iter().map(prost::Message::encoded_len).sum();
        snapshots += 1;
        snapshot_bytes += bytes;
        largest_snapshot = largest_snapshot.max(bytes);
        in_flight.push(messages);
    }
    let snapshots_held = allocated().saturating_sub(at);
    drop(in_flight);

    let flows = flow_load.map(|load| flow_store(&compiler, load));

    let mut parts = vec![("API object cache".to_string(), cache_bytes)];
    drop(feed);
    drop(cache);
    for (name, part) in compiler.into_parts() {
        let at = allocated();
        drop(part);
        parts.push((format!("compiler: {name}"), at.saturating_sub(allocated())));
    }
    Ok(MemoryReport {
        description,
        objects: objects.len(),
        stored_text,
        parts,
        load,
        snapshots,
        snapshot_bytes,
        largest_snapshot,
        snapshots_held,
        loaded,
        flows,
    })
}

/// Feeds a flow store as [`FlowLoad`] says and counts what it holds then.
fn flow_store(compiler: &Compiler, load: FlowLoad) -> FlowStoreFigures {
    use crate::fanout::{LocalPort, connection_record};
    use weft_proto::v1;
    let mut by_node: std::collections::BTreeMap<String, Vec<LocalPort>> = Default::default();
    for (id, port) in compiler.cluster().ports() {
        let (Some(node), Some(ip)) = (port.node.as_deref(), port.ips.first()) else { continue };
        let local = LocalPort { id: id.to_string(), address: weft_proto::encode_address(ip), allowed_by: None };
        by_node.entry(node.to_string()).or_default().push(local);
    }
    let at = allocated();
    let log = weft_control::flows::FlowLog::new(load.budget);
    let (mut records, mut windows) = (0, 0);
    let start = crate::fanout::now_ms() / 15_000 * 15_000;
    let mut owed: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut next_id = 0u32;
    for second in 0..load.seconds {
        // Simulated time: the store keys windows by their own times, and records by theirs.
        let now = start + second as i64 * 1_000;
        for (node, ports) in &by_node {
            let mut report = v1::FlowReport::default();
            let due = owed.entry(node.as_str()).or_default();
            *due += ports.len() as f64 * load.per_port_minute / 60.0;
            let mut n = 0usize;
            while *due >= 1.0 {
                *due -= 1.0;
                let local = &ports[n % ports.len()];
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                n += 1;
                for (ended, at_ms) in [(false, now), (true, now + 5_000)] {
                    let remote = vec![10, 255, (id >> 8) as u8, id as u8];
                    report.connections.push(connection_record(local, id, remote, at_ms, ended));
                }
                if id.is_multiple_of(2) {
                    report.dns.push(v1::DnsRecord {
                        port: local.id.clone(),
                        server: vec![10, 96, 0, 10],
                        name: format!("svc-{}.bench.svc.cluster.local", id % 100),
                        qtype: 1,
                        at_ms: now,
                        src_port: Some(40_000 + id % 20_000),
                    });
                }
            }
            if (now + 1_000) % 15_000 == 0 {
                let aggregates = ports
                    .iter()
                    .map(|local| v1::FlowAggregate {
                        port: local.id.clone(),
                        ingress: true,
                        remote: vec![10, 255, 0, 0],
                        protocol: 6,
                        service: Some(8080),
                        started: 1,
                        ended: 1,
                        ..Default::default()
                    })
                    .collect();
                report.windows.push(v1::FlowWindow {
                    start_ms: now + 1_000 - 15_000,
                    end_ms: now + 1_000,
                    closed: true,
                    aggregates,
                    ..Default::default()
                });
                windows += 1;
            }
            records += report.connections.len() + report.dns.len();
            log.take(node, report, compiler);
        }
        drop(log.due());
        drop(log.minutes_due());
    }
    let held = allocated().saturating_sub(at);
    drop(log);
    FlowStoreFigures { budget: load.budget, held, seconds: load.seconds, records, windows }
}
