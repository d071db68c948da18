//! Routes to the other nodes' pods (DESIGN.md §9): the controller's route table, followed on
//! its own stream (apart from the span's, so it never delays an ack), made the node's routes —
//! one per other node's block, and one per pod address outside its node's blocks — each
//! through that node's underlay address — and the masquerade of pod traffic leaving the
//! cluster's pod networks, which the table names ([`crate::nft::set_masquerade`]). Fail
//! static: while no controller answers, the routes and the masquerade installed stay.

use std::net::IpAddr;

use tokio::sync::watch;
use weft_proto::v1::{self, agent_client::AgentClient};

use crate::{AgentError, Config, link};

/// What the node makes of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// Routes to the other nodes' pods.
    pub routes: bool,
    /// Masquerade of pod traffic leaving the cluster's pod networks.
    pub masquerade: bool,
}

/// Follows the route table until `shutdown`, reconnecting with backoff.
pub async fn follow(config: Config, node_netns: Option<String>, uses: Uses, mut shutdown: watch::Receiver<bool>) {
    let mut pause = config.backoff.0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = tokio::select! {
            outcome = session(&config, node_netns.clone(), uses) => outcome,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(()) => pause = config.backoff.0,
            Err(e) => tracing::warn!(error = %e, "no route table from the controller; keeping the routes installed"),
        }
        let jitter = pause.mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(pause + jitter) => {}
            _ = shutdown.changed() => return,
        }
        pause = (pause * 2).min(config.backoff.1);
    }
}

async fn session(config: &Config, node_netns: Option<String>, uses: Uses) -> Result<(), AgentError> {
    let credential = config
        .credential
        .clone()
        .or_else(|| config.state_dir.credential())
        .ok_or_else(|| AgentError::NoCredential(config.node.clone()))?;
    let mut client = AgentClient::new(crate::channel(config).await?);
    let request = v1::RoutesRequest { node: config.node.clone(), credential, incremental: true };
    let mut tables = client.routes(request).await.map_err(AgentError::Stream)?.into_inner();
    let mut follower = weft_proto::RouteFollower::default();
    // The cluster networks masqueraded by this session: the table is set again only when
    // they change (and once per session, in case it was changed behind the agent's back).
    let mut masqueraded: Option<Vec<ipnet::IpNet>> = None;
    while let Some(part) = tables.message().await.map_err(AgentError::Stream)? {
        let Some(table) = follower.take(part) else { continue };
        if uses.masquerade {
            let networks = cluster(&table);
            if masqueraded.as_ref() != Some(&networks) {
                let netns = node_netns.clone();
                let set = networks.clone();
                match tokio::task::spawn_blocking(move || crate::nft::set_masquerade(netns.as_deref(), &set)).await {
                    Ok(Ok(())) => {
                        if networks.is_empty() {
                            tracing::info!("no cluster pod network: nothing masqueraded");
                        } else {
                            tracing::info!(cluster = ?networks, "pod traffic leaving the cluster's networks is masqueraded");
                        }
                        masqueraded = Some(networks);
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot set the masquerade of pod traffic"),
                    Err(e) => tracing::error!(error = %e, "the masquerade task failed"),
                }
            }
        }
        if !uses.routes {
            continue;
        }
        let desired = wanted(&table, &config.node);
        let netns = node_netns.clone();
        let count = desired.len();
        match tokio::task::spawn_blocking(move || link::sync_routes(netns.as_deref(), &desired)).await {
            Ok(Ok((added, removed))) if added + removed > 0 => {
                tracing::info!(routes = count, added, removed, "routes to other nodes' pods updated")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot update the routes to other nodes' pods"),
            Err(e) => tracing::error!(error = %e, "the route task failed"),
        }
    }
    Ok(())
}

/// The routes this node wants from a table: every other node's destinations, each through
/// that node's underlay address of the destination's family (none of that family: skipped).
pub fn wanted(table: &v1::RouteTable, own: &str) -> Vec<(ipnet::IpNet, IpAddr)> {
    table
        .routes
        .iter()
        .filter(|r| r.node != own)
        .filter_map(|r| {
            let destination = weft_proto::parse_address(&r.destination).ok()?;
            let prefix = u8::try_from(r.prefix).ok()?;
            let net = ipnet::IpNet::new(destination, prefix).ok()?.trunc();
            let via = r
                .via
                .iter()
                .filter_map(|v| weft_proto::parse_address(v).ok())
                .find(|v| v.is_ipv4() == destination.is_ipv4())?;
            Some((net, via))
        })
        .collect()
}

/// The cluster's pod networks a table names, in order, each once (a malformed one skipped).
pub fn cluster(table: &v1::RouteTable) -> Vec<ipnet::IpNet> {
    let networks: std::collections::BTreeSet<ipnet::IpNet> =
        table.cluster.iter().filter_map(|p| weft_proto::parse_prefix(p).ok()).map(|p| p.trunc()).collect();
    networks.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, prefix: u32, node: &str, via: &[&str]) -> v1::Route {
        let address = |s: &str| weft_proto::encode_address(&s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        v1::Route {
            destination: address(destination),
            prefix,
            node: node.into(),
            via: via.iter().map(|v| address(v)).collect(),
        }
    }

    #[test]
    fn a_node_routes_other_nodes_destinations_through_their_address_of_the_same_family() {
        let table = v1::RouteTable {
            routes: vec![
                route("10.244.0.0", 24, "n1", &["192.0.2.1", "fd00::1"]),
                route("10.244.1.0", 24, "n2", &["192.0.2.2", "fd00::2"]),
                route("fd44::", 80, "n2", &["192.0.2.2", "fd00::2"]),
                route("10.47.0.11", 32, "n3", &["fd00::3"]),
                v1::Route { destination: vec![1, 2, 3], prefix: 24, node: "n2".into(), via: vec![] },
            ],
            cluster: vec![],
            ..Default::default()
        };
        let mut got: Vec<String> = wanted(&table, "n1").iter().map(|(n, v)| format!("{n} via {v}")).collect();
        got.sort();
        // n1's own block is not routed; n3 has no IPv4 address to route an IPv4 pod through;
        // a malformed row is skipped.
        assert_eq!(got, ["10.244.1.0/24 via 192.0.2.2", "fd44::/80 via fd00::2"]);
    }

    #[test]
    fn the_cluster_networks_are_read_once_each_in_order_and_a_malformed_one_is_skipped() {
        let prefix = |a: &[u8], length| v1::Prefix { address: a.to_vec(), length };
        let table = v1::RouteTable {
            routes: vec![],
            cluster: vec![
                prefix(&[10, 245, 0, 0], 16),
                prefix(&[10, 244, 1, 2], 16),
                prefix(&[10, 244, 0, 0], 16),
                prefix(&[1, 2, 3], 8),
                prefix(&[10, 0, 0, 0], 40),
            ],
            ..Default::default()
        };
        let got: Vec<String> = cluster(&table).iter().map(|p| p.to_string()).collect();
        assert_eq!(got, ["10.244.0.0/16", "10.245.0.0/16"]);
    }
}
