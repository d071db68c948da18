//! Translation on real k8s-openapi types, written as the YAML a user applies.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;
use weft_kube::translate::{self, CLUSTER_LABEL, OWNER_ANNOTATION, Options};
use weft_model::{Direction, LabelSelector, Protocol, Remote, SecurityGroup};

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap()
}

fn options() -> Options {
    Options { project_prefix: "k8s-".into(), cluster: "east".into(), pod_network: None }
}

/// The group of a policy that translates without problems.
fn group(text: &str) -> SecurityGroup {
    let (group, problems) = translate::network_policy(&yaml(text), &options());
    assert!(problems.is_empty(), "{problems:?}");
    group.unwrap()
}

/// The rules as JSON (ids are the server's), for comparing with what a test expects; their
/// origin, which every rule has, is left out (a test of its own checks it).
fn rules(g: &SecurityGroup) -> serde_json::Value {
    let mut rules = serde_json::to_value(&g.rules).unwrap();
    for rule in rules.as_array_mut().unwrap() {
        rule.as_object_mut().unwrap().remove("origin");
    }
    rules
}

#[test]
fn every_rule_names_the_network_policy_entry_it_comes_from() {
    let g = group(
        r#"
metadata: {name: db-in, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}, {podSelector: {matchLabels: {app: api}}}]
  - ports: [{port: 5432}]
  egress:
  - {}
"#,
    );
    let origins: Vec<String> = g.rules.iter().map(|r| r.origin.as_ref().unwrap().to_string()).collect();
    assert_eq!(
        origins,
        [
            "NetworkPolicy shop/db-in [0]",
            "NetworkPolicy shop/db-in [0]",
            "NetworkPolicy shop/db-in [1]",
            "NetworkPolicy shop/db-in [0]"
        ],
        "one entry's peers share its origin; each direction counts its own entries"
    );
    assert_eq!(g.rules[3].direction, Direction::Egress);
    assert_eq!(
        serde_json::to_value(&g.rules[2].origin).unwrap(),
        json!({"kind": "NetworkPolicy", "namespace": "shop", "name": "db-in", "index": 1})
    );
}

fn selector(v: serde_json::Value) -> LabelSelector {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_namespace_becomes_a_project_with_its_labels_and_the_clusters() {
    let ns: Namespace = yaml("metadata: {name: shop, labels: {team: platform}}");
    let p = translate::namespace(&ns, &options()).unwrap();
    assert_eq!(p.name, "k8s-shop");
    assert_eq!(p.labels["team"], "platform");
    assert_eq!(p.labels["kubernetes.io/metadata.name"], "shop", "the name label, as the API server adds it");
    assert_eq!(p.labels[CLUSTER_LABEL], "east");
    assert_eq!(p.annotations[OWNER_ANNOTATION], "kube-manager/east");
    let other = Options { project_prefix: "kube-".into(), cluster: "east".into(), pod_network: None };
    assert_eq!(translate::namespace(&ns, &other).unwrap().name, "kube-shop");
}

#[test]
fn a_pod_becomes_a_port_with_its_node_addresses_labels_and_named_ports() {
    let pod: Pod = yaml(
        r#"
metadata: {name: web-1, namespace: shop, labels: {app: web}, uid: 0a1b2c3d-4e5f-6789-abcd-ef0123456789}
spec:
  nodeName: node-2
  containers:
  - name: app
    image: x
    ports: [{name: http, containerPort: 8080}, {containerPort: 9000}, {name: dns, containerPort: 53, protocol: UDP}]
  - name: sidecar
    image: y
    ports: [{name: metrics, containerPort: 9090, protocol: SCTP}]
status: {phase: Running, podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}, {ip: "fd00::5"}]}
"#,
    );
    let port = translate::pod(&pod, &options()).unwrap().unwrap();
    assert_eq!((port.name.as_str(), port.project.as_str()), ("web-1", "k8s-shop"));
    assert_eq!(port.node.as_deref(), Some("node-2"));
    assert_eq!(port.instance.as_deref(), Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"), "the pod's UID");
    assert_eq!(port.ips, vec!["10.1.0.5".parse::<std::net::IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
    assert_eq!(port.labels["app"], "web");
    assert_eq!(port.security_groups, Some(vec![]), "no explicit groups: policies select it by its labels");
    assert_eq!(
        serde_json::to_value(&port.named_ports).unwrap(),
        json!({"dns": {"protocol": "udp", "port": 53}, "http": {"protocol": "tcp", "port": 8080},
               "metrics": {"protocol": "sctp", "port": 9090}})
    );
    assert_eq!(port.annotations[OWNER_ANNOTATION], "kube-manager/east");
}

#[test]
fn pods_without_an_address_on_the_hosts_network_or_finished_are_no_ports() {
    let o = options();
    let cases = [
        "metadata: {name: a}\nspec: {containers: []}\nstatus: {phase: Pending}",
        "metadata: {name: a}\nspec: {hostNetwork: true, containers: []}\nstatus: {podIP: 192.168.0.4}",
        "metadata: {name: a}\nspec: {containers: []}\nstatus: {phase: Succeeded, podIP: 10.1.0.9}",
        "metadata: {name: a}\nspec: {containers: []}\nstatus: {phase: Failed, podIP: 10.1.0.9}",
    ];
    for case in cases {
        assert_eq!(translate::pod(&yaml(case), &o).unwrap(), None, "{case}");
    }
    let running: Pod = yaml("metadata: {name: a}\nspec: {containers: []}\nstatus: {phase: Running, podIP: 10.1.0.9}");
    assert!(translate::pod(&running, &o).unwrap().is_some());
    assert_eq!(translate::pod(&running, &o).unwrap().unwrap().project, "k8s-default", "no namespace: default");
}

/// Options with a pod network of 10.244.0.0/16 and fd44::/56.
fn with_pod_network() -> Options {
    Options {
        pod_network: Some(translate::PodNetwork {
            subnets: vec!["10.244.0.0/16".parse().unwrap(), "fd44::/56".parse().unwrap()],
            blocks: weft_model::NodeBlocks::default(),
        }),
        ..options()
    }
}

#[test]
fn with_a_pod_network_a_pod_is_a_port_once_scheduled_and_asks_for_the_addresses_it_has() {
    let o = with_pod_network();
    let (project, network) = o.pod_network_objects().unwrap();
    assert_eq!((project.name.as_str(), network.name.as_str()), ("cluster.east", "pods"));
    assert!(network.shared && network.node_blocks.is_some());
    assert!(network.validate().is_ok() && project.validate().is_ok());
    // Not scheduled yet: no port. Scheduled with no address: a port on the pod network, for
    // IPAM to give addresses to.
    let pending: Pod = yaml(
        "metadata: {name: a, namespace: x, uid: u1}
spec: {containers: []}
status: {phase: Pending}",
    );
    assert_eq!(translate::pod(&pending, &o).unwrap(), None);
    let scheduled: Pod = yaml(
        "metadata: {name: a, namespace: x, uid: u1}
spec: {nodeName: n1, containers: []}
status: {phase: Pending}",
    );
    let port = translate::pod(&scheduled, &o).unwrap().unwrap();
    assert_eq!(port.network.as_deref(), Some("cluster.east/pods"));
    assert_eq!((port.node.as_deref(), port.ips.len()), (Some("n1"), 0));
    assert!(port.validate().is_ok());
    // An address it has already (brownfield, manifests) is the one it asks for.
    let running: Pod = yaml(
        "metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: []}
status: {phase: Running, podIPs: [{ip: 10.244.3.7}, {ip: 'fd44::7'}]}",
    );
    assert_eq!(translate::pod(&running, &o).unwrap().unwrap().ips.len(), 2);
    // One outside the pod network: another plugin wired it; reported, no port.
    let foreign: Pod = yaml(
        "metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: []}
status: {podIP: 192.168.9.9}",
    );
    let problem = translate::pod(&foreign, &o).unwrap_err();
    assert!(problem.detail.contains("outside the pod network"), "{problem}");
    // The host's network is never a port.
    let host: Pod = yaml(
        "metadata: {name: a}
spec: {nodeName: n1, hostNetwork: true, containers: []}",
    );
    assert_eq!(translate::pod(&host, &o).unwrap(), None);
}

#[test]
fn a_pod_that_names_two_ports_alike_is_reported() {
    let pod: Pod = yaml(
        "metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}]}]}\nstatus: {podIP: 10.0.0.1}",
    );
    let problem = translate::pod(&pod, &options()).unwrap_err();
    assert!(problem.detail.contains("http"), "{problem}");
    assert_eq!(problem.to_string(), format!("Pod x/a: {}", problem.detail));
}

#[test]
fn the_yelb_default_deny_isolates_ingress_with_no_rules() {
    let g =
        group("metadata: {name: default-deny, namespace: default}\nspec: {podSelector: {}, policyTypes: [Ingress]}");
    assert_eq!((g.name.as_str(), g.project.as_str()), ("default-deny", "k8s-default"));
    assert_eq!(g.selector, Some(LabelSelector::default()), "every pod of the namespace");
    assert_eq!(g.policy_types, vec![Direction::Ingress]);
    assert!(g.rules.is_empty());
    // An absent podSelector means the same.
    let g = group("metadata: {name: deny}\nspec: {policyTypes: [Ingress]}");
    assert_eq!(g.selector, Some(LabelSelector::default()));
}

#[test]
fn policy_types_are_taken_as_given_or_inferred_as_kubernetes_does() {
    // Inferred: ingress always, egress when there are egress rules.
    let g = group("metadata: {name: p}\nspec: {podSelector: {}, ingress: [{}]}");
    assert_eq!(g.policy_types, vec![Direction::Ingress]);
    let g = group("metadata: {name: p}\nspec: {podSelector: {}, egress: [{}]}");
    assert_eq!(g.policy_types, vec![Direction::Ingress, Direction::Egress]);
    // Given: an Egress-only policy isolates egress and nothing else; its ingress rules have no
    // effect in Kubernetes, so they are not written (they would add to other policies').
    let g = group("metadata: {name: p}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}], egress: [{}]}");
    assert_eq!(g.policy_types, vec![Direction::Egress]);
    assert!(g.rules.iter().all(|r| r.direction == Direction::Egress), "{:?}", g.rules);
    assert_eq!(g.rules.len(), 1);
}

#[test]
fn every_peer_shape_becomes_its_remote() {
    let g = group(
        r#"
metadata: {name: p, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: ops}}
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
      podSelector: {matchLabels: {role: backup}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    - namespaceSelector: {}
"#,
    );
    assert_eq!(g.selector, Some(selector(json!({"matchLabels": {"app": "db"}}))));
    let remotes: Vec<&Remote> = g.rules.iter().map(|r| &r.remote).collect();
    assert_eq!(remotes.len(), 5, "one rule per peer: OR across peers");
    assert_eq!(
        remotes[0],
        &Remote::Selector { ports: selector(json!({"matchLabels": {"app": "web"}})), projects: None },
        "a podSelector alone: the policy's own namespace"
    );
    assert_eq!(
        remotes[1],
        &Remote::Selector {
            ports: LabelSelector::default(),
            projects: Some(selector(json!({"matchLabels": {"team": "ops", CLUSTER_LABEL: "east"}}))),
        },
        "a namespaceSelector alone: every pod of those namespaces, in this cluster only"
    );
    assert_eq!(
        remotes[2],
        &Remote::Selector {
            ports: selector(json!({"matchLabels": {"role": "backup"}})),
            projects: Some(selector(json!({
                "matchLabels": {CLUSTER_LABEL: "east"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}))),
        },
        "both: AND within the peer"
    );
    assert_eq!(
        remotes[3],
        &Remote::Cidr { cidr: "10.0.0.0/8".parse().unwrap(), except: vec!["10.1.0.0/16".parse().unwrap()] }
    );
    assert_eq!(
        remotes[4],
        &Remote::Selector {
            ports: LabelSelector::default(),
            projects: Some(selector(json!({"matchLabels": {CLUSTER_LABEL: "east"}})))
        },
        "namespaceSelector {{}}: every namespace of the cluster"
    );
    assert!(g.rules.iter().all(|r| r.protocol == Protocol::Any && r.ports.is_empty()), "no ports: everything");
}

#[test]
fn empty_from_and_no_ports_allow_everyone_everything() {
    let g = group("metadata: {name: p}\nspec: {podSelector: {}, ingress: [{from: []}]}");
    assert_eq!(rules(&g), json!([{"direction": "ingress", "protocol": "any", "remote": {"type": "any"}}]));
}

#[test]
fn ports_numbers_names_ranges_and_protocols() {
    let g = group(
        r#"
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
    ports:
    - {port: 80}
    - {protocol: TCP, port: http}
    - {protocol: TCP, port: 32000, endPort: 32768}
    - {protocol: UDP, port: 53}
    - {protocol: SCTP}
"#,
    );
    assert_eq!(
        rules(&g),
        json!([
            {"direction": "ingress", "protocol": "tcp", "ports": [80, "http", {"from": 32000, "to": 32768}],
             "remote": {"type": "selector", "ports": {}}},
            {"direction": "ingress", "protocol": "udp", "ports": [53], "remote": {"type": "selector", "ports": {}}},
            {"direction": "ingress", "protocol": "sctp", "remote": {"type": "selector", "ports": {}}},
        ]),
        "TCP when the protocol is omitted; an entry with no port opens its whole protocol"
    );
    // A protocol with and without a port: the whole protocol.
    let g = group("metadata: {name: p}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}, {protocol: TCP}]}]}");
    assert_eq!(rules(&g), json!([{"direction": "ingress", "protocol": "tcp", "remote": {"type": "any"}}]));
}

#[test]
fn egress_to_ip_blocks_and_named_ports() {
    let g = group(
        r#"
metadata: {name: p, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
    ports: [{port: 443}]
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: api}]
"#,
    );
    assert_eq!(
        rules(&g),
        json!([
            {"direction": "egress", "protocol": "tcp", "ports": [443],
             "remote": {"type": "cidr", "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}},
            {"direction": "egress", "protocol": "tcp", "ports": ["api"],
             "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}},
        ])
    );
}

#[test]
fn what_cannot_be_represented_is_reported_and_only_narrows() {
    let (g, problems) = translate::network_policy(
        &yaml(
            r#"
metadata: {name: p, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: not-a-cidr}}, {podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http, endPort: 90}, {port: 81}]
  - ports: [{protocol: ICMP, port: 1}]
"#,
        ),
        &options(),
    );
    let g = g.unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems.iter().all(|p| p.kind == weft_kube::ProblemKind::NetworkPolicy && p.name == "p"), "{problems:?}");
    // The bad peer and the bad port entry are left out; the second entry's only port entry is
    // bad, so that entry allows nothing (not every port).
    let expected = json!([{"direction": "ingress", "protocol": "tcp", "ports": [81],
        "remote": {"type": "selector", "ports": {"matchLabels": {"app": "web"}}}}]);
    assert_eq!(rules(&g), expected);

    // A pod selector that cannot be read: the policy cannot be placed at all.
    let (g, problems) = translate::network_policy(
        &yaml("metadata: {name: q}\nspec: {podSelector: {matchExpressions: [{key: a, operator: Near}]}}"),
        &options(),
    );
    assert!(g.is_none());
    assert!(problems[0].detail.contains("Near"), "{problems:?}");
}
