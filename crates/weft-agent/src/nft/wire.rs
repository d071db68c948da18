//! The netlink wire format, pure: messages and their type-length-value attributes, written
//! and read without a socket. nf_tables batches ([`super::batch`]), table dumps
//! ([`super::listing`]) and conntrack messages ([`super::ctnetlink`]) are built on it; only
//! [`super::netlink`] sends and receives.

use std::net::IpAddr;

/// Netlink's message types of its own (every protocol's answers use them).
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// The attribute-type bit that marks a nested attribute, and the mask that drops it (and
/// the byte-order bit).
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Whole messages, at most 32 KiB a send (a datagram must fit the socket's buffer).
pub(crate) fn request_chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at + 4 <= bytes.len() {
        let len = align(u32::from_ne_bytes(word(bytes, at)) as usize).max(4);
        if at + len - start > 32 << 10 && at > start {
            out.push(&bytes[start..at]);
            start = at;
        }
        at += len;
    }
    if start < bytes.len() {
        out.push(&bytes[start..]);
    }
    out
}

/// The attributes of a netlink payload: (type without flags, payload, the whole attribute).
pub(crate) fn attributes(bytes: &[u8]) -> Attributes<'_> {
    Attributes { bytes }
}

/// The attributes of a netlink payload, read as they are asked for: (type without its flags,
/// value, the whole attribute). Nothing is allocated, which matters on the path of conntrack's
/// events, two for every connection a node sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attributes<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.bytes;
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        if len < 4 || len > bytes.len() {
            self.bytes = &[];
            return None;
        }
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        self.bytes = &bytes[align(len).min(bytes.len())..];
        Some((kind, &bytes[4..len], &bytes[..len]))
    }
}

/// An address of 4 or 16 bytes, as netlink carries one.
pub(crate) fn ip_address(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

pub(crate) fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

pub(crate) fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A netlink message: header, nfgenmsg (family, version, resource id), attributes.
pub(crate) fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[u8]) {
    message_with(out, kind, flags, seq, &nfgen, attrs);
}

/// A netlink message with a family header of any size (rtnetlink's ifinfomsg, rtmsg, ...).
pub(crate) fn message_with(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, header: &[u8], attrs: &[u8]) {
    let len = (16 + header.len() + attrs.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(attrs);
}

pub(crate) fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + align(len) - len, 0);
}

/// A nested attribute written in place: its header, what `body` writes, then its length.
pub(crate) fn nest(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A string attribute (with its NUL), written without a copy of the string.
pub(crate) fn attr_str(out: &mut Vec<u8>, kind: u16, s: &str) {
    let len = 4 + s.len() + 1;
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    out.resize(out.len() + align(len) - len, 0);
}

pub(crate) fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}
