//! Evaluating the compiled form: what an agent's datapath decides for a packet. The in-memory
//! datapath and explain use this; property tests check it against the reference semantics.

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;
use weft_model::{Direction, PolicyAction, Tier};

use crate::compiled::{CompiledPolicy, Isolation, L4Match, NodeSpan, PortPolicy, RemoteMatch};

/// One packet's headers, as far as policy looks at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Destination port, for TCP, UDP and SCTP.
    pub port: Option<u16>,
    /// ICMP or ICMPv6 (type, code).
    pub icmp: Option<(u8, u8)>,
}

/// A tiered policy's rule: the policy and the rule's position in its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TieredRuleRef {
    pub policy: Uuid,
    pub rule: u16,
}

/// What one side (a port's ingress or egress) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Nothing isolates the port in this direction and no tiered rule matched.
    Open,
    /// Allowed by this group's rule.
    Allowed { group: Uuid, rule: Uuid },
    /// Isolated, and no rule allows it.
    Denied,
    /// The port's address in the packet is one another port names too: dispatched to neither.
    Refused,
    /// A tiered policy's rule decided: accept or deny (either tier), or pass in the baseline
    /// tier (allowed). An admin pass decides nothing: the security groups do
    /// ([`Decision::passed`]).
    Tiered { by: TieredRuleRef, action: PolicyAction },
}

impl Side {
    pub fn allows(self) -> bool {
        !matches!(self, Side::Denied | Side::Refused | Side::Tiered { action: PolicyAction::Deny, .. })
    }
}

/// One side's decision, and the admin rule that passed it to the security groups, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub side: Side,
    pub passed: Option<TieredRuleRef>,
}

/// Decides one direction of one port of `span` for `packet`.
pub fn side(span: &NodeSpan, port: &PortPolicy, direction: Direction, packet: &Packet) -> Side {
    decide(span, port, direction, packet).side
}

/// Decides one direction of one port of `span` for `packet` (DESIGN.md §11): the admin tier,
/// then the security groups where they isolate the port, then the baseline tier.
pub fn decide(span: &NodeSpan, port: &PortPolicy, direction: Direction, packet: &Packet) -> Decision {
    let local = match direction {
        Direction::Ingress => packet.dst,
        Direction::Egress => packet.src,
    };
    if port.refused_addresses.contains(&local) {
        return Decision { side: Side::Refused, passed: None };
    }
    let policies = || port.policies.iter().filter_map(|id| Some((*id, span.policies.get(id)?)));
    let admin = tier_decides(span, port, direction, packet, policies().filter(|(_, p)| p.tier == Tier::Admin));
    let passed = match admin {
        TierOutcome::Decided(by, action) => return Decision { side: Side::Tiered { by, action }, passed: None },
        TierOutcome::Passed(by) => Some(by),
        TierOutcome::NoMatch => None,
    };
    let isolation = match direction {
        Direction::Ingress => &port.ingress,
        Direction::Egress => &port.egress,
    };
    if let Isolation::Isolated(groups) = isolation {
        return Decision { side: groups_decide(span, port, groups, direction, packet), passed };
    }
    let side = match tier_decides(span, port, direction, packet, policies().filter(|(_, p)| p.tier == Tier::Baseline)) {
        TierOutcome::Decided(by, action) => Side::Tiered { by, action },
        TierOutcome::Passed(by) => Side::Tiered { by, action: PolicyAction::Pass },
        TierOutcome::NoMatch => Side::Open,
    };
    Decision { side, passed }
}

enum TierOutcome {
    Decided(TieredRuleRef, PolicyAction),
    Passed(TieredRuleRef),
    NoMatch,
}

/// The first rule of the tier's policies (in order) that matches.
fn tier_decides<'a>(
    span: &NodeSpan,
    port: &PortPolicy,
    direction: Direction,
    packet: &Packet,
    policies: impl Iterator<Item = (Uuid, &'a Arc<CompiledPolicy>)>,
) -> TierOutcome {
    for (id, policy) in policies {
        for (i, rule) in policy.rules(direction).iter().enumerate() {
            let hit = rule.matches.iter().any(|m| matches(span, port, direction, packet, m.protocol, &m.l4, &m.remote));
            if hit {
                let by = TieredRuleRef { policy: id, rule: i as u16 };
                return match rule.action {
                    PolicyAction::Pass => TierOutcome::Passed(by),
                    action => TierOutcome::Decided(by, action),
                };
            }
        }
    }
    TierOutcome::NoMatch
}

/// The security groups that isolate the port: allowed by the first rule that matches.
fn groups_decide(span: &NodeSpan, port: &PortPolicy, groups: &[Uuid], direction: Direction, packet: &Packet) -> Side {
    for g in groups.iter() {
        let Some(group) = span.groups.get(g) else { continue };
        let rules = match direction {
            Direction::Ingress => &group.ingress,
            Direction::Egress => &group.egress,
        };
        for rule in rules {
            if rule.family.covers(&packet.dst)
                && matches(span, port, direction, packet, rule.protocol, &rule.l4, &rule.remote)
            {
                return Side::Allowed { group: *g, rule: rule.rule };
            }
        }
    }
    Side::Denied
}

/// Whether the packet has the protocol, the port (or ICMP type) and the remote end.
fn matches(
    span: &NodeSpan,
    port: &PortPolicy,
    direction: Direction,
    packet: &Packet,
    protocol: Option<u8>,
    l4: &L4Match,
    remote: &RemoteMatch,
) -> bool {
    if protocol.is_some_and(|p| p != packet.protocol) {
        return false;
    }
    let l4 = match l4 {
        L4Match::All => true,
        L4Match::Ranges(ranges) => packet.port.is_some_and(|p| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p))),
        L4Match::Named(name) => port
            .named_ports
            .get(name)
            .is_some_and(|np| np.protocol.number() == Some(packet.protocol) && packet.port == Some(np.port as u16)),
        L4Match::Icmp { icmp_type, code } => {
            packet.icmp.is_some_and(|(t, c)| t == *icmp_type && code.is_none_or(|code| code == c))
        }
    };
    if !l4 {
        return false;
    }
    let other = match direction {
        Direction::Ingress => packet.src,
        Direction::Egress => packet.dst,
    };
    match remote {
        RemoteMatch::Any => true,
        RemoteMatch::Set(id) => span.sets.get(id).is_some_and(|s| s.contains(&other)),
        RemoteMatch::Pairs(id) => {
            packet.port.is_some_and(|p| span.sets.get(id).is_some_and(|s| s.contains_pair(&packet.dst, p)))
        }
    }
}

/// IPv6 neighbour discovery (ICMPv6 133-137): always allowed.
pub fn is_neighbour_discovery(packet: &Packet) -> bool {
    packet.protocol == 58 && packet.icmp.is_some_and(|(t, _)| (133..=137).contains(&t))
}
