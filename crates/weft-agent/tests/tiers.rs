//! Tiered cluster policy (DESIGN.md §11) with real packets, through the nftables datapath in
//! network namespaces of the test's own (root; reported ignored elsewhere): an admin deny
//! beats a NetworkPolicy's allow (folded or not), an admin pass hands the decision to the
//! security groups and skips the rest of the admin tier (each direction with its own mark
//! bit), a baseline policy decides only where no group isolates, and a connection the policy
//! no longer allows is cut.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use weft_agent::Datapath;
use weft_agent::nft::{self, NftDatapath};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_testkit::Netns;

mod common;

/// How long a probe that should be refused waits: a drop answers nothing, so every denied
/// probe costs this much.
const DENIED_WAIT: Duration = Duration::from_millis(700);

fn port(n: u64, name: &str, ip: &str, app: &str) -> Change {
    let mut p: weft_model::Port = serde_json::from_value(json!({
        "name": name, "project": "shop", "node": "node-1", "ips": [ip], "labels": {"app": app}, "security_groups": [],
    }))
    .unwrap();
    p.id = Some(Uuid::from_u64_pair(2, n));
    Change::UpsertPort(p)
}

fn policy(n: u64, body: Value) -> Change {
    let mut p: weft_model::ClusterPolicy = serde_json::from_value(body).unwrap();
    p.id = Some(Uuid::from_u64_pair(5, n));
    Change::UpsertClusterPolicy(p)
}

fn selector(app: &str) -> Value {
    json!({"type": "selector", "ports": {"matchLabels": {"app": app}}})
}

/// A pod of the shop on the node.
fn pod(node: &Netns, name: &str, address: &str) -> Netns {
    common::pod(node, "shop", name, address)
}

/// A listener in `pod` that answers every connection with "hi", for as long as the test runs.
fn listen(pod: &Netns, at: &str) {
    let listener = weft_agent::netns::run_in(Some(pod.name()), || TcpListener::bind(at)).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"hi");
        }
    });
}

/// Whether a connection from `from` to `to` is answered.
fn reaches(from: &Netns, to: &str, wait: Duration) -> bool {
    let target: SocketAddr = to.parse().unwrap();
    weft_agent::netns::run_in(Some(from.name()), || {
        let mut s = TcpStream::connect_timeout(&target, wait)?;
        s.set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"hi")
    })
    .unwrap_or(false)
}

/// web, db and other on one node. db's NetworkPolicy allows TCP 5432 from any pod of the
/// project (a rule folded into the set when nothing else asks first). Admin policies: db's
/// ingress passes web's 5432 and denies everything else (`guard`), then denies 5432 to
/// everyone (`no-sql`, which only a pass can skip); web's egress passes 5432 to db and
/// denies the rest (`web-out`, `web-deny`). Baseline: nobody takes traffic from other.
fn cluster() -> Vec<Change> {
    let mut project: weft_model::Project =
        serde_json::from_value(json!({"name": "shop", "labels": {"tenant": "a"}})).unwrap();
    project.id = Some(Uuid::from_u64_pair(1, 1));
    let mut db_in: weft_model::SecurityGroup = serde_json::from_value(json!({
        "name": "db-in", "project": "shop", "selector": {"matchLabels": {"app": "db"}}, "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432], "remote": {"type": "selector", "ports": {}}}],
    }))
    .unwrap();
    db_in.id = Some(Uuid::from_u64_pair(3, 1));
    db_in.rules[0].id = Some(Uuid::from_u64_pair(4, 1));
    let sql = json!([{"protocol": "tcp", "port": 5432}]);
    vec![
        Change::UpsertProject(project),
        Change::UpsertGroup(db_in),
        port(1, "web", "10.9.0.1", "web"),
        port(3, "db", "10.9.0.3", "db"),
        port(4, "other", "10.9.0.4", "other"),
        policy(
            1,
            json!({"name": "guard", "tier": "admin", "priority": 1,
            "subject": {"ports": {"matchLabels": {"app": "db"}}},
            "ingress": [{"name": "web-sql", "action": "pass", "remotes": [selector("web")], "protocols": sql},
                        {"name": "nothing-else", "action": "deny", "remotes": [{"type": "selector"}]}]}),
        ),
        policy(
            2,
            json!({"name": "no-sql", "tier": "admin", "priority": 2,
            "subject": {"ports": {"matchLabels": {"app": "db"}}},
            "ingress": [{"action": "deny", "remotes": [{"type": "selector"}], "protocols": sql}]}),
        ),
        policy(
            3,
            json!({"name": "web-out", "tier": "admin", "priority": 1,
            "subject": {"ports": {"matchLabels": {"app": "web"}}},
            "egress": [{"action": "pass", "remotes": [selector("db")], "protocols": sql}]}),
        ),
        policy(
            4,
            json!({"name": "web-deny", "tier": "admin", "priority": 2,
            "subject": {"ports": {"matchLabels": {"app": "web"}}},
            "egress": [{"action": "deny", "remotes": [selector("db")]}]}),
        ),
        policy(
            5,
            json!({"name": "quarantine", "tier": "baseline", "priority": 1, "subject": {},
            "ingress": [{"action": "deny", "remotes": [selector("other")]}]}),
        ),
    ]
}

/// The compiler of [`cluster`], node-1's span, and the node (a namespace of its own, which
/// forwards) with the span applied by its datapath.
fn node_of_the_cluster(name: &str) -> (Compiler, NodeSpan, Netns, NftDatapath) {
    let mut compiler = Compiler::new();
    compiler.load(1, cluster());
    let span = compiler.span("node-1");
    let node = Netns::new(name);
    let mut datapath = NftDatapath::new(Some(node.0.clone()));
    datapath.apply(&NodeSpan::default(), &span, None).unwrap();
    weft_agent::netns::sysctl(Some(node.name()), "net.ipv4.ip_forward", "1").unwrap();
    (compiler, span, node, datapath)
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn tiers_decide_real_packets_in_order_and_a_revoked_connection_is_cut() {
    weft_testkit::require_root();
    let (mut compiler, span, node, mut datapath) = node_of_the_cluster("tiers");
    node.ip(&["link", "add", "underlay", "type", "veth", "peer", "name", "underlay-peer"]);
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "underlay"]);
    node.ip(&["link", "set", "underlay", "up"]);
    let (web, db, other) =
        (pod(&node, "web", "10.9.0.1"), pod(&node, "db", "10.9.0.3"), pod(&node, "other", "10.9.0.4"));
    listen(&db, "10.9.0.3:5432");
    listen(&db, "10.9.0.3:2222");
    listen(&web, "10.9.0.1:80");
    listen(&other, "10.9.0.4:80");
    let table = || node.nft(&["list", "table", "inet", nft::TABLE]).to_string();

    // web -> db:5432: both admin passes skip the rest of their tier (the deny after each),
    // and db's NetworkPolicy allows it.
    assert!(reaches(&web, "10.9.0.3:5432", Duration::from_secs(3)), "web -> db:5432\n{}", table());
    // other -> db:5432: the NetworkPolicy (folded for a port without an admin tier) would
    // allow it; the admin deny comes first.
    assert!(!reaches(&other, "10.9.0.3:5432", DENIED_WAIT), "other -> db:5432 is denied by the admin tier");
    // web -> db:2222: web's egress denies it (and db's ingress would too).
    assert!(!reaches(&web, "10.9.0.3:2222", DENIED_WAIT), "web -> db:2222");
    // The baseline decides where nothing isolates: web takes nothing from other, other takes
    // from web.
    assert!(!reaches(&other, "10.9.0.1:80", DENIED_WAIT), "other -> web:80 is denied by the baseline");
    assert!(reaches(&web, "10.9.0.4:80", Duration::from_secs(3)), "web -> other:80");

    // An open connection, then the pass taken away: `no-sql` now denies web's 5432 too, and
    // the connection is cut.
    let target: SocketAddr = "10.9.0.3:5432".parse().unwrap();
    let kept = weft_agent::netns::run_in(Some(web.name()), || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(s)
    })
    .unwrap();
    let local_port = kept.local_addr().unwrap().port();
    let tracked = |port: u16| {
        let mut socket = nft::Socket::open(Some(node.name())).unwrap();
        socket.conntrack().unwrap().iter().any(|e| e.flow.sport == Some(port) && e.flow.dport == Some(5432))
    };
    assert!(tracked(local_port), "the connection is tracked");
    let deltas = compiler.apply(2, [Change::DeleteClusterPolicy(Uuid::from_u64_pair(5, 1))]);
    let delta = deltas.for_node("node-1");
    let after = compiler.span("node-1");
    datapath.apply(&span, &after, Some(&delta)).unwrap();
    weft_testkit::eventually_blocking("the revoked connection cut", Duration::from_secs(10), || {
        if tracked(local_port) { Err("still tracked".to_string()) } else { Ok(()) }
    });
    assert!(!reaches(&web, "10.9.0.3:5432", DENIED_WAIT), "web -> db:5432 after the pass is gone");
    // The table after the delta has the chains of the new span's table: guard's are gone.
    let listed = node.nft(&["list", "table", "inet", nft::TABLE]);
    let chains: std::collections::BTreeSet<String> = listed["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain").and_then(|c| c["name"].as_str()).map(String::from))
        .collect();
    let rendered: std::collections::BTreeSet<String> = nft::render(&after).chains.keys().cloned().collect();
    assert_eq!(chains, rendered);
    drop(kept);
}

/// A tiered deny's drops are sampled (DESIGN.md §10) naming the policy, its tier and the
/// rule; policy chains are shared by ports, so the report puts each sample under the local
/// port that holds the packet's address on the side that dropped it.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn a_tiered_denys_drops_are_sampled_naming_the_policy_and_rule_under_the_port_that_dropped() {
    use weft_agent::flows::{DeniedBy, Sample, SampleReader, attribution::Attribution};
    weft_testkit::require_root();
    let (_compiler, span, node, _datapath) = node_of_the_cluster("tiersamp");
    let (web, _db, other) =
        (pod(&node, "web", "10.9.0.1"), pod(&node, "db", "10.9.0.3"), pod(&node, "other", "10.9.0.4"));
    listen(&web, "10.9.0.1:80");
    let mut reader = SampleReader::open(Some(node.name()), false).unwrap();
    // web -> db:2222: web-deny (policy 4, admin) drops it on web's egress, its rule 0.
    // other -> web:80: quarantine (policy 5, baseline) drops it on web's ingress, its rule 0.
    assert!(!reaches(&web, "10.9.0.3:2222", DENIED_WAIT));
    assert!(!reaches(&other, "10.9.0.1:80", DENIED_WAIT));
    let mut samples = Vec::new();
    weft_testkit::eventually_blocking("both drops sampled", Duration::from_secs(10), || {
        reader
            .next(|s| {
                if let Sample::Denied(d) = s {
                    samples.push(d);
                }
            })
            .unwrap();
        let ways: std::collections::BTreeSet<bool> = samples.iter().map(|d| d.ingress).collect();
        if ways.len() == 2 { Ok(()) } else { Err(format!("{samples:?}")) }
    });
    let egress = samples.iter().find(|d| !d.ingress).unwrap();
    let by = DeniedBy::Tiered { policy: Uuid::from_u64_pair(5, 4), tier: weft_model::Tier::Admin, rule: 0 };
    assert_eq!(egress.by, by);
    assert_eq!((egress.packet.src.to_string(), egress.packet.dst.to_string()), ("10.9.0.1".into(), "10.9.0.3".into()));
    let ingress = samples.iter().find(|d| d.ingress).unwrap();
    let by = DeniedBy::Tiered { policy: Uuid::from_u64_pair(5, 5), tier: weft_model::Tier::Baseline, rule: 0 };
    assert_eq!(ingress.by, by);
    // Both under web: the egress drop by its source, the ingress one by its destination.
    let attribution = Attribution::of(std::sync::Arc::new(span));
    let timed = vec![(Sample::Denied(egress.clone()), 1), (Sample::Denied(ingress.clone()), 2)];
    let report = weft_agent::flows::records(timed, &attribution);
    let web_id = Uuid::from_u64_pair(2, 1).to_string();
    let placed: Vec<(&str, bool, u32)> =
        report.denied.iter().map(|d| (d.port.as_str(), d.ingress, d.tiered.as_ref().unwrap().rule)).collect();
    assert_eq!(placed, [(web_id.as_str(), false, 0), (web_id.as_str(), true, 0)]);
}
