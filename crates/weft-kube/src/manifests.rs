//! A directory of Kubernetes manifests in place of a cluster: YAML or JSON files, several
//! documents each (`---`), `List`s of items. Namespaces, Pods, NetworkPolicies and
//! ClusterNetworkPolicies are read;
//! other kinds (Deployments, Services...) are counted and left alone. A namespace that
//! objects name but no manifest declares exists, as it would in a cluster (`default`).
//! [`follow`] reconciles the config service with the directory whenever it changes.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use weft_client::{Client, ClientError};

use crate::reconcile::{Desired, Outcome, reconcile_all_retrying};
use crate::translate::Options;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
    pub cluster_policies: Vec<crate::cnp::ClusterNetworkPolicy>,
    /// Objects of other kinds, by kind.
    pub skipped: Vec<String>,
}

/// Files the directory holds, in name order (subdirectories included): what a change to the
/// directory is compared by.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ManifestError::Io { path: d.clone(), source })?;
        for entry in entries {
            let path = entry.map_err(|source| ManifestError::Io { path: d.clone(), source })?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every manifest under `dir`.
pub fn read_dir(dir: &Path) -> Result<Manifests, ManifestError> {
    let mut m = Manifests::default();
    for path in files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        read_text(&text, &mut m).map_err(|detail| ManifestError::Invalid { path: path.clone(), detail })?;
    }
    let declared: BTreeSet<String> = m.namespaces.iter().filter_map(|n| n.metadata.name.clone()).collect();
    let named: BTreeSet<String> = m
        .pods
        .iter()
        .map(|p| &p.metadata)
        .chain(m.policies.iter().map(|p| &p.metadata))
        .map(|meta| meta.namespace.clone().unwrap_or_else(|| "default".into()))
        .collect();
    for ns in named.difference(&declared) {
        m.namespaces.push(Namespace {
            metadata: ObjectMeta { name: Some(ns.clone()), ..ObjectMeta::default() },
            ..Namespace::default()
        });
    }
    Ok(m)
}

/// Adds the objects of one file's documents.
pub fn read_text(text: &str, m: &mut Manifests) -> Result<(), String> {
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        add(value, m).map_err(|e| format!("document {}: {e}", i + 1))?;
    }
    Ok(())
}

fn add(value: serde_yaml::Value, m: &mut Manifests) -> Result<(), String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).ok_or("no kind")?.to_string();
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
            for item in items {
                add(item, m)?;
            }
        }
        ("v1", "Namespace") => m.namespaces.push(decode(value, &kind)?),
        ("v1", "Pod") => m.pods.push(decode(value, &kind)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => m.policies.push(decode(value, &kind)?),
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => m.cluster_policies.push(decode(value, &kind)?),
        _ => m.skipped.push(kind),
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_yaml::Value, kind: &str) -> Result<T, String> {
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?").to_string();
    serde_yaml::from_value(value).map_err(|e| format!("{kind} {name}: {e}"))
}

/// The translation of a directory's manifests; what cannot be represented, and pods and
/// policies whose Namespace is not there, are logged and left out.
pub fn desired(dir: &Path, options: &Options) -> Result<Desired, ManifestError> {
    let manifests = read_dir(dir)?;
    if !manifests.skipped.is_empty() {
        tracing::debug!(kinds = ?manifests.skipped, "manifests of other kinds left alone");
    }
    let mut desired = Desired::of(&manifests.namespaces, &manifests.pods, &manifests.policies, options);
    // The directory is the whole cluster: its cluster policies are known, none included.
    desired.cluster_policies = Some(Default::default());
    for cnp in &manifests.cluster_policies {
        desired.add_cluster_policy(cnp, options);
    }
    for problem in &desired.problems {
        tracing::warn!(%problem, "left out: weft cannot represent it");
    }
    for orphan in &desired.orphans {
        tracing::warn!(problem = %orphan, "left out: its Namespace is not in the directory");
    }
    Ok(desired)
}

/// Why a directory was not reconciled.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error("reconciling with the config service: {0}")]
    Client(#[from] ClientError),
}

/// Reconciles the config service with the directory once (planning again when a
/// concurrent write got in between); conflicts are logged.
pub async fn reconcile_once(client: &Client, dir: &Path, options: &Options) -> Result<Outcome, FollowError> {
    let desired = desired(dir, options)?;
    let (outcome, _) = reconcile_all_retrying(client, &desired, options).await?;
    for conflict in &outcome.conflicts {
        tracing::warn!(%conflict, "not reconciled");
    }
    Ok(outcome)
}

/// How often the directory is looked at.
const POLL: Duration = Duration::from_millis(250);
/// How often it is reconciled even when unchanged, so that a change made through the API to
/// an object kube-manager owns is put right.
const RESYNC: Duration = Duration::from_secs(30);

/// What the directory looks like: its files with their sizes and modification times.
fn fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    files(dir)
        .ok()?
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok()?;
            Some((f, meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Reconciles whenever the directory changes (and every [`RESYNC`] anyway) until `stop`
/// completes. A directory that does not read (a file half written, a YAML error) changes
/// nothing: the config service keeps what it has until the directory reads again. A
/// reconciliation that fails is tried again at the next look.
pub async fn follow(client: &Client, dir: &Path, options: &Options, stop: impl Future<Output = ()>) {
    let mut seen = None;
    let mut last = Instant::now();
    tokio::pin!(stop);
    loop {
        let now = fingerprint(dir);
        if now != seen || last.elapsed() >= RESYNC {
            last = Instant::now();
            match reconcile_once(client, dir, options).await {
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
                Err(FollowError::Manifests(e)) => {
                    seen = now;
                    tracing::warn!(error = %e, "the manifests do not read; keeping what the config service has");
                }
                Err(e) => tracing::warn!(error = %e, "cannot reconcile; trying again"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut stop => return,
        }
    }
}
