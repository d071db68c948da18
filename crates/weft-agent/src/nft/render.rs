//! A node's span as weft's nftables table (DESIGN.md §7), and a span delta as the commands
//! that change only what it touches. Pure: property tests check both against each other.
//!
//! ```text
//! forward hook, priority -10: chain egress            forward hook, priority 0: chain ingress
//!   ct state established,related accept                ct state established,related accept
//!   ICMPv6 neighbour discovery accept                   ICMPv6 neighbour discovery accept
//!   from a weft* interface, new TCP not a SYN: drop     to a weft* interface, the same: drop
//!   from a port's interface, another source: drop      to an unknown weft* interface: drop
//!   from an unknown weft* interface: drop               local . remote . proto . port
//!   a port's new UDP to 53: DNS query to NFLOG
//!   local . remote . proto . port                          in @fold-in-4: counter accept
//!     in @fold-out-4: counter accept                    ip daddr vmap @ingress-4 ─► pi-<port>
//!   ip saddr vmap @egress-4 ─► pe-<port>                                                │
//!                                │             jump gi-<group> … ; sample ; counter drop ◄┘
//!   jump ge-<group> … ; sample ; counter drop ◄┘          (group chains: one rule per
//!                                                          compiled rule, `counter accept`;
//!                                                          sample: denied packets to NFLOG,
//!                                                          rate-limited per port)
//! ```
//!
//! Tiered cluster policies (DESIGN.md §11): each base chain asks, before its folded sets and
//! its dispatch, `ip saddr vmap @admin-out-4` (`daddr`, `admin-in-4` for ingress), which sends
//! a port's address to the chain of its list of admin policies; what the tier does not decide
//! comes back and goes on as before. A port with baseline policies and no group isolating it
//! has a port chain that jumps to its list's baseline chain.
//!
//! ```text
//! ta<i|e>-<list>:  [meta mark &= ~bit]       (when more than one admin policy)
//!                  jump ti-<policy 1>        accept: accept; deny: drop; pass: mark |= bit, return
//!                  mark & bit == 0 jump ti-<policy 2> …
//!                  meta mark &= ~bit         (no bit is left on a packet)
//! tb<i|e>-<list>:  jump ti-<policy> …        (a baseline pass accepts)
//! ```
//!
//! Policy chains (`ti-`/`te-<policy>`) and list chains are shared by every port that uses
//! them: kernel rules grow with rules plus ports.
//!
//! Egress and ingress are two base chains on the forward hook: `accept` in a group chain ends
//! only its own base chain, so a packet between two local ports passes the sender's egress and
//! then the receiver's ingress, each decided by the same shared group chains. A port open in a
//! direction has no entry in that direction's dispatch map. The folded sets hold, per local
//! address, what the port-range rules of groups written in place allow (docs/datapath.md):
//! port chains only accept until their drop, so accepting those before the dispatch is the
//! same verdict for fewer kernel rules ([`fold`]). A delta's commands are in [`delta`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use uuid::Uuid;
use weft_compiler::compiled::{L4Match, RemoteMatch, SetMembers};
use weft_compiler::{
    AddressSet, CompiledGroup, CompiledPolicy, CompiledRule, Family, Isolation, NodeSpan, PortPolicy, SetId,
};
use weft_model::{PolicyAction, Tier};

use super::expr::{Field, Left, Op, Right, Stmt};
use super::ruleset::{Chain, Element, Hook, Rule, Ruleset, Set, SetKind, fnv1a64};

mod delta;
mod fold;

pub use delta::delta_commands;
use fold::{FoldBox, fold_boxes, fold_elements};

/// Interfaces of pods on weft's datapath start with this (DESIGN.md §7); traffic of one the
/// agent does not know is dropped, so a pod is never open before its policy arrives.
pub use weft_model::syntax::INTERFACE_PREFIX;
const EGRESS_CHAIN: &str = "egress";
const INGRESS_CHAIN: &str = "ingress";
const IFACES: &str = "ifaces";
/// Where the dispatch maps send an address two ports claim (`PortPolicy::refused_addresses`):
/// it belongs to neither, so its traffic is dropped both ways.
const REFUSED_CHAIN: &str = "refused";
/// Transport protocols with ports: what "any protocol" means for a rule that names ports.
const PORTED: [u8; 3] = [6, 17, 132];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn direction(self) -> weft_model::Direction {
        match self {
            Dir::In => weft_model::Direction::Ingress,
            Dir::Out => weft_model::Direction::Egress,
        }
    }
}

const V4_V6: [bool; 2] = [false, true];

fn fam(v6: bool) -> &'static str {
    if v6 { "6" } else { "4" }
}

/// A set's name in the table: `s` and 11 base-62 digits of 64 bits of its id and family.
///
/// The kernel finds the set a rule (or an element list) names by walking the table's sets
/// and comparing names, with a byte-by-byte `strlen` of each; with a thousand sets that walk
/// was half of a full apply's kernel time, so names are short. 64 bits rather than the
/// id's 128: two sets of one node's table share a name with a probability of about n²/2⁶⁵
/// (10⁻¹¹ for 20,000 sets), and the render logs it if they ever do.
pub fn set_name(id: SetId, v6: bool) -> String {
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    // The family flips a fixed half of the bits: the two families of one set never collide.
    let folded = (id.0 as u64) ^ ((id.0 >> 64) as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut rest = folded ^ if v6 { 0xc4ce_b9fe_1a85_ec53 } else { 0 };
    let mut name = [b'0'; 12];
    name[0] = b's';
    for digit in name[1..].iter_mut().rev() {
        *digit = DIGITS[(rest % 62) as usize];
        rest /= 62;
    }
    String::from_utf8_lossy(&name).into_owned()
}

fn port_chain(port: Uuid, dir: Dir) -> String {
    match dir {
        Dir::In => format!("pi-{}", port.simple()),
        Dir::Out => format!("pe-{}", port.simple()),
    }
}

/// The nfnetlink_log group denied samples go to. Not 1 or 2 (Calico's), 86 (Weave's) or 100
/// (kube-router's): several of them may share a node's kernel.
pub const DENIED_SAMPLES_GROUP: u16 = 17461;
/// Samples of one port's denied packets, a direction, at most this many a second (the drop
/// counter after it counts every one): a flood of denied packets costs the agent a bounded
/// number of messages, and the loss is visible as counted minus sampled.
pub const DENIED_SAMPLES_PER_SECOND: u64 = 20;
pub const DENIED_SAMPLES_BURST: u32 = 40;
/// What every denied sample's log prefix starts with; then `<i|e>:<port id>`.
pub const DENIED_PREFIX: &str = "weft:D:";
/// Enough of a packet for its network and transport headers (IPv6 with a few extension headers).
const DENIED_SAMPLE_BYTES: u32 = 128;

/// The nfnetlink_log group of the ports' DNS queries (UDP to port 53, one message a query).
pub const DNS_QUERIES_GROUP: u16 = 17462;
/// The prefix of a DNS query's message.
pub const DNS_QUERY_PREFIX: &str = "weft:N";
/// Enough of a query for its name: headers, the DNS header and a name of 253 characters.
const DNS_QUERY_BYTES: u32 = 384;

/// The log prefix of a port's denied samples: `weft:D:<i|e>:<port id>`, which the agent's
/// reader parses back ([`crate::flows`]).
pub fn denied_prefix(port: Uuid, ingress: bool) -> String {
    format!("{DENIED_PREFIX}{}:{}", if ingress { 'i' } else { 'e' }, port.simple())
}

/// The rule before a port chain's drop that samples what it drops. Apart from the drop:
/// `limit` is a match, and in the drop rule it would let packets over the rate through.
fn denied_sample(port: Uuid, dir: Dir) -> Vec<Stmt> {
    sample_to(denied_prefix(port, dir == Dir::In))
}

fn sample_to(prefix: String) -> Vec<Stmt> {
    vec![
        Stmt::Limit { per_second: DENIED_SAMPLES_PER_SECOND, burst: DENIED_SAMPLES_BURST },
        Stmt::Log { group: DENIED_SAMPLES_GROUP, prefix, snaplen: DENIED_SAMPLE_BYTES },
    ]
}

/// What a tiered deny rule's samples start with; then `<i|e>:<a|b>:<policy id>:<rule>`.
pub const TIERED_DENIED_PREFIX: &str = "weft:T:";

/// The log prefix of a tiered deny rule's samples: `weft:T:<i|e>:<a|b>:<policy id>:<rule>`
/// (the tier, admin or baseline; the rule by its place among the policy's rules of the
/// direction). Policy chains are shared by ports, so the prefix cannot name the port: the
/// agent's reader finds it by the packet's local address ([`crate::flows`]).
pub fn tiered_denied_prefix(policy: Uuid, tier: Tier, ingress: bool, rule: usize) -> String {
    let t = if tier == Tier::Admin { 'a' } else { 'b' };
    format!("{TIERED_DENIED_PREFIX}{}:{t}:{}:{rule}", if ingress { 'i' } else { 'e' }, policy.simple())
}

/// The chain a tiered deny rule jumps to: it samples what it drops (at the rate a port chain
/// does, per rule and direction), then drops. A chain of its own because `limit` is a match:
/// in the rule that drops, it would let packets over the rate through.
fn tiered_deny_chain(policy: Uuid, dir: Dir, rule: usize) -> String {
    let d = if dir == Dir::In { 'i' } else { 'e' };
    format!("td{d}-{}-{rule}", policy.simple())
}

/// The bit of the packet's mark an admin pass sets in one direction (DESIGN.md §11): the
/// policy's shared chain sets it and returns, and the port's chain skips the rest of the admin
/// tier while it is set. One bit per direction, because a packet between two ports of one node
/// crosses both; each port chain clears its bit before the tier and after it, so none is left
/// on a packet. Bits of the high byte: kube-proxy's are 0x4000 and 0x8000.
pub const PASS_MARK_EGRESS: u32 = 0x0100_0000;
pub const PASS_MARK_INGRESS: u32 = 0x0200_0000;

fn pass_bit(dir: Dir) -> u32 {
    match dir {
        Dir::In => PASS_MARK_INGRESS,
        Dir::Out => PASS_MARK_EGRESS,
    }
}

/// A tiered policy's chain in one direction, shared by every port it selects.
fn policy_chain(policy: Uuid, dir: Dir) -> String {
    match dir {
        Dir::In => format!("ti-{}", policy.simple()),
        Dir::Out => format!("te-{}", policy.simple()),
    }
}

fn group_chain(group: Uuid, dir: Dir) -> String {
    match dir {
        Dir::In => format!("gi-{}", group.simple()),
        Dir::Out => format!("ge-{}", group.simple()),
    }
}

fn dispatch_map(dir: Dir, v6: bool) -> String {
    match dir {
        Dir::In => format!("ingress-{}", fam(v6)),
        Dir::Out => format!("egress-{}", fam(v6)),
    }
}

/// The map that sends a local address to its port's admin-tier chain (DESIGN.md §11), asked
/// before the folded sets and the dispatch: an admin deny comes before any allow.
fn admin_map(dir: Dir, v6: bool) -> String {
    match dir {
        Dir::In => format!("admin-in-{}", fam(v6)),
        Dir::Out => format!("admin-out-{}", fam(v6)),
    }
}

/// The folded set of a direction and family: the rules of groups written in place that fold
/// (see `fold_boxes`), as (local address, remote range, protocol, port range) boxes.
fn fold_set(dir: Dir, v6: bool) -> String {
    match dir {
        Dir::In => format!("fold-in-{}", fam(v6)),
        Dir::Out => format!("fold-out-{}", fam(v6)),
    }
}

fn spoof_set(v6: bool) -> String {
    format!("spoof-{}", fam(v6))
}

/// The set of local (address, protocol, port) that define a named port. Port names are
/// Kubernetes IANA_SVC_NAMEs (lower-case letters, digits, dashes); anything else is hashed.
fn named_port_set(name: &str, v6: bool) -> String {
    let plain = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain { format!("np-{name}-{}", fam(v6)) } else { format!("np-{:016x}-{}", fnv1a64(name.as_bytes()), fam(v6)) }
}

// Statement builders.

fn payload(protocol: &'static str, field: &'static str) -> Left {
    Left::Field(Field::Payload(protocol, field))
}

fn meta(key: &'static str) -> Left {
    Left::Field(Field::Meta(key))
}

fn matches(left: Left, right: Right) -> Stmt {
    Stmt::Match { op: Op::Eq, left, right }
}

fn differs(left: Left, right: Right) -> Stmt {
    Stmt::Match { op: Op::Ne, left, right }
}

fn ip_field(v6: bool, field: &'static str) -> Field {
    Field::Payload(if v6 { "ip6" } else { "ip" }, field)
}

fn family(v6: bool) -> Right {
    Right::Name(if v6 { "ipv6" } else { "ipv4" }.to_string())
}

/// A prefix as a match value (a single address for a host prefix).
fn prefix(p: &ipnet::IpNet) -> Right {
    if p.prefix_len() == p.max_prefix_len() { Right::Addr(p.addr()) } else { Right::Prefix(*p) }
}

fn set_ref(name: &str) -> Right {
    Right::Set(name.to_string())
}

fn port_match(lo: u16, hi: u16) -> Stmt {
    let right = if lo == hi { Right::Number(lo.into()) } else { Right::Range(lo.into(), hi.into()) };
    matches(payload("th", "dport"), right)
}

/// The skeleton: base chains, dispatch maps, interface sets. The same for every span.
fn skeleton(out: &mut Ruleset) {
    for dir in [Dir::In, Dir::Out] {
        for v6 in V4_V6 {
            out.sets.insert(dispatch_map(dir, v6), Set { kind: SetKind::Dispatch { v6 }, elements: BTreeSet::new() });
            out.sets.insert(admin_map(dir, v6), Set { kind: SetKind::Dispatch { v6 }, elements: BTreeSet::new() });
        }
    }
    out.sets.insert(IFACES.to_string(), Set { kind: SetKind::Iface, elements: BTreeSet::new() });
    for v6 in V4_V6 {
        out.sets.insert(spoof_set(v6), Set { kind: SetKind::IfaceAddr { v6 }, elements: BTreeSet::new() });
        for dir in [Dir::In, Dir::Out] {
            out.sets.insert(fold_set(dir, v6), Set { kind: SetKind::Fold { v6 }, elements: BTreeSet::new() });
        }
    }
    // `in`, not `==`: a connection is in one state at a time, and `==` against a list of
    // flags compares with all of them at once.
    let established = established();
    let neighbour_discovery = Rule::new(vec![matches(payload("icmpv6", "type"), Right::Range(133, 137)), Stmt::Accept]);
    let wildcard = Right::Name(format!("{INTERFACE_PREFIX}*"));
    // A TCP packet conntrack calls new that is not a SYN starts no connection: it is what is
    // left of one whose entry was cut (or forgotten). Let through, it would be taken up as a
    // new connection from whichever side sent it, and a cut connection whose next packet came
    // from its server would live on with its client's packets as "replies".
    let midstream = |interface: &'static str| {
        Rule::new(vec![
            matches(meta(interface), wildcard.clone()),
            Stmt::Match { op: Op::In, left: Left::Field(Field::CtState), right: Right::Name("new".into()) },
            differs(
                Left::Masked(Field::Payload("tcp", "flags"), &["fin", "syn", "rst", "ack"]),
                Right::Name("syn".into()),
            ),
            Stmt::Counter,
            Stmt::Drop,
        ])
    };
    let mut egress = vec![established.clone(), neighbour_discovery.clone(), midstream("iifname")];
    for v6 in V4_V6 {
        // A port may send only from its own addresses.
        egress.push(Rule::new(vec![
            matches(meta("iifname"), set_ref(IFACES)),
            matches(meta("nfproto"), family(v6)),
            differs(Left::Concat(vec![Field::Meta("iifname"), ip_field(v6, "saddr")]), set_ref(&spoof_set(v6))),
            Stmt::Counter,
            Stmt::Drop,
        ]));
    }
    egress.push(Rule::new(vec![
        matches(meta("iifname"), wildcard.clone()),
        differs(meta("iifname"), set_ref(IFACES)),
        Stmt::Counter,
        Stmt::Drop,
    ]));
    // A port's DNS queries, one message each (a query takes a new source port, so a new
    // connection): the names go to whoever reads the group (the agent, unless told not to:
    // names can be sensitive); with no reader the kernel sends nothing. Before the dispatch,
    // so a query the policy then denies is seen too.
    egress.push(Rule::new(vec![
        matches(meta("iifname"), set_ref(IFACES)),
        matches(meta("l4proto"), Right::Number(17)),
        matches(payload("th", "dport"), Right::Number(53)),
        Stmt::Match { op: Op::In, left: Left::Field(Field::CtState), right: Right::Name("new".into()) },
        Stmt::Log { group: DNS_QUERIES_GROUP, prefix: DNS_QUERY_PREFIX.into(), snaplen: DNS_QUERY_BYTES },
    ]));
    let mut ingress = vec![established, neighbour_discovery, midstream("oifname")];
    ingress.push(Rule::new(vec![
        matches(meta("oifname"), wildcard),
        differs(meta("oifname"), set_ref(IFACES)),
        Stmt::Counter,
        Stmt::Drop,
    ]));
    // The folded rules come before the dispatch: they only accept, as the port chains do
    // before their default drop, so a packet they accept is one its port chain would.
    let folded = |dir: Dir, v6: bool| {
        let (local, remote) = if dir == Dir::In { ("daddr", "saddr") } else { ("saddr", "daddr") };
        let key =
            vec![ip_field(v6, local), ip_field(v6, remote), Field::Meta("l4proto"), Field::Payload("th", "dport")];
        Rule::new(vec![matches(Left::Concat(key), set_ref(&fold_set(dir, v6))), Stmt::Counter, Stmt::Accept])
    };
    for v6 in V4_V6 {
        // The admin tier first (a jump: what it does not decide comes back), then the folded
        // rules and the dispatch to the port's chain.
        egress.push(Rule::new(vec![Stmt::Vmap { key: ip_field(v6, "saddr"), map: admin_map(Dir::Out, v6) }]));
        egress.push(folded(Dir::Out, v6));
        egress.push(Rule::new(vec![Stmt::Vmap { key: ip_field(v6, "saddr"), map: dispatch_map(Dir::Out, v6) }]));
        ingress.push(Rule::new(vec![Stmt::Vmap { key: ip_field(v6, "daddr"), map: admin_map(Dir::In, v6) }]));
        ingress.push(folded(Dir::In, v6));
        ingress.push(Rule::new(vec![Stmt::Vmap { key: ip_field(v6, "daddr"), map: dispatch_map(Dir::In, v6) }]));
    }
    out.chains.insert(
        REFUSED_CHAIN.to_string(),
        Chain { hook: None, rules: vec![Rule::new(vec![Stmt::Counter, Stmt::Drop])] },
    );
    out.chains.insert(EGRESS_CHAIN.to_string(), Chain { hook: Some(Hook { priority: -10 }), rules: egress });
    out.chains.insert(INGRESS_CHAIN.to_string(), Chain { hook: Some(Hook { priority: 0 }), rules: ingress });
}

/// What conntrack calls established or related: accepted, first in both base chains.
fn established() -> Rule {
    Rule::new(vec![
        Stmt::Match { op: Op::In, left: Left::Field(Field::CtState), right: Right::Names(&["established", "related"]) },
        Stmt::Accept,
    ])
}

/// The floor of any stateful filter, for benchmarks (`weft bench packets`): the table with one
/// forward chain whose one rule accepts what conntrack calls established or related, and lets
/// everything else through by the chain's policy. It costs what conntrack costs and no more.
pub fn conntrack_floor() -> Ruleset {
    let mut out = Ruleset::default();
    out.chains
        .insert(INGRESS_CHAIN.to_string(), Chain { hook: Some(Hook { priority: 0 }), rules: vec![established()] });
    out
}

/// The whole table for `span`.
pub fn render(span: &NodeSpan) -> Ruleset {
    let groups: Vec<_> = span.groups.iter().collect();
    let users = group_users(span);
    // Group rules are most of a large table, and each group renders on its own: half of them
    // on a second thread (a full apply waits for the render).
    let (first, second) = groups.split_at(groups.len() / 2);
    let render_groups = |groups: &[(&Uuid, &std::sync::Arc<CompiledGroup>)]| {
        let mut out = GroupRules::new();
        for (id, group) in groups {
            render_group(&mut out, **id, group, &span.sets, &users);
        }
        out
    };
    let rules = std::thread::scope(|scope| {
        let helper = (second.len() >= PARALLEL_GROUPS).then(|| scope.spawn(|| render_groups(second)));
        let mut rules = render_groups(if helper.is_some() { first } else { &groups });
        if let Some(helper) = helper {
            rules.extend(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        rules
    });
    let mut out = Ruleset::default();
    skeleton(&mut out);
    for (id, set) in span.sets.iter() {
        render_set(&mut out, *id, set);
    }
    for ((id, dir), lines) in &rules {
        if !lines.in_place {
            out.chains.insert(group_chain(*id, *dir), Chain { hook: None, rules: lines.rules.clone() });
        }
    }
    for (id, policy) in span.policies.iter() {
        render_policy(&mut out, *id, policy, &span.sets);
    }
    for (id, port) in &span.ports {
        render_port(&mut out, *id, port, &rules, &span.policies);
    }
    render_tier_lists(&mut out, span);
    render_port_globals(&mut out, span);
    out
}

type Policies = BTreeMap<Uuid, std::sync::Arc<CompiledPolicy>>;

/// A tiered policy's chains: per direction it has rules in, each rule's alternatives in order,
/// with the rule's verdict. Accept accepts (the whole direction: an accept in a chain jumped
/// to ends its base chain), deny drops, and pass sets the direction's mark bit and returns in
/// the admin tier (the port's chain then skips the rest of the tier) and accepts in the
/// baseline tier (DESIGN.md §11: a baseline pass allows).
fn render_policy(out: &mut Ruleset, id: Uuid, policy: &CompiledPolicy, sets: &Sets) {
    for dir in [Dir::In, Dir::Out] {
        let rules = policy.rules(dir.direction());
        if rules.is_empty() {
            continue;
        }
        let mut chain = Chain::default();
        for (index, rule) in rules.iter().enumerate() {
            let bit = pass_bit(dir);
            let verdict = match (rule.action, policy.tier) {
                (PolicyAction::Accept, _) | (PolicyAction::Pass, Tier::Baseline) => vec![Stmt::Counter, Stmt::Accept],
                (PolicyAction::Deny, _) => {
                    let name = tiered_deny_chain(id, dir, index);
                    let sample = sample_to(tiered_denied_prefix(id, policy.tier, dir == Dir::In, index));
                    let drop = vec![Stmt::Counter, Stmt::Drop];
                    out.chains
                        .insert(name.clone(), Chain { hook: None, rules: vec![Rule::new(sample), Rule::new(drop)] });
                    vec![Stmt::Jump(name)]
                }
                (PolicyAction::Pass, Tier::Admin) => {
                    vec![Stmt::Counter, Stmt::Mark { and: !bit, xor: bit }, Stmt::Return]
                }
            };
            for m in &rule.matches {
                let compiled = CompiledRule {
                    rule: Uuid::nil(),
                    family: Family::Both,
                    protocol: m.protocol,
                    l4: m.l4.clone(),
                    remote: m.remote.clone(),
                };
                for v6 in V4_V6 {
                    chain.rules.extend(rule_lines(&compiled, dir, v6, sets, &verdict).into_iter().map(Rule::new));
                }
            }
        }
        out.chains.insert(policy_chain(id, dir), chain);
    }
}

/// The chain that asks one tier's policies of a list (a port's, in order) in one direction:
/// `ta`/`tb` (admin, baseline), `i`/`e`, and 64 bits of the list's hash.
fn tier_list_chain(tier: Tier, dir: Dir, list: &[Uuid]) -> String {
    let bytes: Vec<u8> = list.iter().flat_map(|id| *id.as_bytes()).collect();
    let t = if tier == Tier::Admin { 'a' } else { 'b' };
    let d = if dir == Dir::In { 'i' } else { 'e' };
    format!("t{t}{d}-{:016x}", fnv1a64(&bytes))
}

/// The tier-list chains every port of the span jumps to: the admin one asks its policies in
/// order, each after the first only while no pass came (the direction's mark bit clear), and
/// clears the bit before and after, so none is left on a packet; the baseline one asks its
/// policies in order (a pass there accepts).
fn render_tier_lists(out: &mut Ruleset, span: &NodeSpan) {
    // Ports share their lists: each distinct one is looked at once (a delta renders these on
    // both sides whenever a port changes, and 500 ports of one list cost a member join 10 ms).
    let mut seen = std::collections::HashSet::new();
    for port in span.ports.values() {
        if !seen.insert(std::sync::Arc::as_ptr(&port.policies)) {
            continue;
        }
        for dir in [Dir::In, Dir::Out] {
            let (admin, baseline) = port_tiers(port, dir, &span.policies);
            if !admin.is_empty() {
                let name = tier_list_chain(Tier::Admin, dir, &admin);
                out.chains.entry(name).or_insert_with(|| {
                    let bit = pass_bit(dir);
                    let clear = || Rule::new(vec![Stmt::Mark { and: !bit, xor: 0 }]);
                    let mut chain = Chain::default();
                    if admin.len() > 1 {
                        chain.rules.push(clear());
                    }
                    for (i, p) in admin.iter().enumerate() {
                        let mut jump =
                            if i == 0 { vec![] } else { vec![matches(Left::MarkBits(bit), Right::Number(0))] };
                        jump.push(Stmt::Jump(policy_chain(*p, dir)));
                        chain.rules.push(Rule::new(jump));
                    }
                    chain.rules.push(clear());
                    chain
                });
            }
            if !baseline.is_empty() {
                let name = tier_list_chain(Tier::Baseline, dir, &baseline);
                out.chains.entry(name).or_insert_with(|| Chain {
                    hook: None,
                    rules: baseline.iter().map(|p| Rule::new(vec![Stmt::Jump(policy_chain(*p, dir))])).collect(),
                });
            }
        }
    }
}

/// A port's tiered policies that have rules in a direction, admin ones and baseline ones, in
/// the order they decide.
fn port_tiers(port: &PortPolicy, dir: Dir, policies: &Policies) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut admin = Vec::new();
    let mut baseline = Vec::new();
    for id in port.policies.iter() {
        let Some(policy) = policies.get(id) else { continue };
        if policy.rules(dir.direction()).is_empty() {
            continue;
        }
        match policy.tier {
            Tier::Admin => admin.push(*id),
            Tier::Baseline => baseline.push(*id),
        }
    }
    (admin, baseline)
}

/// Fewer groups than this (per half) render on one thread: a thread costs more than they do.
const PARALLEL_GROUPS: usize = 64;

/// A group's rules in one direction, as the kernel gets them.
#[derive(Debug, Clone, Default)]
struct GroupLines {
    /// Written into the chains of the ports it applies to, rather than a chain of its own.
    in_place: bool,
    rules: Vec<Rule>,
    /// Of a group in place: the rules that fold (see `fold_boxes`), as boxes for the folded
    /// sets.
    folds: Vec<FoldBox>,
}

/// Each group's kernel rules in each direction it has rules in.
type GroupRules = BTreeMap<(Uuid, Dir), GroupLines>;

/// How many local ports each group applies to, in each direction.
fn group_users(span: &NodeSpan) -> BTreeMap<(Uuid, Dir), usize> {
    let mut users = BTreeMap::new();
    for port in span.ports.values() {
        for (dir, isolation) in [(Dir::In, &port.ingress), (Dir::Out, &port.egress)] {
            if let Isolation::Isolated(groups) = isolation {
                for g in groups.iter() {
                    *users.entry((*g, dir)).or_insert(0) += 1;
                }
            }
        }
    }
    users
}

/// Whether a group's rules are written into the chains of the ports it applies to, rather
/// than into a chain of its own that they jump to: when that takes no more kernel rules
/// (rules × ports ≤ rules + ports: a group of one rule, or of one local port, which is most
/// groups). It saves the chain and the jumps; a chain costs the kernel about as much as a
/// rule to create, and the table's size still grows with rules plus ports.
fn in_place(rules: usize, users: &BTreeMap<(Uuid, Dir), usize>, group: Uuid, dir: Dir) -> bool {
    let ports = users.get(&(group, dir)).copied().unwrap_or(0);
    rules * ports <= rules + ports
}

fn set_kind(members: &SetMembers, v6: bool) -> SetKind {
    match members {
        SetMembers::Addresses(_) => SetKind::Addr { v6 },
        SetMembers::Prefixes(_) => SetKind::Prefix { v6 },
        SetMembers::Pairs(_) => SetKind::AddrPort { v6 },
    }
}

/// Sets this small are not kept as named sets: the rules of groups written in place fold their
/// members into the folded sets, and other rules are written once per member. The kernel
/// finds a named set by walking the table's list of sets, once per rule that uses one and
/// once per set created, so a table's cost grows with the square of its named sets; most
/// selections are a few pods, and most CIDRs one prefix (its CIDR minus its excepts). The
/// price: a member change of such a set changes the folded elements of the ports using it
/// (element adds and deletes still) and rewrites the few rules of shared groups using it.
const INLINE_MEMBERS: usize = 4;

/// How a set is rendered: which families have a named nft set (a family with no members has
/// none, and rules need none for it), or the prefixes written into the rules instead. Rules
/// depend on this, so a change of it re-renders the rules that use the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SetShape {
    Named { v4: bool, v6: bool },
    Inline(Vec<ipnet::IpNet>),
}

pub(super) fn set_shape(set: &AddressSet) -> SetShape {
    match &set.members {
        SetMembers::Prefixes(p) if p.len() <= INLINE_MEMBERS => SetShape::Inline(p.clone()),
        SetMembers::Addresses(a) if a.len() <= INLINE_MEMBERS => {
            SetShape::Inline(a.iter().map(|a| ipnet::IpNet::from(*a)).collect())
        }
        SetMembers::Prefixes(p) => SetShape::Named {
            v4: p.iter().any(|n| matches!(n, ipnet::IpNet::V4(_))),
            v6: p.iter().any(|n| matches!(n, ipnet::IpNet::V6(_))),
        },
        // Sorted, and every IPv4 address before every IPv6 one: the ends tell (this runs for
        // every rule that names the set, and a set can hold a whole cluster's pods).
        SetMembers::Addresses(a) => {
            SetShape::Named { v4: a.first().is_some_and(IpAddr::is_ipv4), v6: a.last().is_some_and(IpAddr::is_ipv6) }
        }
        SetMembers::Pairs(p) => SetShape::Named {
            v4: p.first().is_some_and(|(a, _)| a.is_ipv4()),
            v6: p.last().is_some_and(|(a, _)| a.is_ipv6()),
        },
    }
}

fn set_elements(members: &SetMembers, v6: bool) -> BTreeSet<Element> {
    match members {
        SetMembers::Addresses(a) => a.iter().filter(|x| x.is_ipv6() == v6).map(|x| Element::Addr(*x)).collect(),
        SetMembers::Prefixes(p) => {
            p.iter().filter(|x| matches!(x, ipnet::IpNet::V6(_)) == v6).map(|x| Element::Prefix(*x)).collect()
        }
        SetMembers::Pairs(p) => {
            p.iter().filter(|(a, _)| a.is_ipv6() == v6).map(|(a, p)| Element::AddrPort(*a, *p)).collect()
        }
    }
}

fn render_set(out: &mut Ruleset, id: SetId, set: &AddressSet) {
    if matches!(set_shape(set), SetShape::Inline(_)) {
        return;
    }
    for v6 in V4_V6 {
        let elements = set_elements(&set.members, v6);
        if !elements.is_empty()
            && out.sets.insert(set_name(id, v6), Set { kind: set_kind(&set.members, v6), elements }).is_some()
        {
            tracing::error!(set = %id, "two sets of the span have one name in the table; one of them is wrong");
        }
    }
}

/// Whether a group has a chain (and ports jump to it) in a direction: when it has rules there.
/// A group that isolates without rules (a default deny) adds nothing to its ports' chains.
fn has_rules(group: &CompiledGroup, dir: Dir) -> bool {
    match dir {
        Dir::In => !group.ingress.is_empty(),
        Dir::Out => !group.egress.is_empty(),
    }
}

type Sets = BTreeMap<SetId, std::sync::Arc<AddressSet>>;

fn render_group(
    out: &mut GroupRules,
    id: Uuid,
    group: &CompiledGroup,
    sets: &Sets,
    users: &BTreeMap<(Uuid, Dir), usize>,
) {
    for (dir, rules) in [(Dir::In, &group.ingress), (Dir::Out, &group.egress)] {
        if !has_rules(group, dir) {
            continue;
        }
        let per_rule: Vec<Vec<Vec<Stmt>>> =
            rules.iter().map(|r| V4_V6.iter().flat_map(|v6| rule_lines(r, dir, *v6, sets, ALLOW)).collect()).collect();
        let count = per_rule.iter().map(Vec::len).sum();
        let mut lines = GroupLines { in_place: in_place(count, users, id, dir), ..GroupLines::default() };
        for (rule, stmts) in rules.iter().zip(per_rule) {
            // Only a group in place folds: a chain of its own keeps its rules, which folded
            // would cost an element per rule and port.
            match lines.in_place.then(|| fold_boxes(rule, sets)).flatten() {
                Some(boxes) => lines.folds.extend(boxes),
                None => lines.rules.extend(stmts.into_iter().map(Rule::new)),
            }
        }
        out.insert((id, dir), lines);
    }
}

/// A security group rule's verdict.
const ALLOW: &[Stmt] = &[Stmt::Counter, Stmt::Accept];

/// One compiled rule for one family, as kernel rules, each ending with `verdict`. Several port ranges (or "any protocol"
/// with ports) become several rules rather than an anonymous set: the kernel's cost of
/// creating anonymous sets grows with the square of their number in one transaction.
fn rule_lines(rule: &CompiledRule, dir: Dir, v6: bool, sets: &Sets, verdict: &[Stmt]) -> Vec<Vec<Stmt>> {
    if !rule.family.has(v6) {
        return Vec::new();
    }
    let remote_field = if dir == Dir::In { "saddr" } else { "daddr" };
    // Each head is the start of one kernel rule (an inlined prefix set gives one per prefix).
    let mut heads: Vec<Vec<Stmt>> = vec![Vec::new()];
    match &rule.remote {
        // ICMP types and named ports are matched per family anyway.
        RemoteMatch::Any if matches!(rule.l4, L4Match::Icmp { .. } | L4Match::Named(_)) => {}
        RemoteMatch::Any => {
            // A rule for both families and no address is written once (for v4 only).
            if rule.family == Family::Both {
                if v6 {
                    return Vec::new();
                }
            } else {
                heads[0].push(matches(meta("nfproto"), family(v6)));
            }
        }
        RemoteMatch::Set(id) | RemoteMatch::Pairs(id) => {
            // A set the span does not hold, or with no member of this family, matches nothing.
            let Some(set) = sets.get(id) else { return Vec::new() };
            match set_shape(set) {
                SetShape::Named { v4, v6: has_v6 } if !(if v6 { has_v6 } else { v4 }) => return Vec::new(),
                SetShape::Named { .. } => {
                    if matches!(rule.remote, RemoteMatch::Set(_)) {
                        heads[0].push(matches(Left::Field(ip_field(v6, remote_field)), set_ref(&set_name(*id, v6))));
                    }
                }
                SetShape::Inline(prefixes) => {
                    heads = prefixes
                        .iter()
                        .filter(|p| matches!(p, ipnet::IpNet::V6(_)) == v6)
                        .map(|p| vec![matches(Left::Field(ip_field(v6, remote_field)), prefix(p))])
                        .collect();
                }
            }
        }
    }
    let protocols: Vec<Option<u8>> = match (&rule.l4, rule.protocol, &rule.remote) {
        (L4Match::Ranges(_), None, _) | (L4Match::All, None, RemoteMatch::Pairs(_)) => {
            PORTED.iter().map(|p| Some(*p)).collect()
        }
        (_, p, _) => vec![p],
    };
    let mut lines = Vec::new();
    for (head, protocol) in heads.iter().flat_map(|h| protocols.iter().map(move |p| (h, *p))) {
        let mut base = head.clone();
        if let Some(p) = protocol {
            base.push(matches(meta("l4proto"), Right::Number(p.into())));
        }
        let tails: Vec<Vec<Stmt>> = match (&rule.l4, &rule.remote) {
            (_, RemoteMatch::Pairs(id)) => vec![vec![matches(
                Left::Concat(vec![ip_field(v6, "daddr"), Field::Payload("th", "dport")]),
                set_ref(&set_name(*id, v6)),
            )]],
            (L4Match::All, _) => vec![vec![]],
            (L4Match::Ranges(ranges), _) => ranges.iter().map(|(lo, hi)| vec![port_match(*lo, *hi)]).collect(),
            (L4Match::Named(name), _) => vec![vec![matches(
                Left::Concat(vec![ip_field(v6, "daddr"), Field::Meta("l4proto"), Field::Payload("th", "dport")]),
                set_ref(&named_port_set(name, v6)),
            )]],
            (L4Match::Icmp { icmp_type, code }, _) => {
                // ICMP types mean something only in their own family.
                let icmp = if v6 { "icmpv6" } else { "icmp" };
                if protocol.is_some_and(|p| p != if v6 { 58 } else { 1 }) {
                    continue;
                }
                let mut t = vec![matches(payload(icmp, "type"), Right::Number((*icmp_type).into()))];
                if let Some(c) = code {
                    t.push(matches(payload(icmp, "code"), Right::Number((*c).into())));
                }
                vec![t]
            }
        };
        for tail in tails {
            let mut line = base.clone();
            line.extend(tail);
            line.extend_from_slice(verdict);
            lines.push(line);
        }
    }
    lines
}

/// A port's chain in each direction it has one: its admin tier, then its groups where they
/// isolate it (ending in the sampled drop), else its baseline tier (ending in a return: what
/// no rule decided is allowed).
fn render_port(out: &mut Ruleset, id: Uuid, port: &PortPolicy, rules: &GroupRules, policies: &Policies) {
    for (dir, isolation) in [(Dir::In, &port.ingress), (Dir::Out, &port.egress)] {
        // The admin tier is asked before this chain (`admin_map`); the baseline tier, from it,
        // where no group isolates the port. Each tier's policies are asked in a chain of their
        // list's, shared by every port of that list (`render_tier_lists`): kernel rules grow
        // with policies plus ports.
        let (_, baseline) = port_tiers(port, dir, policies);
        if baseline.is_empty() && matches!(isolation, Isolation::Open) {
            continue;
        }
        let mut chain = Chain::default();
        let Isolation::Isolated(groups) = isolation else {
            if !baseline.is_empty() {
                chain.rules.push(Rule::new(vec![Stmt::Jump(tier_list_chain(Tier::Baseline, dir, &baseline))]));
            }
            out.chains.insert(port_chain(id, dir), chain);
            continue;
        };
        let mut folds = Vec::new();
        for g in groups.iter() {
            // A group the span does not hold, or with no rules this way, allows nothing (and
            // has no chain to jump to).
            match rules.get(&(*g, dir)) {
                None => {}
                Some(lines) if lines.in_place => {
                    chain.rules.extend(lines.rules.iter().cloned());
                    folds.extend_from_slice(&lines.folds);
                }
                Some(_) => chain.rules.push(Rule::new(vec![Stmt::Jump(group_chain(*g, dir))])),
            }
        }
        chain.rules.push(Rule::new(denied_sample(id, dir)));
        chain.rules.push(Rule::new(vec![Stmt::Counter, Stmt::Drop]));
        out.chains.insert(port_chain(id, dir), chain);
        if folds.is_empty() {
            continue;
        }
        for local in &port.addresses {
            let v6 = local.is_ipv6();
            let set = out
                .sets
                .entry(fold_set(dir, v6))
                .or_insert_with(|| Set { kind: SetKind::Fold { v6 }, elements: BTreeSet::new() });
            set.elements.extend(fold_elements(*local, &folds));
        }
    }
}

/// Dispatch maps, interface sets and named-port sets: what depends on all local ports.
fn render_port_globals(out: &mut Ruleset, span: &NodeSpan) {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for group in span.groups.values() {
        for rule in &group.ingress {
            if let L4Match::Named(n) = &rule.l4 {
                names.insert(n);
            }
        }
    }
    for policy in span.policies.values() {
        for m in policy.ingress.iter().flat_map(|r| &r.matches) {
            if let L4Match::Named(n) = &m.l4 {
                names.insert(n);
            }
        }
    }
    let mut named: BTreeMap<String, Set> = BTreeMap::new();
    for n in &names {
        for v6 in V4_V6 {
            named.insert(named_port_set(n, v6), Set { kind: SetKind::AddrProtoPort { v6 }, elements: BTreeSet::new() });
        }
    }
    let refused = crate::datapath::refused_interfaces(span);
    // By (list, ingress): whether its baseline tier has policies, and its admin tier's chain.
    type Tiers = std::collections::HashMap<(*const Vec<Uuid>, bool), (bool, Option<String>)>;
    let mut tiers = Tiers::new();
    for (id, port) in &span.ports {
        let iface = port.interface.clone();
        // A refused interface is not bound: traffic through it is not taken as the port's
        // (an unknown weft* interface is dropped; any other is none of weft's business), and
        // the port's policy still holds by address in the dispatch maps.
        let bound = !refused.contains_key(id);
        if bound && let Some(s) = out.sets.get_mut(IFACES) {
            s.elements.insert(Element::Iface(iface.clone()));
        }
        for addr in &port.refused_addresses {
            for dir in [Dir::In, Dir::Out] {
                if let Some(s) = out.sets.get_mut(&dispatch_map(dir, addr.is_ipv6())) {
                    s.elements.insert(Element::Jump(*addr, REFUSED_CHAIN.to_string()));
                }
            }
        }
        for addr in &port.addresses {
            let v6 = addr.is_ipv6();
            if bound && let Some(s) = out.sets.get_mut(&spoof_set(v6)) {
                s.elements.insert(Element::IfaceAddr(iface.clone(), *addr));
            }
            for dir in [Dir::In, Dir::Out] {
                // Ports share their lists: each distinct one's tiers once (see render_tier_lists).
                let (baseline, admin) = tiers
                    .entry((std::sync::Arc::as_ptr(&port.policies), dir == Dir::In))
                    .or_insert_with(|| {
                        let (admin, baseline) = port_tiers(port, dir, &span.policies);
                        (!baseline.is_empty(), (!admin.is_empty()).then(|| tier_list_chain(Tier::Admin, dir, &admin)))
                    })
                    .clone();
                // A port has a chain that way (and its addresses a dispatch entry to it) when a
                // group isolates it, or a baseline policy with rules that way selects it.
                let isolation = if dir == Dir::In { &port.ingress } else { &port.egress };
                if (baseline || matches!(isolation, Isolation::Isolated(_)))
                    && let Some(s) = out.sets.get_mut(&dispatch_map(dir, v6))
                {
                    s.elements.insert(Element::Jump(*addr, port_chain(*id, dir)));
                }
                if let Some(chain) = admin
                    && let Some(s) = out.sets.get_mut(&admin_map(dir, v6))
                {
                    s.elements.insert(Element::Jump(*addr, chain));
                }
            }
            for (name, np) in port.named_ports.iter() {
                let (Some(protocol), Some(s)) = (np.protocol.number(), named.get_mut(&named_port_set(name, v6))) else {
                    continue;
                };
                s.elements.insert(Element::AddrProtoPort(*addr, protocol, np.port as u16));
            }
        }
    }
    out.sets.extend(named);
}

/// The groups a port's chains name, both directions.
fn port_groups(port: &PortPolicy) -> impl Iterator<Item = Uuid> + '_ {
    [&port.ingress, &port.egress].into_iter().flat_map(|isolation| {
        let groups = match isolation {
            Isolation::Isolated(groups) => Some(groups.iter().copied()),
            _ => None,
        };
        groups.into_iter().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, address: &str, groups: &[Uuid]) -> PortPolicy {
        PortPolicy {
            project: "p".into(),
            name: name.into(),
            addresses: vec![address.parse().unwrap()],
            refused_addresses: vec![],
            interface: format!("weft{name}"),
            instance: None,
            named_ports: Default::default(),
            ingress: Isolation::Isolated(std::sync::Arc::new(groups.to_vec())),
            egress: Isolation::Open,
            policies: Default::default(),
        }
    }

    fn cidr_rule(n: u128, set: SetId, protocol: Option<u8>, l4: L4Match) -> CompiledRule {
        CompiledRule { rule: Uuid::from_u128(n), family: Family::Both, protocol, l4, remote: RemoteMatch::Set(set) }
    }

    #[test]
    fn rules_of_groups_in_place_fold_into_elements_and_shared_groups_keep_theirs() {
        // 10.0.0.0/23 except 10.0.0.128/25, as the compiler gives it: two prefixes.
        let cidr = SetId(1);
        let prefixes = vec!["10.0.0.0/25".parse().unwrap(), "10.0.1.0/24".parse().unwrap()];
        let set = AddressSet {
            definition: weft_compiler::compiled::SetDefinition::Addresses(
                weft_compiler::compiled::Selection::GroupMembers { group: Uuid::from_u128(99) },
            ),
            members: SetMembers::Prefixes(prefixes),
        };
        let (alone, shared) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let group = |rules| {
            std::sync::Arc::new(CompiledGroup { project: "p".into(), name: "g".into(), ingress: rules, egress: vec![] })
        };
        // One port's group: TCP 80-90 folds; a rule of any protocol cannot.
        let alone_rules =
            vec![cidr_rule(1, cidr, Some(6), L4Match::Ranges(vec![(80, 90)])), cidr_rule(2, cidr, None, L4Match::All)];
        // Two ports share a group of two rules: a chain of its own, nothing folded.
        let shared_rules = vec![
            cidr_rule(3, cidr, Some(17), L4Match::Ranges(vec![(53, 53)])),
            cidr_rule(4, cidr, Some(6), L4Match::Ranges(vec![(443, 443)])),
        ];
        let span = NodeSpan {
            ports: [
                (Uuid::from_u128(20), policy("a", "10.9.0.1", &[alone])),
                (Uuid::from_u128(21), policy("b", "10.9.0.2", &[shared])),
                (Uuid::from_u128(22), policy("c", "10.9.0.3", &[shared])),
            ]
            .into(),
            groups: std::sync::Arc::new([(alone, group(alone_rules)), (shared, group(shared_rules))].into()),
            sets: std::sync::Arc::new([(cidr, std::sync::Arc::new(set))].into()),
            policies: Default::default(),
        };
        let table = render(&span);
        let folded: Vec<&Element> = table.sets["fold-in-4"].elements.iter().collect();
        let fold = |remote: (&str, &str)| Element::Fold {
            local: "10.9.0.1".parse().unwrap(),
            remote: (remote.0.parse().unwrap(), remote.1.parse().unwrap()),
            proto: 6,
            ports: (80, 90),
        };
        assert_eq!(folded, vec![&fold(("10.0.0.0", "10.0.0.127")), &fold(("10.0.1.0", "10.0.1.255"))]);
        // a's chain: the rule of any protocol (once per prefix), the denied sample of what
        // falls through, and the default drop.
        let a = &table.chains[&port_chain(Uuid::from_u128(20), Dir::In)];
        assert_eq!(a.rules.len(), 4, "{:?}", a.rules.iter().map(Rule::expr).collect::<Vec<_>>());
        assert!(a.rules[..2].iter().all(|r| !r.expr().contains("dport")));
        let sample = a.rules[2].expr();
        assert!(
            sample.contains(r#""limit""#) && sample.contains(&denied_prefix(Uuid::from_u128(20), true)),
            "{sample}"
        );
        assert!(a.rules[3].expr().contains("drop"));
        let shared_chain = &table.chains[&group_chain(shared, Dir::In)];
        assert_eq!(shared_chain.rules.len(), 4, "two rules, two prefixes each");
        assert!(table.sets["fold-in-6"].elements.is_empty() && table.sets["fold-out-4"].elements.is_empty());
    }

    /// Issue 17's finding 2: a port whose interface was the node's `eth0` put `eth0` in the
    /// anti-spoofing sets, and the node dropped every forwarded packet from other nodes. The
    /// agent binds only interfaces with weft's prefix that one port of the node names; a port
    /// it refuses keeps its policy by address, and the refusal is reported.
    #[test]
    fn interfaces_that_are_no_ports_or_are_shared_are_never_bound_and_are_reported() {
        let mut ports = BTreeMap::new();
        for (n, name, interface, address) in [
            (1, "uplink", "eth0", "10.9.0.1"),
            (2, "loop", "lo", "10.9.0.2"),
            (3, "twin-a", "weftshared", "10.9.0.3"),
            (4, "twin-b", "weftshared", "10.9.0.4"),
            (5, "fine", "weftfine", "10.9.0.5"),
        ] {
            let mut p = policy(name, address, &[Uuid::from_u128(7)]);
            p.interface = interface.into();
            ports.insert(Uuid::from_u128(n), p);
        }
        let group = CompiledGroup { project: "p".into(), name: "g".into(), ingress: vec![], egress: vec![] };
        let span = NodeSpan {
            ports,
            groups: std::sync::Arc::new([(Uuid::from_u128(7), std::sync::Arc::new(group))].into()),
            sets: Default::default(),
            policies: Default::default(),
        };
        let table = render(&span);
        let bound: Vec<&Element> = table.sets[IFACES].elements.iter().collect();
        assert_eq!(bound, vec![&Element::Iface("weftfine".into())]);
        let spoof: Vec<&Element> = table.sets["spoof-4"].elements.iter().collect();
        assert_eq!(spoof, vec![&Element::IfaceAddr("weftfine".into(), "10.9.0.5".parse().unwrap())]);
        // Every port's policy still holds by address.
        assert_eq!(table.sets["ingress-4"].elements.len(), 5);
        let problems = crate::datapath::problems(&span);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("port p/uplink: interface refused: \"eth0\" is not a port's interface"),
            "{problems:#?}"
        );
        assert!(problems[2].contains("interface weftshared is named by 2 ports"), "{problems:#?}");
    }

    /// Issue 17's finding 3: an address two ports claim is dispatched to neither (a drop both
    /// ways) and neither may send from it.
    #[test]
    fn a_contested_address_is_dispatched_to_a_drop_and_is_no_ports_source() {
        let mut victim = policy("victim", "10.9.0.1", &[]);
        victim.refused_addresses = std::mem::take(&mut victim.addresses);
        victim.ingress = Isolation::Open;
        let span = NodeSpan { ports: [(Uuid::from_u128(1), victim)].into(), ..NodeSpan::default() };
        let table = render(&span);
        let refused = Element::Jump("10.9.0.1".parse().unwrap(), REFUSED_CHAIN.to_string());
        assert!(
            table.sets["ingress-4"].elements.contains(&refused) && table.sets["egress-4"].elements.contains(&refused)
        );
        assert!(table.sets["spoof-4"].elements.is_empty());
        assert_eq!(table.chains[REFUSED_CHAIN].rules.len(), 1);
        assert_eq!(crate::datapath::problems(&span).len(), 1);
    }

    #[test]
    fn set_names_are_short_fixed_and_distinct() {
        let ids = [0, 1, 61, 62, 1 << 64, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX];
        let names: Vec<String> = ids.iter().flat_map(|n| [false, true].map(|v6| set_name(SetId(*n), v6))).collect();
        assert!(names.iter().all(|n| n.len() == 12 && n.starts_with('s')), "{names:?}");
        assert_eq!(names[0], "s00000000000");
        assert_eq!(&names[6][8..], "0010", "62 is 10 in base 62");
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
    }
}
