//! The compiled form of DESIGN.md §5: what an agent receives for its node. Plain data with a
//! deterministic order (BTreeMap/BTreeSet everywhere), so the same input gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_model::{LabelSelector, NamedPort, PolicyAction, Tier};

/// Which address families a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
    Both,
}

impl Family {
    pub fn covers(self, addr: &IpAddr) -> bool {
        self.has(addr.is_ipv6())
    }

    /// Whether a rule of this family says anything of IPv6 (`v6`) or of IPv4 (not `v6`).
    pub fn has(self, v6: bool) -> bool {
        matches!((self, v6), (Family::Both, _) | (Family::V4, false) | (Family::V6, true))
    }
}

/// The name of an address set: derived from its definition, so it is the same on every run and
/// every controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SetId(pub u128);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{:032x}", self.0)
    }
}

impl SetId {
    /// FNV-1a (128 bits) of the definition's canonical JSON: stable across releases, platforms
    /// and restarts, and simple enough for any tool to recompute.
    pub fn of(definition: &SetDefinition) -> SetId {
        let text = serde_json::to_string(definition).unwrap_or_default();
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        for b in text.bytes() {
            hash ^= u128::from(b);
            hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
        SetId(hash)
    }
}

/// Which ports (or addresses) a set is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every known port.
    All,
    /// A prefix minus exceptions.
    Cidr { cidr: IpNet, except: Vec<IpNet> },
    /// The ports a security group applies to.
    GroupMembers { group: Uuid },
    /// Ports matching `ports`, in projects matching `projects`, or in `project` when absent.
    /// (`project` is empty when `projects` is given, so that the same selection made from two
    /// projects is one set.)
    Selector { project: String, ports: LabelSelector, projects: Option<LabelSelector> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetDefinition {
    /// The addresses of the selection (for a CIDR: its prefixes).
    Addresses(Selection),
    /// (address, port) of the selected ports that define the named port with this protocol:
    /// an egress rule's named port, resolved per destination.
    NamedPorts { selection: Selection, name: String, protocol: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetMembers {
    Addresses(BTreeSet<IpAddr>),
    Prefixes(Vec<IpNet>),
    Pairs(BTreeSet<(IpAddr, u16)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSet {
    pub definition: SetDefinition,
    pub members: SetMembers,
}

impl AddressSet {
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match &self.members {
            SetMembers::Addresses(a) => a.contains(addr),
            SetMembers::Prefixes(p) => p.iter().any(|n| n.contains(addr)),
            SetMembers::Pairs(_) => false,
        }
    }

    pub fn contains_pair(&self, addr: &IpAddr, port: u16) -> bool {
        matches!(&self.members, SetMembers::Pairs(p) if p.contains(&(*addr, port)))
    }
}

/// What a rule matches above IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Match {
    /// Any port (or a protocol without ports).
    All,
    /// Destination port ranges, inclusive, sorted and merged.
    Ranges(Vec<(u16, u16)>),
    /// An ingress named port: resolved against the local port's own `named_ports`.
    Named(String),
    Icmp {
        icmp_type: u8,
        code: Option<u8>,
    },
}

/// The other side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteMatch {
    Any,
    /// The remote address is in the set.
    Set(SetId),
    /// The egress destination (address, port) is in the pair set (named ports).
    Pairs(SetId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledRule {
    /// The rule this came from (a rule with several kinds of port entries compiles to several).
    pub rule: Uuid,
    pub family: Family,
    /// IP protocol number; `None` for any.
    pub protocol: Option<u8>,
    pub l4: L4Match,
    pub remote: RemoteMatch,
}

/// A group's rules for the directions it isolates, shared by every port it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledGroup {
    pub project: String,
    pub name: String,
    pub ingress: Vec<CompiledRule>,
    pub egress: Vec<CompiledRule>,
}

/// What one alternative of a tiered rule matches: a tiered rule matches when any of its
/// alternatives does (one per remote and protocol entry it lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieredMatch {
    /// IP protocol number; `None` for any.
    pub protocol: Option<u8>,
    pub l4: L4Match,
    pub remote: RemoteMatch,
}

/// One rule of a tiered policy, in its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledTieredRule {
    /// As the policy names it (may be empty); explain and flows show it with its position.
    pub name: String,
    pub action: PolicyAction,
    pub matches: Vec<TieredMatch>,
}

/// A tiered cluster policy (DESIGN.md §11), shared by every port it applies to. Its rules of
/// each direction decide in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: i64,
    pub ingress: Vec<CompiledTieredRule>,
    pub egress: Vec<CompiledTieredRule>,
}

impl CompiledPolicy {
    pub fn rules(&self, direction: weft_model::Direction) -> &[CompiledTieredRule] {
        match direction {
            weft_model::Direction::Ingress => &self.ingress,
            weft_model::Direction::Egress => &self.egress,
        }
    }
}

/// One direction of a port: open (no group isolates it) or the groups whose rules allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Open,
    /// Shared by every port with the same applied groups.
    Isolated(Arc<Vec<Uuid>>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPolicy {
    pub project: String,
    pub name: String,
    /// The addresses the port is dispatched by and may send from.
    pub addresses: Vec<IpAddr>,
    /// Addresses the port names that another port names too (issue 17): the datapath
    /// identifies peers and dispatches by address, so such an address is dispatched to no
    /// port (its traffic is dropped both ways) and no port may send from it, until one of the
    /// two gives it up. The API refuses such a claim; rows written before it did can hold one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_addresses: Vec<IpAddr>,
    pub interface: String,
    /// What the port is the interface of (a pod's UID): the CNI plugin wires a sandbox to the
    /// port only when the sandbox's pod is this instance, so a pod created again under the
    /// same name never takes its predecessor's port (DESIGN.md §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Shared between ports that define the same named ports (the pods of one deployment).
    pub named_ports: Arc<BTreeMap<String, NamedPort>>,
    pub ingress: Isolation,
    pub egress: Isolation,
    /// The tiered policies whose subject selects the port, in the order they decide: admin
    /// before baseline, then by priority, then by name. Shared by every port they select alike.
    #[serde(default, skip_serializing_if = "no_policies")]
    pub policies: Arc<Vec<Uuid>>,
}

/// A port's tiered policies in the order they decide, shared by the ports that have the same.
pub type PolicyList = Arc<Vec<Uuid>>;

fn no_policies(policies: &Arc<Vec<Uuid>>) -> bool {
    policies.is_empty()
}

impl PortPolicy {
    /// Whether `other` is this port with another list of tiered policies at most. Every field
    /// is named (a field added to the port must be added here, or this does not compile): a
    /// change this missed would reach agents as a list replaced, and the rest of it not at all.
    pub fn same_but_policies(&self, other: &PortPolicy) -> bool {
        let PortPolicy {
            project,
            name,
            addresses,
            refused_addresses,
            interface,
            instance,
            named_ports,
            ingress,
            egress,
            policies: _,
        } = self;
        *project == other.project
            && *name == other.name
            && *addresses == other.addresses
            && *refused_addresses == other.refused_addresses
            && *interface == other.interface
            && *instance == other.instance
            && *named_ports == other.named_ports
            && *ingress == other.ingress
            && *egress == other.egress
    }
}

/// Everything one node needs, and nothing else. Groups and sets are shared between the spans
/// that reference them (`Arc`): a set of 10,000 members referenced by every node exists once,
/// and nodes whose ports have the same applied groups share one table of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpan {
    pub ports: BTreeMap<Uuid, PortPolicy>,
    pub groups: Arc<BTreeMap<Uuid, Arc<CompiledGroup>>>,
    pub sets: Arc<BTreeMap<SetId, Arc<AddressSet>>>,
    /// The tiered policies the ports' `policies` name.
    #[serde(default)]
    pub policies: Arc<BTreeMap<Uuid, Arc<CompiledPolicy>>>,
}

impl std::str::FromStr for SetId {
    type Err = String;

    /// The form `Display` writes: `s` and 32 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix('s').filter(|h| h.len() == 32).ok_or_else(|| format!("not a set id: {s:?}"))?;
        u128::from_str_radix(hex, 16).map(SetId).map_err(|_| format!("not a set id: {s:?}"))
    }
}
