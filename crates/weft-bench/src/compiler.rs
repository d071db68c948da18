//! `weft bench compiler`: the ACL compiler on a synthetic cluster — time to compile it all and
//! the memory it takes.

use std::time::{Duration, Instant};

use weft_compiler::synthetic;
pub use weft_compiler::synthetic::Shape;
use weft_compiler::{Cluster, compile};

#[derive(Debug, Clone)]
pub enum Workload {
    /// The realistic shape of DESIGN.md §8 at a given size.
    Realistic(Shape),
    /// One namespace, many pods, many policies that each select every pod.
    Dense { pods: usize, policies: usize, nodes: usize },
}

#[derive(Debug)]
pub struct CompilerReport {
    pub description: String,
    pub changes: usize,
    pub load: Duration,
    pub compile: Duration,
    pub nodes: usize,
    pub ports: usize,
    pub groups_per_node: f64,
    pub distinct_sets: usize,
    pub set_members: usize,
    pub rss_before_mib: f64,
    pub peak_rss_mib: f64,
}

pub fn run(workload: &Workload) -> CompilerReport {
    let (description, changes) = match workload {
        Workload::Realistic(shape) => (
            format!(
                "{} namespaces, {} pods, {} policies, {} nodes",
                shape.namespaces,
                shape.namespaces * shape.pods_per_namespace,
                shape.namespaces * 3,
                shape.nodes
            ),
            synthetic::cluster(shape),
        ),
        Workload::Dense { pods, policies, nodes } => (
            format!("dense: 1 namespace, {pods} pods, {policies} policies selecting every pod, {nodes} nodes"),
            synthetic::dense(*pods, *policies, *nodes),
        ),
    };
    let count = changes.len();
    let started = Instant::now();
    let mut cluster = Cluster::new();
    for (rev, change) in changes.into_iter().enumerate() {
        cluster.apply(rev as i64 + 1, change);
    }
    let load = started.elapsed();
    let (rss_before_mib, _) = crate::rss_mib(None);
    let started = Instant::now();
    let compiled = compile(&cluster);
    let compile_time = started.elapsed();
    let (_, peak_rss_mib) = crate::rss_mib(None);
    let ports: usize = compiled.spans.values().map(|s| s.ports.len()).sum();
    let groups: usize = compiled.spans.values().map(|s| s.groups.len()).sum();
    let mut distinct = std::collections::BTreeMap::new();
    for span in compiled.spans.values() {
        for (id, set) in span.sets.iter() {
            distinct.entry(*id).or_insert_with(|| match &set.members {
                weft_compiler::compiled::SetMembers::Addresses(a) => a.len(),
                weft_compiler::compiled::SetMembers::Prefixes(p) => p.len(),
                weft_compiler::compiled::SetMembers::Pairs(p) => p.len(),
            });
        }
    }
    CompilerReport {
        description,
        changes: count,
        load,
        compile: compile_time,
        nodes: compiled.spans.len(),
        ports,
        groups_per_node: groups as f64 / compiled.spans.len().max(1) as f64,
        distinct_sets: distinct.len(),
        set_members: distinct.values().sum(),
        rss_before_mib,
        peak_rss_mib,
    }
}

impl std::fmt::Display for CompilerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "weft bench compiler: {}", self.description)?;
        writeln!(
            f,
            "  input                {} changes, applied in {:.0} ms",
            self.changes,
            self.load.as_secs_f64() * 1e3
        )?;
        writeln!(f, "  full compile         {:.0} ms", self.compile.as_secs_f64() * 1e3)?;
        writeln!(
            f,
            "  memory               {:.0} MiB before compiling, {:.0} MiB peak (process)",
            self.rss_before_mib, self.peak_rss_mib
        )?;
        writeln!(
            f,
            "  output               {} nodes, {} ports, {:.1} groups per node, {} distinct sets with {} members",
            self.nodes, self.ports, self.groups_per_node, self.distinct_sets, self.set_members
        )
    }
}

/// Time and output of one kind of change, over `samples` changes.
#[derive(Debug)]
pub struct ChangeFigures {
    pub kind: &'static str,
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    /// Serialized deltas (JSON, shared set changes once) per change, on average.
    pub bytes: usize,
    /// Nodes that received a delta, on average.
    pub nodes: f64,
}

/// The incremental compiler on a realistic cluster: loading it, then the cost of each kind of
/// change.
#[derive(Debug)]
pub struct IncrementalReport {
    pub load: Duration,
    pub rss_after_load_mib: f64,
    pub changes: Vec<ChangeFigures>,
}

impl std::fmt::Display for IncrementalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  incremental load     {:.0} ms, {:.0} MiB (process) after loading",
            self.load.as_secs_f64() * 1e3,
            self.rss_after_load_mib
        )?;
        writeln!(f, "  per change:")?;
        for figures in &self.changes {
            write!(f, "{figures}")?;
        }
        Ok(())
    }
}

/// Per-change cost on a realistic cluster: pod added, relabelled, deleted, policy added, rule
/// changed, and a policy whose namespaceSelector no other policy uses (its projects are found
/// by scanning every namespace).
pub fn incremental(shape: &Shape, samples: usize) -> IncrementalReport {
    use weft_compiler::{Change, Compiler};
    let mut compiler = Compiler::new();
    let input = synthetic::cluster(shape);
    let started = Instant::now();
    compiler.load(1, input);
    let load = started.elapsed();
    let rss_after_load_mib = crate::rss_mib(None).0;
    let pods = shape.namespaces * shape.pods_per_namespace;
    let mut revision = 1;
    let mut figures = Vec::new();
    let kinds: [&'static str; 7] = [
        "pod added",
        "pod relabelled",
        "pod deleted",
        "policy added",
        "rule changed",
        "new ns selector",
        "new all-ns sel.",
    ];
    for (k, kind) in kinds.into_iter().enumerate() {
        // Each all-namespace selector builds a set of every pod: a few samples say enough.
        let samples = if k == 6 { samples.min(20) } else { samples };
        let mut times = Vec::with_capacity(samples);
        let (mut bytes, mut nodes) = (0, 0);
        for i in 0..samples {
            let ns = (i * 7919 + k * 104_729) % shape.namespaces;
            let pod = (ns * shape.pods_per_namespace + i % shape.pods_per_namespace) % pods;
            let change = match k {
                0 => {
                    let mut p = compiler
                        .cluster()
                        .port(&synthetic::pod_id(pod))
                        .map(|p| p.to_port(uuid::Uuid::new_v4()))
                        .unwrap_or_default();
                    p.name = format!("new-{i}");
                    p.ips = vec![synthetic::pod_address(pods + 10 + k * samples + i)];
                    Change::UpsertPort(p)
                }
                1 => {
                    let id = synthetic::pod_id(pod);
                    let mut p = compiler.cluster().port(&id).map(|p| p.to_port(id)).unwrap_or_default();
                    let app = if p.labels.get("app").map(String::as_str) == Some("app0") { "app1" } else { "app0" };
                    p.labels.insert("app".into(), app.into());
                    Change::UpsertPort(p)
                }
                2 => Change::DeletePort(synthetic::pod_id(pod)),
                3 | 5 | 6 => {
                    let mut g = compiler
                        .cluster()
                        .group(&synthetic::policy_id(ns, 1))
                        .cloned()
                        .unwrap_or_else(|| weft_model::SecurityGroup::default_for(&format!("k8s-ns{ns}")));
                    g.id = Some(uuid::Uuid::new_v4());
                    g.name = format!("added-{i}");
                    for r in &mut g.rules {
                        r.id = Some(uuid::Uuid::new_v4());
                        // A namespaceSelector no other policy has: two namespaces by name, or
                        // (the costliest) every namespace, whose set is every pod.
                        if k >= 5 {
                            let selector = if k == 5 {
                                format!("kubernetes.io/metadata.name in (ns{ns}, ns{}, x{i})", ns + 1)
                            } else {
                                format!("team notin (x{i})")
                            };
                            r.remote = weft_model::Remote::Selector {
                                ports: weft_model::LabelSelector::default(),
                                projects: weft_model::LabelSelector::parse(&selector).ok(),
                            };
                        }
                    }
                    Change::UpsertGroup(g)
                }
                _ => {
                    let mut g = compiler
                        .cluster()
                        .group(&synthetic::policy_id(ns, 1))
                        .cloned()
                        .unwrap_or_else(|| weft_model::SecurityGroup::default_for(&format!("k8s-ns{ns}")));
                    if let Some(r) = g.rules.first_mut() {
                        r.ports = vec![weft_model::PortMatch::Single(8000 + i as i64)];
                    }
                    Change::UpsertGroup(g)
                }
            };
            revision += 1;
            let started = Instant::now();
            let deltas = compiler.apply(revision, [change]);
            times.push(started.elapsed());
            bytes += serde_json::to_vec(&deltas).map(|v| v.len()).unwrap_or(0);
            // (the deltas' shared set changes count once, as the controller encodes them once)
            nodes += deltas.audience().len();
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        figures.push(ChangeFigures {
            kind,
            samples,
            p50: at(0.5),
            p99: at(0.99),
            bytes: bytes / samples.max(1),
            nodes: nodes as f64 / samples.max(1) as f64,
        });
    }
    IncrementalReport { load, rss_after_load_mib, changes: figures }
}

impl std::fmt::Display for ChangeFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  {:<16} p50 {:>10.3} ms  p99 {:>10.3} ms  {:>8} bytes of deltas  {:>7.1} nodes  ({} samples)",
            self.kind,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.bytes,
            self.nodes,
            self.samples
        )
    }
}

/// The full compile with tiered policies (`per_tier` admin and as many baseline, issue 22's
/// shape: [`synthetic::cluster_policies`]) beside the compile without them, interleaved in one
/// run, the median of `runs` each.
#[derive(Debug)]
pub struct TieredReport {
    pub per_tier: usize,
    pub runs: usize,
    pub without: Duration,
    pub with: Duration,
    /// Tiered policies per port, on average, and per node's span.
    pub policies_per_port: f64,
    pub policies_per_node: f64,
}

pub fn tiered(shape: &Shape, per_tier: usize, runs: usize) -> TieredReport {
    let base = synthetic::cluster(shape);
    let mut plain = Cluster::new();
    let mut tiered = Cluster::new();
    for (rev, change) in base.into_iter().enumerate() {
        plain.apply(rev as i64 + 1, change.clone());
        tiered.apply(rev as i64 + 1, change);
    }
    for change in synthetic::cluster_policies(per_tier, false) {
        tiered.apply(tiered.revision() + 1, change);
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        std::hint::black_box(compile(&plain));
        without.push(started.elapsed());
        let started = Instant::now();
        last = Some(compile(&tiered));
        with.push(started.elapsed());
    }
    let compiled = last.unwrap_or_default();
    let ports: usize = compiled.spans.values().map(|s| s.ports.len()).sum();
    let listed: usize = compiled.spans.values().flat_map(|s| s.ports.values()).map(|p| p.policies.len()).sum();
    let per_node: usize = compiled.spans.values().map(|s| s.policies.len()).sum();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    TieredReport {
        per_tier,
        runs: runs.max(1),
        without: median(without),
        with: median(with),
        policies_per_port: listed as f64 / ports.max(1) as f64,
        policies_per_node: per_node as f64 / compiled.spans.len().max(1) as f64,
    }
}

impl std::fmt::Display for TieredReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "  tiered policies      {} admin + {} baseline: {:.1} per port, {:.1} per node's span",
            self.per_tier, self.per_tier, self.policies_per_port, self.policies_per_node
        )?;
        writeln!(
            f,
            "  full compile         {:.0} ms without them, {:.0} ms with them = {:.2}x (median of {})",
            ms(self.without),
            ms(self.with),
            ms(self.with) / ms(self.without).max(1e-9),
            self.runs
        )
    }
}
