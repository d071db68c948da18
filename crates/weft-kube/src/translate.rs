//! Kubernetes objects as weft's (DESIGN.md §3-§4): a Namespace becomes a project, a Pod a port,
//! a NetworkPolicy a security group. Pure: no I/O, tested directly on k8s-openapi types.
//!
//! What weft cannot represent is reported as a [`Problem`] and left out, and leaving out only
//! ever narrows what is allowed: an unrepresentable peer or port entry drops its rule, never
//! turns into "every port"; a policy whose own pod selector cannot be read is dropped whole
//! (the API server refuses such a selector, so only a hand-written manifest has one).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_model::{
    Direction, LabelSelector, NamedPort, NodeBlocks, Operator, Port, PortMatch, Project, Protocol, Remote, Requirement,
    Rule, RuleOrigin, SecurityGroup, Subnet, VirtualNetwork,
};

/// Who wrote an object: kube-manager for one cluster. Objects without this annotation, or
/// with another cluster's, are never changed.
pub const OWNER_ANNOTATION: &str = "weft.io/owner";
/// The label every project of a cluster carries, so that a namespaceSelector selects only
/// namespaces of its own cluster.
pub const CLUSTER_LABEL: &str = "weft.io/cluster";
/// The label Kubernetes gives every namespace (and namespaceSelectors rely on).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone)]
pub struct Options {
    /// A namespace `ns` becomes project `<prefix>ns`.
    pub project_prefix: String,
    pub cluster: String,
    /// The cluster's pod network: with one, a pod's port is written as soon as the pod is
    /// scheduled, and weft's IPAM gives it its addresses (DESIGN.md §9); without, a pod's port
    /// is written once something else gave it an address (`status.podIPs`).
    pub pod_network: Option<PodNetwork>,
}

impl Default for Options {
    fn default() -> Self {
        Options { project_prefix: "k8s-".into(), cluster: "default".into(), pod_network: None }
    }
}

/// The cluster's pod network: a shared virtual network split into per-node blocks, in a
/// project of its own (`cluster.<cluster name>`: no namespace's project can be named so, a
/// namespace's name having no dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub subnets: Vec<IpNet>,
    pub blocks: NodeBlocks,
}

/// The pod network's name in its project.
pub const POD_NETWORK: &str = "pods";

impl Options {
    pub fn project(&self, namespace: &str) -> String {
        format!("{}{namespace}", self.project_prefix)
    }

    /// The project that holds the pod network.
    pub fn pod_network_project(&self) -> String {
        format!("cluster.{}", self.cluster)
    }

    /// How a port names the pod network.
    pub fn pod_network_ref(&self) -> String {
        format!("{}/{POD_NETWORK}", self.pod_network_project())
    }

    /// The pod network's project and network objects, as kube-manager keeps them.
    pub fn pod_network_objects(&self) -> Option<(Project, VirtualNetwork)> {
        let pods = self.pod_network.as_ref()?;
        let project =
            Project { name: self.pod_network_project(), annotations: self.annotations(), ..Project::default() };
        let network = VirtualNetwork {
            name: POD_NETWORK.into(),
            project: project.name.clone(),
            annotations: self.annotations(),
            subnets: pods.subnets.iter().map(|cidr| Subnet { cidr: *cidr, gateway: None }).collect(),
            shared: true,
            node_blocks: Some(pods.blocks),
            ..VirtualNetwork::default()
        };
        Some((project, network))
    }

    /// The owner annotation's value for this cluster.
    pub fn owner(&self) -> String {
        format!("kube-manager/{}", self.cluster)
    }

    pub(crate) fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(OWNER_ANNOTATION.to_string(), self.owner())])
    }

    /// A problem with a weft object kube-manager writes, named after the Kubernetes object it
    /// is the translation of (a project `<prefix>ns` is the Namespace `ns`).
    pub fn problem(&self, kind: weft_model::Kind, project: &str, name: &str, detail: String) -> Problem {
        let namespace =
            |project: &str| project.strip_prefix(self.project_prefix.as_str()).unwrap_or(project).to_string();
        let (kind, namespace, name) = match kind {
            weft_model::Kind::Project => (ProblemKind::Namespace, None, namespace(name)),
            weft_model::Kind::Port => (ProblemKind::Pod, Some(namespace(project)), name.to_string()),
            weft_model::Kind::SecurityGroup => (ProblemKind::NetworkPolicy, Some(namespace(project)), name.to_string()),
            weft_model::Kind::ClusterPolicy => {
                let cnp = name.strip_prefix(&format!("{}cnp-", self.project_prefix)).unwrap_or(name);
                (ProblemKind::ClusterNetworkPolicy, None, cnp.to_string())
            }
            other => (ProblemKind::Weft(other), Some(project.to_string()), name.to_string()),
        };
        Problem { kind, namespace, name, detail }
    }
}

/// Something weft cannot represent, on the object it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub kind: ProblemKind,
    pub namespace: Option<String>,
    pub name: String,
    pub detail: String,
}

/// What kind of object a [`Problem`] is on: a Kubernetes object kube-manager translates, or
/// (for a name taken in the config service by an object of a kind it does not write) weft's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    Namespace,
    Pod,
    NetworkPolicy,
    ClusterNetworkPolicy,
    Weft(weft_model::Kind),
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::Namespace => "Namespace",
            ProblemKind::Pod => "Pod",
            ProblemKind::NetworkPolicy => "NetworkPolicy",
            ProblemKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ProblemKind::Weft(kind) => kind.as_str(),
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}: {}", self.kind, self.name, self.detail),
            None => write!(f, "{} {}: {}", self.kind, self.name, self.detail),
        }
    }
}

fn name_of(meta: &meta::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn namespace_of(meta: &meta::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Namespace `ns` → project `<prefix>ns`, with the namespace's labels (its name label
/// included) and the cluster's.
pub fn namespace(ns: &Namespace, o: &Options) -> Result<Project, Problem> {
    let name = name_of(&ns.metadata);
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    labels.insert(CLUSTER_LABEL.into(), o.cluster.clone());
    let project = Project { name: o.project(&name), labels, annotations: o.annotations(), ..Project::default() };
    project.validate().map_err(|e| Problem {
        kind: ProblemKind::Namespace,
        namespace: None,
        name,
        detail: e.to_string(),
    })?;
    Ok(project)
}

/// Pod → port: its node, addresses, labels and named container ports, no explicit groups.
/// `Ok(None)` for a pod that is no port: on the host's network, finished (its address may
/// belong to another pod already), or, without a pod network, with no address yet and, with
/// one, not yet scheduled. With a pod network, the port is on it and the pod's addresses, if
/// it has any already, are the ones it asks for; else weft's IPAM gives it some.
pub fn pod(pod: &Pod, o: &Options) -> Result<Option<Port>, Problem> {
    let (name, namespace) = (name_of(&pod.metadata), namespace_of(&pod.metadata));
    let problem = |detail: String| Problem {
        kind: ProblemKind::Pod,
        namespace: Some(namespace.clone()),
        name: name.clone(),
        detail,
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Ok(None);
    }
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut addresses: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default();
    if addresses.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.clone())
    {
        addresses.push(ip);
    }
    let node = spec.and_then(|s| s.node_name.clone());
    match &o.pod_network {
        None if addresses.is_empty() => return Ok(None),
        Some(_) if node.is_none() => return Ok(None),
        _ => {}
    }
    let ips = addresses
        .iter()
        .map(|a| a.parse::<IpAddr>().map_err(|_| problem(format!("status.podIPs: {a:?} is not an address"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(pods) = &o.pod_network
        && let Some(outside) = ips.iter().find(|ip| !pods.subnets.iter().any(|s| s.contains(*ip)))
    {
        let cidrs: Vec<String> = pods.subnets.iter().map(|s| s.to_string()).collect();
        return Err(problem(format!(
            "its address {outside} lies outside the pod network ({}): another plugin wired it, so weft writes no port for it",
            cidrs.join(", ")
        )));
    }
    let mut named_ports = BTreeMap::new();
    for container in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in container.ports.iter().flatten() {
            let Some(port_name) = &p.name else { continue };
            let protocol = protocol(p.protocol.as_deref()).map_err(|e| problem(format!("port {port_name}: {e}")))?;
            let named = NamedPort { protocol, port: i64::from(p.container_port) };
            if let Some(other) = named_ports.insert(port_name.clone(), named)
                && other != named
            {
                return Err(problem(format!("the port name {port_name} names two different ports")));
            }
        }
    }
    let port = Port {
        name: name.clone(),
        project: o.project(&namespace),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        annotations: o.annotations(),
        node,
        network: o.pod_network.as_ref().map(|_| o.pod_network_ref()),
        // A pod created again under its name is another instance (DESIGN.md §9).
        instance: pod.metadata.uid.clone(),
        ips,
        security_groups: Some(Vec::new()),
        named_ports,
        ..Port::default()
    };
    port.validate().map_err(|e| problem(e.to_string()))?;
    Ok(Some(port))
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

pub(crate) fn selector(s: &meta::LabelSelector) -> Result<LabelSelector, String> {
    let match_expressions = s
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(format!("selector operator {other:?} is not In, NotIn, Exists or DoesNotExist")),
            };
            Ok(Requirement { key: r.key.clone(), operator, values: r.values.clone().unwrap_or_default() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LabelSelector { match_labels: s.match_labels.clone().unwrap_or_default().into(), match_expressions })
}

/// NetworkPolicy → security group of the same name in its namespace's project: its pod
/// selector, its policy types (as given, or inferred as Kubernetes does), a rule for each
/// peer and protocol of each ingress and egress entry. Problems come with it: what they name
/// is left out, which only narrows what the group allows.
pub fn network_policy(np: &NetworkPolicy, o: &Options) -> (Option<SecurityGroup>, Vec<Problem>) {
    let (name, namespace) = (name_of(&np.metadata), namespace_of(&np.metadata));
    let mut problems = Vec::new();
    let mut report = |detail: String| {
        problems.push(Problem {
            kind: ProblemKind::NetworkPolicy,
            namespace: Some(namespace.clone()),
            name: name.clone(),
            detail,
        })
    };
    let Some(spec) = &np.spec else {
        report("no spec".into());
        return (None, problems);
    };
    // An absent podSelector selects every pod of the namespace, as `{}` does.
    let pod_selector = match spec.pod_selector.as_ref().map(selector).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            report(format!("spec.podSelector: {e}; the policy is left out"));
            return (None, problems);
        }
    };
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    let egress = spec.egress.as_deref().unwrap_or_default();
    let policy_types = match &spec.policy_types {
        Some(types) => {
            let mut out = Vec::new();
            for t in types {
                match t.as_str() {
                    "Ingress" => out.push(Direction::Ingress),
                    "Egress" => out.push(Direction::Egress),
                    other => report(format!("spec.policyTypes: {other:?} is not Ingress or Egress")),
                }
            }
            out
        }
        // Kubernetes' defaulting: Ingress always, Egress when there are egress rules.
        None if egress.is_empty() => vec![Direction::Ingress],
        None => vec![Direction::Ingress, Direction::Egress],
    };
    // (peers, ports) of each entry, by direction.
    let entries = [
        (
            Direction::Ingress,
            "ingress",
            ingress.iter().map(|e| (e.from.as_deref(), e.ports.as_deref())).collect::<Vec<_>>(),
        ),
        (Direction::Egress, "egress", egress.iter().map(|e| (e.to.as_deref(), e.ports.as_deref())).collect()),
    ];
    let mut rules = Vec::new();
    for (direction, field, entries) in entries {
        // Rules of a direction the policy does not isolate have no effect in Kubernetes; in
        // weft they would add to other policies' allowances, so they are not written.
        if !policy_types.contains(&direction) {
            continue;
        }
        for (i, (peers, ports)) in entries.into_iter().enumerate() {
            let origin = RuleOrigin {
                kind: "NetworkPolicy".into(),
                namespace: Some(namespace.clone()),
                name: name.clone(),
                index: u32::try_from(i).ok(),
            };
            let at = format!("spec.{field}[{i}]");
            let entry = entry_rules(direction, peers, ports, o, &at, &mut report);
            rules.extend(entry.into_iter().map(|r| Rule { origin: Some(origin.clone()), ..r }));
        }
    }
    let group = SecurityGroup {
        id: None,
        name: name.clone(),
        project: o.project(&namespace),
        labels: Default::default(),
        annotations: o.annotations(),
        policy_types,
        selector: Some(pod_selector),
        rules,
        revision: None,
        created_at: None,
        updated_at: None,
    };
    match group.validate() {
        Ok(()) => (Some(group), problems),
        Err(e) => {
            report(format!("{e}; the policy is left out"));
            (None, problems)
        }
    }
}

/// The rules of one ingress or egress entry: every peer (or everyone) with every protocol's
/// ports (or every protocol and port).
fn entry_rules(
    direction: Direction,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    o: &Options,
    at: &str,
    report: &mut impl FnMut(String),
) -> Vec<Rule> {
    let side = if direction == Direction::Ingress { "from" } else { "to" };
    // Absent or empty: everyone.
    let remotes: Vec<Remote> = match peers {
        None | Some([]) => vec![Remote::Any],
        Some(peers) => peers
            .iter()
            .enumerate()
            .filter_map(|(i, peer)| match remote(peer, o) {
                Ok(r) => Some(r),
                Err(e) => {
                    report(format!("{at}.{side}[{i}]: {e}; that peer is left out"));
                    None
                }
            })
            .collect(),
    };
    // Absent or empty: every protocol and port. Otherwise ports grouped by protocol; an entry
    // with no port opens its whole protocol.
    let mut by_protocol: BTreeMap<Protocol, Option<Vec<PortMatch>>> = BTreeMap::new();
    let port_entries = ports.unwrap_or_default();
    for (i, p) in port_entries.iter().enumerate() {
        match port_match(p) {
            Ok((protocol, matched)) => {
                let slot = by_protocol.entry(protocol).or_insert_with(|| Some(Vec::new()));
                match (slot.as_mut(), matched) {
                    (Some(list), Some(m)) => list.push(m),
                    (_, None) => *slot = None,
                    (None, Some(_)) => {}
                }
            }
            Err(e) => report(format!("{at}.ports[{i}]: {e}; that port entry is left out")),
        }
    }
    if !port_entries.is_empty() && by_protocol.is_empty() {
        // Every port entry was left out: the entry allows nothing rather than everything.
        return Vec::new();
    }
    let l4: Vec<(Protocol, Vec<PortMatch>)> = if port_entries.is_empty() {
        vec![(Protocol::Any, Vec::new())]
    } else {
        by_protocol.into_iter().map(|(p, ports)| (p, ports.unwrap_or_default())).collect()
    };
    let mut rules = Vec::new();
    for remote in &remotes {
        for (protocol, ports) in &l4 {
            rules.push(Rule {
                id: None,
                direction,
                ethertype: None,
                protocol: *protocol,
                ports: ports.clone(),
                icmp: None,
                remote: remote.clone(),
                origin: None,
            });
        }
    }
    rules
}

fn remote(peer: &NetworkPolicyPeer, o: &Options) -> Result<Remote, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("an ipBlock peer has no selectors".into());
        }
        let cidr: IpNet = block.cidr.parse().map_err(|_| format!("ipBlock.cidr {:?} is not a CIDR", block.cidr))?;
        let except = block
            .except
            .iter()
            .flatten()
            .map(|e| e.parse::<IpNet>().map_err(|_| format!("ipBlock.except {e:?} is not a CIDR")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Remote::Cidr { cidr, except });
    }
    let ports = match &peer.pod_selector {
        Some(s) => selector(s).map_err(|e| format!("podSelector: {e}"))?,
        None => LabelSelector::default(),
    };
    let projects = match &peer.namespace_selector {
        Some(s) => {
            // Namespaces of this cluster only: every project of it carries the cluster label.
            let mut projects = selector(s).map_err(|e| format!("namespaceSelector: {e}"))?;
            projects.match_labels.insert(CLUSTER_LABEL.into(), o.cluster.clone());
            Some(projects)
        }
        None if peer.pod_selector.is_some() => None,
        None => return Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".into()),
    };
    Ok(Remote::Selector { ports, projects })
}

/// A port entry: its protocol, and its ports (`None`: all of them).
fn port_match(p: &NetworkPolicyPort) -> Result<(Protocol, Option<PortMatch>), String> {
    let protocol = protocol(p.protocol.as_deref())?;
    let matched = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) => return Err("endPort without a port".into()),
        (Some(IntOrString::Int(n)), None) => Some(PortMatch::Single(i64::from(*n))),
        (Some(IntOrString::Int(n)), Some(end)) => Some(PortMatch::Range { from: i64::from(*n), to: i64::from(end) }),
        (Some(IntOrString::String(name)), None) => Some(PortMatch::Named(name.clone())),
        (Some(IntOrString::String(name)), Some(_)) => return Err(format!("endPort with the named port {name:?}")),
    };
    if let Some(PortMatch::Single(n) | PortMatch::Range { from: n, .. }) = &matched {
        weft_model::port_number(*n)?;
    }
    if let Some(PortMatch::Range { from, to }) = &matched
        && to < from
    {
        return Err(format!("endPort {to} is below port {from}"));
    }
    Ok((protocol, matched))
}
