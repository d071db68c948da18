//! `weft kube-manager`: Kubernetes objects become weft's, through the REST API: watched in a
//! cluster (kubeconfig or in-cluster configuration, leader election through a Lease), or
//! read from a directory of manifests (`--manifests`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use weft_kube::{Desired, Options, Outcome};

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

/// How often the directory is looked at, and how often it is reconciled anyway (so that a
/// change made through the API to an object kube-manager owns is put right).
const POLL: Duration = Duration::from_millis(250);
const RESYNC: Duration = Duration::from_secs(30);
/// A batch refused because an object changed since it was listed is planned again.
const ATTEMPTS: usize = 5;

pub async fn run(args: KubeArgs, client: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    let c = client_cmds::client(client, data_dir)?;
    let options = Options { project_prefix: args.project_prefix.clone(), cluster: args.cluster_name.clone() };
    let Some(dir) = args.manifests.clone() else {
        return cluster(args, c, options).await;
    };
    if args.once {
        let outcome = once(&c, &dir, &options).await?;
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
    watch(&c, &dir, &options).await
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

fn desired(dir: &Path, options: &Options) -> anyhow::Result<Desired> {
    let manifests = weft_kube::read_dir(dir)?;
    if !manifests.skipped.is_empty() {
        tracing::debug!(kinds = ?manifests.skipped, "manifests of other kinds left alone");
    }
    let desired = Desired::of(&manifests.namespaces, &manifests.pods, &manifests.policies, options);
    for problem in &desired.problems {
        tracing::warn!(%problem, "left out: weft cannot represent it");
    }
    for orphan in &desired.orphans {
        tracing::warn!(problem = %orphan, "left out: its Namespace is not in the directory");
    }
    Ok(desired)
}

/// Reconciles, planning again when a concurrent write got in between.
async fn reconcile(c: &weft_client::Client, desired: &Desired, options: &Options) -> anyhow::Result<Outcome> {
    let mut attempt = 1;
    loop {
        match weft_kube::reconcile(c, desired, options).await {
            Ok(outcome) => {
                for conflict in &outcome.conflicts {
                    tracing::warn!(%conflict, "not reconciled");
                }
                return Ok(outcome);
            }
            Err(e) if attempt < ATTEMPTS && e.status() == Some(412) => {
                tracing::info!(attempt, "an object changed while reconciling; planning again");
                attempt += 1;
            }
            Err(e) => return Err(e).context("reconciling with the config service"),
        }
    }
}

async fn once(c: &weft_client::Client, dir: &Path, options: &Options) -> anyhow::Result<Outcome> {
    let desired = desired(dir, options)?;
    reconcile(c, &desired, options).await
}

/// What the directory looks like: its files with their sizes and modification times.
fn fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    let files = weft_kube::manifests::files(dir).ok()?;
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok()?;
            Some((f, meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Reconciles whenever the directory changes (and every [`RESYNC`] anyway) until stopped. A
/// directory that does not read (a file half written, a YAML error) changes nothing: the
/// config service keeps what it has until the directory reads again.
async fn watch(c: &weft_client::Client, dir: &Path, options: &Options) -> anyhow::Result<()> {
    let mut seen = None;
    let mut last = Instant::now();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let now = fingerprint(dir);
        if now != seen || last.elapsed() >= RESYNC {
            last = Instant::now();
            match desired(dir, options) {
                Ok(desired) => match reconcile(c, &desired, options).await {
                    Ok(o) => {
                        seen = now;
                        if o.created + o.updated + o.deleted > 0 {
                            tracing::info!(
                                revision = o.revision,
                                created = o.created,
                                updated = o.updated,
                                deleted = o.deleted,
                                "reconciled"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot reconcile; trying again"),
                },
                Err(e) => {
                    seen = now;
                    tracing::warn!(error = %format!("{e:#}"), "the manifests do not read; keeping what the config service has");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}
