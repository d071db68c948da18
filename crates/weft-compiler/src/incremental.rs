//! The compiler as the controller runs it: changes in, per-node span deltas out, each change
//! costing what it touches rather than the size of the cluster.
//!
//! State, all derived from the `Cluster` and kept up to date change by change:
//! - **classes**: ports of one project with the same labels and explicit groups share their
//!   applied groups and isolation; a class knows its ports and on which nodes they are.
//! - **groups**: each group compiled once, with the address sets its rules name and the nodes
//!   whose span holds it.
//! - **sets**: each set's members (with a count for addresses two ports share) and the nodes
//!   that reference it, indexed by what selects ports into it (a group's members, a project, a
//!   project selector, everything), so a port change visits only the sets that can hold it.
//! - **nodes**: each node's port policies and how many of its classes and groups reference
//!   each group and set; a count crossing zero is a group or set entering or leaving the span.
//!
//! While a batch of changes is applied, the first touch of anything a node has records what it
//! was; at the end each node's delta is the difference between that and now, and each set's
//! member changes are netted, so an address removed and added back sends nothing. Everything
//! that reaches the output is in BTreeMaps: the same input gives the same bytes.
//!
//! `compile()` (from scratch) stays as the definition this must equal; property tests check it
//! after every batch.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;
use weft_model::{Direction, LabelSelector, Labels, NamedPort, ObjectRef, Project, SecurityGroup};

use crate::cidr;
use crate::cluster::{Change, Cluster, Dangling, PolicyLists, PortRecord};
use crate::compile::{Compiled, compile_group, compile_policy, isolation};
use crate::compiled::{
    AddressSet, CompiledGroup, CompiledPolicy, Isolation, NodeSpan, PortPolicy, Selection, SetDefinition, SetId,
    SetMembers,
};
use crate::delta::{Deltas, MemberDelta, NodeName, SharedSetChange, SpanDelta};
use crate::eval::Packet;
use crate::explain::{Endpoint, Explanation};
use crate::fast::{FastMap, FastSet, hash_of};

type ClassId = usize;
type NodeId = usize;

/// The node id of ports bound to no node: compiled (for explain), sent nowhere.
const UNPLACED: NodeId = 0;

/// A (project, name) group reference, resolved against the referring object's project.
type GroupKey = (String, String);

/// Ports with the same applied groups.
#[derive(Debug)]
struct Class {
    /// Shared with its ports' records (interned by the cluster).
    project: Arc<str>,
    labels: Arc<Labels>,
    explicit: Option<Box<[String]>>,
    hash: u64,
    applied: BTreeSet<Uuid>,
    ingress: Isolation,
    egress: Isolation,
    /// The tiered policies that select its ports, in the order they decide.
    policies: Arc<Vec<Uuid>>,
    ports: FastMap<Uuid, Placed>,
    /// How many of its ports each node has.
    nodes: FastMap<NodeId, u32>,
}

impl Class {
    /// The groups whose rules its ports are subject to (either direction), sorted.
    fn isolating(&self) -> BTreeSet<Uuid> {
        isolating_groups(&self.ingress, &self.egress)
    }
}

fn isolating_groups(ingress: &Isolation, egress: &Isolation) -> BTreeSet<Uuid> {
    let mut out = BTreeSet::new();
    for i in [ingress, egress] {
        if let Isolation::Isolated(groups) = i {
            out.extend(groups.iter().copied());
        }
    }
    out
}

/// What the sets need of a port, kept with its class so that filling a set of many ports
/// reads no other map.
#[derive(Debug)]
struct Placed {
    node: NodeId,
    ips: Box<[IpAddr]>,
    named_ports: Arc<BTreeMap<String, NamedPort>>,
}

#[derive(Debug)]
struct GroupState {
    compiled: Arc<CompiledGroup>,
    sets: Vec<SetId>,
    /// The groups its rules name, whose appearance or rename changes what it compiles to.
    refs: Vec<GroupKey>,
    dangling: Vec<Dangling>,
    /// The nodes whose span holds it.
    nodes: FastSet<NodeId>,
}

/// A tiered policy compiled, with the sets its rules name and the nodes whose span holds it.
#[derive(Debug)]
struct PolicyState {
    compiled: Arc<CompiledPolicy>,
    sets: Vec<SetId>,
    nodes: FastSet<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Member {
    Address(IpAddr),
    Pair(IpAddr, u16),
}

#[derive(Debug)]
struct SetState {
    set: Arc<AddressSet>,
    /// Members more than one port contributes, and how many more.
    extra: FastMap<Member, u32>,
    /// How many groups and tiered policies name it.
    groups: u32,
    /// How many of each node's groups name it.
    nodes: FastMap<NodeId, u32>,
}

/// A project selector some set uses, and the projects it matches.
#[derive(Debug, Default)]
struct ProjectSelector {
    projects: BTreeSet<String>,
    sets: BTreeSet<SetId>,
}

#[derive(Debug, Default)]
struct NodeState {
    name: Option<Arc<str>>,
    ports: BTreeMap<Uuid, PortPolicy>,
    /// How many of the node's classes isolate with each group.
    groups: BTreeMap<Uuid, u32>,
    /// How many of the node's groups and tiered policies name each set.
    sets: BTreeMap<SetId, u32>,
    /// How many of the node's classes each tiered policy selects.
    policies: BTreeMap<Uuid, u32>,
}

/// What a node had, for everything touched during one batch, as it was before the batch.
#[derive(Debug, Default)]
struct Touched {
    ports: BTreeMap<Uuid, Option<PortPolicy>>,
    groups: BTreeMap<Uuid, Option<Arc<CompiledGroup>>>,
    /// Whether the node had the set.
    sets: BTreeMap<SetId, bool>,
    policies: BTreeMap<Uuid, Option<Arc<CompiledPolicy>>>,
}

#[derive(Debug)]
pub struct Compiler {
    cluster: Cluster,
    classes: Vec<Option<Class>>,
    free_classes: Vec<ClassId>,
    class_index: FastMap<u64, Vec<ClassId>>,
    class_of_port: FastMap<Uuid, ClassId>,
    classes_by_project: FastMap<String, BTreeSet<ClassId>>,
    classes_by_ref: FastMap<GroupKey, BTreeSet<ClassId>>,
    group_classes: FastMap<Uuid, BTreeSet<ClassId>>,
    groups: FastMap<Uuid, GroupState>,
    rule_refs: FastMap<GroupKey, BTreeSet<Uuid>>,
    policies: FastMap<Uuid, PolicyState>,
    /// The classes each tiered policy selects.
    policy_classes: FastMap<Uuid, BTreeSet<ClassId>>,
    /// What choosing a class's tiered policies reads, kept until a policy changes (a project's
    /// choice, until its labels do).
    policy_lists: PolicyLists,
    /// Loading changed policies whose classes are brought up to date at the end.
    policies_unsettled: bool,
    sets: FastMap<SetId, SetState>,
    sets_by_group: FastMap<Uuid, BTreeSet<SetId>>,
    sets_by_project: FastMap<String, BTreeSet<SetId>>,
    sets_everywhere: BTreeSet<SetId>,
    project_selectors: BTreeMap<Arc<LabelSelector>, ProjectSelector>,
    project_selectors_by_project: FastMap<String, BTreeSet<Arc<LabelSelector>>>,
    /// Project names by label, to find the projects a new project selector matches.
    projects_by_label: FastMap<(String, String), BTreeSet<String>>,
    nodes: Vec<NodeState>,
    node_ids: FastMap<Option<Arc<str>>, NodeId>,
    /// Whether deltas are being recorded (not while loading a snapshot).
    tracking: bool,
    touched: BTreeMap<NodeId, Touched>,
    /// Each set's member changes during the batch, netted.
    journals: BTreeMap<SetId, MemberDelta>,
    /// Sets no group may name any more: dropped at the end of the batch (a later change of
    /// the same batch may name them again).
    unreferenced: BTreeSet<SetId>,
    /// The port that names each address, while only one does.
    claimed: FastMap<IpAddr, Uuid>,
    /// Addresses two or more ports name, and those ports: dispatched to none of them
    /// (`PortPolicy::refused_addresses`).
    contested: FastMap<IpAddr, BTreeSet<Uuid>>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    pub fn new() -> Self {
        let mut node_ids = FastMap::default();
        node_ids.insert(None, UNPLACED);
        Compiler {
            cluster: Cluster::new(),
            classes: Vec::new(),
            free_classes: Vec::new(),
            class_index: FastMap::default(),
            class_of_port: FastMap::default(),
            classes_by_project: FastMap::default(),
            classes_by_ref: FastMap::default(),
            group_classes: FastMap::default(),
            groups: FastMap::default(),
            rule_refs: FastMap::default(),
            policies: FastMap::default(),
            policy_classes: FastMap::default(),
            policy_lists: PolicyLists::default(),
            policies_unsettled: false,
            sets: FastMap::default(),
            sets_by_group: FastMap::default(),
            sets_by_project: FastMap::default(),
            sets_everywhere: BTreeSet::new(),
            project_selectors: BTreeMap::new(),
            project_selectors_by_project: FastMap::default(),
            projects_by_label: FastMap::default(),
            nodes: vec![NodeState::default()],
            node_ids,
            tracking: false,
            touched: BTreeMap::new(),
            journals: BTreeMap::new(),
            unreferenced: BTreeSet::new(),
            claimed: FastMap::default(),
            contested: FastMap::default(),
        }
    }

    /// Applies the changes of one revision and returns what changed in each node's span
    /// (nodes whose span did not change get nothing; a node that lost its last port gets a
    /// delta removing everything).
    pub fn apply(&mut self, revision: i64, changes: impl IntoIterator<Item = Change>) -> Deltas {
        self.tracking = true;
        for change in changes {
            self.change(revision, change);
        }
        let deltas = Deltas { revision, ..self.deltas() };
        self.end_batch();
        deltas
    }

    /// Applies changes without computing deltas: loading the state a controller starts from,
    /// whose spans it then sends whole.
    pub fn load(&mut self, revision: i64, changes: impl IntoIterator<Item = Change>) {
        self.tracking = false;
        for change in changes {
            self.change(revision, change);
        }
        self.settle_policies();
        self.end_batch();
    }

    /// Brings every class's tiered policies up to date once, after a load whose policy
    /// changes left them for the end: refreshing the classes a policy may select as each
    /// policy is loaded costs a scan of the projects and a refresh of a tenth of the classes
    /// per policy (15 s for 200 policies at 100,000 pods; once at the end, a fraction of that).
    fn settle_policies(&mut self) {
        if !std::mem::take(&mut self.policies_unsettled) {
            return;
        }
        let live: Vec<ClassId> = (0..self.classes.len()).filter(|c| self.classes[*c].is_some()).collect();
        for class in live {
            self.refresh_policies(class);
        }
    }

    /// The compiler taken apart into its structures, named, for `weft bench memory` to drop
    /// one at a time and count what each held. Every field is named: one added later is
    /// counted too, or this does not compile.
    #[cfg(feature = "synthetic")]
    pub fn into_parts(self) -> Vec<(&'static str, Box<dyn std::any::Any + Send>)> {
        let Compiler {
            cluster,
            classes,
            free_classes,
            class_index,
            class_of_port,
            classes_by_project,
            classes_by_ref,
            group_classes,
            groups,
            rule_refs,
            policies,
            policy_classes,
            policy_lists,
            policies_unsettled: _,
            sets,
            sets_by_group,
            sets_by_project,
            sets_everywhere,
            project_selectors,
            project_selectors_by_project,
            projects_by_label,
            nodes,
            node_ids,
            tracking: _,
            touched,
            journals,
            unreferenced,
            claimed,
            contested,
        } = self;
        let Cluster { projects, project_by_name, ports, groups: input_groups, group_by_name, cluster_policies, .. } =
            cluster;
        fn part<T: Send + 'static>(name: &'static str, value: T) -> (&'static str, Box<dyn std::any::Any + Send>) {
            (name, Box::new(value))
        }
        vec![
            part("input: ports", ports),
            part("input: projects", (projects, project_by_name)),
            part("input: security groups", (input_groups, group_by_name)),
            part("input: cluster policies", cluster_policies),
            part("nodes: port policies and counts", nodes),
            part("classes", (classes, free_classes, class_index)),
            part("class of each port", class_of_port),
            part("class indexes", (classes_by_project, classes_by_ref, group_classes)),
            part("compiled groups", (groups, rule_refs)),
            part("compiled tiered policies", (policies, policy_classes, policy_lists)),
            part("address sets", sets),
            part("set indexes", (sets_by_group, sets_by_project, sets_everywhere)),
            part("project selectors", (project_selectors, project_selectors_by_project, projects_by_label)),
            part("node names", node_ids),
            part("address claims", (claimed, contested)),
            part("batch journal", (touched, journals, unreferenced)),
        ]
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The port holding `address` (none when no port, or two, claim it).
    pub fn port_holding(&self, address: &IpAddr) -> Option<Uuid> {
        self.claimed.get(address).copied()
    }

    /// The revision of the last change applied.
    pub fn revision(&self) -> i64 {
        self.cluster.revision()
    }

    /// The nodes that have ports, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> =
            self.nodes.iter().filter(|n| !n.ports.is_empty()).filter_map(|n| n.name.as_deref()).collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// How many ports each node with ports has.
    pub fn node_ports(&self) -> impl Iterator<Item = (&str, usize)> {
        self.nodes.iter().filter(|n| !n.ports.is_empty()).filter_map(|n| Some((n.name.as_deref()?, n.ports.len())))
    }

    /// The nodes whose span holds group `id`, in order.
    pub fn group_nodes(&self, id: &Uuid) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .groups
            .get(id)
            .into_iter()
            .flat_map(|g| g.nodes.iter())
            .filter_map(|n| self.nodes[*n].name.as_deref())
            .collect();
        names.sort_unstable();
        names
    }

    /// The nodes whose span holds tiered policy `id`, in order.
    pub fn policy_nodes(&self, id: &Uuid) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .policies
            .get(id)
            .into_iter()
            .flat_map(|p| p.nodes.iter())
            .filter_map(|n| self.nodes[*n].name.as_deref())
            .collect();
        names.sort_unstable();
        names
    }

    /// One node's span now (empty for a node with no ports): what a newly connected agent is
    /// sent. Groups and sets are shared with the compiler's own state, not copied.
    pub fn span(&self, node: &str) -> NodeSpan {
        match self.node_ids.get(&Some(Arc::from(node))) {
            Some(id) => self.span_of(*id),
            None => NodeSpan::default(),
        }
    }

    fn span_of(&self, id: NodeId) -> NodeSpan {
        let node = &self.nodes[id];
        NodeSpan {
            ports: node.ports.clone(),
            groups: Arc::new(
                node.groups.keys().filter_map(|g| Some((*g, Arc::clone(&self.groups.get(g)?.compiled)))).collect(),
            ),
            sets: Arc::new(node.sets.keys().filter_map(|s| Some((*s, Arc::clone(&self.sets.get(s)?.set)))).collect()),
            policies: Arc::new(
                node.policies.keys().filter_map(|p| Some((*p, Arc::clone(&self.policies.get(p)?.compiled)))).collect(),
            ),
        }
    }

    /// Every span, the unplaced ports and what does not resolve: what `compile()` gives for the
    /// same cluster (tests hold the compiler to exactly that).
    pub fn snapshot(&self) -> Compiled {
        let mut out = Compiled { unplaced: self.span_of(UNPLACED), dangling: self.dangling(), ..Compiled::default() };
        for (id, node) in self.nodes.iter().enumerate() {
            if let (Some(name), false) = (&node.name, node.ports.is_empty()) {
                out.spans.insert(name.to_string(), self.span_of(id));
            }
        }
        out
    }

    /// References that do not resolve: ports naming unknown groups or projects, rules (of
    /// groups some port is subject to) naming unknown groups, upserts without an id.
    pub fn dangling(&self) -> Vec<Dangling> {
        let mut out = self.cluster.rejected.clone();
        for (id, port) in self.cluster.ports() {
            for reference in port.security_groups.iter().flatten() {
                out.extend(self.cluster.port_reference_problem(*id, &port.project, reference));
            }
            if self.cluster.project_by_name(&port.project).is_none() {
                out.push(Dangling::Project { object: *id, project: port.project.to_string() });
            }
        }
        for group in self.groups.values().filter(|g| !g.nodes.is_empty()) {
            out.extend(group.dangling.iter().cloned());
        }
        for (address, ports) in &self.contested {
            out.push(Dangling::ContestedAddress { address: *address, ports: ports.iter().copied().collect() });
        }
        out.sort();
        out.dedup();
        out
    }

    /// The verdict for `packet` from `src` to `dst`, and why (see `Compiled::explain`).
    pub fn explain(&self, src: &Endpoint, dst: &Endpoint, packet: &Packet) -> Explanation {
        let ports: Vec<Uuid> = [src, dst]
            .into_iter()
            .filter_map(|e| match e {
                Endpoint::Port(id) => Some(*id),
                _ => None,
            })
            .collect();
        self.view_of(&ports).explain(src, dst, packet)
    }

    /// The spans of the nodes `ports` are on (each node's once): a view that explains every
    /// pair among them, where [`Compiler::explain`] would build both spans for each pair.
    pub fn view_of(&self, ports: &[Uuid]) -> Compiled {
        let mut view = Compiled::default();
        for id in ports {
            let Some(port) = self.cluster.port(id) else { continue };
            match &port.node {
                Some(name) if !view.spans.contains_key(&**name) => {
                    let node = self.node_ids.get(&port.node).copied().unwrap_or(UNPLACED);
                    view.spans.insert(name.to_string(), self.span_of(node));
                }
                None if view.unplaced.ports.is_empty() => view.unplaced = self.span_of(UNPLACED),
                _ => {}
            }
        }
        view
    }

    fn change(&mut self, revision: i64, change: Change) {
        match change {
            Change::UpsertProject(p) => {
                let old = p.id.and_then(|id| self.cluster.projects.get(&id).cloned());
                let new = p.id.is_some().then(|| p.clone());
                self.cluster.apply(revision, Change::UpsertProject(p));
                if new.is_some() {
                    self.project_changed(old, new);
                }
            }
            Change::DeleteProject(id) => {
                let old = self.cluster.projects.get(&id).cloned();
                self.cluster.apply(revision, Change::DeleteProject(id));
                self.project_changed(old, None);
            }
            Change::UpsertPort(p) => {
                let id = p.id;
                let old = id.and_then(|id| self.cluster.ports.get(&id).cloned());
                self.cluster.apply(revision, Change::UpsertPort(p));
                if let Some(id) = id {
                    self.port_changed(id, old);
                }
            }
            Change::DeletePort(id) => {
                let old = self.cluster.ports.get(&id).cloned();
                self.cluster.apply(revision, Change::DeletePort(id));
                self.port_changed(id, old);
            }
            Change::UpsertGroup(g) => {
                let id = g.id;
                let old = id.and_then(|id| self.cluster.groups.get(&id).cloned());
                self.cluster.apply(revision, Change::UpsertGroup(g));
                if let Some(id) = id {
                    self.group_changed(id, old);
                }
            }
            Change::DeleteGroup(id) => {
                let old = self.cluster.groups.get(&id).cloned();
                self.cluster.apply(revision, Change::DeleteGroup(id));
                self.group_changed(id, old);
            }
            Change::UpsertClusterPolicy(p) => {
                let id = p.id;
                let old = id.and_then(|id| self.cluster.cluster_policies.get(&id).cloned());
                self.cluster.apply(revision, Change::UpsertClusterPolicy(p));
                if let Some(id) = id {
                    self.policy_changed(id, old);
                }
            }
            Change::DeleteClusterPolicy(id) => {
                let old = self.cluster.cluster_policies.get(&id).cloned();
                self.cluster.apply(revision, Change::DeleteClusterPolicy(id));
                self.policy_changed(id, old);
            }
        }
    }

    // ---- ports ----

    fn port_changed(&mut self, id: Uuid, old: Option<PortRecord>) {
        let new = self.cluster.ports.get(&id).cloned();
        let others = self.reclaim(id, old.as_ref().map_or(&[], |p| &p.ips), new.as_ref().map_or(&[], |p| &p.ips));
        let old_place = old.as_ref().and_then(|port| {
            let class = *self.class_of_port.get(&id)?;
            self.contribute(port, class, false);
            Some((class, self.node_id(&port.node)))
        });
        let new_place = new.as_ref().map(|port| (self.class_for(port), self.node_id(&port.node)));
        // The new class and node are counted before the old are released, so that a port
        // that stays in its class and node never makes a group or set leave the span and come
        // back.
        match (&new, new_place) {
            (Some(port), Some((class, node))) => {
                let placed = Placed { node, ips: port.ips.clone(), named_ports: Arc::clone(&port.named_ports) };
                self.class_mut(class).ports.insert(id, placed);
                self.class_of_port.insert(id, class);
                self.class_node_add(class, node, 1);
            }
            _ => {
                self.class_of_port.remove(&id);
            }
        }
        if let Some((class, node)) = old_place {
            if new_place.map(|(c, _)| c) != Some(class) {
                self.class_mut(class).ports.remove(&id);
            }
            self.class_node_add(class, node, -1);
            if new_place.map(|(_, n)| n) != Some(node) {
                self.set_port(node, id, None);
            }
        }
        if let (Some(port), Some((class, node))) = (&new, new_place) {
            let policy = self.policy(port, class);
            self.set_port(node, id, Some(policy));
            self.contribute(port, class, true);
        }
        if let Some((class, _)) = old_place
            && self.class(class).ports.is_empty()
        {
            self.drop_class(class);
        }
        // Ports whose addresses this one now contests, or stopped contesting.
        for other in others {
            let (Some(port), Some(class)) = (self.cluster.ports.get(&other).cloned(), self.class_of_port.get(&other))
            else {
                continue;
            };
            let class = *class;
            let node = self.node_id(&port.node);
            let policy = self.policy(&port, class);
            self.set_port(node, other, Some(policy));
        }
    }

    /// Moves port `id`'s address claims from `old` to `new`, and returns the other ports whose
    /// refused addresses change with it.
    fn reclaim(&mut self, id: Uuid, old: &[IpAddr], new: &[IpAddr]) -> BTreeSet<Uuid> {
        let mut others = BTreeSet::new();
        for ip in old.iter().filter(|ip| !new.contains(ip)) {
            if let Some(claimants) = self.contested.get_mut(ip) {
                claimants.remove(&id);
                if claimants.len() == 1 {
                    others.extend(claimants.iter().copied());
                    if let Some(last) = self.contested.remove(ip).and_then(|c| c.into_iter().next()) {
                        self.claimed.insert(*ip, last);
                    }
                }
            } else if self.claimed.get(ip) == Some(&id) {
                self.claimed.remove(ip);
            }
        }
        for ip in new.iter().filter(|ip| !old.contains(ip)) {
            if let Some(claimants) = self.contested.get_mut(ip) {
                claimants.insert(id);
            } else {
                match self.claimed.get(ip).copied() {
                    Some(holder) if holder != id => {
                        self.claimed.remove(ip);
                        self.contested.insert(*ip, BTreeSet::from([holder, id]));
                        others.insert(holder);
                    }
                    _ => {
                        self.claimed.insert(*ip, id);
                    }
                }
            }
        }
        others.remove(&id);
        others
    }

    fn node_id(&mut self, node: &Option<Arc<str>>) -> NodeId {
        if let Some(id) = self.node_ids.get(node) {
            return *id;
        }
        let id = self.nodes.len();
        self.nodes.push(NodeState { name: node.as_deref().map(Arc::from), ..NodeState::default() });
        self.node_ids.insert(node.clone(), id);
        id
    }

    fn policy(&mut self, port: &PortRecord, class: ClassId) -> PortPolicy {
        let (addresses, refused_addresses) =
            crate::compile::split_claims(&port.ips, |a| self.contested.contains_key(a));
        let class = self.class(class);
        PortPolicy {
            project: port.project.to_string(),
            name: port.name.to_string(),
            addresses,
            refused_addresses,
            interface: port.effective_interface(),
            instance: port.instance.as_deref().map(str::to_string),
            named_ports: Arc::clone(&port.named_ports),
            ingress: class.ingress.clone(),
            egress: class.egress.clone(),
            policies: Arc::clone(&class.policies),
        }
    }

    fn set_port(&mut self, node: NodeId, id: Uuid, policy: Option<PortPolicy>) {
        let ports = &mut self.nodes[node].ports;
        let old = match &policy {
            Some(p) => ports.insert(id, p.clone()),
            None => ports.remove(&id),
        };
        if self.tracking {
            self.touched.entry(node).or_default().ports.entry(id).or_insert(old);
        }
    }

    // ---- classes ----

    fn class(&self, id: ClassId) -> &Class {
        self.classes[id].as_ref().expect("live class id")
    }

    fn class_mut(&mut self, id: ClassId) -> &mut Class {
        self.classes[id].as_mut().expect("live class id")
    }

    /// The class of ports like `port`, created when it is the first.
    fn class_for(&mut self, port: &PortRecord) -> ClassId {
        let hash = hash_of(&(&*port.project, &*port.labels, port.security_groups.as_deref()));
        if let Some(found) = self.class_index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|id| {
                let c = self.class(*id);
                c.project == port.project && c.labels == port.labels && c.explicit == port.security_groups
            })
        }) {
            return found;
        }
        let applied = self.cluster.applied(port);
        let policies = self.policy_lists.list(&self.cluster, &port.project, &port.labels);
        let class = Class {
            project: Arc::clone(&port.project),
            labels: Arc::clone(&port.labels),
            explicit: port.security_groups.clone(),
            hash,
            ingress: isolation(&self.cluster, &applied, Direction::Ingress),
            egress: isolation(&self.cluster, &applied, Direction::Egress),
            applied,
            policies,
            ports: FastMap::default(),
            nodes: FastMap::default(),
        };
        let id = match self.free_classes.pop() {
            Some(id) => id,
            None => {
                self.classes.push(None);
                self.classes.len() - 1
            }
        };
        self.class_index.entry(hash).or_default().push(id);
        self.classes_by_project.entry(class.project.to_string()).or_default().insert(id);
        for key in refs_of(&class.project, class.explicit.as_deref()) {
            self.classes_by_ref.entry(key).or_default().insert(id);
        }
        for g in &class.applied {
            self.group_classes.entry(*g).or_default().insert(id);
        }
        for p in class.policies.iter() {
            self.policy_classes.entry(*p).or_default().insert(id);
        }
        self.classes[id] = Some(class);
        id
    }

    fn drop_class(&mut self, id: ClassId) {
        let Some(class) = self.classes[id].take() else { return };
        debug_assert!(class.nodes.is_empty());
        if let Some(ids) = self.class_index.get_mut(&class.hash) {
            ids.retain(|c| *c != id);
            if ids.is_empty() {
                self.class_index.remove(&class.hash);
            }
        }
        remove_from(&mut self.classes_by_project, &*class.project, &id);
        for key in refs_of(&class.project, class.explicit.as_deref()) {
            remove_from(&mut self.classes_by_ref, &key, &id);
        }
        for g in &class.applied {
            remove_from(&mut self.group_classes, g, &id);
        }
        for p in class.policies.iter() {
            remove_from(&mut self.policy_classes, p, &id);
        }
        self.free_classes.push(id);
    }

    /// `delta` more (or fewer) ports of `class` on `node`; the class's groups enter or leave
    /// the node's span when its count crosses zero.
    fn class_node_add(&mut self, class: ClassId, node: NodeId, delta: i32) {
        let c = self.class_mut(class);
        let count = c.nodes.entry(node).or_insert(0);
        let before = *count;
        *count = count.saturating_add_signed(delta);
        let after = *count;
        if after == 0 {
            c.nodes.remove(&node);
        }
        if (before == 0) != (after == 0) {
            let groups = c.isolating();
            let policies = Arc::clone(&c.policies);
            for g in groups {
                self.node_group_add(node, g, if after > 0 { 1 } else { -1 });
            }
            for p in policies.iter() {
                self.node_policy_add(node, *p, if after > 0 { 1 } else { -1 });
            }
        }
    }

    fn node_policy_add(&mut self, node: NodeId, policy: Uuid, delta: i32) {
        let Some(entered) = count_add(&mut self.nodes[node].policies, policy, delta) else { return };
        let Some(state) = self.policies.get_mut(&policy) else { return };
        if self.tracking {
            let had = (!entered).then(|| Arc::clone(&state.compiled));
            self.touched.entry(node).or_default().policies.entry(policy).or_insert(had);
        }
        let sets = enter_or_leave(&mut state.nodes, node, entered, &state.sets);
        self.swap_sets(&[node], if entered { &sets } else { &[] }, if entered { &[] } else { &sets });
    }

    fn node_group_add(&mut self, node: NodeId, group: Uuid, delta: i32) {
        let Some(entered) = count_add(&mut self.nodes[node].groups, group, delta) else { return };
        let Some(state) = self.groups.get_mut(&group) else { return };
        if self.tracking {
            let had = (!entered).then(|| Arc::clone(&state.compiled));
            self.touched.entry(node).or_default().groups.entry(group).or_insert(had);
        }
        let sets = enter_or_leave(&mut state.nodes, node, entered, &state.sets);
        self.swap_sets(&[node], if entered { &sets } else { &[] }, if entered { &[] } else { &sets });
    }

    fn node_set_add(&mut self, node: NodeId, set: SetId, delta: i32) {
        let Some(entered) = count_add(&mut self.nodes[node].sets, set, delta) else { return };
        if self.tracking {
            self.touched.entry(node).or_default().sets.entry(set).or_insert(!entered);
        }
        if let Some(state) = self.sets.get_mut(&set) {
            if entered {
                *state.nodes.entry(node).or_insert(0) += 1;
            } else {
                state.nodes.remove(&node);
            }
        }
    }

    // ---- groups ----

    fn group_changed(&mut self, id: Uuid, old: Option<SecurityGroup>) {
        let new = self.cluster.groups.get(&id).cloned();
        let keys: BTreeSet<GroupKey> =
            old.iter().chain(new.iter()).map(|g| (g.project.clone(), g.name.clone())).collect();
        // Its own rules, and the rules of groups that name it (a name that now resolves, or
        // no longer does).
        let mut recompile = BTreeSet::from([id]);
        let renamed = old.as_ref().map(|g| (&g.project, &g.name)) != new.as_ref().map(|g| (&g.project, &g.name));
        if renamed {
            for key in &keys {
                recompile.extend(self.rule_refs.get(key).into_iter().flatten().copied());
            }
        }
        for g in recompile {
            if self.cluster.groups.contains_key(&g) {
                self.recompile_group(g);
            }
        }
        // The classes it may apply to now or applied to before.
        let mut candidates: BTreeSet<ClassId> = self.group_classes.get(&id).cloned().unwrap_or_default();
        for g in old.iter().chain(new.iter()) {
            candidates.extend(self.classes_by_project.get(&g.project).into_iter().flatten().copied());
        }
        for key in &keys {
            candidates.extend(self.classes_by_ref.get(key).into_iter().flatten().copied());
        }
        for class in candidates {
            self.reclassify(class, id);
        }
        if new.is_none()
            && let Some(state) = self.groups.remove(&id)
        {
            debug_assert!(state.nodes.is_empty());
            self.release_group(id, &state);
        }
    }

    /// Compiles a group again and moves the nodes that hold it to its new sets.
    fn recompile_group(&mut self, id: Uuid) {
        let (output, dangling) = compile_group(&self.cluster, id);
        let refs: Vec<GroupKey> = self
            .cluster
            .group(&id)
            .map(|g| {
                g.rules
                    .iter()
                    .filter_map(|r| match &r.remote {
                        weft_model::Remote::SecurityGroup { security_group } => {
                            let r = ObjectRef::parse(security_group).ok()?;
                            Some((r.project_or(&g.project).to_string(), r.name.to_string()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sets = self.reference_sets(output.sets);
        for key in &refs {
            self.rule_refs.entry(key.clone()).or_default().insert(id);
        }
        let state = GroupState { compiled: output.group, sets, refs, dangling, nodes: FastSet::default() };
        let Some(mut old) = self.groups.insert(id, state) else { return };
        let nodes = std::mem::take(&mut old.nodes);
        let new = self.groups.get_mut(&id).expect("just inserted");
        new.nodes = nodes;
        if new.compiled != old.compiled || new.sets != old.sets {
            let (new_sets, holders): (Vec<SetId>, Vec<NodeId>) =
                (new.sets.clone(), new.nodes.iter().copied().collect());
            if self.tracking {
                for node in &holders {
                    let had = Some(Arc::clone(&old.compiled));
                    self.touched.entry(*node).or_default().groups.entry(id).or_insert(had);
                }
            }
            self.swap_sets(&holders, &new_sets, &old.sets);
        }
        self.release_group(id, &old);
    }

    /// What a group's former compiled form held on to: its sets and its name references.
    fn release_group(&mut self, id: Uuid, state: &GroupState) {
        for key in &state.refs {
            let still = self.groups.get(&id).is_some_and(|g| g.refs.contains(key));
            if !still {
                remove_from(&mut self.rule_refs, key, &id);
            }
        }
        self.release_sets(&state.sets);
    }

    /// Brings one class up to date with group `group`: whether it applies, and the class's
    /// isolation.
    fn reclassify(&mut self, class: ClassId, group: Uuid) {
        let c = self.class(class);
        let now = self.cluster.applies(group, &c.project, &c.labels, c.explicit.as_deref());
        let before = c.applied.contains(&group);
        if !now && !before {
            return;
        }
        if now != before {
            let c = self.class_mut(class);
            if now {
                c.applied.insert(group);
            } else {
                c.applied.remove(&group);
            }
            if now {
                self.group_classes.entry(group).or_default().insert(class);
            } else {
                remove_from(&mut self.group_classes, &group, &class);
            }
            // Its ports join or leave the sets of the group's members.
            let sets: Vec<SetId> = self.sets_by_group.get(&group).into_iter().flatten().copied().collect();
            if !sets.is_empty() {
                let mut members = Vec::new();
                for placed in self.class(class).ports.values() {
                    members.extend(
                        sets.iter()
                            .map(|s| (*s, members_of(&self.sets[s].set.definition, &placed.ips, &placed.named_ports))),
                    );
                }
                self.change_members(members, now);
            }
        }
        let c = self.class(class);
        let ingress = isolation(&self.cluster, &c.applied, Direction::Ingress);
        let egress = isolation(&self.cluster, &c.applied, Direction::Egress);
        if ingress == c.ingress && egress == c.egress {
            return;
        }
        let (old_groups, new_groups) = (c.isolating(), isolating_groups(&ingress, &egress));
        let c = self.class_mut(class);
        c.ingress = ingress.clone();
        c.egress = egress.clone();
        let nodes: Vec<NodeId> = c.nodes.keys().copied().collect();
        let ports: Vec<(Uuid, NodeId)> = c.ports.iter().map(|(id, p)| (*id, p.node)).collect();
        for node in nodes {
            for g in new_groups.difference(&old_groups) {
                self.node_group_add(node, *g, 1);
            }
            for g in old_groups.difference(&new_groups) {
                self.node_group_add(node, *g, -1);
            }
        }
        for (id, node) in ports {
            let Some(policy) = self.nodes[node].ports.get_mut(&id) else { continue };
            let old = policy.clone();
            policy.ingress = ingress.clone();
            policy.egress = egress.clone();
            if self.tracking {
                self.touched.entry(node).or_default().ports.entry(id).or_insert(Some(old));
            }
        }
    }

    // ---- tiered policies ----

    /// A policy written or deleted: compiled again, and, when which ports it selects or where
    /// it stands among the others may have changed (added, deleted, another subject, tier,
    /// priority or name), the classes it selected or may select now brought up to date (the
    /// classes it selected are indexed, so a subject that changed leaves none behind). A
    /// change of its rules alone changes no port's list. While loading, the classes are
    /// brought up to date once at the end ([`Compiler::settle_policies`]).
    fn policy_changed(&mut self, id: Uuid, old: Option<weft_model::ClusterPolicy>) {
        let new = self.cluster.cluster_policies.get(&id).cloned();
        if new.is_some() {
            self.recompile_policy(id);
        }
        let relisted = match (&old, &new) {
            (Some(o), Some(n)) => o.subject != n.subject || o.order_key() != n.order_key(),
            _ => true,
        };
        if relisted {
            self.policy_lists.clear();
            // A deletion is brought up to date at once, loading or not: the classes let go of
            // the policy before its state goes.
            if self.tracking || new.is_none() {
                self.relist(id, old.as_ref(), new.as_ref());
            } else {
                self.policies_unsettled = true;
            }
        }
        if new.is_none()
            && let Some(state) = self.policies.remove(&id)
        {
            debug_assert!(state.nodes.is_empty());
            self.release_sets(&state.sets);
        }
    }

    /// The classes a policy selected, and those it may select now, brought up to date: when
    /// its subject is what it was, exactly those it selected (its place among the others
    /// changed); else also the classes of the projects its subject's project selector matches
    /// (a project not known has no labels).
    fn relist(&mut self, id: Uuid, old: Option<&weft_model::ClusterPolicy>, new: Option<&weft_model::ClusterPolicy>) {
        let mut candidates: BTreeSet<ClassId> = self.policy_classes.get(&id).cloned().unwrap_or_default();
        let same_subject = matches!((old, new), (Some(o), Some(n)) if o.subject == n.subject);
        if let Some(policy) = new.filter(|_| !same_subject) {
            // The projects by their labels (a scan of the projects, not a lookup of each by
            // name), then the classes of those that match; a project not known has no labels.
            let mut matched: Vec<&str> = Vec::new();
            for p in self.cluster.projects.values() {
                if policy.subject.projects.matches(&p.labels) {
                    matched.push(&p.name);
                }
            }
            let no_labels = Labels::new();
            if policy.subject.projects.matches(&no_labels) {
                let known: std::collections::HashSet<&str> =
                    self.cluster.projects.values().map(|p| p.name.as_str()).collect();
                matched.extend(self.classes_by_project.keys().map(String::as_str).filter(|p| !known.contains(p)));
            }
            for project in matched {
                let Some(classes) = self.classes_by_project.get(project) else { continue };
                candidates
                    .extend(classes.iter().copied().filter(|c| policy.subject.ports.matches(&self.class(*c).labels)));
            }
        }
        for class in candidates {
            self.refresh_policies(class);
        }
    }

    /// Compiles a tiered policy again and moves the nodes that hold it to its new sets.
    fn recompile_policy(&mut self, id: Uuid) {
        let output = compile_policy(&self.cluster, id);
        let sets = self.reference_sets(output.sets);
        let state = PolicyState { compiled: output.policy, sets, nodes: FastSet::default() };
        let Some(mut old) = self.policies.insert(id, state) else { return };
        let nodes = std::mem::take(&mut old.nodes);
        let new = self.policies.get_mut(&id).expect("just inserted");
        new.nodes = nodes;
        if new.compiled != old.compiled || new.sets != old.sets {
            let (new_sets, holders): (Vec<SetId>, Vec<NodeId>) =
                (new.sets.clone(), new.nodes.iter().copied().collect());
            if self.tracking {
                for node in &holders {
                    let had = Some(Arc::clone(&old.compiled));
                    self.touched.entry(*node).or_default().policies.entry(id).or_insert(had);
                }
            }
            self.swap_sets(&holders, &new_sets, &old.sets);
        }
        self.release_sets(&old.sets);
    }

    /// The nodes that hold a group or policy compiled anew take its new sets and let go of
    /// its old ones (new first: a set in both never leaves and comes back).
    fn swap_sets(&mut self, holders: &[NodeId], new_sets: &[SetId], old_sets: &[SetId]) {
        for node in holders {
            for set in new_sets {
                self.node_set_add(*node, *set, 1);
            }
            for set in old_sets {
                self.node_set_add(*node, *set, -1);
            }
        }
    }

    /// One more group or policy names each of `sets`; their ids.
    fn reference_sets(&mut self, sets: Vec<(SetId, SetDefinition)>) -> Vec<SetId> {
        let ids = sets.iter().map(|(s, _)| *s).collect();
        for (set, definition) in sets {
            self.reference_set(set, definition);
        }
        ids
    }

    /// One fewer group or policy names each of `sets`.
    fn release_sets(&mut self, sets: &[SetId]) {
        for set in sets {
            if let Some(s) = self.sets.get_mut(set) {
                s.groups -= 1;
                if s.groups == 0 {
                    self.unreferenced.insert(*set);
                }
            }
        }
    }

    /// Brings a class's tiered policies (which, in what order) up to date.
    fn refresh_policies(&mut self, class: ClassId) {
        let c = self.classes[class].as_ref().expect("live class id");
        let now = self.policy_lists.list(&self.cluster, &c.project, &c.labels);
        if now == self.class(class).policies {
            return;
        }
        let old = std::mem::replace(&mut self.class_mut(class).policies, Arc::clone(&now));
        // Lists are short (tens): those that left and came, by looking, without sets. A
        // reorder (the most common change of a long list) has neither.
        let left: Vec<Uuid> = old.iter().filter(|p| !now.contains(p)).copied().collect();
        let came: Vec<Uuid> = now.iter().filter(|p| !old.contains(p)).copied().collect();
        for p in &left {
            remove_from(&mut self.policy_classes, p, &class);
        }
        for p in &came {
            self.policy_classes.entry(*p).or_default().insert(class);
        }
        let c = self.class(class);
        let ports: Vec<(Uuid, NodeId)> = c.ports.iter().map(|(id, p)| (*id, p.node)).collect();
        if !(left.is_empty() && came.is_empty()) {
            let nodes: Vec<NodeId> = c.nodes.keys().copied().collect();
            for node in nodes {
                for p in &came {
                    self.node_policy_add(node, *p, 1);
                }
                for p in &left {
                    self.node_policy_add(node, *p, -1);
                }
            }
        }
        for (id, node) in ports {
            let Some(policy) = self.nodes[node].ports.get_mut(&id) else { continue };
            let old = policy.clone();
            policy.policies = Arc::clone(&now);
            if self.tracking {
                self.touched.entry(node).or_default().ports.entry(id).or_insert(Some(old));
            }
        }
    }

    // ---- sets ----

    /// One more group names `set`; the set is built when it is the first.
    fn reference_set(&mut self, set: SetId, definition: SetDefinition) {
        if let Some(state) = self.sets.get_mut(&set) {
            state.groups += 1;
            self.unreferenced.remove(&set);
            return;
        }
        let selection = match &definition {
            SetDefinition::Addresses(s) | SetDefinition::NamedPorts { selection: s, .. } => s.clone(),
        };
        let static_prefixes = matches!(definition, SetDefinition::Addresses(Selection::Cidr { .. }));
        let members = match (&definition, &selection) {
            (SetDefinition::Addresses(Selection::Cidr { cidr, except }), _) => {
                SetMembers::Prefixes(cidr::subtract(*cidr, except))
            }
            (SetDefinition::Addresses(_), _) => SetMembers::Addresses(BTreeSet::new()),
            (SetDefinition::NamedPorts { .. }, _) => SetMembers::Pairs(BTreeSet::new()),
        };
        let mut state = SetState {
            set: Arc::new(AddressSet { definition, members }),
            extra: FastMap::default(),
            groups: 1,
            nodes: FastMap::default(),
        };
        if !static_prefixes {
            // A new project selector first finds its projects: the candidates come from them.
            if let Selection::Selector { projects: Some(selector), .. } = &selection {
                self.project_selector(selector);
            }
            // Built in one go from a sorted list: a set of every pod in the cluster is 100,000
            // members, and inserting them one by one is most of the cost.
            let mut all: Vec<Member> = Vec::new();
            for (ips, named_ports) in self.candidates(&selection) {
                members_into(&state.set.definition, ips, named_ports, &mut all);
            }
            all.sort_unstable();
            let mut distinct: Vec<Member> = Vec::with_capacity(all.len());
            for member in all {
                if distinct.last() == Some(&member) {
                    *state.extra.entry(member).or_insert(0) += 1;
                } else {
                    distinct.push(member);
                }
            }
            match &mut Arc::make_mut(&mut state.set).members {
                SetMembers::Addresses(a) => {
                    *a = distinct
                        .into_iter()
                        .filter_map(|m| if let Member::Address(x) = m { Some(x) } else { None })
                        .collect();
                }
                SetMembers::Pairs(p) => {
                    *p = distinct
                        .into_iter()
                        .filter_map(|m| if let Member::Pair(x, n) = m { Some((x, n)) } else { None })
                        .collect();
                }
                SetMembers::Prefixes(_) => {}
            }
            match &selection {
                Selection::All | Selection::Cidr { .. } => {
                    self.sets_everywhere.insert(set);
                }
                Selection::GroupMembers { group } => {
                    self.sets_by_group.entry(*group).or_default().insert(set);
                }
                Selection::Selector { project, projects: None, .. } => {
                    self.sets_by_project.entry(project.clone()).or_default().insert(set);
                }
                Selection::Selector { projects: Some(selector), .. } => {
                    let selector = self.project_selector(selector);
                    if let Some(ps) = self.project_selectors.get_mut(&selector) {
                        ps.sets.insert(set);
                    }
                }
            }
        }
        self.sets.insert(set, state);
    }

    /// The ports a selection may pick (a set's definition then says what each contributes).
    fn candidates(&self, selection: &Selection) -> Vec<(&[IpAddr], &BTreeMap<String, NamedPort>)> {
        let in_classes = |classes: Vec<ClassId>| -> Vec<(&[IpAddr], &BTreeMap<String, NamedPort>)> {
            classes
                .into_iter()
                .flat_map(|c| self.class(c).ports.values())
                .map(|p| (&p.ips[..], &*p.named_ports))
                .collect()
        };
        let matching_in = |project: &str, ports: &LabelSelector| -> Vec<ClassId> {
            self.classes_by_project
                .get(project)
                .into_iter()
                .flatten()
                .copied()
                .filter(|c| ports.matches(&self.class(*c).labels))
                .collect()
        };
        match selection {
            Selection::All | Selection::Cidr { .. } => {
                self.cluster.ports.values().map(|p| (&p.ips[..], &*p.named_ports)).collect()
            }
            Selection::GroupMembers { group } => {
                in_classes(self.group_classes.get(group).into_iter().flatten().copied().collect())
            }
            Selection::Selector { project, ports, projects: None } => in_classes(matching_in(project, ports)),
            Selection::Selector { ports, projects: Some(selector), .. } => {
                let projects = self.project_selectors.get(selector).map(|ps| &ps.projects);
                in_classes(projects.into_iter().flatten().flat_map(|p| matching_in(p, ports)).collect())
            }
        }
    }

    /// The project selector's entry, created (with the projects it matches) when new.
    fn project_selector(&mut self, selector: &LabelSelector) -> Arc<LabelSelector> {
        if let Some((key, _)) = self.project_selectors.get_key_value(selector) {
            return Arc::clone(key);
        }
        let key = Arc::new(selector.clone());
        // Narrowed by the label index where the selector allows: the projects carrying one of
        // its matchLabels, or one of the values of an `In` requirement (whichever are fewest);
        // otherwise every project.
        let posting = |k: &str, v: &str| self.projects_by_label.get(&(k.to_string(), v.to_string()));
        let mut narrowings: Vec<Vec<&String>> =
            selector.match_labels.iter().map(|(k, v)| posting(k, v).into_iter().flatten().collect()).collect();
        for r in selector.match_expressions.iter().filter(|r| r.operator == weft_model::Operator::In) {
            narrowings.push(r.values.iter().flat_map(|v| posting(&r.key, v).into_iter().flatten()).collect());
        }
        let candidates: Vec<&Project> = match narrowings.into_iter().min_by_key(Vec::len) {
            Some(names) => names.into_iter().filter_map(|name| self.cluster.project_by_name(name)).collect(),
            None => self.cluster.projects.values().collect(),
        };
        let projects: BTreeSet<String> = candidates
            .into_iter()
            .filter(|p| self.cluster.project_by_name(&p.name).is_some_and(|q| q.id == p.id))
            .filter(|p| selector.matches(&p.labels))
            .map(|p| p.name.clone())
            .collect();
        for name in &projects {
            self.project_selectors_by_project.entry(name.clone()).or_default().insert(Arc::clone(&key));
        }
        self.project_selectors.insert(Arc::clone(&key), ProjectSelector { projects, sets: BTreeSet::new() });
        key
    }

    /// Adds (or removes) what a port contributes to every set that selects it.
    fn contribute(&mut self, port: &PortRecord, class: ClassId, add: bool) {
        let mut sets: Vec<SetId> = Vec::new();
        for g in &self.class(class).applied {
            sets.extend(self.sets_by_group.get(g).into_iter().flatten().copied());
        }
        let selected = |set: &SetId| match &self.sets[set].set.definition {
            SetDefinition::Addresses(Selection::Selector { ports, .. })
            | SetDefinition::NamedPorts { selection: Selection::Selector { ports, .. }, .. } => {
                ports.matches(&port.labels)
            }
            _ => true,
        };
        sets.extend(self.sets_by_project.get(&*port.project).into_iter().flatten().filter(|s| selected(s)));
        for selector in self.project_selectors_by_project.get(&*port.project).into_iter().flatten() {
            let ps = &self.project_selectors[selector];
            sets.extend(ps.sets.iter().filter(|s| selected(s)));
        }
        sets.extend(self.sets_everywhere.iter().copied());
        if sets.is_empty() {
            return;
        }
        let members = sets
            .into_iter()
            .map(|s| (s, members_of(&self.sets[&s].set.definition, &port.ips, &port.named_ports)))
            .collect();
        self.change_members(members, add);
    }

    fn change_members(&mut self, members: Vec<(SetId, Vec<Member>)>, add: bool) {
        for (set, list) in members {
            let Some(state) = self.sets.get_mut(&set) else { continue };
            let journal = if self.tracking { Some(self.journals.entry(set).or_default()) } else { None };
            let mut journal = journal;
            for member in list {
                if add {
                    add_member(state, member, journal.as_deref_mut());
                } else {
                    remove_member(state, member, journal.as_deref_mut());
                }
            }
        }
    }

    // ---- projects ----

    fn project_changed(&mut self, old: Option<Project>, new: Option<Project>) {
        for p in old.iter() {
            for (k, v) in &p.labels {
                remove_from(&mut self.projects_by_label, &(k.clone(), v.clone()), &p.name);
            }
        }
        for p in new.iter() {
            for (k, v) in &p.labels {
                self.projects_by_label.entry((k.clone(), v.clone())).or_default().insert(p.name.clone());
            }
        }
        let names: BTreeSet<String> = old.iter().chain(new.iter()).map(|p| p.name.clone()).collect();
        let selectors: Vec<Arc<LabelSelector>> = self.project_selectors.keys().cloned().collect();
        for selector in selectors {
            for name in &names {
                let now = self.cluster.project_by_name(name).is_some_and(|p| selector.matches(&p.labels));
                let ps = self.project_selectors.get_mut(&selector).expect("listed");
                let before = ps.projects.contains(name);
                if now == before {
                    continue;
                }
                if now {
                    ps.projects.insert(name.clone());
                    self.project_selectors_by_project.entry(name.clone()).or_default().insert(Arc::clone(&selector));
                } else {
                    ps.projects.remove(name);
                    remove_from(&mut self.project_selectors_by_project, name, &selector);
                }
                // The project's ports that the selector's sets pick join or leave them.
                let sets: Vec<SetId> = ps.sets.iter().copied().collect();
                let classes: Vec<ClassId> = self.classes_by_project.get(name).into_iter().flatten().copied().collect();
                let mut members = Vec::new();
                for set in sets {
                    let definition = &self.sets[&set].set.definition;
                    let (SetDefinition::Addresses(Selection::Selector { ports, .. })
                    | SetDefinition::NamedPorts { selection: Selection::Selector { ports, .. }, .. }) = definition
                    else {
                        continue;
                    };
                    for class in &classes {
                        let c = self.class(*class);
                        if !ports.matches(&c.labels) {
                            continue;
                        }
                        for placed in c.ports.values() {
                            members.push((set, members_of(definition, &placed.ips, &placed.named_ports)));
                        }
                    }
                }
                self.change_members(members, now);
            }
        }
        // Policies select ports by their project's labels too.
        if !self.cluster.cluster_policies.is_empty() {
            for name in &names {
                self.policy_lists.forget_project(name);
            }
            for name in &names {
                let classes: Vec<ClassId> = self.classes_by_project.get(name).into_iter().flatten().copied().collect();
                for class in classes {
                    self.refresh_policies(class);
                }
            }
        }
    }

    // ---- the end of a batch ----

    /// Each touched node's delta: what it has now against what it had before the batch; and
    /// each changed set's members, for the nodes that had it before and still have it.
    fn deltas(&mut self) -> Deltas {
        let journals: BTreeMap<SetId, Arc<MemberDelta>> = std::mem::take(&mut self.journals)
            .into_iter()
            .filter(|(_, j)| !j.is_empty())
            .map(|(s, j)| (s, Arc::new(j)))
            .collect();
        let touched = std::mem::take(&mut self.touched);
        let mut out = Deltas::default();
        for (id, t) in &touched {
            let (Some(name), false) = (&self.nodes[*id].name, *id == UNPLACED) else { continue };
            let node = &self.nodes[*id];
            let mut d = SpanDelta::default();
            // Ports whose list of tiered policies alone changed, by their old list.
            let mut relisted: FastMap<&[Uuid], Vec<(Uuid, &crate::compiled::PolicyList)>> = FastMap::default();
            for (port, before) in &t.ports {
                match (before, node.ports.get(port)) {
                    (Some(b), Some(now)) if b.policies != now.policies && b.same_but_policies(now) => {
                        relisted.entry(b.policies.as_slice()).or_default().push((*port, &now.policies));
                    }
                    (_, Some(now)) if before.as_ref() != Some(now) => {
                        d.ports_upserted.insert(*port, now.clone());
                    }
                    (Some(_), None) => {
                        d.ports_removed.insert(*port);
                    }
                    _ => {}
                }
            }
            // A list replaced on the agent is replaced for every port of the node that had it
            // and is not sent whole: so when those are exactly the ports moved, all to the same
            // new list; else the ports are sent whole.
            for (old_list, moved) in relisted {
                let to = moved[0].1;
                let holders = || {
                    node.ports
                        .iter()
                        .filter(|(id, p)| {
                            let had = match t.ports.get(id) {
                                Some(Some(before)) => &before.policies,
                                Some(None) => return false,
                                None => &p.policies,
                            };
                            had.as_slice() == old_list && !d.ports_upserted.contains_key(id)
                        })
                        .count()
                };
                if moved.iter().all(|(_, l)| l == &to) && holders() == moved.len() {
                    d.lists_replaced.push((Arc::new(old_list.to_vec()), Arc::clone(to)));
                } else {
                    for (port, _) in moved {
                        if let Some(now) = node.ports.get(&port) {
                            d.ports_upserted.insert(port, now.clone());
                        }
                    }
                }
            }
            d.lists_replaced.sort();
            for (group, before) in &t.groups {
                let now = node.groups.contains_key(group).then(|| self.groups.get(group)).flatten();
                match (before, now) {
                    (_, Some(now)) if before.as_ref() != Some(&now.compiled) => {
                        d.groups_upserted.insert(*group, Arc::clone(&now.compiled));
                    }
                    (Some(_), None) => {
                        d.groups_removed.insert(*group);
                    }
                    _ => {}
                }
            }
            for (policy, before) in &t.policies {
                let now = node.policies.contains_key(policy).then(|| self.policies.get(policy)).flatten();
                match (before, now) {
                    (_, Some(now)) if before.as_ref() != Some(&now.compiled) => {
                        d.policies_upserted.insert(*policy, Arc::clone(&now.compiled));
                    }
                    (Some(_), None) => {
                        d.policies_removed.insert(*policy);
                    }
                    _ => {}
                }
            }
            for (set, had) in &t.sets {
                match (*had, node.sets.contains_key(set)) {
                    (false, true) => {
                        if let Some(s) = self.sets.get(set) {
                            d.sets_defined.insert(*set, Arc::clone(&s.set));
                        }
                    }
                    (true, false) => {
                        d.sets_dropped.insert(*set);
                    }
                    // Member changes of a set the node keeps go with the shared set changes.
                    _ => {}
                }
            }
            if !d.is_empty() {
                out.nodes.insert(Arc::clone(name), d);
            }
        }
        for (set, members) in journals {
            let Some(state) = self.sets.get(&set) else { continue };
            let mut nodes: Vec<NodeName> = state
                .nodes
                .keys()
                .filter(|node| **node != UNPLACED)
                // A node that just got the set got it whole.
                .filter(|node| touched.get(node).and_then(|t| t.sets.get(&set)) != Some(&false))
                .filter_map(|node| self.nodes[*node].name.clone())
                .collect();
            if nodes.is_empty() {
                continue;
            }
            nodes.sort_unstable();
            out.sets.insert(set, SharedSetChange { members, nodes });
        }
        out
    }

    fn end_batch(&mut self) {
        self.touched.clear();
        self.journals.clear();
        for set in std::mem::take(&mut self.unreferenced) {
            if self.sets.get(&set).is_some_and(|s| s.groups == 0) {
                self.drop_set(set);
            }
        }
    }

    fn drop_set(&mut self, set: SetId) {
        let Some(state) = self.sets.remove(&set) else { return };
        debug_assert!(state.nodes.is_empty());
        let selection = match &state.set.definition {
            SetDefinition::Addresses(s) | SetDefinition::NamedPorts { selection: s, .. } => s,
        };
        match selection {
            Selection::All | Selection::Cidr { .. } => {
                self.sets_everywhere.remove(&set);
            }
            Selection::GroupMembers { group } => remove_from(&mut self.sets_by_group, group, &set),
            Selection::Selector { project, projects: None, .. } => {
                remove_from(&mut self.sets_by_project, project, &set)
            }
            Selection::Selector { projects: Some(selector), .. } => {
                let Some(ps) = self.project_selectors.get_mut(selector) else { return };
                ps.sets.remove(&set);
                if ps.sets.is_empty()
                    && let Some((key, ps)) = self.project_selectors.remove_entry(selector)
                {
                    for name in &ps.projects {
                        remove_from(&mut self.project_selectors_by_project, name, &key);
                    }
                }
            }
        }
    }
}

/// The (project, name) of each group a port's explicit references make it a member of (only
/// groups of its own project: `weft_model::member_group`).
fn refs_of(project: &str, explicit: Option<&[String]>) -> BTreeSet<GroupKey> {
    explicit
        .into_iter()
        .flatten()
        .filter_map(|r| weft_model::member_group(project, r).ok().map(|name| (project.to_string(), name.to_string())))
        .collect()
}

/// Moves a node's count of one group, policy or set by `delta`: `Some(true)` when it entered
/// the node's span (the count left zero), `Some(false)` when it left (the count reached zero).
fn count_add<K: Ord + Copy>(counts: &mut BTreeMap<K, u32>, key: K, delta: i32) -> Option<bool> {
    let count = counts.entry(key).or_insert(0);
    let before = *count;
    *count = count.saturating_add_signed(delta);
    let after = *count;
    if after == 0 {
        counts.remove(&key);
    }
    ((before == 0) != (after == 0)).then_some(after > 0)
}

/// Records that a group or policy entered or left a node's span, and gives the sets it names
/// (which enter or leave with it).
fn enter_or_leave(nodes: &mut FastSet<NodeId>, node: NodeId, entered: bool, sets: &[SetId]) -> Vec<SetId> {
    if entered {
        nodes.insert(node);
    } else {
        nodes.remove(&node);
    }
    sets.to_vec()
}

fn remove_from<K, Q, V>(index: &mut FastMap<K, BTreeSet<V>>, key: &Q, value: &V)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Ord,
{
    if let Some(values) = index.get_mut(key) {
        values.remove(value);
        if values.is_empty() {
            index.remove(key);
        }
    }
}

/// What one port contributes to a set (given that the set's selection picks it).
fn members_of(definition: &SetDefinition, ips: &[IpAddr], named_ports: &BTreeMap<String, NamedPort>) -> Vec<Member> {
    let mut out = Vec::new();
    members_into(definition, ips, named_ports, &mut out);
    out
}

fn members_into(
    definition: &SetDefinition,
    ips: &[IpAddr],
    named_ports: &BTreeMap<String, NamedPort>,
    out: &mut Vec<Member>,
) {
    let in_selection = |a: &IpAddr| match definition {
        SetDefinition::Addresses(Selection::Cidr { cidr, except })
        | SetDefinition::NamedPorts { selection: Selection::Cidr { cidr, except }, .. } => {
            cidr::contains(cidr, except, a)
        }
        _ => true,
    };
    match definition {
        SetDefinition::Addresses(Selection::Cidr { .. }) => {}
        SetDefinition::Addresses(_) => out.extend(ips.iter().copied().map(Member::Address)),
        SetDefinition::NamedPorts { name, protocol, .. } => {
            if let Some(np) = named_ports.get(name)
                && np.protocol.number() == Some(*protocol)
            {
                out.extend(ips.iter().copied().filter(in_selection).map(|a| Member::Pair(a, np.port as u16)));
            }
        }
    }
}

fn add_member(state: &mut SetState, member: Member, journal: Option<&mut MemberDelta>) {
    let present = match (&state.set.members, member) {
        (SetMembers::Addresses(a), Member::Address(x)) => a.contains(&x),
        (SetMembers::Pairs(p), Member::Pair(x, n)) => p.contains(&(x, n)),
        _ => return,
    };
    if present {
        *state.extra.entry(member).or_insert(0) += 1;
        return;
    }
    match (&mut Arc::make_mut(&mut state.set).members, member) {
        (SetMembers::Addresses(a), Member::Address(x)) => {
            a.insert(x);
        }
        (SetMembers::Pairs(p), Member::Pair(x, n)) => {
            p.insert((x, n));
        }
        _ => {}
    }
    if let Some(j) = journal {
        match member {
            Member::Address(x) => {
                if !j.removed_addresses.remove(&x) {
                    j.added_addresses.insert(x);
                }
            }
            Member::Pair(x, n) => {
                if !j.removed_pairs.remove(&(x, n)) {
                    j.added_pairs.insert((x, n));
                }
            }
        }
    }
}

fn remove_member(state: &mut SetState, member: Member, journal: Option<&mut MemberDelta>) {
    if let Some(extra) = state.extra.get_mut(&member) {
        *extra -= 1;
        if *extra == 0 {
            state.extra.remove(&member);
        }
        return;
    }
    let removed = match (&mut Arc::make_mut(&mut state.set).members, member) {
        (SetMembers::Addresses(a), Member::Address(x)) => a.remove(&x),
        (SetMembers::Pairs(p), Member::Pair(x, n)) => p.remove(&(x, n)),
        _ => false,
    };
    if let (true, Some(j)) = (removed, journal) {
        match member {
            Member::Address(x) => {
                if !j.added_addresses.remove(&x) {
                    j.removed_addresses.insert(x);
                }
            }
            Member::Pair(x, n) => {
                if !j.added_pairs.remove(&(x, n)) {
                    j.removed_pairs.insert((x, n));
                }
            }
        }
    }
}
