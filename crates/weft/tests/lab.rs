//! The nftables datapath with real packets: `weft lab up` builds nodes and pods as network
//! namespaces with one `weft agent --datapath nftables` per node, policies go in through the
//! REST API, and `weft lab probe` measures what gets through. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::lab::{Fixture, PodDef, port_json};
use common::{WEFT, alive};
use serde_json::{Value, json};
use weft_lab::watch::{Watch, ping_round, talk_round};

/// Waits until `n` round trips in a row came back (`answered`) or did not; fails the test with
/// what the process printed when that does not happen within `within`.
fn expect_in_a_row(watch: &mut Watch, answered: bool, n: usize, within: Duration, what: &str) {
    assert!(
        watch.in_a_row(answered, n, within),
        "{what}: not {n} rounds in a row {answered} within {within:?}; saw {:?}",
        watch.seen
    );
}

/// Pod b (app=b) isolated for ingress, open to pods labelled app=a on TCP 80.
fn b_accepts_a_on_80() -> Value {
    json!({"name": "b-in", "project": "k8s-x", "selector": {"matchLabels": {"app": "b"}},
        "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80],
        "remote": {"type": "selector", "ports": {"matchLabels": {"app": "a"}}}}]})
}

fn labels(app: &str) -> Value {
    json!({ "app": app })
}

fn three_pods() -> Vec<PodDef> {
    vec![
        PodDef { namespace: "x", name: "a", node: "n1", addresses: &["10.71.0.1", "fd71::1"], labels: labels("a") },
        PodDef { namespace: "x", name: "b", node: "n2", addresses: &["10.71.0.2", "fd71::2"], labels: labels("b") },
        PodDef { namespace: "y", name: "c", node: "n3", addresses: &["10.71.0.3", "fd71::3"], labels: labels("c") },
    ]
}

fn two_pods() -> Vec<PodDef> {
    vec![
        PodDef { namespace: "x", name: "a", node: "n1", addresses: &["10.72.0.1"], labels: labels("a") },
        PodDef { namespace: "x", name: "b", node: "n2", addresses: &["10.72.0.2"], labels: labels("b") },
    ]
}

/// a pinging b (of [`two_pods`]) five times a second, for as long as the test watches.
fn a_pings_b(lab: &Fixture) -> Watch {
    lab.watch("x", "a", &[WEFT, "lab", "ping", "--interval-ms", "200", "--timeout-ms", "500", "10.72.0.2"], ping_round)
}

fn leftovers(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("wl-{name}-")))
        .map(str::to_string)
        .collect()
}

/// The kernel's rules of a table listing (`nft -a -j list table`), each as its chain, handle
/// and expression with counter values taken out (traffic changes those).
fn rules_of(listing: &Value) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for item in listing["nftables"].as_array().unwrap() {
        let Some(rule) = item.get("rule") else { continue };
        let mut expr = rule["expr"].clone();
        for e in expr.as_array_mut().unwrap() {
            if e.get("counter").is_some() {
                *e = json!("counter");
            }
        }
        out.push((rule["chain"].as_str().unwrap().to_string(), rule["handle"].as_u64().unwrap(), expr.to_string()));
    }
    out
}

/// Packets counted by all the rules of a table listing.
fn counted(listing: &Value) -> u64 {
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .flat_map(|r| r["expr"].as_array().unwrap().iter().filter_map(|e| e.get("counter")?["packets"].as_u64()))
        .sum()
}

/// A table listing without its counters and without the elements of set `changed`.
fn without_counters_and(listing: &Value, changed: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("counter");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut out = listing.clone();
    for item in out["nftables"].as_array_mut().unwrap() {
        if let Some(set) = item.get_mut("set").filter(|s| s["name"] == changed) {
            set.as_object_mut().unwrap().remove("elem");
        }
    }
    strip(&mut out);
    out
}

fn set_of<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["nftables"].as_array().unwrap().iter().find_map(|i| i.get("set").filter(|s| s["name"] == name)).unwrap()
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn policies_applied_changed_and_deleted_real_packets_agree_with_explain() {
    weft_testkit::require_root();
    let lab = Fixture::up("lab-policies", &three_pods()).await;
    // Nothing isolates anyone: everything reaches everything, on TCP and by ping.
    let open = lab.agrees("tcp", Some(80)).await;
    assert_eq!(open.allowed.len(), 16, "{}", open.table());
    lab.agrees("icmp", None).await;
    lab.agrees_in(true, "tcp", Some(80)).await;

    // A default deny for project x's ingress: a and b are unreachable (but each from itself).
    lab.create(
        "security-groups",
        json!({"name": "deny", "project": "k8s-x", "selector": {}, "policy_types": ["ingress"]}),
    )
    .await;
    lab.converge().await;
    let denied = lab.agrees("tcp", Some(80)).await;
    assert!(!denied.allows("k8s-y/c", "k8s-x/a") && !denied.allows("outside", "k8s-x/b"));
    assert!(denied.allows("k8s-x/a", "k8s-x/a") && denied.allows("k8s-x/a", "k8s-y/c"));
    let ping = lab.agrees("icmp", None).await;
    assert!(!ping.allows("k8s-y/c", "k8s-x/a"), "a default deny blocks ping");
    let ping6 = lab.agrees_in(true, "icmp", None).await;
    assert!(!ping6.allows("k8s-y/c", "k8s-x/a") && ping6.allows("k8s-x/a", "k8s-y/c"), "{}", ping6.table());
    let table = lab.nft("n1", &["list", "table", "inet", "weft"]);
    assert!(
        table.lines().any(|l| l.contains("drop") && l.contains("counter packets") && !l.contains("packets 0 ")),
        "a's default drop counted the denied probes:\n{table}"
    );
    // n1's agent says as much in its metrics, read from the kernel.
    let metrics = lab.agent_metrics("n1").await;
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_agent_port_dropped_packets{port=\"k8s-x/a\",direction=\"ingress\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(dropped.is_some_and(|n| n > 0), "a's drops in n1's metrics:\n{metrics}");
    assert!(metrics.lines().any(|l| l == "weft_agent_connected 1"), "{metrics}");
    let listing: Value = serde_json::from_str(&lab.nft("n1", &["-a", "-j", "list", "table", "inet", "weft"])).unwrap();
    let rules = metrics.lines().find_map(|l| l.strip_prefix("weft_agent_kernel_rules ")).and_then(|n| n.parse().ok());
    assert_eq!(rules, Some(rules_of(&listing).len()), "{metrics}");

    // Allow pods of namespaces labelled ns=y to a's named port http only.
    lab.create(
        "security-groups",
        json!({"name": "from-y", "project": "k8s-x", "selector": {"matchLabels": {"app": "a"}},
        "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": ["http"],
        "remote": {"type": "selector", "ports": {}, "projects": {"matchLabels": {"ns": "y"}}}}]}),
    )
    .await;
    lab.converge().await;
    let http = lab.agrees("tcp", Some(80)).await;
    assert!(http.allows("k8s-y/c", "k8s-x/a") && !http.allows("k8s-x/b", "k8s-x/a"));
    let alt = lab.agrees("tcp", Some(81)).await;
    assert!(!alt.allows("k8s-y/c", "k8s-x/a"), "the named port opens 80 only");
    lab.agrees("udp", Some(53)).await;
    let http6 = lab.agrees_in(true, "tcp", Some(80)).await;
    assert!(http6.allows("k8s-y/c", "k8s-x/a"), "a selector allows both families:\n{}", http6.table());

    // Egress for c: TCP to 10.71.0.0/24 except b, and ping to anyone (IPv4: `icmp`).
    lab.create("security-groups", json!({"name": "c-out", "project": "k8s-y", "selector": {"matchLabels": {"app": "c"}},
        "policy_types": ["egress"], "rules": [
            {"direction": "egress", "protocol": "tcp", "remote": {"type": "cidr", "cidr": "10.71.0.0/24", "except": ["10.71.0.2/32"]}},
            {"direction": "egress", "protocol": "icmp", "remote": {"type": "any"}}]})).await;
    lab.converge().await;
    let egress = lab.agrees("tcp", Some(80)).await;
    assert!(egress.allows("k8s-y/c", "k8s-x/a") && !egress.allows("k8s-y/c", "outside"));
    lab.agrees("icmp", None).await;
    lab.agrees("udp", Some(53)).await;
    let egress6 = lab.agrees_in(true, "tcp", Some(80)).await;
    assert!(!egress6.allows("k8s-y/c", "k8s-x/a"), "an IPv4 CIDR allows no IPv6:\n{}", egress6.table());
    lab.agrees_in(true, "icmp", None).await;

    // Every policy gone: back to open.
    for (project, name) in [("k8s-x", "deny"), ("k8s-x", "from-y"), ("k8s-y", "c-out")] {
        lab.delete_group(project, name).await;
    }
    lab.converge().await;
    assert_eq!(lab.agrees("tcp", Some(80)).await.allowed.len(), 16);
    assert_eq!(lab.agrees_in(true, "icmp", None).await.allowed.len(), 16);

    let name = lab.name.clone();
    drop(lab);
    assert!(leftovers(&name).is_empty(), "weft lab down left {:?}", leftovers(&name));
}

/// An established connection and a ping left running are cut when the policy stops allowing
/// them, also a connection whose server speaks first after the change (the kernel would take
/// its next packet up as a new connection from the server); a connection the new policy still
/// allows keeps its conntrack entry.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn connections_the_policy_no_longer_allows_are_cut_and_allowed_ones_survive() {
    weft_testkit::require_root();
    let lab = Fixture::up("lab-cut", &two_pods()).await;
    lab.create(
        "security-groups",
        json!({"name": "b-in", "project": "k8s-x", "selector": {"matchLabels": {"app": "b"}},
        "policy_types": ["ingress"], "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": [80, 81, 8080], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "a"}}}},
            {"direction": "ingress", "protocol": "icmp", "remote": {"type": "selector", "ports": {"matchLabels": {"app": "a"}}}}]}),
    )
    .await;
    lab.converge().await;
    let talk = |port: &'static str| {
        [WEFT, "lab", "talk", "--to", "10.72.0.2", "--port", port, "--interval-ms", "100", "--timeout-ms", "1000"]
    };
    let mut on80 = lab.watch("x", "a", &talk("80"), talk_round);
    let mut on81 = lab.watch("x", "a", &talk("81"), talk_round);
    let mut ping = a_pings_b(&lab);
    let within = Duration::from_secs(15);
    // b serves 8080 and speaks; a connects and echoes.
    let timing = ["--interval-ms", "100", "--timeout-ms", "1000"];
    let mut speaker =
        lab.watch("x", "b", &[&[WEFT, "lab", "talk", "--listen", "--port", "8080"], &timing[..]].concat(), talk_round);
    let deadline = Instant::now() + within;
    while !speaker.seen.iter().any(|l| l == "listening") {
        let left = deadline.saturating_duration_since(Instant::now());
        speaker.next_line(left).expect("b's talk listener started");
    }
    let _echo = lab.watch(
        "x",
        "a",
        &[&[WEFT, "lab", "talk", "--to", "10.72.0.2", "--port", "8080", "--echo"], &timing[..]].concat(),
        talk_round,
    );
    expect_in_a_row(&mut speaker, true, 3, within, "b speaking to a on a→b:8080 before the change");
    expect_in_a_row(&mut on80, true, 3, within, "a→b:80 before the change");
    expect_in_a_row(&mut on81, true, 3, within, "a→b:81 before the change");
    expect_in_a_row(&mut ping, true, 3, within, "ping a→b before the change");
    let flow81 = || -> String {
        let out = lab.run_in(
            &lab.node_netns("n2"),
            &["conntrack", "-L", "-p", "tcp", "-s", "10.72.0.1", "-d", "10.72.0.2", "--dport", "81", "-o", "id"],
        );
        // Without the entry's timeout (its third field), which counts down between packets, and
        // its packets and bytes (the agent has the node account them), which count up.
        let line = String::from_utf8_lossy(&out.stdout);
        line.split_whitespace()
            .enumerate()
            .filter(|(i, w)| *i != 2 && !w.starts_with("packets=") && !w.starts_with("bytes="))
            .map(|(_, w)| w)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before = flow81();
    assert!(before.contains("id="), "b's node tracks the connection to 81: {before:?}");

    // Only TCP 81 stays allowed.
    lab.patch_group(
        "k8s-x/b-in",
        json!({"rules": [{"direction": "ingress", "protocol": "tcp", "ports": [81],
            "remote": {"type": "selector", "ports": {"matchLabels": {"app": "a"}}}}]}),
    )
    .await;
    lab.converge().await;
    expect_in_a_row(&mut on80, false, 3, within, "a→b:80 after its allowance went");
    expect_in_a_row(&mut speaker, false, 3, within, "b speaking on a→b:8080 after its allowance went");
    expect_in_a_row(&mut ping, false, 3, within, "ping a→b after its allowance went");
    on81.rounds();
    expect_in_a_row(&mut on81, true, 5, within, "a→b:81, still allowed");
    assert!(on81.rounds().iter().all(|ok| *ok), "a→b:81 lost a round: {:?}", on81.seen);
    assert_eq!(flow81(), before, "the allowed connection kept its conntrack entry");
    let now = lab.agrees("tcp", Some(80)).await;
    assert!(!now.allows("k8s-x/a", "k8s-x/b"));
    assert!(lab.agrees("tcp", Some(81)).await.allows("k8s-x/a", "k8s-x/b"));
    assert!(lab.logs().contains("cut a connection"), "the agent says what it cut:\n{}", lab.logs());
}

/// A packet from a pod's interface with a source address that is not the pod's is dropped
/// and counted; a set member joining is an element add that leaves every rule in place.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn a_spoofed_source_is_dropped_and_a_member_change_rewrites_nothing() {
    weft_testkit::require_root();
    let lab = Fixture::up("lab-spoof", &two_pods()).await;
    let spoof_drops = || -> u64 {
        let listing: Value =
            serde_json::from_str(&lab.nft("n1", &["-j", "list", "chain", "inet", "weft", "egress"])).unwrap();
        let rule = listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("rule"))
            .find(|r| r["expr"].to_string().contains("@spoof-4"))
            .cloned()
            .unwrap();
        let counter = rule["expr"].as_array().unwrap().iter().find_map(|e| e.get("counter")).cloned().unwrap();
        counter["packets"].as_u64().unwrap()
    };
    // b is open: a's own address reaches it, and nothing counts as spoofed.
    let a = lab.pod_netns("x", "a");
    let ping = |extra: &[&str]| {
        let ping = [WEFT, "lab", "ping", "--count", "3", "--interval-ms", "200", "--timeout-ms", "1000"];
        lab.run_in(&a, &[&ping[..], extra, &["10.72.0.2"]].concat())
    };
    assert!(ping(&[]).status.success(), "a reaches b from its own address");
    assert_eq!(spoof_drops(), 0);
    // a takes another address and sends from it.
    let out = lab.run_in(&a, &["ip", "addr", "add", "10.72.0.99/32", "dev", "eth0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!ping(&["--from", "10.72.0.99"]).status.success(), "a spoofed source gets nowhere");
    assert!(spoof_drops() >= 3, "the anti-spoofing rule counted the spoofed packets: {}", spoof_drops());

    // b accepts pods labelled app=a; a second one (on a's node, no lab pod) joins the set.
    lab.create("security-groups", b_accepts_a_on_80()).await;
    lab.converge().await;
    // Traffic the group's rule counts, so a rewritten table would show as counters back at 0.
    assert!(lab.probe("tcp", Some(80), false).allows("k8s-x/a", "k8s-x/b"));
    let before: Value = serde_json::from_str(&lab.nft("n2", &["-a", "-j", "list", "table", "inet", "weft"])).unwrap();
    lab.create("ports", port_json("a2", "k8s-x", "n1", &["10.72.0.9"], &labels("a"))).await;
    lab.converge().await;
    let after: Value = serde_json::from_str(&lab.nft("n2", &["-a", "-j", "list", "table", "inet", "weft"])).unwrap();
    // (`nft monitor` would show the change, but prints nothing for elements of concatenated
    // interval sets.) Every chain, set and rule keeps its handle and all but one set its
    // elements.
    assert_eq!(
        without_counters_and(&before, "fold-in-4"),
        without_counters_and(&after, "fold-in-4"),
        "b's node changed the elements of one set and nothing else"
    );
    assert_eq!(rules_of(&before), rules_of(&after), "a member change leaves every rule (and its handle) in place");
    assert!(
        counted(&after) >= counted(&before) && counted(&before) > 0,
        "counters keep counting: {} then {}",
        counted(&before),
        counted(&after)
    );
    // b's rule is one rule for one port: written in place, its allowance is folded into
    // b's elements of the folded set, (b . a . tcp . 80), which a2 joins as (b . a2 . tcp . 80).
    let (set_before, set_after) = (set_of(&before, "fold-in-4"), set_of(&after, "fold-in-4"));
    assert_eq!(set_before["handle"], set_after["handle"], "the set itself stays");
    let keys = |set: &Value| -> Vec<Value> {
        set["elem"].as_array().unwrap().iter().map(|e| e["elem"]["val"]["concat"].clone()).collect()
    };
    assert_eq!(keys(set_before), vec![json!(["10.72.0.2", "10.72.0.1", "tcp", 80])]);
    assert_eq!(
        keys(set_after),
        vec![json!(["10.72.0.2", "10.72.0.1", "tcp", 80]), json!(["10.72.0.2", "10.72.0.9", "tcp", 80])],
        "the new member is an element of the same set"
    );
}

/// Fail static: with the controller gone, agents stopped, restarted, and a node rebooted (its
/// table gone, its state dir kept), every known port stays enforced and an unknown one stays
/// closed; when the controller is back, the agents converge.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn enforcement_survives_agent_restart_reboot_and_controller_outage() {
    weft_testkit::require_root();
    let mut lab = Fixture::up("lab-restart", &two_pods()).await;
    lab.create("security-groups", b_accepts_a_on_80()).await;
    lab.converge().await;
    let enforced = lab.agrees("tcp", Some(80)).await;
    assert!(enforced.allows("k8s-x/a", "k8s-x/b") && !enforced.allows("outside", "k8s-x/b"));
    let same = |lab: &Fixture, why: &str| {
        let now = lab.probe("tcp", Some(80), false);
        assert_eq!(now.allowed, enforced.allowed, "{why}:\n{}", now.table());
    };

    lab.stop_controller();
    same(&lab, "the controller stopped");
    lab.lab(&["agent", "stop", "n2"]);
    same(&lab, "b's agent stopped");
    lab.lab(&["agent", "start", "n2"]);
    same(&lab, "b's agent restarted without a controller");

    // A reboot of b's node: its table is gone, its state dir is not.
    lab.lab(&["agent", "stop", "n2"]);
    let out = lab.run_in(&lab.node_netns("n2"), &["nft", "delete", "table", "inet", "weft"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bare = lab.probe("tcp", Some(80), false);
    assert!(bare.allows("outside", "k8s-x/b"), "without its table b is open (the test sees the difference)");
    lab.lab(&["agent", "start", "n2"]);
    weft_testkit::eventually_blocking("b's agent restoring its table", Duration::from_secs(20), || {
        let table = lab.nft("n2", &["list", "table", "inet", "weft"]);
        if table.contains("chain ingress") { Ok(()) } else { Err(lab.logs()) }
    });
    same(&lab, "b's node rebooted, its agent enforcing the saved span");

    // A node that lost its state dir too: its pod stays closed until the controller answers.
    lab.lab(&["agent", "stop", "n1"]);
    let out = lab.run_in(&lab.node_netns("n1"), &["nft", "delete", "table", "inet", "weft"]);
    assert!(out.status.success());
    std::fs::remove_file(lab.lab_dir.join("agents/n1/span.json")).unwrap();
    lab.lab(&["agent", "start", "n1"]);
    weft_testkit::eventually_blocking("a's agent installing a table", Duration::from_secs(20), || {
        let table = lab.nft("n1", &["list", "table", "inet", "weft"]);
        if table.contains("chain ingress") { Ok(()) } else { Err(lab.logs()) }
    });
    let closed = lab.probe("tcp", Some(80), false);
    let reaching_a: Vec<_> = closed.allowed.iter().filter(|(f, t)| (f == "k8s-x/a") != (t == "k8s-x/a")).collect();
    assert!(reaching_a.is_empty(), "a port its agent does not know is closed both ways: {reaching_a:?}");

    // The controller is back: both agents converge, and follow the next change.
    lab.start_controller().await;
    lab.converge().await;
    assert_eq!(lab.agrees("tcp", Some(80)).await.allowed, enforced.allowed);
    lab.delete_group("k8s-x", "b-in").await;
    lab.converge().await;
    assert!(lab.agrees("tcp", Some(80)).await.allows("outside", "k8s-x/b"));
}

/// A test that fails halfway leaves no namespace, process, interface or table behind.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[test]
fn lab_down_removes_everything_also_after_a_test_fails_midway() {
    weft_testkit::require_root();
    let (tx, rx) = mpsc::channel();
    let failed = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let lab = Fixture::up("lab-midway", &two_pods()).await;
            tx.send((lab.name.clone(), lab.processes())).unwrap();
            panic!("a test failing halfway, its lab still up");
        })
    })
    .join();
    assert!(failed.is_err(), "the test thread failed as it should");
    let (name, pids) = rx.recv().unwrap();
    assert_eq!(pids.len(), 2 + 2 + 1, "two agents, two pod listeners, the outside's listener: {pids:?}");
    assert!(leftovers(&name).is_empty(), "namespaces left: {:?}", leftovers(&name));
    let running: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(running.is_empty(), "processes left: {running:?}");
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(": weft"), "the host has no weft interface");
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("inet weft"), "the host has no weft table");
}

/// A pod whose port never comes (kube-manager not run): `lab up` waits for it as a kubelet
/// would, then fails naming the pod and what comes first, and leaves nothing behind.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn lab_up_without_the_pods_ports_fails_naming_them_and_leaves_nothing() {
    weft_testkit::require_root();
    let db = weft_testkit::fresh_database().await;
    let data_dir = common::temp_dir("lab-noport");
    let server = common::Server::start(Some(&db.url), &data_dir, &["--grpc-listen", "127.0.0.1:0"], "http").await;
    let manifests = data_dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("pods.yaml"), common::lab::manifests(&two_pods())).unwrap();
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let lab_dir = data_dir.join("lab");
    let out = server.weft(&[
        "lab",
        "up",
        "--manifests",
        manifests.to_str().unwrap(),
        "--wait",
        "2s",
        "--name",
        &name,
        "--lab-dir",
        lab_dir.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("k8s-x/a") && said.contains("has not reached this node"), "{said}");
    assert!(said.contains("weft kube-manager"), "what comes first is named: {said}");
    assert!(leftovers(&name).is_empty(), "namespaces left: {:?}", leftovers(&name));
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// What the datapath saw reaches `weft flows` (DESIGN.md §10): a's connections to b on TCP
/// 80, allowed on b's node by b-in's rule (a's egress is open), and a's ping to b, which b's
/// ingress drops, as denied with b-in as the group that isolates b; one flow each, the two
/// nodes' halves joined.
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn flows_say_which_rule_allowed_a_connection_and_which_policy_isolated_a_denied_ping() {
    weft_testkit::require_root();
    let lab = Fixture::up("lab-flows", &two_pods()).await;
    lab.create("security-groups", b_accepts_a_on_80()).await;
    lab.converge().await;
    let talk =
        [WEFT, "lab", "talk", "--to", "10.72.0.2", "--port", "80", "--interval-ms", "100", "--timeout-ms", "1000"];
    let mut on80 = lab.watch("x", "a", &talk, talk_round);
    let mut ping = a_pings_b(&lab);
    let within = Duration::from_secs(15);
    expect_in_a_row(&mut on80, true, 2, within, "a→b:80");
    expect_in_a_row(&mut ping, false, 2, within, "ping a→b, denied");
    let flows = |extra: &[&str]| -> Vec<Value> {
        let out = lab.server().weft(&[&["flows", "--project", "k8s-x", "-o", "json", "--last", "200"], extra].concat());
        assert!(out.status.success(), "weft flows: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let seen = weft_testkit::eventually("the connection and the ping in weft flows", within, async || {
        let all = flows(&[]);
        let allowed = all
            .iter()
            .find(|f| f["kind"] == "connection" && f["dst_port"] == 80 && f["ingress"]["decision"] == "allowed");
        let denied = all.iter().find(|f| f["kind"] == "denied" && f["protocol"] == 1);
        match (allowed, denied) {
            (Some(a), Some(d)) => Ok((a.clone(), d.clone())),
            _ => {
                let kinds: Vec<String> = all
                    .iter()
                    .map(|f| {
                        format!("{} {} {} {} {}", f["kind"], f["protocol"], f["dst_port"], f["nodes"], f["ingress"])
                    })
                    .collect();
                Err(format!("{kinds:#?}"))
            }
        }
    })
    .await;
    let (allowed, denied) = seen;
    assert_eq!(
        (allowed["src"]["name"].as_str(), allowed["dst"]["name"].as_str()),
        (Some("a"), Some("b")),
        "{allowed:#}"
    );
    assert_eq!(allowed["ingress"]["rule"]["group_name"], "b-in", "{allowed:#}");
    assert_eq!(allowed["egress"]["decision"], "open", "a's egress is open: {allowed:#}");
    let mut nodes: Vec<&str> = allowed["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["n1", "n2"], "both nodes' halves in one flow: {allowed:#}");
    assert_eq!(denied["verdict"], "denied", "{denied:#}");
    assert_eq!(denied["ingress"]["isolated_by"][0]["name"], "b-in", "{denied:#}");
    assert_eq!(denied["egress"]["decision"], "open", "{denied:#}");
    // The filters, and the line a person reads.
    assert!(flows(&["--verdict", "denied"]).iter().all(|f| f["verdict"] == "denied"));
    let out = lab.server().weft(&["flows", "--project", "k8s-x", "--verdict", "denied", "--last", "1"]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("k8s-x/a -> k8s-x/b ICMP echo request packet DENIED"), "{line}");
    assert!(line.contains("ingress: isolated by b-in"), "{line}");
}

/// Part of the ClusterNetworkPolicy conformance suite with real packets (DESIGN.md §11): its
/// TCP and UDP tests of both tiers' ingress and egress, rule order and ports, its integration
/// test (a pass to a NetworkPolicy, then the baseline) and its priority test, and weft's own
/// admin Accept over a NetworkPolicy that would deny. One pod a house, two houses a node, so
/// traffic crosses nodes and stays on one (where both directions' passes meet). Each step's
/// matrices are measured and checked against explain and `weft reach` (`Fixture::agrees`),
/// and each of upstream's probes against its expectation. Policies go in as kube-manager
/// translates them; a suite's pod 1 is played by its house's pod 0 (every selector here is
/// by house). The SCTP tests, the CIDR tests (their peers are pods' addresses) and the named
/// ports run through `weft reach` only (tests/cnp_conformance.rs).
#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread")]
async fn cluster_network_policy_conformance_with_real_packets() {
    use common::cnp::{HOUSES, OWN_CASES, Op, TRANSCRIPTION, namespace_name, parse};
    weft_testkit::require_root();
    const ADDRESSES: [&[&str]; 4] = [&["10.73.0.1"], &["10.73.0.2"], &["10.73.0.3"], &["10.73.0.4"]];
    let namespaces: Vec<&'static str> =
        HOUSES.iter().map(|(letter, ..)| &*Box::leak(namespace_name(letter).into_boxed_str())).collect();
    let pods: Vec<PodDef> = HOUSES
        .iter()
        .enumerate()
        .map(|(i, (_, house, sts))| PodDef {
            namespace: namespaces[i],
            name: Box::leak(format!("{sts}-0").into_boxed_str()),
            node: if i < 2 { "n1" } else { "n2" },
            addresses: ADDRESSES[i],
            labels: json!({"conformance-house": house, "statefulset.kubernetes.io/pod-name": format!("{sts}-0")}),
        })
        .collect();
    let lab = Fixture::up("lab-cnp", &pods).await;
    let o = weft_kube::Options::default();
    // The projects as kube-manager writes them: the namespace's labels and name.
    for (i, (_, house, _)) in HOUSES.iter().enumerate() {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            json!({"metadata": {"name": namespaces[i], "labels": {"conformance-house": house}}}),
        )
        .unwrap();
        let project = weft_kube::translate::namespace(&ns, &o).unwrap();
        let key = weft_client::Key::Name(project.name.clone());
        lab.client.replace(&key, &project, None).await.unwrap();
    }
    let wanted = [
        "CNPAdminTierIngressTCP",
        "CNPAdminTierEgressUDP",
        "CNPAdminTierIntegration",
        "CNPAdminTierPriorityField",
        "CNPBaselineTierIngressUDP",
        "CNPBaselineTierEgressTCP",
        "AdminAcceptOverridesANetworkPolicyThatWouldDeny",
    ];
    let cases: Vec<_> = parse(TRANSCRIPTION)
        .into_iter()
        .chain(parse(OWN_CASES))
        .filter(|c| wanted.contains(&c.name.as_str()))
        .collect();
    assert_eq!(cases.len(), wanted.len());
    let port_of = |pod: &str| {
        let i = HOUSES.iter().position(|(l, ..)| pod.starts_with(l)).unwrap();
        format!("k8s-{}/{}-0", namespaces[i], HOUSES[i].2)
    };
    let put_policy = async |cnp: &Value| {
        let cnp: weft_kube::cnp::ClusterNetworkPolicy = serde_json::from_value(cnp.clone()).unwrap();
        let policy = weft_kube::cnp::cluster_network_policy(&cnp, &o).0.unwrap();
        let key = weft_client::Key::Name(policy.name.clone());
        match lab.client.get::<weft_model::ClusterPolicy>(&key).await {
            Ok(_) => drop(lab.client.replace(&key, &policy, None).await.unwrap()),
            Err(_) => drop(lab.client.create(&policy).await.unwrap()),
        }
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in &cases {
        for p in lab.client.list_all::<weft_model::ClusterPolicy>(&Default::default()).await.unwrap() {
            lab.client.delete(weft_model::Kind::ClusterPolicy, &weft_client::Key::Name(p.name), false).await.unwrap();
        }
        let mut cnps: std::collections::BTreeMap<String, Value> =
            case.cnps.iter().map(|c| (c["metadata"]["name"].as_str().unwrap().to_string(), c.clone())).collect();
        for cnp in cnps.values() {
            put_policy(cnp).await;
        }
        let mut groups = Vec::new();
        for (_, _, np) in &case.network_policies {
            let group = weft_kube::translate::network_policy(np, &o).0.unwrap();
            lab.client.create(&group).await.unwrap();
            groups.push((group.project, group.name));
        }
        let mut stale = true;
        let mut matrices = std::collections::BTreeMap::new();
        for step in &case.steps {
            for op in &step.ops {
                let edited = match op {
                    Op::Probe { client, server, protocol, port, allowed } => {
                        let (from, to) = (port_of(client), port_of(server));
                        if from == to || protocol == "sctp" {
                            continue;
                        }
                        if stale {
                            lab.converge().await;
                            matrices.clear();
                            stale = false;
                        }
                        if let std::collections::btree_map::Entry::Vacant(e) = matrices.entry((protocol.clone(), *port))
                        {
                            e.insert(lab.agrees(protocol, Some(*port)).await);
                        }
                        checked += 1;
                        let got = matrices[&(protocol.clone(), *port)].allows(&from, &to);
                        if got != *allowed {
                            failures.push(format!(
                                "{} / {}: {client} -> {server} {protocol}/{port}",
                                case.name, step.title
                            ));
                        }
                        continue;
                    }
                    Op::Swap { cnp, direction, i, j } => {
                        let c = cnps.get_mut(cnp).unwrap();
                        c["spec"][direction].as_array_mut().unwrap().swap(*i, *j);
                        c.clone()
                    }
                    Op::Action { cnp, direction, i, action } => {
                        let c = cnps.get_mut(cnp).unwrap();
                        c["spec"][direction][*i]["action"] = json!(action);
                        c.clone()
                    }
                    Op::Priority { cnp, priority } => {
                        let c = cnps.get_mut(cnp).unwrap();
                        c["spec"]["priority"] = json!(priority);
                        c.clone()
                    }
                    Op::DeleteNetworkPolicy => {
                        for (project, name) in groups.drain(..) {
                            lab.delete_group(&project, &name).await;
                        }
                        stale = true;
                        continue;
                    }
                    other => panic!("{}: {other:?} is not in the lab's part", case.name),
                };
                put_policy(&edited).await;
                stale = true;
            }
        }
        for (project, name) in groups.drain(..) {
            lab.delete_group(&project, &name).await;
        }
    }
    // The last case's policy is still there: its status says which nodes hold it and that
    // their agents applied it.
    lab.converge().await;
    let left: weft_model::ClusterPolicy =
        lab.client.get(&weft_client::Key::Name("k8s-cnp-allow-dns".into())).await.unwrap();
    let status = left.status.unwrap();
    assert_eq!((status.nodes, status.applied), (1, 1), "gryffindor's pod is on n1, whose agent applied it");
    assert!(checked >= 40, "{checked} probes checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} real probes disagree with upstream:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // What the tiers decided reaches `weft flows` (DESIGN.md §10): drops a deny rule sampled
    // and connections an accept let through, each naming its tier, policy and rule.
    let tiered = |f: &Value, action: &str| {
        ["egress", "ingress"].iter().any(|side| {
            let d = &f[side];
            d["decision"] == "tiered"
                && d["rule"]["action"] == action
                && d["rule"]["rule"].is_u64()
                && d["rule"]["policy_name"].as_str().is_some_and(|n| n.starts_with("k8s-"))
        })
    };
    weft_testkit::eventually("tiered drops and accepts in weft flows", Duration::from_secs(20), async || {
        let out = lab.server().weft(&["flows", "-o", "json", "--last", "2000"]);
        assert!(out.status.success(), "weft flows: {}", String::from_utf8_lossy(&out.stderr));
        let all: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let denied = all.iter().any(|f| f["verdict"] == "denied" && tiered(f, "deny"));
        let accepted = all.iter().any(|f| f["verdict"] == "allowed" && tiered(f, "accept"));
        if denied && accepted {
            Ok(())
        } else {
            Err(format!("{} flows; denied {denied}, accepted {accepted}", all.len()))
        }
    })
    .await;
    let name = lab.name.clone();
    drop(lab);
    assert!(leftovers(&name).is_empty(), "weft lab down left {:?}", leftovers(&name));
}
