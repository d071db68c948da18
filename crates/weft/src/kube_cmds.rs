//! `weft kube-manager`: Kubernetes objects become weft's, through the REST API. Today from a
//! directory of manifests (`--manifests`); watching a cluster's API server comes next.

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
}

/// How often the directory is looked at, and how often it is reconciled anyway (so that a
/// change made through the API to an object kube-manager owns is put right).
const POLL: Duration = Duration::from_millis(250);
const RESYNC: Duration = Duration::from_secs(30);
/// A batch refused because an object changed since it was listed is planned again.
const ATTEMPTS: usize = 5;

pub async fn run(args: KubeArgs, client: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    let Some(dir) = args.manifests.clone() else {
        anyhow::bail!("watching a Kubernetes API server is not built yet: give --manifests DIR");
    };
    let c = client_cmds::client(client, data_dir)?;
    let options = Options { project_prefix: args.project_prefix.clone(), cluster: args.cluster_name.clone() };
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

fn desired(dir: &Path, options: &Options) -> anyhow::Result<Desired> {
    let manifests = weft_kube::read_dir(dir)?;
    if !manifests.skipped.is_empty() {
        tracing::debug!(kinds = ?manifests.skipped, "manifests of other kinds left alone");
    }
    let desired = Desired::of(&manifests.namespaces, &manifests.pods, &manifests.policies, options);
    for problem in &desired.problems {
        tracing::warn!(%problem, "left out: weft cannot represent it");
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
