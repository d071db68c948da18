//! The nftables datapath with real packets: `weft lab up` builds nodes and pods as network
//! namespaces with one `weft agent --datapath nftables` per node, policies go in through the
//! REST API, and `weft lab probe` measures what gets through. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Server, WEFT, temp_dir};
use serde_json::{Value, json};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Network namespaces, nft and real packets need root; elsewhere these tests say so and pass.
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the lab needs root");
            return;
        }
    };
}

/// One pod of a test lab: namespace, name, node, addresses, labels.
struct PodDef {
    namespace: &'static str,
    name: &'static str,
    node: &'static str,
    addresses: &'static [&'static str],
    labels: Value,
}

fn manifests(pods: &[PodDef]) -> String {
    let mut out = String::new();
    for pod in pods {
        let ips: Vec<Value> = pod.addresses.iter().map(|a| json!({"ip": a})).collect();
        let doc = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": {"nodeName": pod.node, "containers": [{"name": "c", "image": "x", "ports": [
                {"name": "http", "containerPort": 80, "protocol": "TCP"},
                {"name": "alt", "containerPort": 81, "protocol": "TCP"},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            ]}]},
            "status": {"podIP": pod.addresses[0], "podIPs": ips},
        });
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).unwrap());
    }
    out
}

/// A server, a lab from `pods`, and the projects and ports kube-manager would have made.
struct Fixture {
    server: Option<Server>,
    name: String,
    lab_dir: PathBuf,
    client: weft_client::Client,
    _db: weft_testkit::TestDatabase,
}

impl Fixture {
    async fn up(tag: &str, pods: &[PodDef]) -> Fixture {
        let db = weft_testkit::fresh_database().await;
        let data_dir = temp_dir(tag);
        let server = Server::start(Some(&db.url), &data_dir, &[], "http").await;
        let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_string();
        let client = weft_client::Client::new(&server.url, Some(token), None).unwrap();
        let manifest_dir = data_dir.join("manifests");
        std::fs::create_dir_all(&manifest_dir).unwrap();
        std::fs::write(manifest_dir.join("pods.yaml"), manifests(pods)).unwrap();
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let fixture = Fixture { lab_dir: data_dir.join("lab"), server: Some(server), name, client, _db: db };
        let out = fixture.weft(&["lab", "up", "--manifests", manifest_dir.to_str().unwrap()]);
        assert!(out.status.success(), "weft lab up: {}", String::from_utf8_lossy(&out.stderr));
        let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.namespace).collect();
        for ns in namespaces {
            fixture.create("projects", json!({"name": format!("k8s-{ns}"), "labels": {"ns": ns}})).await;
        }
        for pod in pods {
            fixture
                .create(
                    "ports",
                    json!({
                        "name": pod.name, "project": format!("k8s-{}", pod.namespace), "node": pod.node,
                        "ips": pod.addresses, "labels": pod.labels, "security_groups": [],
                        "named_ports": {"http": {"protocol": "tcp", "port": 80}, "alt": {"protocol": "tcp", "port": 81},
                                        "dns": {"protocol": "udp", "port": 53}},
                    }),
                )
                .await;
        }
        fixture.converge().await;
        fixture
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn weft(&self, args: &[&str]) -> Output {
        let server = self.server();
        Command::new(WEFT)
            .args(args)
            .args(["--name", &self.name, "--lab-dir", self.lab_dir.to_str().unwrap(), "--data-dir"])
            .arg(&server.data_dir)
            .env("WEFT_SERVER", &server.url)
            .env_remove("WEFT_TOKEN")
            .output()
            .unwrap()
    }

    async fn create(&self, collection: &str, body: Value) -> i64 {
        let kind = match collection {
            "projects" => weft_model::Kind::Project,
            "ports" => weft_model::Kind::Port,
            _ => weft_model::Kind::SecurityGroup,
        };
        let resource = weft_model::Resource::from_json(kind, body).unwrap();
        let created = match resource {
            weft_model::Resource::Project(p) => self.client.create(&p).await.map(|p| p.revision),
            weft_model::Resource::Port(p) => self.client.create(&p).await.map(|p| p.revision),
            weft_model::Resource::SecurityGroup(g) => self.client.create(&g).await.map(|g| g.revision),
            weft_model::Resource::VirtualNetwork(n) => self.client.create(&n).await.map(|n| n.revision),
        };
        created.unwrap().unwrap_or_default()
    }

    async fn delete_group(&self, project: &str, name: &str) {
        let key = weft_client::Key::parse(weft_model::Kind::SecurityGroup, &format!("{project}/{name}"));
        self.client.delete(weft_model::Kind::SecurityGroup, &key, false).await.unwrap();
    }

    /// Waits until every node has applied the current revision (`weft wait`).
    async fn converge(&self) {
        let revision = self.client.info().await.unwrap().revision;
        let out = self.server().weft(&["wait", "--revision", &revision.to_string(), "--timeout", "30s"]);
        assert!(out.status.success(), "weft wait {revision}: {}{}", String::from_utf8_lossy(&out.stdout), self.logs());
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.lab_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("agent-") {
                out.push_str(&format!("--- {name}\n{}", std::fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        out
    }

    fn probe(&self, protocol: &str, port: Option<u16>) -> weft_lab::Matrix {
        let mut args = vec!["lab", "probe", "--protocol", protocol, "-o", "json"];
        let port = port.map(|p| p.to_string());
        if let Some(p) = &port {
            args.extend(["--port", p]);
        }
        let out = self.weft(&args);
        assert!(out.status.success(), "weft lab probe: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The same matrix as the compiler's explain computes it from what the store holds.
    async fn explained(&self, protocol: &str, port: Option<u16>, endpoints: &[String]) -> BTreeSet<(String, String)> {
        let store = weft_store::Store::connect(&self._db.url, 2).await.unwrap();
        let compiler = weft_testkit::compiler(&store).await;
        let ports = self.client.list_all::<weft_model::Port>(&Default::default()).await.unwrap();
        let endpoint = |e: &str| -> (weft_compiler::Endpoint, IpAddr) {
            if e == "outside" {
                let a = weft_lab::Lab::outside_address(false);
                return (weft_compiler::Endpoint::Address(a), a);
            }
            let p = ports.iter().find(|p| format!("{}/{}", p.project, p.name) == e).unwrap();
            let v4 = p.ips.iter().copied().find(IpAddr::is_ipv4).unwrap();
            (weft_compiler::Endpoint::Port(p.id.unwrap()), v4)
        };
        let (number, icmp) = match protocol {
            "tcp" => (6, None),
            "udp" => (17, None),
            _ => (1, Some((8, 0))),
        };
        let mut out = BTreeSet::new();
        for from in endpoints {
            for to in endpoints {
                let ((src, src_addr), (dst, dst_addr)) = (endpoint(from), endpoint(to));
                let packet = weft_compiler::Packet { src: src_addr, dst: dst_addr, protocol: number, port, icmp };
                if compiler.explain(&src, &dst, &packet).allowed {
                    out.insert((from.clone(), to.clone()));
                }
            }
        }
        out
    }

    /// Probes with real packets and checks the result against explain; returns the matrix.
    async fn agrees(&self, protocol: &str, port: Option<u16>) -> weft_lab::Matrix {
        let measured = self.probe(protocol, port);
        let explained = self.explained(protocol, port, &measured.endpoints).await;
        let got: BTreeSet<(String, String)> = measured.allowed.iter().cloned().collect();
        assert_eq!(
            got,
            explained,
            "{protocol}/{port:?}: real packets (left) and explain (right) differ\n{}",
            measured.table()
        );
        measured
    }

    fn node_netns(&self, node: &str) -> String {
        format!("wl-{}-n-{node}", self.name)
    }

    fn nft(&self, node: &str, args: &[&str]) -> String {
        let out =
            Command::new("ip").args(["netns", "exec", &self.node_netns(node), "nft"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Also when a test fails halfway: nothing of the lab stays behind.
        if self.server.is_some() {
            let _ = self.weft(&["lab", "down"]);
        }
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
    }
}

fn labels(app: &str) -> Value {
    json!({ "app": app })
}

fn three_pods() -> Vec<PodDef> {
    vec![
        PodDef { namespace: "x", name: "a", node: "n1", addresses: &["10.71.0.1", "fd71::1"], labels: labels("a") },
        PodDef { namespace: "x", name: "b", node: "n2", addresses: &["10.71.0.2"], labels: labels("b") },
        PodDef { namespace: "y", name: "c", node: "n3", addresses: &["10.71.0.3"], labels: labels("c") },
    ]
}

fn leftovers(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("wl-{name}-")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_applied_changed_and_deleted_real_packets_agree_with_explain() {
    require_root!();
    let lab = Fixture::up("lab-policies", &three_pods()).await;
    // Nothing isolates anyone: everything reaches everything, on TCP and by ping.
    let open = lab.agrees("tcp", Some(80)).await;
    assert_eq!(open.allowed.len(), 16, "{}", open.table());
    lab.agrees("icmp", None).await;

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
    let table = lab.nft("n1", &["list", "table", "inet", "weft"]);
    assert!(
        table.lines().any(|l| l.contains("drop") && l.contains("counter packets") && !l.contains("packets 0 ")),
        "a's default drop counted the denied probes:\n{table}"
    );

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

    // Egress for c: TCP to 10.71.0.0/24 except b, and ping to anyone.
    lab.create("security-groups", json!({"name": "c-out", "project": "k8s-y", "selector": {"matchLabels": {"app": "c"}},
        "policy_types": ["egress"], "rules": [
            {"direction": "egress", "protocol": "tcp", "remote": {"type": "cidr", "cidr": "10.71.0.0/24", "except": ["10.71.0.2/32"]}},
            {"direction": "egress", "protocol": "icmp", "remote": {"type": "any"}}]})).await;
    lab.converge().await;
    let egress = lab.agrees("tcp", Some(80)).await;
    assert!(egress.allows("k8s-y/c", "k8s-x/a") && !egress.allows("k8s-y/c", "outside"));
    lab.agrees("icmp", None).await;
    lab.agrees("udp", Some(53)).await;

    // Every policy gone: back to open.
    for (project, name) in [("k8s-x", "deny"), ("k8s-x", "from-y"), ("k8s-y", "c-out")] {
        lab.delete_group(project, name).await;
    }
    lab.converge().await;
    assert_eq!(lab.agrees("tcp", Some(80)).await.allowed.len(), 16);

    let name = lab.name.clone();
    drop(lab);
    assert!(leftovers(&name).is_empty(), "weft lab down left {:?}", leftovers(&name));
}
