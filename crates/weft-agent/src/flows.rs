//! What the datapath denied, as samples (DESIGN.md §10): every port chain ends with a rule that
//! sends the packets it is about to drop to nfnetlink_log at a bounded rate per port and
//! direction, tagged `weft:D:<i|e>:<port id>` ([`crate::nft::render`]), and the drop rule after
//! it counts every one. This module reads those messages back, in the node's namespace, as
//! [`DeniedSample`]s: which port, which way, and the packet's addresses, protocol and ports.
//! Denied packets never reach conntrack (they are dropped before their entry is confirmed), so
//! these samples and the counters are all there is to know of them.
//!
//! Decoding is pure ([`decode`], [`packet`]); [`DeniedReader`] is the socket.

use std::io;
use std::net::IpAddr;

use uuid::Uuid;

use crate::nft::{DENIED_SAMPLES_GROUP, Socket};

/// A packet a port's policy dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedSample {
    pub port: Uuid,
    /// Dropped by the port's ingress (else its egress).
    pub ingress: bool,
    pub packet: PacketHeader,
}

/// The headers of a sampled packet that say what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (IPv6: the first header that is not an extension header).
    pub protocol: u8,
    /// Source and destination ports (TCP, UDP, SCTP).
    pub ports: Option<(u16, u16)>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;

/// A denied sample from one nfnetlink_log message's payload (after the netlink header: the
/// nfgenmsg, then attributes); None for a message that is not weft's denied sample, or a
/// packet too short to say what it was.
pub fn decode(message: &[u8]) -> Option<DeniedSample> {
    let attrs = crate::nft::wire::attributes(message.get(4..)?);
    let text = attrs.iter().find(|(kind, ..)| *kind & 0x7fff == NFULA_PREFIX).map(|(_, v, _)| *v)?;
    let prefix = std::str::from_utf8(text).ok()?.trim_end_matches('\0');
    let rest = prefix.strip_prefix("weft:D:")?;
    let (way, port) = rest.split_once(':')?;
    let ingress = match way {
        "i" => true,
        "e" => false,
        _ => return None,
    };
    let port = Uuid::parse_str(port).ok()?;
    let payload = attrs.iter().find(|(kind, ..)| *kind & 0x7fff == NFULA_PAYLOAD).map(|(_, v, _)| *v)?;
    Some(DeniedSample { port, ingress, packet: packet(payload)? })
}

/// The headers of an IPv4 or IPv6 packet (its first bytes).
pub fn packet(bytes: &[u8]) -> Option<PacketHeader> {
    let version = bytes.first()? >> 4;
    let (src, dst, mut protocol, mut at) = match version {
        4 => {
            let header = usize::from(bytes[0] & 0x0f) * 4;
            let src: [u8; 4] = bytes.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), *bytes.get(9)?, header)
        }
        6 => {
            let src: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = bytes.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), *bytes.get(6)?, 40)
        }
        _ => return None,
    };
    if version == 6 {
        // Hop-by-hop, routing, destination options: skipped to the transport header. A
        // fragment header's packet is reported by its next protocol, without ports.
        while matches!(protocol, 0 | 43 | 60) {
            protocol = *bytes.get(at)?;
            at += (usize::from(*bytes.get(at + 1)?) + 1) * 8;
        }
    }
    let transport = bytes.get(at..).unwrap_or_default();
    let two = |i: usize| Some(u16::from_be_bytes([*transport.get(i)?, *transport.get(i + 1)?]));
    let (ports, icmp) = match protocol {
        6 | 17 | 132 => (two(0).zip(two(2)), None),
        1 | 58 => (None, transport.first().copied().zip(transport.get(1).copied())),
        _ => (None, None),
    };
    Some(PacketHeader { src, dst, protocol, ports, icmp })
}

/// nfnetlink_log's group of denied samples, read in a node's namespace.
#[derive(Debug)]
pub struct DeniedReader {
    socket: Socket,
}

impl DeniedReader {
    /// Binds the denied samples' group in `netns` (or the agent's own namespace).
    pub fn open(netns: Option<&str>) -> io::Result<DeniedReader> {
        let mut socket = Socket::open(netns)?;
        socket.bind_nflog(DENIED_SAMPLES_GROUP, 128)?;
        Ok(DeniedReader { socket })
    }

    /// The samples of one receive (none when nothing came within the socket's receive
    /// timeout, 2 s), to `each`. Whether the kernel lost samples since the last call (the
    /// socket's buffer was full): the loss is counted, and reading goes on.
    pub fn next(&mut self, mut each: impl FnMut(DeniedSample)) -> io::Result<bool> {
        let outcome = self.socket.receive(|kind, payload| {
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
                && let Some(sample) = decode(payload)
            {
                each(sample);
            }
        });
        match outcome {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Reads denied samples in `netns` until `stopped` says so, each to `each` (and counted in
/// `metrics`); the loss the kernel reports is counted and logged. Blocking: run it on a thread
/// of its own. A group another process holds (EBUSY) ends it with a warning: enforcement does
/// not depend on it.
pub fn follow_denied(
    netns: Option<&str>,
    metrics: Option<std::sync::Arc<crate::metrics::AgentMetrics>>,
    stopped: tokio::sync::watch::Receiver<bool>,
    mut each: impl FnMut(DeniedSample),
) {
    let mut reader = match DeniedReader::open(netns) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::warn!(error = %e, group = DENIED_SAMPLES_GROUP, "cannot read denied samples: denied traffic is only counted");
            return;
        }
    };
    while !*stopped.borrow() {
        match reader.next(|sample| {
            if let Some(m) = &metrics {
                m.denied_sampled();
            }
            each(sample);
        }) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(m) = &metrics {
                    m.denied_samples_lost();
                }
                tracing::warn!("the kernel dropped denied samples: the agent did not read them fast enough");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading denied samples failed; stopping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 32, 0, 12, 10, 32, 0, 10];
        p.extend_from_slice(&[0xa0, 0x00, 0x15, 0x38, 0, 12, 0, 0]);
        p
    }

    fn message(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![2, 0, 0x44, 0x35];
        crate::nft::wire::attr(&mut m, NFULA_PREFIX, &crate::nft::wire::c_string(prefix));
        crate::nft::wire::attr(&mut m, NFULA_PAYLOAD, payload);
        m
    }

    #[test]
    fn a_denied_sample_names_its_port_its_way_and_what_the_packet_was() {
        let port = Uuid::from_u64_pair(2, 1);
        let sample = decode(&message(&format!("weft:D:i:{}", port.simple()), &ipv4_udp())).unwrap();
        assert_eq!(sample.port, port);
        assert!(sample.ingress);
        let p = sample.packet;
        assert_eq!((p.src.to_string(), p.dst.to_string()), ("10.32.0.12".into(), "10.32.0.10".into()));
        assert_eq!((p.protocol, p.ports, p.icmp), (17, Some((40960, 5432)), None));
        // Another program's prefix, a malformed port id, no payload: not weft's sample.
        assert!(decode(&message("calico:D", &ipv4_udp())).is_none());
        assert!(decode(&message("weft:D:i:nope", &ipv4_udp())).is_none());
        assert!(decode(&message(&format!("weft:D:x:{}", port.simple()), &ipv4_udp())).is_none());
        assert!(decode(&[2, 0]).is_none());
    }

    #[test]
    fn ipv6_headers_are_read_past_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&"fd32::12".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd32::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        // A destination options header (8 bytes), then ICMPv6 echo request.
        p.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[128, 0, 0, 0]);
        p[6] = 60;
        let h = packet(&p).unwrap();
        assert_eq!((h.protocol, h.icmp, h.ports), (58, Some((128, 0)), None));
        assert_eq!(h.dst.to_string(), "fd32::10");
        // Truncated: no answer rather than a wrong one.
        assert!(packet(&p[..30]).is_none());
        assert!(packet(&[0x70]).is_none());
    }
}
