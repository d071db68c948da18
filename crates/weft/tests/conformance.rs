//! NetworkPolicy conformance, modeled on the upstream Kubernetes e2e suite
//! (test/e2e/network/netpol): namespaces x, y, z with pods a, b, c, each serving ports 80 and
//! 81 over TCP, UDP and SCTP under named container ports (`serve-80-tcp`, ...). Each case
//! applies policies — and label changes, updates, deletes — to the fake API server; once
//! kube-manager has put them into the config service, the whole 9x9 matrix of every probe is
//! read through `weft reach -o json` and compared with the expectation written here by hand,
//! the way upstream writes its reachability tables (never derived from weft's compiler).
//!
//! As upstream, a pod always reaches itself.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;

use common::cluster::{KubeCluster, namespace, policy};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn ip(ns: &str, pod: &str) -> String {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap();
    let p = PODS.iter().position(|x| *x == pod).unwrap() + 1;
    format!("10.1.{n}.{p}")
}

fn server_pod(ns: &str, name: &str, extra_labels: Value) -> Pod {
    let mut containers = Vec::new();
    for port in [80, 81] {
        for protocol in ["TCP", "UDP", "SCTP"] {
            let lower = protocol.to_lowercase();
            containers.push(json!({"name": format!("cont-{port}-{lower}"), "image": "agnhost",
                "ports": [{"name": format!("serve-{port}-{lower}"), "containerPort": port, "protocol": protocol}]}));
        }
    }
    let mut labels = json!({"pod": name});
    if let Some(extra) = extra_labels.as_object() {
        for (k, v) in extra {
            labels[k] = v.clone();
        }
    }
    let ip = ip(ns, name);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": containers},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn all_pods() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

/// `x/a` (a pod), `x/*` (a namespace), `*/a` (a pod name anywhere), `*` (every pod).
fn selects(pattern: &str, pod: &str) -> bool {
    let (ns, name) = pod.split_once('/').unwrap();
    match pattern.split_once('/') {
        None => pattern == "*",
        Some((pns, pname)) => (pns == "*" || pns == ns) && (pname == "*" || pname == name),
    }
}

/// Which (from, to) pairs may talk, as upstream's Reachability: a default, then expectations
/// applied in order; a pod always reaches itself.
fn matrix(default: bool, expectations: &[(&str, &str, bool)]) -> BTreeSet<(String, String)> {
    let pods = all_pods();
    let mut allowed = BTreeSet::new();
    for from in &pods {
        for to in &pods {
            let mut verdict = default;
            for (f, t, v) in expectations {
                if selects(f, from) && selects(t, to) {
                    verdict = *v;
                }
            }
            if verdict || from == to {
                allowed.insert((from.clone(), to.clone()));
            }
        }
    }
    allowed
}

/// One probe: protocol and port, and the matrix expected.
struct Probe {
    protocol: &'static str,
    port: u16,
    expect: BTreeSet<(String, String)>,
}

fn probe(protocol: &'static str, port: u16, expect: BTreeSet<(String, String)>) -> Probe {
    Probe { protocol, port, expect }
}

/// Something done to the cluster.
enum Change {
    Policy(&'static str, &'static str, Value),
    DeletePolicy(&'static str, &'static str),
    LabelPod(&'static str, &'static str, Value),
    LabelNamespace(&'static str, Value),
}

struct Step {
    changes: Vec<Change>,
    probes: Vec<Probe>,
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn case(name: &'static str, changes: Vec<Change>, probes: Vec<Probe>) -> Case {
    Case { name, steps: vec![Step { changes, probes }] }
}

use Change::{DeletePolicy, LabelNamespace, LabelPod, Policy};

fn deny_ingress() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

fn cases() -> Vec<Case> {
    let open = || matrix(true, &[]);
    let a = json!({"matchLabels": {"pod": "a"}});
    let mut cases = vec![
        case(
            "default-deny-ingress",
            vec![Policy("x", "deny-ingress", deny_ingress())],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/*", false)])),
                probe("udp", 81, matrix(true, &[("*", "x/*", false)])),
                probe("sctp", 80, matrix(true, &[("*", "x/*", false)])),
            ],
        ),
        case(
            "default-deny-all",
            vec![Policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("x/*", "*", false)])),
                probe("udp", 80, matrix(true, &[("*", "x/*", false), ("x/*", "*", false)])),
            ],
        ),
        case(
            "allow from pods within the server's namespace by podSelector",
            vec![Policy(
                "x",
                "allow-x-b",
                json!({"podSelector": a, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true)]))],
        ),
        case(
            "allow all ingress to a target, the rest denied",
            vec![
                Policy("x", "deny-ingress", deny_ingress()),
                Policy("x", "allow-a", json!({"podSelector": a, "ingress": [{}]})),
            ],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("*", "x/a", true)]))],
        ),
        case(
            "allow ingress from pods in all namespaces",
            vec![Policy(
                "x",
                "allow-all-ns",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            )],
            vec![probe("tcp", 80, open())],
        ),
        case(
            "allow only from a different namespace by namespaceSelector",
            vec![Policy(
                "x",
                "allow-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("y/*", "x/*", true)]))],
        ),
        case(
            "podSelector with matchExpressions",
            vec![Policy(
                "x",
                "allow-b-in",
                json!({"podSelector": a, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": ["b"]}]}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true)]))],
        ),
        case(
            "namespaceSelector with matchExpressions",
            vec![Policy(
                "x",
                "allow-ns-in",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "ns", "operator": "In", "values": ["y"]}]}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)]))],
        ),
        case(
            "podSelector or namespaceSelector",
            vec![Policy(
                "x",
                "allow-or",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true), ("y/*", "x/a", true)]))],
        ),
        case(
            "podSelector and namespaceSelector",
            vec![Policy(
                "x",
                "allow-and",
                json!({"podSelector": a, "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                    "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("y/b", "x/a", true), ("z/b", "x/a", true)]))],
        ),
        case(
            "multiple podSelectors and namespaceSelectors",
            vec![Policy(
                "x",
                "allow-multi",
                json!({"podSelector": a, "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
            )],
            vec![probe(
                "tcp",
                80,
                matrix(
                    true,
                    &[
                        ("*", "x/a", false),
                        ("y/b", "x/a", true),
                        ("y/c", "x/a", true),
                        ("z/b", "x/a", true),
                        ("z/c", "x/a", true),
                    ],
                ),
            )],
        ),
        case(
            "any of several podSelectors",
            vec![Policy(
                "x",
                "allow-b-or-c",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}}, {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true), ("x/c", "x/a", true)]))],
        ),
        case(
            "only a pod in a different namespace, by podSelector and namespaceSelector",
            vec![Policy(
                "x",
                "allow-y-a",
                json!({"podSelector": a, "ingress": [{"from": [{
                    "namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("y/a", "x/a", true)]))],
        ),
        case(
            "ports",
            vec![Policy(
                "x",
                "allow-81",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                    "ports": [{"port": 81, "protocol": "TCP"}]}]}),
            )],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/a", false)])),
                probe("tcp", 81, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)])),
            ],
        ),
        case(
            "stacked policies with overlapping podSelectors add up",
            vec![
                Policy(
                    "x",
                    "allow-80",
                    json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"port": 80}]}]}),
                ),
                Policy(
                    "x",
                    "allow-81",
                    json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"port": 81}]}]}),
                ),
            ],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)])),
                probe("tcp", 81, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)])),
            ],
        ),
        case(
            "allow-all",
            vec![Policy("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))],
            vec![probe("tcp", 80, open()), probe("udp", 81, open())],
        ),
        case(
            "ingress on one named port",
            vec![Policy(
                "x",
                "allow-81-named",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
            )],
            vec![
                probe("tcp", 81, open()),
                probe("tcp", 80, matrix(true, &[("*", "x/*", false)])),
                probe("udp", 81, matrix(true, &[("*", "x/*", false)])),
            ],
        ),
        case(
            "ingress from a namespace on one named port",
            vec![Policy(
                "x",
                "allow-y-80-named",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                    "ports": [{"port": "serve-80-tcp"}]}]}),
            )],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("y/*", "x/*", true)])),
                probe("tcp", 81, matrix(true, &[("*", "x/*", false)])),
            ],
        ),
        case(
            "egress on one named port",
            vec![Policy(
                "x",
                "allow-egress-80-named",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}),
            )],
            vec![
                probe("udp", 80, open()),
                probe("udp", 81, matrix(true, &[("x/*", "*", false)])),
                probe("tcp", 80, matrix(true, &[("x/*", "*", false)])),
            ],
        ),
        Case {
            name: "an updated policy is enforced as updated",
            steps: vec![
                Step {
                    changes: vec![Policy("x", "mutate", json!({"podSelector": {}, "ingress": [{}]}))],
                    probes: vec![probe("tcp", 80, open())],
                },
                Step {
                    changes: vec![Policy("x", "mutate", json!({"podSelector": {}, "ingress": []}))],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false)]))],
                },
            ],
        },
        Case {
            name: "ingress from an updated namespace",
            steps: vec![
                Step {
                    changes: vec![Policy(
                        "x",
                        "allow-updated-ns",
                        json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
                    )],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false)]))],
                },
                Step {
                    changes: vec![LabelNamespace("y", json!({"ns": "y", "ns2": "updated"}))],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)]))],
                },
            ],
        },
        Case {
            name: "ingress from an updated pod",
            steps: vec![
                Step {
                    changes: vec![Policy(
                        "x",
                        "allow-updated-pod",
                        json!({"podSelector": a, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod2": "updated"}}}]}]}),
                    )],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false)]))],
                },
                Step {
                    changes: vec![LabelPod("x", "b", json!({"pod2": "updated"}))],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true)]))],
                },
            ],
        },
        case(
            "deny ingress from other namespaces",
            vec![Policy("x", "same-ns", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("x/*", "x/*", true)]))],
        ),
        Case {
            name: "deny ingress to an updated pod",
            steps: vec![
                Step {
                    changes: vec![Policy(
                        "x",
                        "deny-isolated",
                        json!({"podSelector": {"matchLabels": {"target": "isolated"}}, "policyTypes": ["Ingress"]}),
                    )],
                    probes: vec![probe("tcp", 80, open())],
                },
                Step {
                    changes: vec![LabelPod("x", "a", json!({"target": "isolated"}))],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false)]))],
                },
            ],
        },
        case(
            "deny egress from pods by podSelector",
            vec![Policy("x", "deny-egress-a", json!({"podSelector": a, "policyTypes": ["Egress"]}))],
            vec![
                probe("tcp", 80, matrix(true, &[("x/a", "*", false)])),
                probe("udp", 81, matrix(true, &[("x/a", "*", false)])),
            ],
        ),
        case(
            "deny egress from all pods in a namespace",
            vec![Policy("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            vec![probe("tcp", 80, matrix(true, &[("x/*", "*", false)]))],
        ),
        case(
            "ingress and egress specified together",
            vec![Policy(
                "x",
                "both",
                json!({"podSelector": a, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                    "egress": [{"ports": [{"port": 80}]}]}),
            )],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true)])),
                probe("tcp", 81, matrix(true, &[("*", "x/a", false), ("x/b", "x/a", true), ("x/a", "*", false)])),
            ],
        ),
        case(
            "egress denied on the client side although the server allows it",
            vec![
                Policy("x", "deny-egress-a", json!({"podSelector": a, "policyTypes": ["Egress"], "egress": []})),
                Policy("y", "allow-all", json!({"podSelector": {}, "ingress": [{}]})),
            ],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false)]))],
        ),
        case(
            "egress to a server in another namespace by podSelector and namespaceSelector",
            vec![Policy(
                "x",
                "egress-y-a",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{
                    "namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false), ("x/a", "y/a", true)]))],
        ),
        case(
            "ingress on any port of one protocol",
            vec![Policy("x", "tcp-only", json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "TCP"}]}]}))],
            vec![
                probe("tcp", 80, open()),
                probe("tcp", 81, open()),
                probe("udp", 80, matrix(true, &[("*", "x/a", false)])),
            ],
        ),
        case(
            "several ingress policies: allow-all wins",
            vec![
                Policy("x", "allow-80", json!({"podSelector": a, "ingress": [{"ports": [{"port": 80}]}]})),
                Policy("x", "allow-all", json!({"podSelector": a, "ingress": [{}]})),
            ],
            vec![probe("tcp", 80, open()), probe("tcp", 81, open())],
        ),
        case(
            "several egress policies: allow-all wins",
            vec![
                Policy(
                    "x",
                    "egress-80",
                    json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
                ),
                Policy("x", "egress-all", json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{}]})),
            ],
            vec![probe("tcp", 80, open()), probe("tcp", 81, open())],
        ),
        Case {
            name: "a deleted policy is no longer enforced",
            steps: vec![
                Step {
                    changes: vec![Policy(
                        "x",
                        "deny-all",
                        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
                    )],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("x/*", "*", false)]))],
                },
                Step { changes: vec![DeletePolicy("x", "deny-all")], probes: vec![probe("tcp", 80, open())] },
            ],
        },
        case(
            "egress to a server in a CIDR block",
            vec![Policy(
                "x",
                "egress-cidr",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/32", ip("y", "b"))}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false), ("x/a", "y/b", true)]))],
        ),
        case(
            "egress to a CIDR block except an address",
            vec![Policy(
                "x",
                "egress-except",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
                    "cidr": "10.1.1.0/24", "except": [format!("{}/32", ip("y", "b"))]}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false), ("x/a", "y/a", true), ("x/a", "y/c", true)]))],
        ),
        case(
            "an address in both a CIDR's except and another CIDR is allowed",
            vec![Policy(
                "x",
                "egress-overlap",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [
                    {"ipBlock": {"cidr": "10.1.1.0/24", "except": [format!("{}/32", ip("y", "b"))]}},
                    {"ipBlock": {"cidr": format!("{}/32", ip("y", "b"))}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false), ("x/a", "y/*", true)]))],
        ),
        case(
            "ingress from an ipBlock",
            vec![Policy(
                "x",
                "ingress-cidr",
                json!({"podSelector": a, "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.2.0/24"}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false), ("z/*", "x/a", true)]))],
        ),
        case(
            "ingress and egress controlled independently",
            vec![
                Policy("x", "deny-egress-a", json!({"podSelector": a, "policyTypes": ["Egress"]})),
                Policy("x", "allow-ingress-a", json!({"podSelector": a, "ingress": [{}]})),
            ],
            vec![probe("tcp", 80, matrix(true, &[("x/a", "*", false)]))],
        ),
        case(
            "SCTP is not TCP",
            vec![Policy(
                "x",
                "sctp-80",
                json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
            )],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/a", false)])),
                probe("sctp", 80, open()),
                probe("sctp", 81, matrix(true, &[("*", "x/a", false)])),
            ],
        ),
        case(
            "UDP only does not allow TCP",
            vec![Policy(
                "x",
                "udp-81",
                json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}),
            )],
            vec![
                probe("tcp", 81, matrix(true, &[("*", "x/a", false)])),
                probe("udp", 81, open()),
                probe("udp", 80, matrix(true, &[("*", "x/a", false)])),
            ],
        ),
        case(
            "namespaceSelector on the default kubernetes.io/metadata.name label",
            vec![Policy(
                "x",
                "allow-y-by-name",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false), ("y/*", "x/*", true)]))],
        ),
        case(
            "namespaceSelector matchExpressions on the default name label",
            vec![Policy(
                "x",
                "allow-not-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}]}),
            )],
            vec![probe("tcp", 80, matrix(true, &[("y/*", "x/*", false)]))],
        ),
        Case {
            name: "endPort ranges",
            steps: vec![
                Step {
                    changes: vec![Policy(
                        "x",
                        "range",
                        json!({"podSelector": a, "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]}),
                    )],
                    probes: vec![probe("tcp", 80, open()), probe("tcp", 81, open())],
                },
                Step {
                    changes: vec![Policy(
                        "x",
                        "range",
                        json!({"podSelector": a, "ingress": [{"ports": [{"port": 81, "endPort": 90}]}]}),
                    )],
                    probes: vec![probe("tcp", 80, matrix(true, &[("*", "x/a", false)])), probe("tcp", 81, open())],
                },
                Step {
                    changes: vec![Policy(
                        "x",
                        "range",
                        json!({"podSelector": a, "ingress": [{"ports": [{"port": 70, "endPort": 80}, {"port": 82, "endPort": 90}]}]}),
                    )],
                    probes: vec![probe("tcp", 80, open()), probe("tcp", 81, matrix(true, &[("*", "x/a", false)]))],
                },
            ],
        },
        case(
            "policyTypes inferred: egress rules make an egress policy, ingress is isolated too",
            vec![Policy("x", "inferred", json!({"podSelector": a, "egress": [{"ports": [{"port": 80}]}]}))],
            vec![
                probe("tcp", 80, matrix(true, &[("*", "x/a", false)])),
                probe("tcp", 81, matrix(true, &[("*", "x/a", false), ("x/a", "*", false)])),
            ],
        ),
        case(
            "policyTypes inferred: ingress rules only make an ingress policy",
            vec![Policy("x", "inferred", json!({"podSelector": a, "ingress": [{"ports": [{"port": 80}]}]}))],
            vec![probe("tcp", 80, open()), probe("tcp", 81, matrix(true, &[("*", "x/a", false)]))],
        ),
        case(
            "policyTypes given as Ingress: egress rules are ignored",
            vec![Policy(
                "x",
                "given",
                json!({"podSelector": a, "policyTypes": ["Ingress"], "ingress": [{}], "egress": [{"ports": [{"port": 80}]}]}),
            )],
            vec![probe("tcp", 81, open())],
        ),
        case(
            "policyTypes given as Egress: ingress rules are ignored",
            vec![Policy(
                "x",
                "given",
                json!({"podSelector": a, "policyTypes": ["Egress"], "ingress": [{"ports": [{"port": 80}]}], "egress": [{}]}),
            )],
            vec![probe("tcp", 81, open())],
        ),
        case(
            "a policy named default",
            vec![Policy("x", "default", deny_ingress())],
            vec![probe("tcp", 80, matrix(true, &[("*", "x/*", false)]))],
        ),
    ];
    // ICMP: a rule without ports allows every protocol; one with ports does not allow ping.
    cases.push(case(
        "ping: allowed by a rule without ports, denied by one with ports",
        vec![
            Policy(
                "x",
                "any-from-y",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            ),
            Policy("x", "port-80", json!({"podSelector": a, "ingress": [{"ports": [{"port": 80}]}]})),
        ],
        vec![probe("icmp", 0, matrix(true, &[("*", "x/a", false), ("y/*", "x/a", true)]))],
    ));
    cases
}

/// The 9x9 matrix `weft reach` prints, by `ns/pod`.
fn reach(cluster: &KubeCluster, protocol: &str, port: u16) -> BTreeSet<(String, String)> {
    let (endpoints, allowed) = cluster.reach(protocol, port);
    let name = |e: &String| e.trim_start_matches("k8s-").to_string();
    let endpoints: BTreeSet<String> = endpoints.iter().map(name).collect();
    assert_eq!(endpoints, all_pods().into_iter().collect(), "the endpoints are the nine pods");
    allowed.iter().map(|(from, to)| (name(from), name(to))).collect()
}

fn base_namespace(ns: &str) -> Namespace {
    namespace(ns, json!({"ns": ns}))
}

fn describe(pairs: &BTreeSet<(String, String)>) -> String {
    pairs.iter().map(|(f, t)| format!("{f}->{t}")).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policy_conformance_x_y_z_by_a_b_c() {
    let cluster = KubeCluster::new("conformance").await;
    for ns in NAMESPACES {
        cluster.fake.apply(&base_namespace(ns));
        for pod in PODS {
            cluster.fake.apply(&server_pod(ns, pod, json!({})));
        }
    }
    let _km = cluster.manager_with("km-1", &["--no-leader-election"]);
    cluster.until_converged("the first sync", &["km-1"]).await;
    assert_eq!(reach(&cluster, "tcp", 80), matrix(true, &[]), "no policy: everyone reaches everyone");

    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        // Each case starts from the bare cluster: no policies, the original labels.
        for np in cluster.fake.list::<NetworkPolicy>() {
            let (ns, name) = (np.metadata.namespace.clone().unwrap(), np.metadata.name.clone().unwrap());
            cluster.fake.delete::<NetworkPolicy>(Some(&ns), &name);
        }
        for ns in NAMESPACES {
            cluster.fake.apply(&base_namespace(ns));
            for pod in PODS {
                cluster.fake.apply(&server_pod(ns, pod, json!({})));
            }
        }
        for (i, step) in case.steps.iter().enumerate() {
            for change in &step.changes {
                match change {
                    Policy(ns, name, spec) => {
                        cluster.fake.apply(&policy(ns, name, spec.clone()));
                    }
                    DeletePolicy(ns, name) => {
                        cluster.fake.delete::<NetworkPolicy>(Some(ns), name);
                    }
                    LabelPod(ns, name, labels) => {
                        cluster.fake.apply(&server_pod(ns, name, labels.clone()));
                    }
                    LabelNamespace(ns, labels) => {
                        cluster.fake.apply(&namespace(ns, labels.clone()));
                    }
                }
            }
            cluster.until_converged(case.name, &["km-1"]).await;
            for probe in &step.probes {
                let got = reach(&cluster, probe.protocol, probe.port);
                if got != probe.expect {
                    let missing: BTreeSet<_> = probe.expect.difference(&got).cloned().collect();
                    let extra: BTreeSet<_> = got.difference(&probe.expect).cloned().collect();
                    failures.push(format!(
                        "{} (step {}), {} {}: denied but expected allowed: [{}]; allowed but expected denied: [{}]",
                        case.name,
                        i + 1,
                        probe.protocol,
                        probe.port,
                        describe(&missing),
                        describe(&extra)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
