//! `weft kube-manager` following a cluster: the fake Kubernetes API server (weft-testkit)
//! served over HTTP, kube-manager processes pointed at it by a kubeconfig, a real `weft
//! server`. The config service must come to hold exactly the translation of what the fake
//! holds — through watch events, a relist after 410 Gone, a restart with changes made
//! meanwhile, and a leader hand-over — and problems become Kubernetes Events.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::process::Command;
use std::time::Duration;

use common::ChildGuard;
use common::cluster::{KubeCluster, namespace, policy};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_model::SecurityGroup;

fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn kill(child: &mut ChildGuard, signal: &str) {
    Command::new("kill").args([signal, &child.0.id().to_string()]).status().unwrap();
    weft_testkit::eventually_blocking(&format!("kube-manager stopped on {signal}"), Duration::from_secs(10), || {
        child.0.try_wait().unwrap().ok_or("running")
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_is_followed_through_events_a_relist_after_410_and_a_restart() {
    let s = KubeCluster::new("km-follow").await;
    s.fake.apply(&namespace("x", json!({"team": "a"})));
    s.fake.apply(&namespace("y", json!({"team": "b"})));
    s.fake.apply(&pod("x", "a", "10.0.0.1"));
    s.fake.apply(&pod("y", "b", "10.0.0.2"));
    s.fake.apply(&policy("x", "deny", json!({"podSelector": {}})));
    let mut km = s.manager("km-1");
    s.until_converged("the first sync", &["km-1"]).await;
    assert_eq!(s.port_names().await, ["k8s-x/a", "k8s-y/b"]);

    // Watch events: a pod comes, another goes, a policy changes.
    s.fake.apply(&pod("x", "c", "10.0.0.3"));
    s.fake.delete::<Pod>(Some("y"), "b");
    s.fake.apply(&policy("x", "deny", json!({"podSelector": {"matchLabels": {"pod": "a"}}})));
    s.until_converged("the watch events", &["km-1"]).await;
    assert_eq!(s.port_names().await, ["k8s-x/a", "k8s-x/c"]);

    // The API server goes down and compacts meanwhile: the watch from the old resourceVersion
    // gets 410 Gone, kube-manager lists again, and sees that c went while it was away.
    let lists = s.fake.lists::<Pod>();
    let outage = s.fake.outage();
    s.fake.delete::<Pod>(Some("x"), "c");
    s.fake.compact();
    drop(outage);
    s.until("the relist", &["km-1"], async || s.fake.lists::<Pod>() > lists).await;
    s.until_converged("the relist", &["km-1"]).await;
    assert_eq!(s.port_names().await, ["k8s-x/a"]);

    // Stopped; changes made meanwhile; started again: they converge.
    kill(&mut km, "-KILL");
    s.fake.delete::<Namespace>(None, "y");
    s.fake.apply(&namespace("x", json!({"team": "c"})));
    s.fake.apply(&pod("x", "d", "10.0.0.4"));
    s.fake.delete::<NetworkPolicy>(Some("x"), "deny");
    s.fake.apply(&policy("x", "allow", json!({"podSelector": {}, "ingress": [{}]})));
    assert!(!s.converged().await, "the changes are not in the config service yet");
    let _km = s.manager("km-1");
    s.until_converged("the restart", &["km-1"]).await;
    assert_eq!(s.port_names().await, ["k8s-x/a", "k8s-x/d"]);
    let projects = s.client.list_all::<weft_model::Project>(&Default::default()).await.unwrap();
    assert!(projects.iter().all(|p| p.name != "k8s-y"), "y's project went with its namespace");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_weft_cannot_represent_becomes_a_warning_event_on_the_policy() {
    let s = KubeCluster::new("km-events").await;
    s.fake.apply(&namespace("x", json!({})));
    s.fake.apply(&pod("x", "a", "10.0.0.1"));
    s.fake.apply(&policy(
        "x",
        "odd",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}),
    ));
    let _km = s.manager_with("km-1", &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_addr = common::bound_address(&s.log_path("km-1"), "metrics listening", 1).await;
    s.until_converged("the first sync", &["km-1"]).await;
    let warned = async || {
        s.fake.list::<Event>().iter().any(|e| {
            let about = e.regarding.as_ref();
            e.type_.as_deref() == Some("Warning")
                && about.and_then(|r| r.kind.as_deref()) == Some("NetworkPolicy")
                && about.and_then(|r| r.name.as_deref()) == Some("odd")
                && about.and_then(|r| r.uid.as_deref()).is_some()
                && e.note.as_deref().is_some_and(|n| n.contains("not-a-cidr"))
        })
    };
    s.until("the event", &["km-1"], warned).await;
    assert!(s.log("km-1").contains("not-a-cidr"), "and a log line names it");
    let metrics = common::http_get(metrics_addr, "/metrics").await;
    for line in
        ["weft_kube_manager_leader 1", "weft_kube_manager_problems 1", "weft_kube_manager_reconcile_errors_total 0"]
    {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    let full = metrics.lines().find_map(|l| l.strip_prefix("weft_kube_manager_reconciles_total{kind=\"full\"} "));
    assert_eq!(full, Some("1"), "{metrics}");
    let events = metrics.lines().find_map(|l| l.strip_prefix("weft_kube_manager_watch_events_total "));
    assert!(
        events.and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 9),
        "init events of three watches: {metrics}"
    );
    // The rest of the policy flows: it isolates x/a, with the odd peer left out.
    let groups = s.client.list_all::<SecurityGroup>(&Default::default()).await.unwrap();
    let odd = groups.iter().find(|g| g.name == "odd").expect("the policy is there");
    assert!(odd.rules.is_empty(), "{odd:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_writes_and_another_takes_over_when_it_stops_or_dies() {
    let s = KubeCluster::new("km-lease").await;
    s.fake.apply(&namespace("x", json!({})));
    s.fake.apply(&pod("x", "a", "10.0.0.1"));
    let mut one = s.manager("km-1");
    s.until_converged("km-1 syncs", &["km-1"]).await;
    assert_eq!(s.holder().as_deref(), Some("km-1"));
    let mut two = s.manager("km-2");
    let two_started = k8s_openapi::jiff::Timestamp::now();
    // km-2 follows: it does not lead while km-1 renews.
    s.fake.apply(&pod("x", "b", "10.0.0.2"));
    s.until_converged("km-1 applies a change", &["km-1", "km-2"]).await;
    // Proving an absence takes a lease's time: until km-1 has renewed a whole lease duration
    // (2 s) after km-2 started, long enough for km-2 to take a lease nobody renewed.
    s.until("km-1 renewing through a lease duration", &["km-1", "km-2"], async || {
        let lease = s.fake.list::<Lease>().into_iter().next().and_then(|l| l.spec);
        let renewed = lease.as_ref().and_then(|l| l.renew_time.as_ref()).map(|t| t.0);
        renewed.is_some_and(|t| t.duration_since(two_started).as_secs_f64() > 2.0)
    })
    .await;
    assert_eq!(s.holder().as_deref(), Some("km-1"));
    assert!(!s.log("km-2").contains("leading"), "km-2 led while km-1 held the lease:\n{}", s.log("km-2"));

    // km-1 stops cleanly: it releases the lease and km-2 takes over.
    kill(&mut one, "-TERM");
    s.until("km-2 takes over", &["km-2"], async || s.holder().as_deref() == Some("km-2")).await;
    s.fake.apply(&pod("x", "c", "10.0.0.3"));
    s.until_converged("km-2 applies a change", &["km-2"]).await;

    // km-1 comes back and follows; km-2 dies without releasing: km-1 takes over once the
    // lease runs out.
    let _one = s.manager("km-1");
    kill(&mut two, "-KILL");
    s.fake.delete::<Pod>(Some("x"), "a");
    s.until_converged("km-1 applies the change made while nobody led", &["km-1"]).await;
    assert_eq!(s.holder().as_deref(), Some("km-1"));
    assert_eq!(s.port_names().await, ["k8s-x/b", "k8s-x/c"]);
    let transitions = s.fake.list::<Lease>()[0].spec.as_ref().and_then(|l| l.lease_transitions);
    assert_eq!(transitions, Some(2));
}

/// Where the cluster assigns nodes their pod CIDRs, a node's podCIDR is its block of the pod
/// network: its pods get addresses from it, one outside the pod network is a warning Event on
/// the Node, and the block goes with the Node.
#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_pod_cidr_is_its_block_and_its_pods_get_their_addresses_from_it() {
    use k8s_openapi::api::core::v1::Node;
    let s = KubeCluster::new("km-podcidr").await;
    s.client.create_node("n1").await.unwrap();
    let node = |name: &str, cidr: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}))
            .unwrap()
    };
    s.fake.apply(&node("n1", "10.244.7.0/24"));
    s.fake.apply(&node("n2", "10.9.0.0/24"));
    s.fake.apply(&namespace("x", json!({})));
    let scheduled: Pod = serde_json::from_value(json!({
        "metadata": {"name": "a", "namespace": "x", "uid": "uid-a"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
    }))
    .unwrap();
    s.fake.apply(&scheduled);
    let _km = s.manager_with("km-1", &["--pod-network-cidr", "10.244.0.0/16"]);
    let blocks_of_n1 = async || {
        let nodes = s.client.list_nodes().await.unwrap();
        nodes.iter().find(|n| n["name"] == "n1").map(|n| n["blocks"].clone()).unwrap_or_default()
    };
    s.until("n1's podCIDR is its block", &["km-1"], async || blocks_of_n1().await == json!(["10.244.7.0/24"])).await;
    let port_ips = async || {
        let key = weft_client::Key::Named { project: "k8s-x".into(), name: "a".into() };
        s.client.get::<weft_model::Port>(&key).await.map(|p| p.ips).unwrap_or_default()
    };
    s.until("a's port on n1's block", &["km-1"], async || {
        port_ips().await == ["10.244.7.1".parse::<std::net::IpAddr>().unwrap()]
    })
    .await;
    // n2's podCIDR is not the pod network's: said on n2, which gets blocks of weft's own.
    let warned = async || {
        s.fake.list::<Event>().iter().any(|e| {
            e.reason.as_deref() == Some("PodCIDRNotUsed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("n2")
                && e.note.as_deref().is_some_and(|n| n.contains("outside weft's pod network"))
        })
    };
    s.until("a warning on n2", &["km-1"], warned).await;
    // The pod and then its Node go: the block is given up.
    s.fake.delete::<Pod>(Some("x"), "a");
    s.until("a's port gone", &["km-1"], async || s.port_names().await.is_empty()).await;
    s.fake.delete::<Node>(None, "n1");
    s.until("n1's block given up", &["km-1"], async || blocks_of_n1().await == json!([])).await;
}

fn cluster_network_policy(name: &str, priority: i64) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "tier": "Admin", "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"tenant": "a"}}},
            "ingress": [
                {"name": "same-tenant", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"tenant": "a"}}}]},
                {"name": "others", "action": "Deny", "from": [{"namespaces": {}}]}
            ],
            "egress": [
                {"name": "to-nodes", "action": "Accept", "to": [{"nodes": {"matchLabels": {}}}]}
            ]
        }
    })
}

/// A ClusterNetworkPolicy becomes one cluster policy (DESIGN.md §11), kept current through
/// watch events; what weft cannot represent of it (a `nodes` peer, not supported yet) is a
/// warning Event on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_network_policy_is_followed_and_what_weft_cannot_say_is_an_event_on_it() {
    use weft_kube::cnp::ClusterNetworkPolicy;
    let s = KubeCluster::new("km-cnp").await;
    s.fake.apply(&namespace("x", json!({"tenant": "a"})));
    s.fake.apply(&pod("x", "a", "10.0.0.1"));
    s.fake.apply_json::<ClusterNetworkPolicy>(cluster_network_policy("tenancy", 10));
    let _km = s.manager("km-1");
    s.until_converged("the first sync", &["km-1"]).await;
    let policy = s.client.get::<weft_model::ClusterPolicy>(&weft_client::Key::Name("k8s-cnp-tenancy".into())).await;
    let policy = policy.expect("the cluster policy is there");
    assert_eq!((policy.tier, policy.priority, policy.ingress.len()), (weft_model::Tier::Admin, 10, 2));
    assert!(policy.egress.is_empty(), "the rule whose only peer is unsupported accepts nothing: {policy:?}");
    let warned = async || {
        s.fake.list::<Event>().iter().any(|e| {
            let about = e.regarding.as_ref();
            about.and_then(|r| r.kind.as_deref()) == Some("ClusterNetworkPolicy")
                && about.and_then(|r| r.name.as_deref()) == Some("tenancy")
                && about.and_then(|r| r.uid.as_deref()).is_some()
                && e.note.as_deref().is_some_and(|n| n.contains("nodes"))
        })
    };
    s.until("the event on the ClusterNetworkPolicy", &["km-1"], warned).await;
    // Its conditions: node-1 holds it (pod a is there) and has no agent to apply it; no tie.
    let condition = |kind: &str| {
        let cnp =
            s.fake.list::<ClusterNetworkPolicy>().into_iter().find(|c| c.metadata.name.as_deref() == Some("tenancy"));
        let conditions = cnp.and_then(|c| c.status).map(|st| st["conditions"].clone()).unwrap_or_default();
        conditions.as_array().into_iter().flatten().find(|c| c["type"] == kind).cloned()
    };
    // (Written every few seconds: the first may come before the policy is in weft.)
    let pending = async || condition("Enforced").is_some_and(|c| c["reason"] == "Pending");
    s.until("the conditions on the ClusterNetworkPolicy", &["km-1"], pending).await;
    let enforced = condition("Enforced").unwrap();
    assert_eq!(
        (enforced["status"].as_str(), enforced["reason"].as_str()),
        (Some("False"), Some("Pending")),
        "{enforced}"
    );
    assert_eq!(enforced["message"], "applied on 0 of 1 nodes");
    assert_eq!(condition("PriorityTie").unwrap()["status"], "False");

    // Reordered, then deleted: each a watch event.
    s.fake.apply_json::<ClusterNetworkPolicy>(cluster_network_policy("tenancy", 3));
    s.until_converged("the new priority", &["km-1"]).await;
    let policy = s.client.get::<weft_model::ClusterPolicy>(&weft_client::Key::Name("k8s-cnp-tenancy".into())).await;
    assert_eq!(policy.unwrap().priority, 3);
    assert!(s.fake.delete::<ClusterNetworkPolicy>(None, "tenancy"));
    s.until_converged("the policy gone", &["km-1"]).await;
    let left = s.client.list_all::<weft_model::ClusterPolicy>(&Default::default()).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A cluster without the ClusterNetworkPolicy CRD answers 404 to its list: kube-manager
/// still follows everything else, and leaves the cluster policies it wrote before as they are
/// (it cannot tell that the cluster has none).
#[tokio::test(flavor = "multi_thread")]
async fn without_the_crd_the_rest_is_followed_and_cluster_policies_are_left_alone() {
    use weft_kube::cnp::ClusterNetworkPolicy;
    let s = KubeCluster::new("km-nocrd").await;
    let owned = weft_kube::cnp::cluster_network_policy(
        &serde_json::from_value(cluster_network_policy("earlier", 1)).unwrap(),
        &weft_kube::Options::default(),
    )
    .0
    .unwrap();
    s.client.create(&owned).await.unwrap();
    s.fake.hide::<ClusterNetworkPolicy>();
    s.fake.apply(&namespace("x", json!({})));
    s.fake.apply(&pod("x", "a", "10.0.0.1"));
    let _km = s.manager("km-1");
    s.until("the pod's port", &["km-1"], async || s.port_names().await == ["k8s-x/a"]).await;
    let left = s.client.list_all::<weft_model::ClusterPolicy>(&Default::default()).await.unwrap();
    assert_eq!(left.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["k8s-cnp-earlier"]);
}
