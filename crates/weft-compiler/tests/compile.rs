//! The compiler on hand-made clusters: the seed's yelb policy, span contents, determinism and
//! dangling references.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::net::IpAddr;

use serde_json::json;
use uuid::Uuid;
use weft_compiler::compiled::{Selection, SetDefinition};
use weft_compiler::{Change, Cluster, Dangling, Endpoint, Packet, SetId, compile};
use weft_model::{Port, Project, SecurityGroup};

fn project(name: &str) -> Change {
    Change::UpsertProject(Project { id: Some(Uuid::new_v4()), name: name.into(), ..Default::default() })
}

fn group(body: serde_json::Value) -> (Uuid, Change) {
    let mut g: SecurityGroup = serde_json::from_value(body).unwrap();
    let id = Uuid::new_v4();
    g.id = Some(id);
    for r in &mut g.rules {
        r.id = Some(Uuid::new_v4());
    }
    (id, Change::UpsertGroup(g))
}

fn port(name: &str, node: &str, ip: &str, labels: serde_json::Value) -> (Uuid, Change) {
    let id = Uuid::new_v4();
    let p = Port {
        id: Some(id),
        name: name.into(),
        project: "k8s-default".into(),
        node: Some(node.into()),
        ips: vec![ip.parse().unwrap()],
        labels: serde_json::from_value(labels).unwrap(),
        security_groups: Some(vec![]),
        ..Default::default()
    };
    (id, Change::UpsertPort(p))
}

fn tcp(src: &str, dst: &str, port: u16) -> Packet {
    Packet { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol: 6, port: Some(port), icmp: None }
}

fn ping(src: &str, dst: &str) -> Packet {
    Packet { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol: 1, port: None, icmp: Some((8, 0)) }
}

/// The seed's walk-through: default-deny ingress plus four allow policies.
fn yelb() -> (Cluster, [Uuid; 4]) {
    let mut c = Cluster::new();
    let mut rev = 0;
    let mut apply = |c: &mut Cluster, change| {
        rev += 1;
        c.apply(rev, change);
    };
    apply(&mut c, project("k8s-default"));
    let (ui, p) = port("yelb-ui", "node-1", "10.32.1.10", json!({"app": "yelb-ui", "tier": "frontend"}));
    apply(&mut c, p);
    let (app, p) =
        port("yelb-appserver", "node-1", "10.32.1.11", json!({"app": "yelb-appserver", "tier": "middletier"}));
    apply(&mut c, p);
    let (db, p) = port("yelb-db", "node-2", "10.32.2.10", json!({"app": "yelb-db", "tier": "backenddb"}));
    apply(&mut c, p);
    let (redis, p) = port("redis-server", "node-2", "10.32.2.11", json!({"app": "redis-server", "tier": "cache"}));
    apply(&mut c, p);
    let policies = [
        json!({"name": "default-deny", "project": "k8s-default", "selector": {}, "policy_types": ["ingress"]}),
        json!({"name": "yelb-ui-in", "project": "k8s-default", "selector": {"matchLabels": {"app": "yelb-ui", "tier": "frontend"}},
               "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80], "remote": {"type": "cidr", "cidr": "0.0.0.0/0"}}]}),
        json!({"name": "yelb-appserver-in", "project": "k8s-default", "selector": {"matchLabels": {"app": "yelb-appserver", "tier": "middletier"}},
               "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [4567], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "yelb-ui", "tier": "frontend"}}}}]}),
        json!({"name": "yelb-db-in", "project": "k8s-default", "selector": {"matchLabels": {"app": "yelb-db", "tier": "backenddb"}},
               "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "yelb-appserver", "tier": "middletier"}}}}]}),
        json!({"name": "redis-server-in", "project": "k8s-default", "selector": {"matchLabels": {"app": "redis-server", "tier": "cache"}},
               "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [6379], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "yelb-appserver", "tier": "middletier"}}}}]}),
    ];
    for p in policies {
        let (_, change) = group(p);
        apply(&mut c, change);
    }
    (c, [ui, app, db, redis])
}

#[test]
fn the_yelb_policy_allows_the_app_and_nothing_else() {
    let (c, [ui, app, db, redis]) = yelb();
    let compiled = compile(&c);
    let outside = Endpoint::Address("198.51.100.7".parse().unwrap());
    let check = |src: &Endpoint, dst: &Endpoint, p: Packet| compiled.explain(src, dst, &p).allowed;
    let (ui_e, app_e, db_e, redis_e) =
        (Endpoint::Port(ui), Endpoint::Port(app), Endpoint::Port(db), Endpoint::Port(redis));
    assert!(!check(&ui_e, &db_e, ping("10.32.1.10", "10.32.2.10")), "ping yelb-ui -> yelb-db");
    assert!(check(&outside, &ui_e, tcp("198.51.100.7", "10.32.1.10", 80)), "outside -> yelb-ui:80");
    assert!(check(&ui_e, &app_e, tcp("10.32.1.10", "10.32.1.11", 4567)), "yelb-ui -> yelb-appserver:4567");
    assert!(check(&app_e, &db_e, tcp("10.32.1.11", "10.32.2.10", 5432)), "yelb-appserver -> yelb-db:5432");
    assert!(check(&app_e, &redis_e, tcp("10.32.1.11", "10.32.2.11", 6379)), "yelb-appserver -> redis:6379");
    assert!(!check(&ui_e, &db_e, tcp("10.32.1.10", "10.32.2.10", 5432)), "yelb-ui -> yelb-db:5432");
    assert!(!check(&outside, &app_e, tcp("198.51.100.7", "10.32.1.11", 4567)), "outside -> yelb-appserver:4567");
    // the node a port runs on always reaches it (kubelet probes)
    let node2 = Endpoint::Node { name: "node-2".into(), address: "192.168.0.2".parse().unwrap() };
    let e = compiled.explain(&node2, &db_e, &tcp("192.168.0.2", "10.32.2.10", 9999));
    assert_eq!(e.always, Some(weft_compiler::AlwaysAllowed::OwnNode));
    // explain names the group and rule that allowed
    let e = compiled.explain(&app_e, &db_e, &tcp("10.32.1.11", "10.32.2.10", 5432));
    let Some(weft_compiler::Side::Allowed { group, .. }) = e.ingress else { panic!("{e:?}") };
    assert_eq!(c.group(&group).unwrap().name, "yelb-db-in");
    assert_eq!(e.egress, Some(weft_compiler::Side::Open));
}

#[test]
fn a_node_gets_its_own_ports_and_only_what_they_reference() {
    let (c, [ui, app, db, redis]) = yelb();
    let compiled = compile(&c);
    let node1 = &compiled.spans["node-1"];
    let node2 = &compiled.spans["node-2"];
    assert_eq!(node1.ports.keys().copied().collect::<Vec<_>>().len(), 2);
    assert!(node1.ports.contains_key(&ui) && node1.ports.contains_key(&app));
    assert!(node2.ports.contains_key(&db) && node2.ports.contains_key(&redis));
    let names = |span: &weft_compiler::NodeSpan| {
        span.groups.values().map(|g| g.name.clone()).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(names(node1), ["default-deny", "yelb-appserver-in", "yelb-ui-in"].map(String::from).into());
    assert_eq!(names(node2), ["default-deny", "redis-server-in", "yelb-db-in"].map(String::from).into());
    // db and redis both allow from "app=yelb-appserver,tier=middletier": one shared set
    assert_eq!(node2.sets.len(), 1, "{:?}", node2.sets);
    let members: Vec<IpAddr> = match &node2.sets.values().next().unwrap().members {
        weft_compiler::compiled::SetMembers::Addresses(a) => a.iter().copied().collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(members, ["10.32.1.11".parse::<IpAddr>().unwrap()]);
}

#[test]
fn output_is_deterministic_and_set_ids_are_stable() {
    let (c, _) = yelb();
    let a = serde_json::to_string(&compile(&c).spans).unwrap();
    let b = serde_json::to_string(&compile(&c.clone()).spans).unwrap();
    assert_eq!(a, b);
    // A set's id is a function of its definition alone: fixed across runs and releases.
    let definition = SetDefinition::Addresses(Selection::Cidr { cidr: "10.0.0.0/8".parse().unwrap(), except: vec![] });
    assert_eq!(SetId::of(&definition).to_string(), SetId::of(&definition.clone()).to_string());
    assert_eq!(SetId::of(&definition).to_string(), "s868b22f65a64c5fb2cc354bbb2538138");
}

#[test]
fn dangling_references_are_reported_and_resolve_when_the_stream_completes() {
    let mut c = Cluster::new();
    c.apply(1, project("k8s-default"));
    let (p, change) = port("web", "node-1", "10.0.0.5", json!({"app": "web"}));
    let Change::UpsertPort(mut web) = change else { unreachable!() };
    web.security_groups = Some(vec!["later".into()]);
    c.apply(2, Change::UpsertPort(web));
    let (_, g) =
        group(json!({"name": "uses-missing", "project": "k8s-default", "selector": {"matchLabels": {"app": "web"}},
        "rules": [{"direction": "ingress", "remote": {"type": "security_group", "security_group": "later"}}]}));
    c.apply(3, g);
    let compiled = compile(&c);
    assert!(
        compiled
            .dangling
            .iter()
            .any(|d| matches!(d, Dangling::PortGroup { port, group } if *port == p && group == "later"))
    );
    assert!(compiled.dangling.iter().any(|d| matches!(d, Dangling::RuleGroup { remote, .. } if remote == "later")));
    // once the group arrives, nothing dangles and it applies
    let (later, g) = group(json!({"name": "later", "project": "k8s-default", "policy_types": ["ingress"]}));
    c.apply(4, g);
    let compiled = compile(&c);
    assert!(compiled.dangling.is_empty(), "{:?}", compiled.dangling);
    let (_, policy) = compiled.port(&p).unwrap();
    let weft_compiler::Isolation::Isolated(groups) = &policy.ingress else { panic!() };
    assert!(groups.contains(&later));
}

/// Issue 17's first finding: a port of k8s-evil named `k8s-default/db-clients` and got what
/// k8s-default allows that group's members. A port is a member only of its own project's
/// groups; naming another's is reported, and changes nothing. A rule's remote may still name
/// another project's group: that is the rule owner's decision about its own traffic.
#[test]
fn a_port_is_never_a_member_of_another_projects_group() {
    let mut changes = vec![project("k8s-default"), project("k8s-evil")];
    let (db, p) = port("db", "node-1", "10.0.0.5", json!({"app": "db"}));
    changes.push(p);
    let (client, p) = port("client", "node-1", "10.0.0.6", json!({"app": "client"}));
    let Change::UpsertPort(mut client_port) = p else { unreachable!() };
    client_port.security_groups = Some(vec!["db-clients".into()]);
    changes.push(Change::UpsertPort(client_port));
    let evil = Uuid::new_v4();
    changes.push(Change::UpsertPort(Port {
        id: Some(evil),
        name: "evil".into(),
        project: "k8s-evil".into(),
        node: Some("node-2".into()),
        ips: vec!["10.0.1.9".parse().unwrap()],
        security_groups: Some(vec!["k8s-default/db-clients".into()]),
        ..Default::default()
    }));
    changes.push(
        group(json!({"name": "db-clients", "project": "k8s-default", "policy_types": ["egress"],
            "rules": [{"direction": "egress", "remote": {"type": "any"}}]}))
        .1,
    );
    changes.push(
        group(json!({"name": "db-in", "project": "k8s-default", "selector": {"matchLabels": {"app": "db"}},
            "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432],
            "remote": {"type": "security_group", "security_group": "db-clients"}}]}))
        .1,
    );
    // k8s-evil's own group that allows from k8s-default's clients: a remote in another project.
    changes.push(
        group(json!({"name": "from-clients", "project": "k8s-evil", "selector": {}, "policy_types": ["ingress"],
            "rules": [{"direction": "ingress", "remote": {"type": "security_group", "security_group": "k8s-default/db-clients"}}]}))
        .1,
    );
    let mut c = Cluster::new();
    for (revision, change) in changes.iter().enumerate() {
        c.apply(revision as i64 + 1, change.clone());
    }
    let compiled = compile(&c);
    let (db_e, client_e, evil_e) = (Endpoint::Port(db), Endpoint::Port(client), Endpoint::Port(evil));
    assert!(compiled.explain(&client_e, &db_e, &tcp("10.0.0.6", "10.0.0.5", 5432)).allowed);
    assert!(!compiled.explain(&evil_e, &db_e, &tcp("10.0.1.9", "10.0.0.5", 5432)).allowed, "evil joined db-clients");
    assert!(
        compiled.explain(&client_e, &evil_e, &tcp("10.0.0.6", "10.0.1.9", 22)).allowed,
        "a remote in another project"
    );
    let (_, evil_policy) = compiled.port(&evil).unwrap();
    assert_eq!(evil_policy.egress, weft_compiler::Isolation::Open, "db-clients isolates evil's egress");
    let foreign = Dangling::ForeignGroup { port: evil, group: "k8s-default/db-clients".into() };
    assert!(compiled.dangling.contains(&foreign), "{:?}", compiled.dangling);
    // The incremental compiler, fed the same changes, agrees.
    let mut incremental = weft_compiler::Compiler::new();
    incremental.load(changes.len() as i64, changes.clone());
    assert_eq!(incremental.snapshot(), compiled);
}

/// Two controllers fed the same revisions send the same bytes: the deltas have no order that
/// depends on hashing or on the history of the process (one of them loads the first half at
/// once, as a restarted controller does).
#[test]
fn incremental_deltas_are_the_same_bytes_on_every_controller() {
    use weft_compiler::{Compiler, synthetic};
    let shape = synthetic::Shape {
        namespaces: 40,
        pods_per_namespace: 4,
        nodes: 7,
        selected_namespace_every: 3,
        egress_every: 4,
    };
    let changes = synthetic::cluster(&shape);
    let (first, rest) = changes.split_at(changes.len() / 2);
    let mut a = Compiler::new();
    let mut b = Compiler::new();
    a.apply(1, first.iter().cloned());
    b.load(1, first.iter().cloned());
    for (i, batch) in rest.chunks(5).enumerate() {
        let revision = i as i64 + 2;
        let da = serde_json::to_vec(&a.apply(revision, batch.iter().cloned())).unwrap();
        let db = serde_json::to_vec(&b.apply(revision, batch.iter().cloned())).unwrap();
        assert_eq!(String::from_utf8_lossy(&da), String::from_utf8_lossy(&db), "revision {revision}");
    }
    // A pod in a namespace the platform policies select joins their set on every node whose
    // span references it: one shared set change, not one copy per node.
    let mut pod = a.cluster().port(&synthetic::pod_id(0)).unwrap().to_port(Uuid::new_v4());
    pod.name = "extra".into();
    pod.ips = vec!["10.200.0.1".parse().unwrap()];
    let deltas = a.apply(1000, [Change::UpsertPort(pod.clone())]);
    let shared: Vec<_> = deltas.sets.iter().filter(|(_, c)| c.members.added_addresses.contains(&pod.ips[0])).collect();
    assert!(!shared.is_empty());
    assert!(shared.iter().any(|(_, c)| c.nodes.len() > 1), "{deltas:?}");
    for (set, change) in &shared {
        for node in &change.nodes {
            assert!(a.span(node).sets.contains_key(set), "{node} got a change of {set}, which it does not hold");
        }
    }
    // Its own node gets the port.
    let own = pod.node.as_deref().unwrap();
    assert!(deltas.nodes[own].ports_upserted.contains_key(&pod.id.unwrap()));
}

fn cluster_policy(body: serde_json::Value) -> (Uuid, Change) {
    let mut p: weft_model::ClusterPolicy = serde_json::from_value(body).unwrap();
    let id = Uuid::new_v4();
    p.id = Some(id);
    (id, Change::UpsertClusterPolicy(p))
}

/// DESIGN.md §11 on the walk-through: an admin deny overrides the app's own allow, an admin
/// pass hands the decision to the NetworkPolicies (and explain says which passed), a baseline
/// policy decides only where no NetworkPolicy isolates; each decision names its tier, policy
/// and rule, in the incremental compiler as from scratch, and a node gets only the policies
/// of its own ports.
#[test]
fn tiered_policies_decide_in_order_and_explain_names_the_rule() {
    let (mut c, [ui, app, db, _redis]) = yelb();
    let base = changes_of(&c);
    let mut rev = 100;
    let mut apply = |c: &mut Cluster, change: Change| {
        rev += 1;
        c.apply(rev, change.clone());
        change
    };
    let (no_db, p) = cluster_policy(json!({
        "name": "no-db-from-appserver", "tier": "admin", "priority": 10,
        "subject": {"ports": {"matchLabels": {"app": "yelb-db"}}},
        "ingress": [
            {"name": "pass-5432", "action": "pass", "remotes": [{"type": "selector"}],
             "protocols": [{"protocol": "tcp", "port": 5432}]},
            {"name": "deny-rest", "action": "deny", "remotes": [{"type": "selector"}]}
        ]
    }));
    let mut changes = vec![apply(&mut c, p)];
    let (baseline, p) = cluster_policy(json!({
        "name": "egress-default", "tier": "baseline", "priority": 5, "subject": {},
        "egress": [{"name": "no-outside", "action": "deny",
                    "remotes": [{"type": "networks", "networks": ["198.51.100.0/24"]}]}]
    }));
    changes.push(apply(&mut c, p));
    let compiled = compile(&c);
    let (app_e, db_e, ui_e) = (Endpoint::Port(app), Endpoint::Port(db), Endpoint::Port(ui));
    let outside = Endpoint::Address("198.51.100.7".parse().unwrap());

    // 5432 passes the admin tier; the NetworkPolicy allows the appserver.
    let e = compiled.explain(&app_e, &db_e, &tcp("10.32.1.11", "10.32.2.10", 5432));
    assert!(e.allowed, "{e:?}");
    assert!(matches!(e.ingress, Some(weft_compiler::Side::Allowed { .. })), "{e:?}");
    assert_eq!(e.ingress_passed, Some(weft_compiler::TieredRuleRef { policy: no_db, rule: 0 }));
    // Anything else to the db is denied by the admin rule, before the NetworkPolicies.
    let e = compiled.explain(&ui_e, &db_e, &ping("10.32.1.10", "10.32.2.10"));
    assert_eq!(
        e.ingress,
        Some(weft_compiler::Side::Tiered {
            by: weft_compiler::TieredRuleRef { policy: no_db, rule: 1 },
            action: weft_model::PolicyAction::Deny
        })
    );
    assert!(!e.allowed);
    // Egress is isolated by no NetworkPolicy: the baseline decides it.
    let e = compiled.explain(&ui_e, &outside, &tcp("10.32.1.10", "198.51.100.7", 443));
    assert_eq!(
        e.egress,
        Some(weft_compiler::Side::Tiered {
            by: weft_compiler::TieredRuleRef { policy: baseline, rule: 0 },
            action: weft_model::PolicyAction::Deny
        })
    );
    let e = compiled.explain(&ui_e, &app_e, &tcp("10.32.1.10", "10.32.1.11", 4567));
    assert!(e.allowed && e.egress == Some(weft_compiler::Side::Open), "no baseline rule matches: {e:?}");

    // node-1 holds no port the admin policy selects: it gets only the baseline policy.
    let node1: Vec<Uuid> = compiled.spans["node-1"].policies.keys().copied().collect();
    let node2: std::collections::BTreeSet<Uuid> = compiled.spans["node-2"].policies.keys().copied().collect();
    assert_eq!(node1, [baseline]);
    assert_eq!(node2, [no_db, baseline].into());
    let db_policy = &compiled.spans["node-2"].ports[&db];
    assert_eq!(*db_policy.policies, [no_db, baseline], "admin before baseline");

    // The incremental compiler, fed the same, says the same.
    let mut incremental = weft_compiler::Compiler::new();
    incremental.load(1, base);
    incremental.apply(2, changes);
    assert_eq!(incremental.snapshot().spans, compiled.spans);
}

/// The changes that build what [`yelb`] built, in order.
fn changes_of(c: &Cluster) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    out.extend(c.project_by_name("k8s-default").cloned().map(Change::UpsertProject));
    out.extend(c.ports().map(|(id, p)| Change::UpsertPort(p.to_port(*id))));
    let groups: Vec<SecurityGroup> =
        ["default-deny", "yelb-ui-in", "yelb-appserver-in", "yelb-db-in", "redis-server-in"]
            .iter()
            .filter_map(|name| c.resolve_group("k8s-default", name).and_then(|id| c.group(&id)).cloned())
            .collect();
    out.extend(groups.into_iter().map(Change::UpsertGroup));
    out
}
