//! Synthetic clusters for benchmarks and scale tests, in the realistic shape of DESIGN.md §8:
//! per namespace about 4 pods with 3 labels each and 3 policies — a default-deny, an allow
//! from pods of the same app on a named port, and an allow from a namespaceSelector matching
//! about 10% of namespaces — with some policies adding egress rules and ipBlocks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;
use uuid::Uuid;
use weft_model::{Port, Project, SecurityGroup};

use crate::cluster::Change;

#[derive(Debug, Clone)]
pub struct Shape {
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub nodes: usize,
    /// One namespace in this many carries the label the namespaceSelector policies match.
    pub selected_namespace_every: usize,
    /// One namespace in this many has egress rules with an ipBlock.
    pub egress_every: usize,
}

impl Shape {
    /// Antrea's controller benchmark: 25,000 namespaces, 100,000 pods, 75,000 policies, 1,000
    /// nodes.
    pub fn antrea() -> Shape {
        Shape { namespaces: 25_000, pods_per_namespace: 4, nodes: 1_000, selected_namespace_every: 10, egress_every: 5 }
    }
}

fn id(kind: u64, n: u64) -> Uuid {
    Uuid::from_u64_pair(kind, n)
}

/// The id of the `n`th pod of a synthetic cluster (namespace-major order).
pub fn pod_id(n: usize) -> Uuid {
    id(2, n as u64)
}

/// The id of policy `which` (0 default-deny, 1 allow-same-app, 2 allow-from-platform) of a
/// namespace.
pub fn policy_id(namespace: usize, which: usize) -> Uuid {
    id(3, namespace as u64 * 3 + which as u64)
}

/// The address of the `n`th pod.
pub fn pod_address(n: usize) -> IpAddr {
    address(n)
}

fn address(n: usize) -> IpAddr {
    let n = n as u32 + 1;
    IpAddr::V4(Ipv4Addr::from((10 << 24) | n))
}

fn group(body: serde_json::Value, gid: Uuid, rule_base: u64) -> SecurityGroup {
    let mut g: SecurityGroup = serde_json::from_value(body).unwrap_or_else(|e| panic!("synthetic group: {e}"));
    g.id = Some(gid);
    for (i, r) in g.rules.iter_mut().enumerate() {
        r.id = Some(id(4, rule_base * 8 + i as u64));
    }
    g
}

/// The changes that build the cluster, in an order a store could have committed them.
pub fn cluster(shape: &Shape) -> Vec<Change> {
    let mut changes = Vec::with_capacity(shape.namespaces * (1 + shape.pods_per_namespace + 3));
    let mut pod = 0;
    for ns in 0..shape.namespaces {
        let project = format!("k8s-ns{ns}");
        // `bucket` splits the namespaces in tenths, for the tiered policies' selectors
        // ([`cluster_policies`]); no security group reads it.
        let mut labels = BTreeMap::from([
            ("kubernetes.io/metadata.name".to_string(), format!("ns{ns}")),
            ("bucket".to_string(), format!("b{}", ns % 10)),
        ]);
        if ns % shape.selected_namespace_every == 0 {
            labels.insert("team".into(), "platform".into());
        }
        changes.push(Change::UpsertProject(Project {
            id: Some(id(1, ns as u64)),
            name: project.clone(),
            labels,
            ..Default::default()
        }));
        for p in 0..shape.pods_per_namespace {
            let app = format!("app{}", p % 2);
            changes.push(Change::UpsertPort(Port {
                id: Some(id(2, pod as u64)),
                name: format!("pod-{p}"),
                project: project.clone(),
                labels: BTreeMap::from([
                    ("app".to_string(), app),
                    ("tier".to_string(), ["web", "db"][p % 2].to_string()),
                    ("pod-template-hash".to_string(), format!("h{}", p % 3)),
                ]),
                node: Some(format!("node-{}", pod % shape.nodes)),
                ips: vec![address(pod)],
                // A pod's UID, as kube-manager writes it.
                instance: Some(id(3, pod as u64).to_string()),
                security_groups: Some(vec![]),
                named_ports: serde_json::from_value(json!({"http": {"protocol": "tcp", "port": 8080}}))
                    .unwrap_or_default(),
                ..Default::default()
            }));
            pod += 1;
        }
        let base = ns as u64 * 3;
        changes.push(Change::UpsertGroup(group(
            json!({"name": "default-deny", "project": project, "selector": {}, "policy_types": ["ingress"]}),
            id(3, base),
            base,
        )));
        changes.push(Change::UpsertGroup(group(
            json!({"name": "allow-same-app", "project": project, "selector": {"matchLabels": {"app": "app0"}},
                   "policy_types": ["ingress"],
                   "rules": [{"direction": "ingress", "protocol": "tcp", "ports": ["http"],
                              "remote": {"type": "selector", "ports": {"matchLabels": {"app": "app0"}}}}]}),
            id(3, base + 1),
            base + 1,
        )));
        let mut from_team = json!({"name": "allow-from-platform", "project": project, "selector": {},
            "policy_types": ["ingress"],
            "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80],
                       "remote": {"type": "selector", "ports": {}, "projects": {"matchLabels": {"team": "platform"}}}}]});
        if ns % shape.egress_every == 0 {
            from_team["policy_types"] = json!(["ingress", "egress"]);
            if let Some(r) = from_team["rules"].as_array_mut() {
                r.push(json!({"direction": "egress", "protocol": "tcp", "ports": [443],
                              "remote": {"type": "cidr", "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}));
                r.push(json!({"direction": "egress", "protocol": "udp", "ports": [53],
                              "remote": {"type": "selector", "ports": {"matchLabels": {"app": "app1"}},
                                         "projects": {"matchLabels": {"kubernetes.io/metadata.name": "ns0"}}}}));
            }
        }
        changes.push(Change::UpsertGroup(group(from_team, id(3, base + 2), base + 2)));
    }
    changes
}

/// `per_tier` admin and as many baseline tiered policies (DESIGN.md §11), as issue 22's
/// benchmark asks: each with a subject selecting a tenth of the namespaces (every namespace
/// when `everywhere`) and three rules (two ingress, one egress) whose peers select another
/// tenth each, the admin ones denying, passing and accepting, the baseline ones accepting and
/// denying. Priorities differ within a tier: no ties.
pub fn cluster_policies(per_tier: usize, everywhere: bool) -> Vec<Change> {
    use weft_model::ClusterPolicy;
    let mut out = Vec::with_capacity(2 * per_tier);
    for (t, tier) in ["admin", "baseline"].into_iter().enumerate() {
        for i in 0..per_tier {
            let bucket = |k: usize| json!({"matchLabels": {"bucket": format!("b{}", (i + k) % 10)}});
            let subject = if everywhere { json!({}) } else { json!({"projects": bucket(0)}) };
            let (first, second, third) =
                if tier == "admin" { ("deny", "pass", "accept") } else { ("accept", "deny", "deny") };
            let body = json!({
                "name": format!("{tier}-{i}"), "tier": tier, "priority": i % 1000, "subject": subject,
                "ingress": [
                    {"name": "ssh", "action": first,
                     "remotes": [{"type": "selector", "ports": {"matchLabels": {"app": "app1"}}, "projects": bucket(1)}],
                     "protocols": [{"protocol": "tcp", "port": 22}]},
                    {"name": "web", "action": second, "remotes": [{"type": "selector", "projects": bucket(3)}],
                     "protocols": [{"protocol": "tcp", "port": 80}]}
                ],
                "egress": [
                    {"name": "dns", "action": third,
                     "remotes": [{"type": "selector", "ports": {"matchLabels": {"app": "app0"}}, "projects": bucket(7)}],
                     "protocols": [{"protocol": "udp", "port": 53}]}
                ]
            });
            let mut policy: ClusterPolicy =
                serde_json::from_value(body).unwrap_or_else(|e| panic!("synthetic cluster policy: {e}"));
            policy.id = Some(id(5, (t * per_tier + i) as u64));
            out.push(Change::UpsertClusterPolicy(policy));
        }
    }
    out
}

/// The dense case: one namespace, `pods` pods, `policies` policies that each select every pod.
pub fn dense(pods: usize, policies: usize, nodes: usize) -> Vec<Change> {
    let mut changes =
        vec![Change::UpsertProject(Project { id: Some(id(1, 0)), name: "k8s-dense".into(), ..Default::default() })];
    for p in 0..pods {
        changes.push(Change::UpsertPort(Port {
            id: Some(id(2, p as u64)),
            name: format!("pod-{p}"),
            project: "k8s-dense".into(),
            labels: BTreeMap::from([("app".to_string(), format!("app{}", p % 10))]),
            node: Some(format!("node-{}", p % nodes)),
            ips: vec![address(p)],
            security_groups: Some(vec![]),
            ..Default::default()
        }));
    }
    for n in 0..policies {
        changes.push(Change::UpsertGroup(group(
            json!({"name": format!("policy-{n}"), "project": "k8s-dense", "selector": {}, "policy_types": ["ingress"],
                   "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [1000 + (n % 1000) as i64],
                              "remote": {"type": "selector", "ports": {"matchLabels": {"app": format!("app{}", n % 10)}}}}]}),
            id(3, n as u64),
            n as u64,
        )));
    }
    changes
}
