//! The `weft-cni` binary exec'd as a container runtime execs it (CNI_* environment, the
//! configuration on stdin, a namespace per sandbox), against a real agent on an nftables
//! datapath in a node namespace, fed its span by a controller that speaks the agent protocol
//! (root; reported ignored elsewhere). What the runtime sees, what the kernel holds, and which
//! packets pass.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;
use weft_agent::cni::{Cni, CniConfig};
use weft_agent::{Config, NftDatapath, Progress, StateDir, netns};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_proto::server::agent_server::{Agent, AgentServer};
use weft_proto::{Encoded, v1};
use weft_testkit::Netns;

const PATIENCE: Duration = Duration::from_secs(20);

/// A controller that sends the node's whole span as a snapshot each time the test changes it.
struct Controller(watch::Receiver<(i64, NodeSpan)>);

#[tonic::async_trait]
impl Agent for Controller {
    type SyncStream = ReceiverStream<Result<Encoded, Status>>;

    async fn sync(&self, request: Request<Streaming<v1::AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        inbound.message().await?;
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let (tx, rx) = mpsc::channel(16);
        let mut spans = self.0.clone();
        tokio::spawn(async move {
            loop {
                let (revision, span) = spans.borrow_and_update().clone();
                for m in weft_proto::snapshot(revision, &span, 1 << 20) {
                    if tx.send(Ok(Encoded::of(&m))).await.is_err() {
                        return;
                    }
                }
                if spans.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(&self, _: Request<v1::JoinRequest>) -> Result<Response<v1::JoinResponse>, Status> {
        Err(Status::unimplemented("no joins here"))
    }
}

fn port(n: u64, name: &str, ip: &str, app: &str, uid: &str) -> Change {
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
fn span(present: &[&str], db_uid: &str) -> NodeSpan {
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
struct Node {
    netns: Netns,
    dir: PathBuf,
    socket: PathBuf,
    spans: watch::Sender<(i64, NodeSpan)>,
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
}

impl Node {
    async fn start(present: &[&str]) -> Node {
        let netns = Netns::new("cni");
        netns.ip(&["link", "set", "lo", "up"]);
        netns::sysctl(Some(netns.name()), "net.ipv4.ip_forward", "1").unwrap();
        let dir = std::env::temp_dir().join(format!("weft-cni-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (spans, spans_rx) = watch::channel((1, span(present, "uid-db")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(Controller(spans_rx)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let config = Config {
            server: format!("http://{addr}"),
            node: "node-1".into(),
            state_dir: StateDir::new(dir.join("state")).unwrap(),
            credential: Some("test".into()),
            join_token: None,
            ca: None,
            backoff: (Duration::from_millis(20), Duration::from_millis(200)),
            metrics: None,
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

    fn serve_cni(&self) {
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

    fn set_span(&self, present: &[&str], db_uid: &str) {
        let revision = self.spans.borrow().0 + 1;
        self.spans.send_replace((revision, span(present, db_uid)));
    }

    fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",
                              "socket": self.socket, "timeoutSeconds": 2});
        conf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        conf
    }

    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("state/cni"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The node side of a pod's interface, if the node has it.
    fn host_link(&self, pod: &str) -> bool {
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
fn plugin(env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(conf).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).unwrap() };
    (out.status.success(), printed)
}

fn call(command: &str, container: &str, sandbox: Option<&Path>, pod: &str, uid: &str, conf: &Value) -> (bool, Value) {
    let netns = sandbox.map(|p| p.display().to_string()).unwrap_or_default();
    let args = format!("IgnoreUnknown=1;K8S_POD_UID={uid};K8S_POD_NAME={pod};K8S_POD_NAMESPACE=default");
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args.as_str()),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    plugin(&env, conf)
}

/// Whether a TCP connection from namespace `from` to `to:port` is answered; `to`'s namespace
/// listens for it.
fn connects(from: &Netns, to: &Netns, address: &str, port: u16) -> bool {
    let target: SocketAddr = format!("{address}:{port}").parse().unwrap();
    let listener = netns::run_in(Some(to.name()), || TcpListener::bind(target)).unwrap();
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"ok");
        }
    });
    let answered = netns::run_in(Some(from.name()), || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(700))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"ok")
    })
    .unwrap_or(false);
    if !answered {
        // Unblock the listener's accept so its thread ends.
        let _ = netns::run_in(Some(to.name()), || TcpStream::connect_timeout(&target, Duration::from_millis(200)));
    }
    server.join().unwrap();
    answered
}

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
    assert!(!connects(&other, &db, "10.32.0.10", 5432), "other → db is denied");
    assert!(connects(&web, &db, "10.32.0.10", 5432), "web → db:5432 is allowed");
    assert!(!connects(&web, &db, "10.32.0.10", 5433), "web → db:5433 is denied");
    assert!(connects(&db, &other, "10.32.0.12", 8080), "db → other: other is open");

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
    assert!(!node.host_link("db"));
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
