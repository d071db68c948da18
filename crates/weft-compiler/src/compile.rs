//! Compiling a cluster from scratch into every node's span. The incremental compiler must give
//! exactly what this gives; this is also what it is tested against.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;
use weft_model::{Direction, PolicyRemote, PortMatch, Remote, SecurityGroup, Tier, TieredRule};

use crate::cidr;
use crate::cluster::{Cluster, Dangling, PortRecord};
use crate::compiled::{
    AddressSet, CompiledGroup, CompiledPolicy, CompiledRule, CompiledTieredRule, Family, Isolation, L4Match, NodeSpan,
    PortPolicy, RemoteMatch, Selection, SetDefinition, SetId, SetMembers, TieredMatch,
};
use crate::fast::{FastMap, FastSet};

/// Every node's span, and what did not resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub spans: BTreeMap<String, NodeSpan>,
    /// Ports bound to no node: compiled so that explain can answer for them, sent nowhere.
    pub unplaced: NodeSpan,
    pub dangling: Vec<Dangling>,
}

impl Compiled {
    /// The span holding a port, and its policy.
    pub fn port(&self, id: &Uuid) -> Option<(&NodeSpan, &PortPolicy)> {
        self.spans
            .values()
            .chain(std::iter::once(&self.unplaced))
            .find_map(|span| span.ports.get(id).map(|p| (span, p)))
    }
}

/// A group compiled once, with the sets its rules name.
pub(crate) struct GroupOutput {
    pub(crate) group: Arc<CompiledGroup>,
    pub(crate) sets: Vec<(SetId, SetDefinition)>,
}

/// A tiered policy compiled once, with the sets its rules name.
pub(crate) struct PolicyOutput {
    pub(crate) policy: Arc<CompiledPolicy>,
    pub(crate) sets: Vec<(SetId, SetDefinition)>,
}

/// Ports of one project with the same labels and the same explicit groups have the same
/// applied groups and tiered policies: computed once per class, shared by its ports (a dense
/// cluster has few).
struct Class {
    applied: BTreeSet<Uuid>,
    ingress: Isolation,
    egress: Isolation,
    policies: Arc<Vec<Uuid>>,
    ports: Vec<Uuid>,
}

/// A project's tiered policies: those whose project selector matches it, in order, and
/// whether they select every port of it (a namespaces subject: its classes share one list).
struct ProjectPolicies<'a> {
    candidates: Vec<(Uuid, &'a weft_model::LabelSelector)>,
    every_port: bool,
    all: Arc<Vec<Uuid>>,
}

/// A node's ports (id, port, class) and the classes they fall in.
type NodePorts<'a> = (Vec<(Uuid, &'a PortRecord, usize)>, BTreeSet<usize>);

/// A node's groups, sets and tiered policies, shared by every node whose ports fall in the
/// same classes.
type Tables = (
    Arc<BTreeMap<Uuid, Arc<CompiledGroup>>>,
    Arc<BTreeMap<SetId, Arc<AddressSet>>>,
    Arc<BTreeMap<Uuid, Arc<CompiledPolicy>>>,
);

pub fn compile(cluster: &Cluster) -> Compiled {
    let mut out = Compiled { dangling: cluster.rejected.clone(), ..Compiled::default() };
    let mut class_of: FastMap<(&str, &weft_model::Labels, Option<&[String]>), usize> = FastMap::default();
    let mut classes: Vec<Class> = Vec::new();
    let mut by_node: BTreeMap<Option<&str>, NodePorts> = BTreeMap::new();
    // What Cluster::applied scans for each port, gathered once: each project's groups that
    // have a selector (by the name index, as applied() reads them), and the project names.
    let mut selecting: FastMap<&str, Vec<(Uuid, &weft_model::LabelSelector)>> = FastMap::default();
    for ((project, _), id) in &cluster.group_by_name {
        if let Some(selector) = cluster.group(id).and_then(|g| g.selector.as_ref()) {
            selecting.entry(project.as_str()).or_default().push((*id, selector));
        }
    }
    let projects: FastSet<&str> = cluster.project_by_name.keys().map(String::as_str).collect();
    // Tiered policies: each project's candidates once, each distinct list shared by its classes.
    let chooser = cluster.policy_chooser();
    let mut project_policies: FastMap<&str, ProjectPolicies> = FastMap::default();
    let mut policy_lists: FastMap<Vec<Uuid>, Arc<Vec<Uuid>>> = FastMap::default();
    let contested = cluster.contested_addresses();
    for (address, ports) in &contested {
        out.dangling.push(Dangling::ContestedAddress { address: *address, ports: ports.clone() });
    }
    for (id, port) in cluster.ports() {
        for reference in port.security_groups.iter().flatten() {
            out.dangling.extend(cluster.port_reference_problem(*id, &port.project, reference));
        }
        if !projects.contains(&*port.project) {
            out.dangling.push(Dangling::Project { object: *id, project: port.project.to_string() });
        }
        let key = (&*port.project, &*port.labels, port.security_groups.as_deref());
        let class = *class_of.entry(key).or_insert_with(|| {
            let mut applied: BTreeSet<Uuid> = port
                .security_groups
                .iter()
                .flatten()
                .filter_map(|reference| cluster.resolve_member_group(&port.project, reference))
                .collect();
            let selected = selecting.get(&*port.project).into_iter().flatten();
            applied.extend(selected.filter(|(_, s)| s.matches(&port.labels)).map(|(g, _)| *g));
            let (ingress, egress) =
                (isolation(cluster, &applied, Direction::Ingress), isolation(cluster, &applied, Direction::Egress));
            let policies = if chooser.is_empty() {
                Arc::default()
            } else {
                let of_project = project_policies.entry(&*port.project).or_insert_with(|| {
                    let candidates = chooser.of_project(&port.project);
                    let every_port = candidates.iter().all(|(_, ports)| ports.is_empty());
                    let list: Vec<Uuid> = candidates.iter().map(|(id, _)| *id).collect();
                    let all = Arc::clone(policy_lists.entry(list).or_insert_with_key(|list| Arc::new(list.clone())));
                    ProjectPolicies { candidates, every_port, all }
                });
                if of_project.every_port {
                    Arc::clone(&of_project.all)
                } else {
                    let list: Vec<Uuid> = of_project
                        .candidates
                        .iter()
                        .filter(|(_, ports)| ports.matches(&port.labels))
                        .map(|(id, _)| *id)
                        .collect();
                    Arc::clone(policy_lists.entry(list).or_insert_with_key(|list| Arc::new(list.clone())))
                }
            };
            classes.push(Class { applied, ingress, egress, policies, ports: Vec::new() });
            classes.len() - 1
        });
        classes[class].ports.push(*id);
        let node = by_node.entry(port.node.as_deref()).or_default();
        node.0.push((*id, port, class));
        node.1.insert(class);
    }
    // The lookups that built the classes are done with: their memory goes before the spans'
    // comes (it is a tenth of the peak at 100,000 ports).
    drop(class_of);
    drop(selecting);
    drop(projects);
    drop(project_policies);
    drop(policy_lists);
    let mut members: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    for (c, class) in classes.iter().enumerate() {
        for g in &class.applied {
            members.entry(*g).or_default().push(c);
        }
    }
    let index = Index::new(cluster, &classes, &members);
    let mut groups: BTreeMap<Uuid, GroupOutput> = BTreeMap::new();
    let mut policies: BTreeMap<Uuid, PolicyOutput> = BTreeMap::new();
    let mut sets: BTreeMap<SetId, Arc<AddressSet>> = BTreeMap::new();
    let mut tables: FastMap<Vec<usize>, Tables> = FastMap::default();
    for (node, (ports, node_classes)) in by_node {
        let key: Vec<usize> = node_classes.into_iter().collect();
        let (group_table, set_table, policy_table) = tables
            .entry(key)
            .or_insert_with_key(|key| {
                let mut group_table = BTreeMap::new();
                let mut set_table = BTreeMap::new();
                let mut policy_table = BTreeMap::new();
                let mut seen_lists: FastSet<*const Vec<Uuid>> = FastSet::default();
                let mut define =
                    |set_table: &mut BTreeMap<SetId, Arc<AddressSet>>, set_id: SetId, definition: &SetDefinition| {
                        set_table.entry(set_id).or_insert_with(|| {
                            Arc::clone(sets.entry(set_id).or_insert_with(|| {
                                Arc::new(AddressSet {
                                    definition: definition.clone(),
                                    members: index.members_of(definition),
                                })
                            }))
                        });
                    };
                let isolating = |i: &'_ Isolation| match i {
                    Isolation::Isolated(groups) => Arc::clone(groups),
                    Isolation::Open => Arc::default(),
                };
                for class in key {
                    let class = &classes[*class];
                    let (ingress, egress) = (isolating(&class.ingress), isolating(&class.egress));
                    for &g in ingress.iter().chain(egress.iter()) {
                        if group_table.contains_key(&g) {
                            continue;
                        }
                        let compiled = groups.entry(g).or_insert_with(|| {
                            let (output, dangling) = compile_group(cluster, g);
                            out.dangling.extend(dangling);
                            output
                        });
                        group_table.insert(g, Arc::clone(&compiled.group));
                        for (set_id, definition) in &compiled.sets {
                            define(&mut set_table, *set_id, definition);
                        }
                    }
                    // Classes share their lists: each distinct one is read once per table.
                    if !seen_lists.insert(Arc::as_ptr(&class.policies)) {
                        continue;
                    }
                    for &p in class.policies.iter() {
                        if policy_table.contains_key(&p) {
                            continue;
                        }
                        let compiled = policies.entry(p).or_insert_with(|| compile_policy(cluster, p));
                        policy_table.insert(p, Arc::clone(&compiled.policy));
                        for (set_id, definition) in &compiled.sets {
                            define(&mut set_table, *set_id, definition);
                        }
                    }
                }
                (Arc::new(group_table), Arc::new(set_table), Arc::new(policy_table))
            })
            .clone();
        let span = NodeSpan {
            ports: ports
                .iter()
                .map(|(id, port, class)| (*id, port_policy(port, &classes[*class], &contested)))
                .collect(),
            groups: group_table,
            sets: set_table,
            policies: policy_table,
        };
        match node {
            Some(node) => {
                out.spans.insert(node.to_string(), span);
            }
            None => out.unplaced = span,
        }
    }
    out.dangling.sort();
    out.dangling.dedup();
    out
}

/// A port's isolation in direction `d`, given its applied groups.
pub(crate) fn isolation(cluster: &Cluster, applied: &BTreeSet<Uuid>, d: Direction) -> Isolation {
    let groups = cluster.isolating(applied, d);
    if groups.is_empty() { Isolation::Open } else { Isolation::Isolated(Arc::new(groups)) }
}

fn port_policy(port: &PortRecord, class: &Class, contested: &BTreeMap<std::net::IpAddr, Vec<Uuid>>) -> PortPolicy {
    let (addresses, refused_addresses) = split_claims(&port.ips, |a| contested.contains_key(a));
    PortPolicy {
        project: port.project.to_string(),
        name: port.name.to_string(),
        addresses,
        refused_addresses,
        interface: port.effective_interface(),
        instance: port.instance.as_deref().map(str::to_string),
        // Shared by the ports that define the same (the cluster holds one of each).
        named_ports: Arc::clone(&port.named_ports),
        ingress: class.ingress.clone(),
        egress: class.egress.clone(),
        policies: Arc::clone(&class.policies),
    }
}

/// A port's addresses: those it alone claims, and those another port claims too. Exactly
/// sized (100,000 ports each hold their list for the compiler's lifetime).
pub(crate) fn split_claims(ips: &[IpAddr], contested: impl Fn(&IpAddr) -> bool) -> (Vec<IpAddr>, Vec<IpAddr>) {
    if !ips.iter().any(&contested) {
        return (ips.to_vec(), Vec::new());
    }
    let (refused, own): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|a| contested(a));
    (own, refused)
}

fn family(rule: &weft_model::Rule) -> Family {
    match rule.effective_ethertype() {
        weft_model::Ethertype::IPv4 => Family::V4,
        weft_model::Ethertype::IPv6 => Family::V6,
        weft_model::Ethertype::Any => Family::Both,
    }
}

/// Sorted, merged inclusive ranges.
fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// A group's rules for the directions it isolates. (A group that does not isolate a direction
/// has no say in it: Kubernetes ignores a policy's egress rules unless its policyTypes list
/// Egress.)
pub(crate) fn compile_group(cluster: &Cluster, id: Uuid) -> (GroupOutput, Vec<Dangling>) {
    let mut dangling = Vec::new();
    let mut sets = Vec::new();
    let Some(group) = cluster.group(&id) else {
        let empty = CompiledGroup { project: String::new(), name: String::new(), ingress: vec![], egress: vec![] };
        return (GroupOutput { group: Arc::new(empty), sets }, dangling);
    };
    let mut compiled =
        CompiledGroup { project: group.project.clone(), name: group.name.clone(), ingress: vec![], egress: vec![] };
    for rule in &group.rules {
        if !group.policy_types.contains(&rule.direction) {
            continue;
        }
        let rule_id = rule.id.unwrap_or_default();
        let Some(selection) = selection(cluster, group, rule) else {
            if let Remote::SecurityGroup { security_group } = &rule.remote {
                dangling.push(Dangling::RuleGroup { group: id, rule: rule_id, remote: security_group.clone() });
            }
            continue;
        };
        let base = |l4, remote| CompiledRule {
            rule: rule_id,
            family: family(rule),
            protocol: rule.protocol.number(),
            l4,
            remote,
        };
        let mut set_for = |definition: SetDefinition| {
            let set = SetId::of(&definition);
            sets.push((set, definition));
            set
        };
        let address_remote = |set_for: &mut dyn FnMut(SetDefinition) -> SetId| match &selection {
            Selection::All => RemoteMatch::Any,
            s => RemoteMatch::Set(set_for(SetDefinition::Addresses(s.clone()))),
        };
        let out = match rule.direction {
            Direction::Ingress => &mut compiled.ingress,
            Direction::Egress => &mut compiled.egress,
        };
        if let Some(icmp) = rule.icmp {
            let l4 = L4Match::Icmp { icmp_type: icmp.icmp_type as u8, code: icmp.code.map(|c| c as u8) };
            out.push(base(l4, address_remote(&mut set_for)));
            continue;
        }
        if rule.ports.is_empty() {
            out.push(base(L4Match::All, address_remote(&mut set_for)));
            continue;
        }
        let ranges: Vec<(u16, u16)> = rule
            .ports
            .iter()
            .filter_map(|p| match p {
                PortMatch::Single(n) => Some((*n as u16, *n as u16)),
                PortMatch::Range { from, to } => Some((*from as u16, *to as u16)),
                PortMatch::Named(_) => None,
            })
            .collect();
        if !ranges.is_empty() {
            out.push(base(L4Match::Ranges(merge_ranges(ranges)), address_remote(&mut set_for)));
        }
        let names: BTreeSet<&String> =
            rule.ports.iter().filter_map(|p| if let PortMatch::Named(n) = p { Some(n) } else { None }).collect();
        for name in names {
            match rule.direction {
                Direction::Ingress => out.push(base(L4Match::Named(name.clone()), address_remote(&mut set_for))),
                Direction::Egress => {
                    let protocol = rule.protocol.number().unwrap_or(6);
                    let set = set_for(SetDefinition::NamedPorts {
                        selection: selection.clone(),
                        name: name.clone(),
                        protocol,
                    });
                    out.push(base(L4Match::All, RemoteMatch::Pairs(set)));
                }
            }
        }
    }
    sets.sort();
    sets.dedup();
    (GroupOutput { group: Arc::new(compiled), sets }, dangling)
}

/// A tiered policy's rules, each an ordered entry with the alternatives it matches, and the
/// sets they name. A policy that is not known compiles to no rules.
pub(crate) fn compile_policy(cluster: &Cluster, id: Uuid) -> PolicyOutput {
    let mut sets = Vec::new();
    let Some(policy) = cluster.cluster_policies.get(&id) else {
        let empty =
            CompiledPolicy { name: String::new(), tier: Tier::Admin, priority: 0, ingress: vec![], egress: vec![] };
        return PolicyOutput { policy: Arc::new(empty), sets };
    };
    let mut set_for = |definition: SetDefinition| {
        let set = SetId::of(&definition);
        sets.push((set, definition));
        set
    };
    let mut rules = |rules: &[TieredRule], d: Direction| -> Vec<CompiledTieredRule> {
        rules
            .iter()
            .map(|r| CompiledTieredRule {
                name: r.name.clone(),
                action: r.action,
                matches: tiered_matches(r, d, &mut set_for),
            })
            .collect()
    };
    let ingress = rules(&policy.ingress, Direction::Ingress);
    let egress = rules(&policy.egress, Direction::Egress);
    let compiled =
        CompiledPolicy { name: policy.name.clone(), tier: policy.tier, priority: policy.priority, ingress, egress };
    sets.sort();
    sets.dedup();
    PolicyOutput { policy: Arc::new(compiled), sets }
}

/// Protocols a port name without a protocol can stand for: the named port's own decides.
const NAMED_PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// A tiered rule's alternatives: one per remote (per network of a networks remote) and
/// protocol entry. A port name on egress is resolved per destination, into a set of
/// (address, port) pairs of the remote's ports, for each protocol it can stand for.
fn tiered_matches(
    rule: &TieredRule,
    d: Direction,
    set_for: &mut dyn FnMut(SetDefinition) -> SetId,
) -> Vec<TieredMatch> {
    let mut out = Vec::new();
    for remote in &rule.remotes {
        let selections: Vec<Selection> = match remote {
            PolicyRemote::Selector { ports, projects } => vec![Selection::Selector {
                project: String::new(),
                ports: ports.clone(),
                projects: Some(projects.clone()),
            }],
            PolicyRemote::Networks { networks } => {
                networks.iter().map(|n| Selection::Cidr { cidr: *n, except: Vec::new() }).collect()
            }
        };
        for selection in selections {
            let addresses = |set_for: &mut dyn FnMut(SetDefinition) -> SetId| {
                RemoteMatch::Set(set_for(SetDefinition::Addresses(selection.clone())))
            };
            if rule.protocols.is_empty() {
                out.push(TieredMatch { protocol: None, l4: L4Match::All, remote: addresses(set_for) });
                continue;
            }
            for entry in &rule.protocols {
                let protocol = entry.protocol.and_then(|p| p.number());
                let l4 = match &entry.port {
                    None => L4Match::All,
                    Some(PortMatch::Single(n)) => L4Match::Ranges(vec![(*n as u16, *n as u16)]),
                    Some(PortMatch::Range { from, to }) => L4Match::Ranges(vec![(*from as u16, *to as u16)]),
                    Some(PortMatch::Named(name)) if d == Direction::Ingress => L4Match::Named(name.clone()),
                    Some(PortMatch::Named(name)) => {
                        let stands_for = protocol.map_or(NAMED_PORT_PROTOCOLS.to_vec(), |p| vec![p]);
                        for protocol in stands_for {
                            let set = set_for(SetDefinition::NamedPorts {
                                selection: selection.clone(),
                                name: name.clone(),
                                protocol,
                            });
                            out.push(TieredMatch {
                                protocol: Some(protocol),
                                l4: L4Match::All,
                                remote: RemoteMatch::Pairs(set),
                            });
                        }
                        continue;
                    }
                };
                out.push(TieredMatch { protocol, l4, remote: addresses(set_for) });
            }
        }
    }
    out
}

/// What a rule's remote selects; `None` when it names a group that is not known.
fn selection(cluster: &Cluster, group: &SecurityGroup, rule: &weft_model::Rule) -> Option<Selection> {
    Some(match &rule.remote {
        Remote::Any => Selection::All,
        Remote::Cidr { cidr, except } => {
            let mut except = except.clone();
            except.sort();
            Selection::Cidr { cidr: *cidr, except }
        }
        Remote::SecurityGroup { security_group } => {
            Selection::GroupMembers { group: cluster.resolve_group(&group.project, security_group)? }
        }
        Remote::Selector { ports, projects } => Selection::Selector {
            project: if projects.is_some() { String::new() } else { group.project.clone() },
            ports: ports.clone(),
            projects: projects.clone(),
        },
    })
}

/// Lookups the set computations need, built once per compile: ports by project, and the
/// projects each project selector matches (many rules share one namespaceSelector).
struct Index<'a> {
    cluster: &'a Cluster,
    classes: &'a [Class],
    /// The classes each group applies to.
    members: &'a BTreeMap<Uuid, Vec<usize>>,
    ports_by_project: BTreeMap<&'a str, Vec<&'a PortRecord>>,
    projects_matching: std::cell::RefCell<BTreeMap<weft_model::LabelSelector, Arc<Vec<String>>>>,
}

impl<'a> Index<'a> {
    fn new(cluster: &'a Cluster, classes: &'a [Class], members: &'a BTreeMap<Uuid, Vec<usize>>) -> Self {
        let mut ports_by_project: BTreeMap<&str, Vec<&PortRecord>> = BTreeMap::new();
        for (_, p) in cluster.ports() {
            ports_by_project.entry(&*p.project).or_default().push(p);
        }
        Index { cluster, classes, members, ports_by_project, projects_matching: Default::default() }
    }

    fn projects_matching(&self, selector: &weft_model::LabelSelector) -> Arc<Vec<String>> {
        if let Some(found) = self.projects_matching.borrow().get(selector) {
            return Arc::clone(found);
        }
        let names: Vec<String> =
            self.cluster.projects.values().filter(|p| selector.matches(&p.labels)).map(|p| p.name.clone()).collect();
        let names = Arc::new(names);
        self.projects_matching.borrow_mut().insert(selector.clone(), Arc::clone(&names));
        names
    }

    /// The ports a selection picks, each with the addresses of it that count (borrowed: a set
    /// of a tenth of 100,000 pods is 10,000 of them).
    fn selected(&self, selection: &Selection) -> Vec<(&'a PortRecord, std::borrow::Cow<'a, [IpAddr]>)> {
        use std::borrow::Cow;
        let cluster = self.cluster;
        let in_project = |project: &str| self.ports_by_project.get(project).into_iter().flatten().copied();
        let all = |p: &'a PortRecord| (p, Cow::Borrowed(&p.ips[..]));
        match selection {
            Selection::All => cluster.ports().map(|(_, p)| all(p)).collect(),
            Selection::Cidr { cidr, except } => cluster
                .ports()
                .filter_map(|(_, p)| {
                    let ips: Vec<IpAddr> = p.ips.iter().copied().filter(|a| cidr::contains(cidr, except, a)).collect();
                    (!ips.is_empty()).then_some((p, Cow::Owned(ips)))
                })
                .collect(),
            Selection::GroupMembers { group } => self
                .members
                .get(group)
                .into_iter()
                .flatten()
                .flat_map(|c| &self.classes[*c].ports)
                .filter_map(|id| cluster.port(id))
                .map(all)
                .collect(),
            Selection::Selector { project, ports, projects } => {
                let projects = match projects {
                    None => Arc::new(vec![project.clone()]),
                    Some(sel) => self.projects_matching(sel),
                };
                projects
                    .iter()
                    .flat_map(|name| in_project(name))
                    .filter(|p| ports.matches(&p.labels))
                    .map(all)
                    .collect()
            }
        }
    }

    fn members_of(&self, definition: &SetDefinition) -> SetMembers {
        match definition {
            SetDefinition::Addresses(Selection::Cidr { cidr, except }) => {
                SetMembers::Prefixes(cidr::subtract(*cidr, except))
            }
            SetDefinition::Addresses(selection) => {
                let mut addresses: Vec<IpAddr> =
                    self.selected(selection).iter().flat_map(|(_, ips)| ips.iter().copied()).collect();
                addresses.sort_unstable();
                addresses.dedup();
                SetMembers::Addresses(addresses.into_iter().collect())
            }
            SetDefinition::NamedPorts { selection, name, protocol } => SetMembers::Pairs(
                self.selected(selection)
                    .into_iter()
                    .filter_map(|(p, ips)| {
                        let np = p.named_ports.get(name)?;
                        (np.protocol.number() == Some(*protocol))
                            .then(|| ips.to_vec().into_iter().map(move |a| (a, np.port as u16)))
                    })
                    .flatten()
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge_ranges(vec![(80, 80), (81, 90), (100, 110), (85, 86), (65535, 65535)]),
            vec![(80, 90), (100, 110), (65535, 65535)]
        );
    }
}
