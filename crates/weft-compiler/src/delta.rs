//! What changes in a node's span from one revision to the next: the unit the controller sends
//! an agent. A set's membership change is a member delta, never the whole set again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::compiled::{AddressSet, CompiledGroup, CompiledPolicy, NodeSpan, PolicyList, PortPolicy, SetId, SetMembers};

/// Members added to and removed from one set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDelta {
    pub added_addresses: BTreeSet<IpAddr>,
    pub removed_addresses: BTreeSet<IpAddr>,
    pub added_prefixes: Vec<IpNet>,
    pub removed_prefixes: Vec<IpNet>,
    pub added_pairs: BTreeSet<(IpAddr, u16)>,
    pub removed_pairs: BTreeSet<(IpAddr, u16)>,
}

/// The changes to one node's span.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanDelta {
    pub ports_upserted: BTreeMap<Uuid, PortPolicy>,
    pub ports_removed: BTreeSet<Uuid>,
    pub groups_upserted: BTreeMap<Uuid, Arc<CompiledGroup>>,
    pub groups_removed: BTreeSet<Uuid>,
    /// Sets the node did not have.
    pub sets_defined: BTreeMap<SetId, Arc<AddressSet>>,
    /// Shared by every node the same set change goes to.
    pub sets_changed: BTreeMap<SetId, Arc<MemberDelta>>,
    pub sets_dropped: BTreeSet<SetId>,
    #[serde(default)]
    pub policies_upserted: BTreeMap<Uuid, Arc<CompiledPolicy>>,
    #[serde(default)]
    pub policies_removed: BTreeSet<Uuid>,
    /// Every port of the node whose list of tiered policies is the first of a pair, and that
    /// is not upserted, has the second instead: a policy added or reordered changes the lists
    /// of thousands of ports and nothing else of them, and they share a few lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists_replaced: Vec<(PolicyList, PolicyList)>,
}

impl SpanDelta {
    pub fn is_empty(&self) -> bool {
        self == &SpanDelta::default()
    }
}

/// A node's name, shared between the compiler and every delta addressed to it.
pub type NodeName = Arc<str>;

/// One set's member changes and every node they go to: encoded once, sent to each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSetChange {
    pub members: Arc<MemberDelta>,
    /// Sorted.
    pub nodes: Vec<NodeName>,
}

/// What one revision changes, for every node: each node's own changes, and the set member
/// changes shared by all the nodes whose span holds the set (a pod joining a set that every
/// node references is one entry here, not a thousand).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deltas {
    pub revision: i64,
    pub nodes: BTreeMap<NodeName, SpanDelta>,
    pub sets: BTreeMap<SetId, SharedSetChange>,
}

impl Deltas {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.sets.is_empty()
    }

    /// Every node that gets something, in order.
    pub fn audience(&self) -> BTreeSet<NodeName> {
        let mut out: BTreeSet<NodeName> = self.nodes.keys().cloned().collect();
        for change in self.sets.values() {
            out.extend(change.nodes.iter().cloned());
        }
        out
    }

    /// Everything one node gets, as one delta.
    pub fn for_node(&self, node: &str) -> SpanDelta {
        let mut d = self.nodes.get(node).cloned().unwrap_or_default();
        for (set, change) in &self.sets {
            if change.nodes.binary_search_by(|n| (**n).cmp(node)).is_ok() {
                d.sets_changed.insert(*set, Arc::clone(&change.members));
            }
        }
        d
    }
}

impl MemberDelta {
    pub fn is_empty(&self) -> bool {
        self == &MemberDelta::default()
    }
}

fn member_delta(old: &SetMembers, new: &SetMembers) -> Option<MemberDelta> {
    let mut d = MemberDelta::default();
    match (old, new) {
        (SetMembers::Addresses(o), SetMembers::Addresses(n)) => {
            d.added_addresses = n.difference(o).copied().collect();
            d.removed_addresses = o.difference(n).copied().collect();
        }
        (SetMembers::Prefixes(o), SetMembers::Prefixes(n)) => {
            d.added_prefixes = n.iter().filter(|p| !o.contains(p)).copied().collect();
            d.removed_prefixes = o.iter().filter(|p| !n.contains(p)).copied().collect();
        }
        (SetMembers::Pairs(o), SetMembers::Pairs(n)) => {
            d.added_pairs = n.difference(o).copied().collect();
            d.removed_pairs = o.difference(n).copied().collect();
        }
        // A set's kind follows from its definition, which its id names: they never differ.
        _ => return None,
    }
    Some(d)
}

/// The delta that turns `old` into `new`.
pub fn diff(old: &NodeSpan, new: &NodeSpan) -> SpanDelta {
    let mut d = SpanDelta::default();
    for (id, p) in &new.ports {
        if old.ports.get(id) != Some(p) {
            d.ports_upserted.insert(*id, p.clone());
        }
    }
    d.ports_removed = old.ports.keys().filter(|id| !new.ports.contains_key(id)).copied().collect();
    if !Arc::ptr_eq(&old.groups, &new.groups) {
        for (id, g) in new.groups.iter() {
            if old.groups.get(id) != Some(g) {
                d.groups_upserted.insert(*id, Arc::clone(g));
            }
        }
        d.groups_removed = old.groups.keys().filter(|id| !new.groups.contains_key(id)).copied().collect();
    }
    if !Arc::ptr_eq(&old.policies, &new.policies) {
        for (id, p) in new.policies.iter() {
            if old.policies.get(id) != Some(p) {
                d.policies_upserted.insert(*id, Arc::clone(p));
            }
        }
        d.policies_removed = old.policies.keys().filter(|id| !new.policies.contains_key(id)).copied().collect();
    }
    if !Arc::ptr_eq(&old.sets, &new.sets) {
        for (id, s) in new.sets.iter() {
            match old.sets.get(id) {
                None => {
                    d.sets_defined.insert(*id, Arc::clone(s));
                }
                Some(o) if Arc::ptr_eq(o, s) || o.members == s.members => {}
                Some(o) => match member_delta(&o.members, &s.members) {
                    Some(m) => {
                        d.sets_changed.insert(*id, Arc::new(m));
                    }
                    None => {
                        d.sets_defined.insert(*id, Arc::clone(s));
                    }
                },
            }
        }
        d.sets_dropped = old.sets.keys().filter(|id| !new.sets.contains_key(id)).copied().collect();
    }
    d
}

impl NodeSpan {
    /// Applies a delta, as an agent does.
    pub fn apply(&mut self, d: &SpanDelta) {
        if !d.lists_replaced.is_empty() {
            for (id, port) in self.ports.iter_mut() {
                if d.ports_upserted.contains_key(id) {
                    continue;
                }
                if let Some((_, to)) = d.lists_replaced.iter().find(|(from, _)| *from == port.policies) {
                    port.policies = Arc::clone(to);
                }
            }
        }
        for id in &d.ports_removed {
            self.ports.remove(id);
        }
        for (id, p) in &d.ports_upserted {
            self.ports.insert(*id, p.clone());
        }
        let groups = Arc::make_mut(&mut self.groups);
        for id in &d.groups_removed {
            groups.remove(id);
        }
        for (id, g) in &d.groups_upserted {
            groups.insert(*id, Arc::clone(g));
        }
        let policies = Arc::make_mut(&mut self.policies);
        for id in &d.policies_removed {
            policies.remove(id);
        }
        for (id, p) in &d.policies_upserted {
            policies.insert(*id, Arc::clone(p));
        }
        let sets = Arc::make_mut(&mut self.sets);
        for id in &d.sets_dropped {
            sets.remove(id);
        }
        for (id, s) in &d.sets_defined {
            sets.insert(*id, Arc::clone(s));
        }
        for (id, m) in &d.sets_changed {
            let Some(set) = sets.get_mut(id) else { continue };
            let set = Arc::make_mut(set);
            match &mut set.members {
                SetMembers::Addresses(a) => {
                    a.retain(|x| !m.removed_addresses.contains(x));
                    a.extend(m.added_addresses.iter().copied());
                }
                SetMembers::Prefixes(p) => {
                    p.retain(|x| !m.removed_prefixes.contains(x));
                    p.extend(m.added_prefixes.iter().copied());
                    p.sort();
                }
                SetMembers::Pairs(p) => {
                    p.retain(|x| !m.removed_pairs.contains(x));
                    p.extend(m.added_pairs.iter().copied());
                }
            }
        }
    }
}
