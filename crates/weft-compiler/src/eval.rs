//! Evaluating the compiled form: what an agent's datapath decides for a packet. The in-memory
//! datapath and explain use this; property tests check it against the reference semantics.

use std::net::IpAddr;

use uuid::Uuid;
use weft_model::Direction;

use crate::compiled::{Isolation, L4Match, NodeSpan, PortPolicy, RemoteMatch};

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

/// What one side (a port's ingress or egress) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// No group isolates the port in this direction.
    Open,
    /// Allowed by this group's rule.
    Allowed { group: Uuid, rule: Uuid },
    /// Isolated, and no rule allows it.
    Denied,
    /// The port's address in the packet is one another port names too: dispatched to neither.
    Refused,
}

impl Side {
    pub fn allows(self) -> bool {
        !matches!(self, Side::Denied | Side::Refused)
    }
}

/// Decides one direction of one port of `span` for `packet`.
pub fn side(span: &NodeSpan, port: &PortPolicy, direction: Direction, packet: &Packet) -> Side {
    let local = match direction {
        Direction::Ingress => packet.dst,
        Direction::Egress => packet.src,
    };
    if port.refused_addresses.contains(&local) {
        return Side::Refused;
    }
    let isolation = match direction {
        Direction::Ingress => &port.ingress,
        Direction::Egress => &port.egress,
    };
    let Isolation::Isolated(groups) = isolation else { return Side::Open };
    for g in groups.iter() {
        let Some(group) = span.groups.get(g) else { continue };
        let rules = match direction {
            Direction::Ingress => &group.ingress,
            Direction::Egress => &group.egress,
        };
        for rule in rules {
            if !rule.family.covers(&packet.dst) || rule.protocol.is_some_and(|p| p != packet.protocol) {
                continue;
            }
            let l4 = match &rule.l4 {
                L4Match::All => true,
                L4Match::Ranges(ranges) => {
                    packet.port.is_some_and(|p| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p)))
                }
                L4Match::Named(name) => port.named_ports.get(name).is_some_and(|np| {
                    np.protocol.number() == Some(packet.protocol) && packet.port == Some(np.port as u16)
                }),
                L4Match::Icmp { icmp_type, code } => {
                    packet.icmp.is_some_and(|(t, c)| t == *icmp_type && code.is_none_or(|code| code == c))
                }
            };
            if !l4 {
                continue;
            }
            let remote = match direction {
                Direction::Ingress => packet.src,
                Direction::Egress => packet.dst,
            };
            let matched = match &rule.remote {
                RemoteMatch::Any => true,
                RemoteMatch::Set(id) => span.sets.get(id).is_some_and(|s| s.contains(&remote)),
                RemoteMatch::Pairs(id) => {
                    packet.port.is_some_and(|p| span.sets.get(id).is_some_and(|s| s.contains_pair(&packet.dst, p)))
                }
            };
            if matched {
                return Side::Allowed { group: *g, rule: rule.rule };
            }
        }
    }
    Side::Denied
}

/// IPv6 neighbour discovery (ICMPv6 133-137): always allowed.
pub fn is_neighbour_discovery(packet: &Packet) -> bool {
    packet.protocol == 58 && packet.icmp.is_some_and(|(t, _)| (133..=137).contains(&t))
}
