//! A model of weft's nftables table, the commands that change it, and the diff between two
//! models: pure data, no I/O. The kernel datapath renders a span into a [`Ruleset`], computes
//! the [`Command`]s that turn what the kernel has into it, and sends them as one transaction
//! (a netlink batch, [`super::batch`]; nft's JSON input form is written for tests and tools).
//!
//! Rules carry a comment naming their content (a hash of their bytecode), so a table read
//! back from the kernel compares with a rendered one without parsing nft's own rewriting of
//! each expression.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::expr::Stmt;

/// The one table: `inet weft`.
pub const TABLE: &str = "weft";

/// What a set's elements are (the nft `type`, and `flags interval` for prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr { v6: bool },
    /// `ipv4_addr` / `ipv6_addr` with `flags interval`.
    Prefix { v6: bool },
    /// `ipv4_addr . inet_service`: egress named ports, resolved per destination.
    AddrPort { v6: bool },
    /// `ipv4_addr . inet_proto . inet_service`: the local ports that define a named port.
    AddrProtoPort { v6: bool },
    /// `ifname`: the interfaces of local ports.
    Iface,
    /// `ifname . ipv4_addr`: the addresses each local interface may send from.
    IfaceAddr { v6: bool },
    /// `ipv4_addr : verdict`: local port dispatch.
    Dispatch { v6: bool },
    /// `ipv4_addr . ipv4_addr . inet_proto . inet_service` with `flags interval` and a counter
    /// per element: folded rules (local address, remote range, protocol, port range).
    Fold { v6: bool },
}

impl SetKind {
    pub(super) fn v6(self) -> bool {
        match self {
            SetKind::Addr { v6 }
            | SetKind::Prefix { v6 }
            | SetKind::AddrPort { v6 }
            | SetKind::AddrProtoPort { v6 }
            | SetKind::IfaceAddr { v6 }
            | SetKind::Dispatch { v6 }
            | SetKind::Fold { v6 } => v6,
            SetKind::Iface => false,
        }
    }

    /// The nft JSON `type` of the key.
    fn key_type(self) -> Value {
        let addr = if self.v6() { "ipv6_addr" } else { "ipv4_addr" };
        match self {
            SetKind::Addr { .. } | SetKind::Prefix { .. } | SetKind::Dispatch { .. } => json!(addr),
            SetKind::AddrPort { .. } => json!([addr, "inet_service"]),
            SetKind::AddrProtoPort { .. } => json!([addr, "inet_proto", "inet_service"]),
            SetKind::Iface => json!("ifname"),
            SetKind::IfaceAddr { .. } => json!(["ifname", addr]),
            SetKind::Fold { .. } => json!([addr, addr, "inet_proto", "inet_service"]),
        }
    }

    fn is_map(self) -> bool {
        matches!(self, SetKind::Dispatch { .. })
    }
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Addr(IpAddr),
    Prefix(IpNet),
    AddrPort(IpAddr, u16),
    AddrProtoPort(IpAddr, u8, u16),
    Iface(String),
    IfaceAddr(String, IpAddr),
    /// Address → `jump` to a chain.
    Jump(IpAddr, String),
    /// A box of a folded set: traffic of `local` with a remote address in `remote` (first,
    /// last), protocol `proto` and a port in `ports` (first, last).
    Fold {
        local: IpAddr,
        remote: (IpAddr, IpAddr),
        proto: u8,
        ports: (u16, u16),
    },
}

impl Element {
    fn to_json(&self) -> Value {
        match self {
            Element::Addr(a) => json!(a.to_string()),
            Element::Prefix(p) => prefix_json(p),
            Element::AddrPort(a, p) => json!({"concat": [a.to_string(), p]}),
            Element::AddrProtoPort(a, proto, p) => json!({"concat": [a.to_string(), proto, p]}),
            Element::Iface(i) => json!(i),
            Element::IfaceAddr(i, a) => json!({"concat": [i, a.to_string()]}),
            Element::Jump(a, chain) => json!([a.to_string(), {"jump": {"target": chain}}]),
            Element::Fold { local, remote, proto, ports } => {
                let remote = address_range(remote.0, remote.1);
                let ports = if ports.0 == ports.1 { json!(ports.0) } else { json!({"range": [ports.0, ports.1]}) };
                json!({"concat": [local.to_string(), remote, proto, ports]})
            }
        }
    }
}

fn prefix_json(p: &IpNet) -> Value {
    json!({"prefix": {"addr": p.network().to_string(), "len": p.prefix_len()}})
}

/// An address range as nft lists it: one address, a prefix where the range is one, or a range.
fn address_range(first: IpAddr, last: IpAddr) -> Value {
    let mut prefixes: Vec<IpNet> = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).take(2).collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).take(2).collect(),
        _ => Vec::new(),
    };
    match prefixes.pop() {
        Some(p) if prefixes.is_empty() && p.prefix_len() == p.max_prefix_len() => json!(p.addr().to_string()),
        Some(p) if prefixes.is_empty() => prefix_json(&p),
        _ => json!({"range": [first.to_string(), last.to_string()]}),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
}

/// Where a base chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// nft priority on the forward hook (filter is 0).
    pub priority: i32,
}

/// A rule: its statements, their bytecode, and the comment that names them.
#[derive(Debug, Clone)]
pub struct Rule {
    pub comment: String,
    /// Empty for a rule read back from the kernel (its comment says what it is).
    pub stmts: std::sync::Arc<[Stmt]>,
    /// The statements as nf_tables bytecode ([`super::bytecode`]); `None` for a rule read
    /// back from the kernel, or one the compiler could not translate (sent through nft).
    pub wire: Option<std::sync::Arc<[u8]>>,
}

impl Rule {
    /// The comment is a hash of the bytecode: what the kernel runs is what names the rule.
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        let (wire, comment) = match super::bytecode::compile(&stmts) {
            Ok(bytes) => {
                let comment = content_hash(&bytes);
                (Some(bytes.into()), comment)
            }
            Err(e) => {
                tracing::error!(error = %e, "a rule weft cannot encode for netlink: the transaction holding it will be refused");
                (None, content_hash(super::expr::to_json_text(&stmts).as_bytes()))
            }
        };
        Rule { comment, stmts: stmts.into(), wire }
    }

    /// The statements in nft's JSON form, as text.
    pub fn expr(&self) -> String {
        super::expr::to_json_text(&self.stmts)
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.comment == other.comment
    }
}

impl Eq for Rule {}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// The whole `inet weft` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Creates the table when it is not there (nft `add` is idempotent).
    AddTable,
    DeleteTable,
    AddSet {
        name: String,
        set: Set,
    },
    DeleteSet {
        name: String,
        kind: SetKind,
    },
    AddElements {
        name: String,
        kind: SetKind,
        elements: Vec<Element>,
    },
    DeleteElements {
        name: String,
        kind: SetKind,
        elements: Vec<Element>,
    },
    AddChain {
        name: String,
        hook: Option<Hook>,
    },
    FlushChain {
        name: String,
    },
    DeleteChain {
        name: String,
    },
    AddRule {
        chain: String,
        rule: Rule,
    },
}

impl Ruleset {
    /// What `commands` do to this table, as the kernel does it. Commands that the kernel
    /// would refuse (a set that exists, a chain that does not) are errors.
    pub fn apply(&mut self, commands: &[Command]) -> Result<(), String> {
        for c in commands {
            match c {
                Command::AddTable => {}
                Command::DeleteTable => *self = Ruleset::default(),
                Command::AddSet { name, set } => {
                    if self.sets.insert(name.clone(), set.clone()).is_some() {
                        return Err(format!("set {name} exists"));
                    }
                }
                Command::DeleteSet { name, .. } => {
                    self.sets.remove(name).ok_or_else(|| format!("no set {name}"))?;
                }
                Command::AddElements { name, elements, .. } => {
                    let set = self.sets.get_mut(name).ok_or_else(|| format!("no set {name}"))?;
                    set.elements.extend(elements.iter().cloned());
                }
                Command::DeleteElements { name, elements, .. } => {
                    let set = self.sets.get_mut(name).ok_or_else(|| format!("no set {name}"))?;
                    for e in elements {
                        if !set.elements.remove(e) {
                            return Err(format!("no element {e:?} in {name}"));
                        }
                    }
                }
                Command::AddChain { name, hook } => {
                    self.chains.entry(name.clone()).or_insert_with(|| Chain { hook: *hook, rules: Vec::new() });
                }
                Command::FlushChain { name } => {
                    self.chains.get_mut(name).ok_or_else(|| format!("no chain {name}"))?.rules.clear();
                }
                Command::DeleteChain { name } => {
                    self.chains.remove(name).ok_or_else(|| format!("no chain {name}"))?;
                }
                Command::AddRule { chain, rule } => {
                    self.chains.get_mut(chain).ok_or_else(|| format!("no chain {chain}"))?.rules.push(rule.clone());
                }
            }
        }
        Ok(())
    }

    /// The commands that turn this table into `target`, in an order the kernel accepts in one
    /// transaction: chains exist before anything jumps to them, sets before rules use them,
    /// and nothing is deleted while still referenced.
    pub fn diff(&self, target: &Ruleset) -> Vec<Command> {
        let mut out = vec![Command::AddTable];
        // A set or chain whose kind changed cannot be changed in place; start over.
        let clash = target.sets.iter().any(|(n, s)| self.sets.get(n).is_some_and(|o| o.kind != s.kind))
            || target.chains.iter().any(|(n, c)| self.chains.get(n).is_some_and(|o| o.hook != c.hook));
        if clash {
            out.push(Command::DeleteTable);
            out.extend(Ruleset::default().diff(target));
            return out;
        }
        for (name, chain) in &target.chains {
            if !self.chains.contains_key(name) {
                out.push(Command::AddChain { name: name.clone(), hook: chain.hook });
            }
        }
        for (name, set) in &target.sets {
            match self.sets.get(name) {
                None => out.push(Command::AddSet { name: name.clone(), set: set.clone() }),
                Some(old) => {
                    let removed: Vec<Element> = old.elements.difference(&set.elements).cloned().collect();
                    let added: Vec<Element> = set.elements.difference(&old.elements).cloned().collect();
                    if !removed.is_empty() {
                        out.push(Command::DeleteElements { name: name.clone(), kind: set.kind, elements: removed });
                    }
                    if !added.is_empty() {
                        out.push(Command::AddElements { name: name.clone(), kind: set.kind, elements: added });
                    }
                }
            }
        }
        for (name, chain) in &target.chains {
            let old = self.chains.get(name);
            if old.is_some_and(|o| o.rules == chain.rules) {
                continue;
            }
            if old.is_some_and(|o| !o.rules.is_empty()) {
                out.push(Command::FlushChain { name: name.clone() });
            }
            for rule in &chain.rules {
                out.push(Command::AddRule { chain: name.clone(), rule: rule.clone() });
            }
        }
        // Rules that jump to a chain go before the chain: empty them all, then delete.
        let gone: Vec<&String> = self.chains.keys().filter(|n| !target.chains.contains_key(*n)).collect();
        for name in &gone {
            if self.chains.get(*name).is_some_and(|c| !c.rules.is_empty()) {
                out.push(Command::FlushChain { name: (*name).clone() });
            }
        }
        for name in gone {
            out.push(Command::DeleteChain { name: name.clone() });
        }
        for (name, set) in &self.sets {
            if !target.sets.contains_key(name) {
                out.push(Command::DeleteSet { name: name.clone(), kind: set.kind });
            }
        }
        out
    }
}

/// A transaction in nft's JSON input form (`nft -j -f -`).
pub fn encode(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * commands.len() + 32);
    out.extend_from_slice(b"{\"nftables\":[");
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = match c {
            // The rule's statements are written as JSON text: spliced into its frame (an object
            // left open).
            Command::AddRule { chain, rule } => {
                let frame = json!({"family": "inet", "table": TABLE, "chain": chain, "comment": rule.comment});
                let frame = frame.to_string();
                out.extend_from_slice(b"{\"add\":{\"rule\":");
                out.extend_from_slice(&frame.as_bytes()[..frame.len() - 1]);
                out.extend_from_slice(b",\"expr\":");
                out.extend_from_slice(rule.expr().as_bytes());
                out.extend_from_slice(b"}}}");
                Ok(())
            }
            other => serde_json::to_writer(&mut out, &command_json(other)),
        };
    }
    out.extend_from_slice(b"]}");
    out
}

/// The same transaction as a JSON value (for tests and tools that read it).
pub fn to_json(commands: &[Command]) -> Value {
    serde_json::from_slice(&encode(commands)).unwrap_or(Value::Null)
}

/// Every command but `AddRule`, which [`encode`] writes from the rule's text.
fn command_json(c: &Command) -> Value {
    let table = json!({"family": "inet", "name": TABLE});
    match c {
        Command::AddTable => json!({"add": {"table": table}}),
        Command::DeleteTable => json!({"delete": {"table": table}}),
        Command::AddSet { name, set } => {
            let mut body = json!({"family": "inet", "table": TABLE, "name": name, "type": set.kind.key_type()});
            if matches!(set.kind, SetKind::Prefix { .. } | SetKind::Fold { .. }) {
                body["flags"] = json!(["interval"]);
            }
            if matches!(set.kind, SetKind::Fold { .. }) {
                body["stmt"] = json!([{"counter": null}]);
            }
            if !set.elements.is_empty() {
                body["elem"] = Value::Array(set.elements.iter().map(Element::to_json).collect());
            }
            if set.kind.is_map() {
                body["map"] = json!("verdict");
                json!({"add": {"map": body}})
            } else {
                json!({"add": {"set": body}})
            }
        }
        Command::DeleteSet { name, kind } => {
            let body = json!({"family": "inet", "table": TABLE, "name": name});
            if kind.is_map() { json!({"delete": {"map": body}}) } else { json!({"delete": {"set": body}}) }
        }
        Command::AddElements { name, elements, .. } | Command::DeleteElements { name, elements, .. } => {
            let verb = if matches!(c, Command::AddElements { .. }) { "add" } else { "delete" };
            let elem: Vec<Value> = elements.iter().map(Element::to_json).collect();
            json!({verb: {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elem}}})
        }
        Command::AddChain { name, hook } => {
            let mut body = json!({"family": "inet", "table": TABLE, "name": name});
            if let Some(h) = hook {
                body["type"] = json!("filter");
                body["hook"] = json!("forward");
                body["prio"] = json!(h.priority);
                body["policy"] = json!("accept");
            }
            json!({"add": {"chain": body}})
        }
        Command::FlushChain { name } => json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": name}}}),
        Command::DeleteChain { name } => json!({"delete": {"chain": {"family": "inet", "table": TABLE, "name": name}}}),
        Command::AddRule { .. } => Value::Null,
    }
}

/// A short, stable name for a rule's content (a hash of its bytecode).
fn content_hash(bytes: &[u8]) -> String {
    format!("weft:{:016x}", fnv1a64(bytes))
}

pub(super) use weft_model::fnv1a64;
