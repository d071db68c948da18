//! Tiered cluster policy (DESIGN.md §11): Kubernetes' ClusterNetworkPolicy
//! (`policy.networking.k8s.io/v1alpha2`) as a cluster-scoped object of the config service.
//!
//! Security groups only allow (§3); this is the layer that denies and orders. An `admin`
//! policy decides before the security groups (the NetworkPolicy tier), a `baseline` one after
//! them, and only for a direction no security group isolates. Within a tier, policies go by
//! `priority` (lower first), ties broken by name; within a policy, rules go in order. Accept
//! ends the direction allowed, Deny drops silently, Pass skips the rest of its tier.
//!
//! The shape and limits follow the CRD (kubernetes-sigs/network-policy-api v0.2.0): at most 25
//! rules a direction, 25 remotes and 25 protocols a rule, 25 networks a remote; ingress has no
//! networks; a named port never goes with networks; a range starts below its end.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rule::{PortMatch, Protocol};
use crate::selector::{LabelSelector, Labels};
use crate::validation::{ValidationErrors, Validator};

/// At most this many rules a direction, remotes a rule, protocols a rule, networks a remote.
pub const MAX_TIERED_ITEMS: usize = 25;
/// The highest priority number (the lowest precedence).
pub const MAX_PRIORITY: i64 = 1000;
/// The longest rule name.
pub const MAX_RULE_NAME: usize = 100;

/// Where a policy decides: before the security groups, or after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Decides first: a namespace's NetworkPolicy cannot override it.
    Admin,
    /// Decides only where no security group isolates the port in that direction.
    Baseline,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Admin => "admin",
            Tier::Baseline => "baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Allowed in this direction: no later rule of any tier is asked.
    Accept,
    /// Dropped, silently.
    Deny,
    /// The rest of this tier is skipped: from admin to the security groups, from baseline to
    /// allowed.
    Pass,
}

impl std::fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyAction::Accept => "accept",
            PolicyAction::Deny => "deny",
            PolicyAction::Pass => "pass",
        })
    }
}

/// The ports a policy applies to: those whose labels match `ports` in projects whose labels
/// match `projects` (Kubernetes: `namespaces` is `ports: {}`; `pods` is both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySubject {
    #[serde(default)]
    pub ports: LabelSelector,
    #[serde(default)]
    pub projects: LabelSelector,
}

impl PolicySubject {
    /// Whether a port with `labels`, in a project with `project_labels`, is a subject.
    pub fn selects(&self, labels: &Labels, project_labels: &Labels) -> bool {
        self.projects.matches(project_labels) && self.ports.matches(labels)
    }
}

/// The other side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyRemote {
    /// Ports whose labels match `ports` in projects whose labels match `projects`.
    Selector {
        #[serde(default)]
        ports: LabelSelector,
        #[serde(default)]
        projects: LabelSelector,
    },
    /// Addresses in these prefixes, the cluster's own included (egress only).
    Networks {
        #[schema(value_type = Vec<String>)]
        networks: Vec<IpNet>,
    },
}

/// A protocol and, optionally, the destination port, range or port name it is limited to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyProtocol {
    /// tcp, udp or sctp. Absent only with a port name: the protocol the named port has
    /// (Kubernetes' `destinationNamedPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortMatch>,
}

/// One rule of a direction: what it matches and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TieredRule {
    /// Names the rule where it decided (explain, flows); may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub action: PolicyAction,
    /// Matches traffic from (ingress) or to (egress) any of these: 1 to 25.
    pub remotes: Vec<PolicyRemote>,
    /// Empty: every protocol and port, ICMP included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<PolicyProtocol>,
}

/// A tiered cluster policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length = 253)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = crate::selector::labels_schema)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub tier: Tier,
    /// 0 to 1000, lower first within its tier.
    #[schema(minimum = 0, maximum = 1000)]
    pub priority: i64,
    pub subject: PolicySubject,
    #[serde(default)]
    #[schema(max_items = 25)]
    pub ingress: Vec<TieredRule>,
    #[serde(default)]
    #[schema(max_items = 25)]
    pub egress: Vec<TieredRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// What the server reports of the policy when it serves it; ignored on input, so that a
    /// client can GET, edit and PUT a policy back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub status: Option<ClusterPolicyStatus>,
}

/// What the server reports of a cluster policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterPolicyStatus {
    /// The other policies of the same tier and priority, in name order. Policies tied so decide
    /// by name (the CRD leaves the order to the implementation): a warning that the order may
    /// not be the one meant.
    #[serde(default)]
    pub ties: Vec<String>,
    /// The nodes whose span holds the policy (those of the ports it selects), as the server
    /// answering knows it.
    #[serde(default)]
    pub nodes: u64,
    /// Of those, how many have applied its last change.
    #[serde(default)]
    pub applied: u64,
}

impl ClusterPolicy {
    /// The order policies of one tier decide in: priority, then name (the CRD leaves a tie
    /// to the implementation; a name is stable and says which).
    pub fn order_key(&self) -> (Tier, i64, &str) {
        (self.tier, self.priority, &self.name)
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        crate::resource::validate_common(&mut v, &self.name, &self.labels, &self.annotations);
        if !(0..=MAX_PRIORITY).contains(&self.priority) {
            v.at("priority", |v| v.error(format!("priority {} is out of range 0-{MAX_PRIORITY}", self.priority)));
        }
        v.at("subject", |v| {
            v.at("ports", |v| self.subject.ports.validate(v));
            v.at("projects", |v| self.subject.projects.validate(v));
        });
        for (field, rules, ingress) in [("ingress", &self.ingress, true), ("egress", &self.egress, false)] {
            v.at(field, |v| {
                if rules.len() > MAX_TIERED_ITEMS {
                    v.error(format!("at most {MAX_TIERED_ITEMS} rules, got {}", rules.len()));
                }
                for (i, rule) in rules.iter().enumerate() {
                    v.at(i, |v| rule.validate(v, ingress));
                }
            });
        }
        v.finish()
    }
}

impl TieredRule {
    fn validate(&self, v: &mut Validator, ingress: bool) {
        if self.name.chars().count() > MAX_RULE_NAME {
            v.at("name", |v| v.error(format!("at most {MAX_RULE_NAME} characters")));
        }
        v.at("remotes", |v| {
            if self.remotes.is_empty() || self.remotes.len() > MAX_TIERED_ITEMS {
                v.error(format!("1 to {MAX_TIERED_ITEMS} remotes, got {}", self.remotes.len()));
            }
            for (i, remote) in self.remotes.iter().enumerate() {
                v.at(i, |v| match remote {
                    PolicyRemote::Selector { ports, projects } => {
                        v.at("ports", |v| ports.validate(v));
                        v.at("projects", |v| projects.validate(v));
                    }
                    PolicyRemote::Networks { networks } => {
                        if ingress {
                            v.error(
                                "ingress rules match no networks (the CRD's ingress peers are namespaces and pods)",
                            );
                        }
                        if networks.is_empty() || networks.len() > MAX_TIERED_ITEMS {
                            v.at("networks", |v| {
                                v.error(format!("1 to {MAX_TIERED_ITEMS} networks, got {}", networks.len()))
                            });
                        }
                        v.at("networks", |v| {
                            for (j, network) in networks.iter().enumerate() {
                                v.check(j, crate::rule::canonical_net(network));
                            }
                        });
                    }
                });
            }
        });
        let has_networks = self.remotes.iter().any(|r| matches!(r, PolicyRemote::Networks { .. }));
        v.at("protocols", |v| {
            if self.protocols.len() > MAX_TIERED_ITEMS {
                v.error(format!("at most {MAX_TIERED_ITEMS} protocols, got {}", self.protocols.len()));
            }
            for (i, p) in self.protocols.iter().enumerate() {
                v.at(i, |v| {
                    match p.protocol {
                        Some(Protocol::Tcp | Protocol::Udp | Protocol::Sctp) => {}
                        Some(other) => v.at("protocol", |v| v.error(format!("{other} is not tcp, udp or sctp"))),
                        None if matches!(p.port, Some(PortMatch::Named(_))) => {}
                        None => v.at("protocol", |v| v.error("tcp, udp or sctp, unless the port is a port name")),
                    }
                    match &p.port {
                        None => {}
                        Some(PortMatch::Range { from, to }) if from >= to => {
                            v.at("port", |v| v.error(format!("range start {from} is not below its end {to}")))
                        }
                        Some(PortMatch::Named(_)) if has_networks => v.at("port", |v| {
                            v.error("a named port cannot go with networks: it names a port of the destination pod")
                        }),
                        Some(port) => v.at("port", |v| port.validate(v)),
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests;
