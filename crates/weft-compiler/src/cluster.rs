//! The compiler's input: the projects, ports and security groups it has been told about, kept
//! by id with name indexes, and the one question every other part asks of them — which groups
//! apply to a port.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;
use weft_model::{
    ClusterPolicy, Direction, Kind, Labels, NamedPort, ObjectRef, Port, Project, Resource, SecurityGroup,
};

use crate::fast::{FastMap, FastSet};

/// One change of the input, with the revision it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    UpsertProject(Project),
    DeleteProject(Uuid),
    UpsertPort(Port),
    DeletePort(Uuid),
    UpsertGroup(SecurityGroup),
    DeleteGroup(Uuid),
    /// A tiered cluster policy (DESIGN.md §11).
    UpsertClusterPolicy(ClusterPolicy),
    DeleteClusterPolicy(Uuid),
}

impl Change {
    /// The compiler's view of an object written; `None` for what does not affect policy
    /// (networks).
    pub fn upsert(resource: Resource) -> Option<Change> {
        match resource {
            Resource::Project(p) => Some(Change::UpsertProject(p)),
            Resource::Port(p) => Some(Change::UpsertPort(p)),
            Resource::SecurityGroup(g) => Some(Change::UpsertGroup(g)),
            Resource::ClusterPolicy(p) => Some(Change::UpsertClusterPolicy(p)),
            Resource::VirtualNetwork(_) => None,
        }
    }

    /// The compiler's view of an object deleted.
    pub fn delete(kind: Kind, id: Uuid) -> Option<Change> {
        match kind {
            Kind::Project => Some(Change::DeleteProject(id)),
            Kind::Port => Some(Change::DeletePort(id)),
            Kind::SecurityGroup => Some(Change::DeleteGroup(id)),
            Kind::ClusterPolicy => Some(Change::DeleteClusterPolicy(id)),
            Kind::VirtualNetwork => None,
        }
    }
}

/// What the compiler cannot take as given — a reference that does not resolve (yet), a claim
/// another object holds too: reported, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Dangling {
    /// A port names a group that is not known.
    PortGroup { port: Uuid, group: String },
    /// A port names a group of another project: it is not made a member (a port may be a
    /// member only of its own project's groups; the API refuses such a write, so this is a row
    /// written before that rule, or by hand).
    ForeignGroup { port: Uuid, group: String },
    /// A rule's remote names a group that is not known.
    RuleGroup { group: Uuid, rule: Uuid, remote: String },
    /// An object's project is not known.
    Project { object: Uuid, project: String },
    /// An upsert without an id: ignored.
    NoId { kind: &'static str, name: String },
    /// Two or more ports name one address: it is dispatched to none of them
    /// (`PortPolicy::refused_addresses`).
    ContestedAddress { address: std::net::IpAddr, ports: Vec<Uuid> },
}

/// A port as the compiler keeps it: what policy, flows and reach read of it, and no more
/// (annotations, the network, the MAC and the timestamps stay in the store and the API's
/// cache). What ports have alike — their project, node, labels and named ports: the pods of
/// one deployment — is held once and shared ([`Interner`]): at 100,000 pods the model's
/// `Port` took 196 MiB here, most of it label maps (`weft bench memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    pub name: Box<str>,
    pub project: Arc<str>,
    pub labels: Arc<Labels>,
    pub node: Option<Arc<str>>,
    pub ips: Box<[IpAddr]>,
    /// The host-side interface it names, if it names one (`PortRecord::effective_interface`).
    pub interface: Option<Box<str>>,
    pub instance: Option<Box<str>>,
    pub security_groups: Option<Box<[String]>>,
    pub named_ports: Arc<BTreeMap<String, NamedPort>>,
}

impl PortRecord {
    /// The host-side interface the port is bound to ([`Port::effective_interface`]).
    pub fn effective_interface(&self) -> String {
        match &self.interface {
            Some(named) => named.to_string(),
            None => weft_model::default_interface(&self.project, &self.name),
        }
    }

    /// The port as the model has it, with what the compiler keeps (no annotations, network,
    /// MAC or timestamps): for tests and benchmarks that change a port they read here.
    pub fn to_port(&self, id: Uuid) -> Port {
        Port {
            id: Some(id),
            name: self.name.to_string(),
            project: self.project.to_string(),
            labels: Labels::clone(&self.labels),
            node: self.node.as_deref().map(str::to_string),
            ips: self.ips.to_vec(),
            interface: self.interface.as_deref().map(str::to_string),
            instance: self.instance.as_deref().map(str::to_string),
            security_groups: self.security_groups.as_deref().map(<[String]>::to_vec),
            named_ports: BTreeMap::clone(&self.named_ports),
            ..Port::default()
        }
    }
}

/// One shared copy of each distinct value: a table of them, from which the values no one
/// holds any more are swept whenever it has doubled since the last sweep.
#[derive(Debug)]
pub(crate) struct Interner<T: ?Sized> {
    shared: FastSet<Arc<T>>,
    swept_at: usize,
}

impl<T: ?Sized> Clone for Interner<T> {
    fn clone(&self) -> Self {
        Interner { shared: self.shared.clone(), swept_at: self.swept_at }
    }
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner { shared: FastSet::default(), swept_at: 0 }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    /// The shared copy of `value`, made by `make` when there is none.
    pub(crate) fn get(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        if let Some(shared) = self.shared.get(value) {
            return Arc::clone(shared);
        }
        if self.shared.len() >= 2 * self.swept_at + 1024 {
            self.shared.retain(|v| Arc::strong_count(v) > 1);
            self.swept_at = self.shared.len();
        }
        let shared = make();
        self.shared.insert(Arc::clone(&shared));
        shared
    }
}

/// What ports share, interned ([`PortRecord`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct PortInterners {
    names: Interner<str>,
    labels: Interner<Labels>,
    named_ports: Interner<BTreeMap<String, NamedPort>>,
}

impl PortInterners {
    pub(crate) fn record(&mut self, port: Port) -> PortRecord {
        let Port { name, project, labels, node, ips, interface, instance, security_groups, named_ports, .. } = port;
        PortRecord {
            project: self.names.get(&project, || Arc::from(project.as_str())),
            node: node.as_deref().map(|n| self.names.get(n, || Arc::from(n))),
            labels: self.labels.get(&labels, || Arc::new(labels.clone())),
            named_ports: self.named_ports.get(&named_ports, || Arc::new(named_ports.clone())),
            name: name.into(),
            ips: ips.into(),
            interface: interface.map(Into::into),
            instance: instance.map(Into::into),
            security_groups: security_groups.map(Into::into),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub(crate) projects: BTreeMap<Uuid, Project>,
    pub(crate) project_by_name: BTreeMap<String, Uuid>,
    pub(crate) ports: BTreeMap<Uuid, PortRecord>,
    pub(crate) interners: PortInterners,
    pub(crate) groups: BTreeMap<Uuid, SecurityGroup>,
    pub(crate) group_by_name: BTreeMap<(String, String), Uuid>,
    pub(crate) cluster_policies: BTreeMap<Uuid, ClusterPolicy>,
    pub(crate) revision: i64,
    /// Upserts that could not be taken (no id).
    pub(crate) rejected: Vec<Dangling>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision of the last change applied.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn apply(&mut self, revision: i64, change: Change) {
        self.revision = self.revision.max(revision);
        match change {
            Change::UpsertProject(p) => {
                let Some(id) = p.id else {
                    self.rejected.push(Dangling::NoId { kind: "project", name: p.name });
                    return;
                };
                if let Some(old) = self.projects.get(&id) {
                    self.project_by_name.remove(&old.name);
                }
                self.project_by_name.insert(p.name.clone(), id);
                self.projects.insert(id, p);
            }
            Change::DeleteProject(id) => {
                if let Some(old) = self.projects.remove(&id) {
                    self.project_by_name.remove(&old.name);
                }
            }
            Change::UpsertPort(p) => {
                let Some(id) = p.id else {
                    self.rejected.push(Dangling::NoId { kind: "port", name: p.name });
                    return;
                };
                let record = self.interners.record(p);
                self.ports.insert(id, record);
            }
            Change::DeletePort(id) => {
                self.ports.remove(&id);
            }
            Change::UpsertGroup(g) => {
                let Some(id) = g.id else {
                    self.rejected.push(Dangling::NoId { kind: "security-group", name: g.name });
                    return;
                };
                if let Some(old) = self.groups.get(&id) {
                    self.group_by_name.remove(&(old.project.clone(), old.name.clone()));
                }
                self.group_by_name.insert((g.project.clone(), g.name.clone()), id);
                self.groups.insert(id, g);
            }
            Change::DeleteGroup(id) => {
                if let Some(old) = self.groups.remove(&id) {
                    self.group_by_name.remove(&(old.project, old.name));
                }
            }
            Change::UpsertClusterPolicy(policy) => {
                let Some(id) = policy.id else {
                    self.rejected.push(Dangling::NoId { kind: "cluster-policy", name: policy.name });
                    return;
                };
                self.cluster_policies.insert(id, policy);
            }
            Change::DeleteClusterPolicy(id) => {
                self.cluster_policies.remove(&id);
            }
        }
    }

    /// The tiered policies whose subject selects `port` (a project not known has no labels),
    /// in the order they decide: admin before baseline, then by priority, then by name
    /// (DESIGN.md §11). The reference evaluator's reading; the compilers choose through
    /// [`PolicyChooser`] (the full compile) and [`PolicyLists`] (the incremental one).
    pub fn cluster_policies_of(&self, port: &PortRecord) -> Vec<&ClusterPolicy> {
        let no_labels = Labels::new();
        let project_labels = self.project_by_name(&port.project).map_or(&no_labels, |p| &p.labels);
        let mut out: Vec<&ClusterPolicy> =
            self.cluster_policies.values().filter(|c| c.subject.selects(&port.labels, project_labels)).collect();
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        out
    }

    /// The tiered policies in the order they decide, with their subjects' project selectors
    /// told apart once, borrowed: what the full compile reads ([`PolicyChooser`]).
    pub(crate) fn policy_chooser(&self) -> PolicyChooser<'_> {
        let mut ordered: Vec<&ClusterPolicy> = self.cluster_policies.values().collect();
        ordered.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut selectors: Vec<&weft_model::LabelSelector> = Vec::new();
        let mut policies = Vec::with_capacity(ordered.len());
        for p in ordered {
            let Some(id) = p.id else { continue };
            let index = match selectors.iter().position(|s| **s == p.subject.projects) {
                Some(i) => i,
                None => {
                    selectors.push(&p.subject.projects);
                    selectors.len() - 1
                }
            };
            policies.push((id, index, &p.subject.ports));
        }
        PolicyChooser { cluster: self, policies, selectors }
    }

    pub fn cluster_policy(&self, id: &Uuid) -> Option<&ClusterPolicy> {
        self.cluster_policies.get(id)
    }

    pub fn port(&self, id: &Uuid) -> Option<&PortRecord> {
        self.ports.get(id)
    }

    pub fn group(&self, id: &Uuid) -> Option<&SecurityGroup> {
        self.groups.get(id)
    }

    pub fn ports(&self) -> impl Iterator<Item = (&Uuid, &PortRecord)> {
        self.ports.iter()
    }

    pub fn project_by_name(&self, name: &str) -> Option<&Project> {
        self.project_by_name.get(name).and_then(|id| self.projects.get(id))
    }

    /// A group reference (`name` or `project/name`) made from `own_project`.
    pub fn resolve_group(&self, own_project: &str, reference: &str) -> Option<Uuid> {
        let r = ObjectRef::parse(reference).ok()?;
        self.group_by_name.get(&(r.project_or(own_project).to_string(), r.name.to_string())).copied()
    }

    /// The group a port's explicit reference makes it a member of: only one of its own
    /// project's (`weft_model::member_group`).
    pub fn resolve_member_group(&self, own_project: &str, reference: &str) -> Option<Uuid> {
        let name = weft_model::member_group(own_project, reference).ok()?;
        self.group_by_name.get(&(own_project.to_string(), name.to_string())).copied()
    }

    /// What is wrong with a port's explicit reference, if anything.
    pub fn port_reference_problem(&self, port: Uuid, own_project: &str, reference: &str) -> Option<Dangling> {
        if weft_model::member_group(own_project, reference).is_err() {
            Some(Dangling::ForeignGroup { port, group: reference.to_string() })
        } else if self.resolve_member_group(own_project, reference).is_none() {
            Some(Dangling::PortGroup { port, group: reference.to_string() })
        } else {
            None
        }
    }

    /// DESIGN.md §4's applied(P): the groups P names, plus every group of P's project whose
    /// selector matches P's labels. Unknown names are left out (and reported by the compiler).
    pub fn applied(&self, port: &PortRecord) -> BTreeSet<Uuid> {
        self.applied_to(&port.project, &port.labels, port.security_groups.as_deref())
    }

    /// applied() for any port of `project` with these labels and explicit groups.
    pub fn applied_to(&self, project: &str, labels: &Labels, explicit: Option<&[String]>) -> BTreeSet<Uuid> {
        let mut applied: BTreeSet<Uuid> = explicit
            .into_iter()
            .flatten()
            .filter_map(|reference| self.resolve_member_group(project, reference))
            .collect();
        let from = (project.to_string(), String::new());
        for ((group_project, _), id) in self.group_by_name.range(from..) {
            if group_project != project {
                break;
            }
            if let Some(selector) = self.groups.get(id).and_then(|g| g.selector.as_ref())
                && selector.matches(labels)
            {
                applied.insert(*id);
            }
        }
        applied
    }

    /// Whether group `id` is in applied_to(project, labels, explicit), without computing the
    /// rest of it.
    pub fn applies(&self, id: Uuid, project: &str, labels: &Labels, explicit: Option<&[String]>) -> bool {
        let Some(group) = self.groups.get(&id) else { return false };
        let indexed = || self.group_by_name.get(&(group.project.clone(), group.name.clone())) == Some(&id);
        let selected = group.project == project && group.selector.as_ref().is_some_and(|s| s.matches(labels));
        (selected && indexed())
            || explicit.into_iter().flatten().any(|reference| self.resolve_member_group(project, reference) == Some(id))
    }

    /// The addresses two or more ports name, with those ports (sorted).
    pub fn contested_addresses(&self) -> std::collections::BTreeMap<std::net::IpAddr, Vec<Uuid>> {
        // Every (address, port) sorted, then the runs of one address: a fraction of the time
        // and memory of a map of every address (100,000 ports: 3 MiB for a moment).
        let mut claims: Vec<(std::net::IpAddr, Uuid)> =
            self.ports.iter().flat_map(|(id, port)| port.ips.iter().map(move |ip| (*ip, *id))).collect();
        claims.sort_unstable();
        let mut contested = BTreeMap::new();
        for run in claims.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
            contested.insert(run[0].0, run.iter().map(|(_, id)| *id).collect());
        }
        contested
    }

    /// The groups of applied(P) that isolate direction `d`.
    pub fn isolating(&self, applied: &BTreeSet<Uuid>, d: Direction) -> Vec<Uuid> {
        applied.iter().copied().filter(|g| self.groups.get(g).is_some_and(|g| g.policy_types.contains(&d))).collect()
    }
}

/// The full compile's choosing of tiered policies: borrowed from the cluster and kept for one
/// run, so that each project's candidates cost no copies (the full compile reads every
/// project once; [`PolicyLists`] owns what it keeps between changes, and measured 0.03x more
/// of the compile in its place).
pub(crate) struct PolicyChooser<'a> {
    cluster: &'a Cluster,
    /// (policy, its project selector's index, its ports selector), in the order they decide.
    policies: Vec<(Uuid, usize, &'a weft_model::LabelSelector)>,
    selectors: Vec<&'a weft_model::LabelSelector>,
}

impl<'a> PolicyChooser<'a> {
    pub(crate) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies whose project selector matches `project` (a project not known has no
    /// labels), in order, with their ports selectors.
    pub(crate) fn of_project(&self, project: &str) -> Vec<(Uuid, &'a weft_model::LabelSelector)> {
        let no_labels = Labels::new();
        let labels = self.cluster.project_by_name(project).map_or(&no_labels, |p| &p.labels);
        let matched: Vec<bool> = self.selectors.iter().map(|s| s.matches(labels)).collect();
        self.policies.iter().filter(|(_, s, _)| matched[*s]).map(|(id, _, ports)| (*id, *ports)).collect()
    }
}

/// Chooses ports' tiered policies (DESIGN.md §11): a cluster has few policies (and fewer
/// distinct project selectors among their subjects) and many classes of ports, so each
/// project selector is matched once per project, each class reads only its project's
/// candidates, and each distinct list exists once, shared by the classes that have it. The
/// incremental compiler keeps one, cleared when a policy changes (a project's choice, when
/// its labels do).
#[derive(Debug, Default)]
pub(crate) struct PolicyLists {
    order: Option<PolicyOrder>,
    choices: FastMap<String, Arc<ProjectChoice>>,
    lists: Interner<Vec<Uuid>>,
}

/// The tiered policies in the order they decide, with their subjects' project selectors told
/// apart: (policy, its project selector's index, its ports selector), and the selectors.
#[derive(Debug)]
struct PolicyOrder {
    policies: Vec<(Uuid, usize, Arc<weft_model::LabelSelector>)>,
    selectors: Vec<weft_model::LabelSelector>,
}

/// A project's tiered policies: those whose project selector matches it, in order, and, when
/// they select every port of it (a namespaces subject), the one list all its classes share.
#[derive(Debug)]
struct ProjectChoice {
    candidates: Vec<(Uuid, Arc<weft_model::LabelSelector>)>,
    every_port: Option<Arc<Vec<Uuid>>>,
}

impl PolicyOrder {
    fn of(cluster: &Cluster) -> PolicyOrder {
        let chooser = cluster.policy_chooser();
        PolicyOrder {
            policies: chooser.policies.iter().map(|(id, s, ports)| (*id, *s, Arc::new((*ports).clone()))).collect(),
            selectors: chooser.selectors.iter().map(|s| (*s).clone()).collect(),
        }
    }
}

impl PolicyLists {
    /// Forgets everything: a policy changed.
    pub(crate) fn clear(&mut self) {
        *self = PolicyLists::default();
    }

    /// Forgets a project's choice: its labels changed.
    pub(crate) fn forget_project(&mut self, project: &str) {
        self.choices.remove(project);
    }

    /// The tiered policies that select a port with `labels` in `project` (a project not known
    /// has no labels), in order.
    pub(crate) fn list(&mut self, cluster: &Cluster, project: &str, labels: &Labels) -> Arc<Vec<Uuid>> {
        let order = self.order.get_or_insert_with(|| PolicyOrder::of(cluster));
        if order.policies.is_empty() {
            return self.lists.get(&Vec::new(), Arc::default);
        }
        let choice = match self.choices.get(project) {
            Some(choice) => Arc::clone(choice),
            None => {
                let no_labels = Labels::new();
                let project_labels = cluster.project_by_name(project).map_or(&no_labels, |p| &p.labels);
                let matched: Vec<bool> = order.selectors.iter().map(|s| s.matches(project_labels)).collect();
                let candidates: Vec<(Uuid, Arc<weft_model::LabelSelector>)> = order
                    .policies
                    .iter()
                    .filter(|(_, s, _)| matched[*s])
                    .map(|(id, _, ports)| (*id, Arc::clone(ports)))
                    .collect();
                let every_port = candidates.iter().all(|(_, ports)| ports.is_empty()).then(|| {
                    let all: Vec<Uuid> = candidates.iter().map(|(id, _)| *id).collect();
                    self.lists.get(&all, || Arc::new(all.clone()))
                });
                let choice = Arc::new(ProjectChoice { candidates, every_port });
                self.choices.insert(project.to_string(), Arc::clone(&choice));
                choice
            }
        };
        if let Some(all) = &choice.every_port {
            return Arc::clone(all);
        }
        let list: Vec<Uuid> =
            choice.candidates.iter().filter(|(_, ports)| ports.matches(labels)).map(|(id, _)| *id).collect();
        self.lists.get(&list, || Arc::new(list.clone()))
    }
}
