//! Between the compiler's types and the protocol's: what the controller sends (to_proto,
//! snapshot, DeltaEncoder) and what the agent reads (from_proto). A round trip gives back
//! exactly what went in (tested).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ipnet::IpNet;
use prost::Message;
use uuid::Uuid;
use weft_compiler::compiled::{L4Match, RemoteMatch, SetMembers};
use weft_compiler::{
    AddressSet, CompiledGroup, CompiledPolicy, CompiledRule, CompiledTieredRule, Deltas, Family, Isolation,
    MemberDelta, NodeSpan, PortPolicy, SetId, SpanDelta, TieredMatch,
};
use weft_model::{NamedPort, PolicyAction, Protocol, Tier};

use crate::{Encoded, v1};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl std::fmt::Display) -> ConvertError {
    ConvertError::Invalid { field, message: message.to_string() }
}

/// An address as the protocol carries one: 4 or 16 bytes.
pub fn address(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An address of 4 or 16 bytes.
pub fn parse_address(bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).map_err(|e| invalid("address", e))?)),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).map_err(|e| invalid("address", e))?)),
        n => Err(invalid("address", format!("{n} bytes; an address has 4 or 16"))),
    }
}

fn parse_uuid(field: &'static str, s: &str) -> Result<Uuid, ConvertError> {
    s.parse().map_err(|e| invalid(field, e))
}

fn parse_set(field: &'static str, s: &str) -> Result<SetId, ConvertError> {
    s.parse().map_err(|e| invalid(field, e))
}

/// A prefix as the protocol carries one.
pub fn prefix(p: &IpNet) -> v1::Prefix {
    v1::Prefix { address: address(&p.addr()), length: u32::from(p.prefix_len()) }
}

/// A prefix of 4 or 16 bytes and a length that fits them.
pub fn parse_prefix(p: &v1::Prefix) -> Result<IpNet, ConvertError> {
    let length = u8::try_from(p.length).map_err(|e| invalid("prefix", e))?;
    IpNet::new(parse_address(&p.address)?, length).map_err(|e| invalid("prefix", e))
}

fn pair(&(a, port): &(IpAddr, u16)) -> v1::AddressPort {
    v1::AddressPort { address: address(&a), port: u32::from(port) }
}

fn parse_pair(p: &v1::AddressPort) -> Result<(IpAddr, u16), ConvertError> {
    Ok((parse_address(&p.address)?, u16::try_from(p.port).map_err(|e| invalid("port", e))?))
}

fn isolation(i: &Isolation) -> v1::Isolation {
    match i {
        Isolation::Open => v1::Isolation { isolated: false, groups: vec![] },
        Isolation::Isolated(groups) => {
            v1::Isolation { isolated: true, groups: groups.iter().map(Uuid::to_string).collect() }
        }
    }
}

fn parse_isolation(i: Option<&v1::Isolation>) -> Result<Isolation, ConvertError> {
    match i {
        Some(i) if i.isolated => Ok(Isolation::Isolated(Arc::new(
            i.groups.iter().map(|g| parse_uuid("isolation.groups", g)).collect::<Result<_, _>>()?,
        ))),
        _ => Ok(Isolation::Open),
    }
}

/// The policy lists of one message being built: each distinct list (by its shared `Arc`) once
/// in the message's `policy_lists`, named by a number from 1.
#[derive(Debug, Default)]
struct Lists {
    numbers: HashMap<*const Vec<Uuid>, u32>,
}

impl Lists {
    /// `p` as the message `into` has it: its list named, the list put in the message's table
    /// the first time.
    fn port(&mut self, into: &mut v1::SpanDelta, id: &Uuid, p: &PortPolicy) -> v1::PortPolicy {
        let mut out = port(id, p);
        if !p.policies.is_empty() {
            out.policy_list = self.number(into, &p.policies);
        }
        out
    }

    /// The number of `list` in the message `into`, put in its table the first time.
    fn number(&mut self, into: &mut v1::SpanDelta, list: &Arc<Vec<Uuid>>) -> u32 {
        let next = self.numbers.len() as u32 + 1;
        *self.numbers.entry(Arc::as_ptr(list)).or_insert_with(|| {
            into.policy_lists.push(v1::PolicyList { id: next, policies: list.iter().map(Uuid::to_string).collect() });
            next
        })
    }
}

/// A port without its list of policies ([`Lists::port`] names it).
fn port(id: &Uuid, p: &PortPolicy) -> v1::PortPolicy {
    v1::PortPolicy {
        id: id.to_string(),
        project: p.project.clone(),
        name: p.name.clone(),
        addresses: p.addresses.iter().map(address).collect(),
        refused_addresses: p.refused_addresses.iter().map(address).collect(),
        interface: p.interface.clone(),
        instance: p.instance.clone().unwrap_or_default(),
        named_ports: p
            .named_ports
            .iter()
            .map(|(name, np)| {
                let protocol = u32::from(np.protocol.number().unwrap_or(0));
                (name.clone(), v1::NamedPort { protocol, port: np.port as u32 })
            })
            .collect(),
        ingress: Some(isolation(&p.ingress)),
        egress: Some(isolation(&p.egress)),
        policies: Vec::new(),
        policy_list: 0,
    }
}

/// The policy lists of a message, by the number its ports name them with: each parsed once
/// and shared by its ports.
fn parse_lists(d: &v1::SpanDelta) -> Result<HashMap<u32, Arc<Vec<Uuid>>>, ConvertError> {
    let mut lists = HashMap::new();
    for l in &d.policy_lists {
        let ids = l.policies.iter().map(|id| parse_uuid("policy_lists.policies", id)).collect::<Result<_, _>>()?;
        if lists.insert(l.id, Arc::new(ids)).is_some() {
            return Err(invalid("policy_lists.id", format!("list {} twice in the message", l.id)));
        }
    }
    Ok(lists)
}

/// The list numbered `n` in the message, for `field`.
fn listed(lists: &HashMap<u32, Arc<Vec<Uuid>>>, n: u32, field: &'static str) -> Result<Arc<Vec<Uuid>>, ConvertError> {
    lists.get(&n).cloned().ok_or_else(|| invalid(field, format!("no list {n} in the message")))
}

fn parse_port(p: &v1::PortPolicy, lists: &HashMap<u32, Arc<Vec<Uuid>>>) -> Result<(Uuid, PortPolicy), ConvertError> {
    let policies = match p.policy_list {
        0 => Arc::new(p.policies.iter().map(|id| parse_uuid("port.policies", id)).collect::<Result<_, _>>()?),
        n => listed(lists, n, "port.policy_list")?,
    };
    let named_ports: BTreeMap<String, NamedPort> = p
        .named_ports
        .iter()
        .map(|(name, np)| {
            let number = u8::try_from(np.protocol).map_err(|e| invalid("named_ports.protocol", e))?;
            let protocol = if number == 0 { Protocol::Any } else { Protocol::from_number(number) };
            Ok((name.clone(), NamedPort { protocol, port: i64::from(np.port) }))
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok((
        parse_uuid("port.id", &p.id)?,
        PortPolicy {
            project: p.project.clone(),
            name: p.name.clone(),
            addresses: p.addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?,
            refused_addresses: p.refused_addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?,
            interface: p.interface.clone(),
            instance: Some(p.instance.clone()).filter(|i| !i.is_empty()),
            named_ports: Arc::new(named_ports),
            ingress: parse_isolation(p.ingress.as_ref())?,
            egress: parse_isolation(p.egress.as_ref())?,
            policies,
        },
    ))
}

fn rule(r: &CompiledRule) -> v1::Rule {
    let mut out = rule_match(r.protocol, &r.l4, &r.remote);
    out.rule = r.rule.to_string();
    out.set_family(match r.family {
        Family::Both => v1::Family::Both,
        Family::V4 => v1::Family::V4,
        Family::V6 => v1::Family::V6,
    });
    out
}

/// What a rule matches (protocol, port, remote), in a `Rule` of every family and no rule id.
fn rule_match(protocol: Option<u8>, l4: &L4Match, remote: &RemoteMatch) -> v1::Rule {
    use v1::rule::{L4, Remote};
    let l4 = match l4 {
        L4Match::All => L4::All(v1::Empty {}),
        L4Match::Ranges(ranges) => L4::Ranges(v1::PortRanges {
            ranges: ranges
                .iter()
                .map(|(from, to)| v1::PortRange { from: u32::from(*from), to: u32::from(*to) })
                .collect(),
        }),
        L4Match::Named(name) => L4::Named(name.clone()),
        L4Match::Icmp { icmp_type, code } => {
            L4::Icmp(v1::Icmp { r#type: u32::from(*icmp_type), code: code.map(u32::from) })
        }
    };
    let remote = match remote {
        RemoteMatch::Any => Remote::Any(v1::Empty {}),
        RemoteMatch::Set(s) => Remote::Set(s.to_string()),
        RemoteMatch::Pairs(s) => Remote::Pairs(s.to_string()),
    };
    v1::Rule { rule: String::new(), family: 0, protocol: protocol.map(u32::from), l4: Some(l4), remote: Some(remote) }
}

fn parse_rule(r: &v1::Rule) -> Result<CompiledRule, ConvertError> {
    let (protocol, l4, remote) = parse_rule_match(r)?;
    Ok(CompiledRule {
        rule: parse_uuid("rule.rule", &r.rule)?,
        family: match r.family() {
            v1::Family::Both => Family::Both,
            v1::Family::V4 => Family::V4,
            v1::Family::V6 => Family::V6,
        },
        protocol,
        l4,
        remote,
    })
}

fn parse_rule_match(r: &v1::Rule) -> Result<(Option<u8>, L4Match, RemoteMatch), ConvertError> {
    use v1::rule::{L4, Remote};
    let narrow = |field, n: u32| u8::try_from(n).map_err(|e| invalid(field, e));
    let port = |n: u32| u16::try_from(n).map_err(|e| invalid("rule.ranges", e));
    let l4 = match r.l4.as_ref().ok_or_else(|| invalid("rule.l4", "missing"))? {
        L4::All(_) => L4Match::All,
        L4::Ranges(ranges) => L4Match::Ranges(
            ranges.ranges.iter().map(|r| Ok((port(r.from)?, port(r.to)?))).collect::<Result<_, ConvertError>>()?,
        ),
        L4::Named(name) => L4Match::Named(name.clone()),
        L4::Icmp(icmp) => L4Match::Icmp {
            icmp_type: narrow("rule.icmp.type", icmp.r#type)?,
            code: icmp.code.map(|c| narrow("rule.icmp.code", c)).transpose()?,
        },
    };
    let remote = match r.remote.as_ref().ok_or_else(|| invalid("rule.remote", "missing"))? {
        Remote::Any(_) => RemoteMatch::Any,
        Remote::Set(s) => RemoteMatch::Set(parse_set("rule.remote.set", s)?),
        Remote::Pairs(s) => RemoteMatch::Pairs(parse_set("rule.remote.pairs", s)?),
    };
    Ok((r.protocol.map(|p| narrow("rule.protocol", p)).transpose()?, l4, remote))
}

fn policy(id: &Uuid, p: &CompiledPolicy) -> v1::Policy {
    let rules = |rules: &[CompiledTieredRule]| {
        rules
            .iter()
            .map(|r| v1::TieredRule {
                name: r.name.clone(),
                action: encode_action(r.action),
                matches: r.matches.iter().map(|m| rule_match(m.protocol, &m.l4, &m.remote)).collect(),
            })
            .collect()
    };
    v1::Policy {
        id: id.to_string(),
        name: p.name.clone(),
        tier: encode_tier(p.tier),
        priority: p.priority,
        ingress: rules(&p.ingress),
        egress: rules(&p.egress),
    }
}

/// A tier as the protocol's enum value.
pub fn encode_tier(tier: Tier) -> i32 {
    match tier {
        Tier::Admin => v1::PolicyTier::Admin,
        Tier::Baseline => v1::PolicyTier::Baseline,
    }
    .into()
}

/// The tier of an enum value; None for one this side does not know.
pub fn parse_tier(value: i32) -> Option<Tier> {
    match v1::PolicyTier::try_from(value).ok()? {
        v1::PolicyTier::Admin => Some(Tier::Admin),
        v1::PolicyTier::Baseline => Some(Tier::Baseline),
    }
}

/// An action as the protocol's enum value.
pub fn encode_action(action: PolicyAction) -> i32 {
    match action {
        PolicyAction::Accept => v1::PolicyAction::Accept,
        PolicyAction::Deny => v1::PolicyAction::Deny,
        PolicyAction::Pass => v1::PolicyAction::Pass,
    }
    .into()
}

/// The action of an enum value; None for one this side does not know.
pub fn parse_action(value: i32) -> Option<PolicyAction> {
    match v1::PolicyAction::try_from(value).ok()? {
        v1::PolicyAction::Accept => Some(PolicyAction::Accept),
        v1::PolicyAction::Deny => Some(PolicyAction::Deny),
        v1::PolicyAction::Pass => Some(PolicyAction::Pass),
    }
}

fn parse_policy(p: &v1::Policy) -> Result<(Uuid, CompiledPolicy), ConvertError> {
    let rules = |rules: &[v1::TieredRule]| -> Result<Vec<CompiledTieredRule>, ConvertError> {
        rules
            .iter()
            .map(|r| {
                let action = parse_action(r.action)
                    .ok_or_else(|| invalid("policy.rule.action", format!("unknown action {}", r.action)))?;
                let matches = r
                    .matches
                    .iter()
                    .map(|m| parse_rule_match(m).map(|(protocol, l4, remote)| TieredMatch { protocol, l4, remote }))
                    .collect::<Result<_, _>>()?;
                Ok(CompiledTieredRule { name: r.name.clone(), action, matches })
            })
            .collect()
    };
    let tier = parse_tier(p.tier).ok_or_else(|| invalid("policy.tier", format!("unknown tier {}", p.tier)))?;
    Ok((
        parse_uuid("policy.id", &p.id)?,
        CompiledPolicy {
            name: p.name.clone(),
            tier,
            priority: p.priority,
            ingress: rules(&p.ingress)?,
            egress: rules(&p.egress)?,
        },
    ))
}

fn group(id: &Uuid, g: &CompiledGroup) -> v1::Group {
    v1::Group {
        id: id.to_string(),
        project: g.project.clone(),
        name: g.name.clone(),
        ingress: g.ingress.iter().map(rule).collect(),
        egress: g.egress.iter().map(rule).collect(),
    }
}

fn parse_group(g: &v1::Group) -> Result<(Uuid, CompiledGroup), ConvertError> {
    Ok((
        parse_uuid("group.id", &g.id)?,
        CompiledGroup {
            project: g.project.clone(),
            name: g.name.clone(),
            ingress: g.ingress.iter().map(parse_rule).collect::<Result<_, _>>()?,
            egress: g.egress.iter().map(parse_rule).collect::<Result<_, _>>()?,
        },
    ))
}

fn members(m: &SetMembers) -> v1::address_set::Members {
    use v1::address_set::Members;
    match m {
        SetMembers::Addresses(a) => Members::Addresses(v1::Addresses { addresses: a.iter().map(address).collect() }),
        SetMembers::Prefixes(p) => Members::Prefixes(v1::Prefixes { prefixes: p.iter().map(prefix).collect() }),
        SetMembers::Pairs(p) => Members::Pairs(v1::Pairs { pairs: p.iter().map(pair).collect() }),
    }
}

fn set(id: &SetId, s: &AddressSet) -> v1::AddressSet {
    v1::AddressSet {
        id: id.to_string(),
        definition: serde_json::to_string(&s.definition).unwrap_or_default(),
        members: Some(members(&s.members)),
    }
}

fn parse_set_definition(s: &v1::AddressSet) -> Result<(SetId, AddressSet), ConvertError> {
    use v1::address_set::Members;
    let members = match s.members.as_ref().ok_or_else(|| invalid("set.members", "missing"))? {
        Members::Addresses(a) => {
            SetMembers::Addresses(a.addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?)
        }
        Members::Prefixes(p) => SetMembers::Prefixes(p.prefixes.iter().map(parse_prefix).collect::<Result<_, _>>()?),
        Members::Pairs(p) => SetMembers::Pairs(p.pairs.iter().map(parse_pair).collect::<Result<_, _>>()?),
    };
    let definition = serde_json::from_str(&s.definition).map_err(|e| invalid("set.definition", e))?;
    Ok((parse_set("set.id", &s.id)?, AddressSet { definition, members }))
}

fn set_change(id: &SetId, m: &MemberDelta) -> v1::SetChange {
    v1::SetChange {
        id: id.to_string(),
        added_addresses: m.added_addresses.iter().map(address).collect(),
        removed_addresses: m.removed_addresses.iter().map(address).collect(),
        added_prefixes: m.added_prefixes.iter().map(prefix).collect(),
        removed_prefixes: m.removed_prefixes.iter().map(prefix).collect(),
        added_pairs: m.added_pairs.iter().map(pair).collect(),
        removed_pairs: m.removed_pairs.iter().map(pair).collect(),
    }
}

fn parse_set_change(c: &v1::SetChange) -> Result<(SetId, MemberDelta), ConvertError> {
    let addresses = |list: &[Vec<u8>]| list.iter().map(|a| parse_address(a)).collect::<Result<BTreeSet<_>, _>>();
    let prefixes = |list: &[v1::Prefix]| list.iter().map(parse_prefix).collect::<Result<Vec<_>, _>>();
    let pairs = |list: &[v1::AddressPort]| list.iter().map(parse_pair).collect::<Result<BTreeSet<_>, _>>();
    Ok((
        parse_set("set_change.id", &c.id)?,
        MemberDelta {
            added_addresses: addresses(&c.added_addresses)?,
            removed_addresses: addresses(&c.removed_addresses)?,
            added_prefixes: prefixes(&c.added_prefixes)?,
            removed_prefixes: prefixes(&c.removed_prefixes)?,
            added_pairs: pairs(&c.added_pairs)?,
            removed_pairs: pairs(&c.removed_pairs)?,
        },
    ))
}

/// A span delta as the protocol carries it.
pub fn to_proto(d: &SpanDelta) -> v1::SpanDelta {
    let mut out = v1::SpanDelta {
        ports_removed: d.ports_removed.iter().map(Uuid::to_string).collect(),
        groups_upserted: d.groups_upserted.iter().map(|(id, g)| group(id, g)).collect(),
        groups_removed: d.groups_removed.iter().map(Uuid::to_string).collect(),
        sets_defined: d.sets_defined.iter().map(|(id, s)| set(id, s)).collect(),
        sets_changed: d.sets_changed.iter().map(|(id, m)| set_change(id, m)).collect(),
        sets_dropped: d.sets_dropped.iter().map(SetId::to_string).collect(),
        policies_upserted: d.policies_upserted.iter().map(|(id, p)| policy(id, p)).collect(),
        policies_removed: d.policies_removed.iter().map(Uuid::to_string).collect(),
        ..Default::default()
    };
    let mut lists = Lists::default();
    for (id, p) in &d.ports_upserted {
        let port = lists.port(&mut out, id, p);
        out.ports_upserted.push(port);
    }
    for (from, to) in &d.lists_replaced {
        let replacement = v1::ListReplacement { from: lists.number(&mut out, from), to: lists.number(&mut out, to) };
        out.lists_replaced.push(replacement);
    }
    out
}

/// A span delta read from the protocol. A set changed twice in one delta (a snapshot split
/// across messages adds members in parts) has its changes merged.
pub fn from_proto(d: &v1::SpanDelta) -> Result<SpanDelta, ConvertError> {
    let mut out = SpanDelta::default();
    let lists = parse_lists(d)?;
    for p in &d.ports_upserted {
        let (id, policy) = parse_port(p, &lists)?;
        out.ports_upserted.insert(id, policy);
    }
    for id in &d.ports_removed {
        out.ports_removed.insert(parse_uuid("ports_removed", id)?);
    }
    for g in &d.groups_upserted {
        let (id, group) = parse_group(g)?;
        out.groups_upserted.insert(id, Arc::new(group));
    }
    for id in &d.groups_removed {
        out.groups_removed.insert(parse_uuid("groups_removed", id)?);
    }
    for s in &d.sets_defined {
        let (id, set) = parse_set_definition(s)?;
        out.sets_defined.insert(id, Arc::new(set));
    }
    for c in &d.sets_changed {
        let (id, m) = parse_set_change(c)?;
        match out.sets_changed.get_mut(&id) {
            Some(existing) => {
                let e = Arc::make_mut(existing);
                e.added_addresses.extend(m.added_addresses);
                e.removed_addresses.extend(m.removed_addresses);
                e.added_prefixes.extend(m.added_prefixes);
                e.removed_prefixes.extend(m.removed_prefixes);
                e.added_pairs.extend(m.added_pairs);
                e.removed_pairs.extend(m.removed_pairs);
            }
            None => {
                out.sets_changed.insert(id, Arc::new(m));
            }
        }
    }
    for id in &d.sets_dropped {
        out.sets_dropped.insert(parse_set("sets_dropped", id)?);
    }
    for p in &d.policies_upserted {
        let (id, policy) = parse_policy(p)?;
        out.policies_upserted.insert(id, Arc::new(policy));
    }
    for id in &d.policies_removed {
        out.policies_removed.insert(parse_uuid("policies_removed", id)?);
    }
    for r in &d.lists_replaced {
        out.lists_replaced.push((listed(&lists, r.from, "lists_replaced")?, listed(&lists, r.to, "lists_replaced")?));
    }
    Ok(out)
}

/// A node's whole span as a snapshot: messages of at most about `max_bytes` each (a set
/// larger than that is defined with its first members and completed by member additions),
/// the first marked `snapshot`, the last marked `last`. What [`SnapshotEncoder`] sends,
/// decoded: for fakes of the controller and tests.
pub fn snapshot(revision: i64, span: &NodeSpan, max_bytes: usize) -> Vec<v1::ControllerMessage> {
    SnapshotEncoder::default()
        .encode(revision, span, max_bytes)
        .iter()
        .map(|m| v1::ControllerMessage::decode(m.encode_to_vec().as_slice()).expect("an encoding of ours decodes"))
        .collect()
}

/// The span's ports and tiered policies (what no other node shares) in messages of about
/// `max_bytes`, the first marked `snapshot`, none marked `last`: [`SnapshotEncoder`] adds the
/// shared groups and sets, and the end.
fn own_messages(revision: i64, span: &NodeSpan, max_bytes: usize, mut emit: impl FnMut(v1::ControllerMessage)) {
    let mut first = true;
    let mut current = v1::SpanDelta::default();
    // Each message its own table of lists.
    let mut lists = Lists::default();
    let mut flush = |current: &mut v1::SpanDelta, lists: &mut Lists| {
        *lists = Lists::default();
        let delta = std::mem::take(current);
        emit(v1::ControllerMessage { revision, snapshot: first, last: false, delta: Some(delta) });
        first = false;
    };
    let full = |current: &v1::SpanDelta| current.encoded_len() >= max_bytes;
    for (id, p) in &span.ports {
        let p = lists.port(&mut current, id, p);
        current.ports_upserted.push(p);
        if full(&current) {
            flush(&mut current, &mut lists);
        }
    }
    for (id, p) in span.policies.iter() {
        current.policies_upserted.push(policy(id, p));
        if full(&current) {
            flush(&mut current, &mut lists);
        }
    }
    // The last, possibly empty: the shared pieces follow in it.
    flush(&mut current, &mut lists);
}

/// Encodes snapshots with each address set's and each group's encoding shared: a set that a
/// thousand nodes hold (the pods a platform policy admits, in every namespace's rules) is
/// encoded once for all the snapshots that carry it at the same time, instead of once per
/// snapshot, and so is a group that the nodes of its namespace's pods hold. A set larger than
/// a message goes in parts, each part a piece. Measured with `weft bench memory`: the
/// snapshots of 1,000 nodes encoded at once hold 68 MiB this way, 121 MiB one by one.
///
/// A piece is kept only while a message in flight holds it (the maps keep weak references),
/// and only for the value it was encoded from: a set or group the compiler changed is a new
/// allocation (`Arc::make_mut` moves a value that weak references point at), so it is encoded
/// again.
#[derive(Debug, Default)]
pub struct SnapshotEncoder {
    /// A set's pieces by (set, part): a set larger than a message goes in parts.
    sets: std::sync::Mutex<Pieces<(SetId, usize), AddressSet>>,
    groups: std::sync::Mutex<Pieces<Uuid, CompiledGroup>>,
}

/// Encoded pieces by what they were encoded from: (the value, its encoding), both weak.
type Pieces<K, V> = HashMap<K, (std::sync::Weak<V>, std::sync::Weak<Vec<u8>>)>;

/// An encoded piece as `Bytes` whose owner the encoder can see die.
struct Piece(Arc<Vec<u8>>);

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl SnapshotEncoder {
    /// A node's span as a snapshot (as [`snapshot`] has it: messages of about `max_bytes`,
    /// the first marked `snapshot`, the last `last`), encoded: each message its own part
    /// followed by shared pieces, one per set, which protobuf merges into the message.
    pub fn encode(&self, revision: i64, span: &NodeSpan, max_bytes: usize) -> Vec<Encoded> {
        let mut messages: Vec<Encoded> = Vec::new();
        own_messages(revision, span, max_bytes, |m| messages.push(Encoded::of(&m)));
        let header = |last: bool| {
            Bytes::from(v1::ControllerMessage { revision, snapshot: false, last, delta: None }.encode_to_vec())
        };
        let mut current = messages.pop().unwrap_or_else(|| Encoded(vec![header(false)]));
        let groups = span.groups.iter().map(|(id, g)| {
            piece(&self.groups, id, g, || v1::SpanDelta { groups_upserted: vec![group(id, g)], ..Default::default() })
        });
        // A set in parts of about `max_bytes` (an IPv6 pair is 20 bytes): the first defines it
        // with its first members, the others add theirs.
        let per_part = (max_bytes / 20).max(1);
        let sets = span.sets.iter().flat_map(|(id, s)| {
            (0..member_count(&s.members).div_ceil(per_part).max(1))
                .map(move |part| piece(&self.sets, &(*id, part), s, || set_part(id, s, part, per_part)))
        });
        for piece in groups.chain(sets) {
            if current.encoded_len() + piece.len() > max_bytes && current.0.len() > 1 {
                messages.push(std::mem::replace(&mut current, Encoded(vec![header(false)])));
            }
            current.0.push(piece);
        }
        // The last message says so: `last` is a scalar, and the last encoding of it wins.
        current.0.push(header(true));
        messages.push(current);
        messages
    }
}

/// Part `part` of set `s` in parts of `per_part` members, as a snapshot carries it.
fn set_part(id: &SetId, s: &AddressSet, part: usize, per_part: usize) -> v1::SpanDelta {
    let members = member_part(&s.members, part * per_part, per_part);
    if part == 0 {
        let first = AddressSet { definition: s.definition.clone(), members };
        return v1::SpanDelta { sets_defined: vec![set(id, &first)], ..Default::default() };
    }
    let added = match members {
        SetMembers::Addresses(a) => MemberDelta { added_addresses: a, ..MemberDelta::default() },
        SetMembers::Prefixes(p) => MemberDelta { added_prefixes: p, ..MemberDelta::default() },
        SetMembers::Pairs(p) => MemberDelta { added_pairs: p, ..MemberDelta::default() },
    };
    v1::SpanDelta { sets_changed: vec![set_change(id, &added)], ..Default::default() }
}

/// `count` members from the `skip`th on, in the set's order.
fn member_part(members: &SetMembers, skip: usize, count: usize) -> SetMembers {
    match members {
        SetMembers::Addresses(a) => SetMembers::Addresses(a.iter().skip(skip).take(count).copied().collect()),
        SetMembers::Prefixes(p) => SetMembers::Prefixes(p.iter().skip(skip).take(count).copied().collect()),
        SetMembers::Pairs(p) => SetMembers::Pairs(p.iter().skip(skip).take(count).copied().collect()),
    }
}

/// The shared encoding of `value` (a message whose delta is `delta()`), made when no message
/// in flight holds one.
fn piece<K: std::hash::Hash + Eq + Copy, V>(
    pieces: &std::sync::Mutex<Pieces<K, V>>,
    key: &K,
    value: &Arc<V>,
    delta: impl FnOnce() -> v1::SpanDelta,
) -> Bytes {
    let mut pieces = pieces.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((of, bytes)) = pieces.get(key)
        && of.upgrade().is_some_and(|v| Arc::ptr_eq(&v, value))
        && let Some(bytes) = bytes.upgrade()
    {
        return Bytes::from_owner(Piece(bytes));
    }
    let encoded = Arc::new(v1::ControllerMessage { delta: Some(delta()), ..Default::default() }.encode_to_vec());
    pieces.insert(*key, (Arc::downgrade(value), Arc::downgrade(&encoded)));
    if pieces.len() > 1024 && pieces.len().is_power_of_two() {
        pieces.retain(|_, (_, bytes)| bytes.strong_count() > 0);
    }
    Bytes::from_owner(Piece(encoded))
}

fn member_count(members: &SetMembers) -> usize {
    match members {
        SetMembers::Addresses(a) => a.len(),
        SetMembers::Prefixes(p) => p.len(),
        SetMembers::Pairs(p) => p.len(),
    }
}

/// One revision's deltas, encoded once: each node's own part, and each shared set change as
/// one piece that every node holding the set gets a reference to.
#[derive(Debug, Default)]
pub struct DeltaEncoder {
    messages: BTreeMap<Arc<str>, Encoded>,
}

impl DeltaEncoder {
    pub fn new(deltas: &Deltas) -> Self {
        let mut messages: BTreeMap<Arc<str>, Encoded> = BTreeMap::new();
        let header = |delta: Option<v1::SpanDelta>| {
            Bytes::from(
                v1::ControllerMessage { revision: deltas.revision, snapshot: false, last: true, delta }.encode_to_vec(),
            )
        };
        for (node, d) in &deltas.nodes {
            messages.insert(Arc::clone(node), Encoded(vec![header(Some(to_proto(d)))]));
        }
        for (id, change) in &deltas.sets {
            let piece = Bytes::from(
                v1::ControllerMessage {
                    delta: Some(v1::SpanDelta {
                        sets_changed: vec![set_change(id, &change.members)],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            for node in &change.nodes {
                messages.entry(Arc::clone(node)).or_insert_with(|| Encoded(vec![header(None)])).0.push(piece.clone());
            }
        }
        DeltaEncoder { messages }
    }

    /// The nodes that get something, and what.
    pub fn messages(&self) -> impl Iterator<Item = (&Arc<str>, &Encoded)> {
        self.messages.iter()
    }

    pub fn for_node(&self, node: &str) -> Option<&Encoded> {
        self.messages.get(node)
    }
}
