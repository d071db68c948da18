//! The resources of DESIGN.md §3 and §11. One struct per resource serves as request body and
//! response: server-assigned fields (`id`, `revision`, timestamps) are ignored on input, so
//! that a client can GET, edit and PUT an object back.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rule::{Direction, Ethertype, Protocol, Remote, Rule, canonical_net, port_number};
use crate::selector::{LabelSelector, Labels};
use crate::syntax;
use crate::validation::{ValidationErrors, Validator};
use crate::{MAX_LIST_LEN, ObjectRef};

/// Rules per security group. Kubernetes has no limit; this one keeps one group's compiled form
/// and one request body reasonable.
pub const MAX_RULES: usize = 4096;
/// Addresses per port.
pub const MAX_PORT_IPS: usize = 16;

/// The kinds of resource, in the order their parents must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Project,
    VirtualNetwork,
    SecurityGroup,
    Port,
    ClusterPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] =
        [Kind::Project, Kind::VirtualNetwork, Kind::SecurityGroup, Kind::Port, Kind::ClusterPolicy];

    /// Whether objects of this kind belong to no project: addressed by name alone.
    pub fn is_cluster_scoped(self) -> bool {
        matches!(self, Kind::Project | Kind::ClusterPolicy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::VirtualNetwork => "virtual-network",
            Kind::SecurityGroup => "security-group",
            Kind::Port => "port",
            Kind::ClusterPolicy => "cluster-policy",
        }
    }

    /// The collection's path segment under `/v1/`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Project => "projects",
            Kind::VirtualNetwork => "virtual-networks",
            Kind::SecurityGroup => "security-groups",
            Kind::Port => "ports",
            Kind::ClusterPolicy => "cluster-policies",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// The kind [`Kind::as_str`] names.
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fields every resource has, checked the same way everywhere.
pub(crate) fn validate_common(v: &mut Validator, name: &str, labels: &Labels, annotations: &BTreeMap<String, String>) {
    v.check("name", syntax::dns_subdomain(name));
    v.at("labels", |v| {
        for (key, value) in labels {
            v.at(key, |v| {
                if let Err(e) = syntax::qualified_key(key).and_then(|()| syntax::label_value(value)) {
                    v.error(e);
                }
            });
        }
    });
    v.at("annotations", |v| {
        let mut size = 0;
        for (key, value) in annotations {
            size += key.len() + value.len();
            v.check(key, syntax::qualified_key(key));
        }
        if size > syntax::MAX_ANNOTATIONS_BYTES {
            v.error(format!("annotations total {size} bytes, more than the {} allowed", syntax::MAX_ANNOTATIONS_BYTES));
        }
    });
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = crate::selector::labels_schema)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Project {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        validate_common(&mut v, &self.name, &self.labels, &self.annotations);
        v.finish()
    }
}

/// A subnet of a virtual network; ports on the network get addresses from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    #[schema(value_type = String, example = "10.10.0.0/24")]
    pub cidr: IpNet,
    /// Never allocated to a port. Absent: the subnet's first host address is still handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.10.0.1")]
    pub gateway: Option<IpAddr>,
}

/// How a network is split into per-node blocks (the cluster's pod network, DESIGN.md §9): a
/// port on a node gets its addresses from a block of its node's, claimed from the network's
/// subnets when the node has none or its blocks are full, so that one route per block reaches
/// every pod of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeBlocks {
    /// An IPv4 block's prefix length (24: 254 addresses), 16 to 30.
    #[serde(default = "NodeBlocks::default_ipv4")]
    #[schema(minimum = 16, maximum = 30, default = 24)]
    pub ipv4: u8,
    /// An IPv6 block's prefix length, 48 to 126.
    #[serde(default = "NodeBlocks::default_ipv6")]
    #[schema(minimum = 48, maximum = 126, default = 80)]
    pub ipv6: u8,
}

impl NodeBlocks {
    fn default_ipv4() -> u8 {
        24
    }

    fn default_ipv6() -> u8 {
        80
    }

    /// The block prefix length for a subnet of this family.
    pub fn prefix_for(&self, cidr: &IpNet) -> u8 {
        if matches!(cidr, IpNet::V4(_)) { self.ipv4 } else { self.ipv6 }
    }
}

impl Default for NodeBlocks {
    fn default() -> Self {
        NodeBlocks { ipv4: NodeBlocks::default_ipv4(), ipv6: NodeBlocks::default_ipv6() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub name: String,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub project: String,
    #[serde(default)]
    #[schema(schema_with = crate::selector::labels_schema)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub subnets: Vec<Subnet>,
    /// Ports of every project may use it, naming it `project/name` (Tungsten Fabric's
    /// `is_shared`): the cluster's pod network, which the pods of every namespace share.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Split into per-node blocks: a port on a node gets its addresses from its node's block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_blocks: Option<NodeBlocks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl VirtualNetwork {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        validate_common(&mut v, &self.name, &self.labels, &self.annotations);
        v.check("project", syntax::dns_subdomain(&self.project));
        if self.subnets.len() > MAX_LIST_LEN {
            v.at("subnets", |v| v.error(format!("at most {MAX_LIST_LEN} subnets")));
        }
        v.at("subnets", |v| {
            for (i, subnet) in self.subnets.iter().enumerate() {
                v.at(i, |v| {
                    v.check("cidr", canonical_net(&subnet.cidr));
                    if let Some(gw) = subnet.gateway {
                        v.check("gateway", gateway(&subnet.cidr, gw));
                    }
                    if let Some(blocks) = &self.node_blocks {
                        let prefix = blocks.prefix_for(&subnet.cidr);
                        if prefix < subnet.cidr.prefix_len() {
                            v.at("cidr", |v| {
                                v.error(format!("{} is smaller than one of node_blocks' /{prefix} blocks", subnet.cidr))
                            });
                        }
                    }
                    let overlap = self.subnets[..i]
                        .iter()
                        .position(|s| s.cidr.contains(&subnet.cidr) || subnet.cidr.contains(&s.cidr));
                    if let Some(j) = overlap {
                        v.at("cidr", |v| {
                            v.error(format!("{} overlaps subnet {} ({})", subnet.cidr, j, self.subnets[j].cidr))
                        });
                    }
                });
            }
        });
        if let Some(blocks) = &self.node_blocks {
            v.at("node_blocks", |v| {
                if !(16..=30).contains(&blocks.ipv4) {
                    v.at("ipv4", |v| v.error(format!("/{} is not a block size: 16 to 30", blocks.ipv4)));
                }
                if !(48..=126).contains(&blocks.ipv6) {
                    v.at("ipv6", |v| v.error(format!("/{} is not a block size: 48 to 126", blocks.ipv6)));
                }
            });
        }
        v.finish()
    }
}

fn gateway(cidr: &IpNet, gw: IpAddr) -> Result<(), String> {
    if !cidr.contains(&gw) {
        return Err(format!("gateway {gw} is not inside {cidr}"));
    }
    if gw == cidr.network() && cidr.prefix_len() < cidr.max_prefix_len() - 1 {
        return Err(format!("gateway {gw} is the network address of {cidr}"));
    }
    if matches!(cidr, IpNet::V4(_)) && gw == cidr.broadcast() && cidr.prefix_len() < 31 {
        return Err(format!("gateway {gw} is the broadcast address of {cidr}"));
    }
    Ok(())
}

/// Directions a group isolates; Kubernetes' `policyTypes`.
pub fn both_directions() -> Vec<Direction> {
    vec![Direction::Ingress, Direction::Egress]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub name: String,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub project: String,
    #[serde(default)]
    #[schema(schema_with = crate::selector::labels_schema)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Which directions the group isolates the ports it applies to.
    #[serde(default = "both_directions")]
    pub policy_types: Vec<Direction>,
    /// Absent: the group applies only to ports that name it. `{}`: every port of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    #[schema(max_items = 4096)]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// The name of the group every project gets at creation.
pub const DEFAULT_GROUP: &str = "default";

impl SecurityGroup {
    /// A project's `default` group, as Tungsten Fabric and OpenStack make it: ingress from the
    /// group's own members, all egress, both families.
    pub fn default_for(project: &str) -> Self {
        let rule = |direction, remote| Rule {
            id: Some(Uuid::new_v4()),
            direction,
            ethertype: Some(Ethertype::Any),
            protocol: Protocol::Any,
            ports: vec![],
            icmp: None,
            remote,
            origin: None,
        };
        SecurityGroup {
            id: None,
            name: DEFAULT_GROUP.to_string(),
            project: project.to_string(),
            labels: Labels::new(),
            annotations: BTreeMap::new(),
            policy_types: both_directions(),
            selector: None,
            rules: vec![
                rule(Direction::Ingress, Remote::SecurityGroup { security_group: DEFAULT_GROUP.to_string() }),
                rule(Direction::Egress, Remote::Any),
            ],
            revision: None,
            created_at: None,
            updated_at: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        validate_common(&mut v, &self.name, &self.labels, &self.annotations);
        v.check("project", syntax::dns_subdomain(&self.project));
        v.at("policy_types", |v| {
            for (i, d) in self.policy_types.iter().enumerate() {
                if self.policy_types[..i].contains(d) {
                    v.at(i, |v| v.error(format!("{d} is listed twice")));
                }
            }
        });
        if let Some(selector) = &self.selector {
            v.at("selector", |v| selector.validate(v));
        }
        if self.rules.len() > MAX_RULES {
            v.at("rules", |v| v.error(format!("at most {MAX_RULES} rules per group, got {}", self.rules.len())));
        }
        v.at("rules", |v| {
            for (i, rule) in self.rules.iter().enumerate() {
                v.at(i, |v| {
                    rule.validate(v);
                    if let Some(id) = rule.id
                        && self.rules[..i].iter().any(|r| r.id == Some(id))
                    {
                        v.at("id", |v| v.error(format!("rule id {id} is used twice")));
                    }
                });
            }
        });
        v.finish()
    }
}

/// A named container port (Kubernetes `containerPort` with a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedPort {
    pub protocol: Protocol,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub name: String,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub project: String,
    #[serde(default)]
    #[schema(schema_with = crate::selector::labels_schema)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The node the port is bound to; absent for a port not (yet) placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub node: Option<String>,
    /// A virtual network of the same project (`name`), or a shared one of another
    /// (`project/name`); addresses not given are allocated from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 507)]
    pub network: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<String>, max_items = 16)]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
    pub mac: Option<String>,
    /// Host-side interface; absent: derived from the port's identity (DESIGN.md §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^weft[A-Za-z0-9._-]{1,11}$")]
    pub interface: Option<String>,
    /// What the port is the interface of, as its orchestrator names it: a Kubernetes pod's
    /// UID, a virtual machine's id (DESIGN.md §9). A new instance under the same name (a pod
    /// created again) is told apart from the old one by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9]([A-Za-z0-9._:-]{0,126}[A-Za-z0-9])?$", max_length = 128)]
    pub instance: Option<String>,
    /// Groups named explicitly (`name` or `project/name`). Omitted on create: `[default]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 256)]
    pub security_groups: Option<Vec<String>>,
    #[serde(default)]
    pub named_ports: BTreeMap<String, NamedPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Port {
    /// The host-side interface the port is bound to: the one it names, or the one derived
    /// from its identity (DESIGN.md §7).
    pub fn effective_interface(&self) -> String {
        self.interface.clone().unwrap_or_else(|| crate::default_interface(&self.project, &self.name))
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        validate_common(&mut v, &self.name, &self.labels, &self.annotations);
        v.check("project", syntax::dns_subdomain(&self.project));
        if let Some(node) = &self.node {
            v.check("node", syntax::dns_subdomain(node));
        }
        if let Some(network) = &self.network {
            v.check("network", crate::ObjectRef::parse(network).map(|_| ()));
        }
        if self.ips.len() > MAX_PORT_IPS {
            v.at("ips", |v| v.error(format!("at most {MAX_PORT_IPS} addresses")));
        }
        v.at("ips", |v| {
            for (i, ip) in self.ips.iter().enumerate() {
                if self.ips[..i].contains(ip) {
                    v.at(i, |v| v.error(format!("{ip} is listed twice")));
                } else if ip.is_unspecified() || ip.is_multicast() {
                    v.at(i, |v| v.error(format!("{ip} cannot be a port's address")));
                }
            }
        });
        if let Some(mac) = &self.mac {
            v.check("mac", syntax::mac_address(mac));
        }
        if let Some(interface) = &self.interface {
            v.check("interface", syntax::port_interface(interface));
        }
        if let Some(instance) = &self.instance {
            v.check("instance", syntax::instance_id(instance));
        }
        if let Some(groups) = &self.security_groups {
            if groups.len() > MAX_LIST_LEN {
                v.at("security_groups", |v| v.error(format!("at most {MAX_LIST_LEN} groups")));
            }
            v.at("security_groups", |v| {
                for (i, g) in groups.iter().enumerate() {
                    if groups[..i].contains(g) {
                        v.at(i, |v| v.error(format!("{g} is listed twice")));
                    } else {
                        v.check(i, member_group(&self.project, g).map(|_| ()));
                    }
                }
            });
        }
        v.at("named_ports", |v| {
            for (name, np) in &self.named_ports {
                v.at(name, |v| {
                    if let Err(e) = syntax::service_name(name) {
                        v.error(e);
                    }
                    if !np.protocol.has_ports() {
                        v.at("protocol", |v| v.error(format!("named ports are tcp, udp or sctp, not {}", np.protocol)));
                    }
                    v.check("port", port_number(np.port));
                });
            }
        });
        v.finish()
    }
}

/// The name of the group a port's `security_groups` entry makes it a member of. A port may be
/// a member only of its own project's groups: membership is what another project's rules
/// trust (a rule whose remote is a group allows that group's members), so a port that could
/// join any group could give itself what another tenant allows only its own ports.
pub fn member_group<'a>(own_project: &str, reference: &'a str) -> Result<&'a str, String> {
    let r = ObjectRef::parse(reference)?;
    match r.project {
        Some(p) if p != own_project => Err(format!(
            "{reference:?} is a group of project {p:?}: a port may be a member only of its own project's groups"
        )),
        _ => Ok(r.name),
    }
}

#[cfg(test)]
mod tests;

/// Any one of the resources, as a write carries it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Resource {
    Project(Project),
    VirtualNetwork(VirtualNetwork),
    SecurityGroup(SecurityGroup),
    Port(Port),
    ClusterPolicy(crate::ClusterPolicy),
}

macro_rules! each_resource {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Resource::Project($r) => $e,
            Resource::VirtualNetwork($r) => $e,
            Resource::SecurityGroup($r) => $e,
            Resource::Port($r) => $e,
            Resource::ClusterPolicy($r) => $e,
        }
    };
}

impl Resource {
    /// Decodes a body of the given kind, rejecting unknown fields.
    pub fn from_json(kind: Kind, value: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            Kind::Project => Resource::Project(serde_json::from_value(value)?),
            Kind::VirtualNetwork => Resource::VirtualNetwork(serde_json::from_value(value)?),
            Kind::SecurityGroup => Resource::SecurityGroup(serde_json::from_value(value)?),
            Kind::Port => Resource::Port(serde_json::from_value(value)?),
            Kind::ClusterPolicy => Resource::ClusterPolicy(serde_json::from_value(value)?),
        })
    }

    pub fn id(&self) -> Option<Uuid> {
        each_resource!(self, r => r.id)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Project(_) => Kind::Project,
            Resource::VirtualNetwork(_) => Kind::VirtualNetwork,
            Resource::SecurityGroup(_) => Kind::SecurityGroup,
            Resource::Port(_) => Kind::Port,
            Resource::ClusterPolicy(_) => Kind::ClusterPolicy,
        }
    }

    pub fn name(&self) -> &str {
        each_resource!(self, r => &r.name)
    }

    /// The owning project's name; `None` for a project and a cluster policy.
    pub fn project(&self) -> Option<&str> {
        match self {
            Resource::Project(_) | Resource::ClusterPolicy(_) => None,
            Resource::VirtualNetwork(r) => Some(&r.project),
            Resource::SecurityGroup(r) => Some(&r.project),
            Resource::Port(r) => Some(&r.project),
        }
    }

    pub fn labels(&self) -> &Labels {
        each_resource!(self, r => &r.labels)
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        each_resource!(self, r => r.validate())
    }

    /// Clears the server-assigned fields, leaving what the store keeps as the body.
    pub fn clear_meta(&mut self) {
        each_resource!(self, r => {
            r.id = None;
            r.revision = None;
            r.created_at = None;
            r.updated_at = None;
        });
        if let Resource::ClusterPolicy(p) = self {
            p.status = None;
        }
    }
}
