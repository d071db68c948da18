//! Every validation error the resources report, with the pointer it names.

use serde_json::json;

use super::*;

fn errors<T: serde::de::DeserializeOwned>(
    body: serde_json::Value,
    validate: fn(&T) -> Result<(), ValidationErrors>,
) -> Vec<(String, String)> {
    let object: T = serde_json::from_value(body).expect("body deserializes");
    match validate(&object) {
        Ok(()) => vec![],
        Err(e) => e.errors.into_iter().map(|e| (e.pointer, e.detail)).collect(),
    }
}

fn pointers<T: serde::de::DeserializeOwned>(
    body: serde_json::Value,
    validate: fn(&T) -> Result<(), ValidationErrors>,
) -> Vec<String> {
    errors(body, validate).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn valid_objects_pass() {
    assert!(
        pointers(
            json!({"name": "k8s-default", "labels": {"kubernetes.io/metadata.name": "default"}}),
            Project::validate
        )
        .is_empty()
    );
    assert!(
        pointers(
            json!({"name": "net", "project": "p", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}, {"cidr": "fd00::/64"}]}),
            VirtualNetwork::validate
        )
        .is_empty()
    );
    assert!(
        pointers(
            json!({"name": "yelb-db-in", "project": "p", "policy_types": ["ingress"],
                "selector": {"matchLabels": {"app": "yelb-db"}},
                "rules": [
                    {"direction": "ingress", "protocol": "tcp", "ports": [5432, {"from": 8000, "to": 8080}, "postgres"],
                     "remote": {"type": "selector", "ports": {"matchLabels": {"app": "yelb-appserver"}}}},
                    {"direction": "ingress", "remote": {"type": "cidr", "cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    {"direction": "egress", "protocol": "icmpv6", "icmp": {"type": 128}},
                    {"direction": "egress", "protocol": 47, "remote": {"type": "security_group", "security_group": "other/web"}}
                ]}),
            SecurityGroup::validate
        )
        .is_empty()
    );
    assert!(
        pointers(
            json!({"name": "yelb-ui", "project": "p", "node": "node-1", "ips": ["10.0.0.5", "fd00::5"],
                "mac": "02:00:00:00:00:01", "security_groups": [],
                "named_ports": {"http": {"protocol": "tcp", "port": 80}}}),
            Port::validate
        )
        .is_empty()
    );
}

#[test]
fn names_labels_and_annotations() {
    assert_eq!(
        pointers(
            json!({"name": "Bad_Name", "labels": {"-x": "v", "ok": "not ok"}, "annotations": {"bad key": "anything"}}),
            Project::validate
        ),
        ["/name", "/labels/-x", "/labels/ok", "/annotations/bad key"]
    );
    assert_eq!(pointers(json!({"name": "a".repeat(254)}), Project::validate), ["/name"]);
    let big = "x".repeat(300 * 1024);
    assert_eq!(pointers(json!({"name": "a", "annotations": {"k": big}}), Project::validate), ["/annotations"]);
}

#[test]
fn subnets_and_gateways() {
    let e = errors(
        json!({"name": "n", "project": "p", "subnets": [
            {"cidr": "10.0.0.1/24"},
            {"cidr": "10.1.0.0/24", "gateway": "10.2.0.1"},
            {"cidr": "10.1.0.0/16"},
            {"cidr": "10.3.0.0/24", "gateway": "10.3.0.255"},
            {"cidr": "fd00::/64", "gateway": "fd00::"}
        ]}),
        VirtualNetwork::validate,
    );
    let pointers: Vec<_> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pointers,
        ["/subnets/0/cidr", "/subnets/1/gateway", "/subnets/2/cidr", "/subnets/3/gateway", "/subnets/4/gateway"]
    );
    assert!(e[0].1.contains("host bits"), "{}", e[0].1);
    assert!(e[2].1.contains("overlaps"), "{}", e[2].1);
    assert!(e[3].1.contains("broadcast"), "{}", e[3].1);
}

#[test]
fn node_blocks_fit_their_subnets_and_shared_networks_are_named_with_their_project() {
    let e = errors(
        json!({"name": "pods", "project": "k8s-cluster", "shared": true, "node_blocks": {"ipv4": 12, "ipv6": 80},
               "subnets": [{"cidr": "10.244.0.0/16"}, {"cidr": "fd44::/96"}]}),
        VirtualNetwork::validate,
    );
    let bad: Vec<_> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(bad, ["/subnets/0/cidr", "/subnets/1/cidr", "/node_blocks/ipv4"]);
    assert!(e[1].1.contains("smaller than one of node_blocks' /80 blocks"), "{}", e[1].1);
    let defaults: VirtualNetwork =
        serde_json::from_value(json!({"name": "pods", "project": "p", "shared": true, "node_blocks": {}})).unwrap();
    assert_eq!(defaults.node_blocks, Some(NodeBlocks { ipv4: 24, ipv6: 80 }));
    assert!(defaults.validate().is_ok());
    let port = |network: &str| json!({"name": "a", "project": "k8s-a", "network": network});
    assert!(pointers(port("k8s-cluster/pods"), Port::validate).is_empty());
    assert_eq!(pointers(port("Bad/pods"), Port::validate), ["/network"]);
}

#[test]
fn rules() {
    let sg = |rule: serde_json::Value| json!({"name": "g", "project": "p", "rules": [rule]});
    let cases = [
        (json!({"direction": "ingress", "protocol": "tcp", "ports": [0]}), "/rules/0/ports/0"),
        (json!({"direction": "ingress", "protocol": "tcp", "ports": [65536]}), "/rules/0/ports/0"),
        (json!({"direction": "ingress", "protocol": "tcp", "ports": [{"from": 90, "to": 80}]}), "/rules/0/ports/0"),
        (json!({"direction": "ingress", "protocol": "tcp", "ports": ["HTTP"]}), "/rules/0/ports/0"),
        (json!({"direction": "ingress", "protocol": "any", "ports": [80]}), "/rules/0/ports"),
        (json!({"direction": "ingress", "protocol": "icmp", "icmp": {"type": 256}}), "/rules/0/icmp/type"),
        (json!({"direction": "ingress", "protocol": "icmp", "icmp": {"type": 8, "code": -1}}), "/rules/0/icmp/code"),
        (json!({"direction": "ingress", "protocol": "tcp", "icmp": {"type": 8}}), "/rules/0/icmp"),
        (json!({"direction": "ingress", "protocol": "icmp", "ethertype": "IPv6"}), "/rules/0/protocol"),
        (json!({"direction": "ingress", "origin": {"kind": "", "name": "p"}}), "/rules/0/origin/kind"),
        (json!({"direction": "ingress", "origin": {"kind": "NetworkPolicy", "name": "p\n"}}), "/rules/0/origin/name"),
        (
            json!({"direction": "ingress", "origin": {"kind": "NetworkPolicy", "name": "p", "index": 5000}}),
            "/rules/0/origin/index",
        ),
        (
            json!({"direction": "ingress", "protocol": "icmpv6", "remote": {"type": "cidr", "cidr": "10.0.0.0/8"}}),
            "/rules/0/protocol",
        ),
        (
            json!({"direction": "ingress", "ethertype": "IPv6", "remote": {"type": "cidr", "cidr": "10.0.0.0/8"}}),
            "/rules/0/remote",
        ),
        (
            json!({"direction": "ingress", "remote": {"type": "cidr", "cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}),
            "/rules/0/remote/except/0",
        ),
        (
            json!({"direction": "ingress", "remote": {"type": "cidr", "cidr": "10.0.0.0/8", "except": ["10.1.0.1/16"]}}),
            "/rules/0/remote/except/0",
        ),
        (
            json!({"direction": "ingress", "remote": {"type": "security_group", "security_group": "Web"}}),
            "/rules/0/remote/security_group",
        ),
        (
            json!({"direction": "ingress", "remote": {"type": "selector", "ports": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}),
            "/rules/0/remote/ports/matchExpressions/0/values",
        ),
    ];
    for (rule, pointer) in cases {
        assert_eq!(pointers(sg(rule.clone()), SecurityGroup::validate), [pointer], "{rule}");
    }
}

#[test]
fn group_level_checks() {
    let id = uuid::Uuid::new_v4();
    assert_eq!(
        pointers(
            json!({"name": "g", "project": "p", "policy_types": ["ingress", "ingress"],
                "rules": [{"id": id, "direction": "egress"}, {"id": id, "direction": "egress"}]}),
            SecurityGroup::validate
        ),
        ["/policy_types/1", "/rules/1/id"]
    );
}

#[test]
fn ports() {
    assert_eq!(
        pointers(
            json!({"name": "p1", "project": "p", "node": "Node_1", "ips": ["10.0.0.1", "10.0.0.1", "0.0.0.0"],
                "mac": "zz:00:00:00:00:00", "interface": "this-name-is-too-long",
                "security_groups": ["a", "a", "x/y/z", "p/b", "other/c"],
                "named_ports": {"http": {"protocol": "icmp", "port": 80}, "9x": {"protocol": "tcp", "port": 70000}}}),
            Port::validate
        ),
        [
            "/node",
            "/ips/1",
            "/ips/2",
            "/mac",
            "/interface",
            "/security_groups/1",
            "/security_groups/2",
            "/security_groups/4",
            "/named_ports/9x/port",
            "/named_ports/http/protocol"
        ]
    );
}

#[test]
fn serde_rejects_unknown_fields_and_normalises_protocols() {
    assert!(serde_json::from_value::<Project>(json!({"name": "a", "colour": "red"})).is_err());
    assert!(
        serde_json::from_value::<Rule>(json!({"direction": "ingress", "remote": {"type": "any", "x": 1}})).is_err()
    );
    assert_eq!(serde_json::to_value(Remote::Any).unwrap(), json!({"type": "any"}));
    let rule: Rule = serde_json::from_value(json!({"direction": "egress", "protocol": 6})).unwrap();
    assert_eq!(rule.protocol, Protocol::Tcp);
    let rule: Rule = serde_json::from_value(json!({"direction": "egress", "protocol": "TCP"})).unwrap();
    assert_eq!(serde_json::to_value(&rule).unwrap()["protocol"], "tcp");
    assert!(serde_json::from_value::<Rule>(json!({"direction": "egress", "protocol": 300})).is_err());
    assert!(serde_json::from_value::<Rule>(json!({"direction": "egress", "protocol": "gre2"})).is_err());
    let sg: SecurityGroup = serde_json::from_value(json!({"name": "g", "project": "p"})).unwrap();
    assert_eq!(sg.policy_types, both_directions());
}

#[test]
fn default_group_is_valid_and_self_referencing() {
    let sg = SecurityGroup::default_for("k8s-default");
    sg.validate().unwrap();
    assert_eq!(sg.rules[0].remote_group(), Some(DEFAULT_GROUP));
    assert_eq!(sg.rules[1].remote, Remote::Any);
}
