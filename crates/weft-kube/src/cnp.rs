//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api v0.2.0) as
//! weft's tiered cluster policy (DESIGN.md §11). Pure: the object as the API server serves it
//! in, a [`ClusterPolicy`] and the problems out.
//!
//! k8s-openapi has no types for this CRD: the few fields weft reads are declared here, and a
//! field this version does not know is ignored as it is read, so that a peer or protocol of a
//! newer CRD reads as one with no known field. Such a peer fails closed, as the API asks: in
//! an Accept rule it matches nothing; in a Deny or Pass rule the rule denies everything.
//! `nodes` and `domainNames` peers (the experimental channel) are not supported yet and are
//! treated the same way, with a problem saying so.

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::Deserialize;
use weft_model::{
    ClusterPolicy, LabelSelector, PolicyAction, PolicyProtocol, PolicyRemote, PolicySubject, PortMatch, Protocol, Tier,
    TieredRule,
};

use crate::translate::{CLUSTER_LABEL, Options, Problem, ProblemKind};

/// A ClusterNetworkPolicy, as much of it as weft reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: meta::ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    /// As the API server holds it; kube-manager writes its conditions
    /// ([`crate::cnp_status`]).
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub tier: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub subject: Subject,
    #[serde(default)]
    pub ingress: Vec<Rule>,
    #[serde(default)]
    pub egress: Vec<Rule>,
}

/// Exactly one of namespaces and pods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub namespaces: Option<meta::LabelSelector>,
    pub pods: Option<Pods>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pods {
    #[serde(default)]
    pub namespace_selector: meta::LabelSelector,
    #[serde(default)]
    pub pod_selector: meta::LabelSelector,
}

/// An ingress rule (`from`) or an egress rule (`to`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub from: Vec<Peer>,
    #[serde(default)]
    pub to: Vec<Peer>,
    #[serde(default)]
    pub protocols: Vec<ProtocolEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub namespaces: Option<meta::LabelSelector>,
    pub pods: Option<Pods>,
    pub networks: Option<Vec<String>>,
    pub nodes: Option<serde_json::Value>,
    pub domain_names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolEntry {
    pub tcp: Option<ProtocolPort>,
    pub udp: Option<ProtocolPort>,
    pub sctp: Option<ProtocolPort>,
    pub destination_named_port: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    pub destination_port: Option<DestinationPort>,
}

/// One of number and range.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPort {
    pub number: Option<i64>,
    pub range: Option<PortRange>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PortRange {
    pub start: i64,
    pub end: i64,
}

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ClusterNetworkPolicy".into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "policy.networking.k8s.io".into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha2".into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "clusternetworkpolicies".into()
    }

    fn meta(&self) -> &meta::ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut meta::ObjectMeta {
        &mut self.metadata
    }
}

/// The weft name of a ClusterNetworkPolicy: cluster-scoped, so the cluster's prefix keeps two
/// clusters' policies of one name apart.
pub fn policy_name(name: &str, o: &Options) -> String {
    format!("{}cnp-{name}", o.project_prefix)
}

/// The policy as weft's, and what could not be represented. None when the policy as a whole
/// cannot be read (a tier, a subject or a priority it has not got right).
pub fn cluster_network_policy(cnp: &ClusterNetworkPolicy, o: &Options) -> (Option<ClusterPolicy>, Vec<Problem>) {
    let name = cnp.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let mut report = |detail: String| {
        problems.push(Problem { kind: ProblemKind::ClusterNetworkPolicy, namespace: None, name: name.clone(), detail })
    };
    let spec = &cnp.spec;
    let tier = match spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => {
            report(format!("tier {other:?} is not Admin or Baseline"));
            return (None, problems);
        }
    };
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(namespaces), None) => {
            projects(namespaces, o).map(|projects| PolicySubject { ports: LabelSelector::default(), projects })
        }
        (None, Some(pods)) => pods_selector(pods, o).map(|(ports, projects)| PolicySubject { ports, projects }),
        _ => Err("the subject needs exactly one of namespaces and pods".to_string()),
    };
    let subject = match subject {
        Ok(subject) => subject,
        Err(e) => {
            report(format!("subject: {e}"));
            return (None, problems);
        }
    };
    let mut rules = |entries: &[Rule], ingress: bool| -> Vec<TieredRule> {
        let field = if ingress { "ingress" } else { "egress" };
        entries
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let (translated, notes) = tiered_rule(rule, ingress, o);
                for note in notes {
                    report(format!("{field}[{i}]: {note}"));
                }
                translated
            })
            .collect()
    };
    let ingress = rules(&spec.ingress, true);
    let egress = rules(&spec.egress, false);
    let policy = ClusterPolicy {
        id: None,
        name: policy_name(&name, o),
        labels: Default::default(),
        annotations: o.annotations(),
        tier,
        priority: spec.priority,
        subject,
        ingress,
        egress,
        revision: None,
        created_at: None,
        updated_at: None,
        status: None,
    };
    if let Err(e) = policy.validate() {
        report(format!("not representable: {e}"));
        return (None, problems);
    }
    (Some(policy), problems)
}

/// A namespace selector as a project selector of this cluster's projects.
fn projects(namespaces: &meta::LabelSelector, o: &Options) -> Result<LabelSelector, String> {
    let mut projects = crate::translate::selector(namespaces)?;
    projects.match_labels.insert(CLUSTER_LABEL.into(), o.cluster.clone());
    Ok(projects)
}

fn pods_selector(pods: &Pods, o: &Options) -> Result<(LabelSelector, LabelSelector), String> {
    let ports = crate::translate::selector(&pods.pod_selector).map_err(|e| format!("podSelector: {e}"))?;
    let projects = projects(&pods.namespace_selector, o).map_err(|e| format!("namespaceSelector: {e}"))?;
    Ok((ports, projects))
}

/// A rule as weft's (None: it matches nothing), and what was left out of it.
fn tiered_rule(rule: &Rule, ingress: bool, o: &Options) -> (Option<TieredRule>, Vec<String>) {
    let mut notes = Vec::new();
    let action = match rule.action.as_str() {
        "Accept" => PolicyAction::Accept,
        "Deny" => PolicyAction::Deny,
        "Pass" => PolicyAction::Pass,
        other => {
            // Failing closed: a rule whose action cannot be read denies what it matches.
            notes.push(format!("action {other:?} is not Accept, Deny or Pass: taken as Deny"));
            PolicyAction::Deny
        }
    };
    let peers = if ingress { &rule.from } else { &rule.to };
    let mut remotes = Vec::new();
    let mut unknown = false;
    for (i, peer) in peers.iter().enumerate() {
        match remote(peer, ingress, o) {
            Ok(r) => remotes.push(r),
            Err(e) => {
                notes.push(format!("peer {i}: {e}"));
                unknown = true;
            }
        }
    }
    let mut protocols = Vec::new();
    for (i, entry) in rule.protocols.iter().enumerate() {
        match protocol(entry) {
            Ok(p) => protocols.push(p),
            Err(e) => {
                notes.push(format!("protocols[{i}]: {e}"));
                unknown = true;
            }
        }
    }
    let name = rule.name.clone();
    if !unknown {
        return (Some(TieredRule { name, action, remotes, protocols }), notes);
    }
    match action {
        // What an Accept rule cannot say, it does not accept: the rest of it stands, or none.
        PolicyAction::Accept => {
            let whole = !remotes.is_empty() && protocols.len() == rule.protocols.len();
            if whole {
                (Some(TieredRule { name, action, remotes, protocols }), notes)
            } else {
                notes.push("the rule accepts nothing".into());
                (None, notes)
            }
        }
        // A Deny or Pass rule that cannot be read denies everything (the API's fail-closed).
        PolicyAction::Deny | PolicyAction::Pass => {
            notes.push("the rule denies everything".into());
            let everything = if ingress {
                vec![PolicyRemote::Selector { ports: LabelSelector::default(), projects: LabelSelector::default() }]
            } else {
                let any = ["0.0.0.0/0", "::/0"].iter().filter_map(|n| n.parse::<IpNet>().ok()).collect();
                vec![PolicyRemote::Networks { networks: any }]
            };
            (Some(TieredRule { name, action: PolicyAction::Deny, remotes: everything, protocols: vec![] }), notes)
        }
    }
}

fn remote(peer: &Peer, ingress: bool, o: &Options) -> Result<PolicyRemote, String> {
    let known = [peer.namespaces.is_some(), peer.pods.is_some(), peer.networks.is_some()];
    if peer.nodes.is_some() || peer.domain_names.is_some() {
        return Err("nodes and domainNames peers are not supported yet".into());
    }
    match known.iter().filter(|k| **k).count() {
        0 => return Err("a peer with no field this version knows".into()),
        1 => {}
        _ => return Err("a peer has exactly one of namespaces, pods and networks".into()),
    }
    if let Some(namespaces) = &peer.namespaces {
        return Ok(PolicyRemote::Selector { ports: LabelSelector::default(), projects: projects(namespaces, o)? });
    }
    if let Some(pods) = &peer.pods {
        let (ports, projects) = pods_selector(pods, o)?;
        return Ok(PolicyRemote::Selector { ports, projects });
    }
    if ingress {
        return Err("ingress peers have no networks".into());
    }
    let networks = peer
        .networks
        .iter()
        .flatten()
        .map(|n| n.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("network {n:?} is not a CIDR")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PolicyRemote::Networks { networks })
}

fn protocol(entry: &ProtocolEntry) -> Result<PolicyProtocol, String> {
    let given = [
        entry.tcp.as_ref().map(|p| (Protocol::Tcp, p)),
        entry.udp.as_ref().map(|p| (Protocol::Udp, p)),
        entry.sctp.as_ref().map(|p| (Protocol::Sctp, p)),
    ];
    let mut given = given.into_iter().flatten();
    match (given.next(), given.next(), &entry.destination_named_port) {
        (Some((protocol, p)), None, None) => {
            let port = match &p.destination_port {
                None => None,
                Some(DestinationPort { number: Some(n), range: None }) => Some(PortMatch::Single(*n)),
                Some(DestinationPort { number: None, range: Some(r) }) => {
                    Some(PortMatch::Range { from: r.start, to: r.end })
                }
                Some(_) => return Err("destinationPort has exactly one of number and range".into()),
            };
            Ok(PolicyProtocol { protocol: Some(protocol), port })
        }
        (None, None, Some(name)) => Ok(PolicyProtocol { protocol: None, port: Some(PortMatch::Named(name.clone())) }),
        (None, None, None) => Err("an entry with no protocol this version knows".into()),
        _ => Err("an entry has exactly one of tcp, udp, sctp and destinationNamedPort".into()),
    }
}

#[cfg(test)]
mod tests;
