//! DESIGN.md §4 and §11 as plain code, for tests only: no index, no caching, no compiled form.
//! Every sentence of §4 and §11 maps to a few lines here; the compiler is checked against it.

use std::net::IpAddr;

use uuid::Uuid;
use weft_model::{
    Direction, Ethertype, ObjectRef, PolicyAction, PolicyRemote, PortMatch, Remote, Rule, SecurityGroup, Tier,
    TieredRule,
};

use crate::cluster::{Cluster, PortRecord};
use crate::eval::{Packet, is_neighbour_discovery};
use crate::explain::Endpoint;

/// Whether `packet` from `src` to `dst` is allowed.
pub fn allowed(c: &Cluster, src: &Endpoint, dst: &Endpoint, packet: &Packet) -> bool {
    // Always allowed: a port's traffic to itself, IPv6 neighbour discovery, a port and its node.
    if let (Endpoint::Port(a), Endpoint::Port(b)) = (src, dst)
        && a == b
    {
        return true;
    }
    if is_neighbour_discovery(packet) {
        return true;
    }
    let on_node = |p: &Uuid, node: &str| c.ports.get(p).is_some_and(|p| p.node.as_deref() == Some(node));
    match (src, dst) {
        (Endpoint::Port(p), Endpoint::Node { name, .. }) | (Endpoint::Node { name, .. }, Endpoint::Port(p))
            if on_node(p, name) =>
        {
            return true;
        }
        _ => {}
    }
    // A connection from A to B is allowed iff A's egress allows it and B's ingress allows it.
    let egress = match src {
        Endpoint::Port(a) => side_allows(c, a, Direction::Egress, packet, dst),
        _ => true,
    };
    let ingress = match dst {
        Endpoint::Port(b) => side_allows(c, b, Direction::Ingress, packet, src),
        _ => true,
    };
    egress && ingress
}

/// Whether P names G explicitly, as a member: a port is a member only of its own project's
/// groups, whatever else it names.
fn names(port: &PortRecord, g: &SecurityGroup) -> bool {
    *g.project == *port.project
        && port
            .security_groups
            .iter()
            .flatten()
            .any(|r| weft_model::member_group(&port.project, r) == Ok(g.name.as_str()))
}

/// applied(P) = the groups P names explicitly, plus every group of P's project whose selector
/// matches P's labels.
fn applied<'a>(c: &'a Cluster, port: &PortRecord) -> Vec<&'a SecurityGroup> {
    c.groups
        .values()
        .filter(|g| {
            names(port, g)
                || (*g.project == *port.project && g.selector.as_ref().is_some_and(|s| s.matches(&port.labels)))
        })
        .collect()
}

fn side_allows(c: &Cluster, p: &Uuid, d: Direction, packet: &Packet, other: &Endpoint) -> bool {
    let Some(port) = c.ports.get(p) else { return true };
    // An address two ports name is dispatched to neither, and neither may send from it.
    let local = match d {
        Direction::Ingress => packet.dst,
        Direction::Egress => packet.src,
    };
    if port.ips.contains(&local) && c.ports.iter().any(|(q, other)| q != p && other.ips.contains(&local)) {
        return false;
    }
    // §11: the admin policies selecting P, in order, each rule of d in order; the first that
    // matches decides: accept allows, deny denies, pass skips the rest of the admin tier.
    let policies = c.cluster_policies_of(port);
    if let Some(decided) = tier_decides(c, &policies, Tier::Admin, port, d, packet, other) {
        return decided;
    }
    // P is isolated in d when some group in applied(P) has d in policy_types; only those
    // groups speak for d (Kubernetes: a policy only affects the directions it lists), and they
    // decide: the baseline tier is not asked.
    let isolating: Vec<&SecurityGroup> = applied(c, port).into_iter().filter(|g| g.policy_types.contains(&d)).collect();
    if !isolating.is_empty() {
        return isolating.iter().any(|g| {
            g.rules.iter().filter(|r| r.direction == d).any(|r| rule_matches(c, g, r, port, d, packet, other))
        });
    }
    // Then the baseline policies, the same way; nothing decided (or a pass): allowed.
    tier_decides(c, &policies, Tier::Baseline, port, d, packet, other).unwrap_or(true)
}

/// What a tier decides for P's side `d`: Some(allowed) at the first rule that accepts or
/// denies, None when no rule matches or one passes.
fn tier_decides(
    c: &Cluster,
    policies: &[&weft_model::ClusterPolicy],
    tier: Tier,
    port: &PortRecord,
    d: Direction,
    packet: &Packet,
    other: &Endpoint,
) -> Option<bool> {
    for policy in policies.iter().filter(|p| p.tier == tier) {
        let rules = match d {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        for rule in rules {
            if tiered_rule_matches(c, rule, port, d, packet, other) {
                return match rule.action {
                    PolicyAction::Accept => Some(true),
                    PolicyAction::Deny => Some(false),
                    PolicyAction::Pass => None,
                };
            }
        }
    }
    None
}

/// Whether a tiered rule matches: one of its protocols (none: any protocol and port) and one
/// of its remotes.
fn tiered_rule_matches(
    c: &Cluster,
    rule: &TieredRule,
    port: &PortRecord,
    d: Direction,
    packet: &Packet,
    other: &Endpoint,
) -> bool {
    let protocol = rule.protocols.is_empty()
        || rule.protocols.iter().any(|p| {
            // No protocol: a port name's own (port_matches checks it).
            p.protocol.is_none_or(|protocol| protocol.number() == Some(packet.protocol))
                && match &p.port {
                    None => true,
                    Some(m) => port_matches(c, m, port, d, packet, other),
                }
        });
    let remote = match d {
        Direction::Ingress => packet.src,
        Direction::Egress => packet.dst,
    };
    protocol
        && rule.remotes.iter().any(|r| match r {
            PolicyRemote::Networks { networks } => networks.iter().any(|n| n.contains(&remote)),
            PolicyRemote::Selector { ports, projects } => c.ports.values().any(|q| {
                q.ips.contains(&remote)
                    && ports.matches(&q.labels)
                    && c.project_by_name(&q.project).is_some_and(|p| projects.matches(&p.labels))
            }),
        })
}

fn rule_matches(
    c: &Cluster,
    g: &SecurityGroup,
    rule: &Rule,
    port: &PortRecord,
    d: Direction,
    packet: &Packet,
    other: &Endpoint,
) -> bool {
    // A rule of one family never matches the other.
    if !rule.effective_ethertype().covers(Ethertype::of_addr(&packet.dst)) {
        return false;
    }
    if rule.protocol.number().is_some_and(|p| p != packet.protocol) {
        return false;
    }
    if let Some(icmp) = rule.icmp {
        let Some((t, code)) = packet.icmp else { return false };
        if i64::from(t) != icmp.icmp_type || icmp.code.is_some_and(|c| c != i64::from(code)) {
            return false;
        }
    }
    if !rule.ports.is_empty() && !rule.ports.iter().any(|m| port_matches(c, m, port, d, packet, other)) {
        return false;
    }
    let remote = match d {
        Direction::Ingress => packet.src,
        Direction::Egress => packet.dst,
    };
    remote_contains(c, g, &rule.remote, &remote)
}

/// Whether the packet's destination port is `m`. A named port is resolved against P on
/// ingress, against the destination on egress (so only destinations that are known ports can
/// match one).
fn port_matches(
    c: &Cluster,
    m: &PortMatch,
    port: &PortRecord,
    d: Direction,
    packet: &Packet,
    other: &Endpoint,
) -> bool {
    match m {
        PortMatch::Single(n) => packet.port.is_some_and(|x| i64::from(x) == *n),
        PortMatch::Range { from, to } => packet.port.is_some_and(|x| (*from..=*to).contains(&i64::from(x))),
        PortMatch::Named(name) => {
            let target: Option<&PortRecord> = match d {
                Direction::Ingress => Some(port),
                Direction::Egress => match other {
                    Endpoint::Port(id) => c.ports.get(id),
                    _ => None,
                },
            };
            target.and_then(|t| t.named_ports.get(name)).is_some_and(|np| {
                np.protocol.number() == Some(packet.protocol) && packet.port.is_some_and(|x| i64::from(x) == np.port)
            })
        }
    }
}

fn remote_contains(c: &Cluster, g: &SecurityGroup, remote: &Remote, addr: &IpAddr) -> bool {
    let owners = || c.ports.values().filter(move |q| q.ips.contains(addr));
    match remote {
        Remote::Any => true,
        Remote::Cidr { cidr, except } => cidr.contains(addr) && !except.iter().any(|e| e.contains(addr)),
        // The addresses of all ports to which that group applies.
        Remote::SecurityGroup { security_group } => {
            let Ok(r) = ObjectRef::parse(security_group) else { return false };
            let target = (r.project_or(&g.project), r.name);
            owners().any(|q| applied(c, q).iter().any(|a| (a.project.as_str(), a.name.as_str()) == target))
        }
        // Addresses of ports whose labels match, in projects whose labels match (absent: the
        // rule's own project).
        Remote::Selector { ports, projects } => owners().any(|q| {
            ports.matches(&q.labels)
                && match projects {
                    None => *q.project == *g.project,
                    Some(sel) => c.project_by_name(&q.project).is_some_and(|p| sel.matches(&p.labels)),
                }
        }),
    }
}

#[cfg(test)]
mod tests;
