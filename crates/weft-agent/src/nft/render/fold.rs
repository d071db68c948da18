//! The fold: rules of groups written in place that allow port ranges of TCP, UDP or SCTP
//! become boxes (local address × remote range × protocol × port range) in one concatenated
//! interval set per direction and family, instead of kernel rules (docs/datapath.md). Pure
//! geometry: the kernel refuses overlapping elements, so boxes are made disjoint here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use weft_compiler::CompiledRule;
use weft_compiler::compiled::{L4Match, RemoteMatch};

use super::{PORTED, SetShape, Sets, V4_V6, set_shape};
use crate::nft::ruleset::Element;

/// What one folded rule allows, for every local address of a port it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct FoldBox {
    pub(super) v6: bool,
    pub(super) proto: u8,
    /// First and last remote address.
    pub(super) remote: AddressRange,
    /// First and last port.
    pub(super) ports: PortRange,
}

/// The boxes a rule allows, when it folds: a remote of any address or of a set written
/// inline, and ports (or all ports) of TCP, UDP or SCTP. Rules of any protocol, ICMP, named
/// ports and named sets do not fold.
pub(super) fn fold_boxes(rule: &CompiledRule, sets: &Sets) -> Option<Vec<FoldBox>> {
    let protocols = match (&rule.l4, rule.protocol) {
        (L4Match::Ranges(_), None) => PORTED.to_vec(),
        (L4Match::Ranges(_) | L4Match::All, Some(p)) if PORTED.contains(&p) => vec![p],
        _ => return None,
    };
    let ports = match &rule.l4 {
        L4Match::Ranges(r) => r.clone(),
        _ => vec![(0, u16::MAX)],
    };
    let remotes: Vec<(bool, (u128, u128))> = match &rule.remote {
        RemoteMatch::Any => V4_V6
            .iter()
            .filter(|v6| rule.family.has(**v6))
            .map(|v6| (*v6, (0, if *v6 { u128::MAX } else { 0xffff_ffff })))
            .collect(),
        // Only sets written inline fold: any change of one re-renders the groups using it
        // (see `delta_commands`), where a named set's member change is an element of its own.
        RemoteMatch::Set(id) => match sets.get(id).map(|s| set_shape(s)) {
            // A set the span does not hold matches nothing.
            None => Vec::new(),
            Some(SetShape::Inline(prefixes)) => prefixes
                .iter()
                .map(|p| (p.addr().is_ipv6(), (number(p.network()), number(p.broadcast()))))
                .filter(|(v6, _)| rule.family.has(*v6))
                .collect(),
            Some(SetShape::Named { .. }) => return None,
        },
        RemoteMatch::Pairs(_) => return None,
    };
    let mut boxes = Vec::new();
    for (v6, remote) in remotes {
        for proto in &protocols {
            for range in &ports {
                boxes.push(FoldBox { v6, proto: *proto, remote, ports: *range });
            }
        }
    }
    Some(boxes)
}

fn number(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

fn address(n: u128, v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(n.into()) } else { IpAddr::V4((n as u32).into()) }
}

/// First and last of a range of addresses, as numbers.
type AddressRange = (u128, u128);
/// First and last of a range of ports.
type PortRange = (u16, u16);
/// A remote range and a port range.
type RangeBox = (AddressRange, PortRange);

/// The union of boxes (remote range × port range) as boxes that do not overlap: the kernel
/// refuses an element of a concatenated interval set that overlaps another, and rules
/// overlap freely (10.0.0.0/8 port 80–90 and 10.1.0.0/16 port 85–100). The remote ranges are
/// cut where any box starts or ends; each piece takes the merged ports of the boxes covering
/// it, and neighbouring pieces with the same ports join again.
fn disjoint(boxes: &[RangeBox]) -> Vec<RangeBox> {
    let mut cuts: Vec<u128> = boxes.iter().flat_map(|((lo, hi), _)| [Some(*lo), hi.checked_add(1)]).flatten().collect();
    cuts.sort_unstable();
    cuts.dedup();
    // (remote range, merged ports) of each piece some box covers, in order.
    let mut pieces: Vec<(AddressRange, Vec<PortRange>)> = Vec::new();
    for (i, lo) in cuts.iter().enumerate() {
        let hi = cuts.get(i + 1).map_or(u128::MAX, |next| next - 1);
        let mut ports: Vec<(u16, u16)> =
            boxes.iter().filter(|((a, b), _)| *a <= *lo && hi <= *b).map(|(_, p)| *p).collect();
        if ports.is_empty() {
            continue;
        }
        ports.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, b) in ports {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        match pieces.last_mut() {
            Some(((_, prev_hi), prev)) if prev_hi.checked_add(1) == Some(*lo) && *prev == merged => *prev_hi = hi,
            _ => pieces.push(((*lo, hi), merged)),
        }
    }
    pieces.into_iter().flat_map(|(remote, ports)| ports.into_iter().map(move |p| (remote, p))).collect()
}

/// The folded elements of one local address: the boxes of its family, made disjoint per
/// protocol.
pub(super) fn fold_elements(local: IpAddr, boxes: &[FoldBox]) -> impl Iterator<Item = Element> + '_ {
    let v6 = local.is_ipv6();
    let protocols: BTreeSet<u8> = boxes.iter().filter(|b| b.v6 == v6).map(|b| b.proto).collect();
    protocols.into_iter().flat_map(move |proto| {
        let of_proto: Vec<_> =
            boxes.iter().filter(|b| b.v6 == v6 && b.proto == proto).map(|b| (b.remote, b.ports)).collect();
        disjoint(&of_proto).into_iter().map(move |(remote, ports)| Element::Fold {
            local,
            remote: (address(remote.0, v6), address(remote.1, v6)),
            proto,
            ports,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covered(boxes: &[RangeBox], remote: u128, port: u16) -> bool {
        boxes.iter().any(|((a, b), (lo, hi))| *a <= remote && remote <= *b && *lo <= port && port <= *hi)
    }

    proptest! {
        #[test]
        fn disjoint_boxes_cover_what_the_boxes_cover_once(
            raw in prop::collection::vec((0u128..40, 0u128..12, 0u16..40, 0u16..12), 0..8),
        ) {
            let boxes: Vec<RangeBox> = raw.iter().map(|(a, w, p, q)| ((*a, a + w), (*p, p + q))).collect();
            let pieces = disjoint(&boxes);
            for remote in 0..56 {
                for port in 0..56 {
                    let hits = pieces.iter().filter(|b| covered(std::slice::from_ref(b), remote, port)).count();
                    prop_assert_eq!(hits, usize::from(covered(&boxes, remote, port)), "at {} {}", remote, port);
                }
            }
        }
    }

    #[test]
    fn disjoint_boxes_join_neighbours_and_reach_the_ends_of_the_space() {
        // Two halves of a range with the same ports are one box; the top of the space, too.
        let boxes = [((0, 9), (80, 80)), ((10, 19), (80, 80)), ((u128::MAX - 1, u128::MAX), (1, 2))];
        assert_eq!(disjoint(&boxes), vec![((0, 19), (80, 80)), ((u128::MAX - 1, u128::MAX), (1, 2))]);
        // Overlapping remotes split where their ports differ; touching ports merge.
        let boxes = [((0, 9), (80, 90)), ((5, 14), (91, 100))];
        assert_eq!(disjoint(&boxes), vec![((0, 4), (80, 90)), ((5, 9), (80, 100)), ((10, 14), (91, 100))]);
    }
}
