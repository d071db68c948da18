//! `weft kube-manager`: Kubernetes objects become weft's, through the REST API: watched in a
//! cluster (kubeconfig or in-cluster configuration, leader election through a Lease), or
//! read from a directory of manifests (`--manifests`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weft_kube::Options;

use crate::cli::{ClientArgs, Output};
use crate::client_cmds;

#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Read Kubernetes manifests (Namespaces, Pods, NetworkPolicies; YAML or JSON, several
    /// documents a file) from this directory instead of a cluster.
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
    #[arg(long, env = "WEFT_LEASE_DURATION", default_value = "15s", value_parser = crate::cli::parse_duration)]
    pub lease_duration: Duration,
    /// This candidate's name in the Lease and in Events [default: POD_NAME, else
    /// hostname-pid].
    #[arg(long, env = "WEFT_IDENTITY")]
    pub identity: Option<String>,
    /// Reconcile the whole cluster this often even when nothing says so (puts right what
    /// someone changed behind kube-manager's back).
    #[arg(long, env = "WEFT_RESYNC", default_value = "5m", value_parser = crate::cli::parse_duration)]
    pub resync: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (watch events, reconciliations,
    /// errors, leadership).
    #[arg(long, env = "WEFT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// In a pod, the namespace it runs in, as the service account mount gives it.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub async fn run(args: KubeArgs, client: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    let c = client_cmds::client(client, data_dir)?;
    let options = Options { project_prefix: args.project_prefix.clone(), cluster: args.cluster_name.clone() };
    let Some(dir) = args.manifests.clone() else {
        return cluster(args, c, options).await;
    };
    if args.once {
        let outcome = weft_kube::manifests::reconcile_once(&c, &dir, &options).await?;
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
    weft_kube::manifests::follow(&c, &dir, &options, crate::cli::shutdown_signal()).await;
    Ok(())
}

async fn cluster(args: KubeArgs, weft: weft_client::Client, options: Options) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("finding the cluster (give --kubeconfig)")?,
    };
    let kube = kube::Client::try_from(config).context("connecting to the cluster")?;
    let identity = args.identity.clone().or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = (!args.no_leader_election).then(|| weft_kube::LeaseConfig {
        namespace: args.lease_namespace.clone().unwrap_or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .or_else(|| std::fs::read_to_string(POD_NAMESPACE_FILE).ok().map(|n| n.trim().to_string()))
                .unwrap_or_else(|| "default".into())
        }),
        name: args.lease_name.clone().unwrap_or_else(|| format!("weft-kube-manager-{}", args.cluster_name)),
        identity: identity.clone(),
        duration: args.lease_duration,
        retry: (args.lease_duration / 5).max(Duration::from_millis(100)),
    });
    tracing::info!(cluster = %options.cluster, %identity, leader_election = lease.is_some(), "following the cluster");
    let metrics = args.metrics_listen.map(|_| std::sync::Arc::new(weft_kube::KubeMetrics::default()));
    if let (Some(addr), Some(metrics)) = (args.metrics_listen, metrics.clone()) {
        crate::metrics_http::serve(addr, move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        })
        .await?;
    }
    let config =
        weft_kube::ClusterConfig { options, lease, resync: args.resync, instance: identity, progress: None, metrics };
    weft_kube::cluster::run(kube, weft, config, crate::cli::shutdown_signal()).await;
    Ok(())
}
