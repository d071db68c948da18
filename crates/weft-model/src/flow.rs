//! A flow as weft reports it (DESIGN.md §10): traffic the datapath saw, with both sides'
//! decisions joined into one record. The controller writes these; the API, the CLI and the
//! traffic-groups page read them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cluster_policy::{PolicyAction, Tier};
use crate::rule::RuleOrigin;

/// What was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// A connection began (or, `ended`, ended).
    Connection,
    /// A packet the policy dropped (a sample: the drop counters count them all).
    Denied,
    /// A DNS query a port sent.
    Dns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// One end of a flow: an address, and the port holding it when it is one of weft's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowEndpoint {
    #[schema(value_type = String)]
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The node the port is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl FlowEndpoint {
    pub fn outside(address: IpAddr) -> FlowEndpoint {
        FlowEndpoint { address, port: None, project: None, name: None, labels: BTreeMap::new(), node: None }
    }
}

/// A security group's rule, as a flow names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowRule {
    pub group: Uuid,
    pub project: String,
    /// The group's name.
    pub group_name: String,
    pub rule: Uuid,
    /// Where the rule came from (a NetworkPolicy's entry), when its writer said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

/// A tiered cluster policy's rule (DESIGN.md §11), as a flow names it: what it did, in which
/// tier, and, to an admin, which policy and rule it was. A project's token is told the tier
/// and the action only, as explain tells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowTieredRule {
    pub tier: Tier,
    /// accept or deny, or pass (a baseline pass allows).
    pub action: PolicyAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// The rule's place among the policy's rules of the side's direction, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
}

impl FlowTieredRule {
    /// What a project's token is told of it: the tier and the action.
    pub fn redacted(self) -> FlowTieredRule {
        FlowTieredRule { policy: None, policy_name: None, rule: None, rule_name: None, ..self }
    }

    pub fn denies(&self) -> bool {
        self.action == PolicyAction::Deny
    }
}

impl std::fmt::Display for FlowTieredRule {
    /// `admin policy no-metadata rule 0 (deny-metadata): deny`, or `admin policy: deny`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} policy", self.tier)?;
        if let Some(name) = &self.policy_name {
            write!(f, " {name}")?;
        }
        if let Some(rule) = self.rule {
            write!(f, " rule {rule}")?;
        }
        if let Some(name) = self.rule_name.as_ref().filter(|n| !n.is_empty()) {
            write!(f, " ({name})")?;
        }
        write!(f, ": {}", self.action)
    }
}

/// A security group, as a flow names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowGroup {
    pub id: Uuid,
    pub project: String,
    pub name: String,
}

/// What one side (the source port's egress, the destination port's ingress) decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum SideDecision {
    /// No group isolates the port this way.
    Open,
    /// This rule allowed it.
    Allowed { rule: FlowRule },
    /// Allowed, by a rule the node could not tell (the connection began before the port was
    /// isolated), or passed on the way to a side that denied it.
    AllowedUnknown,
    /// Dropped: the port is isolated this way by these groups, and none of their rules allows it.
    Denied { isolated_by: Vec<FlowGroup> },
    /// A tiered cluster policy's rule decided: accepted, denied, or (baseline) passed.
    Tiered { rule: FlowTieredRule },
}

impl SideDecision {
    /// Whether it dropped the traffic.
    pub fn denies(&self) -> bool {
        match self {
            SideDecision::Denied { .. } => true,
            SideDecision::Tiered { rule } => rule.denies(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowCounters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DnsQuestion {
    pub name: String,
    /// The record type (1 A, 28 AAAA, 33 SRV, ...).
    pub qtype: u16,
}

/// A flow: what the datapath saw, with each local side's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Flow {
    /// Its place in the flow log (ascending): `since_id` of a later read.
    #[serde(default)]
    pub id: i64,
    /// When its node saw it, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub kind: FlowKind,
    pub verdict: Verdict,
    /// A connection's end (with its packets and bytes); else its beginning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// The IP protocol number.
    pub protocol: u8,
    pub src: FlowEndpoint,
    pub dst: FlowEndpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// The source port's egress, when the source is a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SideDecision>,
    /// The destination port's ingress, when the destination is a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SideDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsQuestion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<FlowCounters>,
    /// The nodes that reported it.
    pub nodes: Vec<String>,
}

impl Flow {
    /// The projects of its ends that are ports: who may read it.
    pub fn projects(&self) -> Vec<String> {
        let mut out: Vec<String> = [&self.src.project, &self.dst.project].into_iter().flatten().cloned().collect();
        out.dedup();
        out
    }

    /// The protocol's name where it has a common one, else its number.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            1 => "ICMP".into(),
            6 => "TCP".into(),
            17 => "UDP".into(),
            58 => "ICMPv6".into(),
            132 => "SCTP".into(),
            n => n.to_string(),
        }
    }
}
