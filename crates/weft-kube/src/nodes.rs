//! A cluster's own pod CIDRs as the nodes' blocks of the pod network (DESIGN.md §9): where
//! Kubernetes assigns each Node its `spec.podCIDRs` (kube-controller-manager's
//! `--allocate-node-cidrs`), kube-manager passes them on (`PUT /v1/nodes/{name}/blocks`), so
//! a node's pods get the addresses the rest of the cluster (kube-proxy, the cloud's routes)
//! expects there, and weft claims no block of its own for that node. A podCIDR outside weft's
//! pod network, or one the config service refuses (another node's block), is reported as a
//! warning Event on the Node, and the node's addresses then come from blocks weft claims.

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Resource;
use kube::runtime::events::Event as KubeEvent;
use kube::runtime::watcher::{self, Event};
use weft_client::{Client, ClientError};

use crate::translate::Options;

/// A failed write is tried again after this, doubling up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MOST_BACKOFF: Duration = Duration::from_secs(30);

/// The blocks weft takes from a Node: its podCIDRs (podCIDR when podCIDRs is not given)
/// that lie within the pod network, and a sentence for each that does not.
pub fn blocks_of(node: &Node, options: &Options) -> (Vec<IpNet>, Vec<String>) {
    let Some(pods) = &options.pod_network else { return (Vec::new(), Vec::new()) };
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut blocks = Vec::new();
    let mut problems = Vec::new();
    for text in listed {
        match text.parse::<IpNet>() {
            Ok(block) if pods.subnets.iter().any(|s| s.contains(&block)) => blocks.push(block),
            Ok(block) => problems.push(format!(
                "podCIDR {block} is outside weft's pod network ({}): weft gives this node's pods addresses of its own choosing",
                pods.subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            )),
            Err(_) => problems.push(format!("podCIDR {text:?} is not a CIDR")),
        }
    }
    (blocks, problems)
}

/// Follows the cluster's Nodes and passes their podCIDRs on, until `nodes` ends; `listed` is
/// set once the Nodes of the first list are passed on (at once without a pod network). What
/// each node was last given is remembered, so an unchanged Node costs no request; a node that
/// never had a podCIDR is not written at all.
pub(crate) async fn follow(
    weft: &Client,
    options: &Options,
    nodes: impl Stream<Item = Result<Event<Node>, watcher::Error>>,
    events_out: tokio::sync::mpsc::UnboundedSender<(KubeEvent, ObjectReference)>,
    listed: tokio::sync::watch::Sender<bool>,
) {
    if options.pod_network.is_none() {
        listed.send_replace(true);
        return std::future::pending().await;
    }
    // The blocks are the pod network's: it must exist first (the first reconciliation may be
    // making it at the same moment; whichever loses tries again).
    let mut backoff = FIRST_BACKOFF;
    while let Err(e) = crate::reconcile::ensure_pod_network(weft, options).await {
        tracing::warn!(error = %e, retry_in = ?backoff, "cannot make sure the pod network exists");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MOST_BACKOFF);
    }
    let network = options.pod_network_ref();
    let mut given: HashMap<String, Vec<IpNet>> = HashMap::new();
    let mut warned: HashMap<String, Vec<String>> = HashMap::new();
    tokio::pin!(nodes);
    while let Some(event) = nodes.next().await {
        let (node, gone) = match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => (node, false),
            Ok(Event::Delete(node)) => (node, true),
            Ok(Event::Init) => continue,
            Ok(Event::InitDone) => {
                listed.send_replace(true);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the cluster's nodes; trying again");
                continue;
            }
        };
        let Some(name) = node.metadata.name.clone() else { continue };
        let (blocks, mut problems) = if gone { (Vec::new(), Vec::new()) } else { blocks_of(&node, options) };
        let changed = !given.get(&name).map_or(blocks.is_empty(), |had| *had == blocks);
        if changed {
            match assign(weft, &name, &network, &blocks).await {
                Ok(held) => {
                    tracing::info!(node = %name, blocks = ?blocks, held = ?held, "the node's pod CIDRs are its blocks")
                }
                Err(e) => problems.push(format!("weft cannot take the node's pod CIDRs as its blocks: {e}")),
            }
        }
        if gone {
            given.remove(&name);
            warned.remove(&name);
            continue;
        }
        if changed {
            given.insert(name.clone(), blocks);
        }
        // Each problem is said once, until the Node changes what it says.
        if warned.get(&name) == Some(&problems) {
            continue;
        }
        for problem in &problems {
            tracing::warn!(node = %name, "{problem}");
            let event = crate::cluster::warning("PodCIDRNotUsed", "AssignBlocks", problem.clone());
            let _ = events_out.send((event, node.object_ref(&())));
        }
        warned.insert(name, problems);
    }
}

/// One assignment, tried again while the config service cannot be reached; a refusal (the
/// block is another node's, the network is gone) is the answer.
async fn assign(weft: &Client, node: &str, network: &str, blocks: &[IpNet]) -> Result<Vec<IpNet>, ClientError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match weft.assign_node_blocks(node, network, blocks).await {
            Err(e) if e.status().is_none_or(|s| s >= 500) => {
                tracing::warn!(node = %node, error = %e, retry_in = ?backoff, "cannot pass the node's pod CIDRs on");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MOST_BACKOFF);
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::PodNetwork;

    fn node(pod_cidr: Option<&str>, pod_cidrs: &[&str]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": pod_cidrs},
        }))
        .unwrap()
    }

    #[test]
    fn a_nodes_pod_cidrs_within_the_pod_network_are_its_blocks_and_the_others_are_reported() {
        let mut options = Options::default();
        assert_eq!(blocks_of(&node(Some("10.244.3.0/24"), &[]), &options), (vec![], vec![]), "no pod network");
        options.pod_network = Some(PodNetwork {
            subnets: vec!["10.244.0.0/16".parse().unwrap(), "fd44::/56".parse().unwrap()],
            blocks: weft_model::NodeBlocks::default(),
        });
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        // podCIDRs (dual stack) wins over podCIDR; podCIDR alone where it is all there is.
        let (blocks, problems) =
            blocks_of(&node(Some("10.244.3.0/24"), &["10.244.3.0/24", "fd44::300:0:0:0/80"]), &options);
        assert_eq!((blocks, problems.len()), (vec![net("10.244.3.0/24"), net("fd44::300:0:0:0/80")], 0));
        assert_eq!(blocks_of(&node(Some("10.244.4.0/24"), &[]), &options).0, [net("10.244.4.0/24")]);
        let (blocks, problems) = blocks_of(&node(None, &["10.9.0.0/24", "nonsense"]), &options);
        assert!(blocks.is_empty());
        assert!(problems[0].contains("outside weft's pod network"), "{problems:?}");
        assert!(problems[1].contains("not a CIDR"), "{problems:?}");
    }
}
