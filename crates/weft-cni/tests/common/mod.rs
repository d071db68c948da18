//! What the plugin's tests share: a node namespace with a real agent on nftables and its CNI
//! server, fed its span by a controller that speaks the agent protocol and that the test
//! steers; the plugin binary exec'd as a runtime execs it; TCP probes between namespaces.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of these; they fail loudly

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;
use weft_agent::cni::{Cni, CniConfig};
use weft_agent::{Config, NftDatapath, Progress, StateDir, netns};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_testkit::Netns;

pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn port(n: u64, name: &str, ip: &str, app: &str, uid: &str) -> Change {
    let mut p: weft_model::Port = serde_json::from_value(json!({
        "name": name, "project": "k8s-default", "node": "node-1", "ips": [ip], "labels": {"app": app},
        "security_groups": [], "instance": uid,
    }))
    .unwrap();
    p.id = Some(Uuid::from_u64_pair(2, n));
    Change::UpsertPort(p)
}

/// Pod `db` (10.32.0.10) is isolated for ingress and allows only app=web on TCP 5432; `web`
/// (10.32.0.11) and `other` (10.32.0.12) are open. Ports named in `present` are in the span.
pub fn span(present: &[&str], db_uid: &str) -> NodeSpan {
    let mut project: weft_model::Project = serde_json::from_value(json!({"name": "k8s-default"})).unwrap();
    project.id = Some(Uuid::from_u64_pair(1, 1));
    let mut group: weft_model::SecurityGroup = serde_json::from_value(json!({
        "name": "db", "project": "k8s-default", "selector": {"matchLabels": {"app": "db"}}, "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432],
                   "remote": {"type": "selector", "ports": {"matchLabels": {"app": "web"}}}}]}))
    .unwrap();
    group.id = Some(Uuid::from_u64_pair(3, 1));
    group.rules[0].id = Some(Uuid::from_u64_pair(4, 1));
    let mut changes = vec![Change::UpsertProject(project), Change::UpsertGroup(group)];
    for (n, name, ip, app, uid) in [
        (1, "db", "10.32.0.10", "db", db_uid),
        (2, "web", "10.32.0.11", "web", "uid-web"),
        (3, "other", "10.32.0.12", "other", "uid-other"),
    ] {
        if present.contains(&name) {
            changes.push(port(n, name, ip, app, uid));
        }
    }
    let mut compiler = Compiler::new();
    compiler.load(1, changes);
    compiler.span("node-1")
}

/// A node namespace with an agent and its CNI server, fed by a controller the test steers.
pub struct Node {
    pub netns: Netns,
    pub dir: PathBuf,
    pub socket: PathBuf,
    spans: weft_testkit::span_controller::Spans,
    pub progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
}

impl Node {
    pub async fn start(present: &[&str]) -> Node {
        let netns = Netns::new("cni");
        netns.ip(&["link", "set", "lo", "up"]);
        netns::sysctl(Some(netns.name()), "net.ipv4.ip_forward", "1").unwrap();
        let dir = std::env::temp_dir().join(format!("weft-cni-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (addr, spans) = weft_testkit::span_controller::serve(span(present, "uid-db")).await;
        let config = Config {
            server: format!("http://{addr}"),
            node: "node-1".into(),
            state_dir: StateDir::new(dir.join("state")).unwrap(),
            credential: Some("test".into()),
            join_token: None,
            ca: None,
            backoff: (Duration::from_millis(20), Duration::from_millis(200)),
            metrics: None,
            underlay: Vec::new(),
            connection: Default::default(),
        };
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(weft_agent::run(config, NftDatapath::new(Some(netns.name().to_string())), progress_tx, stopped));
        let socket = dir.join("cni.sock");
        let node = Node { netns, dir, socket, spans, progress, stop };
        node.serve_cni();
        let mut progress = node.progress.clone();
        tokio::time::timeout(PATIENCE, progress.wait_for(|p| p.synced)).await.unwrap().unwrap();
        weft_testkit::eventually("the CNI socket", PATIENCE, async || {
            if node.socket.exists() { Ok(()) } else { Err("not yet") }
        })
        .await;
        node
    }

    pub fn serve_cni(&self) {
        let config = CniConfig {
            socket: self.socket.clone(),
            node_netns: Some(self.netns.name().to_string()),
            records: self.dir.join("state/cni"),
            project_prefix: "k8s-".into(),
            wait: Duration::from_secs(2),
        };
        let cni = Cni::new(config, self.progress.clone()).unwrap();
        let mut stopped = self.stop.subscribe();
        tokio::spawn(cni.serve(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }

    pub fn set_span(&self, present: &[&str], db_uid: &str) {
        let revision = self.spans.borrow().0 + 1;
        self.spans.send_replace((revision, span(present, db_uid)));
    }

    pub fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",
                              "socket": self.socket, "timeoutSeconds": 2});
        conf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        conf
    }

    pub fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("state/cni"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits until pod `pod`'s interface is gone from the node and the records left are
    /// `records`: a DEL answers before the kernel has removed the pair.
    pub async fn until_gone(&self, pod: &str, records: &[&str]) {
        weft_testkit::eventually("the pod's interface and record gone", PATIENCE, async || {
            let left = self.records();
            if !self.host_link(pod) && left == records { Ok(()) } else { Err(format!("records {left:?}")) }
        })
        .await;
    }

    /// The node side of a pod's interface, if the node has it.
    pub fn host_link(&self, pod: &str) -> bool {
        weft_agent::link::host_side(Some(self.netns.name()), &weft_model::default_interface("k8s-default", pod))
            .unwrap()
            .is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        let _ = Command::new("ip")
            .args(["netns", "exec", self.netns.name(), "nft", "delete", "table", "inet", "weft"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One call of the plugin binary: its exit status and what it printed.
pub fn plugin(env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    exec_plugin(Path::new(env!("CARGO_BIN_EXE_weft-cni")), None, env, conf)
}

/// One call of a CNI plugin, in namespace `netns` (a runtime's own) or here, with only the
/// environment `env` (and a PATH, for plugins that run programs): its exit status and what it
/// printed.
pub fn exec_plugin(program: &Path, netns: Option<&str>, env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mut child =
        netns::spawn(netns, command.envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped())).unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(conf).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).unwrap() };
    (out.status.success(), printed)
}

pub fn call(
    command: &str,
    container: &str,
    sandbox: Option<&Path>,
    pod: &str,
    uid: &str,
    conf: &Value,
) -> (bool, Value) {
    let env = runtime_env(command, container, sandbox, pod, uid);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    plugin(&env, conf)
}

/// The environment a runtime gives a plugin for one call about a pod of namespace `default`.
pub fn runtime_env(
    command: &str,
    container: &str,
    sandbox: Option<&Path>,
    pod: &str,
    uid: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", sandbox.map(|p| p.display().to_string()).unwrap_or_default()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_UID={uid};K8S_POD_NAME={pod};K8S_POD_NAMESPACE=default")),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]
}

/// Whether a TCP connection from namespace `from` to `to:port` is answered; `to`'s namespace
/// listens for it (both by their `ip netns` names).
pub fn connects(from: &str, to: &str, address: &str, port: u16) -> bool {
    let target: SocketAddr = format!("{address}:{port}").parse().unwrap();
    reaches(from, target, to, target)
}

/// Whether a TCP connection from namespace `from` to `target` is answered by a listener on
/// `listen` in namespace `to` (another address and port where something translates them).
pub fn reaches(from: &str, target: SocketAddr, to: &str, listen: SocketAddr) -> bool {
    let listener = netns::run_in(Some(to), || TcpListener::bind(listen)).unwrap();
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"ok");
        }
    });
    let answered = netns::run_in(Some(from), || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(700))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"ok")
    })
    .unwrap_or(false);
    if !answered {
        // Unblock the listener's accept so its thread ends.
        let _ = netns::run_in(Some(to), || TcpStream::connect_timeout(&listen, Duration::from_millis(200)));
    }
    server.join().unwrap();
    answered
}
