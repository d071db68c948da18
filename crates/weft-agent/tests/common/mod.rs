//! What the agent's tests share: an agent run in the test's runtime, its configuration and
//! a state dir of its own.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of these; they fail loudly

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use weft_agent::{Config, Datapath, Progress, StateDir};

pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn config(addr: SocketAddr, dir: &std::path::Path, join_token: Option<String>) -> Config {
    Config {
        server: format!("http://{addr}"),
        node: "node-1".into(),
        state_dir: StateDir::new(dir).unwrap(),
        credential: None,
        join_token,
        ca: None,
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        metrics: None,
        underlay: Vec::new(),
        connection: Default::default(),
    }
}

pub struct Running {
    pub progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), weft_agent::AgentError>>,
}

pub fn spawn(config: Config, datapath: impl Datapath + 'static) -> Running {
    let (progress_tx, progress) = watch::channel(Progress::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(weft_agent::run(config, datapath, progress_tx, stop_rx));
    Running { progress, stop, task }
}

impl Running {
    pub async fn until(&mut self, f: impl Fn(&Progress) -> bool) -> Progress {
        tokio::time::timeout(PATIENCE, self.progress.wait_for(|p| f(p))).await.unwrap().unwrap().clone()
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

/// The agent's state directory for a test, removed when the test is done (also when it fails).
pub fn temp_dir() -> weft_testkit::TempDir {
    weft_testkit::TempDir::new("weft-agent-test")
}

/// A pod of `project` on `node`: a namespace of its own, wired to the node as the agent wires
/// one (its port's derived interface, its address).
pub fn pod(node: &weft_testkit::Netns, project: &str, name: &str, address: &str) -> weft_testkit::Netns {
    let pod = weft_testkit::Netns::new(name);
    let (addresses, interface, path) =
        ([address.parse().unwrap()], weft_model::default_interface(project, name), pod.path());
    let wiring = weft_agent::link::PodWiring {
        node_netns: Some(node.name()),
        pod_netns: &path,
        host_interface: &interface,
        ifname: "eth0",
        addresses: &addresses,
        mtu: None,
    };
    weft_agent::link::wire(&wiring).unwrap();
    pod
}
