//! `weft bench packets`: what weft's datapath costs real packets (issue 21, DESIGN.md §10).
//!
//! Two pods on two nodes, each a network namespace of the bench's own: the nodes joined by a
//! veth pair and routing each other's pod, the pods wired as weft-cni wires them
//! ([`weft_agent::link::wire`]). A C-speed client in one pod and acceptor in the other
//! (blocking sockets, a system call per step, no runtime): new TCP connections a second, each
//! closed by the client with RST (as load generators close them: no TIME_WAIT caps the rate),
//! and the bulk throughput of one connection. Four datapaths, each measured in every run, the
//! runs interleaved so that what drifts on the machine falls on all of them alike:
//!
//! * (a) no table at all: no conntrack in the nodes' namespaces;
//! * (b) conntrack only: one `ct state established,related accept` rule, the floor of any
//!   stateful filter;
//! * (c) weft's table for the 5,000-rule span of `weft bench datapath` (the server's node) with
//!   the two pods in it, the server's ingress allowing the client by a rule, kept by a real
//!   `weft agent` per node with flow capture off (`--no-flow-capture`);
//! * (d) the same with flow capture on: conntrack accounting, the agent reading conntrack's
//!   events and NFLOG and attributing and counting each connection in its windows.
//!
//! The agents run with their span saved and no controller (what they would send they count
//! and drop): the cost measured is the node's. Their memory is read after each run.
//!
//! Then, with (d), a paced flood (10,000 new connections a second for 10 s by default): the
//! connections the client made against the new connections each node's agent heard (its
//! `weft_agent_connections_total`); what is missing is the loss, counted exactly. And the
//! agents' memory after it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;
use weft_agent::nft::{self, Batch, NftDatapath, Ruleset};
use weft_agent::{Datapath, Saved, StateDir};
use weft_compiler::{Change, Compiler, NodeSpan};
use weft_model::{Port, SecurityGroup};

use crate::datapath::{NODE, Netns, heavy_node, run};
use crate::{BenchError, other};

#[derive(Debug, Clone)]
pub struct PacketsConfig {
    /// Runs of each datapath (interleaved).
    pub runs: usize,
    /// How long one measurement lasts.
    pub seconds: f64,
    /// The flood's new connections a second, and how long it lasts.
    pub flood_rate: u32,
    pub flood_seconds: u32,
    /// The span of (c) and (d): local ports and rules of the server's node.
    pub ports: usize,
    pub rules: usize,
    /// The weft binary, started as the agents and as the server.
    pub binary: std::path::PathBuf,
    /// A PostgreSQL server for the server's scratch database; none: the server's private one.
    pub database_url: Option<String>,
    /// New connections timed into the flow log.
    pub follows: usize,
}

/// The four datapaths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapaths {
    NoTable,
    ConntrackOnly,
    Weft,
    WeftWithCapture,
}

impl Datapaths {
    const ALL: [Datapaths; 4] =
        [Datapaths::NoTable, Datapaths::ConntrackOnly, Datapaths::Weft, Datapaths::WeftWithCapture];

    fn name(self) -> &'static str {
        match self {
            Datapaths::NoTable => "(a) no table",
            Datapaths::ConntrackOnly => "(b) conntrack only",
            Datapaths::Weft => "(c) weft, 5,000-rule span",
            Datapaths::WeftWithCapture => "(d) weft + flow capture",
        }
    }
}

/// One datapath's measurements, a figure per run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub connections_per_second: Vec<f64>,
    pub gbit_per_second: Vec<f64>,
    /// The server's node's agent's RSS after the run, MiB (agents of (c) and (d) only).
    pub agent_rss_mib: Vec<f64>,
    /// Both agents' CPU time per new connection while the client connected, µs.
    pub agent_cpu_us_per_connection: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[derive(Debug)]
pub struct FloodReport {
    pub rate: u32,
    pub seconds: u32,
    /// Connections the client made (each answered by the server).
    pub made: u64,
    /// How fast it went, as made / time taken.
    pub achieved_per_second: f64,
    /// Of those, the new connections the server's node heard, and the client's node.
    pub heard_server_node: u64,
    pub heard_client_node: u64,
    /// Times the kernel said it dropped events (a socket buffer full), on either node.
    pub overruns: u64,
    /// The agents' memory after it (RSS, peak), MiB: the client's node's, the server's.
    pub rss_mib: [(f64, f64); 2],
}

#[derive(Debug)]
pub struct PacketsReport {
    pub config: PacketsConfig,
    pub kernel_rules: usize,
    pub figures: Vec<(Datapaths, Figures)>,
    pub flood: FloodReport,
    /// From a new connection's first packet to its flow in `GET /v1/flows?watch=true`, each
    /// time, with a real server and the two agents reporting to it.
    pub to_flow_log: Vec<Duration>,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 21);
const CONNECT_PORT: u16 = 5201;
const BULK_PORT: u16 = 5202;
const PROJECT: &str = "k8s-bench";
/// The client's node (the server's is the heavy node of `weft bench datapath`).
const CLIENT_NODE: &str = "node-1";

/// The two nodes and the two pods.
struct Lab {
    nodes: [Netns; 2],
    pods: [Netns; 2],
}

impl Lab {
    fn node(&self, i: usize) -> &str {
        &self.nodes[i].0
    }
}

/// Index of the client's node and pod (0) and the server's (1).
const C: usize = 0;
const S: usize = 1;

fn ip(netns: &str, args: &[&str]) -> Result<(), BenchError> {
    run(std::process::Command::new("ip").arg("-n").arg(netns).args(args))
}

fn build_lab() -> Result<Lab, BenchError> {
    let lab = Lab {
        nodes: [Netns::create("pk-n1")?, Netns::create("pk-n0")?],
        pods: [Netns::create("pk-client")?, Netns::create("pk-server")?],
    };
    let (n_c, n_s) = (lab.node(C).to_string(), lab.node(S).to_string());
    ip(&n_c, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &n_s])?;
    for (ns, address) in [(&n_c, "192.0.2.1/24"), (&n_s, "192.0.2.2/24")] {
        ip(ns, &["addr", "add", address, "dev", "eth0"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
        ip(ns, &["link", "set", "lo", "up"])?;
        weft_agent::netns::sysctl(Some(ns), "net.ipv4.ip_forward", "1").map_err(other)?;
    }
    for (i, (name, address)) in [("client", CLIENT), ("server", SERVER)].into_iter().enumerate() {
        let pod_path = std::path::PathBuf::from(format!("/run/netns/{}", lab.pods[i].0));
        let interface = weft_model::default_interface(PROJECT, name);
        weft_agent::link::wire(&weft_agent::link::PodWiring {
            node_netns: Some(lab.node(i)),
            pod_netns: &pod_path,
            host_interface: &interface,
            ifname: "eth0",
            addresses: &[IpAddr::V4(address)],
            mtu: None,
        })
        .map_err(other)?;
    }
    let to = |a: Ipv4Addr| format!("{a}/32");
    ip(&n_c, &["route", "add", &to(SERVER), "via", "192.0.2.2"])?;
    ip(&n_s, &["route", "add", &to(CLIENT), "via", "192.0.2.1"])?;
    Ok(lab)
}

/// The spans of the two nodes: the heavy node of `weft bench datapath` holds the server, a
/// node of the same cluster the client; the server's ingress is isolated and allows the client
/// on the connection and bulk ports by one rule.
fn spans(ports: usize, rules: usize) -> Result<[NodeSpan; 2], BenchError> {
    let mut changes = heavy_node(ports, rules, None);
    let mut project: weft_model::Project =
        serde_json::from_value(json!({"name": PROJECT})).map_err(|e| BenchError::Other(e.to_string()))?;
    project.id = Some(Uuid::from_u64_pair(11, 0));
    changes.push(Change::UpsertProject(project));
    for (n, (name, address, node)) in
        [("client", CLIENT, CLIENT_NODE), ("server", SERVER, NODE)].into_iter().enumerate()
    {
        changes.push(Change::UpsertPort(Port {
            id: Some(Uuid::from_u64_pair(12, n as u64)),
            name: name.into(),
            project: PROJECT.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            node: Some(node.into()),
            ips: vec![IpAddr::V4(address)],
            ..Default::default()
        }));
    }
    let mut group: SecurityGroup = serde_json::from_value(json!({
        "name": "server-in", "project": PROJECT, "selector": {"matchLabels": {"app": "server"}},
        "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [CONNECT_PORT, BULK_PORT],
                   "remote": {"type": "selector", "ports": {"matchLabels": {"app": "client"}}}}],
    }))
    .map_err(|e| BenchError::Other(e.to_string()))?;
    group.id = Some(Uuid::from_u64_pair(13, 0));
    group.rules[0].id = Some(Uuid::from_u64_pair(14, 0));
    changes.push(Change::UpsertGroup(group));
    let mut compiler = Compiler::new();
    compiler.load(1, changes);
    let spans = [compiler.span(CLIENT_NODE), compiler.span(NODE)];
    for (span, address) in spans.iter().zip([CLIENT, SERVER]) {
        if !span.ports.values().any(|p| p.addresses.contains(&IpAddr::V4(address))) {
            return Err(BenchError::Other(format!("the span has no port of {address}")));
        }
    }
    Ok(spans)
}

/// Puts a datapath in force in both nodes.
fn put_in_force(lab: &Lab, which: Datapaths, spans: &[NodeSpan; 2]) -> Result<(), BenchError> {
    for i in [C, S] {
        nft::delete_table(Some(lab.node(i))).map_err(other)?;
        match which {
            Datapaths::NoTable => {}
            Datapaths::ConntrackOnly => {
                let batch =
                    Batch::encode(&Ruleset::default().diff(&nft::conntrack_floor())).map_err(BenchError::Other)?;
                let mut socket = nft::Socket::open(Some(lab.node(i))).map_err(other)?;
                socket
                    .send(&batch)
                    .map_err(|e| BenchError::Other(format!("the kernel refused the table: {}", e.error)))?;
            }
            Datapaths::Weft | Datapaths::WeftWithCapture => {
                NftDatapath::new(Some(lab.node(i).to_string()))
                    .apply(&NodeSpan::default(), &spans[i], None)
                    .map_err(other)?;
            }
        }
        // Accounting is part of the capture, not of the others.
        let acct = if which == Datapaths::WeftWithCapture { "1" } else { "0" };
        weft_agent::netns::sysctl(Some(lab.node(i)), "net.netfilter.nf_conntrack_acct", acct).map_err(other)?;
    }
    Ok(())
}

/// A real `weft agent` enforcing a saved span in a node, capture on, with no controller.
struct Agent {
    child: std::process::Child,
    dir: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Agent {
    /// Starts `weft agent` for `node` in `netns`, capturing flows or not, its state directory
    /// (its own, removed with it) made ready by `prepare`, its log in `agent.log` beside it.
    fn spawn(
        binary: &std::path::Path,
        (node, netns): (&str, &str),
        controller: &str,
        capture: bool,
        prepare: impl FnOnce(&StateDir) -> std::io::Result<()>,
    ) -> Result<Agent, BenchError> {
        let dir = std::env::temp_dir().join(format!("weft-bench-packets-{node}-{}", std::process::id()));
        let state = StateDir::new(dir.join("state")).map_err(other)?;
        prepare(&state).map_err(other)?;
        let metrics = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(other)?;
        let mut command = std::process::Command::new(binary);
        command
            .args(["agent", "--node", node, "--controller", controller, "--datapath", "nftables", "--no-cni"])
            .args(["--netns", netns, "--metrics-listen", &metrics.to_string(), "--no-routes", "--no-masquerade"])
            .arg("--state-dir")
            .arg(state.path());
        if !capture {
            command.arg("--no-flow-capture");
        }
        let child = command
            .env("WEFT_LOG", "info")
            .env_remove("WEFT_NODE_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).map_err(other)?)
            .spawn()
            .map_err(other)?;
        Ok(Agent { child, dir, metrics })
    }

    /// An agent with `span` saved and no controller, once it enforces the span.
    fn start(
        binary: &std::path::Path,
        node: &str,
        netns: &str,
        span: &NodeSpan,
        capture: bool,
    ) -> Result<Agent, BenchError> {
        let mut agent = Agent::spawn(binary, (node, netns), "http://127.0.0.1:9", capture, |state| {
            state.save(&Saved { node: node.into(), revision: 1, span: span.clone() })?;
            state.save_credential("weftn_bench")
        })?;
        let log_path = agent.dir.join("agent.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("enforcing the saved span") && agent.metric("weft_agent_ports").is_some() {
                return Ok(agent);
            }
            if text.contains("cannot enforce")
                || Instant::now() > deadline
                || matches!(agent.child.try_wait(), Ok(Some(_)))
            {
                return Err(other(format!("the agent of {node} did not enforce its saved span: {text}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An agent of a controller (capture on), its span from the controller.
    fn connected(
        binary: &std::path::Path,
        node: &str,
        netns: &str,
        controller: &str,
        credential: &str,
    ) -> Result<Agent, BenchError> {
        Agent::spawn(binary, (node, netns), controller, true, |state| state.save_credential(credential))
    }

    /// A figure of the agent's metrics (a plain GET of /metrics).
    fn metric(&self, name: &str) -> Option<u64> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    fn rss_mib(&self) -> (f64, f64) {
        crate::rss_mib(Some(self.child.id()))
    }

    /// The CPU time all its threads have had, from the scheduler's statistics.
    fn cpu(&self) -> Duration {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).into_iter().flatten().flatten();
        let ns: u64 = tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .sum();
        Duration::from_nanos(ns)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_agents(
    binary: &std::path::Path,
    lab: &Lab,
    spans: &[NodeSpan; 2],
    capture: bool,
) -> Result<[Agent; 2], BenchError> {
    Ok([
        Agent::start(binary, CLIENT_NODE, lab.node(C), &spans[C], capture)?,
        Agent::start(binary, NODE, lab.node(S), &spans[S], capture)?,
    ])
}

/// Accepts and closes connections on the server until `stop`.
fn acceptor(pod: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        weft_agent::netns::run_in(Some(&pod), || {
            let listener = TcpListener::bind((SERVER, CONNECT_PORT))?;
            // A queue of 4,096 (the namespace's somaxconn) where std asks for 128: the client
            // outruns an acceptor the scheduler sets aside for a few milliseconds, and a full
            // queue drops SYNs, which cost the client a second each (its SYN retransmit).
            rustix::net::listen(&listener, 4096)?;
            while !stop.load(Ordering::Relaxed) {
                // A connection the client reset before it was taken is taken all the same.
                let _ = listener.accept();
            }
            Ok(())
        })
    })
}

/// Reads each bulk connection to its end; the bytes and the time it took, each.
fn bulk_server(
    pod: String,
    stop: Arc<AtomicBool>,
    results: std::sync::mpsc::Sender<(u64, Duration)>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        weft_agent::netns::run_in(Some(&pod), || {
            let listener = TcpListener::bind((SERVER, BULK_PORT))?;
            let mut buf = vec![0u8; 256 << 10];
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else { continue };
                let started = Instant::now();
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = results.send((total, started.elapsed()));
            }
            Ok(())
        })
    })
}

/// Closes a socket with RST: SO_LINGER on with a zero timeout.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    let linger = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
    drop(stream);
    linger.map_err(std::io::Error::from)
}

/// New connections from the client for `seconds`, or at `rate` a second for that long: how
/// many were made, and the time it took.
fn connect_loop(pod: &str, seconds: f64, rate: Option<u32>) -> Result<(u64, Duration), BenchError> {
    weft_agent::netns::run_in(Some(pod), || {
        let to = SocketAddr::from((SERVER, CONNECT_PORT));
        let started = Instant::now();
        let deadline = Duration::from_secs_f64(seconds);
        let mut made = 0u64;
        let total = rate.map(|r| (f64::from(r) * seconds) as u64);
        loop {
            if let (Some(rate), Some(total)) = (rate, total) {
                if made >= total {
                    break;
                }
                // Paced: the n-th connection not before n / rate.
                let due = Duration::from_secs_f64(made as f64 / f64::from(rate));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            } else if started.elapsed() >= deadline {
                break;
            }
            reset(TcpStream::connect(to)?)?;
            made += 1;
        }
        Ok((made, started.elapsed()))
    })
    .map_err(other)
}

/// One bulk connection from the client for `seconds`.
fn bulk(pod: &str, seconds: f64) -> Result<(), BenchError> {
    weft_agent::netns::run_in(Some(pod), || {
        let mut stream = TcpStream::connect((SERVER, BULK_PORT))?;
        let block = vec![0x5au8; 256 << 10];
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < seconds {
            stream.write_all(&block)?;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        // The server's end: it reads to the end, then closes.
        let mut rest = [0u8; 16];
        let _ = stream.read(&mut rest);
        Ok(())
    })
    .map_err(other)
}

pub fn run_bench(config: &PacketsConfig) -> Result<PacketsReport, BenchError> {
    let spans = spans(config.ports, config.rules)?;
    let lab = build_lab()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (results_tx, results) = std::sync::mpsc::channel();
    let servers = [
        acceptor(lab.pods[S].0.clone(), Arc::clone(&stop)),
        bulk_server(lab.pods[S].0.clone(), Arc::clone(&stop), results_tx),
    ];
    let outcome = measure(config, &lab, &spans, &results);
    stop.store(true, Ordering::Relaxed);
    // Wake the servers blocked in accept.
    let _ = weft_agent::netns::run_in(Some(&lab.pods[C].0), || {
        for port in [CONNECT_PORT, BULK_PORT] {
            let _ = TcpStream::connect_timeout(&SocketAddr::from((SERVER, port)), Duration::from_secs(1));
        }
        Ok(())
    });
    for s in servers {
        let _ = s.join();
    }
    outcome
}

fn measure(
    config: &PacketsConfig,
    lab: &Lab,
    spans: &[NodeSpan; 2],
    results: &std::sync::mpsc::Receiver<(u64, Duration)>,
) -> Result<PacketsReport, BenchError> {
    let client = lab.pods[C].0.clone();
    let mut figures: Vec<(Datapaths, Figures)> = Datapaths::ALL.iter().map(|d| (*d, Figures::default())).collect();
    for _ in 0..config.runs.max(1) {
        for (which, f) in figures.iter_mut() {
            put_in_force(lab, *which, spans)?;
            let agents = match which {
                Datapaths::Weft => Some(start_agents(&config.binary, lab, spans, false)?),
                Datapaths::WeftWithCapture => Some(start_agents(&config.binary, lab, spans, true)?),
                _ => None,
            };
            let cpu = |agents: &Option<[Agent; 2]>| agents.as_ref().map(|a| a[C].cpu() + a[S].cpu());
            let before = cpu(&agents);
            let (made, took) = connect_loop(&client, config.seconds, None)?;
            f.connections_per_second.push(made as f64 / took.as_secs_f64());
            if let (Some(before), Some(after)) = (before, cpu(&agents)) {
                f.agent_cpu_us_per_connection.push((after - before).as_secs_f64() * 1e6 / made.max(1) as f64);
            }
            bulk(&client, config.seconds)?;
            let (bytes, took) = results
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| BenchError::Other("the bulk server read nothing".into()))?;
            f.gbit_per_second.push(bytes as f64 * 8.0 / took.as_secs_f64() / 1e9);
            if let Some(agents) = agents {
                f.agent_rss_mib.push(agents[S].rss_mib().0);
            }
        }
    }
    put_in_force(lab, Datapaths::Weft, spans)?;
    let kernel_rules = nft::table_stats(Some(lab.node(S))).map_err(other)?.map_or(0, |t| t.rules);
    // The flood, with capture on.
    put_in_force(lab, Datapaths::WeftWithCapture, spans)?;
    let agents = start_agents(&config.binary, lab, spans, true)?;
    let heard = |a: &Agent| a.metric("weft_agent_connections_total").unwrap_or(0);
    let before = [heard(&agents[C]), heard(&agents[S])];
    let (made, took) = connect_loop(&client, f64::from(config.flood_seconds), Some(config.flood_rate))?;
    // Every event the kernel sent is read once the counts stop moving.
    let count = || [heard(&agents[C]) - before[C], heard(&agents[S]) - before[S]];
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(5) && last.0[S] < made {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let lost = |a: &Agent| a.metric("weft_agent_connection_events_lost_total").unwrap_or(0);
    let flood = FloodReport {
        rate: config.flood_rate,
        seconds: config.flood_seconds,
        made,
        achieved_per_second: made as f64 / took.as_secs_f64(),
        heard_server_node: last.0[S],
        heard_client_node: last.0[C],
        overruns: lost(&agents[C]) + lost(&agents[S]),
        rss_mib: [agents[C].rss_mib(), agents[S].rss_mib()],
    };
    drop(agents);
    nft::delete_table(Some(lab.node(C))).map_err(other)?;
    nft::delete_table(Some(lab.node(S))).map_err(other)?;
    let to_flow_log = match config.follows {
        0 => Vec::new(),
        _ => tokio::runtime::Handle::current().block_on(to_flow_log(config, lab))?,
    };
    Ok(PacketsReport { config: config.clone(), kernel_rules, figures, flood, to_flow_log })
}

/// A `weft server` the bench started (on a scratch database or its private PostgreSQL),
/// stopped and removed when dropped.
struct Server {
    child: std::process::Child,
    dir: std::path::PathBuf,
    database: Option<weft_store::admin::ScratchDatabase>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // TERM, so that it stops its private PostgreSQL.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = weft_store::embedded::remove_cluster(&self.dir.join("data"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With a real server and the two agents reporting to it: the time from each of `follows` new
/// connections to its flow in the flow log's watch.
async fn to_flow_log(config: &PacketsConfig, lab: &Lab) -> Result<Vec<Duration>, BenchError> {
    let dir = std::env::temp_dir().join(format!("weft-bench-packets-server-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).map_err(other)?;
    let database = match &config.database_url {
        Some(url) => Some(weft_store::admin::ScratchDatabase::create(url, "weft_bench_packets").await?),
        None => None,
    };
    let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(other);
    let (rest, grpc) = (free()?, free()?);
    let mut command = std::process::Command::new(&config.binary);
    command
        .args(["server", "--listen", &format!("127.0.0.1:{rest}"), "--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("DATABASE_URL")
        .env("WEFT_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).map_err(other)?);
    if let Some(db) = &database {
        command.args(["--database-url", &db.url]);
    }
    let child = command.spawn().map_err(other)?;
    let server = Server { child, dir: dir.clone(), database };
    let outcome = follow_connections_into_the_log(config, lab, &server, rest, grpc).await;
    let database = {
        let mut server = server;
        server.database.take()
    };
    if let Some(db) = database {
        db.drop_database().await;
    }
    outcome
}

async fn follow_connections_into_the_log(
    config: &PacketsConfig,
    lab: &Lab,
    server: &Server,
    rest: u16,
    grpc: u16,
) -> Result<Vec<Duration>, BenchError> {
    use futures::StreamExt;
    let url = format!("http://127.0.0.1:{rest}");
    let anonymous = weft_client::Client::new(&url, None, None)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while !anonymous.ready().await.unwrap_or(false) {
        if Instant::now() > deadline {
            return Err(other(format!(
                "weft server was not ready within 90 s (see {})",
                server.dir.join("server.log").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(server.dir.join("data/admin.token")).map_err(other)?;
    let c = weft_client::Client::new(&url, Some(token.trim().to_string()), None)?;
    c.create(&weft_model::Project { name: PROJECT.into(), ..Default::default() }).await?;
    for (name, address, node) in [("client", CLIENT, CLIENT_NODE), ("server", SERVER, NODE)] {
        let port: Port = serde_json::from_value(json!({"name": name, "project": PROJECT, "node": node,
            "ips": [address.to_string()], "labels": {"app": name}}))
        .map_err(other)?;
        c.create(&port).await?;
    }
    let group: SecurityGroup = serde_json::from_value(json!({
        "name": "server-in", "project": PROJECT, "selector": {"matchLabels": {"app": "server"}},
        "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [CONNECT_PORT],
                   "remote": {"type": "selector", "ports": {"matchLabels": {"app": "client"}}}}],
    }))
    .map_err(other)?;
    c.create(&group).await?;
    let revision = c.info().await?.revision;
    let mut agents = Vec::new();
    for (i, node) in [(C, CLIENT_NODE), (S, NODE)] {
        let created = c.create_node(node).await?;
        let credential = created["credential"].as_str().ok_or_else(|| other("no credential"))?.to_string();
        agents.push(Agent::connected(
            &config.binary,
            node,
            lab.node(i),
            &format!("http://127.0.0.1:{grpc}"),
            &credential,
        )?);
    }
    // Both agents enforce the revision: the client reaches the server.
    for agent in &agents {
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.metric("weft_agent_revision").unwrap_or(0) < revision as u64 {
            if Instant::now() > deadline {
                return Err(other("an agent did not apply the bench's revision within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let newest = c.flows(&[("limit", "1".to_string())]).await?.last().map_or(0, |f| f.id);
    let mut flows = Box::pin(c.watch_flows(&[("project", PROJECT.to_string())], newest).await?);
    let client = lab.pods[C].0.clone();
    let mut out = Vec::new();
    for _ in 0..config.follows {
        let started = Instant::now();
        let pod = client.clone();
        let port = tokio::task::spawn_blocking(move || {
            weft_agent::netns::run_in(Some(&pod), || {
                let stream = TcpStream::connect((SERVER, CONNECT_PORT))?;
                let port = stream.local_addr()?.port();
                reset(stream)?;
                Ok(port)
            })
        })
        .await
        .map_err(other)?
        .map_err(other)?;
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(flow) = flows.next().await {
                let flow = flow?;
                if flow.src_port == Some(port) && flow.dst_port == Some(CONNECT_PORT) {
                    return Ok::<_, BenchError>(());
                }
            }
            Err(other("the watch ended"))
        })
        .await;
        match found {
            Ok(Ok(())) => out.push(started.elapsed()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(other("a new connection was not in the flow log within 10 s")),
        }
    }
    Ok(out)
}

impl std::fmt::Display for PacketsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "weft bench packets: a client and an acceptor in two pods on two nodes (network namespaces), {} runs of {} s each, interleaved",
            c.runs, c.seconds
        )?;
        writeln!(
            f,
            "  (c) and (d): the server's node holds {} kernel rules ({} ports, {} rules in its span)",
            self.kernel_rules, c.ports, c.rules
        )?;
        let by = |d: Datapaths| self.figures.iter().find(|(w, _)| *w == d).map(|(_, f)| f.clone()).unwrap_or_default();
        let (a, b) = (by(Datapaths::NoTable), by(Datapaths::ConntrackOnly));
        let (conn_a, conn_b) = (median(&a.connections_per_second), median(&b.connections_per_second));
        let gbit_a = median(&a.gbit_per_second);
        writeln!(
            f,
            "  {:<28} {:>14} {:>9} {:>9}   {:>12} {:>9}",
            "datapath", "new conn/s", "x (a)", "x (b)", "Gbit/s", "x (a)"
        )?;
        for (which, fig) in &self.figures {
            let conn = median(&fig.connections_per_second);
            let gbit = median(&fig.gbit_per_second);
            writeln!(
                f,
                "  {:<28} {:>14.0} {:>9.2} {:>9.2}   {:>12.2} {:>9.2}",
                which.name(),
                conn,
                conn / conn_a.max(1e-9),
                conn / conn_b.max(1e-9),
                gbit,
                gbit / gbit_a.max(1e-9)
            )?;
        }
        writeln!(f, "  (medians; every run's figures:)")?;
        for (which, fig) in &self.figures {
            let list =
                |v: &[f64], digits: usize| v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(" ");
            writeln!(
                f,
                "    {:<28} conn/s {}; Gbit/s {}",
                which.name(),
                list(&fig.connections_per_second, 0),
                list(&fig.gbit_per_second, 2)
            )?;
        }
        writeln!(f, "  goals: (c) >= 0.95x (b) new conn/s and >= 0.95x (a) Gbit/s; (d) >= 0.90x (b) new conn/s")?;
        let (cpu_c, cpu_d) = (
            median(&by(Datapaths::Weft).agent_cpu_us_per_connection),
            median(&by(Datapaths::WeftWithCapture).agent_cpu_us_per_connection),
        );
        writeln!(
            f,
            "  the two agents' CPU per new connection: {cpu_c:.2} µs with capture off (c), {cpu_d:.2} µs with it on (d)"
        )?;
        let (rss_c, rss_d) =
            (median(&by(Datapaths::Weft).agent_rss_mib), median(&by(Datapaths::WeftWithCapture).agent_rss_mib));
        writeln!(
            f,
            "  the server's node's agent after a run: {rss_c:.1} MiB RSS with capture off (c), {rss_d:.1} MiB with it on (d), {:.2}x",
            rss_d / rss_c.max(1e-9)
        )?;
        let fl = &self.flood;
        writeln!(
            f,
            "  flood with capture on: {} new connections asked at {}/s for {} s (each closed with RST), {} made at {:.0}/s",
            fl.rate as u64 * u64::from(fl.seconds),
            fl.rate,
            fl.seconds,
            fl.made,
            fl.achieved_per_second
        )?;
        writeln!(
            f,
            "    new connections the agents heard: the server's node {} (lost {}), the client's node {} (lost {}); kernel overruns {}",
            fl.heard_server_node,
            fl.made - fl.heard_server_node.min(fl.made),
            fl.heard_client_node,
            fl.made - fl.heard_client_node.min(fl.made),
            fl.overruns
        )?;
        let mut follows = self.to_flow_log.clone();
        follows.sort();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        if follows.is_empty() {
            writeln!(f, "  a new connection into `weft flows -f`: not measured (--follows 0)")?;
        } else {
            writeln!(
                f,
                "  a new connection into `weft flows -f` (a real server, the two agents reporting to it): {:.0} ms median, {:.0} ms at most of {}   (target <= 2 s)",
                ms(follows.get(follows.len() / 2)),
                ms(follows.last()),
                follows.len()
            )?;
        }
        writeln!(
            f,
            "  agent memory with capture on, after the flood: the server's node {:.1} MiB RSS ({:.1} peak; a 5,000-rule span of {} ports), the client's node {:.1} MiB ({:.1} peak)   (target <= 40 MiB)",
            fl.rss_mib[1].0, fl.rss_mib[1].1, c.ports, fl.rss_mib[0].0, fl.rss_mib[0].1
        )
    }
}
