//! The compiled form, evaluated, equals the reference semantics on random clusters and packets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;
use weft_model::{ClusterPolicy, Port, Project, SecurityGroup};

use crate::cluster::{Change, Cluster};
use crate::eval::Packet;
use crate::explain::Endpoint;
use crate::{compile, reference};

const PROJECTS: [&str; 3] = ["pa", "pb", "pc"];

fn id(kind: u8, i: usize) -> Uuid {
    Uuid::from_u128((u128::from(kind) << 64) | i as u128)
}

fn v4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn v6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16 + 1))
}

fn arb_selector() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"matchLabels": {"app": "x"}})),
        Just(json!({"matchLabels": {"app": "y", "tier": "f"}})),
        Just(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["b"]}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})),
    ]
}

fn arb_project_selector() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!({"matchLabels": {"env": "a"}})),
        Just(json!({})),
        Just(json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["b", "c"]}]})),
        Just(json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]})),
    ]
}

fn arb_rule() -> impl Strategy<Value = serde_json::Value> {
    let direction = prop_oneof![Just("ingress"), Just("egress")];
    let l4 = prop_oneof![
        Just(json!({"protocol": "any"})),
        Just(json!({"protocol": "tcp"})),
        Just(json!({"protocol": "tcp", "ports": [80]})),
        Just(json!({"protocol": "tcp", "ports": [{"from": 8000, "to": 8100}, 22]})),
        Just(json!({"protocol": "tcp", "ports": ["http"]})),
        Just(json!({"protocol": "tcp", "ports": ["http", 22]})),
        Just(json!({"protocol": "udp", "ports": ["dns"]})),
        Just(json!({"protocol": "udp", "ports": [53]})),
        Just(json!({"protocol": "icmp", "icmp": {"type": 8}})),
        Just(json!({"protocol": "icmpv6", "icmp": {"type": 128, "code": 0}})),
        Just(json!({"protocol": 47})),
    ];
    let remote = prop_oneof![
        Just(json!({"type": "any"})),
        Just(json!({"type": "cidr", "cidr": "10.0.0.0/29", "except": ["10.0.0.2/32"]})),
        Just(json!({"type": "cidr", "cidr": "fd00::/125"})),
        Just(json!({"type": "cidr", "cidr": "10.0.0.0/24", "except": ["10.0.0.128/25", "10.0.0.4/30"]})),
        Just(json!({"type": "security_group", "security_group": "g0"})),
        Just(json!({"type": "security_group", "security_group": "pb/g1"})),
        Just(json!({"type": "security_group", "security_group": "ghost"})),
        arb_selector().prop_map(|s| json!({"type": "selector", "ports": s})),
        (arb_selector(), arb_project_selector())
            .prop_map(|(s, p)| json!({"type": "selector", "ports": s, "projects": p})),
    ];
    (direction, l4, remote).prop_map(|(d, mut l4, remote)| {
        // ICMP of one family with a CIDR of the other is invalid input; keep inputs valid.
        let cidr_v6 = remote["cidr"].as_str().is_some_and(|c| c.contains(':'));
        let cidr_v4 = remote["cidr"].as_str().is_some_and(|c| c.contains('.'));
        if (l4["protocol"] == "icmp" && cidr_v6) || (l4["protocol"] == "icmpv6" && cidr_v4) {
            l4 = json!({"protocol": "any"});
        }
        let mut rule = l4;
        rule["direction"] = json!(d);
        rule["remote"] = remote;
        rule
    })
}

/// A tiered rule of one direction (DESIGN.md §11): an action, remotes, protocols.
fn arb_tiered_rule(egress: bool) -> impl Strategy<Value = serde_json::Value> {
    let action = prop_oneof![Just("accept"), Just("deny"), Just("pass")];
    let selector = (arb_selector(), arb_project_selector())
        .prop_map(|(ports, projects)| json!({"type": "selector", "ports": ports, "projects": projects}));
    let networks = prop_oneof![
        Just(json!({"type": "networks", "networks": ["10.0.0.0/29"]})),
        Just(json!({"type": "networks", "networks": ["fd00::/125", "192.0.2.0/24"]})),
        Just(json!({"type": "networks", "networks": ["0.0.0.0/0"]})),
    ];
    let remote = if egress { prop_oneof![2 => selector, 1 => networks].boxed() } else { selector.boxed() };
    let protocol = prop_oneof![
        Just(json!({"protocol": "tcp", "port": 80})),
        Just(json!({"protocol": "tcp", "port": {"from": 8000, "to": 8100}})),
        Just(json!({"protocol": "udp", "port": 53})),
        Just(json!({"protocol": "tcp"})),
        Just(json!({"protocol": "sctp"})),
        Just(json!({"protocol": "tcp", "port": "http"})),
        Just(json!({"port": "dns"})),
        Just(json!({"port": "http"})),
    ];
    (action, prop::collection::vec(remote, 1..3), prop::collection::vec(protocol, 0..3)).prop_map(
        |(action, remotes, mut protocols)| {
            // A port name never goes with networks (the CRD refuses it); keep inputs valid.
            if remotes.iter().any(|r| r["type"] == "networks") {
                protocols.retain(|p| !p["port"].is_string());
            }
            json!({"name": format!("{action}-rule"), "action": action, "remotes": remotes, "protocols": protocols})
        },
    )
}

fn arb_cluster_policy() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![Just("admin"), Just("baseline")],
        0..3i64,
        arb_selector(),
        arb_project_selector(),
        prop::collection::vec(arb_tiered_rule(false), 0..3),
        prop::collection::vec(arb_tiered_rule(true), 0..3),
    )
        .prop_map(|(tier, priority, ports, projects, ingress, egress)| {
            json!({"tier": tier, "priority": priority, "subject": {"ports": ports, "projects": projects},
                   "ingress": ingress, "egress": egress})
        })
}

#[derive(Debug, Clone)]
struct Scenario {
    changes: Vec<Change>,
    ports: usize,
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    let projects = prop::collection::vec(prop_oneof![Just("a"), Just("b")], 3);
    let group = (
        0..3usize,
        0..3usize,
        prop_oneof![Just(json!(["ingress"])), Just(json!(["egress"])), Just(json!(["ingress", "egress"]))],
        prop::option::of(arb_selector()),
        prop::collection::vec(arb_rule(), 0..4),
    );
    let port = (
        0..3usize,
        prop_oneof![Just(Some("n1")), Just(Some("n2")), Just(None::<&str>)],
        prop::option::of(prop_oneof![Just("x"), Just("y")]),
        prop::option::of(prop_oneof![Just("f"), Just("b")]),
        any::<bool>(),
        prop::collection::vec(prop_oneof![Just("g0"), Just("g1"), Just("g2"), Just("pb/g1"), Just("ghost")], 0..3),
        prop_oneof![
            Just(json!({})),
            Just(json!({"http": {"protocol": "tcp", "port": 80}})),
            Just(json!({"http": {"protocol": "tcp", "port": 8080}, "dns": {"protocol": "udp", "port": 5353}})),
            Just(json!({"dns": {"protocol": "udp", "port": 53}}))
        ],
        // Names the previous port's address too: an address two ports claim.
        prop::bool::weighted(0.1),
    );
    let policies = prop::collection::vec(arb_cluster_policy(), 0..4);
    (projects, prop::collection::vec(group, 0..7), prop::collection::vec(port, 1..8), policies).prop_map(|(envs, groups, ports, policies)| {
        let mut changes = Vec::new();
        for (i, (name, env)) in PROJECTS.iter().zip(envs).enumerate() {
            let p = Project { id: Some(id(1, i)), name: name.to_string(), labels: [("env".to_string(), env.to_string())].into(), ..Default::default() };
            changes.push(Change::UpsertProject(p));
        }
        // Names are unique within a project at every revision (the store enforces it).
        let mut seen = std::collections::BTreeSet::new();
        for (i, (project, name, policy_types, selector, rules)) in groups.into_iter().enumerate() {
            if !seen.insert((project, name)) {
                continue;
            }
            let mut rules = rules;
            for (j, r) in rules.iter_mut().enumerate() {
                r["id"] = json!(id(3, i * 16 + j));
            }
            let mut g = json!({"name": format!("g{name}"), "project": PROJECTS[project], "policy_types": policy_types, "rules": rules});
            if let Some(s) = selector {
                g["selector"] = s;
            }
            g["id"] = json!(id(2, i));
            let g: SecurityGroup = serde_json::from_value(g).expect("generated group decodes");
            changes.push(Change::UpsertGroup(g));
        }
        for (i, mut policy) in policies.into_iter().enumerate() {
            policy["name"] = json!(format!("cp{i}"));
            policy["id"] = json!(id(5, i));
            let policy: ClusterPolicy = serde_json::from_value(policy).expect("generated policy decodes");
            assert_eq!(policy.validate(), Ok(()), "generated policies are valid: {policy:?}");
            changes.push(Change::UpsertClusterPolicy(policy));
        }
        let count = ports.len();
        for (i, (project, node, app, tier, dual, groups, named, borrows)) in ports.into_iter().enumerate() {
            let mut labels = BTreeMap::new();
            if let Some(a) = app {
                labels.insert("app".to_string(), a.to_string());
            }
            if let Some(t) = tier {
                labels.insert("tier".to_string(), t.to_string());
            }
            let mut ips = vec![v4(i)];
            if dual {
                ips.push(v6(i));
            }
            if borrows && i > 0 {
                ips.push(v4(i - 1));
            }
            let port = Port {
                id: Some(id(4, i)),
                name: format!("port{i}"),
                project: PROJECTS[project].to_string(),
                labels,
                node: node.map(String::from),
                ips,
                security_groups: Some(groups.into_iter().map(String::from).collect()),
                named_ports: serde_json::from_value(named).expect("named ports decode"),
                ..Default::default()
            };
            changes.push(Change::UpsertPort(port));
        }
        Scenario { changes, ports: count }
    })
}

#[derive(Debug, Clone)]
enum End {
    Port(usize),
    Node(&'static str),
    /// An address outside the cluster: 0 is far away, 1 and 2 sit inside and outside the
    /// CIDR rules' exceptions.
    Outside(u8),
}

fn arb_end() -> impl Strategy<Value = End> {
    prop_oneof![
        6 => (0..8usize).prop_map(End::Port),
        1 => prop_oneof![Just("n1"), Just("n2")].prop_map(End::Node),
        2 => (0..3u8).prop_map(End::Outside),
    ]
}

fn arb_l4() -> impl Strategy<Value = (u8, Option<u16>, Option<(u8, u8)>)> {
    prop_oneof![
        prop_oneof![Just(80u16), Just(22), Just(53), Just(8050), Just(8080), Just(443)].prop_map(|p| (
            6u8,
            Some(p),
            None
        )),
        prop_oneof![Just(53u16), Just(5353), Just(80)].prop_map(|p| (17u8, Some(p), None)),
        Just((1u8, None, Some((8u8, 0u8)))),
        Just((58u8, None, Some((128u8, 0u8)))),
        Just((58u8, None, Some((135u8, 0u8)))),
        Just((47u8, None, None)),
    ]
}

/// The endpoint and its address in the family asked for; `None` if it has none.
fn endpoint(end: &End, ports: usize, family_v6: bool, c: &Cluster) -> Option<(Endpoint, IpAddr)> {
    let outside = |which: u8| -> Option<IpAddr> {
        match (family_v6, which) {
            (true, 0) => "2001:db8::7".parse().ok(),
            // inside fd00::/125 and no port's (ports have fd00::1 up)
            (true, _) => "fd00::".parse().ok(),
            (false, 0) => "192.0.2.7".parse().ok(),
            (false, 1) => "10.0.0.100".parse().ok(),
            (false, _) => "10.0.0.200".parse().ok(),
        }
    };
    match end {
        End::Port(i) => {
            let i = *i % ports;
            let port = c.port(&id(4, i))?;
            let addr = port.ips.iter().copied().find(|a| a.is_ipv6() == family_v6)?;
            Some((Endpoint::Port(id(4, i)), addr))
        }
        End::Node(name) => {
            let address = if family_v6 { "fd99::1".parse().ok()? } else { "192.168.99.1".parse().ok()? };
            Some((Endpoint::Node { name: name.to_string(), address }, address))
        }
        End::Outside(which) => {
            let addr = outside(*which)?;
            Some((Endpoint::Address(addr), addr))
        }
    }
}

proptest! {
    // PROPTEST_CASES raises the number of cases for a longer hunt.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400), ..ProptestConfig::default() })]

    /// (a) the compiled form, evaluated, equals the reference verdict.
    #[test]
    fn compiled_form_agrees_with_the_reference(
        scenario in arb_scenario(),
        packets in prop::collection::vec((arb_end(), arb_end(), any::<bool>(), arb_l4()), 1..120),
    ) {
        let mut cluster = Cluster::new();
        for (rev, change) in scenario.changes.iter().cloned().enumerate() {
            cluster.apply(rev as i64 + 1, change);
        }
        let compiled = compile(&cluster);
        let mut compiler = crate::Compiler::new();
        compiler.load(1, scenario.changes.iter().cloned());
        for (src, dst, v6, (protocol, port, icmp)) in packets {
            let (Some((src, src_addr)), Some((dst, dst_addr))) =
                (endpoint(&src, scenario.ports, v6, &cluster), endpoint(&dst, scenario.ports, v6, &cluster))
            else { continue };
            let packet = Packet { src: src_addr, dst: dst_addr, protocol, port, icmp };
            let expected = reference::allowed(&cluster, &src, &dst, &packet);
            let got = compiled.explain(&src, &dst, &packet);
            prop_assert_eq!(got.allowed, expected, "{:?} -> {:?} {:?}: {:?}", src, dst, packet, got);
            // The controller's explain (the incremental compiler's spans) says the same, and why.
            prop_assert_eq!(compiler.explain(&src, &dst, &packet), got);
        }
    }
}

/// The synthetic cluster of the benchmarks, small: every pod pair on the ports its policies
/// name agrees with the reference.
#[test]
fn synthetic_cluster_agrees_with_the_reference() {
    let shape = crate::synthetic::Shape {
        namespaces: 20,
        pods_per_namespace: 4,
        nodes: 7,
        selected_namespace_every: 10,
        egress_every: 5,
    };
    let mut cluster = Cluster::new();
    for (rev, change) in crate::synthetic::cluster(&shape).into_iter().enumerate() {
        cluster.apply(rev as i64 + 1, change);
    }
    let compiled = compile(&cluster);
    assert!(compiled.dangling.is_empty(), "{:?}", compiled.dangling);
    let ports: Vec<(Uuid, IpAddr)> = cluster.ports().map(|(id, p)| (*id, p.ips[0])).collect();
    let mut allowed = 0;
    for (a, a_ip) in &ports {
        for (b, b_ip) in &ports {
            for (protocol, port) in [(6u8, 80u16), (6, 8080), (17, 53), (6, 443)] {
                let packet = Packet { src: *a_ip, dst: *b_ip, protocol, port: Some(port), icmp: None };
                let (src, dst) = (Endpoint::Port(*a), Endpoint::Port(*b));
                let expected = reference::allowed(&cluster, &src, &dst, &packet);
                assert_eq!(compiled.explain(&src, &dst, &packet).allowed, expected, "{src:?} -> {dst:?} {packet:?}");
                allowed += usize::from(expected);
            }
        }
    }
    // the shape allows some and denies most: the check saw both answers
    assert!(allowed > 0 && allowed < ports.len() * ports.len() * 4, "{allowed}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(200), ..ProptestConfig::default() })]

    /// (b) a random sequence of changes, applied incrementally, gives exactly the spans that
    /// compiling the final state from scratch gives; and an agent that applies each delta to
    /// what it had holds exactly the new span.
    #[test]
    fn deltas_rebuild_every_span(
        scenario in arb_scenario(),
        cuts in prop::collection::vec(1..6usize, 1..12),
        later in prop::collection::vec((0..8u8, 0..8usize, prop::option::of(prop_oneof![Just("x"), Just("y")])), 0..10),
    ) {
        let mut changes = scenario.changes.clone();
        // The groups as they stand after each later change (names stay unique per project).
        let mut groups: BTreeMap<Uuid, SecurityGroup> = scenario.changes.iter().filter_map(|c| match c {
            Change::UpsertGroup(g) => Some((g.id.unwrap_or_default(), g.clone())),
            _ => None,
        }).collect();
        let mut policies: BTreeMap<Uuid, ClusterPolicy> = scenario.changes.iter().filter_map(|c| match c {
            Change::UpsertClusterPolicy(p) => Some((p.id.unwrap_or_default(), p.clone())),
            _ => None,
        }).collect();
        let latest_port = |changes: &[Change], port: Uuid| changes.iter().rev().find_map(|c| match c {
            Change::UpsertPort(p) if p.id == Some(port) => Some(p.clone()),
            _ => None,
        });
        // Later changes: deletes of ports and groups, relabels, moves to another node, groups
        // edited and renamed, ports given other addresses, named ports and groups.
        for (what, i, app) in later {
            let port = id(4, i % scenario.ports);
            let group = groups.keys().nth(i % groups.len().max(1)).copied();
            match what {
                0 => changes.push(Change::DeletePort(port)),
                4 | 5 if group.is_some() => {
                    let Some(mut g) = group.and_then(|g| groups.get(&g).cloned()) else { continue };
                    if what == 4 {
                        // Edited: other directions, another selector, a rule less.
                        g.policy_types = if g.policy_types.len() == 2 { vec![weft_model::Direction::Egress] } else { vec![weft_model::Direction::Ingress, weft_model::Direction::Egress] };
                        g.selector = app.map(|a| serde_json::from_value(json!({"matchLabels": {"app": a}})).expect("selector"));
                        if !g.rules.is_empty() {
                            g.rules.remove(0);
                        }
                    } else {
                        // Renamed, possibly to a name ports and rules refer to but nothing had.
                        let name = if app.is_some() { "ghost".to_string() } else { format!("renamed{i}") };
                        if groups.values().any(|o| o.project == g.project && o.name == name) {
                            continue;
                        }
                        g.name = name;
                    }
                    groups.insert(g.id.unwrap_or_default(), g.clone());
                    changes.push(Change::UpsertGroup(g));
                }
                6 => {
                    // Another port's address (two ports share it), other named ports and groups.
                    let Some(mut p) = latest_port(&changes, port) else { continue };
                    p.ips = vec![v4((i + 1) % scenario.ports)];
                    p.named_ports = serde_json::from_value(json!({"http": {"protocol": "tcp", "port": 80 + i}})).expect("named");
                    p.security_groups = Some(if app.is_some() { vec!["ghost".into()] } else { vec![] });
                    changes.push(Change::UpsertPort(p));
                }
                1 => {
                    groups.remove(&id(2, i));
                    changes.push(Change::DeleteGroup(id(2, i)));
                }
                // A tiered policy reordered, edited, its subject changed, or deleted.
                7 if !policies.is_empty() => {
                    let Some(mut p) = policies.values().nth(i % policies.len()).cloned() else { continue };
                    let pid = p.id.unwrap_or_default();
                    match i % 4 {
                        0 => {
                            policies.remove(&pid);
                            changes.push(Change::DeleteClusterPolicy(pid));
                            continue;
                        }
                        1 => p.priority = (p.priority + 1) % 3,
                        2 => {
                            for rule in p.ingress.iter_mut().chain(p.egress.iter_mut()) {
                                rule.action = match rule.action {
                                    weft_model::PolicyAction::Accept => weft_model::PolicyAction::Deny,
                                    weft_model::PolicyAction::Deny => weft_model::PolicyAction::Pass,
                                    weft_model::PolicyAction::Pass => weft_model::PolicyAction::Accept,
                                };
                            }
                            p.ingress.pop();
                        }
                        _ => {
                            p.subject.ports = app
                                .map(|a| serde_json::from_value(json!({"matchLabels": {"app": a}})).expect("selector"))
                                .unwrap_or_default();
                            p.tier = match p.tier {
                                weft_model::Tier::Admin => weft_model::Tier::Baseline,
                                weft_model::Tier::Baseline => weft_model::Tier::Admin,
                            };
                        }
                    }
                    policies.insert(pid, p.clone());
                    changes.push(Change::UpsertClusterPolicy(p));
                }
                // A project relabelled: project selectors now match other projects.
                2 => {
                    let p = i % PROJECTS.len();
                    let env = if app.is_some() { "a" } else { "b" };
                    changes.push(Change::UpsertProject(Project {
                        id: Some(id(1, p)),
                        name: PROJECTS[p].to_string(),
                        labels: [("env".to_string(), env.to_string())].into(),
                        ..Default::default()
                    }));
                }
                _ => {
                    let original = scenario.changes.iter().find_map(|c| match c {
                        Change::UpsertPort(p) if p.id == Some(port) => Some(p.clone()),
                        _ => None,
                    });
                    if let Some(mut p) = original {
                        match app {
                            Some(a) => { p.labels.insert("app".into(), a.into()); }
                            None => { p.labels.remove("app"); }
                        }
                        p.node = Some(if p.node.as_deref() == Some("n1") { "n2" } else { "n1" }.into());
                        changes.push(Change::UpsertPort(p));
                    }
                }
            }
        }
        let mut compiler = crate::Compiler::new();
        let mut agents: BTreeMap<String, crate::NodeSpan> = BTreeMap::new();
        let mut rest = changes.as_slice();
        let mut revision = 0;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*cut).min(rest.len()));
            rest = tail;
            revision += 1;
            let deltas = compiler.apply(revision, batch.iter().cloned());
            for node in deltas.audience() {
                let delta = deltas.for_node(&node);
                let span = agents.entry(node.to_string()).or_default();
                let before = span.clone();
                span.apply(&delta);
                // Nothing is sent that does not change the node's span.
                prop_assert_ne!(&before, span, "node {} got a delta that changes nothing: {:?}", node, delta);
            }
            let scratch = compile(compiler.cluster());
            prop_assert_eq!(&compiler.snapshot(), &scratch);
            for (node, span) in &agents {
                let expected = scratch.spans.get(node).cloned().unwrap_or_default();
                prop_assert_eq!(span, &expected, "node {}", node);
            }
            for node in scratch.spans.keys() {
                prop_assert!(agents.contains_key(node), "node {} never got its span", node);
            }
            for (node, span) in &scratch.spans {
                prop_assert_eq!(&compiler.span(node), span, "span of {}", node);
            }
        }
        // A compiler loaded with the final state at once holds the same.
        let mut loaded = crate::Compiler::new();
        loaded.load(revision, changes.iter().cloned());
        prop_assert_eq!(loaded.snapshot(), compiler.snapshot());
        {
        }
    }
}
