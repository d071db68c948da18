//! ICMP echo sent and received by weft itself, from the namespace of the calling thread: the
//! lab's and the demo's pings need no `ping` program (a machine without iputils-ping once
//! made the demo blame the policy for a missing tool), and have no one-second floor.
//!
//! A raw socket (the lab runs as root): an ICMP datagram socket would need each namespace's
//! `net.ipv4.ping_group_range` opened first. Every raw ICMP socket of a namespace sees every
//! echo reply, so each [`Pinger`] has an identifier of its own and takes only its replies.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, ipproto};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8] = b"weft-lab echo...";

/// Identifiers handed out in this process, mixed with its pid so that two processes' pingers
/// in one namespace do not take each other's replies.
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// Echo requests to one address family's targets.
#[derive(Debug)]
pub struct Pinger {
    socket: OwnedFd,
    v6: bool,
    id: u16,
    seq: u16,
    buf: Vec<u8>,
}

impl Pinger {
    /// A pinger in the namespace of the calling thread.
    pub fn new(v6: bool) -> io::Result<Pinger> {
        let socket = if v6 {
            rustix::net::socket(AddressFamily::INET6, SocketType::RAW, Some(ipproto::ICMPV6))?
        } else {
            rustix::net::socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::ICMP))?
        };
        let id = (std::process::id() as u16).wrapping_mul(31).wrapping_add(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        Ok(Pinger { socket, v6, id, seq: 0, buf: vec![0; 2048] })
    }

    /// Sends from `source` (one of the namespace's addresses) instead of the address the
    /// route picks.
    pub fn bind(&mut self, source: IpAddr) -> io::Result<()> {
        Ok(rustix::net::bind(&self.socket, &SocketAddr::new(source, 0))?)
    }

    /// Sends one echo request to `target` and waits up to `timeout` for its reply: how long
    /// the reply took, or `None` when none came.
    pub fn echo(&mut self, target: IpAddr, timeout: Duration) -> io::Result<Option<Duration>> {
        if target.is_ipv6() != self.v6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{target} is not of this pinger's family"),
            ));
        }
        self.seq = self.seq.wrapping_add(1);
        let request = echo_request(self.v6, self.id, self.seq);
        let sent = Instant::now();
        rustix::net::sendto(&self.socket, &request, SendFlags::empty(), &SocketAddr::new(target, 0))?;
        let deadline = sent + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            rustix::net::sockopt::set_socket_timeout(&self.socket, rustix::net::sockopt::Timeout::Recv, Some(left))?;
            let (received, from) = match rustix::net::recvfrom(&self.socket, &mut self.buf[..], RecvFlags::empty()) {
                Ok((n, _, from)) => (n, from),
                Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => continue,
                Err(e) => return Err(e.into()),
            };
            let from = from.and_then(|a| SocketAddr::try_from(a).ok()).map(|a| a.ip());
            let packet = &self.buf[..received.min(self.buf.len())];
            if from == Some(target) && is_reply(self.v6, packet, self.id, self.seq) {
                return Ok(Some(sent.elapsed()));
            }
        }
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload. The kernel fills in
/// an ICMPv6 checksum itself (it covers the IPv6 pseudo-header).
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// Whether `packet` (as a raw socket receives it: with its IPv4 header, without an IPv6 one)
/// is the reply to echo request `seq` of `id`.
fn is_reply(v6: bool, packet: &[u8], id: u16, seq: u16) -> bool {
    let icmp = if v6 {
        packet
    } else {
        let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
        packet.get(header..).unwrap_or_default()
    };
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    icmp.len() >= 8
        && icmp[0] == reply
        && icmp[1] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Pinger {
    /// Echo requests to `target` every `interval` (or as soon as the last reply came, if
    /// later), `count` of them or until `round` says stop; `round` gets each one's number
    /// (from 1) and reply. How many were answered.
    pub fn rounds(
        &mut self,
        target: IpAddr,
        count: Option<u64>,
        interval: Duration,
        timeout: Duration,
        mut round: impl FnMut(u64, Option<Duration>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let (mut sent, mut answered) = (0u64, 0u64);
        while count.is_none_or(|c| sent < c) {
            let started = Instant::now();
            let reply = self.echo(target, timeout)?;
            sent += 1;
            answered += u64::from(reply.is_some());
            round(sent, reply)?;
            if count.is_none_or(|c| sent < c) {
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        }
        Ok(answered)
    }
}

/// One echo to `target` from the calling thread's namespace: whether it was answered within
/// `timeout`. An error (no raw socket: not root) counts as unanswered.
pub fn answered(target: IpAddr, timeout: Duration) -> bool {
    Pinger::new(target.is_ipv6()).and_then(|mut p| p.echo(target, timeout)).is_ok_and(|r| r.is_some())
}

/// How `weft lab ping` reports a round: what [`crate::watch::ping_round`] reads.
pub fn round_line(target: IpAddr, seq: u64, reply: Option<Duration>) -> String {
    match reply {
        Some(took) => format!("reply from {target}: seq={seq} time={:.3} ms", took.as_secs_f64() * 1000.0),
        None => format!("no answer from {target}: seq={seq}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_a_checksum_that_sums_to_zero() {
        let request = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&request), 0, "a packet with its checksum sums to all ones");
        assert_eq!(&request[4..8], &[0x12, 0x34, 0, 7]);
        // RFC 1071's example.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn only_the_reply_to_this_request_is_taken() {
        let mut reply = echo_request(false, 9, 3);
        reply[0] = ECHO_REPLY_V4;
        let mut v4 = vec![0x45; 1];
        v4.resize(20, 0);
        v4.extend_from_slice(&reply);
        assert!(is_reply(false, &v4, 9, 3));
        assert!(!is_reply(false, &v4, 9, 4), "another sequence number");
        assert!(!is_reply(false, &v4, 8, 3), "another pinger's");
        assert!(!is_reply(false, &v4[..24], 9, 3), "truncated");
        let request = echo_request(false, 9, 3);
        let mut looped = v4[..20].to_vec();
        looped.extend_from_slice(&request);
        assert!(!is_reply(false, &looped, 9, 3), "the request itself");
        let mut v6 = echo_request(true, 9, 3);
        v6[0] = ECHO_REPLY_V6;
        assert!(is_reply(true, &v6, 9, 3));
    }

    /// Real packets, to loopback only: an echo answered, and one to an address nothing
    /// answers (TEST-NET-1, routed nowhere here) not.
    #[test]
    #[ignore = "needs root (raw sockets): scripts/test.sh runs it when run as root"]
    fn loopback_answers_an_echo() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        let mut v4 = Pinger::new(false).expect("a raw socket");
        let took = v4.echo("127.0.0.1".parse().expect("address"), Duration::from_secs(2)).expect("sent");
        assert!(took.is_some(), "127.0.0.1 answers");
        assert!(v4.echo("::1".parse().expect("address"), Duration::from_secs(1)).is_err(), "the wrong family");
        let mut v6 = Pinger::new(true).expect("a raw socket");
        assert!(
            v6.echo("::1".parse().expect("address"), Duration::from_secs(2)).expect("sent").is_some(),
            "::1 answers"
        );
    }

    #[test]
    fn rounds_read_back_as_answered_or_not() {
        let target: IpAddr = "10.0.0.1".parse().expect("address");
        assert_eq!(crate::watch::ping_round(&round_line(target, 1, Some(Duration::from_micros(80)))), Some(true));
        assert_eq!(crate::watch::ping_round(&round_line(target, 2, None)), Some(false));
        assert_eq!(crate::watch::ping_round("3 sent, 2 answered"), None);
    }
}
