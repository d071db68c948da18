//! A real container runtime drives the plugin: Debian's containerd, started privately, runs a
//! pod's sandbox through its CRI API as kubelet does (RunPodSandbox, PodSandboxStatus,
//! StopPodSandbox, RemovePodSandbox), with weft's conflist and `weft-cni` in its CNI
//! directories, against a real agent on nftables (root, containerd, runc and the reference
//! plugins; reported ignored elsewhere).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Node, call, connects};
use serde_json::{Value, json};
use weft_testkit::Netns;
use weft_testkit::containerd::Containerd;

#[ignore = "needs root, containerd, runc and the reference CNI plugins (scripts/setup.sh test installs them): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_sandbox_through_weft_cni_under_its_policy_and_leaves_nothing_behind() {
    let node = Node::start(&["db", "web", "other"]).await;
    // containerd 1.6 refuses a 1.1.0 result: the conflist speaks 1.0.0 and offers 1.1.0.
    let conflist = json!({
        "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "weft",
        "plugins": [{"type": "weft-cni", "socket": node.socket, "timeoutSeconds": 10}]
    });
    let plugin = Path::new(env!("CARGO_BIN_EXE_weft-cni"));
    let containerd =
        Containerd::start(&node.dir.join("containerd"), &[("weft-cni", plugin)], &conflist.to_string()).await;
    let mut cri = containerd.cri().await;
    assert_eq!(cri.version().await.unwrap().runtime_name, "containerd");
    // Two pods wired by the plugin directly, to probe the runtime's pod from.
    let conf = node.conf(json!({}));
    let (web, other) = (Netns::new("web"), Netns::new("other"));
    for (pod, sandbox) in [("web", &web), ("other", &other)] {
        let (ok, printed) = call("ADD", &format!("c-{pod}"), Some(&sandbox.path()), pod, &format!("uid-{pod}"), &conf);
        assert!(ok, "{printed}");
    }

    let started = Instant::now();
    let id = cri.run_pod_sandbox("default", "db", "uid-db").await.unwrap();
    let elapsed = started.elapsed();
    // The runtime reports the address weft allocated the pod's port, as kubelet reads it.
    assert_eq!(cri.pod_sandbox_ips(&id).await.unwrap(), ["10.32.0.10"]);
    let record: Value =
        serde_json::from_slice(&std::fs::read(node.dir.join(format!("state/cni/{id}:eth0.json"))).unwrap()).unwrap();
    let sandbox_path = record["netns"].as_str().unwrap().to_string();
    let sandbox = Path::new(&sandbox_path).file_name().unwrap().to_str().unwrap().to_string();
    // Under its policy from the first packet: `other` never gets in, `web` does on 5432 only.
    assert!(!connects(other.name(), &sandbox, "10.32.0.10", 5432), "other → db is denied");
    assert!(connects(web.name(), &sandbox, "10.32.0.10", 5432), "web → db:5432 is allowed");
    assert!(!connects(web.name(), &sandbox, "10.32.0.10", 80), "web → db:80 is denied");
    eprintln!("RunPodSandbox through weft-cni took {} ms", elapsed.as_millis());

    // kubelet stops a sandbox more than once, then removes it: nothing of it is left.
    cri.stop_pod_sandbox(&id).await.unwrap();
    cri.stop_pod_sandbox(&id).await.unwrap();
    cri.remove_pod_sandbox(&id).await.unwrap();
    node.until_gone("db", &["c-other:eth0.json", "c-web:eth0.json"]).await;
    assert!(!Path::new(&sandbox_path).exists(), "the sandbox's namespace is gone");
    let routes = std::process::Command::new("ip").args(["-n", node.netns.name(), "route", "show"]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("10.32.0.10"), "no route to the pod is left:\n{routes}");
    drop(containerd);
}
