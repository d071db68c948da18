//! A cluster on one machine, made of network namespaces (DESIGN.md §8): a namespace per node,
//! hanging off a bridge in an underlay namespace; a namespace per pod, its sandbox, which the
//! node's agent wires through the CNI plugin as a kubelet would have it wired (`weft-cni` ADD:
//! a veth into the node, named as DESIGN.md §7 derives it); an `outside` namespace for
//! traffic from beyond the cluster. The agents route each other's pods from the controller's
//! route table and masquerade pod traffic leaving the cluster; the lab routes only the
//! outside's way to the pods. Nothing here touches the host's interfaces, routes or ruleset.
//!
//! ```text
//!   pod ns: eth0 10.47.0.11/32 ─veth─ weftXXXXXXXXXXX ┐ node ns (forwarding, nft tables inet weft, weft-nat)
//!           default via 169.254.1.1 (weft-cni)         └ eth0 192.0.2.N/24 ─veth─ br0 in the underlay ns
//!   outside ns: eth0 192.0.2.254/24 ─veth─ br0            routes to every pod via its node
//! ```
//!
//! A lab records what it created in its directory (`lab.json`) as it goes, so `down` removes
//! exactly that, also after a failure halfway.

pub mod cni;
pub mod dns;
pub mod icmp;
pub mod manifests;
pub mod probe;
pub mod serve;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use weft_agent::netns;

pub use manifests::{ListenPort, Pod, read_manifests};
pub use probe::{Matrix, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Invalid(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// The CNI plugin answered with an error (its code and message, as the spec has them).
    #[error("{what} failed: code {code}: {msg}")]
    Plugin { what: String, code: u64, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, LabError>;

/// The underlay's IPv4 prefix: node N is .N+1, `outside` is .254 (TEST-NET-1, never routed).
const UNDERLAY_V4: [u8; 3] = [192, 0, 2];
const UNDERLAY_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd77, 0x77, 0, 0, 0, 0, 0, 0);
const OUTSIDE_HOST: u8 = 254;

/// What a lab is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// A short name: namespaces are `wl-<name>-...`.
    pub name: String,
    /// What a namespace's name is prefixed with to name its project.
    pub project_prefix: String,
    pub nodes: Vec<String>,
    pub pods: Vec<Pod>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub address: IpAddr,
    pub address6: IpAddr,
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// Where the node's agent serves its metrics (a loopback port picked at start).
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub pod: Pod,
    pub netns: String,
    pub interface: String,
    #[serde(default)]
    pub server_pid: Option<u32>,
    /// The sandbox id the CNI plugin wired it under, once it has.
    #[serde(default)]
    pub container: Option<String>,
}

/// What a lab has created, kept in `<dir>/lab.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// Every namespace created, in order.
    pub namespaces: Vec<String>,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub outside: Option<String>,
    #[serde(default)]
    pub outside_server_pid: Option<u32>,
    /// The controller's gRPC address the agents use.
    #[serde(default)]
    pub controller: Option<String>,
    /// What a namespace's name is prefixed with to name its project.
    #[serde(default = "default_project_prefix")]
    pub project_prefix: String,
}

fn default_project_prefix() -> String {
    "k8s-".into()
}

/// A lab on this machine.
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    pub state: State,
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command { command: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(netns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    netns::sysctl(Some(netns), key, value)
        .map_err(|e| LabError::Command { command: format!("sysctl {key}={value} in {netns}"), detail: e.to_string() })
}

/// Namespace names this lab uses: `wl-<lab>-<what>`.
fn ns_name(lab: &str, what: &str) -> String {
    format!("wl-{lab}-{what}")
}

impl Lab {
    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state).map_err(|e| LabError::Invalid(e.to_string()))?)?;
        std::fs::rename(tmp, self.dir.join("lab.json"))?;
        Ok(())
    }

    /// Opens the lab recorded in `dir`.
    pub fn open(dir: &Path) -> Result<Lab> {
        let text = std::fs::read(dir.join("lab.json"))
            .map_err(|e| LabError::Invalid(format!("no lab in {}: {e}", dir.display())))?;
        let state = serde_json::from_slice(&text).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        Ok(Lab { dir: dir.to_path_buf(), state })
    }

    fn add_namespace(&mut self, name: String) -> Result<String> {
        if netns::exists(&name) {
            return Err(LabError::Invalid(format!(
                "network namespace {name} exists already: another lab of that name is up (weft lab down)"
            )));
        }
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.state.namespaces.push(name.clone());
        self.save()?;
        // No duplicate address detection on links made from now on: a link-local address
        // stays tentative for a second or two while it runs, and IPv6 between pods waits that
        // long for its first neighbour. Addresses here are assigned, never duplicated.
        for scope in ["all", "default"] {
            sysctl(&name, &format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
        }
        ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Builds the namespaces and links of `spec`, the pods' sandboxes among them, and starts
    /// a listener in every pod (`binary lab serve`; it listens before the pod has an address,
    /// as a container may). The pods are wired later ([`Lab::wire_pods`]), once their nodes'
    /// agents run. On failure, what was made so far is removed.
    pub fn create(spec: &Spec, dir: &Path, binary: &Path) -> Result<Lab> {
        validate(spec)?;
        if dir.join("lab.json").exists() {
            return Err(LabError::Invalid(format!("{} holds a lab already: weft lab down first", dir.display())));
        }
        let state = State { name: spec.name.clone(), project_prefix: spec.project_prefix.clone(), ..State::default() };
        let mut lab = Lab { dir: dir.to_path_buf(), state };
        match lab.build(spec, binary) {
            Ok(()) => Ok(lab),
            Err(e) => {
                lab.down();
                Err(e)
            }
        }
    }

    fn build(&mut self, spec: &Spec, binary: &Path) -> Result<()> {
        let underlay = self.add_namespace(ns_name(&spec.name, "ul"))?;
        ip(&underlay, &["link", "add", "br0", "type", "bridge"])?;
        ip(&underlay, &["link", "set", "br0", "up"])?;
        for (i, node) in spec.nodes.iter().enumerate() {
            let netns = self.add_namespace(ns_name(&spec.name, &format!("n-{node}")))?;
            let host = u8::try_from(i + 1).map_err(|_| LabError::Invalid("at most 250 nodes".into()))?;
            let (v4, v6) = self.attach(&underlay, &netns, &format!("n{i}"), host)?;
            sysctl(&netns, "net.ipv4.ip_forward", "1")?;
            sysctl(&netns, "net.ipv6.conf.all.forwarding", "1")?;
            self.state.nodes.push(NodeState {
                name: node.clone(),
                netns,
                address: v4,
                address6: v6,
                agent_pid: None,
                metrics: None,
            });
            self.save()?;
        }
        let outside = self.add_namespace(ns_name(&spec.name, "outside"))?;
        self.attach(&underlay, &outside, "out", OUTSIDE_HOST)?;
        self.state.outside = Some(outside.clone());
        self.save()?;
        // The sandboxes: empty namespaces, as a runtime makes them before the CNI plugin runs.
        for pod in &spec.pods {
            let netns = self.add_namespace(ns_name(&spec.name, &format!("p-{}-{}", pod.namespace, pod.name)))?;
            self.state.pods.push(PodState {
                pod: pod.clone(),
                netns,
                interface: weft_model::default_interface(&pod.project, &pod.name),
                server_pid: None,
                container: None,
            });
            self.save()?;
        }
        // Listeners: each pod on its declared ports (a pod declaring UDP 53 is the lab's DNS,
        // as kube-dns is a cluster's); the outside on every port a pod declares.
        let dns = ListenPort { protocol: Protocol::Udp, port: 53 };
        let listeners: Vec<(String, Vec<String>, bool)> = self
            .state
            .pods
            .iter()
            .map(|p| (p.netns.clone(), p.pod.ports.iter().map(|x| x.to_string()).collect(), p.pod.ports.contains(&dns)))
            .collect();
        for (i, (netns, listen, answers_dns)) in listeners.into_iter().enumerate() {
            let log = self.dir.join(format!("serve-{netns}.log"));
            let pid = serve::spawn(binary, &netns, &listen, answers_dns.then_some(self.dir.as_path()), &log)?;
            self.state.pods[i].server_pid = Some(pid);
            self.save()?;
        }
        let mut all: Vec<String> = spec.pods.iter().flat_map(|p| p.ports.iter().map(|x| x.to_string())).collect();
        all.sort();
        all.dedup();
        let pid = serve::spawn(binary, &outside, &all, None, &self.dir.join("serve-outside.log"))?;
        self.state.outside_server_pid = Some(pid);
        self.save()?;
        Ok(())
    }

    /// Connects `netns` to the underlay bridge as host `host`.
    fn attach(&self, underlay: &str, netns: &str, bridge_port: &str, host: u8) -> Result<(IpAddr, IpAddr)> {
        ip(netns, &["link", "add", "eth0", "type", "veth", "peer", "name", bridge_port, "netns", underlay])?;
        ip(underlay, &["link", "set", bridge_port, "master", "br0"])?;
        ip(underlay, &["link", "set", bridge_port, "up"])?;
        let v4 = IpAddr::from([UNDERLAY_V4[0], UNDERLAY_V4[1], UNDERLAY_V4[2], host]);
        let v6: IpAddr =
            format!("{UNDERLAY_V6}{host:x}").parse().map_err(|_| LabError::Invalid("underlay address".into()))?;
        ip(netns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(netns, &["-6", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        ip(netns, &["link", "set", "eth0", "up"])?;
        Ok((v4, v6))
    }

    /// Wires every pod not wired yet as a kubelet has its runtime do it: `plugin` ADD for the
    /// pod's sandbox, with its node agent's socket, all pods at once (each ADD waits up to
    /// `timeout` for its pod's port to reach the node). Then routes the outside to each pod
    /// through its node, and waits until every node routes every other node's pods (the
    /// agents install the controller's route table, read every 2 s). The first failure is the
    /// error, after every call has answered.
    pub fn wire_pods(&mut self, plugin: &Path, timeout: std::time::Duration) -> Result<()> {
        let sockets: BTreeMap<String, PathBuf> =
            self.state.nodes.iter().map(|n| (n.name.clone(), self.agent_state_dir(&n.name).join("cni.sock"))).collect();
        let unwired: Vec<usize> =
            (0..self.state.pods.len()).filter(|i| self.state.pods[*i].container.is_none()).collect();
        let answers: Vec<(usize, String, Result<Vec<IpAddr>>)> = std::thread::scope(|scope| {
            let calls: Vec<_> = unwired
                .iter()
                .map(|&i| {
                    let p = &self.state.pods[i];
                    let sockets = &sockets;
                    scope.spawn(move || {
                        let container = format!("lab-{}", p.netns);
                        let netns = PathBuf::from("/run/netns").join(&p.netns);
                        let attachment = cni::Attachment {
                            plugin,
                            socket: &sockets[&p.pod.node],
                            container: &container,
                            netns: &netns,
                            pod: &p.pod,
                            timeout,
                        };
                        // Error 11 is "try again later" (the agent starting, the port not
                        // there yet): a kubelet tries again, and so does the lab, until the
                        // wait is over.
                        let deadline = std::time::Instant::now() + timeout;
                        loop {
                            let added = attachment.add();
                            match added {
                                Err(LabError::Plugin { code: 11, .. }) if std::time::Instant::now() < deadline => {
                                    std::thread::sleep(std::time::Duration::from_millis(100))
                                }
                                added => return (i, container, added),
                            }
                        }
                    })
                })
                .collect();
            calls.into_iter().filter_map(|c| c.join().ok()).collect()
        });
        let mut failure = None;
        for (i, container, added) in answers {
            match added {
                Ok(addresses) => {
                    self.state.pods[i].pod.addresses = addresses;
                    self.state.pods[i].container = Some(container);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        self.save()?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.route_outside_to_pods()?;
        self.until_nodes_route_pods(timeout)
    }

    /// The outside is the network beyond the cluster: it reaches each pod through its node.
    fn route_outside_to_pods(&self) -> Result<()> {
        let outside = self.state.outside.clone().ok_or_else(|| LabError::Invalid("no outside namespace".into()))?;
        for p in &self.state.pods {
            let node = self.node(&p.pod.node).ok_or_else(|| LabError::Invalid(format!("no node {}", p.pod.node)))?;
            for a in &p.pod.addresses {
                let (len, family, via) =
                    if a.is_ipv6() { (128, "-6", node.address6) } else { (32, "-4", node.address) };
                ip(&outside, &[family, "route", "replace", &format!("{a}/{len}"), "via", &via.to_string()])?;
            }
        }
        Ok(())
    }

    /// Waits until every node's route to every other node's pod goes through that node.
    fn until_nodes_route_pods(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        for n in &self.state.nodes {
            for p in self.state.pods.iter().filter(|p| p.pod.node != n.name) {
                let Some(home) = self.node(&p.pod.node) else { continue };
                for a in &p.pod.addresses {
                    let via = if a.is_ipv6() { home.address6 } else { home.address };
                    loop {
                        let route = ip(&n.netns, &["route", "get", &a.to_string()]).unwrap_or_default();
                        if route.contains(&format!("via {via} ")) {
                            break;
                        }
                        if std::time::Instant::now() > deadline {
                            return Err(LabError::Invalid(format!(
                                "node {} has no route to pod {} ({a}) through node {} after {timeout:?}: {}; is \
                                 the pod on a network split into node blocks (kube-manager --pod-network-cidr)?",
                                n.name,
                                p.pod.endpoint(),
                                home.name,
                                route.trim()
                            )));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn pod(&self, name: &str) -> Option<&PodState> {
        self.state.pods.iter().find(|p| p.pod.name == name || p.pod.endpoint() == name)
    }

    /// Runs a command inside a pod's namespace.
    pub fn exec(&self, pod: &str, argv: &[String]) -> Result<std::process::ExitStatus> {
        let netns = if pod == "outside" {
            self.state.outside.clone().ok_or_else(|| LabError::Invalid("no outside namespace".into()))?
        } else {
            self.pod(pod)
                .map(|p| p.netns.clone())
                .ok_or_else(|| LabError::Invalid(format!("no pod {pod} in this lab")))?
        };
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Invalid("no command given".into()))?;
        Ok(netns::status(Some(&netns), Command::new(program).args(args))?)
    }

    /// Where the `outside` namespace is on the underlay.
    pub fn outside_address(ipv6: bool) -> IpAddr {
        host_address(OUTSIDE_HOST, ipv6)
    }

    fn node_mut(&mut self, node: &str) -> Result<&mut NodeState> {
        self.state
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node} in this lab")))
    }

    /// Where a node's agent keeps its credential and its last applied span.
    pub fn agent_state_dir(&self, node: &str) -> PathBuf {
        self.dir.join("agents").join(node)
    }

    /// Gives a node's agent its credential (in its state dir, mode 0600: not in an argument
    /// list or environment that other users can read) and the controller to use.
    pub fn register_agent(&mut self, node: &str, controller: &str, credential: &str) -> Result<()> {
        self.node_mut(node)?;
        weft_agent::StateDir::new(self.agent_state_dir(node))?.save_credential(credential)?;
        self.state.controller = Some(controller.to_string());
        self.save()
    }

    /// Starts a node's nftables agent (`binary agent ... --netns <node>`), its output
    /// appended to `agent-<node>.log`. An agent that is running already is left alone.
    pub fn start_agent(&mut self, node: &str, binary: &Path) -> Result<u32> {
        let controller = self
            .state
            .controller
            .clone()
            .ok_or_else(|| LabError::Invalid("no controller recorded for this lab".into()))?;
        let state_dir = self.agent_state_dir(node);
        let project_prefix = self.state.project_prefix.clone();
        let log_path = self.dir.join(format!("agent-{node}.log"));
        let n = self.node_mut(node)?;
        if let Some(pid) = n.agent_pid.filter(|p| is_ours(*p)) {
            return Ok(pid);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
        // Picked once and kept: a restarted agent picking again could take a port that is
        // free only for the moment (a controller's, while it is down).
        let metrics = match n.metrics {
            Some(addr) => addr,
            None => std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr())?,
        };
        let mut cmd = Command::new(binary);
        cmd.args(["agent", "--controller", &controller, "--node", node, "--datapath", "nftables", "--netns", &n.netns])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--state-dir")
            .arg(&state_dir)
            // Each node's agent serves its CNI calls in the lab's directory, never the host's
            // /run/weft.
            .arg("--cni-socket")
            .arg(state_dir.join("cni.sock"))
            // The lab's nodes have no default route: each is told its underlay addresses.
            .arg("--node-address")
            .arg(format!("{},{}", n.address, n.address6))
            // Pods of a namespace become projects with the lab's prefix, in CNI calls too.
            .args(["--project-prefix", &project_prefix])
            .env_remove("WEFT_NODE_TOKEN")
            .env_remove("WEFT_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
            .spawn()
            .map_err(|e| LabError::Command { command: format!("{} agent", binary.display()), detail: e.to_string() })?;
        n.agent_pid = Some(child.id());
        n.metrics = Some(metrics);
        self.save()?;
        Ok(child.id())
    }

    /// Stops a node's agent. Its table stays in force (the agent fails static).
    pub fn stop_agent(&mut self, node: &str) -> Result<()> {
        let n = self.node_mut(node)?;
        if let Some(pid) = n.agent_pid.take() {
            stop(pid);
        }
        self.save()
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.state.nodes.iter().find(|n| n.name == name)
    }

    /// Stops every process the lab started and removes every namespace it created (their
    /// links, routes and nft tables go with them), then its record. Keeps going past errors.
    pub fn down(&mut self) {
        let pids = self
            .state
            .nodes
            .iter()
            .filter_map(|n| n.agent_pid)
            .chain(self.state.pods.iter().filter_map(|p| p.server_pid))
            .chain(self.state.outside_server_pid);
        for pid in pids {
            stop(pid);
        }
        for name in self.state.namespaces.iter().rev() {
            if netns::exists(name)
                && let Err(e) = run(Command::new("ip").args(["netns", "del", name]))
            {
                tracing::warn!(netns = %name, error = %e, "cannot remove a namespace");
            }
        }
        self.state = State { name: self.state.name.clone(), ..State::default() };
        let _ = std::fs::remove_file(self.dir.join("lab.json"));
    }
}

/// Whether `pid` is still a weft process (not a pid reused by something else since).
fn is_ours(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("weft"))
        && !is_zombie(pid)
}

/// Stops a process the lab started, if it is still one of ours (a weft process).
/// The programs the lab runs, with the Debian package of each: it builds namespaces, links,
/// addresses and routes with `ip`. Everything else (sysctls, signals, entering namespaces,
/// ICMP) it does itself.
pub const PROGRAMS: &[(&str, &str)] = &[("ip", "iproute2")];

/// Whether the lab can run here: root, and its programs installed. Checked before anything is
/// created; an error is one line naming what is missing.
pub fn check_host() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(LabError::Invalid("the lab needs root (network namespaces, nftables, raw sockets)".into()));
    }
    for (program, package) in PROGRAMS {
        if !on_path(program) {
            return Err(LabError::Invalid(format!("the lab needs `{program}`: apt-get install {package}")));
        }
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of PATH.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

pub fn stop(pid: u32) {
    stop_within(pid, std::time::Duration::from_secs(1));
}

/// SIGTERM to a weft process, SIGKILL if it has not ended within `grace`.
pub fn stop_within(pid: u32, grace: std::time::Duration) {
    if !is_ours(pid) {
        return;
    }
    let gone = |within: std::time::Duration| {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    };
    let signal = |signal| {
        if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    };
    signal(rustix::process::Signal::TERM);
    if !gone(grace) {
        signal(rustix::process::Signal::KILL);
        // Until it is gone it holds its sockets (a metrics port its successor will want).
        gone(std::time::Duration::from_secs(2));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// Host `host` of the underlay.
fn host_address(host: u8, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::from(std::net::Ipv6Addr::from(UNDERLAY_V6.to_bits() | u128::from(host)))
    } else {
        IpAddr::from([UNDERLAY_V4[0], UNDERLAY_V4[1], UNDERLAY_V4[2], host])
    }
}

fn validate(spec: &Spec) -> Result<()> {
    if spec.name.is_empty()
        || spec.name.len() > 16
        || !spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(LabError::Invalid(format!("lab name {:?}: 1-16 letters, digits or dashes", spec.name)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for pod in &spec.pods {
        if !spec.nodes.contains(&pod.node) {
            return Err(LabError::Invalid(format!("pod {}: node {} is not in the lab", pod.endpoint(), pod.node)));
        }
        for a in &pod.addresses {
            if !seen.insert(*a) {
                return Err(LabError::Invalid(format!("pod {}: address {a} is used twice", pod.endpoint())));
            }
        }
    }
    Ok(())
}
