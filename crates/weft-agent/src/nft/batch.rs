//! A transaction ([`Command`]s) as one nf_tables netlink batch: what nft would send for the
//! same JSON, without nft. Pure encoding; [`super::netlink::Socket::send`] sends it.
//!
//! Why not nft: for a node's whole table (thousands of rules) nft spends about 30 µs a rule
//! parsing its JSON, checking it against a cache and writing the same messages; that was
//! two thirds of a full apply (docs/datapath.md). The rules are compiled to bytecode once,
//! when they are rendered ([`super::bytecode`]), and the batch is plain concatenation.

use std::net::IpAddr;

use super::bytecode;
use super::ruleset::{Command, Element, Hook, SetKind, TABLE};
use super::wire::{NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, attr, attr_str, c_string, message, nest};

pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFPROTO_INET: u8 = 1;

pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NF_INET_FORWARD: u32 = 2;
pub(super) const NF_ACCEPT: u32 = 1;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
/// The rule's comment, in the TLVs of its user data (libnftnl's NFTNL_UDATA_RULE_COMMENT).
pub(super) const UDATA_RULE_COMMENT: u8 = 0;

pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
/// The key's byte order, in the TLVs of a set's user data (libnftnl's
/// NFTNL_UDATA_SET_KEYBYTEORDER): nft reads an interface name back as a string only when told
/// it is in host order.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
pub(super) const NFT_SET_CONCAT: u32 = 0x80;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_EXPR: u16 = 17;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// nft's datatype numbers, which it reads back to print a set's type; a concatenation is
/// its parts' numbers, 6 bits each.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
pub(super) const IFNAMSIZ: usize = 16;

/// A set element list is one attribute, whose length is 16 bits: elements are sent in
/// messages of at most this many bytes each.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 48 << 10;

/// One transaction, encoded.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each message's type, flags and attributes, and the command it comes from.
    messages: Vec<Message>,
}

#[derive(Debug)]
struct Message {
    kind: u16,
    flags: u16,
    attrs: Vec<u8>,
    command: usize,
}

impl Batch {
    /// `commands` as nf_tables messages; an error names what cannot be encoded (a rule read
    /// back from the kernel, which has no bytecode, or a form the compiler does not know).
    pub fn encode(commands: &[Command]) -> Result<Batch, String> {
        let mut batch = Batch::default();
        let mut set_id = 0u32;
        for (i, c) in commands.iter().enumerate() {
            let mut push = |kind: u16, flags: u16, attrs: Vec<u8>| {
                batch.messages.push(Message { kind: (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, attrs, command: i })
            };
            match c {
                Command::AddTable => push(NFT_MSG_NEWTABLE, NLM_F_CREATE, table_attrs()),
                Command::DeleteTable => push(NFT_MSG_DELTABLE, 0, table_attrs()),
                Command::AddChain { name, hook } => push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, chain_attrs(name, *hook)),
                Command::FlushChain { name } => {
                    let mut a = Vec::new();
                    attr_str(&mut a, NFTA_RULE_TABLE, TABLE);
                    attr_str(&mut a, NFTA_RULE_CHAIN, name);
                    push(NFT_MSG_DELRULE, 0, a);
                }
                Command::DeleteChain { name } => push(NFT_MSG_DELCHAIN, 0, chain_attrs(name, None)),
                Command::AddRule { chain, rule } => {
                    let wire = rule.wire.as_ref().ok_or_else(|| format!("rule {} has no bytecode", rule.comment))?;
                    let mut a = Vec::with_capacity(wire.len() + 96);
                    attr_str(&mut a, NFTA_RULE_TABLE, TABLE);
                    attr_str(&mut a, NFTA_RULE_CHAIN, chain);
                    attr(&mut a, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, wire);
                    let comment = c_string(&rule.comment);
                    let len = u8::try_from(comment.len()).map_err(|_| format!("comment {} too long", rule.comment))?;
                    let mut udata = vec![UDATA_RULE_COMMENT, len];
                    udata.extend_from_slice(&comment);
                    attr(&mut a, NFTA_RULE_USERDATA, &udata);
                    push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a);
                }
                Command::AddSet { name, set } => {
                    set_id += 1;
                    push(NFT_MSG_NEWSET, NLM_F_CREATE, set_attrs(name, set.kind, set_id));
                    for chunk in element_lists(name, Some(set_id), set.kind, &set.elements)? {
                        push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, chunk);
                    }
                }
                Command::DeleteSet { name, .. } => {
                    let mut a = Vec::new();
                    attr_str(&mut a, NFTA_SET_TABLE, TABLE);
                    attr_str(&mut a, NFTA_SET_NAME, name);
                    push(NFT_MSG_DELSET, 0, a);
                }
                Command::AddElements { name, kind, elements } | Command::DeleteElements { name, kind, elements } => {
                    let (verb, flags) = match c {
                        Command::AddElements { .. } => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                        _ => (NFT_MSG_DELSETELEM, 0),
                    };
                    for chunk in element_lists(name, None, *kind, elements)? {
                        push(verb, flags, chunk);
                    }
                }
            }
        }
        Ok(batch)
    }

    /// The batch as bytes, its messages numbered from `first`, and the number of the last
    /// message, the only one acknowledged when all goes well (an error is answered whatever
    /// the flags, so a failed batch still names the message that failed).
    pub fn frame(&self, first: u32) -> (Vec<u8>, u32) {
        let size: usize = self.messages.iter().map(|m| m.attrs.len() + 20).sum();
        let mut out = Vec::with_capacity(size + 40);
        let subsystem = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, [0, 0, subsystem[0], subsystem[1]], &[]);
        let last = first.wrapping_add(self.messages.len() as u32);
        for (i, m) in self.messages.iter().enumerate() {
            let seq = first.wrapping_add(1 + i as u32);
            let ack = if seq == last { NLM_F_ACK } else { 0 };
            message(&mut out, m.kind, NLM_F_REQUEST | ack | m.flags, seq, [NFPROTO_INET, 0, 0, 0], &m.attrs);
        }
        message(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            last.wrapping_add(1),
            [0, 0, subsystem[0], subsystem[1]],
            &[],
        );
        (out, last)
    }

    /// Adds a message built elsewhere (another table's: [`super::nat`]), as its own command.
    pub(super) fn push(&mut self, kind: u16, flags: u16, attrs: Vec<u8>) {
        let command = self.messages.len();
        self.messages.push(Message { kind: (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, attrs, command });
    }

    /// The attributes of the messages of one nf_tables type (`NFT_MSG_*`).
    #[cfg(test)]
    pub(super) fn messages_of(&self, kind: u16) -> Vec<Vec<u8>> {
        self.messages.iter().filter(|m| m.kind & 0xff == kind).map(|m| m.attrs.clone()).collect()
    }

    /// The command that message `seq` of a batch framed from `first` comes from.
    pub fn command_of(&self, first: u32, seq: u32) -> Option<usize> {
        let index = seq.wrapping_sub(first).checked_sub(1)? as usize;
        self.messages.get(index).map(|m| m.command)
    }
}

/// The attributes naming weft's table (a table message's, or a request for it).
pub(super) fn table_attrs() -> Vec<u8> {
    let mut a = Vec::new();
    attr_str(&mut a, NFTA_TABLE_NAME, TABLE);
    a
}

fn chain_attrs(name: &str, hook: Option<Hook>) -> Vec<u8> {
    let mut a = Vec::new();
    attr_str(&mut a, NFTA_CHAIN_TABLE, TABLE);
    attr_str(&mut a, NFTA_CHAIN_NAME, name);
    if let Some(h) = hook {
        let mut hook = Vec::new();
        attr(&mut hook, NFTA_HOOK_HOOKNUM, &NF_INET_FORWARD.to_be_bytes());
        attr(&mut hook, NFTA_HOOK_PRIORITY, &h.priority.to_be_bytes());
        attr(&mut a, NFTA_CHAIN_HOOK | NLA_F_NESTED, &hook);
        attr(&mut a, NFTA_CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
        attr_str(&mut a, NFTA_CHAIN_TYPE, "filter");
    }
    a
}

fn addr_type(v6: bool) -> u32 {
    if v6 { TYPE_IP6ADDR } else { TYPE_IPADDR }
}

fn addr_len(v6: bool) -> u32 {
    if v6 { 16 } else { 4 }
}

/// The key's nft type and its length in bytes (each part of a concatenation on whole 32-bit
/// words).
pub(super) fn key_type(kind: SetKind) -> (u32, u32) {
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << 6) | t);
    match kind {
        SetKind::Addr { v6 } | SetKind::Prefix { v6 } | SetKind::Dispatch { v6 } => (addr_type(v6), addr_len(v6)),
        SetKind::AddrPort { v6 } => (concat(&[addr_type(v6), TYPE_INET_SERVICE]), addr_len(v6) + 4),
        SetKind::AddrProtoPort { v6 } => {
            (concat(&[addr_type(v6), TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), addr_len(v6) + 8)
        }
        SetKind::Iface => (TYPE_IFNAME, IFNAMSIZ as u32),
        SetKind::IfaceAddr { v6 } => (concat(&[TYPE_IFNAME, addr_type(v6)]), IFNAMSIZ as u32 + addr_len(v6)),
        SetKind::Fold { v6 } => {
            (concat(&[addr_type(v6), addr_type(v6), TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), 2 * addr_len(v6) + 8)
        }
    }
}

/// The flags a set of `kind` is made with.
pub(super) fn set_flags(kind: SetKind) -> u32 {
    match kind {
        SetKind::Prefix { .. } => NFT_SET_INTERVAL,
        SetKind::Dispatch { .. } => NFT_SET_MAP,
        SetKind::Fold { .. } => NFT_SET_INTERVAL | NFT_SET_CONCAT,
        _ => 0,
    }
}

fn set_attrs(name: &str, kind: SetKind, id: u32) -> Vec<u8> {
    let (key_type, key_len) = key_type(kind);
    let flags = set_flags(kind);
    let mut a = Vec::new();
    attr_str(&mut a, NFTA_SET_TABLE, TABLE);
    attr_str(&mut a, NFTA_SET_NAME, name);
    attr(&mut a, NFTA_SET_FLAGS, &flags.to_be_bytes());
    attr(&mut a, NFTA_SET_KEY_TYPE, &key_type.to_be_bytes());
    attr(&mut a, NFTA_SET_KEY_LEN, &key_len.to_be_bytes());
    if matches!(kind, SetKind::Dispatch { .. }) {
        attr(&mut a, NFTA_SET_DATA_TYPE, &NFT_DATA_VERDICT.to_be_bytes());
    }
    attr(&mut a, NFTA_SET_ID, &id.to_be_bytes());
    if let SetKind::Fold { v6 } = kind {
        // An interval set of a concatenation is told its fields' lengths (the kernel picks
        // its pipapo backend for it), and counts each element with a copy of its counter.
        let addr = addr_len(v6);
        nest(&mut a, NFTA_SET_DESC, |desc| {
            nest(desc, NFTA_SET_DESC_CONCAT, |fields| {
                for len in [addr, addr, 1, 2] {
                    nest(fields, NFTA_LIST_ELEM, |f| attr(f, NFTA_SET_FIELD_LEN, &len.to_be_bytes()));
                }
            })
        });
        nest(&mut a, NFTA_SET_EXPR, |e| {
            attr_str(e, NFTA_EXPR_NAME, "counter");
            nest(e, NFTA_EXPR_DATA, |_| {});
        });
    }
    let byteorder = match kind {
        SetKind::Iface => Some(BYTEORDER_HOST_ENDIAN),
        SetKind::Addr { .. } | SetKind::Prefix { .. } | SetKind::Dispatch { .. } => Some(BYTEORDER_BIG_ENDIAN),
        // A concatenation's parts say their own.
        _ => None,
    };
    if let Some(order) = byteorder {
        let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
        udata.extend_from_slice(&order.to_ne_bytes());
        attr(&mut a, NFTA_SET_USERDATA, &udata);
    }
    a
}

fn address(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ifname(name: &str) -> Result<Vec<u8>, String> {
    if name.len() >= IFNAMSIZ {
        return Err(format!("interface name {name} is longer than the kernel's"));
    }
    let mut k = name.as_bytes().to_vec();
    k.resize(IFNAMSIZ, 0);
    Ok(k)
}

/// One element as the kernel takes it: key, flags, and for a map the chain it jumps to; an
/// element of a concatenated interval set also has the key its interval ends at (included).
#[derive(Debug, PartialEq, Eq)]
struct KernelElement<'a> {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    flags: u32,
    jump: Option<&'a str>,
}

impl KernelElement<'_> {
    fn key(key: Vec<u8>) -> KernelElement<'static> {
        KernelElement { key, key_end: None, flags: 0, jump: None }
    }
}

/// The kernel elements of one element. A prefix in an interval set is two: its first
/// address, and the address after its last marked as the interval's end (none when it runs
/// to the end of the address space); a box of a concatenated interval set is one, with both
/// ends.
fn kernel_elements(kind: SetKind, e: &Element) -> Result<Vec<KernelElement<'_>>, String> {
    let mismatch = || format!("element {e:?} in a set of {kind:?}");
    let padded_port = |p: u16| [p.to_be_bytes()[0], p.to_be_bytes()[1], 0, 0];
    Ok(match (kind, e) {
        (SetKind::Addr { .. }, Element::Addr(a)) => vec![KernelElement::key(address(a))],
        (SetKind::Prefix { .. }, Element::Prefix(p)) => {
            let start = address(&p.network());
            let end = next_address(&address(&p.broadcast()));
            let mut out = vec![KernelElement::key(start)];
            if let Some(end) = end {
                out.push(KernelElement { flags: NFT_SET_ELEM_INTERVAL_END, ..KernelElement::key(end) });
            }
            out
        }
        (SetKind::AddrPort { .. }, Element::AddrPort(a, port)) => {
            let mut k = address(a);
            k.extend_from_slice(&padded_port(*port));
            vec![KernelElement::key(k)]
        }
        (SetKind::AddrProtoPort { .. }, Element::AddrProtoPort(a, proto, port)) => {
            let mut k = address(a);
            k.extend_from_slice(&[*proto, 0, 0, 0]);
            k.extend_from_slice(&padded_port(*port));
            vec![KernelElement::key(k)]
        }
        (SetKind::Iface, Element::Iface(name)) => vec![KernelElement::key(ifname(name)?)],
        (SetKind::IfaceAddr { .. }, Element::IfaceAddr(name, a)) => {
            let mut k = ifname(name)?;
            k.extend_from_slice(&address(a));
            vec![KernelElement::key(k)]
        }
        (SetKind::Dispatch { .. }, Element::Jump(a, chain)) => {
            vec![KernelElement { jump: Some(chain.as_str()), ..KernelElement::key(address(a)) }]
        }
        (SetKind::Fold { v6 }, Element::Fold { local, remote, proto, ports }) => {
            if [local, &remote.0, &remote.1].iter().any(|a| a.is_ipv6() != v6) {
                return Err(mismatch());
            }
            let bound = |remote: &IpAddr, port: u16| {
                let mut k = address(local);
                k.extend_from_slice(&address(remote));
                k.extend_from_slice(&[*proto, 0, 0, 0]);
                k.extend_from_slice(&padded_port(port));
                k
            };
            vec![KernelElement {
                key_end: Some(bound(&remote.1, ports.1)),
                ..KernelElement::key(bound(&remote.0, ports.0))
            }]
        }
        _ => return Err(mismatch()),
    })
}

/// The address after `bytes` (big-endian), or none after the last one.
fn next_address(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(out);
        }
    }
    None
}

/// `elements` as the attributes of element messages for set `name`, or for the set created
/// in this batch with transaction id `new_set`.
fn element_lists<'a>(
    name: &str,
    new_set: Option<u32>,
    kind: SetKind,
    elements: impl IntoIterator<Item = &'a Element>,
) -> Result<Vec<Vec<u8>>, String> {
    let mut lists = Vec::new();
    let mut list = Vec::new();
    for e in elements {
        for k in kernel_elements(kind, e)? {
            nest(&mut list, NFTA_LIST_ELEM, |element| {
                bytecode::data_attr(element, NFTA_SET_ELEM_KEY, &k.key);
                if let Some(end) = &k.key_end {
                    bytecode::data_attr(element, NFTA_SET_ELEM_KEY_END, end);
                }
                if let Some(chain) = k.jump {
                    bytecode::verdict_attr(element, NFTA_SET_ELEM_DATA, bytecode::NFT_JUMP, Some(chain));
                }
                if k.flags != 0 {
                    attr(element, NFTA_SET_ELEM_FLAGS, &k.flags.to_be_bytes());
                }
            });
        }
        if list.len() > ELEMENTS_PER_MESSAGE_BYTES {
            lists.push(std::mem::take(&mut list));
        }
    }
    if !list.is_empty() {
        lists.push(list);
    }
    Ok(lists
        .into_iter()
        .map(|list| {
            let mut a = Vec::with_capacity(list.len() + 32);
            attr_str(&mut a, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            // A set created in this batch is named by its transaction id: the kernel finds a
            // name by walking all the table's sets, but an id from the newest transactions
            // back, and the set was created just before (a tenth of a full apply's kernel time).
            match new_set {
                Some(id) => attr(&mut a, NFTA_SET_ELEM_LIST_SET_ID, &id.to_be_bytes()),
                None => attr_str(&mut a, NFTA_SET_ELEM_LIST_SET, name),
            }
            attr(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
            a
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::ruleset::Set;

    #[test]
    fn a_prefix_is_a_start_and_the_end_after_it() {
        let p: ipnet::IpNet = "10.0.0.0/25".parse().expect("prefix");
        let element = Element::Prefix(p);
        let elements = kernel_elements(SetKind::Prefix { v6: false }, &element).expect("encodes");
        assert_eq!(
            elements,
            vec![
                KernelElement::key(vec![10, 0, 0, 0]),
                KernelElement { flags: NFT_SET_ELEM_INTERVAL_END, ..KernelElement::key(vec![10, 0, 0, 128]) }
            ]
        );
        let all: ipnet::IpNet = "0.0.0.0/0".parse().expect("prefix");
        let element = Element::Prefix(all);
        let elements = kernel_elements(SetKind::Prefix { v6: false }, &element).expect("encodes");
        assert_eq!(elements.len(), 1, "no end after the last address");
    }

    #[test]
    fn large_sets_take_several_messages_each_under_the_attribute_limit() {
        let elements = (0..20_000u32).map(|i| Element::Addr(IpAddr::from(i.to_be_bytes()))).collect();
        let set = Set { kind: SetKind::Addr { v6: false }, elements };
        let batch = Batch::encode(&[Command::AddTable, Command::AddSet { name: "big".into(), set }]).expect("encodes");
        assert!(batch.messages.len() > 3, "{} messages", batch.messages.len());
        assert!(batch.messages.iter().all(|m| m.attrs.len() < u16::MAX as usize));
        assert_eq!(batch.command_of(7, 8), Some(0));
        assert_eq!(batch.command_of(7, 9), Some(1));
        assert_eq!(batch.command_of(7, 7), None, "the batch's begin is no command");
    }

    #[test]
    fn a_new_sets_elements_name_it_by_transaction_id_and_later_ones_by_name() {
        use crate::nft::wire::attributes;
        let elements: std::collections::BTreeSet<Element> =
            [Element::Addr("10.0.0.1".parse().expect("address"))].into_iter().collect();
        let kind = SetKind::Addr { v6: false };
        let batch = Batch::encode(&[
            Command::AddSet { name: "a".into(), set: Set { kind, elements: elements.clone() } },
            Command::AddSet { name: "b".into(), set: Set { kind, elements: elements.clone() } },
            Command::AddElements { name: "a".into(), kind, elements: elements.into_iter().collect() },
        ])
        .expect("encodes");
        let set_ids: Vec<Option<&[u8]>> = batch
            .messages
            .iter()
            .filter(|m| m.kind & 0xff == NFT_MSG_NEWSET)
            .map(|m| attributes(&m.attrs).find(|a| a.0 == NFTA_SET_ID).map(|a| a.1))
            .collect();
        assert_eq!(set_ids, vec![Some(&1u32.to_be_bytes()[..]), Some(&2u32.to_be_bytes()[..])]);
        // Each element message's (set id, set name) attributes.
        let named_by: Vec<_> = batch
            .messages
            .iter()
            .filter(|m| m.kind & 0xff == NFT_MSG_NEWSETELEM)
            .map(|m| {
                let attrs = attributes(&m.attrs);
                let find = |kind| attrs.clone().find(|a| a.0 == kind).map(|a| a.1);
                (find(NFTA_SET_ELEM_LIST_SET_ID), find(NFTA_SET_ELEM_LIST_SET))
            })
            .collect();
        assert_eq!(
            named_by,
            vec![
                (Some(&1u32.to_be_bytes()[..]), None),
                (Some(&2u32.to_be_bytes()[..]), None),
                (None, Some(&b"a\0"[..])),
            ]
        );
    }

    #[test]
    fn concatenated_keys_take_whole_words() {
        assert_eq!(key_type(SetKind::AddrProtoPort { v6: false }), ((((7 << 6) | 12) << 6) | 13, 12));
        assert_eq!(key_type(SetKind::IfaceAddr { v6: true }).1, 32);
        let e = Element::AddrProtoPort("10.0.0.1".parse().expect("address"), 6, 80);
        let k = kernel_elements(SetKind::AddrProtoPort { v6: false }, &e).expect("encodes");
        assert_eq!(k[0].key, vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    }
}
