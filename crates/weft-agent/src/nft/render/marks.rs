//! What a connection's mark says decided it, on each side (DESIGN.md §10): the inverse of the
//! marks the render writes ([`super::rule_mark`]). Pure: a span's marks, and a connection's
//! addresses, protocol, port and mark in; each local side's decision out.

use std::collections::HashMap;
use std::net::IpAddr;

use uuid::Uuid;
use weft_compiler::{Isolation, NodeSpan};

use super::fold::FoldBox;
use super::{
    Dir, FOLDED_EGRESS_MARK, FOLDED_INGRESS_MARK, V4_V6, fold_boxes, group_users, has_rules, in_place, rule_lines,
    rule_mark,
};

/// A rule of a security group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub group: Uuid,
    pub rule: Uuid,
}

/// What let a connection through on one side (a port's egress or ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No group isolates the port this way: everything is allowed.
    Open,
    /// This rule allowed it.
    Rule(RuleRef),
    /// The port is isolated, and the mark names none of its rules: the connection began
    /// before the port was isolated (or before its rules were marked), or two pairs of rules
    /// would make the same mark.
    Unknown,
}

/// What one side of a local port's traffic can be decided by.
#[derive(Debug, Clone, Default)]
struct Side {
    isolated: bool,
    /// The marks of the rules written as rules (None: two rules of the port share a mark).
    rules: HashMap<u32, Option<RuleRef>>,
    /// The folded rules, in the order the port's chain has them.
    folds: Vec<(RuleRef, FoldBox)>,
}

#[derive(Debug, Clone)]
struct PortMarks {
    port: Uuid,
    ingress: Side,
    egress: Side,
}

/// A rule, with its boxes when it folds.
type FoldedOrNot = (RuleRef, Option<Vec<FoldBox>>);

/// A local port, and what decided its side of a connection.
pub type SideDecision = (Uuid, Decision);

/// A span's marks, by the local addresses of its ports.
#[derive(Debug, Clone, Default)]
pub struct SpanMarks {
    ports: HashMap<IpAddr, std::sync::Arc<PortMarks>>,
}

/// A connection as conntrack holds it: its original direction, and its mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub dport: Option<u16>,
    pub mark: u32,
}

impl SpanMarks {
    /// The marks of `span`: for each port, each side's rules as the render writes them.
    pub fn of(span: &NodeSpan) -> SpanMarks {
        let users = group_users(span);
        // Per group and direction: its rules, with their boxes when they fold.
        let mut groups: HashMap<(Uuid, Dir), Vec<FoldedOrNot>> = HashMap::new();
        let mut ports = HashMap::new();
        for (id, port) in &span.ports {
            let mut marks = PortMarks { port: *id, ingress: Side::default(), egress: Side::default() };
            for (dir, isolation) in [(Dir::In, &port.ingress), (Dir::Out, &port.egress)] {
                let Isolation::Isolated(isolating) = isolation else { continue };
                let side = if dir == Dir::In { &mut marks.ingress } else { &mut marks.egress };
                side.isolated = true;
                for g in isolating.iter() {
                    let Some(group) = span.groups.get(g) else { continue };
                    if !has_rules(group, dir) {
                        continue;
                    }
                    let rules = groups.entry((*g, dir)).or_insert_with(|| {
                        let rules = if dir == Dir::In { &group.ingress } else { &group.egress };
                        let count: usize = rules
                            .iter()
                            .map(|r| {
                                V4_V6.iter().map(|v6| rule_lines(*g, r, dir, *v6, &span.sets).len()).sum::<usize>()
                            })
                            .sum();
                        let here = in_place(count, &users, *g, dir);
                        // Only a group written in place folds (as `render_group` decides).
                        rules
                            .iter()
                            .map(|r| {
                                let folds = if here { fold_boxes(r, &span.sets) } else { None };
                                (RuleRef { group: *g, rule: r.rule }, folds)
                            })
                            .collect()
                    });
                    for (rule, folds) in rules.iter() {
                        match folds {
                            Some(boxes) => side.folds.extend(boxes.iter().map(|b| (*rule, *b))),
                            None => {
                                let mark = rule_mark(rule.group, rule.rule, dir == Dir::In);
                                let entry = side.rules.entry(mark).or_insert(Some(*rule));
                                if *entry != Some(*rule) {
                                    *entry = None;
                                }
                            }
                        }
                    }
                }
            }
            let marks = std::sync::Arc::new(marks);
            for a in &port.addresses {
                ports.insert(*a, std::sync::Arc::clone(&marks));
            }
        }
        SpanMarks { ports }
    }

    /// Each local side of a connection and what decided it: (the source port and its egress
    /// decision, the destination port and its ingress decision), None for a side that is not
    /// a local port.
    pub fn decide(&self, c: &Marked) -> (Option<SideDecision>, Option<SideDecision>) {
        let (src, dst) = (self.ports.get(&c.src), self.ports.get(&c.dst));
        let egress = src.map(|p| candidates(&p.egress, FOLDED_EGRESS_MARK, c, c.dst));
        let ingress = dst.map(|p| candidates(&p.ingress, FOLDED_INGRESS_MARK, c, c.src));
        let none = [(0u32, Decision::Open)];
        let (es, is) = (egress.as_deref().unwrap_or(&none), ingress.as_deref().unwrap_or(&none));
        // The pairs whose union is the mark; one is the answer, none or several are not known.
        let mut found: Option<(Decision, Decision)> = None;
        let mut several = false;
        for (em, ed) in es {
            if em & !c.mark != 0 {
                continue;
            }
            for (im, id) in is {
                if em | im == c.mark {
                    if found.is_some_and(|f| f != (*ed, *id)) {
                        several = true;
                    }
                    found = Some((*ed, *id));
                }
            }
        }
        let (ed, id) = match found {
            Some(pair) if !several => pair,
            _ => (Decision::Unknown, Decision::Unknown),
        };
        let side = |p: Option<&std::sync::Arc<PortMarks>>, d: Decision, s: fn(&PortMarks) -> &Side| {
            p.map(|p| (p.port, if s(p).isolated { d } else { Decision::Open }))
        };
        (side(src, ed, |p| &p.egress), side(dst, id, |p| &p.ingress))
    }
}

/// The marks a side may have written, each with the decision it means.
fn candidates(side: &Side, folded: u32, c: &Marked, remote: IpAddr) -> Vec<(u32, Decision)> {
    if !side.isolated {
        return vec![(0, Decision::Open)];
    }
    let mut out: Vec<(u32, Decision)> =
        side.rules.iter().filter_map(|(mark, rule)| rule.map(|r| (*mark, Decision::Rule(r)))).collect();
    let remote = match remote {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    // The first folded rule whose box holds the connection: the set held its element.
    let fold = side.folds.iter().find(|(_, b)| {
        b.v6 == c.src.is_ipv6()
            && b.proto == c.protocol
            && b.remote.0 <= remote
            && remote <= b.remote.1
            && c.dport.is_some_and(|p| b.ports.0 <= p && p <= b.ports.1)
    });
    if let Some((rule, _)) = fold {
        out.push((folded, Decision::Rule(*rule)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weft_compiler::compiled::{L4Match, RemoteMatch};
    use weft_compiler::{CompiledGroup, CompiledRule, Family, PortPolicy};

    use super::*;

    fn rule(n: u128, protocol: Option<u8>, l4: L4Match) -> CompiledRule {
        CompiledRule { rule: Uuid::from_u128(n), family: Family::Both, protocol, l4, remote: RemoteMatch::Any }
    }

    fn port(address: &str, ingress: &[Uuid], egress: &[Uuid]) -> PortPolicy {
        let side = |groups: &[Uuid]| {
            if groups.is_empty() { Isolation::Open } else { Isolation::Isolated(Arc::new(groups.to_vec())) }
        };
        PortPolicy {
            project: "p".into(),
            name: address.into(),
            addresses: vec![address.parse().unwrap()],
            refused_addresses: vec![],
            interface: format!("weft{address}"),
            instance: None,
            named_ports: Default::default(),
            ingress: side(ingress),
            egress: side(egress),
        }
    }

    /// web (10.9.0.1) sends through group 1 (any protocol: a rule of its own; ICMP echo: one
    /// more); db (10.9.0.3) takes TCP 5432 through group 2 (folded) and ICMP through group 3
    /// (a rule); cache (10.9.0.4) is open both ways.
    fn span() -> NodeSpan {
        let group =
            |ingress, egress| Arc::new(CompiledGroup { project: "p".into(), name: "g".into(), ingress, egress });
        let icmp = L4Match::Icmp { icmp_type: 8, code: None };
        let groups = [
            (Uuid::from_u128(1), group(vec![], vec![rule(11, None, L4Match::All), rule(12, Some(1), icmp.clone())])),
            (Uuid::from_u128(2), group(vec![rule(21, Some(6), L4Match::Ranges(vec![(5432, 5432)]))], vec![])),
            (Uuid::from_u128(3), group(vec![rule(31, Some(1), icmp)], vec![])),
        ];
        NodeSpan {
            ports: [
                (Uuid::from_u128(101), port("10.9.0.1", &[], &[Uuid::from_u128(1)])),
                (Uuid::from_u128(103), port("10.9.0.3", &[Uuid::from_u128(2), Uuid::from_u128(3)], &[])),
                (Uuid::from_u128(104), port("10.9.0.4", &[], &[])),
            ]
            .into(),
            groups: Arc::new(groups.into_iter().collect()),
            sets: Default::default(),
        }
    }

    fn marked(src: &str, dst: &str, protocol: u8, dport: Option<u16>, mark: u32) -> Marked {
        Marked { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol, dport, mark }
    }

    fn by(group: u128, rule: u128) -> Decision {
        Decision::Rule(RuleRef { group: Uuid::from_u128(group), rule: Uuid::from_u128(rule) })
    }

    #[test]
    fn a_mark_names_the_rule_of_each_local_side_folded_or_not() {
        let span = span();
        // The render writes these marks where this test reads them: a rule's own and the fold's.
        let table = super::super::render(&span);
        let written = |needle: String| table.chains.values().flat_map(|c| &c.rules).any(|r| r.expr().contains(&needle));
        assert!(written(format!("\"value\":{}", rule_mark(Uuid::from_u128(1), Uuid::from_u128(11), false))));
        assert!(written(format!("{FOLDED_INGRESS_MARK}")));
        let marks = SpanMarks::of(&span);
        let (web, db, cache) = (Uuid::from_u128(101), Uuid::from_u128(103), Uuid::from_u128(104));
        let any_out = rule_mark(Uuid::from_u128(1), Uuid::from_u128(11), false);
        let echo_out = rule_mark(Uuid::from_u128(1), Uuid::from_u128(12), false);
        let echo_in = rule_mark(Uuid::from_u128(3), Uuid::from_u128(31), true);
        // web → db on TCP 5432: web's rule of any protocol, db's folded rule.
        let tcp = marked("10.9.0.1", "10.9.0.3", 6, Some(5432), any_out | FOLDED_INGRESS_MARK);
        assert_eq!(marks.decide(&tcp), (Some((web, by(1, 11))), Some((db, by(2, 21)))));
        // A ping: web's echo rule comes second, but the mark says it was the first.
        let ping = marked("10.9.0.1", "10.9.0.3", 1, None, any_out | echo_in);
        assert_eq!(marks.decide(&ping), (Some((web, by(1, 11))), Some((db, by(3, 31)))));
        let ping = marked("10.9.0.1", "10.9.0.3", 1, None, echo_out | echo_in);
        assert_eq!(marks.decide(&ping), (Some((web, by(1, 12))), Some((db, by(3, 31)))));
        // From outside the node to db: only db's side; to an open port: open, whatever the mark.
        let inbound = marked("192.0.2.9", "10.9.0.3", 6, Some(5432), FOLDED_INGRESS_MARK);
        assert_eq!(marks.decide(&inbound), (None, Some((db, by(2, 21)))));
        let open = marked("192.0.2.9", "10.9.0.4", 6, Some(80), 0);
        assert_eq!(marks.decide(&open), (None, Some((cache, Decision::Open))));
        // A connection from before db was isolated (no mark), or a mark no pair of rules
        // makes: not known, never guessed.
        let old = marked("192.0.2.9", "10.9.0.3", 6, Some(5432), 0);
        assert_eq!(marks.decide(&old), (None, Some((db, Decision::Unknown))));
        let odd = marked("10.9.0.1", "10.9.0.3", 6, Some(5432), 0xdead_beef);
        assert_eq!(marks.decide(&odd), (Some((web, Decision::Unknown)), Some((db, Decision::Unknown))));
        // The folded mark on a port the fold does not hold (TCP 80): not known either.
        let elsewhere = marked("192.0.2.9", "10.9.0.3", 6, Some(80), FOLDED_INGRESS_MARK);
        assert_eq!(marks.decide(&elsewhere), (None, Some((db, Decision::Unknown))));
    }
}
