//! Set element changes straight to the kernel over netlink (nf_tables), for the most frequent
//! delta: a pod joining or leaving the address sets that select it.
//!
//! The nft binary, before it changes a set, builds a cache of the table that includes the
//! elements of every set; the kernel finds each set by name in a list, so that costs grows
//! with the square of the table's sets (about 200 ms for one element with 4,000 sets). The
//! messages for an element change are small and fixed: table, set, keys. Everything else
//! (sets, chains, rules) still goes through nft, and so does an element change this module
//! does not encode (the caller falls back when [`ElementBatch::encode`] says no).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::ruleset::{Command, Element, SetKind, TABLE};
use crate::netns;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
/// Batches larger than this go through nft (a netlink message must fit the socket buffer).
const MAX_BATCH_BYTES: usize = 64 << 10;

/// A netlink socket in a network namespace (created there; it stays there).
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open(netns: Option<&str>) -> io::Result<Socket> {
        let path = netns.map(netns::path);
        // setns changes only the calling thread: a thread of its own enters the namespace,
        // creates the socket there and ends.
        let fd = std::thread::scope(|scope| {
            scope
                .spawn(|| -> io::Result<OwnedFd> {
                    if let Some(path) = &path {
                        let ns = std::fs::File::open(path)?;
                        rustix::thread::move_into_link_name_space(
                            ns.as_fd(),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )?;
                    }
                    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, Some(netlink::NETFILTER))?;
                    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
                    rustix::net::sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_secs(2)))?;
                    Ok(fd)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the netlink thread panicked")))
        })?;
        Ok(Socket { fd, seq: std::process::id().wrapping_mul(65_536) })
    }

    /// Sends one batch (all of it happens, or none) and waits for the kernel's answer to each
    /// of its messages.
    pub fn send(&mut self, batch: &ElementBatch) -> io::Result<()> {
        let first = self.seq.wrapping_add(1);
        let (bytes, acked) = batch.frame(first);
        self.seq = first.wrapping_add(batch.messages.len() as u32 + 2);
        rustix::net::sendto(&self.fd, &bytes, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        let mut waiting: std::collections::BTreeSet<u32> = acked.into_iter().collect();
        let mut buf = vec![0u8; 64 << 10];
        while !waiting.is_empty() {
            let (received, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let mut at = 0;
            while at + 16 <= received {
                let len = u32::from_ne_bytes(word(&buf, at)) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq = u32::from_ne_bytes(word(&buf, at + 8));
                if len < 16 || at + len > received {
                    return Err(io::Error::other("a malformed netlink answer"));
                }
                if kind == NLMSG_ERROR && len >= 20 && waiting.remove(&seq) {
                    let code = i32::from_ne_bytes(word(&buf, at + 16));
                    if code != 0 {
                        // The kernel aborted the whole batch; no other answer matters.
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                at += align(len);
            }
        }
        Ok(())
    }
}

fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Element adds and deletes, encoded as nf_tables messages.
#[derive(Debug, Default)]
pub struct ElementBatch {
    /// (message type, flags, attributes) of each message.
    messages: Vec<(u16, u16, Vec<u8>)>,
}

impl ElementBatch {
    /// The batch for `commands` when they are element changes of sets this module encodes
    /// (addresses, address-port pairs) and small enough; `None` sends the caller to nft.
    pub fn encode(commands: &[Command]) -> Option<ElementBatch> {
        let mut batch = ElementBatch::default();
        let mut size = 0;
        for c in commands {
            let (kind, flags, name, set_kind, elements) = match c {
                Command::AddTable => continue,
                Command::AddElements { name, kind, elements } => {
                    (NFT_MSG_NEWSETELEM, NLM_F_CREATE, name, *kind, elements)
                }
                Command::DeleteElements { name, kind, elements } => (NFT_MSG_DELSETELEM, 0, name, *kind, elements),
                _ => return None,
            };
            let mut list = Vec::new();
            for e in elements {
                let mut value = Vec::new();
                attr(&mut value, NFTA_DATA_VALUE, &key(set_kind, e)?);
                let mut element = Vec::new();
                attr(&mut element, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
                attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &element);
            }
            let mut attrs = Vec::new();
            attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &c_string(TABLE));
            attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &c_string(name));
            attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
            size += attrs.len() + 20;
            if size > MAX_BATCH_BYTES {
                return None;
            }
            batch.messages.push(((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, attrs));
        }
        (!batch.messages.is_empty()).then_some(batch)
    }

    /// The batch as bytes, its messages numbered from `first`; and the numbers answered.
    fn frame(&self, first: u32) -> (Vec<u8>, Vec<u32>) {
        let mut out = Vec::new();
        let subsystem = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, [0, 0, subsystem[0], subsystem[1]], &[]);
        let mut acked = Vec::new();
        for (i, (kind, flags, attrs)) in self.messages.iter().enumerate() {
            let seq = first.wrapping_add(1 + i as u32);
            message(&mut out, *kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, [NFPROTO_INET, 0, 0, 0], attrs);
            acked.push(seq);
        }
        let end = first.wrapping_add(1 + self.messages.len() as u32);
        message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, [0, 0, subsystem[0], subsystem[1]], &[]);
        (out, acked)
    }
}

/// A netlink message: header, nfgenmsg (family, version, resource id), attributes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[u8]) {
    let len = (16 + 4 + attrs.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&nfgen);
    out.extend_from_slice(attrs);
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + align(len) - len, 0);
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// An element's key as the kernel stores it: each field of a concatenation takes a whole
/// number of 32-bit registers.
fn key(kind: SetKind, element: &Element) -> Option<Vec<u8>> {
    let address = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    match (kind, element) {
        (SetKind::Addr { .. }, Element::Addr(a)) => Some(address(a)),
        (SetKind::AddrPort { .. }, Element::AddrPort(a, port)) => {
            let mut k = address(a);
            k.extend_from_slice(&port.to_be_bytes());
            k.extend_from_slice(&[0, 0]);
            Some(k)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_only_element_changes_of_address_sets() {
        let add = Command::AddElements {
            name: "s1-4".into(),
            kind: SetKind::Addr { v6: false },
            elements: vec![Element::Addr("10.0.0.9".parse().expect("address"))],
        };
        let batch = ElementBatch::encode(&[Command::AddTable, add.clone()]).expect("an element change");
        assert_eq!(batch.messages.len(), 1);
        let (bytes, acked) = batch.frame(7);
        assert_eq!(acked, vec![8]);
        // Begin, the change, end: each message's length leads it.
        let first = u32::from_ne_bytes(word(&bytes, 0)) as usize;
        assert_eq!(first, 20);
        assert!(bytes.windows(4).any(|w| w == [10, 0, 0, 9]), "the key is in the message");
        assert!(bytes.windows(5).any(|w| w == *b"s1-4\0"));
        let prefix = Command::AddElements {
            name: "s2-4".into(),
            kind: SetKind::Prefix { v6: false },
            elements: vec![Element::Prefix("10.0.0.0/8".parse().expect("prefix"))],
        };
        assert!(ElementBatch::encode(&[prefix]).is_none(), "interval sets go through nft");
        assert!(ElementBatch::encode(&[add, Command::FlushChain { name: "x".into() }]).is_none());
    }
}
