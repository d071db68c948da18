//! A lab for tests with real packets: a `weft server` on a fresh database, `weft lab up` with
//! nodes and pods as network namespaces and an nftables agent per node, and the projects and
//! ports kube-manager would have made for the pods. Needs root (CI runs as root).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use weft_lab::watch::{Reading, Watch};

use super::{Server, WEFT, temp_dir};

/// Network namespaces, nft and real packets need root; elsewhere these tests say so and pass.
/// One pod of a test lab: namespace, name, node, addresses, labels.
pub struct PodDef {
    pub namespace: &'static str,
    pub name: &'static str,
    pub node: &'static str,
    pub addresses: &'static [&'static str],
    pub labels: Value,
}

pub fn manifests(pods: &[PodDef]) -> String {
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
pub struct Fixture {
    pub server: Option<Server>,
    /// The server's REST port and gRPC address, kept across a controller restart.
    pub rest_port: u16,
    pub grpc: String,
    pub url: String,
    pub data_dir: PathBuf,
    pub name: String,
    pub lab_dir: PathBuf,
    pub client: weft_client::Client,
    pub db: weft_testkit::TestDatabase,
}

impl Fixture {
    pub async fn up(tag: &str, pods: &[PodDef]) -> Fixture {
        let db = weft_testkit::fresh_database().await;
        let data_dir = temp_dir(tag);
        // Both listeners on ports of the server's choosing; a restart takes the same again.
        let server = Server::start(Some(&db.url), &data_dir, &["--grpc-listen", "127.0.0.1:0"], "http").await;
        let rest_port = server.addr().port();
        let client = server.admin_client();
        let grpc = client.info().await.unwrap().grpc_address.expect("the server serves agents");
        let manifest_dir = data_dir.join("manifests");
        std::fs::create_dir_all(&manifest_dir).unwrap();
        std::fs::write(manifest_dir.join("pods.yaml"), manifests(pods)).unwrap();
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let fixture = Fixture {
            lab_dir: data_dir.join("lab"),
            url: server.url.clone(),
            server: Some(server),
            rest_port,
            grpc,
            data_dir,
            name,
            client,
            db,
        };
        // What kube-manager writes as the pods are scheduled, before their sandboxes are
        // wired: the cluster's pod network, a project per namespace, a port per pod.
        fixture.create("projects", json!({"name": POD_NETWORK_PROJECT})).await;
        fixture
            .create(
                "virtual-networks",
                json!({"name": "pods", "project": POD_NETWORK_PROJECT, "shared": true, "node_blocks": {},
                       "subnets": [{"cidr": "10.64.0.0/10"}, {"cidr": "fd71::/56"}]}),
            )
            .await;
        let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.namespace).collect();
        for ns in namespaces {
            fixture.create("projects", json!({"name": format!("k8s-{ns}"), "labels": {"ns": ns}})).await;
        }
        for pod in pods {
            let project = format!("k8s-{}", pod.namespace);
            fixture.create("ports", port_json(pod.name, &project, pod.node, pod.addresses, &pod.labels)).await;
        }
        let out = fixture.weft(&["lab", "up", "--manifests", manifest_dir.to_str().unwrap(), "--wait", "30s"]);
        assert!(out.status.success(), "weft lab up: {}{}", String::from_utf8_lossy(&out.stderr), fixture.logs());
        fixture.converge().await;
        fixture
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the controller is running")
    }

    /// Stops `weft server` (the controller with it); agents keep enforcing.
    pub fn stop_controller(&mut self) {
        let server = self.server.take().expect("the controller is running");
        assert!(server.stop().success(), "weft server stopped uncleanly");
    }

    /// Starts `weft server` again on the same database, data dir and addresses.
    pub async fn start_controller(&mut self) {
        let extra = ["--grpc-listen", self.grpc.as_str()];
        self.server = Some(Server::start_on(self.rest_port, Some(&self.db.url), &self.data_dir, &extra, "http").await);
    }

    pub fn weft(&self, args: &[&str]) -> Output {
        Command::new(WEFT)
            .args(args)
            .args(["--name", &self.name, "--lab-dir", self.lab_dir.to_str().unwrap(), "--data-dir"])
            .arg(&self.data_dir)
            .env("WEFT_SERVER", &self.url)
            .env_remove("WEFT_TOKEN")
            // The agents `lab up` starts log every apply, for a failing test to show.
            .env("WEFT_LOG", "info,weft_agent=debug")
            .output()
            .unwrap()
    }

    pub fn lab(&self, args: &[&str]) {
        let out = self.weft(&[&["lab"], args].concat());
        assert!(out.status.success(), "weft lab {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub async fn create(&self, collection: &str, body: Value) -> i64 {
        let kind = match collection {
            "projects" => weft_model::Kind::Project,
            "ports" => weft_model::Kind::Port,
            "virtual-networks" => weft_model::Kind::VirtualNetwork,
            "cluster-policies" => weft_model::Kind::ClusterPolicy,
            _ => weft_model::Kind::SecurityGroup,
        };
        let resource = weft_model::Resource::from_json(kind, body).unwrap();
        let created = match resource {
            weft_model::Resource::Project(p) => self.client.create(&p).await.map(|p| p.revision),
            weft_model::Resource::Port(p) => self.client.create(&p).await.map(|p| p.revision),
            weft_model::Resource::SecurityGroup(g) => self.client.create(&g).await.map(|g| g.revision),
            weft_model::Resource::VirtualNetwork(n) => self.client.create(&n).await.map(|n| n.revision),
            weft_model::Resource::ClusterPolicy(p) => self.client.create(&p).await.map(|p| p.revision),
        };
        created.unwrap().unwrap_or_default()
    }

    pub async fn patch_group(&self, key: &str, patch: Value) {
        let key = weft_client::Key::parse(weft_model::Kind::SecurityGroup, key);
        self.client.patch::<weft_model::SecurityGroup>(&key, &patch, None).await.unwrap();
    }

    pub async fn delete_group(&self, project: &str, name: &str) {
        let key = weft_client::Key::parse(weft_model::Kind::SecurityGroup, &format!("{project}/{name}"));
        self.client.delete(weft_model::Kind::SecurityGroup, &key, false).await.unwrap();
    }

    /// Waits until every node has applied the current revision (`weft wait`).
    pub async fn converge(&self) {
        let revision = self.client.info().await.unwrap().revision;
        let out = self.server().weft(&["wait", "--revision", &revision.to_string(), "--timeout", "60s"]);
        assert!(out.status.success(), "weft wait {revision}: {}{}", String::from_utf8_lossy(&out.stdout), self.logs());
    }

    /// Waits until every node has applied the current revision, also when some refuse part
    /// of it (`weft wait` fails then), and returns what the server says of it.
    pub async fn applied(&self) -> weft_client::Realization {
        let revision = self.client.info().await.unwrap().revision;
        let what = format!("revision {revision} applied");
        weft_testkit::eventually(&what, std::time::Duration::from_secs(60), async || {
            let realization = self.client.realization(revision).await.unwrap();
            if realization.complete { Ok(realization) } else { Err(format!("{realization:?}{}", self.logs())) }
        })
        .await
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.lab_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("agent-") {
                out.push_str(&format!("--- {name}\n{}", std::fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        out
    }

    pub fn probe(&self, protocol: &str, port: Option<u16>, ipv6: bool) -> weft_lab::Matrix {
        let mut args = vec!["lab", "probe", "--protocol", protocol, "-o", "json"];
        let port = port.map(|p| p.to_string());
        if let Some(p) = &port {
            args.extend(["--port", p]);
        }
        if ipv6 {
            args.push("--ipv6");
        }
        let out = self.weft(&args);
        assert!(out.status.success(), "weft lab probe: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The same matrix as the compiler's explain computes it from what the store holds.
    pub async fn explained(
        &self,
        protocol: &str,
        port: Option<u16>,
        ipv6: bool,
        endpoints: &[String],
    ) -> BTreeSet<(String, String)> {
        let store = weft_store::Store::connect(&self.db.url, 2).await.unwrap();
        let compiler = weft_testkit::compiler(&store).await;
        let ports = self.client.list_all::<weft_model::Port>(&Default::default()).await.unwrap();
        let endpoint = |e: &str| -> (weft_compiler::Endpoint, IpAddr) {
            if e == "outside" {
                let a = weft_lab::Lab::outside_address(ipv6);
                return (weft_compiler::Endpoint::Address(a), a);
            }
            let p = ports.iter().find(|p| format!("{}/{}", p.project, p.name) == e).unwrap();
            let address = p.ips.iter().copied().find(|a| a.is_ipv6() == ipv6).unwrap();
            (weft_compiler::Endpoint::Port(p.id.unwrap()), address)
        };
        let (number, icmp) = match (protocol, ipv6) {
            ("tcp", _) => (6, None),
            ("udp", _) => (17, None),
            (_, false) => (1, Some((8, 0))),
            (_, true) => (58, Some((128, 0))),
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

    /// Probes IPv4 with real packets and checks the result against explain; returns the matrix.
    pub async fn agrees(&self, protocol: &str, port: Option<u16>) -> weft_lab::Matrix {
        self.agrees_in(false, protocol, port).await
    }

    pub async fn agrees_in(&self, ipv6: bool, protocol: &str, port: Option<u16>) -> weft_lab::Matrix {
        let measured = self.probe(protocol, port, ipv6);
        let explained = self.explained(protocol, port, ipv6, &measured.endpoints).await;
        let got: BTreeSet<(String, String)> = measured.allowed.iter().cloned().collect();
        assert_eq!(
            got,
            explained,
            "{protocol}/{port:?} ipv6={ipv6}: real packets (left) and explain (right) differ\n{}",
            measured.table()
        );
        // The same matrix as `weft reach` answers it, among the lab's endpoints.
        let outside = weft_lab::Lab::outside_address(ipv6).to_string();
        let port_text = port.map(|p| p.to_string());
        let mut args = vec!["reach", "--protocol", protocol, "--outside", &outside, "-o", "json"];
        args.extend(port_text.iter().flat_map(|p| ["--port", p.as_str()]));
        if ipv6 {
            args.extend(["--family", "ipv6"]);
        }
        let out = self.server().weft(&args);
        assert!(out.status.success(), "weft reach: {}", String::from_utf8_lossy(&out.stderr));
        let reach: weft_lab::Matrix = serde_json::from_slice(&out.stdout).unwrap();
        let ours = |(from, to): &(String, String)| measured.endpoints.contains(from) && measured.endpoints.contains(to);
        let reached: BTreeSet<(String, String)> = reach.allowed.into_iter().filter(ours).collect();
        assert_eq!(got, reached, "{protocol}/{port:?} ipv6={ipv6}: real packets (left) and weft reach (right) differ");
        measured
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("wl-{}-n-{node}", self.name)
    }

    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("wl-{}-p-{namespace}-{pod}", self.name)
    }

    /// Runs a command inside one of the lab's namespaces.
    pub fn run_in(&self, netns: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", netns]).args(args).output().unwrap()
    }

    /// What the node's agent serves at /metrics.
    pub async fn agent_metrics(&self, node: &str) -> String {
        let lab = weft_lab::Lab::open(&self.lab_dir).unwrap();
        let addr = lab.node(node).and_then(|n| n.metrics).expect("the agent serves metrics");
        super::http_get(addr, "/metrics").await
    }

    pub fn nft(&self, node: &str, args: &[&str]) -> String {
        let out = self.run_in(&self.node_netns(node), &[&["nft"], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A process left running inside a pod, whose output lines the test watches.
    pub fn watch(&self, namespace: &str, pod: &str, args: &[&str], reading: Reading) -> Watch {
        Watch::spawn(&self.pod_netns(namespace, pod), args[0], &args[1..], reading).unwrap()
    }

    /// The pids of the lab's agents and listeners, as `lab.json` records them.
    pub fn processes(&self) -> Vec<u32> {
        let lab = weft_lab::Lab::open(&self.lab_dir).unwrap();
        let state = lab.state;
        state
            .nodes
            .iter()
            .filter_map(|n| n.agent_pid)
            .chain(state.pods.iter().filter_map(|p| p.server_pid))
            .chain(state.outside_server_pid)
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the lab's agents said:\n{}", self.logs());
        }
        // Also when a test fails halfway: nothing of the lab stays behind.
        if self.lab_dir.join("lab.json").exists() {
            let _ = self.weft(&["lab", "down"]);
        }
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The project of the cluster's pod network, as kube-manager names it.
pub const POD_NETWORK_PROJECT: &str = "cluster.default";

/// A pod's port on the cluster's pod network, at the addresses it asks for.
pub fn port_json(name: &str, project: &str, node: &str, addresses: &[&str], labels: &Value) -> Value {
    json!({
        "name": name, "project": project, "node": node, "ips": addresses, "labels": labels, "security_groups": [],
        "network": format!("{POD_NETWORK_PROJECT}/pods"),
        "named_ports": {"http": {"protocol": "tcp", "port": 80}, "alt": {"protocol": "tcp", "port": 81},
                        "dns": {"protocol": "udp", "port": 53}},
    })
}
