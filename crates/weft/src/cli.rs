//! The command line's root: the global flags, the subcommands and the dispatch. Each
//! command's module owns its arguments and its `run`; flags shared by several are in
//! [`crate::common`]. Every flag can also come from a `WEFT_*` environment variable.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::common::ClientArgs;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run weft's server: the REST API and the controller (agents' gRPC), on PostgreSQL.
    Server(crate::server_cmds::ServerArgs),
    /// The node agent: one stream to a controller, the node's span enforced by a datapath.
    Agent(crate::agent_cmds::AgentArgs),
    /// Copy the CNI plugin's binaries into a node's CNI directory, each replaced whole (the
    /// agent DaemonSet's init container).
    InstallCni(crate::agent_cmds::InstallCniArgs),
    #[command(flatten)]
    Client(crate::client_cmds::ClientCommand),
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
        Command::Server(args) => crate::server_cmds::run(args, cli.data_dir).await,
        Command::Agent(args) => crate::agent_cmds::run(args, cli.client.ca).await,
        Command::InstallCni(args) => crate::agent_cmds::install_cni(args),
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
        Command::Client(command) => crate::client_cmds::run(command, &cli.client, &cli.data_dir).await,
    }
}
