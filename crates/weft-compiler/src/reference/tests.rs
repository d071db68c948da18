//! DESIGN.md §11 on a hand-made cluster, rule by rule: what the tiers decide, in the reference
//! evaluator the compiler is checked against.

use serde_json::json;
use uuid::Uuid;
use weft_model::{ClusterPolicy, Port, Project, SecurityGroup};

use super::allowed;
use crate::cluster::{Change, Cluster};
use crate::eval::Packet;
use crate::explain::Endpoint;

/// Tenants a and b and kube-system; web (a, 10.0.1.1, `http` = TCP 8080), db (a, 10.0.1.2),
/// other (b, 10.0.2.1), dns (kube-system, 10.0.9.9).
struct Lab {
    cluster: Cluster,
    revision: i64,
    web: Uuid,
    db: Uuid,
    other: Uuid,
    dns: Uuid,
}

impl Lab {
    fn new() -> Lab {
        let mut lab = Lab {
            cluster: Cluster::new(),
            revision: 0,
            web: Uuid::nil(),
            db: Uuid::nil(),
            other: Uuid::nil(),
            dns: Uuid::nil(),
        };
        for (name, labels) in [
            ("tenant-a", json!({"tenant": "a"})),
            ("tenant-b", json!({"tenant": "b"})),
            ("kube-system", json!({"kubernetes.io/metadata.name": "kube-system"})),
        ] {
            let labels = serde_json::from_value(labels).unwrap();
            lab.apply(Change::UpsertProject(Project {
                id: Some(Uuid::new_v4()),
                name: name.into(),
                labels,
                ..Default::default()
            }));
        }
        lab.web = lab.port("tenant-a", "web", "10.0.1.1", json!({"http": {"protocol": "tcp", "port": 8080}}));
        lab.db = lab.port("tenant-a", "db", "10.0.1.2", json!({}));
        lab.other = lab.port("tenant-b", "web", "10.0.2.1", json!({}));
        lab.dns = lab.port("kube-system", "dns", "10.0.9.9", json!({}));
        lab
    }

    fn apply(&mut self, change: Change) {
        self.revision += 1;
        self.cluster.apply(self.revision, change);
    }

    fn port(&mut self, project: &str, app: &str, ip: &str, named_ports: serde_json::Value) -> Uuid {
        let id = Uuid::new_v4();
        let port = Port {
            id: Some(id),
            name: app.into(),
            project: project.into(),
            node: Some("node-1".into()),
            ips: vec![ip.parse().unwrap()],
            labels: serde_json::from_value(json!({"app": app})).unwrap(),
            named_ports: serde_json::from_value(named_ports).unwrap(),
            security_groups: Some(vec![]),
            ..Default::default()
        };
        self.apply(Change::UpsertPort(port));
        id
    }

    fn policy(&mut self, body: serde_json::Value) -> Uuid {
        let mut policy: ClusterPolicy = serde_json::from_value(body).unwrap();
        assert_eq!(policy.validate(), Ok(()));
        let id = Uuid::new_v4();
        policy.id = Some(id);
        self.apply(Change::UpsertClusterPolicy(policy));
        id
    }

    fn group(&mut self, body: serde_json::Value) {
        let mut group: SecurityGroup = serde_json::from_value(body).unwrap();
        group.id = Some(Uuid::new_v4());
        for r in &mut group.rules {
            r.id = Some(Uuid::new_v4());
        }
        self.apply(Change::UpsertGroup(group));
    }

    fn address(&self, port: Uuid) -> String {
        self.cluster.port(&port).unwrap().ips[0].to_string()
    }

    /// Whether TCP from `from` to `to`'s `dport` is allowed.
    fn tcp(&self, from: Uuid, to: Uuid, dport: u16) -> bool {
        let packet = Packet {
            src: self.address(from).parse().unwrap(),
            dst: self.address(to).parse().unwrap(),
            protocol: 6,
            port: Some(dport),
            icmp: None,
        };
        allowed(&self.cluster, &Endpoint::Port(from), &Endpoint::Port(to), &packet)
    }
}

fn from_projects(action: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"action": action, "remotes": [{"type": "selector", "projects": {"matchLabels": labels}}]})
}

fn everyone(action: &str) -> serde_json::Value {
    json!({"action": action, "remotes": [{"type": "selector"}]})
}

fn admin(name: &str, priority: i64, subject_tenant: &str, ingress: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"name": name, "tier": "admin", "priority": priority,
           "subject": {"projects": {"matchLabels": {"tenant": subject_tenant}}}, "ingress": ingress})
}

#[test]
fn with_no_policy_and_no_group_everything_is_allowed() {
    let lab = Lab::new();
    assert!(lab.tcp(lab.other, lab.web, 80));
    assert!(lab.tcp(lab.web, lab.other, 80));
}

#[test]
fn an_admin_deny_drops_and_a_pass_goes_on_to_the_security_groups() {
    let mut lab = Lab::new();
    lab.policy(admin("tenancy", 20, "a", vec![from_projects("pass", json!({"tenant": "a"})), everyone("deny")]));
    assert!(!lab.tcp(lab.other, lab.web, 80), "another tenant is denied");
    assert!(lab.tcp(lab.db, lab.web, 80), "the same tenant passes to the groups, which isolate nothing");
    assert!(lab.tcp(lab.web, lab.other, 80), "an ingress policy says nothing of egress");
    // Passed to a default-deny group: denied there.
    lab.group(json!({"name": "default-deny", "project": "tenant-a", "selector": {}, "policy_types": ["ingress"]}));
    assert!(!lab.tcp(lab.db, lab.web, 80));
}

#[test]
fn an_admin_accept_overrides_a_network_policy_that_would_deny() {
    let mut lab = Lab::new();
    lab.group(json!({"name": "default-deny", "project": "tenant-a", "selector": {}, "policy_types": ["ingress"]}));
    assert!(!lab.tcp(lab.dns, lab.web, 80));
    lab.policy(admin(
        "from-kube-system",
        10,
        "a",
        vec![from_projects("accept", json!({"kubernetes.io/metadata.name": "kube-system"}))],
    ));
    assert!(lab.tcp(lab.dns, lab.web, 80), "accepted before the groups are asked");
    assert!(!lab.tcp(lab.other, lab.web, 80), "no rule matched: the groups decide, and deny");
}

#[test]
fn a_pass_skips_the_rest_of_its_tier_not_only_its_policy() {
    let mut lab = Lab::new();
    lab.policy(admin("deny-b", 2, "a", vec![from_projects("deny", json!({"tenant": "b"}))]));
    assert!(!lab.tcp(lab.other, lab.web, 80));
    lab.policy(admin("pass-b", 1, "a", vec![from_projects("pass", json!({"tenant": "b"}))]));
    assert!(lab.tcp(lab.other, lab.web, 80), "passed at priority 1: the deny at 2 is skipped");
}

#[test]
fn the_baseline_decides_only_where_no_security_group_isolates_and_its_pass_allows() {
    let mut lab = Lab::new();
    lab.policy(json!({"name": "baseline-deny", "tier": "baseline", "priority": 10,
        "subject": {"projects": {"matchLabels": {"tenant": "a"}}}, "ingress": [everyone("deny")]}));
    assert!(!lab.tcp(lab.db, lab.web, 80), "nothing isolates web: the baseline denies");
    // A group isolating web decides for web; db stays under the baseline.
    lab.group(json!({"name": "web-in", "project": "tenant-a", "selector": {"matchLabels": {"app": "web"}},
        "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80],
                   "remote": {"type": "selector", "ports": {"matchLabels": {"app": "db"}}}}]}));
    assert!(lab.tcp(lab.db, lab.web, 80), "the group allows: the baseline is not asked");
    assert!(!lab.tcp(lab.other, lab.web, 80), "the group denies");
    assert!(!lab.tcp(lab.web, lab.db, 5432), "db: the baseline denies");
    lab.policy(json!({"name": "baseline-pass-a", "tier": "baseline", "priority": 5,
        "subject": {"projects": {"matchLabels": {"tenant": "a"}}}, "ingress": [from_projects("pass", json!({"tenant": "a"}))]}));
    assert!(lab.tcp(lab.web, lab.db, 5432), "a baseline pass is allowed");
    assert!(!lab.tcp(lab.other, lab.db, 5432));
}

#[test]
fn within_a_tier_policies_go_by_priority_then_by_name() {
    let mut lab = Lab::new();
    lab.policy(admin("b-deny", 10, "a", vec![from_projects("deny", json!({"tenant": "b"}))]));
    let accept = lab.policy(admin("a-accept", 10, "a", vec![from_projects("accept", json!({"tenant": "b"}))]));
    assert!(lab.tcp(lab.other, lab.web, 80), "a tie: a-accept comes first by name");
    let mut later: ClusterPolicy =
        serde_json::from_value(admin("a-accept", 11, "a", vec![from_projects("accept", json!({"tenant": "b"}))]))
            .unwrap();
    later.id = Some(accept);
    lab.apply(Change::UpsertClusterPolicy(later));
    assert!(!lab.tcp(lab.other, lab.web, 80), "reordered behind the deny");
    lab.apply(Change::DeleteClusterPolicy(accept));
    assert!(!lab.tcp(lab.other, lab.web, 80));
}

#[test]
fn protocols_and_named_ports_narrow_a_rule_and_networks_match_addresses() {
    let mut lab = Lab::new();
    let b = json!({"tenant": "b"});
    lab.policy(admin(
        "web-from-b",
        10,
        "a",
        vec![
            json!({"action": "accept", "remotes": [{"type": "selector", "projects": {"matchLabels": b}}],
                   "protocols": [{"protocol": "tcp", "port": "http"}]}),
            from_projects("deny", b.clone()),
        ],
    ));
    assert!(lab.tcp(lab.other, lab.web, 8080), "http is web's TCP 8080");
    assert!(!lab.tcp(lab.other, lab.web, 80));
    assert!(!lab.tcp(lab.other, lab.db, 8080), "db has no port named http");
    // Egress to networks: the metadata address denied, the rest not.
    lab.policy(json!({"name": "no-metadata", "tier": "admin", "priority": 0, "subject": {},
        "egress": [{"action": "deny", "remotes": [{"type": "networks", "networks": ["169.254.169.254/32"]}]}]}));
    let out = |dst: &str| Packet {
        src: "10.0.1.2".parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: 6,
        port: Some(80),
        icmp: None,
    };
    let to =
        |dst: &str| allowed(&lab.cluster, &Endpoint::Port(lab.db), &Endpoint::Address(dst.parse().unwrap()), &out(dst));
    assert!(!to("169.254.169.254"));
    assert!(to("192.0.2.1"));
}

#[test]
fn each_side_decides_its_own_direction_and_a_port_to_itself_is_never_subject() {
    let mut lab = Lab::new();
    lab.policy(json!({"name": "a-out", "tier": "admin", "priority": 1, "subject": {"projects": {"matchLabels": {"tenant": "a"}}},
        "egress": [everyone("accept")]}));
    lab.policy(admin("b-in", 1, "b", vec![everyone("deny")]));
    assert!(!lab.tcp(lab.web, lab.other, 80), "an egress accept leaves the receiver's ingress to decide");
    lab.policy(json!({"name": "deny-all", "tier": "admin", "priority": 0, "subject": {},
        "ingress": [everyone("deny")], "egress": [everyone("deny")]}));
    assert!(lab.tcp(lab.web, lab.web, 80), "a port's traffic to itself");
}
