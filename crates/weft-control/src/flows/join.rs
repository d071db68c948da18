//! The two sides of the same traffic joined into one flow (DESIGN.md §10): the source node's
//! record (its port's egress let the connection out) and the destination node's (its port's
//! ingress let it in, or dropped it), and a DNS query with the connection it began. Pure:
//! halves in, with the time they came; flows out, joined, or alone once the other half is
//! not coming (a side that is no port of weft's has none; a node may report late or not at
//! all).

use std::collections::HashMap;
use std::net::IpAddr;

use weft_model::flow::{Flow, FlowKind, SideDecision, Verdict};

/// How long a half waits for the other.
pub const HOLD_MS: i64 = 1_500;
/// Halves waiting at most: past it, the oldest go alone.
const PENDING_MAX: usize = 100_000;
/// Flows ready and not yet taken to be written, at most: past it (the flow log's writer is
/// behind), the oldest are dropped and counted ([`Joiner::dropped`]) rather than held without
/// bound. Measured (issue 23): 1,000 nodes reporting 8,000 records a second outran the writer
/// on a 2-core machine and the ready flows took the server's heap from 0.76 to 2 GiB in a
/// minute.
pub const READY_MAX: usize = 50_000;

/// What identifies the traffic both halves are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    icmp_type: Option<u8>,
    ended: bool,
}

fn key(f: &Flow) -> Key {
    Key {
        src: f.src.address,
        dst: f.dst.address,
        protocol: f.protocol,
        src_port: f.src_port,
        dst_port: f.dst_port,
        icmp_type: f.icmp_type,
        ended: f.ended,
    }
}

#[derive(Debug, Default)]
pub struct Joiner {
    /// Halves waiting for the other, with when they came.
    pending: HashMap<Key, (Flow, i64)>,
    ready: Vec<Flow>,
    /// Flows dropped because too many were ready (READY_MAX), since the last [`Joiner::due`].
    dropped: u64,
}

impl Joiner {
    /// Takes a half that came at `now_ms`: joined with the half waiting for it, or waiting.
    pub fn add(&mut self, half: Flow, now_ms: i64) {
        let k = key(&half);
        let flow = match self.pending.remove(&k) {
            Some((waiting, since)) => {
                let joined = merge(waiting, half);
                if !complete(&joined) {
                    self.pending.insert(k, (joined, since));
                    return;
                }
                joined
            }
            None if complete(&half) => half,
            None => {
                if self.pending.len() >= PENDING_MAX {
                    self.expire(i64::MAX, PENDING_MAX / 10);
                }
                self.pending.insert(k, (half, now_ms));
                return;
            }
        };
        self.ready(flow);
    }

    /// A flow ready to be written; the oldest ready go when there are too many.
    fn ready(&mut self, flow: Flow) {
        if self.ready.len() >= READY_MAX {
            let over = self.ready.len() + 1 - READY_MAX / 2;
            // Halving in one go keeps this amortised O(1).
            self.ready.drain(..over.min(self.ready.len()));
            self.dropped += over as u64;
        }
        self.ready.push(flow);
    }

    /// The flows to write at `now_ms`: the joined ones, and the halves that waited long
    /// enough; and how many were dropped since the last call (too many were ready).
    pub fn due(&mut self, now_ms: i64) -> (Vec<Flow>, u64) {
        self.expire(now_ms - HOLD_MS, usize::MAX);
        let mut out = std::mem::take(&mut self.ready);
        out.sort_by_key(|f| f.at_ms);
        (out, std::mem::take(&mut self.dropped))
    }

    /// Halves waiting.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Sends on alone at most `most` halves that came before `before`, the oldest first.
    fn expire(&mut self, before: i64, most: usize) {
        let mut old: Vec<(Key, i64)> = self
            .pending
            .iter()
            .filter(|(_, (_, since))| *since <= before)
            .map(|(k, (_, since))| (*k, *since))
            .collect();
        old.sort_by_key(|(_, since)| *since);
        for (k, _) in old.into_iter().take(most) {
            if let Some((flow, _)) = self.pending.remove(&k) {
                self.ready(flow);
            }
        }
    }
}

/// Whether a flow has all it will get: each end that is a port has its side's decision (an
/// ingress never decides what the egress dropped), and it is more than a DNS query, which
/// waits for its connection or its drop (and a query's connection for its question).
fn complete(f: &Flow) -> bool {
    if f.kind == FlowKind::Dns {
        return false;
    }
    // A port's query to a DNS server waits for its question as the question waits for it:
    // the agent reads them from different sockets, and either may come first.
    if f.protocol == 17 && f.dst_port == Some(53) && !f.ended && f.dns.is_none() && f.src.port.is_some() {
        return false;
    }
    let egress_denied = f.egress.as_ref().is_some_and(SideDecision::denies);
    let egress = f.src.port.is_none() || f.egress.is_some();
    let ingress = f.dst.port.is_none() || f.ingress.is_some() || egress_denied;
    egress && ingress
}

/// One flow of two halves: each side's decision from the half that has it (a denial over a
/// pass), the DNS question, the counters, both nodes.
fn merge(a: Flow, b: Flow) -> Flow {
    let side = |x: Option<SideDecision>, y: Option<SideDecision>| match (x, y) {
        (Some(d), _) | (_, Some(d)) if d.denies() => Some(d),
        (Some(SideDecision::AllowedUnknown), Some(other)) | (Some(other), _) => Some(other),
        (None, other) => other,
    };
    let denied = a.verdict == Verdict::Denied || b.verdict == Verdict::Denied;
    let kind = match (a.kind, b.kind) {
        (FlowKind::Denied, _) | (_, FlowKind::Denied) => FlowKind::Denied,
        (FlowKind::Connection, _) | (_, FlowKind::Connection) => FlowKind::Connection,
        _ => FlowKind::Dns,
    };
    let mut nodes = a.nodes;
    for n in b.nodes {
        if !nodes.contains(&n) {
            nodes.push(n);
        }
    }
    let with_port = |x: weft_model::flow::FlowEndpoint, y: weft_model::flow::FlowEndpoint| {
        if x.port.is_some() { x } else { y }
    };
    Flow {
        id: 0,
        at_ms: a.at_ms.min(b.at_ms),
        kind,
        verdict: if denied { Verdict::Denied } else { Verdict::Allowed },
        ended: a.ended,
        protocol: a.protocol,
        src: with_port(a.src, b.src),
        dst: with_port(a.dst, b.dst),
        src_port: a.src_port.or(b.src_port),
        dst_port: a.dst_port.or(b.dst_port),
        icmp_type: a.icmp_type.or(b.icmp_type),
        icmp_code: a.icmp_code.or(b.icmp_code),
        egress: side(a.egress, b.egress),
        ingress: side(a.ingress, b.ingress),
        dns: a.dns.or(b.dns),
        counters: a.counters.or(b.counters),
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use weft_model::flow::{DnsQuestion, FlowEndpoint, FlowGroup, FlowRule};

    use super::*;

    fn endpoint(address: &str, port: Option<u128>) -> FlowEndpoint {
        FlowEndpoint { port: port.map(uuid::Uuid::from_u128), ..FlowEndpoint::outside(address.parse().unwrap()) }
    }

    fn half(node: &str, kind: FlowKind, egress: Option<SideDecision>, ingress: Option<SideDecision>) -> Flow {
        Flow {
            id: 0,
            at_ms: 10,
            kind,
            verdict: if matches!(ingress, Some(SideDecision::Denied { .. })) {
                Verdict::Denied
            } else {
                Verdict::Allowed
            },
            ended: false,
            protocol: 6,
            src: endpoint("10.0.0.1", Some(1)),
            dst: endpoint("10.0.0.2", Some(2)),
            src_port: Some(40000),
            dst_port: Some(5432),
            icmp_type: None,
            icmp_code: None,
            egress,
            ingress,
            dns: None,
            counters: None,
            nodes: vec![node.into()],
        }
    }

    fn rule(n: u128) -> SideDecision {
        SideDecision::Allowed {
            rule: FlowRule {
                group: uuid::Uuid::from_u128(n),
                project: "p".into(),
                group_name: "g".into(),
                rule: uuid::Uuid::from_u128(n + 100),
                origin: None,
            },
        }
    }

    #[test]
    fn the_two_nodes_halves_of_a_connection_join_into_one_flow_with_both_decisions() {
        let mut j = Joiner::default();
        j.add(half("n1", FlowKind::Connection, Some(rule(1)), None), 0);
        assert!(j.due(10).0.is_empty(), "waiting for the destination's half");
        j.add(half("n2", FlowKind::Connection, None, Some(rule(2))), 20);
        let flows = j.due(30).0;
        assert_eq!(flows.len(), 1);
        let f = &flows[0];
        assert_eq!((f.egress.clone(), f.ingress.clone()), (Some(rule(1)), Some(rule(2))));
        assert_eq!(f.nodes, ["n1", "n2"]);
        assert_eq!(j.waiting(), 0);
    }

    #[test]
    fn a_connection_the_destination_drops_is_one_denied_flow_and_a_lone_half_goes_alone_in_time() {
        let mut j = Joiner::default();
        let isolated = SideDecision::Denied {
            isolated_by: vec![FlowGroup { id: uuid::Uuid::from_u128(9), project: "p".into(), name: "deny".into() }],
        };
        j.add(half("n2", FlowKind::Denied, None, Some(isolated.clone())), 0);
        j.add(half("n1", FlowKind::Connection, Some(SideDecision::Open), None), 5);
        let f = j.due(6).0.pop().expect("joined");
        assert_eq!((f.kind, f.verdict), (FlowKind::Denied, Verdict::Denied));
        assert_eq!((f.egress, f.ingress), (Some(SideDecision::Open), Some(isolated)));
        // A half whose other never comes goes alone once it has waited.
        j.add(half("n1", FlowKind::Connection, Some(rule(1)), None), 100);
        assert!(j.due(100 + HOLD_MS - 1).0.is_empty());
        assert_eq!(j.due(100 + HOLD_MS).0.len(), 1);
        // To outside weft: nothing to wait for.
        let mut out = half("n1", FlowKind::Connection, Some(rule(1)), None);
        out.dst = endpoint("192.0.2.9", None);
        j.add(out, 200);
        assert_eq!(j.due(200).0.len(), 1);
    }

    #[test]
    fn ready_flows_a_writer_does_not_take_are_bounded_the_oldest_dropped_and_counted() {
        let mut j = Joiner::default();
        let n = READY_MAX + READY_MAX / 4;
        for i in 0..n {
            // Complete alone (to outside weft): ready at once.
            let mut out = half("n1", FlowKind::Connection, Some(rule(1)), None);
            out.dst = endpoint("192.0.2.9", None);
            out.at_ms = i as i64;
            j.add(out, i as i64);
            assert!(j.ready.len() <= READY_MAX);
        }
        let (due, dropped) = j.due(n as i64);
        assert_eq!(due.len() as u64 + dropped, n as u64, "every flow written or counted");
        assert!(dropped > 0);
        assert_eq!(due.last().map(|f| f.at_ms), Some(n as i64 - 1), "the newest kept");
        assert_eq!(due.first().map(|f| f.at_ms), Some(dropped as i64), "the oldest dropped");
        assert_eq!(j.due(n as i64), (vec![], 0), "counted once");
    }

    #[test]
    fn a_dns_query_joins_its_connection() {
        let mut j = Joiner::default();
        let mut query = half("n1", FlowKind::Dns, None, None);
        query.dst = endpoint("10.96.0.10", None);
        query.dns = Some(DnsQuestion { name: "yelb-db.default.svc.cluster.local".into(), qtype: 1 });
        let mut connection = half("n1", FlowKind::Connection, Some(rule(1)), None);
        connection.dst = query.dst.clone();
        j.add(query, 0);
        j.add(connection, 1);
        let f = j.due(2).0.pop().expect("joined");
        assert_eq!(f.kind, FlowKind::Connection);
        assert_eq!(f.dns.map(|d| d.name).as_deref(), Some("yelb-db.default.svc.cluster.local"));
        assert_eq!(f.egress, Some(rule(1)));
    }

    #[test]
    fn a_dns_connection_whose_both_sides_came_first_waits_for_its_question() {
        let udp = |mut f: Flow| {
            f.protocol = 17;
            f.dst_port = Some(53);
            f
        };
        let mut j = Joiner::default();
        j.add(udp(half("n1", FlowKind::Connection, Some(rule(1)), None)), 0);
        j.add(udp(half("n2", FlowKind::Connection, None, Some(SideDecision::Open))), 1);
        assert!(j.due(2).0.is_empty(), "both sides, but the question may still come");
        let mut query = udp(half("n1", FlowKind::Dns, None, None));
        query.dns = Some(DnsQuestion { name: "redis-server.default.svc.cluster.local".into(), qtype: 1 });
        j.add(query, 3);
        let f = j.due(4).0.pop().expect("joined");
        assert_eq!((f.kind, f.egress, f.ingress), (FlowKind::Connection, Some(rule(1)), Some(SideDecision::Open)));
        assert_eq!(f.dns.map(|d| d.name).as_deref(), Some("redis-server.default.svc.cluster.local"));
        assert_eq!(f.nodes, ["n1", "n2"]);
        // With no question (a node that reads no names), the connection goes alone in time.
        j.add(udp(half("n1", FlowKind::Connection, Some(rule(1)), None)), 10);
        assert!(j.due(10 + HOLD_MS - 1).0.is_empty());
        assert_eq!(j.due(10 + HOLD_MS).0.len(), 1);
    }
}
