//! `weft kube-manager --manifests` against a real `weft server`: the config service made to
//! hold what a directory of Kubernetes manifests says (the seed's yelb app and policies), no
//! more, no less, and nothing changed that another owner wrote.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, WEFT, temp_dir};
use serde_json::{Value, json};
use weft_model::{Port, Project, SecurityGroup};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/yelb")
}

struct Setup {
    server: Server,
    client: weft_client::Client,
    manifests: PathBuf,
    _db: weft_testkit::TestDatabase,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.server.data_dir);
    }
}

impl Setup {
    async fn new(tag: &str) -> Setup {
        let db = weft_testkit::fresh_database().await;
        let data_dir = temp_dir(tag);
        let server = Server::start(Some(&db.url), &data_dir, &[], "http").await;
        let client = server.admin_client();
        let manifests = data_dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for file in ["app.yaml", "yelb-policy.yaml"] {
            std::fs::copy(examples().join(file), manifests.join(file)).unwrap();
        }
        Setup { server, client, manifests, _db: db }
    }

    /// `weft kube-manager --manifests DIR --once -o json`, with extra arguments.
    fn once(&self, extra: &[&str]) -> (Value, String) {
        let mut args = vec!["kube-manager", "--manifests", self.manifests.to_str().unwrap(), "--once", "-o", "json"];
        args.extend(extra);
        let out = self.server.weft(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weft kube-manager: {stderr}");
        (serde_json::from_slice(&out.stdout).unwrap(), stderr)
    }

    async fn ports(&self) -> Vec<Port> {
        self.client.list_all::<Port>(&Default::default()).await.unwrap()
    }

    async fn groups(&self, project: &str) -> Vec<String> {
        let all = self.client.list_all::<SecurityGroup>(&Default::default()).await.unwrap();
        let mut names: Vec<String> = all.into_iter().filter(|g| g.project == project).map(|g| g.name).collect();
        names.sort();
        names
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_once_make_the_config_service_hold_exactly_the_directory() {
    let s = Setup::new("kube-once").await;
    // Someone else's objects, which kube-manager must leave alone.
    let ops: Project = serde_json::from_value(json!({"name": "ops"})).unwrap();
    s.client.create(&ops).await.unwrap();
    let tool: Port = serde_json::from_value(json!({"name": "tool", "project": "ops", "ips": ["10.9.9.9"]})).unwrap();
    let tool_revision = s.client.create(&tool).await.unwrap().revision;

    let (first, _) = s.once(&[]);
    assert_eq!((first["created"].as_i64(), first["deleted"].as_i64()), (Some(1 + 4 + 5), Some(0)), "{first}");
    let key = |kind, k: &str| weft_client::Key::parse(kind, k);
    let project: Project = s.client.get(&key(weft_model::Kind::Project, "k8s-default")).await.unwrap();
    assert_eq!(project.labels["kubernetes.io/metadata.name"], "default");
    assert_eq!(project.labels["weft.io/cluster"], "default");
    let ui: Port = s.client.get(&key(weft_model::Kind::Port, "k8s-default/yelb-ui")).await.unwrap();
    assert_eq!(ui.node.as_deref(), Some("node-1"));
    assert_eq!(ui.ips, vec!["10.47.0.11".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(ui.labels["tier"], "frontend");
    assert_eq!(ui.security_groups, Some(vec![]));
    assert_eq!(ui.named_ports["http"].port, 80);
    let policies = ["default-deny", "redis-server-in", "yelb-appserver-in", "yelb-db-in", "yelb-ui-in"];
    let mut expected: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    expected.push("default".into()); // the project's own default group
    expected.sort();
    assert_eq!(s.groups("k8s-default").await, expected);
    let db_in: SecurityGroup =
        s.client.get(&key(weft_model::Kind::SecurityGroup, "k8s-default/yelb-db-in")).await.unwrap();
    assert_eq!(
        serde_json::to_value(&db_in.rules).unwrap()[0]["remote"],
        json!({"type": "selector", "ports": {"matchLabels": {"app": "yelb-appserver", "tier": "middletier"}}})
    );

    // Again: nothing to do, at the same revision.
    let (again, _) = s.once(&[]);
    assert_eq!(
        (again["created"].as_i64(), again["updated"].as_i64(), again["deleted"].as_i64()),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(again["revision"], first["revision"]);

    // A label changes; the policies go (`kubectl delete -f yelb-policy.yaml`).
    let app = std::fs::read_to_string(s.manifests.join("app.yaml")).unwrap();
    std::fs::write(s.manifests.join("app.yaml"), app.replace("tier: frontend", "tier: web")).unwrap();
    std::fs::remove_file(s.manifests.join("yelb-policy.yaml")).unwrap();
    let (changed, _) = s.once(&[]);
    assert_eq!((changed["updated"].as_i64(), changed["deleted"].as_i64()), (Some(1), Some(5)), "{changed}");
    assert_eq!(s.groups("k8s-default").await, vec!["default".to_string()]);
    let ui: Port = s.client.get(&key(weft_model::Kind::Port, "k8s-default/yelb-ui")).await.unwrap();
    assert_eq!(ui.labels["tier"], "web");

    // Another cluster's kube-manager finds the names taken: it reports and changes nothing.
    let (west, stderr) = s.once(&["--cluster-name", "west"]);
    assert_eq!(
        (west["created"].as_i64(), west["updated"].as_i64(), west["deleted"].as_i64()),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(west["revision"], changed["revision"]);
    assert!(stderr.contains("kube-manager/default"), "the conflicts name the owner:\n{stderr}");

    // The directory empties: the namespace's project goes with its ports.
    std::fs::remove_file(s.manifests.join("app.yaml")).unwrap();
    let (gone, _) = s.once(&[]);
    assert_eq!(gone["deleted"].as_i64(), Some(4 + 1), "{gone}");
    let left: Vec<String> = s.ports().await.into_iter().map(|p| format!("{}/{}", p.project, p.name)).collect();
    assert_eq!(left, vec!["ops/tool".to_string()], "someone else's port is still there");
    let tool: Port = s.client.get(&key(weft_model::Kind::Port, "ops/tool")).await.unwrap();
    assert_eq!(tool.revision, tool_revision, "and untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_pod_network_scheduled_pods_get_addresses_from_their_nodes_blocks() {
    let s = Setup::new("kube-pod-network").await;
    std::fs::write(
        s.manifests.join("new.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: new-1, namespace: default, uid: u-new-1, labels: {app: new}}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: new-2, namespace: default, uid: u-new-2, labels: {app: new}}\n\
         spec: {nodeName: node-2, containers: [{name: c, image: i}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: default, labels: {app: new}}\n\
         spec: {containers: [{name: c, image: i}]}\n",
    )
    .unwrap();
    let args = ["--pod-network-cidr", "10.47.0.0/16,fd47::/56"];
    let (first, stderr) = s.once(&args);
    // The namespace's project, yelb's 4 ports and 5 policies, and the 2 scheduled pods' ports.
    assert_eq!(first["created"].as_i64(), Some(1 + 4 + 5 + 2), "{first}\n{stderr}");
    let key = |kind, k: &str| weft_client::Key::parse(kind, k);
    let network: weft_model::VirtualNetwork =
        s.client.get(&key(weft_model::Kind::VirtualNetwork, "cluster.default/pods")).await.unwrap();
    assert!(network.shared);
    let port = |name: &'static str| {
        let client = s.client.clone();
        async move { client.get::<Port>(&key(weft_model::Kind::Port, &format!("k8s-default/{name}"))).await }
    };
    // Each scheduled pod's port has an address of each family from its node's block; the
    // manifests' own addresses are kept; a pod not scheduled has no port yet.
    let in_net = |ip: &std::net::IpAddr, net: &str| net.parse::<ipnet::IpNet>().unwrap().contains(ip);
    let new1 = port("new-1").await.unwrap();
    assert_eq!(new1.network.as_deref(), Some("cluster.default/pods"));
    assert_eq!(new1.instance.as_deref(), Some("u-new-1"));
    assert!(in_net(&new1.ips[0], "10.47.0.0/24") && in_net(&new1.ips[1], "fd47::/80"), "{:?}", new1.ips);
    let new2 = port("new-2").await.unwrap();
    assert!(in_net(&new2.ips[0], "10.47.1.0/24") && in_net(&new2.ips[1], "fd47::1:0:0:0/80"), "{:?}", new2.ips);
    assert_eq!(port("yelb-ui").await.unwrap().ips, vec!["10.47.0.11".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(port("pending").await.unwrap_err().status(), Some(404));
    // Again: what IPAM gave stands, nothing is written.
    let (again, _) = s.once(&args);
    assert_eq!((again["created"].as_i64(), again["updated"].as_i64()), (Some(0), Some(0)), "{again}");
    assert_eq!(port("new-1").await.unwrap().ips, new1.ips);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_are_followed_as_they_change_and_a_broken_file_changes_nothing() {
    let s = Setup::new("kube-watch").await;
    std::fs::remove_file(s.manifests.join("yelb-policy.yaml")).unwrap();
    let mut manager = common::ChildGuard(
        Command::new(WEFT)
            .args(["kube-manager", "--manifests", s.manifests.to_str().unwrap(), "--data-dir"])
            .arg(&s.server.data_dir)
            .env("WEFT_SERVER", &s.server.url)
            .env_remove("WEFT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = manager.0.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = |what: &str, done: &mut dyn FnMut() -> bool| {
        weft_testkit::eventually_blocking(what, Duration::from_secs(30), || weft_testkit::when(done(), "not yet"));
    };
    let ports = || {
        let c = s.client.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async move { c.list_all::<Port>(&Default::default()).await.unwrap().len() })
        })
    };
    let groups = || tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(s.groups("k8s-default")));
    until("the pods arrive", &mut || ports() == 4);

    // `kubectl create -f yelb-policy.yaml`.
    std::fs::copy(examples().join("yelb-policy.yaml"), s.manifests.join("yelb-policy.yaml")).unwrap();
    until("the policies arrive", &mut || groups().len() == 6);

    // A file that does not read: kube-manager says so and deletes nothing.
    std::fs::write(s.manifests.join("broken.yaml"), "kind: Pod\nmetadata: [not, a, map\n").unwrap();
    until("kube-manager reports the broken file", &mut || {
        log.try_iter().any(|line| line.contains("do not read") && line.contains("broken.yaml"))
    });
    assert_eq!((ports(), groups().len()), (4, 6), "everything is still there");

    // Mended, with the policies removed: they go.
    std::fs::remove_file(s.manifests.join("broken.yaml")).unwrap();
    std::fs::remove_file(s.manifests.join("yelb-policy.yaml")).unwrap();
    until("the policies go", &mut || groups().len() == 1);
    drop(manager);
}

/// The pairs a `-o json` matrix allows, as (from, to) names without the project.
fn pairs(matrix: &Value) -> Vec<(String, String)> {
    let short = |v: &Value| v.as_str().unwrap().rsplit('/').next().unwrap().to_string();
    matrix["allowed"].as_array().unwrap().iter().map(|p| (short(&p[0]), short(&p[1]))).collect()
}

/// `weft reach` and `weft trace` on the yelb policies kube-manager wrote: the compiler's
/// matrix and one pair's verdict with the groups and rule on each side.
#[tokio::test(flavor = "multi_thread")]
async fn reach_and_trace_explain_the_yelb_policies() {
    let s = Setup::new("kube-reach").await;
    let (applied, _) = s.once(&[]);
    let json = |args: &[&str]| -> Value {
        let out = s.server.weft(&[args, &["-o", "json"]].concat());
        assert!(out.status.success(), "weft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ui_db = ("yelb-ui".to_string(), "yelb-db".to_string());
    let app_db = ("yelb-appserver".to_string(), "yelb-db".to_string());

    let db = json(&["reach", "--port", "5432"]);
    assert_eq!(db["revision"], applied["revision"], "stamped with the revision it reflects");
    assert_eq!(db["endpoints"].as_array().unwrap().len(), 4);
    let allowed = pairs(&db);
    assert!(allowed.contains(&app_db) && !allowed.contains(&ui_db), "{allowed:?}");
    assert!(allowed.contains(&("yelb-db".into(), "yelb-db".into())), "a port reaches itself");

    let web = json(&["reach", "--port", "80", "--outside", "192.0.2.254"]);
    assert!(pairs(&web).contains(&("outside".into(), "yelb-ui".into())), "yelb-ui-in: TCP 80 from anywhere");
    let ping = json(&["reach", "--protocol", "icmp", "--outside", "192.0.2.254"]);
    let pinged = pairs(&ping);
    assert!(!pinged.contains(&ui_db) && !pinged.contains(&("outside".into(), "yelb-ui".into())), "{pinged:?}");
    let only_db = json(&["reach", "--port", "5432", "-l", "app=yelb-db"]);
    assert_eq!(only_db["endpoints"], json!(["k8s-default/yelb-db"]));

    let denied = json(&["trace", "k8s-default/yelb-ui", "k8s-default/yelb-db", "--port", "5432/tcp"]);
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["egress"]["verdict"], "open", "{denied}");
    assert_eq!(denied["ingress"]["verdict"], "denied");
    assert_eq!(denied["ingress"]["isolated_by"], json!(["k8s-default/default-deny", "k8s-default/yelb-db-in"]));
    let allowed = json(&["trace", "k8s-default/yelb-appserver", "10.47.1.21", "--port", "5432"]);
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["ingress"]["port"], "k8s-default/yelb-db", "a port's address means that port");
    assert_eq!(allowed["ingress"]["group"], "k8s-default/yelb-db-in");
    assert!(allowed["ingress"]["rule"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    // The rule is named by the NetworkPolicy entry it was written from.
    let origin = json!({"kind": "NetworkPolicy", "namespace": "default", "name": "yelb-db-in", "index": 0});
    assert_eq!(allowed["ingress"]["origin"], origin, "{allowed}");
    let text = s.server.weft(&["trace", "k8s-default/yelb-appserver", "k8s-default/yelb-db", "--port", "5432/tcp"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("from NetworkPolicy default/yelb-db-in [0]"), "{text}");
    let text = s.server.weft(&["trace", "k8s-default/yelb-ui", "k8s-default/yelb-db", "--port", "5432/tcp"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("denied: isolated by k8s-default/default-deny"), "{text}");

    // Bad questions get clear answers.
    for (args, says) in [
        (vec!["reach", "--protocol", "gre"], "gre"),
        (vec!["reach"], "needs a port"),
        (vec!["trace", "k8s-default/nope", "k8s-default/yelb-db", "--port", "80"], "no port k8s-default/nope"),
    ] {
        let out = s.server.weft(&args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A reader of one project sees that project's ports only.
    let ops: Project = serde_json::from_value(json!({"name": "ops"})).unwrap();
    s.client.create(&ops).await.unwrap();
    let tool: Port = serde_json::from_value(json!({"name": "tool", "project": "ops", "ips": ["10.9.9.9"]})).unwrap();
    s.client.create(&tool).await.unwrap();
    let token =
        json(&["token", "create", "--role", "reader", "--project", "ops"])["token"].as_str().unwrap().to_string();
    let out = Command::new(WEFT)
        .args(["reach", "--port", "80", "-o", "json"])
        .env("WEFT_SERVER", &s.server.url)
        .env("WEFT_TOKEN", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["endpoints"], json!(["ops/tool"]));

    // A matrix has a limit.
    let many: Vec<weft_client::BatchOp> = (0..501)
        .map(|i| weft_client::BatchOp::Create {
            kind: weft_model::Kind::Port,
            object: weft_client::object(&json!({"name": format!("p{i}"), "project": "ops", "ips": [format!("10.8.{}.{}", i / 200, i % 200 + 1)]})),
        })
        .collect();
    s.client.batch(&many).await.unwrap();
    let out = s.server.weft(&["reach", "--port", "80", "--project", "ops"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 500"), "{}", String::from_utf8_lossy(&out.stderr));
}
