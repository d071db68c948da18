//! `weft bench cni` (root): pods wired through the `weft-cni` binary, exec'd as a runtime
//! execs it, against a real agent on nftables in a node namespace of the bench's own, fed a
//! span of isolated pods by a controller the bench serves. On a node already holding `pods`
//! pods: ADD's time, ADD to the pod answering an allowed peer (under its policy), DEL's
//! time, and `concurrent` ADDs at once.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;
use weft_agent::cni::{Cni, CniConfig};
use weft_agent::{Config, NftDatapath, Progress, StateDir, netns};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_testkit::Netns;

use crate::{BenchError, other};

const PROJECT: &str = "k8s-bench";
const NODE: &str = "bench-node";
/// The port every pod serves and the policy allows from the client.
const SERVED: u16 = 8080;

#[derive(Debug, Clone)]
pub struct CniBenchConfig {
    /// Pods the node holds before anything is timed.
    pub pods: usize,
    /// ADDs and DELs timed one at a time.
    pub runs: usize,
    /// Pods added at once.
    pub concurrent: usize,
    /// The `weft-cni` binary.
    pub plugin: PathBuf,
}

/// Percentiles of repeated timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Spread {
        if samples.is_empty() {
            return Spread::default();
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Spread { p50: at(0.5), p99: at(0.99), max: samples[samples.len() - 1] }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(f, "p50 {:6.1} ms   p99 {:6.1} ms   max {:6.1} ms", ms(self.p50), ms(self.p99), ms(self.max))
    }
}

#[derive(Debug)]
pub struct CniReport {
    pub config: CniBenchConfig,
    pub add: Spread,
    pub reachable: Spread,
    pub del: Spread,
    /// DEL to the node side of the pod's interface gone: the kernel removes a veth pair after
    /// an RCU grace period, which DEL does not wait for.
    pub gone: Spread,
    pub concurrent_wall: Duration,
    pub concurrent_failed: usize,
    pub concurrent_distinct: usize,
}

impl std::fmt::Display for CniReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(f, "weft bench cni: a node holding {} pods; {} ADDs and DELs timed one at a time", c.pods, c.runs)?;
        writeln!(f, "  ADD (weft-cni exec'd to exit)             {}", self.add)?;
        writeln!(f, "  ADD to an allowed peer's first answer     {}", self.reachable)?;
        writeln!(f, "  DEL                                       {}", self.del)?;
        writeln!(f, "  DEL to the interface gone from the node   {}", self.gone)?;
        writeln!(
            f,
            "  {} ADDs at once: {:.0} ms in all, {} failed, {} distinct addresses",
            c.concurrent,
            self.concurrent_wall.as_secs_f64() * 1e3,
            self.concurrent_failed,
            self.concurrent_distinct
        )
    }
}

fn address(i: usize) -> IpAddr {
    IpAddr::from([10, 34, (i / 250) as u8, (i % 250 + 1) as u8])
}

fn pod_name(i: usize) -> String {
    format!("pod-{i}")
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, BenchError> {
    serde_json::from_value(v).map_err(other)
}

/// The client (allowed in) and `n` pods isolated for ingress, allowing the client on SERVED.
fn span(n: usize) -> Result<NodeSpan, BenchError> {
    let mut project: weft_model::Project = decode(json!({"name": PROJECT}))?;
    project.id = Some(Uuid::from_u64_pair(1, 1));
    let mut group: weft_model::SecurityGroup = decode(json!({
        "name": "servers", "project": PROJECT, "selector": {"matchLabels": {"app": "server"}}, "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [SERVED],
                   "remote": {"type": "selector", "ports": {"matchLabels": {"app": "client"}}}}]}))?;
    group.id = Some(Uuid::from_u64_pair(3, 1));
    group.rules[0].id = Some(Uuid::from_u64_pair(4, 1));
    let mut changes = vec![Change::UpsertProject(project), Change::UpsertGroup(group)];
    let port = |id: u64, name: String, ip: IpAddr, app: &str| -> Result<Change, BenchError> {
        let mut p: weft_model::Port = decode(json!({"name": name, "project": PROJECT, "node": NODE, "ips": [ip],
            "labels": {"app": app}, "security_groups": [], "instance": format!("uid-{name}")}))?;
        p.id = Some(Uuid::from_u64_pair(2, id));
        Ok(Change::UpsertPort(p))
    };
    changes.push(port(0, "client".into(), IpAddr::from([10, 34, 255, 1]), "client")?);
    for i in 0..n {
        changes.push(port(i as u64 + 1, pod_name(i), address(i), "server")?);
    }
    let mut compiler = Compiler::new();
    compiler.load(1, changes);
    Ok(compiler.span(NODE))
}

/// One call of the plugin; whether it succeeded and what it printed.
fn exec(
    plugin: &Path,
    command: &str,
    pod: &str,
    sandbox: Option<&Path>,
    conf: &[u8],
) -> Result<(bool, Vec<u8>), BenchError> {
    let netns = sandbox.map(|p| p.display().to_string()).unwrap_or_default();
    let args = format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod};IgnoreUnknown=1");
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("c-{pod}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Other(format!("cannot run {}: {e}", plugin.display())))?;
    child.stdin.take().ok_or_else(|| other("no stdin"))?.write_all(conf).map_err(other)?;
    let out = child.wait_with_output().map_err(other)?;
    Ok((out.status.success(), out.stdout))
}

/// Whether `from` reaches `target` (a listener in `to`), within a second.
fn answered(from: &str, to: &str, target: SocketAddr) -> Result<bool, BenchError> {
    let listener = netns::run_in(Some(to), || TcpListener::bind(target)).map_err(other)?;
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"ok");
        }
    });
    let ok = netns::run_in(Some(from), || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"ok")
    })
    .unwrap_or(false);
    if !ok {
        let _ = netns::run_in(Some(to), || TcpStream::connect_timeout(&target, Duration::from_millis(200)));
    }
    let _ = server.join();
    Ok(ok)
}

pub async fn run(config: CniBenchConfig) -> Result<CniReport, BenchError> {
    let node = Netns::new("cnib");
    node.ip(&["link", "set", "lo", "up"]);
    netns::sysctl(Some(node.name()), "net.ipv4.ip_forward", "1").map_err(other)?;
    let dir = std::env::temp_dir().join(format!("weft-bench-cni-{}", Uuid::new_v4().simple()));
    let result = measure(&config, &node, &dir).await;
    let _ = weft_agent::nft::delete_table(Some(node.name()));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(config: &CniBenchConfig, node: &Netns, dir: &Path) -> Result<CniReport, BenchError> {
    let total = config.pods + config.runs + config.concurrent;
    let (addr, _spans) = weft_testkit::span_controller::serve(span(total)?).await;
    let agent_config = Config {
        server: format!("http://{addr}"),
        node: NODE.into(),
        state_dir: StateDir::new(dir.join("state")).map_err(other)?,
        credential: Some("bench".into()),
        join_token: None,
        ca: None,
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        metrics: None,
        underlay: Vec::new(),
        connection: Default::default(),
    };
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(weft_agent::run(agent_config, NftDatapath::new(Some(node.name().to_string())), progress_tx, stopped));
    let socket = dir.join("cni.sock");
    let cni = Cni::new(
        CniConfig {
            socket: socket.clone(),
            node_netns: Some(node.name().to_string()),
            records: dir.join("state/cni"),
            project_prefix: "k8s-".into(),
            wait: Duration::from_secs(10),
        },
        progress.clone(),
    )
    .map_err(other)?;
    let mut cni_stopped = stop.subscribe();
    tokio::spawn(cni.serve(async move {
        let _ = cni_stopped.wait_for(|s| *s).await;
    }));
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.synced))
        .await
        .map_err(|_| other("the agent did not sync"))?
        .map_err(other)?;
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let conf = serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",
                                          "socket": socket, "timeoutSeconds": 10}))
    .map_err(other)?;
    let plugin = config.plugin.clone();
    let config = config.clone();
    let node_name = node.name().to_string();
    let report =
        tokio::task::spawn_blocking(move || timed(&config, &plugin, &conf, &node_name)).await.map_err(other)?;
    stop.send_replace(true);
    report
}

fn timed(config: &CniBenchConfig, plugin: &Path, conf: &[u8], node: &str) -> Result<CniReport, BenchError> {
    let mut sandboxes = Vec::new();
    let add = |pod: &str, sandbox: &Netns| -> Result<(), BenchError> {
        let (ok, printed) = exec(plugin, "ADD", pod, Some(&sandbox.path()), conf)?;
        if ok { Ok(()) } else { Err(BenchError::Other(format!("ADD {pod}: {}", String::from_utf8_lossy(&printed)))) }
    };
    let client = Netns::new("cnic");
    add("client", &client)?;
    for i in 0..config.pods {
        let sandbox = Netns::new("cnip");
        add(&pod_name(i), &sandbox)?;
        sandboxes.push(sandbox);
    }
    let (mut adds, mut reachable, mut dels, mut gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..config.runs {
        let i = config.pods + run;
        let (pod, sandbox) = (pod_name(i), Netns::new("cnir"));
        let started = Instant::now();
        add(&pod, &sandbox)?;
        adds.push(started.elapsed());
        let target = SocketAddr::new(address(i), SERVED);
        if !answered(client.name(), sandbox.name(), target)? {
            return Err(BenchError::Other(format!("{pod} did not answer the client after ADD")));
        }
        reachable.push(started.elapsed());
        let started = Instant::now();
        let (ok, printed) = exec(plugin, "DEL", &pod, Some(&sandbox.path()), conf)?;
        dels.push(started.elapsed());
        if !ok {
            return Err(BenchError::Other(format!("DEL {pod}: {}", String::from_utf8_lossy(&printed))));
        }
        let interface = weft_model::default_interface(PROJECT, &pod);
        while weft_agent::link::host_side(Some(node), &interface).map_err(other)?.is_some() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::Other(format!("{pod}'s interface still there 10 s after DEL")));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        gone.push(started.elapsed());
    }
    // At once: each its own thread, all started together.
    let first = config.pods + config.runs;
    let batch: Vec<(String, Netns)> =
        (first..first + config.concurrent).map(|i| (pod_name(i), Netns::new("cnix"))).collect();
    let started = Instant::now();
    let outcomes: Vec<(bool, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .iter()
            .map(|(pod, sandbox)| {
                let path = sandbox.path();
                scope.spawn(move || exec(plugin, "ADD", pod, Some(&path), conf).unwrap_or((false, Vec::new())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or((false, Vec::new()))).collect()
    });
    let concurrent_wall = started.elapsed();
    let mut distinct = std::collections::BTreeSet::new();
    let mut failed = 0;
    for (ok, printed) in &outcomes {
        let address = serde_json::from_slice::<serde_json::Value>(printed)
            .ok()
            .and_then(|v| v["ips"][0]["address"].as_str().map(str::to_string));
        match (ok, address) {
            (true, Some(a)) => {
                distinct.insert(a);
            }
            _ => failed += 1,
        }
    }
    Ok(CniReport {
        config: config.clone(),
        add: Spread::of(adds),
        reachable: Spread::of(reachable),
        del: Spread::of(dels),
        gone: Spread::of(gone),
        concurrent_wall,
        concurrent_failed: failed,
        concurrent_distinct: distinct.len(),
    })
}
