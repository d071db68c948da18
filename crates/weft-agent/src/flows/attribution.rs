//! What decided a connection on each local side (DESIGN.md §10): the connection conntrack
//! confirmed, evaluated against the span in force, as explain evaluates a packet. Pure.
//!
//! Why not a mark per rule in the datapath: the kernel would have written the rule it used,
//! but every allow rule then carries a `ct mark set`, which cost a full apply of the 5,000-rule
//! span about 50 ms more in the kernel (docs/datapath.md), and folded sets cannot name their
//! rule in a mark anyway. Conntrack confirms a connection only once every local chain let its
//! first packet through, so the connection is known to be allowed; what remains is which rule,
//! and that is the span's first rule (groups in order, rules in order) that allows it, the one
//! `/v1/explain` names too. A connection the span in force does not allow began under rules
//! that have changed since: its side is reported as not known, never guessed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;
use weft_compiler::NodeSpan;
use weft_compiler::eval::{self, Packet};
use weft_model::{Direction, PolicyAction, Tier};

use crate::nft::ConnectionTuple;

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
    /// The port is isolated and none of its rules in force allows the connection: it began
    /// under rules that have changed since.
    Unknown,
    /// A tiered cluster policy's rule accepted it (or, in the baseline tier, passed it).
    Tiered { by: eval::TieredRuleRef, tier: Tier, action: PolicyAction },
}

/// A local port, and what decided its side of a connection.
pub type SideDecision = (Uuid, Decision);

/// A span, with its ports by their addresses.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    span: Arc<NodeSpan>,
    ports: HashMap<IpAddr, Uuid>,
}

impl Attribution {
    pub fn of(span: Arc<NodeSpan>) -> Attribution {
        let ports = span.ports.iter().flat_map(|(id, p)| p.addresses.iter().map(move |a| (*a, *id))).collect();
        Attribution { span, ports }
    }

    /// The span this reads connections against.
    pub fn span(&self) -> &Arc<NodeSpan> {
        &self.span
    }

    /// The local port that holds `address`.
    pub fn port_of(&self, address: &IpAddr) -> Option<Uuid> {
        self.ports.get(address).copied()
    }

    /// Each local side of a connection and what decided it: (the source port and its egress
    /// decision, the destination port and its ingress decision), None for a side that is not
    /// a local port.
    pub fn decide(&self, c: &ConnectionTuple) -> (Option<SideDecision>, Option<SideDecision>) {
        let packet = Packet { src: c.src, dst: c.dst, protocol: c.protocol, port: c.dport, icmp: c.icmp };
        let side = |address: &IpAddr, direction: Direction| {
            let id = self.ports.get(address)?;
            let port = self.span.ports.get(id)?;
            let decision = match eval::side(&self.span, port, direction, &packet) {
                eval::Side::Open => Decision::Open,
                eval::Side::Allowed { group, rule } => Decision::Rule(RuleRef { group, rule }),
                eval::Side::Tiered { by, action: action @ (PolicyAction::Accept | PolicyAction::Pass) } => {
                    let tier = self.span.policies.get(&by.policy).map_or(Tier::Admin, |p| p.tier);
                    Decision::Tiered { by, tier, action }
                }
                // Conntrack confirmed it, so the rules it began under let it through: those in
                // force would not (a deny, or no rule of an isolated port), and have changed.
                eval::Side::Denied | eval::Side::Refused | eval::Side::Tiered { action: PolicyAction::Deny, .. } => {
                    Decision::Unknown
                }
            };
            Some((*id, decision))
        };
        (side(&c.src, Direction::Egress), side(&c.dst, Direction::Ingress))
    }
}

#[cfg(test)]
mod tests {
    use weft_compiler::compiled::{L4Match, RemoteMatch};
    use weft_compiler::{CompiledGroup, CompiledRule, Family, Isolation, PortPolicy};

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
            policies: Default::default(),
        }
    }

    /// web (10.9.0.1) sends through group 1 (ICMP echo, then anything); db (10.9.0.3) takes
    /// TCP 5432 through group 2 and ICMP echo through group 3; cache (10.9.0.4) is open.
    fn span() -> NodeSpan {
        let group =
            |ingress, egress| Arc::new(CompiledGroup { project: "p".into(), name: "g".into(), ingress, egress });
        let echo = L4Match::Icmp { icmp_type: 8, code: None };
        let groups = [
            (Uuid::from_u128(1), group(vec![], vec![rule(12, Some(1), echo.clone()), rule(11, None, L4Match::All)])),
            (Uuid::from_u128(2), group(vec![rule(21, Some(6), L4Match::Ranges(vec![(5432, 5432)]))], vec![])),
            (Uuid::from_u128(3), group(vec![rule(31, Some(1), echo)], vec![])),
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
            policies: Default::default(),
        }
    }

    fn tuple(src: &str, dst: &str, protocol: u8, dport: Option<u16>, icmp: Option<(u8, u8)>) -> ConnectionTuple {
        ConnectionTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            sport: dport.map(|_| 40000),
            dport,
            icmp,
        }
    }

    fn by(group: u128, rule: u128) -> Decision {
        Decision::Rule(RuleRef { group: Uuid::from_u128(group), rule: Uuid::from_u128(rule) })
    }

    #[test]
    fn each_local_side_is_decided_by_its_first_rule_that_allows() {
        let attribution = Attribution::of(Arc::new(span()));
        let (web, db, cache) = (Uuid::from_u128(101), Uuid::from_u128(103), Uuid::from_u128(104));
        // web → db on TCP 5432: web's rule of any protocol, db's port rule.
        let tcp = tuple("10.9.0.1", "10.9.0.3", 6, Some(5432), None);
        assert_eq!(attribution.decide(&tcp), (Some((web, by(1, 11))), Some((db, by(2, 21)))));
        // A ping: web's echo rule comes first in its group; db's is in its second group.
        let ping = tuple("10.9.0.1", "10.9.0.3", 1, None, Some((8, 0)));
        assert_eq!(attribution.decide(&ping), (Some((web, by(1, 12))), Some((db, by(3, 31)))));
        // From outside the node to db: only db's side; to an open port: open.
        let inbound = tuple("192.0.2.9", "10.9.0.3", 6, Some(5432), None);
        assert_eq!(attribution.decide(&inbound), (None, Some((db, by(2, 21)))));
        let open = tuple("192.0.2.9", "10.9.0.4", 6, Some(80), None);
        assert_eq!(attribution.decide(&open), (None, Some((cache, Decision::Open))));
        // Neither side local: nothing to say.
        assert_eq!(attribution.decide(&tuple("192.0.2.9", "192.0.2.8", 6, Some(80), None)), (None, None));
    }

    #[test]
    fn a_tiered_rule_that_accepted_or_passed_in_the_baseline_tier_decided_and_one_that_denies_is_not_known() {
        use weft_compiler::compiled::{CompiledPolicy, CompiledTieredRule, TieredMatch};
        let rule = |action, port: u16| CompiledTieredRule {
            name: String::new(),
            action,
            matches: vec![TieredMatch {
                protocol: Some(6),
                l4: L4Match::Ranges(vec![(port, port)]),
                remote: RemoteMatch::Any,
            }],
        };
        let policy = |tier, egress| CompiledPolicy { name: "p".into(), tier, priority: 1, ingress: vec![], egress };
        let (admin, baseline) = (Uuid::from_u128(71), Uuid::from_u128(72));
        let mut span = span();
        span.policies = Arc::new(
            [
                (
                    admin,
                    Arc::new(policy(Tier::Admin, vec![rule(PolicyAction::Deny, 22), rule(PolicyAction::Accept, 80)])),
                ),
                (baseline, Arc::new(policy(Tier::Baseline, vec![rule(PolicyAction::Pass, 443)]))),
            ]
            .into(),
        );
        // cache (open) has both policies.
        let cache = Uuid::from_u128(104);
        let mut port = span.ports[&cache].clone();
        port.policies = Arc::new(vec![admin, baseline]);
        span.ports.insert(cache, port);
        let attribution = Attribution::of(Arc::new(span));
        let from_cache = |dport| attribution.decide(&tuple("10.9.0.4", "192.0.2.9", 6, Some(dport), None)).0;
        let tiered = |policy, tier, rule, action| {
            Some((cache, Decision::Tiered { by: eval::TieredRuleRef { policy, rule }, tier, action }))
        };
        let (accept, pass) = (PolicyAction::Accept, PolicyAction::Pass);
        assert_eq!(from_cache(80), tiered(admin, Tier::Admin, 1, accept), "the admin accept, its second egress rule");
        assert_eq!(from_cache(443), tiered(baseline, Tier::Baseline, 0, pass), "a baseline pass allows");
        assert_eq!(from_cache(22), Some((cache, Decision::Unknown)), "denied now: it began under other rules");
        assert_eq!(from_cache(8080), Some((cache, Decision::Open)));
    }

    #[test]
    fn a_connection_the_rules_in_force_do_not_allow_is_not_known() {
        let attribution = Attribution::of(Arc::new(span()));
        let (web, db) = (Uuid::from_u128(101), Uuid::from_u128(103));
        // db takes no TCP 80: this connection began before db's rules changed.
        let old = tuple("10.9.0.1", "10.9.0.3", 6, Some(80), None);
        assert_eq!(attribution.decide(&old), (Some((web, by(1, 11))), Some((db, Decision::Unknown))));
    }
}
