//! The command line: clap definitions and dispatch. Every flag can also come from a `WEFT_*`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client_cmds;

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "weft: an SDN controller for Kubernetes NetworkPolicy and security groups")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `weft_api=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Where weft keeps its state: the first admin token, a private database's location.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = ".weft", global = true)]
    pub data_dir: PathBuf,
    /// A TOML file of settings: top-level keys for these global flags, a table per
    /// subcommand (`[server]`, `[agent]`, `[kube-manager]`) keyed by long flag names. The
    /// command line and WEFT_* variables take precedence over it.
    #[arg(long, env = "WEFT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The REST API's address.
    #[arg(long, env = "WEFT_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// API token; defaults to the contents of <data-dir>/admin.token.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https).
    #[arg(long, env = "WEFT_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Output format of client commands.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run weft's server: the REST API and the controller (agents' gRPC), on PostgreSQL.
    Server(ServerArgs),
    /// The node agent: one stream to a controller, the node's span enforced by a datapath.
    Agent(AgentArgs),
    /// Projects (tenants; a Kubernetes namespace becomes one).
    Project {
        #[command(subcommand)]
        command: ObjectCommand<ProjectCreate>,
    },
    /// Virtual networks and their subnets.
    Network {
        #[command(subcommand)]
        command: ObjectCommand<NetworkCreate>,
    },
    /// Security groups and their rules.
    Sg {
        #[command(subcommand)]
        command: SgCommand,
    },
    /// Ports (virtual machine interfaces, pods).
    Port {
        #[command(subcommand)]
        command: ObjectCommand<PortCreate>,
    },
    /// API tokens (admin only).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Nodes: register one (its credential is printed once), list them with their connection
    /// and realization, delete one.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Join tokens, with which agents register their own nodes.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// Wait until every node a revision concerns has applied it.
    Wait {
        #[arg(long)]
        revision: i64,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The server's version, current revision and agent address.
    Info,
    /// Exit 0 when the server is ready (`GET /readyz`, no token needed), 1 otherwise: for
    /// health checks.
    Ready,
    /// Print the change log after a revision, then follow it.
    Changes {
        /// Print what came after this revision.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Stop once caught up instead of following new revisions.
        #[arg(long)]
        no_watch: bool,
    },
    /// Walk-throughs on this machine with real packets: `weft demo yelb` (as root).
    Demo {
        #[command(subcommand)]
        command: crate::demo::DemoCommand,
    },
    /// Which ports reach which, as the compiler computes it (the lab probe's matrix).
    Reach(crate::policy_cmds::ReachArgs),
    /// One packet from a port (or address) to another: the verdict, and on each side whether
    /// it is isolated and which group and rule allowed it.
    Trace(crate::policy_cmds::TraceArgs),
    /// Kubernetes Namespaces, Pods and NetworkPolicies become projects, ports and security
    /// groups: watched in a cluster, or read from a directory of manifests.
    KubeManager(crate::kube_cmds::KubeArgs),
    /// A cluster of network namespaces on this machine, for trying policies with real packets.
    Lab {
        #[command(subcommand)]
        command: crate::lab_cmds::LabCommand,
    },
    /// Benchmarks that print figures (never pass/fail); in a build with `--features bench`.
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        command: crate::bench_cmds::BenchCommand,
    },
    /// (not in this build: cargo build --release --features bench)
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address of the REST API.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (else DATABASE_URL); without one, weft starts a private PostgreSQL
    /// for its data dir.
    #[arg(long, env = "WEFT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// TLS certificate chain (PEM) for the REST API.
    #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the REST API.
    #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Turn authentication off. Anyone who reaches the API can change everything.
    #[arg(long, env = "WEFT_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The gRPC address agents should use, as /v1/info reports it.
    #[arg(long, env = "WEFT_GRPC_ADDRESS")]
    pub grpc_address: Option<String>,
    /// How long the change log keeps entries (e.g. 1h, 30m, 7d).
    #[arg(long, env = "WEFT_CHANGE_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub change_retention: Duration,
    /// Database connections of the REST API's pool (the controller's has a quarter as many,
    /// at least 4; all of them with --role control).
    #[arg(long, env = "WEFT_DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
    /// What this process runs: the REST API and the controller, or one of them.
    #[arg(long, env = "WEFT_ROLE", value_enum, default_value = "all")]
    pub role: ServerRole,
    /// Where the controller serves agents (gRPC).
    #[arg(long, env = "WEFT_GRPC_LISTEN", default_value = "127.0.0.1:8081")]
    pub grpc_listen: SocketAddr,
    /// TLS certificate chain (PEM) for the gRPC listener.
    #[arg(long, env = "WEFT_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the gRPC listener.
    #[arg(long, env = "WEFT_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Print every setting with its effective value and where it came from (secrets
    /// redacted), and exit.
    #[arg(long)]
    pub print_config: bool,
}

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatapathKind {
    /// nftables (`inet weft` table): the kernel enforces the span.
    Nftables,
    /// Held in memory: for simulated nodes and trying weft out; enforces nothing in the kernel.
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerRole {
    All,
    Api,
    Control,
}

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// The verbs every kind has.
#[derive(Debug, Subcommand)]
pub enum ObjectCommand<C: Args> {
    /// Create one (from flags, or from a JSON/YAML file with -f).
    Create(C),
    /// Show one.
    Get { key: String },
    /// List them.
    List(ListArgs),
    /// Change labels, or replace the whole object from a file with -f.
    Update(UpdateArgs),
    /// Delete one.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this project's.
    #[arg(long)]
    pub project: Option<String>,
    /// Kubernetes label selector, e.g. `app=db,tier in (a,b),!legacy`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// `name` (projects) or `project/name`, or an id.
    pub key: String,
    /// Replace the object with this file's content (JSON or YAML).
    #[arg(short = 'f', long, conflicts_with_all = ["label", "remove_label"])]
    pub file: Option<PathBuf>,
    /// Set a label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long, value_name = "KEY")]
    pub remove_label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub key: String,
    /// Also delete what the object contains (a project's objects, a network's ports).
    #[arg(long)]
    pub cascade: bool,
}

/// Where a created object comes from: its name and labels as flags, or a JSON/YAML file (the
/// flags then override the file's name and labels).
#[derive(Debug, Args)]
pub struct ObjectSource {
    /// `name` for a project, `project/name` for everything else.
    pub key: Option<String>,
    /// A JSON or YAML file holding the object.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// A label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProjectCreate {
    #[command(flatten)]
    pub source: ObjectSource,
}

#[derive(Debug, Args)]
pub struct NetworkCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    /// A subnet, optionally with its gateway: `10.0.0.0/24` or `10.0.0.0/24,gateway=10.0.0.1`.
    #[arg(long)]
    pub subnet: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SgCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    /// Apply to the project's ports matching this selector (`""` for all of them).
    #[arg(long)]
    pub selector: Option<String>,
    /// Directions the group isolates (default both).
    #[arg(long, value_delimiter = ',')]
    pub policy_types: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    #[arg(long)]
    pub node: Option<String>,
    /// A virtual network of the project; addresses not given are allocated from it.
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub ip: Vec<std::net::IpAddr>,
    #[arg(long)]
    pub mac: Option<String>,
    #[arg(long)]
    pub interface: Option<String>,
    /// Security groups (repeatable); without any, the port gets the project's `default`.
    #[arg(long = "sg")]
    pub security_groups: Vec<String>,
    /// Give the port no security group at all.
    #[arg(long, conflicts_with = "security_groups")]
    pub no_security_groups: bool,
    /// A named port: `http=tcp/80` (repeatable).
    #[arg(long)]
    pub named_port: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    #[command(flatten)]
    Object(ObjectCommand<SgCreate>),
    /// Add or remove rules.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// The nodes a group reaches and whether each has applied its last change.
    Status { key: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Register a node; its credential is printed once.
    Create { name: String },
    /// Nodes with their connection, last ack and lag.
    List,
    /// Forget a node (its credential stops working).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token; it is printed once.
    Create {
        /// Lifetime, e.g. 1h or 7d (at most 30 days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires_in: Duration,
        /// How many nodes it registers.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The one node it registers. Needed to register a node that ports are placed on
        /// already.
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Write the token to this file (mode 0600) instead of printing it: for a Secret of
        /// one token per node (deploy/kubernetes/agent.yaml).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Join tokens with their limits and how often each was used (never their secrets).
    List,
    /// Revoke a join token: it registers no node from now on.
    Delete { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule to a group.
    Add(Box<RuleAdd>),
    /// Remove a rule by its id.
    Remove { group: String, rule_id: uuid::Uuid },
}

#[derive(Debug, Args)]
pub struct RuleAdd {
    /// The group: `project/name` or an id.
    pub group: String,
    #[arg(long, value_parser = ["ingress", "egress"])]
    pub direction: String,
    /// any, tcp, udp, sctp, icmp, icmpv6 or a protocol number.
    #[arg(long, default_value = "any")]
    pub protocol: String,
    /// Ports: `80`, `8000-8080` or a port name (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<String>,
    /// IPv4, IPv6 or any.
    #[arg(long)]
    pub ethertype: Option<String>,
    /// ICMP type[/code].
    #[arg(long)]
    pub icmp: Option<String>,
    /// Remote: a CIDR.
    #[arg(long, group = "remote")]
    pub remote_cidr: Option<String>,
    /// Prefixes excepted from --remote-cidr (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "remote_cidr")]
    pub except: Vec<String>,
    /// Remote: members of a security group (`name` or `project/name`).
    #[arg(long, group = "remote")]
    pub remote_sg: Option<String>,
    /// Remote: ports matching a label selector.
    #[arg(long, group = "remote")]
    pub remote_selector: Option<String>,
    /// With --remote-selector: in projects matching this selector.
    #[arg(long, requires = "remote_selector")]
    pub remote_projects: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long, value_parser = ["admin", "reader", "writer"])]
        role: String,
        /// The project of a reader or writer token.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 12h or 30d; without it the token lives until revoked.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: uuid::Uuid },
}

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server(args, cli.data_dir).await,
        Command::Agent(args) => agent(args, cli.client.ca).await,
        Command::Lab { command } => crate::lab_cmds::run(command, &cli.client, &cli.data_dir).await,
        Command::KubeManager(args) => crate::kube_cmds::run(args, &cli.client, &cli.data_dir).await,
        Command::Reach(args) => crate::policy_cmds::reach(args, &cli.client, &cli.data_dir).await,
        Command::Demo { command } => crate::demo::run(command).await,
        Command::Trace(args) => crate::policy_cmds::trace(args, &cli.client, &cli.data_dir).await,
        #[cfg(feature = "bench")]
        Command::Bench { command } => crate::bench_cmds::run(command).await,
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => {
            anyhow::bail!("weft bench is not in this build: build it with cargo build --release --features bench")
        }
        command => client_cmds::run(command, &cli.client, &cli.data_dir).await,
    }
}

async fn server(args: ServerArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(weft_api::tls::TlsFiles { cert, key }),
        _ => None,
    };
    let config = weft_api::server::ServerConfig {
        listen: args.listen,
        database_url: args.database_url.or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())),
        data_dir,
        tls,
        auth_enabled: !args.insecure_no_auth,
        grpc_address: args.grpc_address,
        change_retention: args.change_retention,
        max_connections: args.db_max_connections,
        role: match args.role {
            ServerRole::All => weft_api::server::Role::All,
            ServerRole::Api => weft_api::server::Role::Api,
            ServerRole::Control => weft_api::server::Role::Control,
        },
        grpc_listen: args.grpc_listen,
        grpc_tls: match (args.grpc_tls_cert, args.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(weft_api::tls::TlsFiles { cert, key }),
            _ => None,
        },
    };
    weft_api::server::run(config, shutdown_signal(), None).await.context("weft server")
}

/// A secret kept in a file, without the line end an editor or `echo` adds.
fn secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = text.trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret)
}

async fn agent(args: AgentArgs, ca: Option<PathBuf>) -> anyhow::Result<()> {
    if args.cleanup {
        let removed =
            weft_agent::nft::delete_table(args.netns.as_deref()).context("cannot remove the nftables table")?;
        eprintln!("{}", if removed { "removed table inet weft" } else { "no table inet weft to remove" });
        return Ok(());
    }
    let node = args.node.context("--node is required")?;
    if let Some(ns) = &args.netns
        && !weft_agent::netns::exists(ns)
    {
        anyhow::bail!("no network namespace {ns} (ip netns list)");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = match ca {
        Some(path) => Some(std::fs::read(&path).with_context(|| format!("cannot read the CA {}", path.display()))?),
        None => None,
    };
    let state_dir = weft_agent::StateDir::new(&args.state_dir)
        .with_context(|| format!("cannot use the state dir {}", args.state_dir.display()))?;
    let credential =
        args.credential.map(Ok).or_else(|| args.node_token_file.as_deref().map(secret_file)).transpose()?;
    // A join token file is read only while the node has no credential yet: a DaemonSet's
    // Secret may hold no token for a node registered some other way.
    let join_token = match (args.join_token, &args.join_token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) if credential.is_none() && state_dir.credential().is_none() => Some(secret_file(path)?),
        _ => None,
    };
    let config = weft_agent::Config {
        server: args.controller,
        node,
        state_dir,
        credential,
        join_token,
        ca,
        backoff: (Duration::from_millis(200), Duration::from_secs(30)),
        metrics: args.metrics_listen.map(|_| std::sync::Arc::new(weft_agent::metrics::AgentMetrics::default())),
    };
    if let (Some(addr), Some(metrics)) = (args.metrics_listen, config.metrics.clone()) {
        let netns = args.netns.clone();
        let kernel = matches!(args.datapath, DatapathKind::Nftables);
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
    let (progress, _) = tokio::sync::watch::channel(weft_agent::Progress { revision: 0, synced: false });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    match args.datapath {
        DatapathKind::Memory => {
            tracing::warn!("the memory datapath enforces nothing in the kernel");
            weft_agent::run(config, weft_agent::MemoryDatapath::default(), progress, stopped).await?;
        }
        DatapathKind::Nftables => {
            let datapath = weft_agent::NftDatapath::new(args.netns);
            weft_agent::run(config, datapath, progress, stopped).await?;
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
