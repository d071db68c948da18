//! A span delta as the commands that change only what it touches: the touched groups, ports
//! and sets are rendered on both sides and diffed, and a set's member change is an element add
//! or delete, straight from the delta. The property tests check it against the whole-table
//! diff ([`super::render`] of both spans).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use uuid::Uuid;
use weft_compiler::compiled::{RemoteMatch, SetMembers};
use weft_compiler::{MemberDelta, NodeSpan, SetId, SpanDelta};

use super::{
    GroupRules, V4_V6, group_chain, group_users, port_groups, render_group, render_policy, render_port,
    render_port_globals, render_set, render_tier_lists, set_kind, set_name, set_shape, skeleton,
};
use crate::nft::ruleset::{Chain, Command, Element, Ruleset};

/// What a delta touches, by name.
#[derive(Default)]
struct Touched {
    groups: BTreeSet<Uuid>,
    policies: BTreeSet<Uuid>,
    ports: BTreeSet<Uuid>,
    sets: BTreeSet<SetId>,
    globals: bool,
}

/// The objects `touched` names, as `span` has them (absent ones are simply not there).
fn render_touched(span: &NodeSpan, touched: &Touched) -> Ruleset {
    let mut out = Ruleset::default();
    for id in &touched.sets {
        if let Some(set) = span.sets.get(id) {
            render_set(&mut out, *id, set);
        }
    }
    // The rules of the touched groups, and of every group a touched port's chain may hold.
    let mut needed = touched.groups.clone();
    for id in &touched.ports {
        if let Some(port) = span.ports.get(id) {
            needed.extend(port_groups(port));
        }
    }
    // Who uses each group decides where its rules go; only a change of groups or ports asks.
    let users = if needed.is_empty() { BTreeMap::new() } else { group_users(span) };
    let mut rules = GroupRules::new();
    for id in &needed {
        if let Some(group) = span.groups.get(id) {
            render_group(&mut rules, *id, group, &span.sets, &users);
        }
    }
    for ((id, dir), lines) in &rules {
        if touched.groups.contains(id) && !lines.in_place {
            out.chains.insert(group_chain(*id, *dir), Chain { hook: None, rules: lines.rules.clone() });
        }
    }
    for id in &touched.policies {
        if let Some(policy) = span.policies.get(id) {
            render_policy(&mut out, *id, policy, &span.sets);
        }
    }
    for id in &touched.ports {
        if let Some(port) = span.ports.get(id) {
            render_port(&mut out, *id, port, &rules, &span.policies);
        }
    }
    if touched.globals {
        let mut globals = Ruleset::default();
        skeleton(&mut globals);
        render_port_globals(&mut globals, span);
        // Tier-list chains are shared by ports: all of them, on both sides, so that one a
        // touched port stops using is deleted only when no port uses it any more.
        render_tier_lists(&mut out, span);
        // The folded sets hold the touched ports' elements only (both sides of the diff do).
        for (name, set) in globals.sets {
            out.sets.entry(name).or_insert(set);
        }
    }
    out
}

/// The commands that turn the table of `old` into the table of `new`, given `delta` (which
/// turns `old` into `new`). A set's member change is an element add/delete; only the chains,
/// sets and maps the delta touches are rendered.
pub fn delta_commands(old: &NodeSpan, new: &NodeSpan, delta: &SpanDelta) -> Vec<Command> {
    let mut touched = Touched::default();
    touched.groups.extend(delta.groups_upserted.keys().chain(&delta.groups_removed));
    touched.policies.extend(delta.policies_upserted.keys().chain(&delta.policies_removed));
    touched.ports.extend(delta.ports_upserted.keys().chain(&delta.ports_removed));
    if !delta.lists_replaced.is_empty() {
        let replaced = |p: &weft_compiler::PortPolicy| delta.lists_replaced.iter().any(|(from, _)| *from == p.policies);
        touched.ports.extend(old.ports.iter().filter(|(_, p)| replaced(p)).map(|(id, _)| *id));
    }
    touched.sets.extend(delta.sets_defined.keys().chain(&delta.sets_dropped));
    // Rules follow their sets' shapes (named per family, or inlined): a set arriving, leaving,
    // or gaining its first (losing its last) member of a family re-renders the rules using it.
    let shape = |span: &NodeSpan, id: &SetId| span.sets.get(id).map(|s| set_shape(s));
    let reshaped: BTreeSet<SetId> = delta
        .sets_changed
        .keys()
        .filter(|id| shape(old, id) != shape(new, id))
        .chain(delta.sets_defined.keys())
        .chain(&delta.sets_dropped)
        .copied()
        .collect();
    if !reshaped.is_empty() {
        touched.sets.extend(&reshaped);
        for (id, group) in old.groups.iter().chain(new.groups.iter()) {
            let uses = group.ingress.iter().chain(&group.egress).any(|r| match r.remote {
                RemoteMatch::Set(s) | RemoteMatch::Pairs(s) => reshaped.contains(&s),
                RemoteMatch::Any => false,
            });
            if uses {
                touched.groups.insert(*id);
            }
        }
        for (id, policy) in old.policies.iter().chain(new.policies.iter()) {
            let uses = policy.ingress.iter().chain(&policy.egress).flat_map(|r| &r.matches).any(|m| match m.remote {
                RemoteMatch::Set(s) | RemoteMatch::Pairs(s) => reshaped.contains(&s),
                RemoteMatch::Any => false,
            });
            if uses {
                touched.policies.insert(*id);
            }
        }
    }
    // A port's chain jumps to its policies' chains, and how depends on each policy's tier and
    // on whether it has rules each way: every port of a touched policy is touched.
    if !touched.policies.is_empty() {
        for span in [old, new] {
            for (id, port) in span.ports.iter() {
                if port.policies.iter().any(|p| touched.policies.contains(p)) {
                    touched.ports.insert(*id);
                }
            }
        }
    }
    // A port's chain holds its groups' rules or jumps to their chains, and which one depends
    // on how many local ports each group has: the groups of a port that changed are touched,
    // and so is every port of a touched group.
    for id in &touched.ports {
        for span in [old, new] {
            if let Some(port) = span.ports.get(id) {
                touched.groups.extend(port_groups(port));
            }
        }
    }
    if !touched.groups.is_empty() {
        for span in [old, new] {
            for (id, port) in span.ports.iter() {
                if port_groups(port).any(|g| touched.groups.contains(&g)) {
                    touched.ports.insert(*id);
                }
            }
        }
    }
    touched.globals = !touched.ports.is_empty() || !touched.groups.is_empty() || !touched.policies.is_empty();
    let before = render_touched(old, &touched);
    let after = render_touched(new, &touched);
    let mut commands = before.diff(&after);
    // Member changes of sets both sides hold, straight from the delta.
    let mut members = Vec::new();
    for (id, change) in &delta.sets_changed {
        if touched.sets.contains(id) {
            continue;
        }
        let Some(set) = new.sets.get(id) else { continue };
        member_commands(*id, &set.members, change, &mut members);
    }
    commands.splice(1..1, members);
    commands
}

fn member_commands(id: SetId, members: &SetMembers, change: &MemberDelta, out: &mut Vec<Command>) {
    for v6 in V4_V6 {
        let kind = set_kind(members, v6);
        let removed = elements(&change.removed_addresses, &change.removed_prefixes, &change.removed_pairs, v6);
        let added = elements(&change.added_addresses, &change.added_prefixes, &change.added_pairs, v6);
        let name = set_name(id, v6);
        if !removed.is_empty() {
            out.push(Command::DeleteElements { name: name.clone(), kind, elements: removed });
        }
        if !added.is_empty() {
            out.push(Command::AddElements { name, kind, elements: added });
        }
    }
}

/// One side of a member change (added or removed), as the elements of one family's nft set.
fn elements(
    addresses: &BTreeSet<IpAddr>,
    prefixes: &[ipnet::IpNet],
    pairs: &BTreeSet<(IpAddr, u16)>,
    v6: bool,
) -> Vec<Element> {
    addresses
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| Element::Addr(*a))
        .chain(prefixes.iter().filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6).map(|p| Element::Prefix(*p)))
        .chain(pairs.iter().filter(|(a, _)| a.is_ipv6() == v6).map(|(a, p)| Element::AddrPort(*a, *p)))
        .collect()
}
