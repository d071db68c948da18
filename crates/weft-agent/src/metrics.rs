//! Prometheus metrics of the agent: how long applies take, what is in force, and — read from
//! the kernel when scraped — the table's size and each port's default-drop counter.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weft_compiler::NodeSpan;

use crate::nft::TableStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    /// `delta` (one update on top of the last) or `full` (a snapshot, or at start).
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PortLabels {
    /// `project/name`.
    port: String,
    direction: &'static str,
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    apply_seconds: Family<ApplyLabels, Histogram>,
    apply_failures: Counter,
    revision: Gauge,
    connected: Gauge,
    ports: Gauge,
    kernel_rules: Gauge,
    kernel_chains: Gauge,
    kernel_sets: Gauge,
    kernel_set_elements: Gauge,
    dropped: Family<PortLabels, Gauge>,
    denied_samples: Counter,
    denied_samples_lost: Counter,
    connections: Counter,
    connection_events_lost: Counter,
    /// The port chains' names (`pi-<id>`, `pe-<id>`) by the id's hex, to the port's name.
    names: RwLock<BTreeMap<String, String>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut m = AgentMetrics {
            registry: Registry::with_prefix("weft_agent"),
            apply_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 16))),
            apply_failures: Counter::default(),
            revision: Gauge::default(),
            connected: Gauge::default(),
            ports: Gauge::default(),
            kernel_rules: Gauge::default(),
            kernel_chains: Gauge::default(),
            kernel_sets: Gauge::default(),
            kernel_set_elements: Gauge::default(),
            dropped: Family::default(),
            denied_samples: Counter::default(),
            denied_samples_lost: Counter::default(),
            connections: Counter::default(),
            connection_events_lost: Counter::default(),
            names: RwLock::default(),
        };
        let r = &mut m.registry;
        r.register("apply_seconds", "Time to put an update into the datapath", m.apply_seconds.clone());
        r.register("apply_failures", "Updates the datapath refused", m.apply_failures.clone());
        r.register("revision", "The revision of the span in force", m.revision.clone());
        r.register("connected", "Whether a stream to a controller is up and synced", m.connected.clone());
        r.register("ports", "Local ports in the span", m.ports.clone());
        r.register("kernel_rules", "Rules in weft's nftables table", m.kernel_rules.clone());
        r.register("kernel_chains", "Chains in weft's nftables table", m.kernel_chains.clone());
        r.register("kernel_sets", "Sets and maps in weft's nftables table", m.kernel_sets.clone());
        r.register("kernel_set_elements", "Elements of those sets and maps", m.kernel_set_elements.clone());
        r.register(
            "port_dropped_packets",
            "Packets a port's default drop rule dropped (the kernel's counter: it restarts when the \
             port's chain is made again)",
            m.dropped.clone(),
        );
        r.register(
            "denied_samples",
            "Denied packets sampled (at most 20 a second per port and direction; the drop counters count them all)",
            m.denied_samples.clone(),
        );
        r.register(
            "denied_samples_lost",
            "Times the kernel dropped denied samples because the agent's socket was full",
            m.denied_samples_lost.clone(),
        );
        r.register(
            "connections",
            "Connections of local ports heard from conntrack when they began",
            m.connections.clone(),
        );
        r.register(
            "connection_events_lost",
            "Times the kernel dropped conntrack events because the agent's socket was full",
            m.connection_events_lost.clone(),
        );
        m
    }
}

impl AgentMetrics {
    pub(crate) fn applied(&self, full: bool, took: Duration, revision: i64, span: &NodeSpan) {
        let kind = if full { "full" } else { "delta" };
        self.apply_seconds.get_or_create(&ApplyLabels { kind }).observe(took.as_secs_f64());
        self.revision.set(revision);
        self.ports.set(span.ports.len() as i64);
        let names = span.ports.iter().map(|(id, p)| (id.simple().to_string(), format!("{}/{}", p.project, p.name)));
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names.collect();
    }

    pub(crate) fn denied_sampled(&self) {
        self.denied_samples.inc();
    }

    pub(crate) fn denied_samples_lost(&self) {
        self.denied_samples_lost.inc();
    }

    pub(crate) fn connections_heard(&self, count: u64) {
        self.connections.inc_by(count);
    }

    pub(crate) fn connection_events_lost(&self) {
        self.connection_events_lost.inc();
    }

    pub(crate) fn failed(&self) {
        self.apply_failures.inc();
    }

    pub(crate) fn connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    /// The metrics in the text format, with the kernel's figures taken from `table` (read
    /// over netlink, [`crate::nft::table_stats`]; `None` when there is no table).
    pub fn render(&self, table: Option<&TableStats>) -> String {
        self.read_table(table);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    fn read_table(&self, table: Option<&TableStats>) {
        let empty = TableStats::default();
        let table = table.unwrap_or(&empty);
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let mut dropped: BTreeMap<PortLabels, i64> = BTreeMap::new();
        for (chain, packets) in &table.drops {
            let (direction, id) = match chain.split_once('-') {
                Some(("pi", id)) => ("ingress", id),
                Some(("pe", id)) => ("egress", id),
                _ => continue,
            };
            if let Some(port) = names.get(id) {
                *dropped.entry(PortLabels { port: port.clone(), direction }).or_default() +=
                    i64::try_from(*packets).unwrap_or(i64::MAX);
            }
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.kernel_rules.set(count(table.rules));
        self.kernel_chains.set(count(table.chains));
        self.kernel_sets.set(count(table.sets));
        self.kernel_set_elements.set(count(table.elements));
        self.dropped.clear();
        for (labels, packets) in dropped {
            self.dropped.get_or_create(&labels).set(packets);
        }
    }
}
