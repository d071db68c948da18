//! `weft bench datapath`: the nftables datapath of one node, in network namespaces of the
//! bench's own (root): a full apply of a large span, one address-set member joining and
//! leaving, and the memory of a real `weft agent` process holding a node's span of a large
//! cluster.
//!
//! The large span comes from the realistic synthetic cluster (DESIGN.md §8), sized so that one
//! node holds `ports` ports, with policies of CIDR, port-range and selector rules added to the
//! namespaces of that node's pods until its span holds at least `rules` rules. The cluster is
//! 20 nodes, or `cluster_pods` pods over as many nodes as give the node its `ports` (110 ports
//! of a 150,000-pod cluster: Kubernetes' limits).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;
use weft_agent::nft::{self, Batch, NftDatapath, Ruleset};
use weft_agent::{Datapath, Saved, StateDir};
use weft_compiler::synthetic::{self, Shape};
use weft_compiler::{Change, Compiler, NodeSpan, SpanDelta};
use weft_model::{Port, SecurityGroup};

use crate::{BenchError, other};

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Local ports of the measured node.
    pub ports: usize,
    /// Rules (compiled, as the span holds them) at least in the measured node's span.
    pub rules: usize,
    /// Repetitions of each timed step; the report gives the median and the best.
    pub runs: usize,
    /// Namespaces of the cluster whose span the agent's memory is measured with (4 pods each,
    /// 1,000 nodes: 25,000 is Antrea's 100,000-pod benchmark, 100 ports per node).
    pub rss_namespaces: usize,
    /// The weft binary, started as the agent whose memory is measured.
    pub binary: PathBuf,
    /// Where to write the full apply's transaction (nft JSON), to run nft on by hand.
    pub dump: Option<PathBuf>,
    /// Tiered cluster policies selecting every port (half admin, half baseline), added to the
    /// span; the full apply without them is timed too (0: none).
    pub cluster_policies: usize,
    /// The measured node as one of a cluster of this many pods (4 a namespace), with as many
    /// nodes as give it `ports` ports; its span is also the one the agent's memory is measured
    /// with. None: a cluster of 20 nodes, and the memory with `rss_namespaces`.
    pub cluster_pods: Option<usize>,
}

/// Median and best of repeated timings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub median: Duration,
    pub best: Duration,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Timing {
        samples.sort();
        Timing { median: samples[samples.len() / 2], best: samples[0] }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ms median, {:.1} ms best", ms(self.median), ms(self.best))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug)]
pub struct DatapathReport {
    pub ports: usize,
    pub groups: usize,
    pub rules: usize,
    pub sets: usize,
    pub set_elements: usize,
    pub kernel_rules: usize,
    pub kernel_chains: usize,
    /// Render the span as a table (rules compiled to bytecode).
    pub render: Timing,
    /// Diff against an empty table and encode the netlink batch.
    pub encode: Timing,
    /// The kernel taking the encoded batch (one send, answered).
    pub kernel: Timing,
    /// `NftDatapath::apply` of the whole span on an empty namespace, as the agent does it.
    pub full_apply: Timing,
    /// With cluster policies: how many the span holds, and the full apply without them.
    pub tiered: Option<(usize, Timing)>,
    pub member_add: Timing,
    pub member_remove: Timing,
    pub member_commands: usize,
    /// The conntrack pass after a change that may revoke (the kernel walks its whole table).
    pub conntrack_pass: Timing,
    /// A member change recorded in the state dir as the agent does it (appended, synced)...
    pub state_append: Timing,
    /// ...and as it did before (the whole span rewritten, synced).
    pub state_rewrite: Timing,
    /// The whole span's size on disk.
    pub state_bytes: u64,
    pub rss: RssFigures,
}

#[derive(Debug)]
pub struct RssFigures {
    pub cluster_pods: usize,
    pub span_ports: usize,
    pub span_set_members: usize,
    pub rss_mib: f64,
    pub peak_mib: f64,
}

/// A network namespace of the bench's own, removed when dropped.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn create(what: &str) -> Result<Netns, BenchError> {
        let name = format!("wl-bench-{what}-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), BenchError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| BenchError::Other(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Other(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

pub(crate) const NODE: &str = "node-0";

/// The synthetic cluster sized so that `node-0` has `ports` ports, plus policies in the
/// namespaces of its pods that bring its span to at least `rules` rules: 20 nodes, or
/// `cluster_pods` pods over as many nodes as that takes.
pub(crate) fn heavy_node(ports: usize, rules: usize, cluster_pods: Option<usize>) -> Vec<Change> {
    let (namespaces, nodes) = match cluster_pods {
        Some(pods) => (pods.div_ceil(4), pods.div_ceil(ports.max(1))),
        None => (ports * 20 / 4, 20),
    };
    let shape = Shape { namespaces, pods_per_namespace: 4, nodes, ..Shape::antrea() };
    let mut changes = synthetic::cluster(&shape);
    let mut base = Compiler::new();
    base.load(1, changes.clone());
    let have = rule_count(&base.span(NODE));
    // Pods are placed round-robin: pod n is on node n % nodes.
    let local: Vec<usize> = (0..shape.namespaces).filter(|ns| (0..4).any(|p| (ns * 4 + p) % nodes == 0)).collect();
    let per_namespace = rules.saturating_sub(have).div_ceil(local.len().max(1));
    for (k, ns) in local.iter().enumerate() {
        let project = format!("k8s-ns{ns}");
        let rules: Vec<serde_json::Value> = (0..per_namespace)
            .map(|i| {
                let n = k * per_namespace + i;
                let (a, b) = ((n / 256) % 256, n % 256);
                match i % 4 {
                    // An ipBlock with an except, on one port.
                    0 => json!({"direction": "ingress", "protocol": "tcp", "ports": [1000 + i],
                        "remote": {"type": "cidr", "cidr": format!("172.{}.{a}.0/24", 16 + b % 16),
                                   "except": [format!("172.{}.{a}.128/25", 16 + b % 16)]}}),
                    // A port range from pods of the same namespace.
                    1 => {
                        json!({"direction": "ingress", "protocol": "tcp", "ports": [{"from": 2000 + i, "to": 2009 + i}],
                        "remote": {"type": "selector", "ports": {"matchLabels": {"app": "app1"}}}})
                    }
                    // UDP from a /32.
                    2 => json!({"direction": "ingress", "protocol": "udp", "ports": [3000 + i],
                        "remote": {"type": "cidr", "cidr": format!("198.18.{a}.{b}/32")}}),
                    // Egress to a prefix.
                    _ => json!({"direction": "egress", "protocol": "tcp", "ports": [443],
                        "remote": {"type": "cidr", "cidr": format!("100.{}.{a}.0/24", 64 + b % 64)}}),
                }
            })
            .collect();
        let mut group: SecurityGroup = serde_json::from_value(json!({
            "name": "allow-listed", "project": project, "selector": {}, "policy_types": ["ingress", "egress"],
            "rules": rules,
        }))
        .expect("a valid synthetic group");
        group.id = Some(Uuid::from_u64_pair(7, *ns as u64));
        for (i, r) in group.rules.iter_mut().enumerate() {
            r.id = Some(Uuid::from_u64_pair(8, (*ns * per_namespace + i) as u64));
        }
        changes.push(Change::UpsertGroup(group));
    }
    changes
}

/// The measured node's span (for profiling the render alone).
pub fn heavy_span(ports: usize, rules: usize) -> NodeSpan {
    let mut compiler = Compiler::new();
    compiler.load(1, heavy_node(ports, rules, None));
    compiler.span(NODE)
}

fn rule_count(span: &NodeSpan) -> usize {
    span.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum()
}

fn set_elements(span: &NodeSpan) -> usize {
    span.sets
        .values()
        .map(|s| match &s.members {
            weft_compiler::compiled::SetMembers::Addresses(a) => a.len(),
            weft_compiler::compiled::SetMembers::Prefixes(p) => p.len(),
            weft_compiler::compiled::SetMembers::Pairs(p) => p.len(),
        })
        .sum()
}

pub fn run_bench(config: &DatapathConfig) -> Result<DatapathReport, BenchError> {
    let runs = config.runs.max(1);
    let mut compiler = Compiler::new();
    let mut changes = heavy_node(config.ports, config.rules, config.cluster_pods);
    let without = (config.cluster_policies > 0).then(|| {
        let mut plain = Compiler::new();
        plain.load(1, changes.clone());
        plain.span(NODE)
    });
    let per_tier = config.cluster_policies / 2;
    changes.extend(synthetic::cluster_policies(per_tier, true));
    compiler.load(1, changes);
    let span = compiler.span(NODE);
    let rendered = nft::render(&span);

    let (mut render_times, mut encode_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let rendered = nft::render(&span);
        render_times.push(started.elapsed());
        let started = Instant::now();
        let batch = Batch::encode(&Ruleset::default().diff(&rendered)).map_err(BenchError::Other)?;
        encode_times.push(started.elapsed());
        std::hint::black_box(batch);
    }

    if let Some(path) = &config.dump {
        let commands = Ruleset::default().diff(&nft::render(&span));
        std::fs::write(path, nft::nft_input(&commands)).map_err(other)?;
    }
    let netns = Netns::create("apply")?;
    // The kernel's part alone: the encoded batch sent to an empty namespace.
    let batch = Batch::encode(&Ruleset::default().diff(&rendered)).map_err(BenchError::Other)?;
    let mut socket = nft::Socket::open(Some(&netns.0)).map_err(other)?;
    let mut kernel = Vec::new();
    for _ in 0..runs {
        nft::delete_table(Some(&netns.0)).map_err(other)?;
        let started = Instant::now();
        socket.send(&batch).map_err(|e| BenchError::Other(format!("the kernel refused the batch: {}", e.error)))?;
        kernel.push(started.elapsed());
    }
    let full_apply = |span: &NodeSpan| -> Result<Timing, BenchError> {
        let mut full = Vec::new();
        for _ in 0..runs {
            let mut datapath = NftDatapath::new(Some(netns.0.clone()));
            nft::delete_table(Some(&netns.0)).map_err(other)?;
            let started = Instant::now();
            datapath.apply(&NodeSpan::default(), span, None).map_err(other)?;
            full.push(started.elapsed());
            if !datapath.last.netlink {
                return Err(BenchError::Other("the full apply did not go over netlink".into()));
            }
        }
        Ok(Timing::of(full))
    };
    let tiered = match &without {
        Some(plain) => Some((span.policies.len(), full_apply(plain)?)),
        None => None,
    };
    let full = full_apply(&span)?;

    // One pod joining (and then leaving) a set node-0 uses: a pod labelled app=app0 in the
    // namespace of one of node-0's pods, placed on another node.
    let mut datapath = NftDatapath::new(Some(netns.0.clone()));
    datapath.apply(&NodeSpan::default(), &span, None).map_err(other)?;
    // Pod 0 is on node-0 (pods go round-robin), so namespace 0's sets are in its span.
    let local_ns = "k8s-ns0".to_string();
    let (mut adds, mut removes, mut member_commands) = (Vec::new(), Vec::new(), 0);
    let mut current = span.clone();
    // The state dir the agent keeps the span in: each update as the agent records it now (an
    // appended delta) and as it did before issue 17 (the whole span rewritten), same run.
    let state_path = std::env::temp_dir().join(format!("weft-bench-state-{}", std::process::id()));
    let state = StateDir::new(&state_path).map_err(other)?;
    state.save(&Saved { node: NODE.into(), revision: 1, span: span.clone() }).map_err(other)?;
    let span_bytes = std::fs::metadata(state_path.join("span.json")).map_err(other)?.len();
    let (mut appends, mut rewrites) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let id = Uuid::from_u64_pair(9, round as u64);
        let joining = Port {
            id: Some(id),
            name: format!("joining-{round}"),
            project: local_ns.clone(),
            labels: [("app".to_string(), "app0".to_string())].into(),
            node: Some("node-1".into()),
            ips: vec![std::net::IpAddr::from([10, 250, (round / 256) as u8, (round % 256) as u8])],
            security_groups: Some(vec![]),
            ..Default::default()
        };
        for (change, times) in [(Change::UpsertPort(joining), &mut adds), (Change::DeletePort(id), &mut removes)] {
            let revision = compiler.revision() + 1;
            let delta: SpanDelta = compiler.apply(revision, [change]).for_node(NODE);
            let mut next = current.clone();
            next.apply(&delta);
            member_commands = nft::delta_commands(&current, &next, &delta).len();
            let started = Instant::now();
            datapath.apply(&current, &next, Some(&delta)).map_err(other)?;
            times.push(started.elapsed());
            let saved = Saved { node: NODE.into(), revision, span: next.clone() };
            let started = Instant::now();
            state.append(&delta, &saved).map_err(other)?;
            appends.push(started.elapsed());
            let started = Instant::now();
            state.save(&saved).map_err(other)?;
            rewrites.push(started.elapsed());
            current = next;
        }
    }
    let _ = std::fs::remove_dir_all(&state_path);
    // The re-check of established connections that follows a change that may revoke.
    let mut socket = nft::Socket::open(Some(&netns.0)).map_err(other)?;
    let own = nft::node_addresses(Some(&netns.0)).map_err(other)?;
    let mut passes = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        nft::cut_revoked(&mut socket, &own, &current).map_err(other)?;
        passes.push(started.elapsed());
    }
    drop(netns);

    Ok(DatapathReport {
        ports: span.ports.len(),
        groups: span.groups.len(),
        rules: rule_count(&span),
        sets: span.sets.len(),
        set_elements: set_elements(&span),
        kernel_rules: rendered.chains.values().map(|c| c.rules.len()).sum(),
        kernel_chains: rendered.chains.len(),
        render: Timing::of(render_times),
        encode: Timing::of(encode_times),
        kernel: Timing::of(kernel),
        full_apply: full,
        tiered,
        member_add: Timing::of(adds),
        member_remove: Timing::of(removes),
        member_commands,
        conntrack_pass: Timing::of(passes),
        state_append: Timing::of(appends),
        state_rewrite: Timing::of(rewrites),
        state_bytes: span_bytes,
        rss: agent_rss(config, &span)?,
    })
}

/// A real agent process started from a state dir holding node-0's span of the large cluster
/// (no controller answers it): its memory once it enforces that span. With `cluster_pods`,
/// that span is the measured one.
fn agent_rss(config: &DatapathConfig, measured: &NodeSpan) -> Result<RssFigures, BenchError> {
    let (span, cluster_pods) = match config.cluster_pods {
        Some(pods) => (measured.clone(), pods),
        None => {
            let shape = Shape { namespaces: config.rss_namespaces, ..Shape::antrea() };
            let mut compiler = Compiler::new();
            compiler.load(1, synthetic::cluster(&shape));
            (compiler.span(NODE), shape.namespaces * shape.pods_per_namespace)
        }
    };
    let dir = std::env::temp_dir().join(format!("weft-bench-agent-{}", std::process::id()));
    let result = measure_agent(&config.binary, &dir, &span);
    let _ = std::fs::remove_dir_all(&dir);
    let (rss_mib, peak_mib) = result?;
    Ok(RssFigures {
        cluster_pods,
        span_ports: span.ports.len(),
        span_set_members: set_elements(&span),
        rss_mib,
        peak_mib,
    })
}

fn measure_agent(binary: &Path, dir: &Path, span: &NodeSpan) -> Result<(f64, f64), BenchError> {
    let state = StateDir::new(dir.join("state")).map_err(other)?;
    state.save(&Saved { node: NODE.into(), revision: 1, span: span.clone() }).map_err(other)?;
    // Never checked: nothing listens where the agent is sent.
    state.save_credential("weftn_bench").map_err(other)?;
    let netns = Netns::create("agent")?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).map_err(other)?;
    let mut agent = Command::new(binary)
        .args([
            "agent",
            "--node",
            NODE,
            "--controller",
            "http://127.0.0.1:9",
            "--datapath",
            "nftables",
            "--no-cni",
            "--netns",
        ])
        .arg(&netns.0)
        .arg("--state-dir")
        .arg(state.path())
        .env("WEFT_LOG", "info")
        .env_remove("WEFT_NODE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(other)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("enforcing the saved span") {
            break Ok(crate::rss_mib(Some(agent.id())));
        }
        if text.contains("cannot enforce") || Instant::now() > deadline || matches!(agent.try_wait(), Ok(Some(_))) {
            break Err(other(format!("the agent did not enforce its saved span: {text}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    outcome
}

impl std::fmt::Display for DatapathReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "weft bench datapath: nftables (netlink batches) in a network namespace of its own")?;
        writeln!(
            f,
            "  span                 {} ports, {} groups, {} rules, {} sets with {} elements",
            self.ports, self.groups, self.rules, self.sets, self.set_elements
        )?;
        writeln!(f, "  kernel table         {} rules in {} chains", self.kernel_rules, self.kernel_chains)?;
        if let Some((policies, without)) = &self.tiered {
            writeln!(
                f,
                "  tiered policies      {policies} selecting every port; the full apply without them: {without}"
            )?;
        }
        writeln!(f, "  full apply           {}   (target <= 100 ms), of which:", self.full_apply)?;
        writeln!(f, "    render             {}", self.render)?;
        writeln!(f, "    diff + encode      {}", self.encode)?;
        writeln!(f, "    kernel             {}", self.kernel)?;
        writeln!(
            f,
            "  member joins         {}   (target <= 5 ms; {} commands, over netlink)",
            self.member_add, self.member_commands
        )?;
        writeln!(f, "  member leaves        {}", self.member_remove)?;
        writeln!(
            f,
            "  conntrack re-check   {}   (follows a change that may revoke; an empty table)",
            self.conntrack_pass
        )?;
        writeln!(
            f,
            "  state dir, an update appended {}; the whole span rewritten {} ({} KiB): {:.0}x",
            self.state_append,
            self.state_rewrite,
            self.state_bytes / 1024,
            ms(self.state_rewrite.median) / ms(self.state_append.median).max(1e-6)
        )?;
        writeln!(
            f,
            "  agent memory         {:.1} MiB RSS, {:.1} MiB peak: {} ports of a {}-pod cluster, {} set members   (target <= 30 MiB)",
            self.rss.rss_mib, self.rss.peak_mib, self.rss.span_ports, self.rss.cluster_pods, self.rss.span_set_members
        )
    }
}
