//! The ClusterNetworkPolicy conformance suite's model and its transcription (see
//! `tests/cnp_conformance.rs` for the notation), shared by the test through kube-manager and
//! `weft reach` and the lab's test with real packets.

#![allow(dead_code)] // each test file uses some of these

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

pub const TRANSCRIPTION: &str = include_str!("../data/cnp-conformance.txt");
pub const OWN_CASES: &str = include_str!("../data/cnp-own-cases.txt");

/// (letter, house, the pods' StatefulSet).
pub const HOUSES: [(&str, &str, &str); 4] = [
    ("G", "gryffindor", "harry-potter"),
    ("S", "slytherin", "draco-malfoy"),
    ("H", "hufflepuff", "cedric-diggory"),
    ("R", "ravenclaw", "luna-lovegood"),
];

pub fn house(letter: &str) -> (usize, &'static str, &'static str) {
    let i = HOUSES.iter().position(|(l, ..)| *l == letter).unwrap_or_else(|| panic!("no house {letter}"));
    (i, HOUSES[i].1, HOUSES[i].2)
}

pub fn namespace_name(letter: &str) -> String {
    format!("network-policy-conformance-{}", house(letter).1)
}

/// `G0` as weft names its port: `k8s-network-policy-conformance-gryffindor/harry-potter-0`.
pub fn port_name(pod: &str) -> String {
    let (letter, n) = pod.split_at(1);
    format!("k8s-{}/{}-{n}", namespace_name(letter), house(letter).2)
}

pub fn address(pod: &str) -> String {
    let (letter, n) = pod.split_at(1);
    format!("10.2.{}.{}", house(letter).0, n.parse::<u8>().unwrap() + 1)
}

pub fn conformance_pod(letter: &str, n: u8) -> Pod {
    let (_, name, sts) = house(letter);
    let ip = address(&format!("{letter}{n}"));
    let port = |port: u16, protocol: &str, name: Option<&str>| {
        let mut p = json!({"containerPort": port, "protocol": protocol});
        if let Some(name) = name {
            p["name"] = json!(name);
        }
        json!({"name": format!("serve-{port}-{}", protocol.to_lowercase()), "image": "agnhost", "ports": [p]})
    };
    serde_json::from_value(json!({
        "metadata": {"name": format!("{sts}-{n}"), "namespace": namespace_name(letter),
                     "labels": {"conformance-house": name, "statefulset.kubernetes.io/pod-name": format!("{sts}-{n}")}},
        "spec": {"nodeName": "node-1", "containers": [
            port(80, "TCP", Some("web")), port(8080, "TCP", None), port(5353, "UDP", None),
            port(53, "UDP", Some("dns")), port(9003, "SCTP", None), port(9005, "SCTP", None)]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

pub fn selector(text: &str) -> Value {
    match text.split_once(':') {
        None if text == "all" => json!({}),
        Some(("name", h)) => json!({"matchLabels": {"kubernetes.io/metadata.name": namespace_name(h)}}),
        Some(("house", h)) => json!({"matchLabels": {"conformance-house": house(h).1}}),
        Some(("notin", h)) => json!({"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace_name(h)]}]}),
        Some(("pod", pod)) => {
            let (letter, n) = pod.split_at(1);
            json!({"matchLabels": {"statefulset.kubernetes.io/pod-name": format!("{}-{n}", house(letter).2)}})
        }
        _ => panic!("no selector {text:?}"),
    }
}

pub fn peer(text: &str) -> Value {
    match text.split_once('=') {
        Some(("ns", sel)) => json!({"namespaces": selector(sel)}),
        Some(("pods", sels)) => {
            let (ns, pods) = sels.split_once('/').unwrap();
            json!({"pods": {"namespaceSelector": selector(ns), "podSelector": selector(pods)}})
        }
        Some(("net", cidrs)) => json!({"networks": cidrs.split(',').collect::<Vec<_>>()}),
        Some(("nodes", sel)) => json!({"nodes": selector(sel)}),
        _ => panic!("no peer {text:?}"),
    }
}

pub fn protocol(text: &str) -> Value {
    match text.split_once(':') {
        Some(("named", name)) => json!({"destinationNamedPort": name}),
        Some((p, n)) => json!({p: {"destinationPort": {"number": n.parse::<u16>().unwrap()}}}),
        None => panic!("no protocol {text:?}"),
    }
}

/// One thing a step does, in order.
#[derive(Debug, Clone)]
pub enum Op {
    Probe { client: String, server: String, protocol: String, port: u16, allowed: bool },
    Swap { cnp: String, direction: String, i: usize, j: usize },
    Action { cnp: String, direction: String, i: usize, action: String },
    Priority { cnp: String, priority: i64 },
    NamedPort { cnp: String, direction: String, i: usize, name: String },
    DeleteNetworkPolicy,
    LabelNamespace { house: String, value: String },
    PrependNetworks { cnp: String, pods: Vec<String> },
}

#[derive(Debug, Default)]
pub struct Step {
    pub title: String,
    pub ops: Vec<Op>,
}

#[derive(Debug, Default)]
pub struct Case {
    pub name: String,
    pub cnps: Vec<Value>,
    /// (house, name, the NetworkPolicy)
    pub network_policies: Vec<(String, String, NetworkPolicy)>,
    pub steps: Vec<Step>,
}

pub fn parse(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let case = cases.last_mut();
        match (words[0], case) {
            ("test", _) => cases.push(Case { name: words[1].into(), ..Case::default() }),
            ("cnp", Some(case)) => {
                let subject = match words[4].split_once('=') {
                    Some(("ns", sel)) => json!({"namespaces": selector(sel)}),
                    _ => peer(words[4]),
                };
                case.cnps.push(json!({"metadata": {"name": words[1]},
                    "spec": {"tier": words[2], "priority": words[3].parse::<i64>().unwrap(), "subject": subject}}));
            }
            (direction @ ("ingress" | "egress"), Some(case)) => {
                let cnp = case.cnps.last_mut().unwrap();
                let rules = cnp["spec"][direction].as_array().map_or(0, Vec::len);
                let peers: Vec<Value> = words[2..].iter().filter(|w| w.contains('=')).map(|w| peer(w)).collect();
                let protocols: Vec<Value> =
                    words[2..].iter().filter(|w| !w.contains('=')).map(|w| protocol(w)).collect();
                let mut rule = json!({"name": format!("{}-{rules}", words[1].to_lowercase()), "action": words[1]});
                rule[if direction == "ingress" { "from" } else { "to" }] = json!(peers);
                if !protocols.is_empty() {
                    rule["protocols"] = json!(protocols);
                }
                match cnp["spec"][direction].as_array_mut() {
                    Some(list) => list.push(rule),
                    None => cnp["spec"][direction] = json!([rule]),
                }
            }
            ("np", Some(case)) => {
                let sel = |w: &str| selector(w.split_once('=').unwrap().1);
                let np = serde_json::from_value(json!({
                    "metadata": {"name": words[2], "namespace": namespace_name(words[1])},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                             "ingress": [{"from": [{"namespaceSelector": sel(words[3])}]}],
                             "egress": [{"to": [{"namespaceSelector": sel(words[4])}]}]}
                }))
                .unwrap();
                case.network_policies.push((words[1].into(), words[2].into(), np));
            }
            ("np-deny", Some(case)) => {
                let np = serde_json::from_value(json!({
                    "metadata": {"name": words[2], "namespace": namespace_name(words[1])},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
                }))
                .unwrap();
                case.network_policies.push((words[1].into(), words[2].into(), np));
            }
            ("step", Some(case)) => case.steps.push(Step { title: words[1..].join(" "), ops: Vec::new() }),
            (op, Some(case)) => {
                let n = |i: usize| words[i].parse::<usize>().unwrap();
                let op = match op {
                    "probe" => Op::Probe {
                        client: words[1].into(),
                        server: words[2].into(),
                        protocol: words[3].into(),
                        port: words[4].parse().unwrap(),
                        allowed: words[5] == "allow",
                    },
                    "swap" => Op::Swap { cnp: words[1].into(), direction: words[2].into(), i: n(3), j: n(4) },
                    "action" => Op::Action {
                        cnp: words[1].into(),
                        direction: words[2].into(),
                        i: n(3),
                        action: words[4].into(),
                    },
                    "priority" => Op::Priority { cnp: words[1].into(), priority: words[2].parse().unwrap() },
                    "named-port" => Op::NamedPort {
                        cnp: words[1].into(),
                        direction: words[2].into(),
                        i: n(3),
                        name: words[4].into(),
                    },
                    "delete-np" => Op::DeleteNetworkPolicy,
                    "label-namespace" => Op::LabelNamespace { house: words[1].into(), value: words[2].into() },
                    "prepend-accept-networks" => Op::PrependNetworks {
                        cnp: words[1].into(),
                        pods: words[2..].iter().map(|w| w.to_string()).collect(),
                    },
                    other => panic!("unknown word {other:?} in {line:?}"),
                };
                case.steps.last_mut().unwrap().ops.push(op);
            }
            (_, None) => panic!("{line:?} before any test"),
        }
    }
    cases
}
