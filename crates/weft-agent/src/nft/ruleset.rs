//! A model of weft's nftables table, the commands that change it, and the diff between two
//! models: pure data, no I/O. The kernel datapath renders a span into a [`Ruleset`], computes
//! the [`Command`]s that turn what the kernel has into it, and sends them as one transaction
//! (a netlink batch, [`super::batch`]; nft's JSON input form, [`super::json`], is written for
//! tests and tools).
//!
//! Rules carry a comment naming their content (a hash of their bytecode), so a table read
//! back from the kernel compares with a rendered one without parsing nft's own rewriting of
//! each expression.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

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

    pub(super) fn is_map(self) -> bool {
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

/// A short, stable name for a rule's content (a hash of its bytecode).
fn content_hash(bytes: &[u8]) -> String {
    format!("weft:{:016x}", fnv1a64(bytes))
}

pub(super) use weft_model::fnv1a64;
