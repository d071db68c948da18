//! Explain: the verdict for one connection attempt and why, read from the compiled form — the
//! same decisions the agents make, so explain and the datapath cannot disagree.

use std::net::IpAddr;

use serde::Serialize;
use uuid::Uuid;
use weft_model::Direction;

use crate::compile::Compiled;
use crate::compiled::{NodeSpan, PortPolicy};
use crate::eval::{self, Packet, Side, TieredRuleRef};

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Port(Uuid),
    /// A node (kubelet, node-local services), at one of its addresses.
    Node {
        name: String,
        address: IpAddr,
    },
    /// Anything outside the cluster.
    Address(IpAddr),
}

/// Cases DESIGN.md §4 always allows, whatever the groups say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlwaysAllowed {
    /// A port's traffic to itself.
    SamePort,
    /// Between a port and the node it runs on.
    OwnNode,
    /// IPv6 neighbour discovery (ICMPv6 133-137).
    NeighbourDiscovery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    pub always: Option<AlwaysAllowed>,
    /// The source port's egress decision; `None` when the source is not a port.
    pub egress: Option<Side>,
    /// The destination port's ingress decision; `None` when the destination is not a port.
    pub ingress: Option<Side>,
    /// The admin rule that passed the source's egress to its security groups, if one did.
    pub egress_passed: Option<TieredRuleRef>,
    /// The admin rule that passed the destination's ingress to its security groups, if one did.
    pub ingress_passed: Option<TieredRuleRef>,
}

impl Compiled {
    /// Where a port is: its node (`None` when unplaced), span and policy.
    fn locate(&self, id: &Uuid) -> Option<(Option<&str>, &NodeSpan, &PortPolicy)> {
        self.spans
            .iter()
            .find_map(|(node, span)| span.ports.get(id).map(|p| (Some(node.as_str()), span, p)))
            .or_else(|| self.unplaced.ports.get(id).map(|p| (None, &self.unplaced, p)))
    }

    /// The groups that isolate a port in a direction (empty: open); `None` for a port this
    /// view does not hold.
    pub fn isolated_by(&self, port: &Uuid, direction: Direction) -> Option<Vec<Uuid>> {
        let (_, _, policy) = self.locate(port)?;
        let isolation = match direction {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        Some(match isolation {
            crate::Isolation::Open => Vec::new(),
            crate::Isolation::Isolated(groups) => groups.iter().copied().collect(),
        })
    }

    /// The verdict for `packet` from `src` to `dst`: the source's egress and the destination's
    /// ingress must both allow it, each as its own node enforces it.
    pub fn explain(&self, src: &Endpoint, dst: &Endpoint, packet: &Packet) -> Explanation {
        let always = |reason| Explanation {
            allowed: true,
            always: Some(reason),
            egress: None,
            ingress: None,
            egress_passed: None,
            ingress_passed: None,
        };
        if let (Endpoint::Port(a), Endpoint::Port(b)) = (src, dst)
            && a == b
        {
            return always(AlwaysAllowed::SamePort);
        }
        if eval::is_neighbour_discovery(packet) {
            return always(AlwaysAllowed::NeighbourDiscovery);
        }
        let node_of = |e: &Endpoint| match e {
            Endpoint::Port(id) => self.locate(id).and_then(|(n, _, _)| n.map(str::to_string)),
            _ => None,
        };
        let own_node = match (src, dst) {
            (Endpoint::Node { name, .. }, p @ Endpoint::Port(_))
            | (p @ Endpoint::Port(_), Endpoint::Node { name, .. }) => node_of(p).as_deref() == Some(name.as_str()),
            _ => false,
        };
        if own_node {
            return always(AlwaysAllowed::OwnNode);
        }
        let decide = |e: &Endpoint, direction| match e {
            Endpoint::Port(id) => self.locate(id).map(|(_, span, port)| eval::decide(span, port, direction, packet)),
            _ => None,
        };
        let egress = decide(src, Direction::Egress);
        let ingress = decide(dst, Direction::Ingress);
        let allowed = egress.is_none_or(|d| d.side.allows()) && ingress.is_none_or(|d| d.side.allows());
        Explanation {
            allowed,
            always: None,
            egress: egress.map(|d| d.side),
            ingress: ingress.map(|d| d.side),
            egress_passed: egress.and_then(|d| d.passed),
            ingress_passed: ingress.and_then(|d| d.passed),
        }
    }
}
