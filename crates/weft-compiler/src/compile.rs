//! Compiling a cluster from scratch into every node's span. The incremental compiler must give
//! exactly what this gives; this is also what it is tested against.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use uuid::Uuid;
use weft_model::{Direction, Port, PortMatch, Remote, SecurityGroup};

use crate::cidr;
use crate::cluster::{Cluster, Dangling};
use crate::compiled::{
    AddressSet, CompiledGroup, CompiledRule, Family, Isolation, L4Match, NodeSpan, PortPolicy, RemoteMatch, Selection,
    SetDefinition, SetId, SetMembers,
};

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
struct GroupOutput {
    group: CompiledGroup,
    sets: Vec<(SetId, SetDefinition)>,
}

pub fn compile(cluster: &Cluster) -> Compiled {
    let mut out = Compiled { dangling: cluster.rejected.clone(), ..Compiled::default() };
    let mut applied: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();
    let mut members: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for (id, port) in cluster.ports() {
        let groups = cluster.applied(port);
        for reference in port.security_groups.iter().flatten() {
            if cluster.resolve_group(&port.project, reference).is_none() {
                out.dangling.push(Dangling::PortGroup { port: *id, group: reference.clone() });
            }
        }
        if cluster.project_by_name(&port.project).is_none() {
            out.dangling.push(Dangling::Project { object: *id, project: port.project.clone() });
        }
        for g in &groups {
            members.entry(*g).or_default().push(*id);
        }
        applied.insert(*id, groups);
    }
    let mut groups: BTreeMap<Uuid, GroupOutput> = BTreeMap::new();
    let mut sets: BTreeMap<SetId, AddressSet> = BTreeMap::new();
    for (id, port) in cluster.ports() {
        let applied = &applied[id];
        let ingress = cluster.isolating(applied, Direction::Ingress);
        let egress = cluster.isolating(applied, Direction::Egress);
        let span = match &port.node {
            Some(node) => out.spans.entry(node.clone()).or_default(),
            None => &mut out.unplaced,
        };
        for g in ingress.iter().chain(&egress) {
            let compiled = groups.entry(*g).or_insert_with(|| {
                let (output, dangling) = compile_group(cluster, *g);
                out.dangling.extend(dangling);
                output
            });
            span.groups.entry(*g).or_insert_with(|| compiled.group.clone());
            for (set_id, definition) in &compiled.sets {
                if !span.sets.contains_key(set_id) {
                    let set = sets
                        .entry(*set_id)
                        .or_insert_with(|| AddressSet {
                            definition: definition.clone(),
                            members: members_of(cluster, definition, &members),
                        })
                        .clone();
                    span.sets.insert(*set_id, set);
                }
            }
        }
        span.ports.insert(*id, port_policy(port, ingress, egress));
    }
    out.dangling.sort();
    out.dangling.dedup();
    out
}

fn port_policy(port: &Port, ingress: Vec<Uuid>, egress: Vec<Uuid>) -> PortPolicy {
    let isolation = |groups: Vec<Uuid>| if groups.is_empty() { Isolation::Open } else { Isolation::Isolated(groups) };
    PortPolicy {
        project: port.project.clone(),
        name: port.name.clone(),
        addresses: port.ips.clone(),
        interface: port.interface.clone().unwrap_or_else(|| weft_model::default_interface(&port.project, &port.name)),
        named_ports: port.named_ports.clone(),
        ingress: isolation(ingress),
        egress: isolation(egress),
    }
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
fn compile_group(cluster: &Cluster, id: Uuid) -> (GroupOutput, Vec<Dangling>) {
    let mut dangling = Vec::new();
    let mut sets = Vec::new();
    let Some(group) = cluster.group(&id) else {
        let empty = CompiledGroup { project: String::new(), name: String::new(), ingress: vec![], egress: vec![] };
        return (GroupOutput { group: empty, sets }, dangling);
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
    (GroupOutput { group: compiled, sets }, dangling)
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
        Remote::Selector { ports, projects } => {
            Selection::Selector { project: group.project.clone(), ports: ports.clone(), projects: projects.clone() }
        }
    })
}

/// The ports a selection picks, each with the addresses of it that count.
fn selected<'a>(
    cluster: &'a Cluster,
    selection: &'a Selection,
    members: &'a BTreeMap<Uuid, Vec<Uuid>>,
) -> Vec<(&'a Port, Vec<IpAddr>)> {
    let all = || cluster.ports().map(|(_, p)| p);
    match selection {
        Selection::All => all().map(|p| (p, p.ips.clone())).collect(),
        Selection::Cidr { cidr, except } => all()
            .filter_map(|p| {
                let ips: Vec<IpAddr> = p.ips.iter().copied().filter(|a| cidr::contains(cidr, except, a)).collect();
                (!ips.is_empty()).then_some((p, ips))
            })
            .collect(),
        Selection::GroupMembers { group } => members
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(|id| cluster.port(id))
            .map(|p| (p, p.ips.clone()))
            .collect(),
        Selection::Selector { project, ports, projects } => all()
            .filter(|p| ports.matches(&p.labels))
            .filter(|p| match projects {
                None => p.project == *project,
                Some(sel) => cluster.project_by_name(&p.project).is_some_and(|proj| sel.matches(&proj.labels)),
            })
            .map(|p| (p, p.ips.clone()))
            .collect(),
    }
}

fn members_of(cluster: &Cluster, definition: &SetDefinition, members: &BTreeMap<Uuid, Vec<Uuid>>) -> SetMembers {
    match definition {
        SetDefinition::Addresses(Selection::Cidr { cidr, except }) => {
            SetMembers::Prefixes(cidr::subtract(*cidr, except))
        }
        SetDefinition::Addresses(selection) => {
            SetMembers::Addresses(selected(cluster, selection, members).into_iter().flat_map(|(_, ips)| ips).collect())
        }
        SetDefinition::NamedPorts { selection, name, protocol } => SetMembers::Pairs(
            selected(cluster, selection, members)
                .into_iter()
                .filter_map(|(p, ips)| {
                    let np = p.named_ports.get(name)?;
                    (np.protocol.number() == Some(*protocol)).then(|| ips.into_iter().map(move |a| (a, np.port as u16)))
                })
                .flatten()
                .collect(),
        ),
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
