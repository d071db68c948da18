//! What the nodes' datapaths saw (DESIGN.md §10), as the agents report it on their `Flows`
//! stream: connections begun and ended with what allowed them, denied samples and DNS queries. A record is kept only when its port is on the node
//! that reports it, so a node cannot speak for another's pods; the rest are counted as
//! refused. The records are held in memory, the newest up to a capacity, the oldest dropped
//! and counted: the controller's live view, which the API and the aggregation read.

mod join;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;
use weft_compiler::Compiler;
use weft_model::Direction;
use weft_model::flow::{
    DnsQuestion, Flow, FlowCounters, FlowEndpoint, FlowGroup, FlowKind, FlowRule, FlowTieredRule, SideDecision, Verdict,
};
use weft_proto::v1;
use weft_store::flows::MinuteRow;

/// A node's window, and its entries as rollup rows (enriched when it came).
#[derive(Debug)]
struct Stored {
    window: v1::FlowWindow,
    rows: Vec<MinuteRow>,
    /// What it takes of memory, estimated.
    bytes: usize,
}

impl Stored {
    fn new(rows: Vec<MinuteRow>, window: v1::FlowWindow) -> Stored {
        use std::mem::size_of;
        // Each entry's strings: a port, a group and a rule id (36 bytes each), an address.
        let aggregates = window.aggregates.len() * (size_of::<v1::FlowAggregate>() + 3 * 36 + 16);
        let drops = window.drops.len() * (size_of::<v1::PortDrops>() + 36);
        let rows_bytes = rows.len() * (size_of::<MinuteRow>() + 2 * 36 + 40);
        Stored { bytes: size_of::<Stored>() + 64 + aggregates + drops + rows_bytes, window, rows }
    }
}

/// The nodes' windows, by (start, node), and the memory they take (estimated).
#[derive(Debug, Default)]
struct Windows {
    map: BTreeMap<(i64, String), Stored>,
    bytes: usize,
}

impl Windows {
    fn pop_first(&mut self) {
        if let Some((_, w)) = self.map.pop_first() {
            self.bytes -= w.bytes;
        }
    }
}

/// What a record takes of memory, estimated: the record, its node's name and a DNS name.
const RECORD_BYTES: usize = std::mem::size_of::<FlowRecord>() + 64;

const MINUTE_MS: i64 = 60_000;

/// What a rollup row is summed by: all but its counts.
type RowKey = (
    uuid::Uuid,
    bool,
    Option<String>,
    i32,
    Option<i32>,
    bool,
    Option<Uuid>,
    Option<Uuid>,
    bool,
    Option<Uuid>,
    Option<i32>,
);

fn row_key(r: &MinuteRow) -> RowKey {
    let rule = (r.grp, r.rule, r.isolated, r.policy, r.policy_rule);
    (r.port, r.ingress, r.remote.clone(), r.protocol, r.service, r.denied, rule.0, rule.1, rule.2, rule.3, rule.4)
}

fn add(sum: &mut MinuteRow, r: &MinuteRow) {
    sum.started += r.started;
    sum.ended += r.ended;
    sum.packets_sent += r.packets_sent;
    sum.bytes_sent += r.bytes_sent;
    sum.packets_received += r.packets_received;
    sum.bytes_received += r.bytes_received;
    sum.sampled += r.sampled;
    sum.dropped += r.dropped;
}

/// A window's entries as rollup rows of its minute: each with its port's project and its
/// remote address's port, when it is one (a port gone since is the remote's address only).
fn rows(node: &str, w: &v1::FlowWindow, compiler: &Compiler, names: &Names) -> Vec<MinuteRow> {
    let minute_ms = w.start_ms - w.start_ms.rem_euclid(MINUTE_MS);
    let minute = chrono::DateTime::from_timestamp_millis(minute_ms).unwrap_or_default();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let base = |port: &str, ingress: bool| -> Option<MinuteRow> {
        let id = Uuid::parse_str(port).ok()?;
        let project = compiler.cluster().port(&id)?.project.clone();
        // A row of drops only, unless an aggregate's say otherwise.
        Some(MinuteRow { denied: true, isolated: true, ..MinuteRow::empty(minute, node, id, &project, ingress) })
    };
    let mut out = Vec::new();
    for a in &w.aggregates {
        let (Some(mut row), Ok(remote)) = (base(&a.port, a.ingress), weft_proto::parse_address(&a.remote)) else {
            continue;
        };
        let end = endpoint(compiler, remote);
        row.remote = Some(remote.to_string());
        row.remote_port = end.port;
        row.remote_project = end.project;
        row.protocol = i32::try_from(a.protocol).unwrap_or(0);
        row.service = a.service.and_then(|s| i32::try_from(s).ok());
        row.denied = a.denied;
        row.grp = Uuid::parse_str(&a.group).ok();
        row.rule = Uuid::parse_str(&a.rule).ok();
        row.isolated = a.isolated;
        if let Some(by) = a.tiered.as_ref().and_then(tiered_ref) {
            // Named as its records were when they came, else as the compiler has it now.
            let noted = names.tiered.get(&(by.policy, a.ingress, by.rule)).cloned();
            row.policy = Some(by.policy);
            row.policy_rule = Some(i32::from(by.rule));
            row.tiered = Some(weft_store::flows::Json(noted.unwrap_or_else(|| by.named(compiler, a.ingress))));
        }
        row.started = count(a.started);
        row.ended = count(a.ended);
        row.packets_sent = count(a.packets_sent);
        row.bytes_sent = count(a.bytes_sent);
        row.packets_received = count(a.packets_received);
        row.bytes_received = count(a.bytes_received);
        row.sampled = count(a.sampled);
        named(compiler, names, &mut row);
        out.push(row);
    }
    for d in &w.drops {
        if let Some(mut row) = base(&d.port, d.ingress) {
            row.dropped = count(d.counted);
            named(compiler, names, &mut row);
            out.push(row);
        }
    }
    out
}

/// What decided the records heard lately, by name as the compiler had them when the records
/// came: a window is rolled up when it closes, up to 15 s later, when the policy that decided
/// may be gone; its rows name what decided then.
#[derive(Debug, Default)]
struct Names {
    /// By (group, rule): the group's name and the rule's origin.
    rules: HashMap<(Uuid, Uuid), (String, Option<String>)>,
    /// By (port, ingress): the groups that isolated it, joined by ", ".
    isolating: HashMap<(Uuid, bool), String>,
    /// By (policy, ingress, rule): a tiered policy's rule.
    tiered: HashMap<(Uuid, bool, u16), FlowTieredRule>,
}

/// Names kept at most, each way; past it they start again (a window rolled up then asks the
/// compiler).
const NAMES_KEPT: usize = 100_000;

impl Names {
    /// Notes what decided `record` by the names its flow half gave it (no second lookup).
    fn note(&mut self, record: &FlowRecord, half: &Flow) {
        let side = |ingress: bool| if ingress { half.ingress.as_ref() } else { half.egress.as_ref() };
        let tiered = match &record.what {
            Observed::Connection(Connection { allowed_by: AllowedBy::Tiered(by), ingress, .. })
            | Observed::Denied { tiered: Some(by), ingress, .. } => Some((by.policy, *ingress, by.rule)),
            _ => None,
        };
        if let Some(key) = tiered {
            if let Some(SideDecision::Tiered { rule }) = side(key.1) {
                if self.tiered.len() >= NAMES_KEPT {
                    self.tiered.clear();
                }
                self.tiered.insert(key, rule.clone());
            }
            return;
        }
        match &record.what {
            Observed::Connection(c @ Connection { allowed_by: AllowedBy::Rule { group, rule }, .. }) => {
                if let Some(SideDecision::Allowed { rule: r }) = side(c.ingress) {
                    if self.rules.len() >= NAMES_KEPT {
                        self.rules.clear();
                    }
                    self.rules
                        .insert((*group, *rule), (r.group_name.clone(), r.origin.as_ref().map(|o| o.to_string())));
                }
            }
            Observed::Denied { ingress, .. } => {
                if let Some(SideDecision::Denied { isolated_by }) = side(*ingress) {
                    if self.isolating.len() >= NAMES_KEPT {
                        self.isolating.clear();
                    }
                    self.isolating.insert((record.port, *ingress), joined(isolated_by));
                }
            }
            _ => {}
        }
    }
}

/// Group names as a rollup row keeps them.
fn joined(groups: &[FlowGroup]) -> String {
    groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn isolating_names(compiler: &Compiler, port: Uuid, ingress: bool) -> String {
    match isolated_by(compiler, port, ingress) {
        SideDecision::Denied { isolated_by } => joined(&isolated_by),
        _ => String::new(),
    }
}

/// Writes into a rollup row what decided it, by name: as the records of it named it when they
/// came ([`Names`]), else as the compiler has it now. A past minute then says what decided
/// then, whatever the policy became.
fn named(compiler: &Compiler, names: &Names, row: &mut MinuteRow) {
    // A tiered policy's row is named where it is made ([`rows`]).
    if row.tiered.is_some() {
        return;
    }
    if row.denied {
        let noted = names.isolating.get(&(row.port, row.ingress)).cloned();
        row.isolated_by = Some(noted.unwrap_or_else(|| isolating_names(compiler, row.port, row.ingress)));
    } else if let (Some(group), Some(rule)) = (row.grp, row.rule) {
        if let Some((name, origin)) = names.rules.get(&(group, rule)) {
            row.group_name = Some(name.clone());
            row.origin = origin.clone();
        } else if let SideDecision::Allowed { rule } = flow_rule(compiler, group, rule) {
            row.group_name = Some(rule.group_name);
            row.origin = rule.origin.map(|o| o.to_string());
        }
    }
}

/// How long the nodes' windows are kept in memory.
const WINDOWS_KEPT_MS: i64 = 3_600_000;
/// The longest window a node may send (agents send 15 s).
const WINDOW_MAX_MS: i64 = 60_000;

/// A record a node reported, after the controller checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub node: String,
    pub port: Uuid,
    /// When the agent read it, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub what: Observed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A packet the port's policy dropped: its groups (they isolate it and no rule allows the
    /// packet), or a tiered policy's deny rule (policy, rule).
    Denied {
        ingress: bool,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        ports: Option<(u16, u16)>,
        icmp: Option<(u8, u8)>,
        tiered: Option<TieredBy>,
    },
    /// A DNS query the port sent (from its source port).
    Dns { server: IpAddr, name: String, qtype: u16, src_port: Option<u16> },
    /// A connection the port made (`ingress` false) or took, as it began or ended.
    Connection(Connection),
}

/// A connection one of its local sides reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub ingress: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
    pub icmp: Option<(u8, u8)>,
    pub allowed_by: AllowedBy,
    pub ended: bool,
    /// Conntrack's id of it on the node.
    pub id: u32,
    /// Packets and bytes from its originator, then from its responder (when it ended).
    pub counters: Option<[u64; 4]>,
}

/// What let a connection through on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedBy {
    /// No group isolates the port that way.
    Open,
    Rule {
        group: Uuid,
        rule: Uuid,
    },
    /// The port is isolated, and its node cannot tell by which rule (the connection began
    /// before the port was isolated).
    Unknown,
    /// A tiered policy's rule: accepted, or (baseline) passed.
    Tiered(TieredBy),
}

/// A tiered policy's rule that decided, as the node's span had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TieredBy {
    pub policy: Uuid,
    pub rule: u16,
    pub tier: weft_model::Tier,
    pub action: weft_model::PolicyAction,
}

impl TieredBy {
    /// What the node said decided, named as the compiler has the policy now: with its rule's
    /// name when the rule is still in that place with that action, else by the policy's id
    /// (and name, while it exists) and the rule's place, as enforced then.
    fn named(&self, compiler: &Compiler, ingress: bool) -> FlowTieredRule {
        let policy = compiler.cluster().cluster_policy(&self.policy);
        let rule = policy.and_then(|p| {
            let rules = if ingress { &p.ingress } else { &p.egress };
            rules.get(usize::from(self.rule)).filter(|r| r.action == self.action && p.tier == self.tier)
        });
        FlowTieredRule {
            tier: self.tier,
            action: self.action,
            policy: Some(self.policy),
            policy_name: policy.map(|p| p.name.clone()),
            rule: Some(self.rule),
            rule_name: rule.map(|r| r.name.clone()),
        }
    }
}

/// The newest records, up to a capacity, and the nodes' windows of the last hour.
#[derive(Debug)]
pub struct FlowLog {
    records: Mutex<VecDeque<FlowRecord>>,
    /// By (window start, node): the last a node sent of each window (DESIGN.md §10). A
    /// window sent again (an agent that reconnected) replaces what was there: nothing is
    /// counted twice.
    windows: Mutex<Windows>,
    /// What the windows may take of memory (estimated); past it the oldest go, counted.
    windows_budget: usize,
    pub windows_evicted: AtomicU64,
    /// The (minute, node) whose rollup changed since it was last written.
    dirty: Mutex<std::collections::BTreeSet<(i64, String)>>,
    /// Records as flows, waiting for their other half ([`join`]) to be written.
    joiner: Mutex<join::Joiner>,
    /// What decided the records heard lately, by name as it was then.
    names: Mutex<Names>,
    capacity: usize,
    /// Records dropped to make room, and records refused (about another node's ports, or
    /// malformed).
    pub overflowed: AtomicU64,
    pub refused: AtomicU64,
    /// Flows the flow log would not take.
    pub unwritten: AtomicU64,
}

impl FlowLog {
    /// A log that keeps, by estimate, at most `memory` bytes: half for the newest records,
    /// half for the nodes' windows of the last hour.
    pub fn new(memory: usize) -> FlowLog {
        let capacity = (memory / 2 / RECORD_BYTES).max(1);
        FlowLog {
            records: Mutex::new(VecDeque::new()),
            windows: Mutex::new(Windows::default()),
            windows_budget: memory / 2,
            windows_evicted: AtomicU64::new(0),
            dirty: Mutex::new(std::collections::BTreeSet::new()),
            joiner: Mutex::new(join::Joiner::default()),
            names: Mutex::new(Names::default()),
            capacity: capacity.max(1),
            overflowed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
        }
    }

    fn push(&self, mut new: Vec<FlowRecord>) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        // The newest `capacity` of what is held and what comes.
        let over = (records.len() + new.len()).saturating_sub(self.capacity);
        let from_new = over.saturating_sub(records.len());
        if from_new > 0 {
            new.drain(..from_new);
        }
        records.drain(..over - from_new);
        if over > 0 {
            self.overflowed.fetch_add(over as u64, Ordering::Relaxed);
        }
        // Grown by doubling as a VecDeque does, but never past the capacity: the budget
        // counts the capacity's records, not twice as many (issue 23 measured 1.44 times the
        // budget held without this).
        let needed = records.len() + new.len();
        if needed > records.capacity() {
            let grown = (records.capacity() * 2).max(1024).clamp(needed, self.capacity.max(needed));
            let held = records.len();
            records.reserve_exact(grown - held);
        }
        records.extend(new);
    }

    /// The records kept, oldest first, that `keep` keeps.
    pub fn records(&self, keep: impl Fn(&FlowRecord) -> bool) -> Vec<FlowRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().filter(|r| keep(r)).cloned().collect()
    }

    /// The flows to write now: joined, or alone once their other half is not coming. Those
    /// dropped since because the writer was behind are counted as unwritten.
    pub fn due(&self) -> Vec<Flow> {
        let (due, dropped) = self.joiner.lock().unwrap_or_else(|e| e.into_inner()).due(now_ms());
        if dropped > 0 {
            self.unwritten.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(dropped, "the flow log's writer is behind: flows dropped");
        }
        due
    }

    /// The windows kept whose start is at or after `since_ms`, by (start, node).
    pub fn windows(&self, since_ms: i64) -> Vec<((i64, String), v1::FlowWindow)> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.map.range((since_ms, String::new())..).map(|(k, w)| (k.clone(), w.window.clone())).collect()
    }

    /// The rollups of the (minute, node) whose windows changed since the last call: each
    /// the sum of the node's windows in the minute, whole.
    pub fn minutes_due(&self) -> Vec<(i64, String, Vec<MinuteRow>)> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        dirty
            .into_iter()
            .map(|(minute, node)| {
                let mut sums: BTreeMap<RowKey, MinuteRow> = BTreeMap::new();
                let in_minute = windows
                    .map
                    .range((minute, String::new())..(minute + MINUTE_MS, String::new()))
                    .filter(|((_, n), _)| *n == node);
                for row in in_minute.flat_map(|(_, w)| &w.rows) {
                    match sums.entry(row_key(row)) {
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(row.clone());
                        }
                        std::collections::btree_map::Entry::Occupied(mut e) => add(e.get_mut(), row),
                    }
                }
                (minute, node, sums.into_values().collect())
            })
            .collect()
    }

    /// Keeps `node`'s windows, each replacing what the node sent of it before, with only
    /// what is about the node's own ports (`ours`); forgets windows older than an hour.
    /// What was left out, counted.
    fn keep_windows(
        &self,
        node: &str,
        windows: Vec<v1::FlowWindow>,
        ours: impl Fn(&str) -> bool,
        compiler: &Compiler,
    ) -> u64 {
        let mut refused = 0u64;
        let mut kept = Vec::new();
        for mut w in windows {
            if w.end_ms <= w.start_ms || w.end_ms - w.start_ms > WINDOW_MAX_MS {
                refused += 1;
                continue;
            }
            let before = w.aggregates.len() + w.drops.len();
            w.aggregates.retain(|a| ours(&a.port));
            w.drops.retain(|d| ours(&d.port));
            refused += (before - w.aggregates.len() - w.drops.len()) as u64;
            kept.push(w);
        }
        let stored: Vec<Stored> = {
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            kept.into_iter().map(|w| Stored::new(rows(node, &w, compiler, &names), w)).collect()
        };
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            for w in &stored {
                dirty.insert((w.window.start_ms - w.window.start_ms.rem_euclid(MINUTE_MS), node.to_string()));
            }
        }
        self.store_windows(node, stored);
        refused
    }

    /// Keeps `node`'s windows, each replacing the one it sent before; forgets what is older
    /// than the hour before the newest window, then, past the memory the windows may take, the
    /// oldest (counted).
    fn store_windows(&self, node: &str, stored: Vec<Stored>) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let newest = stored.iter().map(|w| w.window.start_ms).max().unwrap_or(0);
        for w in stored {
            windows.bytes += w.bytes;
            if let Some(old) = windows.map.insert((w.window.start_ms, node.to_string()), w) {
                windows.bytes -= old.bytes;
            }
        }
        // The hour the controller keeps, by the newest window any node sent.
        let newest = newest.max(windows.map.keys().next_back().map_or(0, |(start, _)| *start));
        let oldest = newest - WINDOWS_KEPT_MS;
        while windows.map.first_key_value().is_some_and(|((start, _), _)| *start < oldest) {
            windows.pop_first();
        }
        let mut evicted = 0u64;
        while windows.bytes > self.windows_budget && windows.map.len() > 1 {
            windows.pop_first();
            evicted += 1;
        }
        if evicted > 0 {
            let before = self.windows_evicted.fetch_add(evicted, Ordering::Relaxed);
            if (before + evicted).is_power_of_two() || before == 0 {
                tracing::warn!(evicted = before + evicted, "flow windows past --flow-memory: the oldest were dropped");
            }
        }
    }

    /// The memory the log takes, estimated: (records, windows) in bytes.
    pub fn memory(&self) -> (usize, usize) {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner()).len() * RECORD_BYTES;
        (records, self.windows.lock().unwrap_or_else(|e| e.into_inner()).bytes)
    }

    /// Checks a report from `node` against what the compiler knows of the ports and keeps
    /// what is about the node's own ports; (kept, refused).
    pub fn take(&self, node: &str, report: v1::FlowReport, compiler: &Compiler) -> (u64, u64) {
        let ours = |port: &str| {
            let id = Uuid::parse_str(port).ok()?;
            let on_node = compiler.cluster().port(&id)?.node.as_deref() == Some(node);
            on_node.then_some(id)
        };
        let mut kept = Vec::new();
        let mut refused = 0u64;
        for d in report.denied {
            match ours(&d.port).zip(denied(&d)) {
                Some((port, what)) => kept.push(FlowRecord { node: node.to_string(), port, at_ms: d.at_ms, what }),
                None => refused += 1,
            }
        }
        for q in report.dns {
            let server = weft_proto::parse_address(&q.server).ok();
            let sane = q.name.len() <= 253 && q.name.bytes().all(|b| b.is_ascii_graphic());
            match (ours(&q.port), server, u16::try_from(q.qtype)) {
                (Some(port), Some(server), Ok(qtype)) if sane => kept.push(FlowRecord {
                    node: node.to_string(),
                    port,
                    at_ms: q.at_ms,
                    what: Observed::Dns {
                        server,
                        name: q.name,
                        qtype,
                        src_port: q.src_port.and_then(|p| u16::try_from(p).ok()),
                    },
                }),
                _ => refused += 1,
            }
        }
        for c in report.connections {
            match ours(&c.port).zip(connection(&c)) {
                Some((port, what)) => kept.push(FlowRecord {
                    node: node.to_string(),
                    port,
                    at_ms: c.at_ms,
                    what: Observed::Connection(what),
                }),
                None => refused += 1,
            }
        }
        let halves: Vec<(&FlowRecord, Flow)> = kept.iter().filter_map(|r| Some((r, half(compiler, r)?))).collect();
        {
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            for (record, half) in &halves {
                names.note(record, half);
            }
        }
        refused += self.keep_windows(node, report.windows, |port| ours(port).is_some(), compiler);
        let accepted = kept.len() as u64;
        {
            let now = now_ms();
            let mut joiner = self.joiner.lock().unwrap_or_else(|e| e.into_inner());
            for (_, half) in halves {
                joiner.add(half, now);
            }
        }
        self.push(kept);
        self.refused.fetch_add(refused, Ordering::Relaxed);
        (accepted, refused)
    }
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// An end of a flow, as the compiler knows it: the port holding the address, if any.
fn endpoint(compiler: &Compiler, address: IpAddr) -> FlowEndpoint {
    let port = compiler.port_holding(&address).and_then(|id| Some((id, compiler.cluster().port(&id)?)));
    match port {
        Some((id, p)) => FlowEndpoint {
            address,
            port: Some(id),
            project: Some(p.project.to_string()),
            name: Some(p.name.to_string()),
            labels: weft_model::Labels::clone(&p.labels),
            node: p.node.as_deref().map(str::to_string),
        },
        None => FlowEndpoint::outside(address),
    }
}

/// A group's rule, with the group's name and the rule's origin as the compiler has them now.
fn flow_rule(compiler: &Compiler, group: Uuid, rule: Uuid) -> SideDecision {
    let Some(g) = compiler.cluster().group(&group) else { return SideDecision::AllowedUnknown };
    let origin = g.rules.iter().find(|r| r.id == Some(rule)).and_then(|r| r.origin.clone());
    SideDecision::Allowed {
        rule: FlowRule { group, project: g.project.clone(), group_name: g.name.clone(), rule, origin },
    }
}

/// A tiered rule as a record names it; None when malformed.
fn tiered_ref(r: &v1::TieredRuleRef) -> Option<TieredBy> {
    Some(TieredBy {
        policy: Uuid::parse_str(&r.policy).ok()?,
        rule: u16::try_from(r.rule).ok()?,
        tier: weft_proto::parse_tier(r.tier)?,
        action: weft_proto::parse_action(r.action)?,
    })
}

/// The groups that isolate `port` one way: none of their rules allowed what it dropped.
fn isolated_by(compiler: &Compiler, port: Uuid, ingress: bool) -> SideDecision {
    let cluster = compiler.cluster();
    let groups = cluster.port(&port).map_or_else(Vec::new, |p| {
        let direction = if ingress { Direction::Ingress } else { Direction::Egress };
        cluster.isolating(&cluster.applied(p), direction)
    });
    let mut isolated_by: Vec<FlowGroup> = groups
        .iter()
        .filter_map(|id| {
            let g = cluster.group(id)?;
            Some(FlowGroup { id: *id, project: g.project.clone(), name: g.name.clone() })
        })
        .collect();
    isolated_by.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
    SideDecision::Denied { isolated_by }
}

/// A record as one half of a flow: the side its node decided, the ends as the compiler knows
/// them. A packet the ingress dropped passed its source's egress, which a port of the same
/// node reports no other half for (its connection was never confirmed).
fn half(compiler: &Compiler, record: &FlowRecord) -> Option<Flow> {
    let mut flow =
        match &record.what {
            Observed::Connection(c) => {
                let decision = match c.allowed_by {
                    AllowedBy::Open => SideDecision::Open,
                    AllowedBy::Rule { group, rule } => flow_rule(compiler, group, rule),
                    AllowedBy::Unknown => SideDecision::AllowedUnknown,
                    AllowedBy::Tiered(by) => SideDecision::Tiered { rule: by.named(compiler, c.ingress) },
                };
                Flow {
                    kind: FlowKind::Connection,
                    verdict: Verdict::Allowed,
                    ended: c.ended,
                    egress: (!c.ingress).then(|| decision.clone()),
                    ingress: c.ingress.then_some(decision),
                    counters: c.counters.map(|[packets_sent, bytes_sent, packets_received, bytes_received]| {
                        FlowCounters { packets_sent, bytes_sent, packets_received, bytes_received }
                    }),
                    ..blank(compiler, record, c.src, c.dst, c.protocol, c.ports, c.icmp)
                }
            }
            Observed::Denied { ingress, src, dst, protocol, ports, icmp, tiered } => {
                let mut flow = Flow {
                    kind: FlowKind::Denied,
                    verdict: Verdict::Denied,
                    ..blank(compiler, record, *src, *dst, *protocol, *ports, *icmp)
                };
                let decision = match tiered {
                    Some(by) => SideDecision::Tiered { rule: by.named(compiler, *ingress) },
                    None => isolated_by(compiler, record.port, *ingress),
                };
                if *ingress {
                    flow.ingress = Some(decision);
                    if flow.src.node.as_deref() == Some(record.node.as_str()) {
                        flow.egress = Some(SideDecision::AllowedUnknown);
                    }
                } else {
                    flow.egress = Some(decision);
                }
                flow
            }
            Observed::Dns { server, name, qtype, src_port } => {
                let port = compiler.cluster().port(&record.port)?;
                let src = *port.ips.iter().find(|a| a.is_ipv4() == server.is_ipv4())?;
                Flow {
                    kind: FlowKind::Dns,
                    verdict: Verdict::Allowed,
                    dns: Some(DnsQuestion { name: name.clone(), qtype: *qtype }),
                    ..blank(compiler, record, src, *server, 17, src_port.map(|s| (s, 53)), None)
                }
            }
        };
    flow.nodes = vec![record.node.clone()];
    Some(flow)
}

/// A flow with its ends, protocol and ports, and nothing decided yet.
fn blank(
    compiler: &Compiler,
    record: &FlowRecord,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    ports: Option<(u16, u16)>,
    icmp: Option<(u8, u8)>,
) -> Flow {
    Flow {
        id: 0,
        at_ms: record.at_ms,
        kind: FlowKind::Connection,
        verdict: Verdict::Allowed,
        ended: false,
        protocol,
        src: endpoint(compiler, src),
        dst: endpoint(compiler, dst),
        src_port: ports.map(|(s, _)| s),
        dst_port: ports.map(|(_, d)| d),
        icmp_type: icmp.map(|(t, _)| t),
        icmp_code: icmp.map(|(_, c)| c),
        egress: None,
        ingress: None,
        dns: None,
        counters: None,
        nodes: Vec::new(),
    }
}

/// How often the minutes whose windows changed are written.
const ROLLUP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the flows `log` makes to the flow log every half second and the minutes whose
/// windows changed every 5 s, and deletes flows older than `retention` and rollups older than
/// `rollup_retention` every minute, until `shutdown`. A write that fails is logged and its
/// flows dropped (they are live records; the windows hold the counts).
pub async fn write(
    log: std::sync::Arc<FlowLog>,
    store: weft_store::Store,
    (retention, rollup_retention): (std::time::Duration, std::time::Duration),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut pruned = tokio::time::Instant::now();
    let mut rolled = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let due = log.due();
        if let Err(e) = store.insert_flows(&due).await {
            log.unwritten.fetch_add(due.len() as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, flows = due.len(), "cannot write flows; dropped");
        }
        if rolled.elapsed() >= ROLLUP_EVERY {
            rolled = tokio::time::Instant::now();
            for (minute_ms, node, rows) in log.minutes_due() {
                let minute = chrono::DateTime::from_timestamp_millis(minute_ms).unwrap_or_default();
                if let Err(e) = store.replace_flow_minute(minute, &node, &rows).await {
                    tracing::warn!(error = %e, node, %minute, "cannot write a minute's flow rollup");
                }
            }
        }
        if pruned.elapsed() >= std::time::Duration::from_secs(60) {
            pruned = tokio::time::Instant::now();
            let ago = |d: std::time::Duration| {
                chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
            };
            match store.prune_flows(ago(retention)).await {
                Ok(n) => tracing::debug!(deleted = n, "old flows deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old flows"),
            }
            if let Err(e) = store.prune_flow_minutes(ago(rollup_retention)).await {
                tracing::warn!(error = %e, "cannot delete old flow rollups");
            }
        }
    }
}

fn connection(c: &v1::ConnectionRecord) -> Option<Connection> {
    let byte = |v: Option<u32>| v.map(u8::try_from).transpose().ok();
    let port = |v: Option<u32>| v.map(u16::try_from).transpose().ok();
    let allowed_by = match (c.group.is_empty(), c.rule.is_empty(), c.isolated, &c.tiered) {
        // A record that says a deny let it through is malformed.
        (true, true, _, Some(t)) => {
            AllowedBy::Tiered(tiered_ref(t).filter(|by| by.action != weft_model::PolicyAction::Deny)?)
        }
        (true, true, false, None) => AllowedBy::Open,
        (true, true, true, None) => AllowedBy::Unknown,
        _ => AllowedBy::Rule { group: Uuid::parse_str(&c.group).ok()?, rule: Uuid::parse_str(&c.rule).ok()? },
    };
    Some(Connection {
        ingress: c.ingress,
        src: weft_proto::parse_address(&c.src).ok()?,
        dst: weft_proto::parse_address(&c.dst).ok()?,
        protocol: u8::try_from(c.protocol).ok()?,
        ports: port(c.src_port)?.zip(port(c.dst_port)?),
        icmp: byte(c.icmp_type)?.zip(byte(c.icmp_code)?),
        allowed_by,
        ended: c.ended,
        id: c.id,
        counters: c.counters.map(|n| [n.packets_sent, n.bytes_sent, n.packets_received, n.bytes_received]),
    })
}

fn denied(d: &v1::DeniedRecord) -> Option<Observed> {
    let byte = |v: Option<u32>| v.map(u8::try_from).transpose().ok();
    let port = |v: Option<u32>| v.map(u16::try_from).transpose().ok();
    let ports = match (port(d.src_port)?, port(d.dst_port)?) {
        (Some(s), Some(t)) => Some((s, t)),
        _ => None,
    };
    let icmp = match (byte(d.icmp_type)?, byte(d.icmp_code)?) {
        (Some(t), Some(c)) => Some((t, c)),
        _ => None,
    };
    // A tiered drop is a deny rule's, or the record is malformed.
    let tiered = match &d.tiered {
        Some(t) => Some(tiered_ref(t).filter(|by| by.action == weft_model::PolicyAction::Deny)?),
        None => None,
    };
    Some(Observed::Denied {
        ingress: d.ingress,
        src: weft_proto::parse_address(&d.src).ok()?,
        dst: weft_proto::parse_address(&d.dst).ok()?,
        protocol: u8::try_from(d.protocol).ok()?,
        ports,
        icmp,
        tiered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start_ms: i64, entries: usize) -> v1::FlowWindow {
        v1::FlowWindow {
            start_ms,
            end_ms: start_ms + 15_000,
            closed: true,
            aggregates: vec![v1::FlowAggregate::default(); entries],
            ..Default::default()
        }
    }

    #[test]
    fn records_past_their_capacity_go_oldest_first_and_never_take_more_room() {
        let log = FlowLog::new(2 * 1000 * RECORD_BYTES);
        assert_eq!(log.capacity, 1000);
        let record = |n: i64| FlowRecord {
            node: "n1".into(),
            port: Uuid::nil(),
            at_ms: n,
            what: Observed::Dns { server: [10, 0, 0, 1].into(), name: "a.example".into(), qtype: 1, src_port: None },
        };
        for batch in 0..30 {
            log.push((batch * 70..(batch + 1) * 70).map(record).collect());
            assert!(log.records.lock().unwrap().capacity() <= 1000, "room for more than the capacity");
        }
        // One batch larger than the capacity: its newest.
        log.push((2100..3300).map(record).collect());
        let kept = log.records(|_| true);
        assert_eq!(kept.len(), 1000);
        assert_eq!((kept[0].at_ms, kept[999].at_ms), (2300, 3299), "the newest, in order");
        assert_eq!(log.overflowed.load(Ordering::Relaxed), 3300 - 1000);
    }

    #[test]
    fn windows_past_their_memory_go_oldest_first_and_are_counted() {
        let budget = 200_000;
        let log = FlowLog::new(2 * budget);
        for i in 0..20 {
            log.store_windows("n1", vec![Stored::new(vec![], window(i * 15_000, 200))]);
        }
        let (_, bytes) = log.memory();
        assert!(bytes <= budget, "{bytes} bytes kept");
        let kept = log.windows(0);
        assert!(kept.len() < 20, "{} windows kept", kept.len());
        assert_eq!(kept.last().map(|((start, _), _)| *start), Some(19 * 15_000), "the newest stay");
        assert_eq!(log.windows_evicted.load(Ordering::Relaxed) as usize, 20 - kept.len());
        // A window sent again replaces itself: no more memory.
        log.store_windows("n1", vec![Stored::new(vec![], window(19 * 15_000, 200))]);
        assert_eq!(log.memory().1, bytes);
        // Older than the hour before the newest: gone, memory or not.
        let roomy = FlowLog::new(1 << 30);
        roomy.store_windows("n1", vec![Stored::new(vec![], window(0, 1))]);
        roomy.store_windows("n2", vec![Stored::new(vec![], window(WINDOWS_KEPT_MS + 15_000, 1))]);
        assert_eq!(roomy.windows(0).len(), 1);
        assert_eq!(roomy.windows_evicted.load(Ordering::Relaxed), 0, "the hour is no eviction");
    }
}
