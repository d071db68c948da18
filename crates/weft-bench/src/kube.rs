//! kube-manager at scale: a synthetic cluster in the fake Kubernetes API server (served over
//! HTTP on loopback), an in-process `weft server` on a scratch database, and kube-manager
//! between them. Figures: the initial sync (start to the config service holding the whole
//! translation), the latency from a policy's watch event to its write committed in the
//! config service, and a burst of pod changes taken in batches.
//!
//! By default the pods' addresses come as with weft's CNI (DESIGN.md §9): kube-manager has a
//! pod network, the cluster's Nodes carry no podCIDR, and a pod's port is written as soon as
//! the pod is scheduled, weft claiming each node's block and its IPAM giving the port its
//! addresses; the initial sync includes all of it. `--addresses status` measures the other
//! way, pods whose addresses another plugin already gave (`status.podIPs`).

use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use tokio::sync::watch;
use weft_client::Client;
use weft_kube::translate::PodNetwork;
use weft_kube::{ClusterConfig, Options, Progress};
use weft_model::{NodeBlocks, Port, SecurityGroup};
use weft_store::admin::ScratchDatabase;
use weft_testkit::kube_api::FakeKube;

use crate::{BenchError, other, start_server};

#[derive(Debug, Clone)]
pub struct KubeBenchConfig {
    pub database_url: String,
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    /// Policy changes timed one at a time.
    pub changes: usize,
    /// Pods changed at once for the burst figure.
    pub burst: usize,
    /// Nodes the pods are spread over (round-robin).
    pub nodes: usize,
    /// Where pods' addresses come from.
    pub addresses: Addresses,
}

/// Where the synthetic pods' addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// weft's IPAM, from per-node blocks of this pod network (IPv4, /24 blocks), as with
    /// weft-cni: the pods are scheduled and have no address yet.
    Ipam,
    /// The pods' `status.podIPs`, given by another plugin; kube-manager has no pod network.
    Status,
}

/// The pod network of the IPAM runs: 65,536 /24 blocks, room for 5,000 nodes and more.
const POD_NETWORK: &str = "10.0.0.0/8";

#[derive(Debug)]
pub struct KubeReport {
    pub config: KubeBenchConfig,
    pub initial_sync: Duration,
    pub objects: usize,
    pub change_p50: Duration,
    pub change_p99: Duration,
    pub change_max: Duration,
    pub burst: Duration,
    pub burst_batches: u64,
}

fn namespace(i: usize) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": format!("ns{i}"),
        "labels": {"team": format!("t{}", i % 50), "env": if i.is_multiple_of(2) { "prod" } else { "dev" }}}}))
    .unwrap_or_default()
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({"metadata": {"name": format!("node{i}")}, "spec": {}})).unwrap_or_default()
}

/// Pod `i` of namespace `ns`: the `n`th pod of the cluster, on node `n % nodes`.
fn pod(config: &KubeBenchConfig, ns: usize, i: usize, n: usize, generation: usize) -> Pod {
    let status = match config.addresses {
        // Scheduled, not wired yet: weft's IPAM gives the address.
        Addresses::Ipam => json!({"phase": "Pending"}),
        Addresses::Status => {
            let ip = format!("10.{}.{}.{}", 64 + n / 65_536, (n / 256) % 256, n % 256);
            json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
        }
    };
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod{i}"), "namespace": format!("ns{ns}"),
            "labels": {"app": format!("app{}", i % 4), "tier": if i.is_multiple_of(2) { "front" } else { "back" },
                "generation": generation.to_string()}},
        "spec": {"nodeName": format!("node{}", n % config.nodes.max(1)), "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}]},
        "status": status
    }))
    .unwrap_or_default()
}

fn policy(ns: usize, i: usize, port: u16) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": format!("allow-app{i}"), "namespace": format!("ns{ns}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app{}", i % 4)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"tier": "front"}}},
                {"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 50)}}}],
                "ports": [{"port": port}, {"port": "metrics"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.255.0.0/16"]}}]}]
        }
    }))
    .unwrap_or_default()
}

/// Waits until `done` holds for kube-manager's progress.
async fn until(
    progress: &mut watch::Receiver<Progress>,
    done: impl Fn(&Progress) -> bool,
) -> Result<Progress, BenchError> {
    let p = tokio::time::timeout(Duration::from_secs(300), progress.wait_for(done))
        .await
        .map_err(|_| other("kube-manager did not get there in 5 minutes"))?
        .map_err(other)?;
    Ok(p.clone())
}

pub async fn run(config: KubeBenchConfig) -> Result<KubeReport, BenchError> {
    let db = ScratchDatabase::create(&config.database_url, "weft_bench_kube").await?;
    let result = run_on(&config, &db).await;
    db.drop_database().await;
    result
}

async fn run_on(config: &KubeBenchConfig, db: &ScratchDatabase) -> Result<KubeReport, BenchError> {
    let (addr, token, stop) = start_server(&db.url).await?;
    let weft = Client::new(&format!("http://{addr}"), Some(token), None)?;
    let fake = FakeKube::new();
    let pods_per_namespace = config.pods.div_ceil(config.namespaces.max(1));
    let policies_per_namespace = config.policies.div_ceil(config.namespaces.max(1));
    for ns in 0..config.namespaces {
        fake.apply(&namespace(ns));
    }
    for i in 0..config.nodes {
        fake.apply(&node(i));
    }
    let mut pods = 0;
    'pods: for ns in 0..config.namespaces {
        for i in 0..pods_per_namespace {
            if pods == config.pods {
                break 'pods;
            }
            fake.apply(&pod(config, ns, i, pods, 0));
            pods += 1;
        }
    }
    let mut policies = Vec::new();
    'policies: for ns in 0..config.namespaces {
        for i in 0..policies_per_namespace {
            if policies.len() == config.policies {
                break 'policies;
            }
            fake.apply(&policy(ns, i, 8080));
            policies.push((ns, i));
        }
    }
    let (api_addr, api) = fake.serve().await.map_err(other)?;
    let kube_config = kube::Config::new(format!("http://{api_addr}").parse().map_err(other)?);
    let kube = kube::Client::try_from(kube_config).map_err(other)?;
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let pod_network = (config.addresses == Addresses::Ipam).then(|| PodNetwork {
        subnets: vec![POD_NETWORK.parse().expect("a CIDR")],
        blocks: NodeBlocks { ipv4: 24, ipv6: 80 },
    });
    let cluster = ClusterConfig {
        options: Options { pod_network, ..Options::default() },
        lease: None,
        resync: Duration::from_secs(3_600),
        instance: "bench".into(),
        progress: Some(progress_tx),
        metrics: None,
    };
    let (stop_manager, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let manager = tokio::spawn(weft_kube::cluster::run(kube, weft.clone(), cluster, async move {
        let _ = stopped.await;
    }));
    until(&mut progress, |p| p.full >= 1).await?;
    let initial_sync = started.elapsed();
    let everything = Default::default();
    let listed = weft.list_all::<Port>(&everything).await?;
    let ports = listed.len();
    let groups = weft.list_all::<SecurityGroup>(&everything).await?.len();
    if ports != pods {
        return Err(other(format!("the config service holds {ports} ports, not {pods}")));
    }
    if let Some(bare) = listed.iter().find(|p| p.ips.is_empty()) {
        return Err(other(format!("port {}/{} has no address", bare.project, bare.name)));
    }
    drop(listed);

    // Changes paced 20 a second, as policy edits come; a burst is the figure after.
    let mut latencies = Vec::with_capacity(config.changes);
    for n in 0..config.changes {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (ns, i) = policies[n * 7919 % policies.len()];
        let before = progress.borrow().partial;
        let at = Instant::now();
        fake.apply(&policy(ns, i, 8081 + (n % 1000) as u16));
        until(&mut progress, |p| p.partial > before).await?;
        latencies.push(at.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied();

    let before = progress.borrow().clone();
    let burst = config.burst.min(pods);
    let at = Instant::now();
    for n in 0..burst {
        fake.apply(&pod(config, n / pods_per_namespace, n % pods_per_namespace, n, 1));
    }
    let events = before.events + burst as u64;
    let after = until(&mut progress, |p| p.events >= events && p.partial > before.partial).await?;
    let burst_time = at.elapsed();

    let _ = stop_manager.send(());
    let _ = manager.await;
    api.abort();
    let _ = stop.send(());
    Ok(KubeReport {
        config: config.clone(),
        initial_sync,
        objects: ports + groups + config.namespaces,
        change_p50: pick(0.5).unwrap_or_default(),
        change_p99: pick(0.99).unwrap_or_default(),
        change_max: latencies.last().copied().unwrap_or_default(),
        burst: burst_time,
        burst_batches: after.partial - before.partial,
    })
}

impl fmt::Display for KubeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        let c = &self.config;
        writeln!(
            f,
            "kube-manager: {} namespaces, {} pods on {} nodes, {} policies (fake API server over HTTP, weft server in process)",
            c.namespaces, c.pods, c.nodes, c.policies
        )?;
        match c.addresses {
            Addresses::Ipam => writeln!(
                f,
                "  addresses: weft's IPAM on the pod network {POD_NETWORK}, a /24 block per node claimed as pods come (as with weft-cni)"
            )?,
            Addresses::Status => writeln!(f, "  addresses: the pods' status.podIPs (no pod network)")?,
        }
        writeln!(
            f,
            "{:<58} {:>9.2} s   ({} objects in the config service)",
            "initial sync (start to everything written)",
            self.initial_sync.as_secs_f64(),
            self.objects
        )?;
        writeln!(
            f,
            "{:<58} {:>9.1} ms p50 {:>7.1} ms p99 {:>7.1} ms max",
            format!("policy change: watch event to committed ({} at 20/s)", c.changes),
            ms(self.change_p50),
            ms(self.change_p99),
            ms(self.change_max)
        )?;
        writeln!(
            f,
            "{:<58} {:>9.1} ms       ({} batches)",
            format!("{} pods changed at once: all committed", c.burst),
            ms(self.burst),
            self.burst_batches
        )
    }
}
