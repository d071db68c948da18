//! `weft kube-manager`: Kubernetes objects become weft's, through the REST API: watched in a
//! cluster (kubeconfig or in-cluster configuration, leader election through a Lease), or
//! read from a directory of manifests (`--manifests`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weft_kube::Options;

use crate::common::{ClientArgs, Output};

#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Read Kubernetes manifests (Namespaces, Pods, NetworkPolicies, ClusterNetworkPolicies;
    /// YAML or JSON, several documents a file) from this directory instead of a cluster.
    #[arg(long, env = "WEFT_KUBE_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Reconcile once, print the revision at which the config service matched, and exit.
    #[arg(long, requires = "manifests")]
    pub once: bool,
    /// The cluster's name: the owner of what this kube-manager writes.
    #[arg(long, env = "WEFT_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
    /// A namespace `ns` becomes the project `<prefix>ns`.
    #[arg(long, env = "WEFT_PROJECT_PREFIX", default_value = "k8s-")]
    pub project_prefix: String,
    /// The cluster's kubeconfig; without it, the in-cluster configuration or `KUBECONFIG`
    /// or ~/.kube/config, as kubectl finds them.
    #[arg(long, env = "WEFT_KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Write without electing a leader: only when exactly one kube-manager runs per cluster.
    #[arg(long, env = "WEFT_NO_LEADER_ELECTION", conflicts_with = "manifests")]
    pub no_leader_election: bool,
    /// The namespace of the leader-election Lease [default: this pod's namespace, else
    /// `default`].
    #[arg(long, env = "WEFT_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// The Lease's name [default: weft-kube-manager-<cluster name>].
    #[arg(long, env = "WEFT_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long the lease holds without renewal; another kube-manager takes over after it.
    #[arg(long, env = "WEFT_LEASE_DURATION", default_value = "15s", value_parser = crate::common::parse_duration)]
    pub lease_duration: Duration,
    /// This candidate's name in the Lease and in Events [default: POD_NAME, else
    /// hostname-pid].
    #[arg(long, env = "WEFT_IDENTITY")]
    pub identity: Option<String>,
    /// Reconcile the whole cluster this often even when nothing says so (puts right what
    /// someone changed behind kube-manager's back).
    #[arg(long, env = "WEFT_RESYNC", default_value = "5m", value_parser = crate::common::parse_duration)]
    pub resync: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (watch events, reconciliations,
    /// errors, leadership).
    #[arg(long, env = "WEFT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The cluster's pod network (one IPv4 and/or one IPv6 CIDR, repeated or comma-separated):
    /// with it, a pod's port is written as soon as the pod is scheduled and weft's IPAM gives
    /// it its addresses from its node's block, for weft-cni to wire (docs/cni.md); without
    /// it, a pod's port is written once something else gave the pod an address.
    #[arg(long, env = "WEFT_POD_NETWORK_CIDR", value_delimiter = ',')]
    pub pod_network_cidr: Vec<ipnet::IpNet>,
    /// The prefix length of each node's IPv4 block of the pod network.
    #[arg(long, env = "WEFT_NODE_BLOCK_IPV4", default_value_t = 24)]
    pub node_block_ipv4: u8,
    /// The prefix length of each node's IPv6 block of the pod network.
    #[arg(long, env = "WEFT_NODE_BLOCK_IPV6", default_value_t = 80)]
    pub node_block_ipv6: u8,
}

/// In a pod, the namespace it runs in, as the service account mount gives it.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Runs kube-manager against a cluster, or a directory of manifests. Every flag is taken
/// apart here, so one that is added and never used does not compile.
pub async fn run(args: KubeArgs, client: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    let KubeArgs {
        manifests,
        once,
        cluster_name,
        project_prefix,
        kubeconfig,
        no_leader_election,
        lease_namespace,
        lease_name,
        lease_duration,
        identity,
        resync,
        metrics_listen,
        pod_network_cidr,
        node_block_ipv4,
        node_block_ipv6,
    } = args;
    let weft = crate::common::client(client, data_dir)?;
    let pod_network = (!pod_network_cidr.is_empty()).then_some(weft_kube::translate::PodNetwork {
        subnets: pod_network_cidr,
        blocks: weft_model::NodeBlocks { ipv4: node_block_ipv4, ipv6: node_block_ipv6 },
    });
    let options = Options { project_prefix, cluster: cluster_name.clone(), pod_network };
    if let Some(dir) = manifests {
        if !once {
            weft_kube::manifests::follow(&weft, &dir, &options, crate::common::shutdown_signal()).await;
            return Ok(());
        }
        let outcome = weft_kube::manifests::reconcile_once(&weft, &dir, &options).await?;
        match client.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"revision": outcome.revision, "created": outcome.created,
                    "updated": outcome.updated, "deleted": outcome.deleted})
            ),
            _ => println!(
                "revision {} ({} created, {} updated, {} deleted)",
                outcome.revision, outcome.created, outcome.updated, outcome.deleted
            ),
        }
        return Ok(());
    }
    let config = match &kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("finding the cluster (give --kubeconfig)")?,
    };
    let kube = kube::Client::try_from(config).context("connecting to the cluster")?;
    // In a pod, the Downward API gives POD_NAME and POD_NAMESPACE (deploy/kubernetes).
    let identity = identity.or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = (!no_leader_election).then(|| weft_kube::LeaseConfig {
        namespace: lease_namespace.unwrap_or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .or_else(|| std::fs::read_to_string(POD_NAMESPACE_FILE).ok().map(|n| n.trim().to_string()))
                .unwrap_or_else(|| "default".into())
        }),
        name: lease_name.unwrap_or_else(|| format!("weft-kube-manager-{cluster_name}")),
        identity: identity.clone(),
        duration: lease_duration,
        retry: (lease_duration / 5).max(Duration::from_millis(100)),
    });
    tracing::info!(cluster = %options.cluster, %identity, leader_election = lease.is_some(), "following the cluster");
    let metrics = metrics_listen.map(|_| std::sync::Arc::new(weft_kube::KubeMetrics::default()));
    if let (Some(addr), Some(metrics)) = (metrics_listen, metrics.clone()) {
        crate::metrics_http::serve(addr, move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        })
        .await?;
    }
    let config = weft_kube::ClusterConfig { options, lease, resync, instance: identity, progress: None, metrics };
    weft_kube::cluster::run(kube, weft, config, crate::common::shutdown_signal()).await;
    Ok(())
}
