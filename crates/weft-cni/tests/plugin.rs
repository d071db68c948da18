//! The `weft-cni` binary exec'd as a container runtime execs it (CNI_* environment, the
//! configuration on stdin, a namespace per sandbox), against a real agent on an nftables
//! datapath in a node namespace, fed its span by a controller that speaks the agent protocol
//! (root; reported ignored elsewhere). What the runtime sees, what the kernel holds, and which
//! packets pass.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::{Node, PATIENCE, call, connects, exec_plugin, reaches, runtime_env};
use serde_json::json;
use weft_testkit::Netns;

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_wired_under_their_policy_from_the_first_packet_and_unwired_whole() {
    let node = Node::start(&["db", "web", "other"]).await;
    let conf = node.conf(json!({}));
    let (db, web, other) = (Netns::new("db"), Netns::new("web"), Netns::new("other"));
    let (ok, result) = call("ADD", "c-db", Some(&db.path()), "db", "uid-db", &conf);
    assert!(ok, "{result}");
    // The spec's shape: both ends, the pod's address on the sandbox's interface, its gateway.
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], weft_model::default_interface("k8s-default", "db"));
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(result["interfaces"][1]["sandbox"], db.path().display().to_string());
    assert_eq!(result["ips"], json!([{"address": "10.32.0.10/32", "gateway": "169.254.1.1", "interface": 1}]));
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]));
    // The first packets: other is refused at once, web is let in on 5432 only.
    for (pod, sandbox) in [("web", &web), ("other", &other)] {
        let (ok, printed) = call("ADD", &format!("c-{pod}"), Some(&sandbox.path()), pod, &format!("uid-{pod}"), &conf);
        assert!(ok, "{printed}");
    }
    assert!(!connects(other.name(), db.name(), "10.32.0.10", 5432), "other → db is denied");
    assert!(connects(web.name(), db.name(), "10.32.0.10", 5432), "web → db:5432 is allowed");
    assert!(!connects(web.name(), db.name(), "10.32.0.10", 5433), "web → db:5433 is denied");
    assert!(connects(db.name(), other.name(), "10.32.0.12", 8080), "db → other: other is open");

    // CHECK with ADD's result holds; without the node's route to the pod it fails, naming it.
    let checked = node.conf(json!({"prevResult": result}));
    let (ok, printed) = call("CHECK", "c-db", Some(&db.path()), "db", "uid-db", &checked);
    assert!(ok, "{printed}");
    node.netns.ip(&["route", "del", "10.32.0.10/32"]);
    let (ok, printed) = call("CHECK", "c-db", Some(&db.path()), "db", "uid-db", &checked);
    assert!(!ok);
    assert_eq!(printed["code"], 100);
    assert!(printed["msg"].as_str().unwrap().contains("no route to 10.32.0.10"), "{printed}");

    // ADD of an attachment that exists is refused, and changes nothing.
    let (ok, printed) = call("ADD", "c-db", Some(&db.path()), "db", "uid-db", &conf);
    assert!(!ok && printed["msg"].as_str().unwrap().contains("already"), "{printed}");
    assert!(node.host_link("db"));

    // DEL: both ends go; again, without a namespace, for one that never existed: all succeed.
    let (ok, printed) = call("DEL", "c-db", Some(&db.path()), "db", "uid-db", &conf);
    assert!(ok, "{printed}");
    // The pair's removal finishes after DEL answers (the kernel's grace period), then the record.
    node.until_gone("db", &["c-other:eth0.json", "c-web:eth0.json"]).await;
    assert!(weft_agent::link::sandbox_side(&db.path(), "eth0").unwrap().is_none());
    assert!(call("DEL", "c-db", Some(&db.path()), "db", "uid-db", &conf).0);
    assert!(call("DEL", "c-db", None, "db", "uid-db", &conf).0);
    assert!(call("DEL", "never-was", None, "db", "uid-db", &conf).0);
    assert_eq!(node.records(), ["c-other:eth0.json", "c-web:eth0.json"]);

    // STATUS while synced; GC keeps what the runtime still has and removes the rest.
    assert!(call("STATUS", "x", None, "x", "x", &conf).0);
    let gc = node.conf(
        json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "c-web", "ifname": "eth0"}]}),
    );
    let (ok, printed) = call("GC", "x", None, "x", "x", &gc);
    assert!(ok, "{printed}");
    assert_eq!(node.records(), ["c-web:eth0.json"]);
    assert!(node.host_link("web") && !node.host_link("other"));
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_waits_for_its_pods_port_and_a_new_sandbox_replaces_the_old_one() {
    let node = Node::start(&["web"]).await;
    let conf = node.conf(json!({}));
    let db = Netns::new("db");
    // The port never comes: "try again later", naming the port, and nothing is left.
    let (ok, printed) = call("ADD", "c-db", Some(&db.path()), "db", "uid-db", &conf);
    assert!(!ok);
    assert_eq!(printed["code"], 11);
    assert!(printed["msg"].as_str().unwrap().contains("k8s-default/db"), "{printed}");
    assert!(node.records().is_empty() && !node.host_link("db"));

    // The port arrives while ADD waits: ADD answers once it is in force.
    let path = db.path();
    let adding = std::thread::spawn(move || call("ADD", "c-db", Some(&path), "db", "uid-db", &conf));
    // Most likely ADD is waiting by now; if not, it finds the port at once, and what follows
    // holds all the same: nothing here depends on the pause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.set_span(&["web", "db"], "uid-db");
    let (ok, printed) = tokio::task::spawn_blocking(move || adding.join().unwrap()).await.unwrap();
    assert!(ok, "{printed}");
    assert!(node.host_link("db"));

    // A pod of that name with another UID waits for its own port, and is told whose it is.
    let conf = node.conf(json!({"timeoutSeconds": 1}));
    let again = Netns::new("db2");
    let (ok, printed) = call("ADD", "c-db-2", Some(&again.path()), "db", "uid-db-new", &conf);
    assert!(!ok && printed["code"] == 11);
    assert!(printed["msg"].as_str().unwrap().contains("uid-db"), "{printed}");

    // A new sandbox of the same pod replaces the old one's interface; the old sandbox's late
    // DEL then leaves the new one alone.
    let (ok, printed) = call("ADD", "c-db-2", Some(&again.path()), "db", "uid-db", &conf);
    assert!(ok, "{printed}");
    assert!(weft_agent::link::sandbox_side(&db.path(), "eth0").unwrap().is_none(), "the old sandbox lost its eth0");
    assert!(call("DEL", "c-db", Some(&db.path()), "db", "uid-db", &conf).0);
    assert!(node.host_link("db"));
    assert!(weft_agent::link::sandbox_side(&again.path(), "eth0").unwrap().is_some());
    assert_eq!(node.records(), ["c-db-2:eth0.json"]);
}

#[ignore = "needs root (network namespaces, nftables): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_agent_a_del_is_queued_and_replayed_when_it_is_back() {
    let node = Node::start(&["web"]).await;
    let conf = node.conf(json!({}));
    let web = Netns::new("web");
    assert!(call("ADD", "c-web", Some(&web.path()), "web", "uid-web", &conf).0);
    // The CNI server goes (the agent restarts): ADD hears "try again later", STATUS "not
    // available", and DEL succeeds into the queue.
    let away = node.conf(json!({"socket": node.dir.join("away/cni.sock")}));
    let (ok, printed) = call("ADD", "c-x", Some(&web.path()), "web", "uid-web", &away);
    assert!(!ok && printed["code"] == 11, "{printed}");
    let (ok, printed) = call("STATUS", "x", None, "x", "x", &away);
    assert!(!ok && printed["code"] == 50, "{printed}");
    assert!(call("DEL", "c-web", Some(&web.path()), "web", "uid-web", &away).0);
    assert!(node.host_link("web"), "nothing happened yet");
    // The queued DEL is moved where this node's server looks, as if it had been away; a server
    // started again replays it.
    let queue = node.dir.join("cni-queue");
    std::fs::create_dir_all(&queue).unwrap();
    std::fs::rename(node.dir.join("away/cni-queue/c-web:eth0.json"), queue.join("c-web:eth0.json")).unwrap();
    let _ = std::fs::remove_file(&node.socket);
    node.serve_cni();
    weft_testkit::eventually("the queued DEL replayed", PATIENCE, async || {
        if !node.host_link("web") && node.records().is_empty() { Ok(()) } else { Err("not yet") }
    })
    .await;
    assert!(!queue.join("c-web:eth0.json").exists());
}

/// hostPort, as a runtime does it with weft's conflist: weft-cni's ADD, then the reference
/// `portmap` with ADD's result and the pod's port mappings (libcni's chaining, done here in
/// the node's namespace, so portmap's iptables rules are the test's own). Traffic to the
/// node's port reaches the pod under the pod's policy, as traffic to the pod's address does.
#[ignore = "needs root, nftables, iptables and the reference portmap plugin (scripts/setup.sh test installs them): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_chained_through_portmap_reaches_its_pod_under_the_pods_policy() {
    let portmap = std::path::Path::new("/usr/lib/cni/portmap");
    assert!(
        portmap.exists() && std::process::Command::new("iptables").arg("-V").output().is_ok(),
        "apt-get install containernetworking-plugins iptables (scripts/setup.sh test)"
    );
    let node = Node::start(&["db", "web", "other"]).await;
    // The node's address on a network beyond it, where a client outside the cluster is.
    let outside = Netns::new("out");
    node.netns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", outside.name()]);
    node.netns.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    node.netns.ip(&["link", "set", "up0", "up"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "up1"]);
    outside.ip(&["link", "set", "up1", "up"]);
    // The conflist's portmap entry, as the agent writes it.
    let conflist: serde_json::Value =
        serde_json::from_str(&weft_agent::cni::conflist(&node.socket, Duration::from_secs(2), 0)).unwrap();
    let entry = conflist["plugins"][1].clone();
    assert_eq!(entry["type"], "portmap");

    // portmap runs in the node's namespace, as a runtime runs it on the node.
    let portmap_call =
        |command: &str, container: &str, sandbox: &Netns, pod: &str, uid: &str, conf: &serde_json::Value| {
            let env = runtime_env(command, container, Some(&sandbox.path()), pod, uid);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            exec_plugin(portmap, Some(node.netns.name()), &env, conf)
        };
    let conf = node.conf(json!({}));
    let mut sandboxes = Vec::new();
    for (pod, host_port, container_port) in [("db", 15432, 5432), ("web", 18080, 8080), ("other", 18081, 8080)] {
        let sandbox = Netns::new(pod);
        let (container, uid) = (format!("c-{pod}"), format!("uid-{pod}"));
        let (ok, result) = call("ADD", &container, Some(&sandbox.path()), pod, &uid, &conf);
        assert!(ok, "{result}");
        let mut chained = entry.clone();
        let fields = chained.as_object_mut().unwrap();
        fields.insert("cniVersion".into(), conflist["cniVersion"].clone());
        fields.insert("name".into(), conflist["name"].clone());
        fields.insert("prevResult".into(), result);
        fields.insert(
            "runtimeConfig".into(),
            json!({"portMappings": [{"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"}]}),
        );
        let (ok, printed) = portmap_call("ADD", &container, &sandbox, pod, &uid, &chained);
        assert!(ok, "portmap ADD: {printed}");
        sandboxes.push((sandbox, container, uid, chained));
    }
    let [(db, ..), (web, ..), (other, ..)] = &sandboxes[..] else { unreachable!() };
    let node_port = |port: u16| std::net::SocketAddr::from(([192, 0, 2, 1], port));
    let pod_port = |address: [u8; 4], port: u16| std::net::SocketAddr::from((address, port));
    // `other` is open: its host port reaches it from outside the cluster.
    assert!(reaches(outside.name(), node_port(18081), other.name(), pod_port([10, 32, 0, 12], 8080)));
    // db takes only web, on 5432: through its host port too, web gets in and outside does not.
    assert!(!reaches(outside.name(), node_port(15432), db.name(), pod_port([10, 32, 0, 10], 5432)), "outside → db");
    assert!(reaches(web.name(), node_port(15432), db.name(), pod_port([10, 32, 0, 10], 5432)), "web → db");
    assert!(!reaches(other.name(), node_port(15432), db.name(), pod_port([10, 32, 0, 10], 5432)), "other → db");

    // The runtime's DEL runs the chain backwards: portmap's mapping goes, then the pod.
    let (_, container, uid, chained) = &sandboxes[2];
    let (ok, printed) = portmap_call("DEL", container, other, "other", uid, chained);
    assert!(ok, "portmap DEL: {printed}");
    assert!(!reaches(outside.name(), node_port(18081), other.name(), pod_port([10, 32, 0, 12], 8080)));
    assert!(call("DEL", container, Some(&other.path()), "other", uid, &conf).0);
    node.until_gone("other", &["c-db:eth0.json", "c-web:eth0.json"]).await;
}
