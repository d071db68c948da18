//! `weft lab`: a cluster of network namespaces with one nftables agent per node, built from
//! Kubernetes Pod manifests, probed with real packets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use weft_lab::manifests::ListenPort;
use weft_lab::{Lab, Protocol, Spec};

use crate::common::{ClientArgs, Output};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab from Pod manifests, start one nftables agent per node, and wire every
    /// pod through the CNI plugin (its port must be written: kube-manager --pod-network-cidr).
    Up {
        /// Directory of Kubernetes YAML (Pods must give spec.nodeName; status.podIPs, when
        /// given, are the addresses they ask for).
        #[arg(long)]
        manifests: PathBuf,
        #[command(flatten)]
        lab: LabArgs,
        /// The project a namespace becomes: this prefix and the namespace's name.
        #[arg(long, default_value = "k8s-")]
        project_prefix: String,
        /// The CNI plugin to wire pods with; default: weft-cni beside this binary.
        #[arg(long)]
        cni_plugin: Option<PathBuf>,
        /// How long a pod's wiring waits for its port to reach its node.
        #[arg(long, default_value = "60s", value_parser = crate::common::parse_duration)]
        wait: Duration,
    },
    /// Stop the lab's agents and listeners and remove its namespaces.
    Down {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// Try every pair with a fresh connection and print the reachability matrix.
    Probe {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(long, default_value = "tcp")]
        protocol: Protocol,
        /// Destination port (not for icmp).
        #[arg(long)]
        port: Option<u16>,
        /// Probe IPv6 addresses instead of IPv4.
        #[arg(long)]
        ipv6: bool,
        /// Only the pods of this project (and `outside`).
        #[arg(long)]
        project: Option<String>,
    },
    /// Run a command inside a pod (or `outside`): weft lab exec yelb-ui -- weft lab ping 10.47.1.21
    Exec {
        #[command(flatten)]
        lab: LabArgs,
        /// `name` or `project/name`.
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop or start a node's agent (its table stays in force while it is stopped).
    Agent {
        #[command(flatten)]
        lab: LabArgs,
        action: AgentAction,
        node: String,
    },
    /// (internal) Listen on ports inside a pod.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        listen: Vec<ListenPort>,
        /// Answer DNS on UDP 53 for the pods of the lab in this directory.
        #[arg(long)]
        dns: Option<PathBuf>,
    },
    /// Send ICMP echo requests and report each (`reply from A: seq=N time=T ms`, `no answer
    /// from A: seq=N`); weft's own, no ping program: weft lab exec yelb-ui -- weft lab ping 10.47.1.21
    Ping {
        to: std::net::IpAddr,
        /// Stop after this many (then exit 0 if any was answered); without it, until killed.
        #[arg(long)]
        count: Option<u64>,
        /// Send from this address (one of the namespace's) rather than the one the route picks.
        #[arg(long)]
        from: Option<std::net::IpAddr>,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// How long to wait for each reply.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Hold one TCP connection and report each round trip (`ok N`, `lost N`, `closed`):
    /// weft lab exec yelb-ui -- weft lab talk --to 10.47.1.21 --port 5432
    Talk {
        /// Connect to this address (a pod's listener echoes)...
        #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
        to: Option<std::net::IpAddr>,
        /// ...or wait for one connection on --port.
        #[arg(long)]
        listen: bool,
        #[arg(long)]
        port: u16,
        /// Echo what the other end says instead of speaking.
        #[arg(long)]
        echo: bool,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// (internal) Probe targets from inside a namespace; prints a JSON array of booleans.
    #[command(hide = true)]
    ProbeFrom {
        #[arg(long)]
        protocol: Protocol,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        targets: Vec<std::net::IpAddr>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AgentAction {
    Start,
    Stop,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// The lab's name (its namespaces are wl-NAME-...).
    #[arg(long = "name", env = "WEFT_LAB", default_value = "lab")]
    pub name: String,
    /// Where the lab records what it created; /run/weft-lab/NAME by default.
    #[arg(long = "lab-dir", env = "WEFT_LAB_DIR")]
    pub dir: Option<PathBuf>,
}

impl LabArgs {
    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("/run/weft-lab").join(&self.name))
    }
}

/// A reachability matrix as `weft lab probe` and `weft reach` print it.
pub fn print_matrix(output: Output, matrix: &weft_lab::Matrix) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(matrix)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(matrix)?),
        Output::Table => print!("{}", matrix.table()),
    }
    Ok(())
}

fn binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the weft binary")
}

pub async fn run(command: LabCommand, client: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    match command {
        LabCommand::Serve { listen, dns } => Ok(weft_lab::serve::run(&listen, dns.as_deref())?),
        LabCommand::ProbeFrom { protocol, port, timeout_ms, targets } => {
            let results = weft_lab::probe::attempts(&targets, protocol, port, Duration::from_millis(timeout_ms));
            println!("{}", serde_json::to_string(&results)?);
            Ok(())
        }
        LabCommand::Ping { to, count, from, interval_ms, timeout_ms } => {
            let (interval, timeout) = (Duration::from_millis(interval_ms), Duration::from_millis(timeout_ms));
            tokio::task::spawn_blocking(move || ping(to, from, count, interval, timeout)).await?
        }
        LabCommand::Talk { to, listen, port, echo, interval_ms, timeout_ms } => {
            let role = if echo { weft_lab::probe::Role::Echo } else { weft_lab::probe::Role::Speak };
            let (interval, timeout) = (Duration::from_millis(interval_ms), Duration::from_millis(timeout_ms));
            match to {
                Some(to) if !listen => weft_lab::probe::talk((to, port).into(), role, interval, timeout)?,
                _ => weft_lab::probe::talk_listening(port, role, interval, timeout)?,
            }
            Ok(())
        }
        LabCommand::Up { manifests, lab, project_prefix, cni_plugin, wait } => {
            weft_lab::check_host()?;
            let wiring = Wiring { plugin: cni_plugin, wait };
            up(&manifests, &lab, &project_prefix, &wiring, client, data_dir).await
        }
        LabCommand::Down { lab } => {
            let dir = lab.dir();
            let mut opened = Lab::open(&dir)?;
            opened.down();
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("lab {} removed", lab.name);
            Ok(())
        }
        LabCommand::Probe { lab, protocol, port, ipv6, project } => {
            let opened = Lab::open(&lab.dir())?;
            let binary = binary()?;
            let mut matrix =
                tokio::task::spawn_blocking(move || opened.probe(&binary, protocol, port, ipv6, project.as_deref()))
                    .await??;
            if let Ok(c) = crate::common::client(client, data_dir)
                && let Ok(info) = c.info().await
            {
                matrix.revision = Some(info.revision);
            }
            print_matrix(client.output, &matrix)
        }
        LabCommand::Agent { lab, action, node } => {
            let mut opened = Lab::open(&lab.dir())?;
            match action {
                AgentAction::Start => {
                    let pid = opened.start_agent(&node, &binary()?)?;
                    eprintln!("agent of {node} running (pid {pid})");
                }
                AgentAction::Stop => {
                    opened.stop_agent(&node)?;
                    eprintln!("agent of {node} stopped; its table stays in force");
                }
            }
            Ok(())
        }
        LabCommand::Exec { lab, pod, command } => {
            let opened = Lab::open(&lab.dir())?;
            let status = opened.exec(&pod, &command)?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

/// `weft lab ping`: a line per round, then (with a count) a summary; fails when nothing was
/// answered, like ping.
fn ping(
    to: std::net::IpAddr,
    from: Option<std::net::IpAddr>,
    count: Option<u64>,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut pinger =
        weft_lab::icmp::Pinger::new(to.is_ipv6()).context("cannot open a raw ICMP socket (it needs root)")?;
    if let Some(from) = from {
        pinger.bind(from).with_context(|| format!("cannot send from {from}"))?;
    }
    let mut stdout = std::io::stdout();
    let mut sent = 0;
    let answered = pinger.rounds(to, count, interval, timeout, |seq, reply| {
        sent = seq;
        writeln!(stdout, "{}", weft_lab::icmp::round_line(to, seq, reply))?;
        stdout.flush()
    })?;
    println!("{sent} sent, {answered} answered");
    anyhow::ensure!(answered > 0, "no answer from {to}");
    Ok(())
}

/// How a lab wires its pods.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The CNI plugin; None: weft-cni beside the weft binary.
    pub plugin: Option<PathBuf>,
    /// How long each pod's ADD waits for its port.
    pub wait: Duration,
}

/// Builds a lab from the Pod manifests in `manifests`, starts one nftables agent per node,
/// registered with the server `c` talks to, and wires every pod through the CNI plugin (its
/// port must be written, or come within the wait); on failure, what was made is removed.
pub async fn create(
    manifests: &Path,
    name: &str,
    dir: &Path,
    prefix: &str,
    wiring: &Wiring,
    c: &weft_client::Client,
) -> anyhow::Result<Lab> {
    let pods = weft_lab::read_manifests(manifests, prefix)?;
    if pods.is_empty() {
        anyhow::bail!("no Pods in {}", manifests.display());
    }
    let mut nodes: Vec<String> = pods.iter().map(|p| p.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    let info = c.info().await.context("cannot reach the server")?;
    let grpc = info.grpc_address.context("the server runs no controller (GET /v1/info has no grpc_address)")?;
    let grpc = if grpc.contains("://") { grpc } else { format!("http://{grpc}") };
    let spec = Spec { name: name.to_string(), project_prefix: prefix.to_string(), nodes, pods };
    let binary = binary()?;
    let plugin = match &wiring.plugin {
        Some(p) => p.clone(),
        None => weft_lab::cni::plugin_beside(&binary)?,
    };
    let (dir_c, binary_c) = (dir.to_path_buf(), binary.clone());
    let mut lab = tokio::task::spawn_blocking(move || Lab::create(&spec, &dir_c, &binary_c)).await??;
    if let Err(e) = start_agents(&mut lab, c, &grpc, &binary).await {
        lab.down();
        return Err(e);
    }
    let wait = wiring.wait;
    let wired = tokio::task::spawn_blocking(move || {
        let outcome = lab.wire_pods(&plugin, wait);
        (lab, outcome)
    })
    .await?;
    match wired {
        (lab, Ok(())) => Ok(lab),
        (mut lab, Err(e)) => {
            lab.down();
            Err(anyhow::Error::new(e).context(
                "cannot wire the lab's pods (their ports come first: weft kube-manager --manifests DIR --pod-network-cidr CIDR)",
            ))
        }
    }
}

async fn up(
    manifests: &Path,
    args: &LabArgs,
    prefix: &str,
    wiring: &Wiring,
    client: &ClientArgs,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let c = crate::common::client(client, data_dir)?;
    let lab = create(manifests, &args.name, &args.dir(), prefix, wiring, &c).await?;
    println!(
        "lab {} is up: {} nodes, {} pods (recorded in {})",
        args.name,
        lab.state.nodes.len(),
        lab.state.pods.len(),
        lab.dir.display()
    );
    for node in &lab.state.nodes {
        println!("  node {:<12} netns {:<24} agent pid {}", node.name, node.netns, node.agent_pid.unwrap_or(0));
    }
    for pod in &lab.state.pods {
        let addresses: Vec<String> = pod.pod.addresses.iter().map(|a| a.to_string()).collect();
        println!(
            "  pod  {:<28} {:<16} on {} via {}",
            pod.pod.endpoint(),
            addresses.join(","),
            pod.pod.node,
            pod.interface
        );
    }
    println!("try: weft lab probe --port 80    weft lab exec POD -- ping ADDRESS    weft lab down");
    Ok(())
}

/// Registers every node (replacing a node of the same name) and starts its agent.
async fn start_agents(lab: &mut Lab, c: &weft_client::Client, grpc: &str, binary: &Path) -> anyhow::Result<()> {
    let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
    for node in nodes {
        let created = match c.create_node(&node).await {
            Ok(v) => v,
            Err(_) => {
                // The lab owns its node names: a node left from an earlier lab is replaced.
                let _ = c.delete_node(&node).await;
                c.create_node(&node)
                    .await
                    .with_context(|| format!("cannot register node {node} (an admin token is needed)"))?
            }
        };
        let credential = created.get("credential").and_then(|v| v.as_str()).context("no credential in the answer")?;
        lab.register_agent(&node, grpc, credential)?;
        lab.start_agent(&node, binary)?;
    }
    Ok(())
}
