//! Conntrack messages (ctnetlink), pure: the dump request, an entry's original tuple read
//! from a listing, and the request that deletes an entry. [`super::netlink::Socket`] sends
//! them; [`super::conntrack`] decides which entries go.

use std::net::IpAddr;

use super::wire::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, align, attributes, ip_address, message};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
/// The multicast groups of new and destroyed connections (NFNLGRP_CONNTRACK_NEW, _DESTROY).
pub(super) const GROUP_NEW: u32 = 1;
pub(super) const GROUP_DESTROY: u32 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

/// One conntrack entry's original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp: Option<(u8, u8)>,
}

/// A conntrack entry as the kernel listed it: its original direction, and the attributes
/// that name it for deletion (as the kernel wrote them).
#[derive(Debug, Clone)]
pub struct TrackedFlow {
    pub flow: Flow,
    family: u8,
    name: Vec<u8>,
}

/// The request that lists every conntrack entry of the namespace (both families).
pub(super) fn dump_request(seq: u32) -> Vec<u8> {
    let mut request = Vec::new();
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    message(&mut request, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, [0, 0, 0, 0], &[]);
    request
}

/// The entry a message of a dump answer lists, if it is one.
pub(super) fn listed(kind: u16, payload: &[u8]) -> Option<TrackedFlow> {
    if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW && payload.len() >= 4 {
        tracked(payload[0], &payload[4..])
    } else {
        None
    }
}

/// A connection conntrack confirmed (its first packet was let through) or destroyed (it
/// ended, or timed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub ended: bool,
    /// Conntrack's id of the entry: the same in its new and its destroy event.
    pub id: u32,
    pub flow: Flow,
    /// Packets and bytes each way, when the namespace accounts them (`nf_conntrack_acct`).
    pub counters: Option<Counters>,
}

/// Packets and bytes of a connection: from its originator, and from its responder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
}

/// The connection an event message names (a new entry, or a destroyed one), if it is one.
pub fn event(kind: u16, payload: &[u8]) -> Option<ConnectionEvent> {
    let ended = match kind {
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => false,
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE => true,
        _ => return None,
    };
    let (mut flow, mut id) = (None, None);
    let (mut sent, mut received) = (None, None);
    let be_u32 = |v: &[u8]| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?));
    for (kind, value, _) in attributes(payload.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => flow = tuple(value),
            CTA_ID => id = be_u32(value),
            CTA_COUNTERS_ORIG => sent = counters(value),
            CTA_COUNTERS_REPLY => received = counters(value),
            _ => {}
        }
    }
    let counters = sent.zip(received).map(|((packets_sent, bytes_sent), (packets_received, bytes_received))| {
        Counters { packets_sent, bytes_sent, packets_received, bytes_received }
    });
    Some(ConnectionEvent { ended, id: id?, flow: flow?, counters })
}

/// (packets, bytes) of a counters attribute.
fn counters(value: &[u8]) -> Option<(u64, u64)> {
    let be_u64 = |v: &[u8]| Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?));
    let (mut packets, mut bytes) = (None, None);
    for (kind, v, _) in attributes(value) {
        match kind {
            CTA_COUNTERS_PACKETS => packets = be_u64(v),
            CTA_COUNTERS_BYTES => bytes = be_u64(v),
            _ => {}
        }
    }
    packets.zip(bytes)
}

/// Appends the request that deletes `entry` (numbered `seq`, acknowledged) to `out`.
pub(super) fn delete_request(out: &mut Vec<u8>, seq: u32, entry: &TrackedFlow) {
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    message(out, kind, NLM_F_REQUEST | NLM_F_ACK, seq, [entry.family, 0, 0, 0], &entry.name);
}

/// One listed entry: its original tuple read, and kept as the kernel wrote it.
fn tracked(family: u8, attrs: &[u8]) -> Option<TrackedFlow> {
    let mut name = Vec::new();
    let mut flow = None;
    for (kind, payload, whole) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => {
                flow = tuple(payload);
                name.extend_from_slice(whole);
                name.resize(align(name.len()), 0);
            }
            CTA_ZONE => {
                name.extend_from_slice(whole);
                name.resize(align(name.len()), 0);
            }
            _ => {}
        }
    }
    Some(TrackedFlow { flow: flow?, family, name })
}

fn tuple(payload: &[u8]) -> Option<Flow> {
    let (mut src, mut dst, mut protocol) = (None, None, None);
    let (mut sport, mut dport, mut itype, mut icode) = (None, None, None, None);
    let port = |b: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(<[u8; 2]>::try_from(b.get(..2)?).ok()?)) };
    for (kind, inner, _) in attributes(payload) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v, _) in attributes(inner) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip_address(v),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip_address(v),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v, _) in attributes(inner) {
                    match k {
                        CTA_PROTO_NUM => protocol = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port(v),
                        CTA_PROTO_DST_PORT => dport = port(v),
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => itype = v.first().copied(),
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => icode = v.first().copied(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Flow { protocol: protocol?, src: src?, dst: dst?, sport, dport, icmp: itype.zip(icode) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::wire::{NLA_F_NESTED, attr};

    #[test]
    fn reads_a_conntrack_entrys_original_tuple_and_keeps_its_name() {
        let mut ip = Vec::new();
        attr(&mut ip, CTA_IP_V4_SRC, &[10, 0, 0, 1]);
        attr(&mut ip, CTA_IP_V4_DST, &[10, 0, 0, 2]);
        let mut proto = Vec::new();
        attr(&mut proto, CTA_PROTO_NUM, &[6]);
        attr(&mut proto, CTA_PROTO_SRC_PORT, &45678u16.to_be_bytes());
        attr(&mut proto, CTA_PROTO_DST_PORT, &80u16.to_be_bytes());
        let mut tuple = Vec::new();
        attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
        let mut entry = Vec::new();
        attr(&mut entry, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        // The reply tuple, which must not be read as the original.
        attr(&mut entry, 2 | NLA_F_NESTED, &tuple);
        let tracked = tracked(2, &entry).expect("an entry");
        assert_eq!(tracked.flow.src, "10.0.0.1".parse::<std::net::IpAddr>().expect("address"));
        assert_eq!((tracked.flow.protocol, tracked.flow.sport, tracked.flow.dport), (6, Some(45678), Some(80)));
        assert_eq!(tracked.name.len(), 4 + tuple.len(), "the name is the original tuple as written");
    }
}
