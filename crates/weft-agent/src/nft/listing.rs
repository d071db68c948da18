//! weft's table read back from the kernel's nf_tables netlink dumps: the messages of a chain,
//! rule, set and element dump ([`super::netlink::Socket::table`]) decoded into a [`Ruleset`].
//! Pure decoding, the inverse of [`super::batch`]; no nft.
//!
//! Rules are read by their comment (the hash of their bytecode, in their user data), not by
//! their expressions, as [`Rule`] compares them. Anything this agent would not have written
//! (a set type it does not know, a rule without its comment, an interval that is not a prefix)
//! is an error: the caller then replaces the table whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::batch::{
    IFNAMSIZ, NF_INET_FORWARD, NFT_SET_CONCAT, NFT_SET_ELEM_INTERVAL_END, NFT_SET_INTERVAL, NFT_SET_MAP,
    NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_LIST_ELEM,
    NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_FLAGS, NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE,
    NFTA_SET_NAME, NFTA_SET_TABLE, UDATA_RULE_COMMENT, key_type, set_flags,
};
use super::bytecode::{
    NF_DROP, NFT_JUMP, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_IMMEDIATE_DATA,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
};
use super::ruleset::{Chain, Element, Hook, Rule, Ruleset, Set, SetKind, TABLE};
use super::wire::{attributes, ip_address as address};

/// A set nft makes for a rule's inline `{ ... }`: never one of weft's (it writes none).
const NFT_SET_ANONYMOUS: u32 = 0x1;

/// The attributes of each message of a table's dumps (after the nfgenmsg header), as the
/// kernel sent them.
#[derive(Debug, Default)]
pub struct TableDump {
    pub chains: Vec<Vec<u8>>,
    pub sets: Vec<Vec<u8>>,
    /// Each set's element messages, by set name.
    pub elements: BTreeMap<String, Vec<Vec<u8>>>,
    pub rules: Vec<Vec<u8>>,
}

/// The value of the first attribute of `kind` in `attrs`.
fn find(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(attrs).find(|a| a.0 == kind).map(|a| a.1)
}

/// A NUL-terminated string attribute.
fn string(value: &[u8]) -> Option<&str> {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()
}

fn be_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// Whether a message's attributes (`table_attr` naming its table) belong to weft's table.
fn ours(attrs: &[u8], table_attr: u16) -> bool {
    find(attrs, table_attr).and_then(string) == Some(TABLE)
}

/// The name of a set in a set dump's message, if it is one of weft's table's sets (not an
/// anonymous one): the sets whose elements are dumped next.
pub fn set_name(attrs: &[u8]) -> Option<String> {
    if !ours(attrs, NFTA_SET_TABLE) {
        return None;
    }
    let flags = find(attrs, NFTA_SET_FLAGS).and_then(be_u32).unwrap_or(0);
    if flags & NFT_SET_ANONYMOUS != 0 {
        return None;
    }
    find(attrs, NFTA_SET_NAME).and_then(string).map(str::to_string)
}

/// The table the dumps describe.
pub fn decode(dump: &TableDump) -> Result<Ruleset, String> {
    let mut out = Ruleset::default();
    for attrs in &dump.chains {
        if !ours(attrs, NFTA_CHAIN_TABLE) {
            continue;
        }
        let name = find(attrs, NFTA_CHAIN_NAME).and_then(string).ok_or("a chain without a name")?;
        let hook = match find(attrs, NFTA_CHAIN_HOOK) {
            None => None,
            Some(hook) => {
                let number = find(hook, NFTA_HOOK_HOOKNUM).and_then(be_u32);
                if number != Some(NF_INET_FORWARD) {
                    return Err(format!("chain {name} hooks in elsewhere than forward"));
                }
                let priority = find(hook, NFTA_HOOK_PRIORITY).and_then(be_u32).ok_or("a hook without a priority")?;
                Some(Hook { priority: priority as i32 })
            }
        };
        out.chains.insert(name.to_string(), Chain { hook, rules: Vec::new() });
    }
    for attrs in &dump.sets {
        let Some(name) = set_name(attrs) else { continue };
        let kind = set_kind(attrs).ok_or_else(|| format!("set {name}: a type weft does not write"))?;
        let messages = dump.elements.get(&name).map(Vec::as_slice).unwrap_or_default();
        let elements = elements(kind, messages).map_err(|e| format!("set {name}: {e}"))?;
        out.sets.insert(name, Set { kind, elements });
    }
    for attrs in &dump.rules {
        if !ours(attrs, NFTA_RULE_TABLE) {
            continue;
        }
        let chain = find(attrs, NFTA_RULE_CHAIN).and_then(string).ok_or("a rule without a chain")?;
        let comment = find(attrs, NFTA_RULE_USERDATA)
            .and_then(comment)
            .ok_or_else(|| format!("{chain}: a rule without a comment"))?;
        let target = out.chains.get_mut(chain).ok_or_else(|| format!("a rule of unknown chain {chain}"))?;
        target.rules.push(Rule { comment, stmts: Vec::new().into(), wire: None });
    }
    Ok(out)
}

/// What the metrics tell of the kernel's table (of one this agent did not write, too: what can
/// be counted is), counted message by message as the dumps arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    /// Elements as weft counts them (a prefix is one, though the kernel holds its two ends).
    pub elements: usize,
    /// The packet counter of each rule that drops, with its chain.
    pub drops: Vec<(String, u64)>,
}

const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_COUNTER_PACKETS: u16 = 2;

impl TableStats {
    /// Counts a chain dump's message.
    pub fn chain(&mut self, attrs: &[u8]) {
        self.chains += usize::from(ours(attrs, NFTA_CHAIN_TABLE));
    }

    /// Counts a set element dump's message: its elements, as weft counts them (an interval's
    /// end is part of its prefix).
    pub fn elements(&mut self, attrs: &[u8]) {
        let Some(list) = find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else { return };
        self.elements += attributes(list)
            .filter(|(k, element, _)| {
                *k == NFTA_LIST_ELEM
                    && find(element, NFTA_SET_ELEM_FLAGS).and_then(be_u32).unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END == 0
            })
            .count();
    }

    /// Counts a rule dump's message, and its drop counter when it drops.
    pub fn rule(&mut self, attrs: &[u8]) {
        if !ours(attrs, NFTA_RULE_TABLE) {
            return;
        }
        self.rules += 1;
        self.drops.extend(drop_counter(attrs));
    }
}

/// The chain and packet counter of a rule of weft's table that drops.
pub fn drop_counter(attrs: &[u8]) -> Option<(String, u64)> {
    let chain = find(attrs, NFTA_RULE_CHAIN).and_then(string)?;
    let (mut drops, mut packets) = (false, 0);
    for (_, expr, _) in find(attrs, NFTA_RULE_EXPRESSIONS).map(attributes).unwrap_or_default() {
        let data = find(expr, NFTA_EXPR_DATA).unwrap_or_default();
        match find(expr, NFTA_EXPR_NAME).and_then(string) {
            Some("counter") => {
                let value = find(data, NFTA_COUNTER_PACKETS).and_then(|v| v.get(..8)?.try_into().ok());
                packets += value.map_or(0, u64::from_be_bytes);
            }
            Some("immediate") => {
                let code = find(data, NFTA_IMMEDIATE_DATA)
                    .and_then(|d| find(d, NFTA_DATA_VERDICT))
                    .and_then(|v| find(v, NFTA_VERDICT_CODE))
                    .and_then(be_u32);
                drops |= code == Some(NF_DROP as u32);
            }
            _ => {}
        }
    }
    drops.then(|| (chain.to_string(), packets))
}

/// The comment in a rule's user data (type-length-value records).
fn comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if kind == UDATA_RULE_COMMENT {
            return string(value).map(str::to_string);
        }
        udata = &udata[2 + len..];
    }
    None
}

/// Every kind of set weft writes.
fn kinds() -> impl Iterator<Item = SetKind> {
    [false, true].into_iter().flat_map(|v6| {
        [
            SetKind::Addr { v6 },
            SetKind::Prefix { v6 },
            SetKind::AddrPort { v6 },
            SetKind::AddrProtoPort { v6 },
            SetKind::IfaceAddr { v6 },
            SetKind::Dispatch { v6 },
            SetKind::Fold { v6 },
        ]
        .into_iter()
        .chain((!v6).then_some(SetKind::Iface))
    })
}

/// The kind of set whose key type, key length and flags a set message carries.
fn set_kind(attrs: &[u8]) -> Option<SetKind> {
    let key = (find(attrs, NFTA_SET_KEY_TYPE).and_then(be_u32)?, find(attrs, NFTA_SET_KEY_LEN).and_then(be_u32)?);
    let flags =
        find(attrs, NFTA_SET_FLAGS).and_then(be_u32).unwrap_or(0) & (NFT_SET_INTERVAL | NFT_SET_MAP | NFT_SET_CONCAT);
    kinds().find(|k| key_type(*k) == key && set_flags(*k) == flags)
}

/// One element as the kernel lists it.
#[derive(Debug)]
struct Listed {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    interval_end: bool,
    jump: Option<String>,
}

fn listed(attrs: &[u8]) -> Result<Listed, String> {
    let value = |a: &[u8]| find(a, NFTA_DATA_VALUE).map(<[u8]>::to_vec);
    let key = find(attrs, NFTA_SET_ELEM_KEY).and_then(value).ok_or("an element without a key")?;
    let key_end = find(attrs, NFTA_SET_ELEM_KEY_END).and_then(value);
    let interval_end = find(attrs, NFTA_SET_ELEM_FLAGS).and_then(be_u32).unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END != 0;
    let jump = match find(attrs, NFTA_SET_ELEM_DATA).and_then(|d| find(d, NFTA_DATA_VERDICT)) {
        None => None,
        Some(verdict) => {
            let code = find(verdict, NFTA_VERDICT_CODE).and_then(be_u32).map(|c| c as i32);
            if code != Some(NFT_JUMP) {
                return Err("a map element that is not a jump".into());
            }
            Some(find(verdict, NFTA_VERDICT_CHAIN).and_then(string).ok_or("a jump without a chain")?.to_string())
        }
    };
    Ok(Listed { key, key_end, interval_end, jump })
}

/// A port padded to a word, as a concatenation holds it.
fn port(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [a, b, 0, 0] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// A protocol padded to a word.
fn protocol(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [p, 0, 0, 0] => Some(*p),
        _ => None,
    }
}

fn ifname(bytes: &[u8]) -> Option<String> {
    (bytes.len() == IFNAMSIZ).then(|| string(bytes).map(str::to_string)).flatten()
}

/// The elements of a set of `kind` from its element dump's messages.
fn elements(kind: SetKind, messages: &[Vec<u8>]) -> Result<BTreeSet<Element>, String> {
    let mut all = Vec::new();
    for attrs in messages {
        let Some(list) = find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else { continue };
        for (k, element, _) in attributes(list) {
            if k == NFTA_LIST_ELEM {
                all.push(listed(element)?);
            }
        }
    }
    if let SetKind::Prefix { .. } = kind {
        return prefixes(all);
    }
    let alen = if kind.v6() { 16 } else { 4 };
    let mut out = BTreeSet::new();
    for e in all {
        let unknown = || format!("an element weft does not write ({e:?})");
        let k = e.key.as_slice();
        let element = match kind {
            SetKind::Addr { .. } => address(k).map(Element::Addr),
            SetKind::AddrPort { .. } if k.len() == alen + 4 => {
                address(&k[..alen]).zip(port(&k[alen..])).map(|(a, p)| Element::AddrPort(a, p))
            }
            SetKind::AddrProtoPort { .. } if k.len() == alen + 8 => {
                match (address(&k[..alen]), protocol(&k[alen..alen + 4]), port(&k[alen + 4..])) {
                    (Some(a), Some(proto), Some(p)) => Some(Element::AddrProtoPort(a, proto, p)),
                    _ => None,
                }
            }
            SetKind::Iface => ifname(k).map(Element::Iface),
            SetKind::IfaceAddr { .. } if k.len() == IFNAMSIZ + alen => {
                ifname(&k[..IFNAMSIZ]).zip(address(&k[IFNAMSIZ..])).map(|(i, a)| Element::IfaceAddr(i, a))
            }
            SetKind::Dispatch { .. } => address(k).zip(e.jump.clone()).map(|(a, chain)| Element::Jump(a, chain)),
            SetKind::Fold { .. } => fold(alen, k, e.key_end.as_deref()),
            _ => None,
        };
        out.insert(element.ok_or_else(unknown)?);
    }
    Ok(out)
}

/// A box of a folded set: both ends share the local address and the protocol.
fn fold(alen: usize, key: &[u8], end: Option<&[u8]>) -> Option<Element> {
    let end = end?;
    if key.len() != 2 * alen + 8 || end.len() != key.len() || key[..alen] != end[..alen] {
        return None;
    }
    let proto = protocol(&key[2 * alen..2 * alen + 4])?;
    if protocol(&end[2 * alen..2 * alen + 4])? != proto {
        return None;
    }
    Some(Element::Fold {
        local: address(&key[..alen])?,
        remote: (address(&key[alen..2 * alen])?, address(&end[alen..2 * alen])?),
        proto,
        ports: (port(&key[2 * alen + 4..])?, port(&end[2 * alen + 4..])?),
    })
}

/// The prefixes of an interval set: each start, and the end after it (the address after the
/// prefix's last, marked as an interval's end; none when the prefix runs to the end of the
/// address space). An interval that is not one prefix was not written by weft.
fn prefixes(mut all: Vec<Listed>) -> Result<BTreeSet<Element>, String> {
    // Where an interval ends at the start of the next, its end comes first.
    all.sort_by(|a, b| a.key.cmp(&b.key).then(b.interval_end.cmp(&a.interval_end)));
    let mut out = BTreeSet::new();
    let mut at = 0;
    while at < all.len() {
        let start = &all[at];
        if start.interval_end {
            return Err("an interval's end without its start".into());
        }
        let first = address(&start.key).ok_or("an interval of something other than addresses")?;
        let end = all.get(at + 1).filter(|e| e.interval_end);
        let last = match end {
            Some(end) => previous(address(&end.key).ok_or("an interval's end that is no address")?),
            None => match first {
                IpAddr::V4(_) => IpAddr::from([255u8; 4]),
                IpAddr::V6(_) => IpAddr::from([255u8; 16]),
            },
        };
        out.insert(Element::Prefix(prefix(first, last).ok_or_else(|| format!("{first}-{last} is not one prefix"))?));
        at += if end.is_some() { 2 } else { 1 };
    }
    Ok(out)
}

fn previous(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v4) => IpAddr::from(u32::from(v4).wrapping_sub(1).to_be_bytes()),
        IpAddr::V6(v6) => IpAddr::from(u128::from(v6).wrapping_sub(1).to_be_bytes()),
    }
}

/// The prefix that runs from `first` to `last`, if there is one.
fn prefix(first: IpAddr, last: IpAddr) -> Option<IpNet> {
    let mut nets: Vec<IpNet> = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).take(2).collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).take(2).collect(),
        _ => return None,
    };
    if nets.len() == 1 { nets.pop() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::batch::Batch;
    use crate::nft::ruleset::Command;

    /// The attributes of a batch's messages of one type: what the kernel echoes in a dump.
    fn messages(commands: &[Command], kind: u16) -> Vec<Vec<u8>> {
        Batch::encode(commands).expect("encodes").messages_of(kind)
    }

    #[test]
    fn sets_of_every_kind_read_back_as_written() {
        let a = |s: &str| s.parse::<IpAddr>().expect("address");
        let sets: Vec<(&str, Set)> = vec![
            ("a4", Set { kind: SetKind::Addr { v6: false }, elements: [Element::Addr(a("10.0.0.1"))].into() }),
            ("a6", Set { kind: SetKind::Addr { v6: true }, elements: [Element::Addr(a("fd00::1"))].into() }),
            (
                "p4",
                Set {
                    kind: SetKind::Prefix { v6: false },
                    elements: ["10.0.0.0/25", "10.0.0.128/25", "0.0.0.0/5", "192.168.1.7/32", "240.0.0.0/4"]
                        .iter()
                        .map(|p| Element::Prefix(p.parse().expect("prefix")))
                        .collect(),
                },
            ),
            (
                "p6",
                Set {
                    kind: SetKind::Prefix { v6: true },
                    elements: [Element::Prefix("::/0".parse().expect("prefix"))].into(),
                },
            ),
            (
                "ap",
                Set {
                    kind: SetKind::AddrPort { v6: false },
                    elements: [Element::AddrPort(a("10.0.0.2"), 8080)].into(),
                },
            ),
            (
                "app",
                Set {
                    kind: SetKind::AddrProtoPort { v6: true },
                    elements: [Element::AddrProtoPort(a("fd00::2"), 17, 53)].into(),
                },
            ),
            ("if", Set { kind: SetKind::Iface, elements: [Element::Iface("weft0123".into())].into() }),
            (
                "ifa",
                Set {
                    kind: SetKind::IfaceAddr { v6: false },
                    elements: [Element::IfaceAddr("weft0123".into(), a("10.0.0.3"))].into(),
                },
            ),
            (
                "d",
                Set {
                    kind: SetKind::Dispatch { v6: false },
                    elements: [Element::Jump(a("10.0.0.3"), "pi-x".into())].into(),
                },
            ),
            (
                "f",
                Set {
                    kind: SetKind::Fold { v6: false },
                    elements: [Element::Fold {
                        local: a("10.0.0.3"),
                        remote: (a("10.1.0.0"), a("10.1.255.255")),
                        proto: 6,
                        ports: (80, 90),
                    }]
                    .into(),
                },
            ),
        ];
        let commands: Vec<Command> =
            sets.iter().map(|(name, set)| Command::AddSet { name: name.to_string(), set: set.clone() }).collect();
        let mut dump = TableDump { sets: messages(&commands, 9), ..TableDump::default() };
        // Element messages name their set by transaction id in a batch; a dump names it.
        for (name, set) in &sets {
            let add = Command::AddElements {
                name: name.to_string(),
                kind: set.kind,
                elements: set.elements.iter().cloned().collect(),
            };
            dump.elements.insert(name.to_string(), messages(&[add], 12));
        }
        let read = decode(&dump).expect("decodes");
        for (name, set) in &sets {
            assert_eq!(read.sets.get(*name), Some(set), "set {name}");
        }
    }

    #[test]
    fn an_interval_that_is_no_prefix_is_not_weft_s() {
        let a = |s: &str| s.parse::<IpAddr>().expect("address");
        let start = Listed { key: vec![10, 0, 0, 1], key_end: None, interval_end: false, jump: None };
        let end = Listed { key: vec![10, 0, 0, 4], key_end: None, interval_end: true, jump: None };
        assert!(prefixes(vec![start, end]).is_err(), "10.0.0.1-10.0.0.3");
        assert_eq!(prefix(a("10.0.0.0"), a("10.0.0.3")), Some("10.0.0.0/30".parse().expect("prefix")));
    }

    #[test]
    fn rules_are_read_by_their_comment_in_their_chain() {
        use crate::nft::expr::Stmt;
        let rule = Rule::new(vec![Stmt::Accept]);
        let commands = vec![
            Command::AddChain { name: "fwd".into(), hook: Some(Hook { priority: -5 }) },
            Command::AddChain { name: "pi-x".into(), hook: None },
            Command::AddRule { chain: "pi-x".into(), rule: rule.clone() },
        ];
        let dump = TableDump { chains: messages(&commands, 3), rules: messages(&commands, 6), ..TableDump::default() };
        let read = decode(&dump).expect("decodes");
        assert_eq!(read.chains["fwd"].hook, Some(Hook { priority: -5 }));
        assert_eq!(read.chains["pi-x"].rules, vec![rule]);
    }
}
