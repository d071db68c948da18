//! A cluster for kube-manager's tests: the fake Kubernetes API server (weft-testkit) served
//! over HTTP, a real `weft server` on a fresh database, and `weft kube-manager` processes
//! pointed at the fake by a kubeconfig.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_kube::{Desired, Options};
use weft_model::Port;
use weft_testkit::kube_api::FakeKube;

use super::{ChildGuard, Server, WEFT, temp_dir};

pub struct KubeCluster {
    pub fake: FakeKube,
    pub server: Server,
    pub client: weft_client::Client,
    pub kubeconfig: PathBuf,
    _api: tokio::task::JoinHandle<()>,
    _db: weft_testkit::TestDatabase,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.server.data_dir);
    }
}

pub fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

pub fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).unwrap()
}

impl KubeCluster {
    pub async fn new(tag: &str) -> KubeCluster {
        let db = weft_testkit::fresh_database().await;
        let data_dir = temp_dir(tag);
        let server = Server::start(Some(&db.url), &data_dir, &[], "http").await;
        let client = server.admin_client();
        let fake = FakeKube::new();
        fake.set_bookmark_interval(Duration::from_millis(100));
        let (addr, api): (SocketAddr, _) = fake.serve().await.unwrap();
        let kubeconfig = data_dir.join("kubeconfig");
        std::fs::write(&kubeconfig, FakeKube::kubeconfig(addr)).unwrap();
        KubeCluster { fake, server, client, kubeconfig, _api: api, _db: db }
    }

    /// Starts `weft kube-manager` against the fake, logging to `km-<identity>.log`.
    pub fn manager(&self, identity: &str) -> ChildGuard {
        self.manager_with(identity, &[])
    }

    pub fn manager_with(&self, identity: &str, extra: &[&str]) -> ChildGuard {
        let log = std::fs::File::create(self.log_path(identity)).unwrap();
        ChildGuard(
            Command::new(WEFT)
                .args(["kube-manager", "--kubeconfig"])
                .arg(&self.kubeconfig)
                .args(["--identity", identity, "--lease-duration", "2s"])
                .args(extra)
                .arg("--data-dir")
                .arg(&self.server.data_dir)
                .env("WEFT_SERVER", &self.server.url)
                .env("WEFT_LOG", "info")
                .env_remove("WEFT_TOKEN")
                .env_remove("KUBECONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn log_path(&self, identity: &str) -> PathBuf {
        self.server.data_dir.join(format!("km-{identity}.log"))
    }

    pub fn log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.log_path(identity)).unwrap_or_default()
    }

    /// Whether the config service holds exactly the translation of what the fake holds.
    pub async fn converged(&self) -> bool {
        self.converged_with(&Options::default()).await
    }

    /// As [`KubeCluster::converged`], for a kube-manager run with options `o`.
    pub async fn converged_with(&self, o: &Options) -> bool {
        let mut desired = Desired::of(
            &self.fake.list::<Namespace>(),
            &self.fake.list::<Pod>(),
            &self.fake.list::<NetworkPolicy>(),
            o,
        );
        desired.cluster_policies = Some(Default::default());
        for cnp in self.fake.list::<weft_kube::cnp::ClusterNetworkPolicy>() {
            desired.add_cluster_policy(&cnp, o);
        }
        let current = weft_kube::reconcile::list(&self.client).await.unwrap();
        weft_kube::plan(&desired, &current, o).is_empty()
    }

    pub async fn until(&self, what: &str, logs: &[&str], mut done: impl AsyncFnMut() -> bool) {
        weft_testkit::eventually(what, Duration::from_secs(30), async || {
            if done().await { Ok(()) } else { Err(Logs(self, logs)) }
        })
        .await;
    }

    pub async fn until_converged(&self, what: &str, logs: &[&str]) {
        self.until(what, logs, async || self.converged().await).await;
    }

    pub async fn port_names(&self) -> Vec<String> {
        let ports = self.client.list_all::<Port>(&Default::default()).await.unwrap();
        let mut names: Vec<String> = ports.into_iter().map(|p| format!("{}/{}", p.project, p.name)).collect();
        names.sort();
        names
    }

    /// What `weft reach -o json` answers for one protocol and port (no port for icmp): the
    /// endpoints, and every pair it allows, by weft port name.
    pub fn reach(&self, protocol: &str, port: u16) -> (Vec<String>, std::collections::BTreeSet<(String, String)>) {
        let port = port.to_string();
        let mut args = vec!["reach", "--protocol", protocol, "-o", "json"];
        if protocol != "icmp" {
            args.extend(["--port", &port]);
        }
        let out = self.server.weft(&args);
        assert!(out.status.success(), "weft reach: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let name = |e: &serde_json::Value| e.as_str().unwrap().to_string();
        let endpoints = v["endpoints"].as_array().unwrap().iter().map(name).collect();
        (endpoints, v["allowed"].as_array().unwrap().iter().map(|p| (name(&p[0]), name(&p[1]))).collect())
    }

    pub fn holder(&self) -> Option<String> {
        self.fake.list::<Lease>().first().and_then(|l| l.spec.as_ref()?.holder_identity.clone())
    }
}

/// Some processes' logs, read when shown (a test that fails shows them).
struct Logs<'a>(&'a KubeCluster, &'a [&'a str]);

impl std::fmt::Display for Logs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for id in self.1 {
            writeln!(f, "--- {id}:\n{}", self.0.log(id))?;
        }
        Ok(())
    }
}
