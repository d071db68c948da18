use serde_json::json;

use super::*;

fn policy(body: serde_json::Value) -> ClusterPolicy {
    serde_json::from_value(body).expect("a cluster policy")
}

/// The CRD's own example of a tenancy policy, as weft writes it.
fn tenancy() -> serde_json::Value {
    json!({
        "name": "tenancy",
        "tier": "admin",
        "priority": 20,
        "subject": {"projects": {"matchExpressions": [{"key": "tenant", "operator": "Exists"}]}},
        "ingress": [
            {"name": "same-tenant", "action": "pass",
             "remotes": [{"type": "selector", "projects": {"matchLabels": {"tenant": "a"}}}]},
            {"name": "others", "action": "deny", "remotes": [{"type": "selector"}]}
        ],
        "egress": [
            {"name": "metadata", "action": "deny",
             "remotes": [{"type": "networks", "networks": ["169.254.169.254/32"]}]},
            {"name": "dns", "action": "accept",
             "remotes": [{"type": "selector", "projects": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
             "protocols": [{"protocol": "udp", "port": 53}, {"protocol": "tcp", "port": {"from": 53, "to": 54}}]}
        ]
    })
}

fn errors(p: &ClusterPolicy) -> Vec<(String, String)> {
    p.validate().err().map(|e| e.errors.into_iter().map(|e| (e.pointer, e.detail)).collect()).unwrap_or_default()
}

#[test]
fn a_policy_reads_and_writes_back_as_it_was_given() {
    let p = policy(tenancy());
    assert_eq!(p.validate(), Ok(()));
    assert_eq!(
        (p.tier, p.priority, p.ingress[0].action, p.egress[1].protocols.len()),
        (Tier::Admin, 20, PolicyAction::Pass, 2)
    );
    assert!(p.subject.ports.is_empty(), "a namespaces subject: every port of the projects");
    let again: ClusterPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(again, p);
}

#[test]
fn the_limits_of_the_crd_are_errors_naming_their_field() {
    let mut body = tenancy();
    body["priority"] = json!(1001);
    body["ingress"][0]["remotes"] = json!([]);
    body["ingress"][1]["remotes"] = json!([{"type": "networks", "networks": ["10.0.0.0/8"]}]);
    body["egress"][0]["protocols"] = json!([{"protocol": "tcp", "port": "http"}]);
    body["egress"][1]["protocols"] = json!([
        {"protocol": "icmp"},
        {"port": 80},
        {"protocol": "tcp", "port": {"from": 80, "to": 80}},
        {"protocol": "udp", "port": 70000}
    ]);
    body["egress"][1]["name"] = json!("n".repeat(101));
    body["egress"][0]["remotes"][0]["networks"] = json!(["169.254.169.254/16"]);
    let got = errors(&policy(body));
    let at = |pointer: &str| got.iter().any(|(p, _)| p == pointer);
    for pointer in [
        "/priority",
        "/ingress/0/remotes",
        "/ingress/1/remotes/0",
        "/egress/0/protocols/0/port",
        "/egress/1/name",
        "/egress/1/protocols/0/protocol",
        "/egress/1/protocols/1/protocol",
        "/egress/1/protocols/2/port",
        "/egress/1/protocols/3/port",
        "/egress/0/remotes/0/networks/0",
    ] {
        assert!(at(pointer), "an error at {pointer}: {got:?}");
    }
    assert_eq!(got.len(), 10, "{got:?}");
    // A port name alone is the named port's protocol.
    let mut body = tenancy();
    body["egress"][1]["protocols"] = json!([{"port": "dns"}]);
    assert_eq!(policy(body).validate(), Ok(()));
}

#[test]
fn at_most_25_rules_remotes_protocols_and_networks() {
    let mut body = tenancy();
    let rule = body["ingress"][1].clone();
    body["ingress"] = json!(vec![rule; 26]);
    body["egress"][0]["remotes"][0]["networks"] = json!((0..26).map(|i| format!("10.{i}.0.0/16")).collect::<Vec<_>>());
    body["egress"][1]["protocols"] = json!(vec![json!({"protocol": "tcp"}); 26]);
    let remote = body["egress"][1]["remotes"][0].clone();
    body["egress"][1]["remotes"] = json!(vec![remote; 26]);
    let got: Vec<String> = errors(&policy(body)).into_iter().map(|(p, _)| p).collect();
    assert_eq!(got, ["/ingress", "/egress/0/remotes/0/networks", "/egress/1/remotes", "/egress/1/protocols"]);
}

#[test]
fn unknown_fields_tiers_and_actions_are_refused_as_they_are_read() {
    let mut body = tenancy();
    body["tier"] = json!("developer");
    assert!(serde_json::from_value::<ClusterPolicy>(body).is_err());
    let mut body = tenancy();
    body["egress"][0]["action"] = json!("allow");
    assert!(serde_json::from_value::<ClusterPolicy>(body).is_err(), "v1alpha1's Allow is accept now");
    let mut body = tenancy();
    body["egress"][0]["remotes"][0]["nodes"] = json!({});
    assert!(serde_json::from_value::<ClusterPolicy>(body).is_err(), "a peer weft does not know is no peer");
}

#[test]
fn a_tier_decides_by_priority_then_name() {
    let mut a = policy(tenancy());
    let mut b = a.clone();
    b.name = "allow-dns".into();
    let mut order = [a.clone(), b.clone()];
    order.sort_by(|x, y| x.order_key().cmp(&y.order_key()));
    assert_eq!(order[0].name, "allow-dns", "a tie goes by name");
    a.priority = 5;
    b.tier = Tier::Baseline;
    b.priority = 0;
    let mut order = [b, a];
    order.sort_by(|x, y| x.order_key().cmp(&y.order_key()));
    assert_eq!(order[0].tier, Tier::Admin, "admin before baseline whatever the priority");
}
