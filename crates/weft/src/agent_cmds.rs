//! `weft agent`: its flags, made into the agent's configuration, with its metrics server
//! and datapath.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::common::{secret_file, shutdown_signal};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The controller's gRPC address (https:// with --ca).
    #[arg(long, env = "WEFT_CONTROLLER", default_value = "http://127.0.0.1:8081")]
    pub controller: String,
    /// This node's name (as ports name it).
    #[arg(long, env = "WEFT_NODE", required_unless_present = "cleanup")]
    pub node: Option<String>,
    /// Where the agent keeps its credential and its last applied span.
    #[arg(long, env = "WEFT_AGENT_STATE_DIR", default_value = "/var/lib/weft-agent")]
    pub state_dir: PathBuf,
    /// The node's credential (`weft node create`); else the one in the state dir.
    #[arg(long = "node-token", alias = "credential", env = "WEFT_NODE_TOKEN", hide_env_values = true)]
    pub credential: Option<String>,
    /// A file holding the node's credential (better than --node-token, which `ps` shows).
    #[arg(long, env = "WEFT_NODE_TOKEN_FILE", conflicts_with = "credential")]
    pub node_token_file: Option<PathBuf>,
    /// A join token (`weft join-token create`) to register this node when it has no credential.
    #[arg(long, env = "WEFT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (better than --join-token, which `ps` shows). In a
    /// DaemonSet: a Secret with one key per node, each a token made for that node.
    #[arg(long, env = "WEFT_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// Where the span is enforced.
    #[arg(long, env = "WEFT_DATAPATH", value_enum, default_value = "nftables")]
    pub datapath: DatapathKind,
    /// The network namespace (an `ip netns` name) whose forwarding the nftables datapath
    /// programs; the agent's own when absent. The agent itself stays where the controller is
    /// reachable.
    #[arg(long, env = "WEFT_NETNS")]
    pub netns: Option<String>,
    /// Remove weft's nftables table (in --netns) and exit: the node stops enforcing policy.
    #[arg(long)]
    pub cleanup: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (apply time, the table's size, each
    /// port's drops).
    #[arg(long, env = "WEFT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the CNI plugin (`weft-cni`) reaches the agent; its conflist's `socket` names the
    /// same path.
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = weft_cni::shim::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,
    /// Serve no CNI calls: pods are wired by something else (docs/cni.md's contract).
    #[arg(long, env = "WEFT_NO_CNI")]
    pub no_cni: bool,
    /// A pod of namespace `ns` has its port in the project `<prefix>ns` (kube-manager's
    /// --project-prefix).
    #[arg(long, env = "WEFT_PROJECT_PREFIX", default_value = "k8s-")]
    pub project_prefix: String,
    /// How long a CNI ADD waits for its pod's port to reach the node when the conflist's
    /// `timeoutSeconds` does not say; after it the runtime hears "try again later".
    #[arg(long, env = "WEFT_CNI_WAIT", default_value = "60s", value_parser = crate::common::parse_duration)]
    pub cni_wait: Duration,
    /// The container runtime's CNI configuration directory (e.g. /etc/cni/net.d): once the
    /// agent has synced with a controller it writes weft's conflist there (10-weft.conflist:
    /// weft-cni, then portmap), and never removes it.
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The pods' interface MTU written in the conflist; 0: the MTU of the link the node's
    /// default route leaves by.
    #[arg(long, env = "WEFT_CNI_MTU", default_value_t = 0)]
    pub cni_mtu: u32,
    /// The node's addresses on the network between nodes (repeated or comma-separated), which
    /// the agent tells its controller: where other nodes route this node's pods. Default: the
    /// addresses of the links the node's default routes leave by.
    #[arg(long, env = "WEFT_NODE_ADDRESS", value_delimiter = ',')]
    pub node_address: Vec<std::net::IpAddr>,
    /// Install no routes to other nodes' pods: the cluster routes them some other way (BGP,
    /// an overlay).
    #[arg(long, env = "WEFT_NO_ROUTES")]
    pub no_routes: bool,
    /// Leave pod traffic to outside the cluster's pod networks with the pod's own address
    /// (the network beyond routes the pods' addresses); by default it leaves the node
    /// masqueraded to the node's address (table inet weft-nat).
    #[arg(long, env = "WEFT_NO_MASQUERADE")]
    pub no_masquerade: bool,
    /// Do not read the names pods look up in DNS (names can be sensitive): the kernel then
    /// sends the agent nothing of them.
    #[arg(long, env = "WEFT_NO_DNS_NAMES")]
    pub no_dns_names: bool,
    /// Capture no flows (DESIGN.md §10): read no conntrack events, denied samples or DNS names
    /// and report none; the drop counters still count, in the metrics. With no reader the
    /// kernel sends nothing, and conntrack accounting is left off.
    #[arg(long, env = "WEFT_NO_FLOW_CAPTURE")]
    pub no_flow_capture: bool,
}

/// `weft install-cni`: the CNI plugin's binaries copied into a node's CNI directory.
#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// Where the binaries are: weft-cni, and the reference loopback and portmap.
    #[arg(long, default_value = "/usr/local/lib/weft/cni")]
    pub from: PathBuf,
    /// The node's CNI binary directory (the runtime's CNI_PATH).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub to: PathBuf,
}

/// Copies every file of `from` into `to`, each written aside and renamed into place (mode
/// 0755): a runtime exec'ing a plugin while it is replaced runs the old one or the new one,
/// never half of one (the agent DaemonSet's init container does this on every node).
pub fn install_cni(args: InstallCniArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let InstallCniArgs { from, to } = args;
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut installed = 0;
    for entry in std::fs::read_dir(&from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let partial = to.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
        std::fs::copy(entry.path(), &partial).with_context(|| format!("cannot copy {}", entry.path().display()))?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&partial, to.join(&name))?;
        println!("installed {}", to.join(&name).display());
        installed += 1;
    }
    anyhow::ensure!(installed > 0, "no plugin binaries in {}", from.display());
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatapathKind {
    /// nftables (`inet weft` table): the kernel enforces the span.
    Nftables,
    /// Held in memory: for simulated nodes and trying weft out; enforces nothing in the kernel.
    Memory,
}

/// Batches of flow samples that wait for a controller, at most (a batch holds up to 256: a
/// gathering of conntrack's events, or a single sample).
const SAMPLE_BATCHES_QUEUED: usize = 64;

/// Runs the agent until SIGINT or SIGTERM (or, with --cleanup, removes weft's table). Every
/// flag is taken apart here, so one that is added and never used does not compile.
pub async fn run(args: AgentArgs, ca: Option<PathBuf>) -> anyhow::Result<()> {
    let AgentArgs {
        controller,
        node,
        state_dir,
        credential,
        node_token_file,
        join_token,
        join_token_file,
        datapath,
        netns,
        cleanup,
        metrics_listen,
        cni_socket,
        no_cni,
        project_prefix,
        cni_wait,
        cni_conf_dir,
        cni_mtu,
        node_address,
        no_routes,
        no_masquerade,
        no_dns_names,
        no_flow_capture,
    } = args;
    if cleanup {
        let removed = weft_agent::nft::delete_table(netns.as_deref()).context("cannot remove the nftables table")?;
        eprintln!("{}", if removed { "removed table inet weft" } else { "no table inet weft to remove" });
        weft_agent::nft::set_masquerade(netns.as_deref(), &[]).context("cannot remove the masquerade table")?;
        eprintln!("no table inet {} left", weft_agent::nft::NAT_TABLE);
        return Ok(());
    }
    let node = node.context("--node is required")?;
    if let Some(ns) = &netns
        && !weft_agent::netns::exists(ns)
    {
        anyhow::bail!("no network namespace {ns} (ip netns list)");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = match ca {
        Some(path) => Some(std::fs::read(&path).with_context(|| format!("cannot read the CA {}", path.display()))?),
        None => None,
    };
    let cni_records = state_dir.join("cni");
    let state_dir = weft_agent::StateDir::new(&state_dir)
        .with_context(|| format!("cannot use the state dir {}", state_dir.display()))?;
    let credential = credential.map(Ok).or_else(|| node_token_file.as_deref().map(secret_file)).transpose()?;
    // A join token file is read only while the node has no credential yet: a DaemonSet's
    // Secret may hold no token for a node registered some other way.
    let join_token = match (join_token, &join_token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) if credential.is_none() && state_dir.credential().is_none() => Some(secret_file(path)?),
        _ => None,
    };
    let underlay = if node_address.is_empty() {
        let ns = netns.clone();
        match tokio::task::spawn_blocking(move || weft_agent::link::underlay_addresses(ns.as_deref())).await? {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the node's addresses; give --node-address");
                Vec::new()
            }
        }
    } else {
        node_address
    };
    if underlay.is_empty() {
        tracing::warn!("the node has no default route to tell its address by: give --node-address");
    }
    let config = weft_agent::Config {
        server: controller,
        node,
        state_dir,
        credential,
        join_token,
        ca,
        backoff: (Duration::from_millis(200), Duration::from_secs(30)),
        metrics: metrics_listen.map(|_| std::sync::Arc::new(weft_agent::metrics::AgentMetrics::default())),
        underlay,
        connection: Default::default(),
    };
    if let (Some(addr), Some(metrics)) = (metrics_listen, config.metrics.clone()) {
        let netns = netns.clone();
        let kernel = matches!(datapath, DatapathKind::Nftables);
        crate::metrics_http::serve(addr, move || {
            let (metrics, netns) = (metrics.clone(), netns.clone());
            async move {
                let table = if kernel {
                    tokio::task::spawn_blocking(move || weft_agent::nft::table_stats(netns.as_deref()))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                } else {
                    None
                };
                metrics.render(table.as_ref())
            }
        })
        .await
        .unwrap_or_else(|e| tracing::error!(error = %format!("{e:#}"), "serving no metrics; enforcing all the same"));
    }
    let (progress, in_force) = tokio::sync::watch::channel(weft_agent::Progress::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    // What the datapath denies, sampled, the names pods look up and the connections they make
    // (DESIGN.md §10): samples logged at debug level, and all reported to the controller on a stream of their own. Samples wait for a
    // controller in a bounded queue; what does not fit is dropped and counted.
    if no_flow_capture {
        tracing::info!("capturing no flows (--no-flow-capture)");
    }
    if matches!(datapath, DatapathKind::Nftables) && !no_flow_capture {
        let (mut samples, queued) = weft_agent::flows::sample_queue(SAMPLE_BATCHES_QUEUED);
        let mut connections = samples.clone();
        let (sample_netns, metrics, stopped_reader) = (netns.clone(), config.metrics.clone(), stopped.clone());
        std::thread::spawn(move || {
            weft_agent::flows::follow(sample_netns.as_deref(), !no_dns_names, metrics, stopped_reader, |sample| {
                match &sample {
                    weft_agent::flows::Sample::Denied(s) => tracing::debug!(
                        by = ?s.by, ingress = s.ingress, src = %s.packet.src, dst = %s.packet.dst,
                        protocol = s.packet.protocol, ports = ?s.packet.ports, icmp = ?s.packet.icmp, "denied"
                    ),
                    weft_agent::flows::Sample::Dns(q) => {
                        tracing::debug!(src = %q.src, server = %q.server, name = %q.name, qtype = q.qtype, "dns query")
                    }
                    weft_agent::flows::Sample::Connection(_) => {}
                }
                samples.send(vec![(sample, weft_agent::flows::now_ms())]);
            })
        });
        let progress_seen = in_force.clone();
        let (conntrack_netns, metrics, stopped_reader) = (netns.clone(), config.metrics.clone(), stopped.clone());
        std::thread::spawn(move || {
            weft_agent::flows::follow_connections(
                conntrack_netns.as_deref(),
                progress_seen,
                metrics,
                stopped_reader,
                |events| {
                    let at_ms = weft_agent::flows::now_ms();
                    connections
                        .send(events.into_iter().map(|e| (weft_agent::flows::Sample::Connection(e), at_ms)).collect());
                },
            )
        });
        let drop_reader = std::sync::Mutex::new(weft_agent::nft::DropCounterReader::new(netns.clone()));
        let drop_counters: weft_agent::flows::DropCounters = std::sync::Arc::new(move || {
            let mut reader = drop_reader.lock().unwrap_or_else(|e| e.into_inner());
            reader.read().unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot read the drop counters");
                Vec::new()
            })
        });
        tokio::spawn(weft_agent::flows::report(
            config.clone(),
            in_force.clone(),
            queued,
            stopped.clone(),
            Some(drop_counters),
        ));
    }
    // Pods wired onto a datapath that enforces nothing would run without their policy.
    let cni = match (no_cni, datapath) {
        (true, _) => None,
        (false, DatapathKind::Memory) => {
            tracing::warn!("serving no CNI calls: the memory datapath would wire pods without their policy");
            None
        }
        (false, DatapathKind::Nftables) => {
            if let Some(dir) = cni_conf_dir {
                let content = weft_agent::cni::conflist(&cni_socket, cni_wait, cni_mtu);
                let mut synced = in_force.clone();
                tokio::spawn(async move {
                    if synced.wait_for(|p| p.synced).await.is_err() {
                        return;
                    }
                    match weft_agent::cni::install_conflist(&dir, &content) {
                        Ok(true) => {
                            tracing::info!(dir = %dir.display(), "wrote weft's conflist: pods are wired through weft-cni")
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(dir = %dir.display(), error = %e, "cannot write weft's conflist"),
                    }
                });
            }
            let config = weft_agent::cni::CniConfig {
                socket: cni_socket,
                node_netns: netns.clone(),
                records: cni_records,
                project_prefix,
                wait: cni_wait,
            };
            Some(weft_agent::cni::Cni::new(config, in_force).context("cannot keep CNI records in the state dir")?)
        }
    };
    // Routes to other nodes' pods, on a stream of their own; only where pods are wired here.
    // And the masquerade of pod traffic leaving the cluster, which the route table names.
    let uses = weft_agent::routes::Uses { routes: !no_routes, masquerade: !no_masquerade };
    if matches!(datapath, DatapathKind::Nftables) {
        if no_masquerade {
            // Turned off after it was on: what the agent set before goes.
            weft_agent::nft::set_masquerade(netns.as_deref(), &[]).context("cannot remove the masquerade table")?;
        }
        if uses.routes || uses.masquerade {
            tokio::spawn(weft_agent::routes::follow(config.clone(), netns.clone(), uses, stopped.clone()));
        }
    }
    let agent = async {
        match datapath {
            DatapathKind::Memory => {
                tracing::warn!("the memory datapath enforces nothing in the kernel");
                weft_agent::run(config, weft_agent::MemoryDatapath::default(), progress, stopped.clone()).await
            }
            DatapathKind::Nftables => {
                let datapath = weft_agent::NftDatapath::new(netns);
                weft_agent::run(config, datapath, progress, stopped.clone()).await
            }
        }
    };
    let Some(cni) = cni else {
        agent.await?;
        return Ok(());
    };
    let mut cni_stopped = stopped.clone();
    let cni_shutdown = async move {
        let _ = cni_stopped.wait_for(|s| *s).await;
    };
    // The CNI server is critical: pods cannot start without it, so an agent that cannot serve
    // it ends, and its supervisor (the DaemonSet) restarts it.
    tokio::select! {
        outcome = agent => outcome?,
        served = cni.serve(cni_shutdown) => served.context("the CNI server stopped")?,
    }
    Ok(())
}
