//! The nftables datapath against the kernel, in a network namespace of the test's own (root,
//! reported ignored elsewhere): set member changes of real compiler deltas reach
//! the kernel's sets over netlink, element by element, and the table stays the render of the
//! span.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};
use uuid::Uuid;
use weft_agent::Datapath;
use weft_agent::nft::{self, NftDatapath};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_testkit::Netns;

mod common;

fn port(n: u64, name: &str, node: &str, ips: &[&str], app: &str) -> Change {
    let mut p: weft_model::Port = serde_json::from_value(json!({
        "name": name, "project": "shop", "node": node, "ips": ips, "labels": {"app": app}, "security_groups": [],
        "named_ports": {"http": {"protocol": "tcp", "port": 8080}},
    }))
    .unwrap();
    p.id = Some(Uuid::from_u64_pair(2, n));
    Change::UpsertPort(p)
}

/// A shop on node-1: web (local) accepts from app=api on TCP 80 and sends to app=api's named
/// port http; api pods live elsewhere.
fn shop() -> Vec<Change> {
    let mut project: weft_model::Project = serde_json::from_value(json!({"name": "shop"})).unwrap();
    project.id = Some(Uuid::from_u64_pair(1, 1));
    let mut group: weft_model::SecurityGroup = serde_json::from_value(json!({
        "name": "web", "project": "shop", "selector": {"matchLabels": {"app": "web"}}, "policy_types": ["ingress", "egress"],
        "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": [80], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}},
            {"direction": "egress", "protocol": "tcp", "ports": ["http"], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}},
        ]}))
    .unwrap();
    group.id = Some(Uuid::from_u64_pair(3, 1));
    for (i, r) in group.rules.iter_mut().enumerate() {
        r.id = Some(Uuid::from_u64_pair(4, i as u64));
    }
    vec![
        Change::UpsertProject(project),
        Change::UpsertGroup(group),
        port(1, "web", "node-1", &["10.9.0.1"], "web"),
        port(2, "api-1", "node-2", &["10.9.0.2", "fd09::2"], "api"),
    ]
}

/// Each set of an nft JSON document (a listing, or a transaction) with its elements.
fn sets_in(document: &Value, set_of: impl Fn(&Value) -> Option<&Value>) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = document["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(set_of)
        .map(|set| {
            let elems = set["elem"].as_array().map(|a| a.iter().map(element).collect()).unwrap_or_default();
            (set["name"].as_str().unwrap().to_string(), elems)
        })
        .collect();
    out.sort();
    out
}

/// An element as text, the same whether listed or sent: the kernel lists an element with a
/// counter as `{"elem": {"val": .., "counter": ..}}`, and a protocol in a key by its name.
fn element(elem: &Value) -> String {
    let value = elem.get("elem").map_or(elem, |e| &e["val"]);
    let named = |v: &Value| match v.as_str() {
        Some("tcp") => json!(6),
        Some("udp") => json!(17),
        Some("sctp") => json!(132),
        _ => v.clone(),
    };
    match value["concat"].as_array() {
        Some(parts) => json!({"concat": parts.iter().map(named).collect::<Vec<_>>()}).to_string(),
        None => value.to_string(),
    }
}

/// The elements of every set in the kernel's table, by name.
fn kernel_sets(ns: &Netns) -> Vec<(String, BTreeSet<String>)> {
    sets_in(&ns.nft(&["list", "table", "inet", nft::TABLE]), |item| item.get("set"))
}

/// What the render of `span` says those sets hold, read back the same way.
fn rendered_sets(span: &NodeSpan) -> Vec<(String, BTreeSet<String>)> {
    let commands = nft::Ruleset::default().diff(&nft::render(span));
    sets_in(&nft::nft_json(&commands), |item| item["add"].get("set"))
}

/// The shop compiled, and node-1's span applied to a namespace of its own.
fn shop_on_node_1(tag: &str) -> (Netns, Compiler, NodeSpan, NftDatapath) {
    let ns = Netns::new(tag);
    let mut compiler = Compiler::new();
    compiler.load(1, shop());
    let span = compiler.span("node-1");
    let mut datapath = NftDatapath::new(Some(ns.0.clone()));
    datapath.apply(&NodeSpan::default(), &span, None).unwrap();
    assert_eq!(kernel_sets(&ns), rendered_sets(&span));
    (ns, compiler, span, datapath)
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn member_changes_reach_the_kernel_over_netlink_element_by_element() {
    weft_testkit::require_root();
    let (ns, mut compiler, mut span, mut datapath) = shop_on_node_1("members");

    // api pods come and go: IPv4 and IPv6 members of the address set and of the named-port
    // pair set, the last IPv6 member leaving (its set goes: that one is no element change).
    // Up to 4 api pods are folded into web's elements; a fifth makes theirs a named set, which
    // the sixth joins and leaves as an element; back to 4, they fold again.
    let steps = [
        port(3, "api-2", "node-3", &["10.9.0.3", "fd09::3"], "api"),
        port(4, "api-3", "node-3", &["10.9.0.4"], "api"),
        Change::DeletePort(Uuid::from_u64_pair(2, 3)),
        port(3, "api-2", "node-3", &["10.9.0.3"], "other"),
        Change::DeletePort(Uuid::from_u64_pair(2, 2)),
        port(5, "api-5", "node-3", &["10.9.0.5"], "api"),
        port(6, "api-6", "node-3", &["10.9.0.6"], "api"),
        port(7, "api-7", "node-3", &["10.9.0.7"], "api"),
        port(8, "api-8", "node-3", &["10.9.0.8"], "api"),
        port(9, "api-9", "node-3", &["10.9.0.9"], "api"),
        Change::DeletePort(Uuid::from_u64_pair(2, 9)),
        Change::DeletePort(Uuid::from_u64_pair(2, 8)),
    ];
    let mut named_address_set = false;
    let mut over_netlink = 0;
    for (i, step) in steps.into_iter().enumerate() {
        let revision = compiler.revision() + 1;
        let delta = compiler.apply(revision, [step]).for_node("node-1");
        let mut next = span.clone();
        next.apply(&delta);
        datapath.apply(&span, &next, Some(&delta)).unwrap();
        assert!(!datapath.last.full, "step {i} applied as a delta");
        over_netlink += usize::from(datapath.last.netlink);
        span = next;
        let sets = kernel_sets(&ns);
        assert_eq!(sets, rendered_sets(&span), "step {i}: the kernel's sets are the span's");
        assert_eq!(span, compiler.span("node-1"));
        // A set of the span's holding plain addresses: the api pods' once they are five.
        named_address_set |= sets.iter().any(|(n, e)| n.starts_with('s') && e.contains("\"10.9.0.9\""));
    }
    assert!(named_address_set, "the api pods had a named set of their own");
    assert!(over_netlink >= 8, "member changes went over netlink ({over_netlink} of 12)");
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn a_netlink_change_the_kernel_refuses_falls_back_and_the_table_converges() {
    weft_testkit::require_root();
    let (ns, mut compiler, span, mut datapath) = shop_on_node_1("fallback");
    // Someone removes the set behind the agent's back: the element add cannot apply.
    // An IPv4 set of the span's holding api-1 (`s` and its id; `spoof-4` is the skeleton's),
    // which api-2 joins below.
    let (set, _) = kernel_sets(&ns)
        .into_iter()
        .find(|(n, e)| n.starts_with('s') && !n.contains('-') && e.iter().any(|x| x.contains("10.9.0.2")))
        .unwrap();
    let listing = ns.nft(&["list", "table", "inet", nft::TABLE]);
    let rules_using: Vec<u64> = listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["expr"].to_string().contains(&format!("@{set}")))
        .map(|r| r["handle"].as_u64().unwrap())
        .collect();
    let chain_of = |h: u64| -> String {
        listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("rule"))
            .find(|r| r["handle"] == h)
            .map(|r| r["chain"].as_str().unwrap().to_string())
            .unwrap()
    };
    for h in &rules_using {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "delete", "rule", "inet", nft::TABLE, &chain_of(*h), "handle"])
            .arg(h.to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "delete", "set", "inet", nft::TABLE, &set])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let revision = compiler.revision() + 1;
    let delta = compiler.apply(revision, [port(3, "api-2", "node-3", &["10.9.0.3"], "api")]).for_node("node-1");
    let mut next = span.clone();
    next.apply(&delta);
    datapath.apply(&span, &next, Some(&delta)).unwrap();
    assert!(datapath.last.full, "the refused delta ended in a reconcile of the whole table");
    assert_eq!(kernel_sets(&ns), rendered_sets(&next));
}

/// A group with a rule of every form the render writes: selector and CIDR remotes (a CIDR
/// with excepts written into the rule, one with many prefixes as an interval set), ports,
/// ranges and named ports both ways, any protocol with ports, ICMP and ICMPv6 with and without
/// a code, a protocol by number, IPv6.
fn every_form() -> Vec<Change> {
    let mut changes = shop();
    let many: Vec<String> = (0..6).map(|i| format!("192.168.{i}.0/24")).collect();
    let mut group: weft_model::SecurityGroup = serde_json::from_value(json!({
        "name": "forms", "project": "shop", "selector": {"matchLabels": {"app": "web"}}, "policy_types": ["ingress", "egress"],
        "rules": [
            {"direction": "ingress", "protocol": "udp", "ports": [{"from": 5000, "to": 5010}, 53], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}},
            {"direction": "ingress", "ports": [443], "remote": {"type": "cidr", "cidr": "172.16.0.0/16", "except": ["172.16.1.0/24"]}},
            {"direction": "ingress", "protocol": "tcp", "ports": ["http"], "remote": {"type": "any"}},
            {"direction": "ingress", "protocol": "icmp", "icmp": {"type": 8, "code": 0}, "remote": {"type": "cidr", "cidr": "10.0.0.0/8"}},
            {"direction": "ingress", "protocol": "icmpv6", "icmp": {"type": 128}},
            {"direction": "ingress", "protocol": 47, "remote": {"type": "cidr", "cidr": "fd00::/8"}},
            {"direction": "egress", "protocol": "sctp", "ports": [9000], "remote": {"type": "cidr", "cidr": "0.0.0.0/0", "except": many}},
            {"direction": "egress", "ports": ["http"], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}},
            {"direction": "egress", "remote": {"type": "any"}},
        ]}))
    .unwrap();
    group.id = Some(Uuid::from_u64_pair(3, 2));
    for (i, r) in group.rules.iter_mut().enumerate() {
        r.id = Some(Uuid::from_u64_pair(5, i as u64));
    }
    changes.push(Change::UpsertGroup(group));
    changes
}

/// The table as nft reads it back, without what the kernel numbers (handles) or counts
/// (counters).
fn listing_without_handles(ns: &Netns) -> Vec<Value> {
    let mut listing = ns.nft(&["list", "table", "inet", nft::TABLE]);
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("handle");
                for (k, x) in map.iter_mut() {
                    if k == "counter" {
                        *x = Value::Null;
                    } else {
                        strip(x);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut listing);
    let mut items: Vec<Value> =
        listing["nftables"].as_array().unwrap().iter().filter(|i| i.get("metainfo").is_none()).cloned().collect();
    items.sort_by_key(Value::to_string);
    items
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn a_table_sent_over_netlink_reads_back_as_the_same_table_sent_through_nft() {
    weft_testkit::require_root();
    let mut compiler = Compiler::new();
    compiler.load(1, every_form());
    let span = compiler.span("node-1");
    let target = nft::render(&span);
    assert!(target.chains.values().flat_map(|c| &c.rules).all(|r| r.wire.is_some()), "every rule has bytecode");

    let (by_netlink, by_nft) = (Netns::new("wire"), Netns::new("json"));
    let mut datapath = NftDatapath::new(Some(by_netlink.0.clone()));
    datapath.apply(&NodeSpan::default(), &span, None).unwrap();
    assert!(datapath.last.netlink, "the full apply went over netlink");
    let commands = nft::Ruleset::default().diff(&target);
    nft::Nft::new(Some(by_nft.0.clone())).run(&commands).unwrap();

    let (wire, json) = (listing_without_handles(&by_netlink), listing_without_handles(&by_nft));
    assert!(json.len() > 40, "the table has content: {} items", json.len());
    for (w, j) in wire.iter().zip(&json) {
        assert_eq!(w, j, "the same item read back");
    }
    assert_eq!(wire.len(), json.len());

    // What the agent reads back is the table it rendered: nothing to change.
    let mut socket = nft::Socket::open(Some(&by_netlink.0)).unwrap();
    let kernel = nft::decode_table(&socket.table().unwrap().expect("a table")).unwrap();
    assert_eq!(kernel.diff(&target), vec![nft::Command::AddTable]);
    // The metrics' figures, counted as the dumps arrive, are those of the table rendered (a
    // prefix one element, though the kernel holds both its ends).
    let stats = socket.table_stats().unwrap().expect("a table");
    assert_eq!(stats.chains, target.chains.len());
    assert_eq!(stats.rules, target.chains.values().map(|c| c.rules.len()).sum::<usize>());
    assert_eq!(stats.sets, target.sets.len());
    assert_eq!(stats.elements, target.sets.values().map(|s| s.elements.len()).sum::<usize>());
}

/// Denied packets are sampled (DESIGN.md §10): a burst of packets web's ingress drops reaches
/// the agent's reader as samples naming web, the direction and each packet's addresses,
/// protocol and ports, no more of them than the rate limit lets through, while the drop
/// counter counts every packet.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn denied_packets_are_sampled_with_their_port_and_tuple_at_a_bounded_rate() {
    weft_testkit::require_root();
    let (node, _web, client, _datapath) = web_and_a_client("sample");
    let mut reader = weft_agent::flows::SampleReader::open(Some(node.name()), false).unwrap();
    const SENT: usize = 200;
    let started = std::time::Instant::now();
    weft_agent::netns::run_in(Some(client.name()), || {
        let socket = std::net::UdpSocket::bind("192.0.2.2:40000")?;
        for _ in 0..SENT {
            socket.send_to(b"denied", "10.9.0.1:5432")?;
        }
        Ok(())
    })
    .unwrap();
    let sending = started.elapsed();
    // Every sample the kernel sends comes before a receive that finds nothing for 2 s.
    let mut samples = Vec::new();
    loop {
        let before = samples.len();
        let lost = reader.next(|s| {
            if let weft_agent::flows::Sample::Denied(s) = s {
                samples.push(s)
            }
        });
        assert!(!lost.unwrap(), "no sample lost");
        if samples.len() == before {
            break;
        }
    }
    let web_id = Uuid::from_u64_pair(2, 1);
    assert!(!samples.is_empty(), "the denied packets were sampled");
    let allowed = nft::DENIED_SAMPLES_BURST as usize
        + (sending.as_secs_f64() * nft::DENIED_SAMPLES_PER_SECOND as f64).ceil() as usize
        + 1;
    assert!(samples.len() <= allowed, "{} samples of {SENT} packets sent in {sending:?}", samples.len());
    for s in &samples {
        assert_eq!((s.by, s.ingress), (weft_agent::flows::DeniedBy::Port(web_id), true));
        let p = s.packet;
        assert_eq!((p.src.to_string(), p.dst.to_string()), ("192.0.2.2".into(), "10.9.0.1".into()));
        assert_eq!((p.protocol, p.ports), (17, Some((40000, 5432))));
    }
    // The drop rule counted every packet, sampled or not.
    let stats = nft::table_stats(Some(node.name())).unwrap().unwrap();
    let dropped = stats.drops.iter().find(|(chain, _)| chain == &format!("pi-{}", web_id.simple())).map(|(_, n)| *n);
    assert_eq!(dropped, Some(SENT as u64), "{:?}", stats.drops);
    // The agent's reader of the drop counters (one socket, reading again and again) says so too.
    let mut drops = nft::DropCounterReader::new(Some(node.name().to_string()));
    for _ in 0..2 {
        let read = drops.read().unwrap();
        let web = read.iter().find(|((port, ingress), _)| port == &web_id.to_string() && *ingress).map(|(_, n)| *n);
        assert_eq!(web, Some(SENT as u64), "{read:?}");
    }
}

/// The shop on node-1 in the kernel, web wired into the node as a pod, and a client beyond the
/// node routed to it (and the node routing 10.96.0.0/12, where a cluster's DNS would be,
/// through the client).
/// A pod of the shop on `node`.
fn shop_pod(node: &Netns, name: &str, address: &str) -> Netns {
    common::pod(node, "shop", name, address)
}

fn web_and_a_client(tag: &str) -> (Netns, Netns, Netns, NftDatapath) {
    let (node, _compiler, _span, datapath) = shop_on_node_1(tag);
    weft_agent::netns::sysctl(Some(node.name()), "net.ipv4.ip_forward", "1").unwrap();
    let web = shop_pod(&node, "web", "10.9.0.1");
    let client = Netns::new("client");
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", client.name()]);
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["route", "add", "10.96.0.0/12", "via", "192.0.2.2"]);
    client.ip(&["addr", "add", "192.0.2.2/24", "dev", "up1"]);
    client.ip(&["link", "set", "up1", "up"]);
    client.ip(&["route", "add", "10.9.0.0/24", "via", "192.0.2.1"]);
    (node, web, client, datapath)
}

/// A port's DNS queries reach the agent as the names asked for, one per query, when it reads
/// them; unread, the kernel keeps them.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn a_ports_dns_queries_are_read_as_the_names_it_asks_for() {
    weft_testkit::require_root();
    let (node, web, _client, _datapath) = web_and_a_client("dns");
    let mut reader = weft_agent::flows::SampleReader::open(Some(node.name()), true).unwrap();
    let query = |name: &str| {
        let mut m = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 28, 0, 1]);
        m
    };
    weft_agent::netns::run_in(Some(web.name()), || {
        for name in ["yelb-db.default.svc.cluster.local", "example.org"] {
            // A socket each, as a resolver's queries take a port each.
            std::net::UdpSocket::bind("10.9.0.1:0")?.send_to(&query(name), "10.96.0.10:53")?;
        }
        Ok(())
    })
    .unwrap();
    let mut names = Vec::new();
    weft_testkit::eventually_blocking("both queries read", std::time::Duration::from_secs(10), || {
        reader
            .next(|s| {
                if let weft_agent::flows::Sample::Dns(q) = s {
                    names.push((q.src.to_string(), q.server.to_string(), q.name, q.qtype));
                }
            })
            .map_err(|e| e.to_string())?;
        if names.len() >= 2 { Ok(()) } else { Err(format!("{names:?}")) }
    });
    let server = || ("10.9.0.1".to_string(), "10.96.0.10".to_string());
    assert_eq!(
        names,
        [
            (server().0, server().1, "yelb-db.default.svc.cluster.local".to_string(), 28),
            (server().0, server().1, "example.org".to_string(), 28)
        ]
    );
}

/// Allowed connections are heard with what allowed them (DESIGN.md §10): web and db on one
/// node, web's egress allowing any protocol to db (a rule of its own) and db's ingress TCP
/// 5432 from web (a rule folded into the set); a connection between them is heard when it
/// begins, attributed to both rules, and when it ends, with its packets and bytes.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn a_connection_is_heard_with_the_rules_that_allowed_each_side_and_its_bytes() {
    weft_testkit::require_root();
    let mut project: weft_model::Project = serde_json::from_value(json!({"name": "shop"})).unwrap();
    project.id = Some(Uuid::from_u64_pair(1, 1));
    let group = |n: u64, name: &str, app: &str, rule: Value| {
        let mut g: weft_model::SecurityGroup = serde_json::from_value(json!({
            "name": name, "project": "shop", "selector": {"matchLabels": {"app": app}}, "rules": [rule],
        }))
        .unwrap();
        g.id = Some(Uuid::from_u64_pair(3, n));
        g.rules[0].id = Some(Uuid::from_u64_pair(4, n));
        g
    };
    let web_out = group(
        1,
        "web-out",
        "web",
        json!({"direction": "egress", "remote": {"type": "selector", "ports": {"matchLabels": {"app": "db"}}}}),
    );
    let db_in = group(
        2,
        "db-in",
        "db",
        json!({"direction": "ingress", "protocol": "tcp", "ports": [5432], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "web"}}}}),
    );
    let mut compiler = Compiler::new();
    compiler.load(
        1,
        vec![
            Change::UpsertProject(project),
            Change::UpsertGroup(web_out),
            Change::UpsertGroup(db_in),
            port(1, "web", "node-1", &["10.9.0.1"], "web"),
            port(3, "db", "node-1", &["10.9.0.3"], "db"),
        ],
    );
    let span = compiler.span("node-1");
    let node = Netns::new("conn");
    let mut datapath = NftDatapath::new(Some(node.0.clone()));
    datapath.apply(&NodeSpan::default(), &span, None).unwrap();
    let folded = node.nft(&["list", "set", "inet", nft::TABLE, "fold-in-4"]).to_string();
    assert!(folded.contains("10.9.0.3"), "db's rule is folded: {folded}");
    weft_agent::netns::sysctl(Some(node.name()), "net.ipv4.ip_forward", "1").unwrap();
    // The node's own address, which it asks for its pods' MACs from (a node has one).
    node.ip(&["link", "add", "underlay", "type", "veth", "peer", "name", "underlay-peer"]);
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "underlay"]);
    node.ip(&["link", "set", "underlay", "up"]);
    // A closed connection's entry goes within a second, not two minutes.
    weft_agent::netns::sysctl(Some(node.name()), "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1").unwrap();
    let pods = [shop_pod(&node, "web", "10.9.0.1"), shop_pod(&node, "db", "10.9.0.3")];
    weft_agent::flows::account_connections(Some(node.name())).unwrap();
    let mut events = nft::Socket::open_conntrack_events(Some(node.name()), 1 << 20).unwrap();

    let listener =
        weft_agent::netns::run_in(Some(pods[1].name()), || std::net::TcpListener::bind("10.9.0.3:5432")).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut asked = [0u8; 5];
        stream.read_exact(&mut asked).unwrap();
        stream.write_all(&[7u8; 1000]).unwrap();
    });
    let client = weft_agent::netns::run_in(Some(pods[0].name()), || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect("10.9.0.3:5432")?;
        stream.write_all(b"hello")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok((stream.local_addr()?.port(), answer.len()))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", node.nft(&["list", "ruleset"])));
    server.join().unwrap();
    assert_eq!(client.1, 1000);

    let (mut began, mut ended) = (None, None);
    weft_testkit::eventually_blocking("the connection heard begin and end", std::time::Duration::from_secs(60), || {
        events
            .receive(|kind, payload| {
                if let Some(e) = nft::connection_event(kind, payload)
                    && e.flow.sport == Some(client.0)
                {
                    if e.ended { ended = Some(e) } else { began = Some(e) }
                }
            })
            .map_err(|e| e.to_string())?;
        if began.is_some() && ended.is_some() { Ok(()) } else { Err(format!("{began:?} {ended:?}")) }
    });
    let (began, ended) = (began.unwrap(), ended.unwrap());
    assert_eq!(began.id, ended.id);
    assert_eq!((began.flow.protocol, began.flow.dport), (6, Some(5432)));
    use weft_agent::flows::attribution::{Attribution, Decision, RuleRef};
    let rule = |n: u64| Decision::Rule(RuleRef { group: Uuid::from_u64_pair(3, n), rule: Uuid::from_u64_pair(4, n) });
    assert_eq!(
        Attribution::of(std::sync::Arc::new(span)).decide(&began.flow),
        (Some((Uuid::from_u64_pair(2, 1), rule(1))), Some((Uuid::from_u64_pair(2, 3), rule(2))))
    );
    let counted = ended.counters.expect("the node accounts connections");
    assert!(counted.bytes_sent >= 5 && counted.bytes_received >= 1000, "{counted:?}");
    assert!(counted.packets_sent >= 3 && counted.packets_received >= 2, "{counted:?}");
}
