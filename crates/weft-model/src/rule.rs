//! Security-group rules: direction, address family, protocol, ports and the remote side.
//! Rules only allow (DESIGN.md §4); how they combine is the compiler's business.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::selector::LabelSelector;
use crate::syntax;
use crate::validation::Validator;
use crate::{MAX_LIST_LEN, ObjectRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Ethertype {
    IPv4,
    IPv6,
    #[serde(rename = "any")]
    Any,
}

impl Ethertype {
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Ethertype::IPv4,
            IpNet::V6(_) => Ethertype::IPv6,
        }
    }

    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Ethertype::IPv4,
            IpAddr::V6(_) => Ethertype::IPv6,
        }
    }

    /// Whether traffic of family `family` (IPv4 or IPv6) is covered.
    pub fn covers(self, family: Ethertype) -> bool {
        self == Ethertype::Any || self == family
    }
}

/// An IP protocol. Well-known numbers are normalised to their names on input (6 → tcp), so
/// that two rules meaning the same thing compare equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    /// Any other IP protocol number.
    Number(u8),
}

impl Protocol {
    pub fn from_number(n: u8) -> Self {
        match n {
            1 => Protocol::Icmp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            n => Protocol::Number(n),
        }
    }

    /// The IP protocol number, `None` for `any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Icmp => Some(1),
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmpv6 => Some(58),
            Protocol::Sctp => Some(132),
            Protocol::Number(n) => Some(n),
        }
    }

    /// Whether the protocol has ports (and so rules may name ports).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Any => f.write_str("any"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Sctp => f.write_str("sctp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "all" => Ok(Protocol::Any),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            "icmp" => Ok(Protocol::Icmp),
            "icmpv6" | "ipv6-icmp" => Ok(Protocol::Icmpv6),
            other => other.parse::<u8>().map(Protocol::from_number).map_err(|_| {
                format!("unknown protocol {s:?}: use any, tcp, udp, sctp, icmp, icmpv6 or a number 0-255")
            }),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u8(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Name(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a protocol name or number"))?;
        match raw {
            Raw::Number(n) => u8::try_from(n)
                .map(Protocol::from_number)
                .map_err(|_| serde::de::Error::custom(format!("protocol number {n} is out of range 0-255"))),
            Raw::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Which destination ports a rule allows: one port, a range (Kubernetes `endPort`) or a port
/// name, resolved against a port's `named_ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    Single(i64),
    Range { from: i64, to: i64 },
    Named(String),
}

impl PortMatch {
    pub(crate) fn validate(&self, v: &mut Validator) {
        match self {
            PortMatch::Single(p) => {
                if let Err(e) = port_number(*p) {
                    v.error(e)
                }
            }
            PortMatch::Range { from, to } => {
                v.check("from", port_number(*from));
                v.check("to", port_number(*to));
                if from > to {
                    v.error(format!("range start {from} is above its end {to}"));
                }
            }
            PortMatch::Named(name) => {
                if let Err(e) = syntax::service_name(name) {
                    v.error(e)
                }
            }
        }
    }
}

pub fn port_number(p: i64) -> Result<(), String> {
    if (1..=65535).contains(&p) { Ok(()) } else { Err(format!("port {p} is out of range 1-65535")) }
}

impl Serialize for PortMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            PortMatch::Single(p) => s.serialize_i64(*p),
            PortMatch::Named(n) => s.serialize_str(n),
            PortMatch::Range { from, to } => {
                let mut st = s.serialize_struct("PortRange", 2)?;
                st.serialize_field("from", from)?;
                st.serialize_field("to", to)?;
                st.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for PortMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            from: i64,
            to: i64,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Single(i64),
            Named(String),
            Range(Range),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a port number, a port name or a range {\"from\": N, \"to\": M}")
        })? {
            Raw::Single(p) => Ok(PortMatch::Single(p)),
            Raw::Named(n) => Ok(PortMatch::Named(n)),
            Raw::Range(r) => Ok(PortMatch::Range { from: r.from, to: r.to }),
        }
    }
}

impl utoipa::PartialSchema for Protocol {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::String))
                    .enum_values(Some(["any", "tcp", "udp", "sctp", "icmp", "icmpv6"])),
            )
            .item(ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)).minimum(Some(0)).maximum(Some(255)))
            .description(Some("An IP protocol by name or number; well-known numbers are returned as names."))
            .into()
    }
}

impl utoipa::ToSchema for Protocol {}

impl utoipa::PartialSchema for PortMatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let int =
            || ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)).minimum(Some(1)).maximum(Some(65535));
        OneOfBuilder::new()
            .item(int())
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::String))
                    .description(Some("a port name (IANA_SVC_NAME)")),
            )
            .item(
                ObjectBuilder::new()
                    .property("from", int())
                    .property("to", int())
                    .required("from")
                    .required("to")
                    .description(Some("an inclusive range")),
            )
            .description(Some("A destination port, a range or a named port."))
            .into()
    }
}

impl utoipa::ToSchema for PortMatch {}

/// ICMP type and optional code, for icmp and icmpv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    #[serde(rename = "type")]
    #[schema(minimum = 0, maximum = 255)]
    pub icmp_type: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 255)]
    pub code: Option<i64>,
}

/// The other side of a rule: where ingress may come from, or egress may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Remote {
    /// Every address.
    #[default]
    #[serde(with = "any_remote")]
    Any,
    /// A prefix minus the excepted prefixes (Kubernetes ipBlock).
    Cidr {
        #[schema(value_type = String, example = "10.0.0.0/8")]
        cidr: IpNet,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schema(value_type = Vec<String>)]
        except: Vec<IpNet>,
    },
    /// The addresses of every port to which the group applies (`name` or `project/name`).
    SecurityGroup { security_group: String },
    /// Ports whose labels match `ports`, in projects whose labels match `projects` (absent:
    /// the rule's own project).
    Selector {
        ports: LabelSelector,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        projects: Option<LabelSelector>,
    },
}

/// `{"type": "any"}` with nothing else: a unit variant would silently accept unknown fields.
mod any_remote {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Empty::deserialize(d).map(|_| ())
    }
}

/// Where a rule comes from, when a program wrote it from an object of its own: kube-manager
/// names the NetworkPolicy and the index of its `ingress`/`egress` entry, so what a rule
/// decided (a flow record, explain) names the policy rule a user wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleOrigin {
    /// The kind of object, e.g. `NetworkPolicy`.
    #[schema(min_length = 1, max_length = 63)]
    pub kind: String,
    /// Its namespace, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 253)]
    pub namespace: Option<String>,
    #[schema(min_length = 1, max_length = 253)]
    pub name: String,
    /// The entry of its direction's list the rule comes from (`spec.ingress[index]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4096)]
    pub index: Option<u32>,
}

impl RuleOrigin {
    pub(crate) fn validate(&self, v: &mut Validator) {
        let text = |v: &mut Validator, field: &str, s: &str, max: usize| {
            if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
                v.at(field, |v| v.error(format!("1 to {max} characters, none of them control characters")));
            }
        };
        text(v, "kind", &self.kind, 63);
        text(v, "name", &self.name, 253);
        if let Some(namespace) = &self.namespace {
            text(v, "namespace", namespace, 253);
        }
        if self.index.is_some_and(|i| i > 4096) {
            v.at("index", |v| v.error("at most 4096"));
        }
    }
}

impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(namespace) = &self.namespace {
            write!(f, "{namespace}/")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(index) = self.index {
            write!(f, " [{index}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Server-assigned when absent; stable across updates of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub direction: Direction,
    /// Absent: the family of a `cidr` remote, otherwise both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<Ethertype>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    #[serde(default)]
    pub remote: Remote,
    /// What the rule was written from, when a program wrote it (kube-manager: the
    /// NetworkPolicy entry); absent for rules a person wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

impl Rule {
    /// The families the rule applies to, after defaulting from the remote.
    pub fn effective_ethertype(&self) -> Ethertype {
        match (self.ethertype, &self.remote) {
            (Some(e), _) => e,
            (None, Remote::Cidr { cidr, .. }) => Ethertype::of_net(cidr),
            (None, _) => Ethertype::Any,
        }
    }

    /// The security group a `security_group` remote names, if any.
    pub fn remote_group(&self) -> Option<&str> {
        match &self.remote {
            Remote::SecurityGroup { security_group } => Some(security_group),
            _ => None,
        }
    }

    pub fn validate(&self, v: &mut Validator) {
        if self.ports.len() > MAX_LIST_LEN {
            v.at("ports", |v| v.error(format!("at most {MAX_LIST_LEN} entries")));
        }
        if !self.ports.is_empty() && !self.protocol.has_ports() {
            v.at("ports", |v| v.error(format!("protocol {} has no ports: ports need tcp, udp or sctp", self.protocol)));
        }
        v.at("ports", |v| {
            for (i, p) in self.ports.iter().enumerate() {
                v.at(i, |v| p.validate(v));
            }
        });
        if let Some(icmp) = &self.icmp {
            v.at("icmp", |v| {
                if !matches!(self.protocol, Protocol::Icmp | Protocol::Icmpv6) {
                    v.error(format!("an ICMP type needs protocol icmp or icmpv6, not {}", self.protocol));
                }
                v.check("type", byte("ICMP type", icmp.icmp_type));
                if let Some(code) = icmp.code {
                    v.check("code", byte("ICMP code", code));
                }
            });
        }
        let family = self.effective_ethertype();
        let mismatch = match self.protocol {
            Protocol::Icmp => family == Ethertype::IPv6,
            Protocol::Icmpv6 => family == Ethertype::IPv4,
            _ => false,
        };
        if mismatch {
            v.at("protocol", |v| v.error(format!("protocol {} does not exist in {family:?}", self.protocol)));
        }
        v.at("remote", |v| self.validate_remote(v));
        if let Some(origin) = &self.origin {
            v.at("origin", |v| origin.validate(v));
        }
    }

    fn validate_remote(&self, v: &mut Validator) {
        match &self.remote {
            Remote::Any => {}
            Remote::Cidr { cidr, except } => {
                v.check("cidr", canonical_net(cidr));
                if let Some(e) = self.ethertype.filter(|e| *e != Ethertype::of_net(cidr)) {
                    v.error(format!("ethertype {e:?} does not match the {:?} cidr {cidr}", Ethertype::of_net(cidr)));
                }
                if except.len() > MAX_LIST_LEN {
                    v.at("except", |v| v.error(format!("at most {MAX_LIST_LEN} entries")));
                }
                v.at("except", |v| {
                    for (i, e) in except.iter().enumerate() {
                        let check = canonical_net(e).and_then(|()| {
                            if cidr.contains(e) { Ok(()) } else { Err(format!("{e} is not inside {cidr}")) }
                        });
                        v.check(i, check);
                    }
                });
            }
            Remote::SecurityGroup { security_group } => {
                v.check("security_group", ObjectRef::parse(security_group).map(|_| ()));
            }
            Remote::Selector { ports, projects } => {
                v.at("ports", |v| ports.validate(v));
                if let Some(projects) = projects {
                    v.at("projects", |v| projects.validate(v));
                }
            }
        }
    }
}

fn byte(what: &str, n: i64) -> Result<(), String> {
    if (0..=255).contains(&n) { Ok(()) } else { Err(format!("{what} {n} is out of range 0-255")) }
}

/// A prefix written without host bits: `10.0.0.0/8`, not `10.1.2.3/8`.
pub fn canonical_net(net: &IpNet) -> Result<(), String> {
    if net.trunc() == *net { Ok(()) } else { Err(format!("{net} has host bits set: did you mean {}?", net.trunc())) }
}
