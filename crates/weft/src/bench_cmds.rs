//! `weft bench`: benchmarks that print figures, as ratios to a baseline where there is one
//! (never pass/fail). Only in a build with the `bench` feature: they bring the synthetic
//! clusters and the fake Kubernetes API server, which the shipped binary does not carry.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::common::parse_duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulated agents against a real `weft server` holding a synthetic cluster: snapshot
    /// time for all of them at once, server memory, REST write to every affected ack.
    Fanout {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Agents, one per node.
        #[arg(long, default_value_t = 1_000)]
        agents: usize,
        #[arg(long, default_value_t = 25_000)]
        namespaces: usize,
        #[arg(long, default_value_t = 4)]
        pods_per_namespace: usize,
        /// Writes of each kind timed.
        #[arg(long, default_value_t = 100)]
        writes: usize,
        /// Tiered cluster policies of each tier stored with the cluster; admin policies are
        /// then also added, changed and reordered, timed as the other writes (0: none).
        #[arg(long, default_value_t = 0)]
        cluster_policies: usize,
        /// New connections each pod takes a minute, reported (begun, ended, a DNS query for
        /// every other one, 15 s windows) on each simulated agent's flow stream; 0: none.
        #[arg(long, default_value_t = 2.0)]
        connections_per_port_minute: f64,
        /// How long the agents report flows (from their snapshots on; the writes happen
        /// meanwhile) before the server's memory is read.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        flows_for: Duration,
    },
    /// The CNI plugin (as root): pods wired through weft-cni (beside this binary) against a
    /// real agent on nftables in namespaces of the bench's own: ADD, ADD to an allowed peer's
    /// first answer, DEL, and many ADDs at once, on a node already holding pods.
    Cni {
        /// Pods on the node before anything is timed.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// ADDs and DELs timed one at a time.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Pods added at once.
        #[arg(long, default_value_t = 100)]
        concurrent: usize,
    },
    /// IPAM at scale: ports allocated addresses on one network of a scratch database, the
    /// time per port of the first thousand beside the last thousand's.
    Ipam {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value_t = 150_000)]
        allocations: usize,
        /// Ports per transaction (kube-manager writes in batches).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// REST API throughput and latency beside pgbench's on the same PostgreSQL.
    Api {
        /// A PostgreSQL server; the bench creates and drops its own databases there.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Concurrent clients (for weft and for pgbench alike).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// How long each workload runs.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Ports stored for the list and start-up figures.
        #[arg(long, default_value_t = 100_000)]
        ports: usize,
    },
    /// The nftables datapath (as root, in network namespaces of its own): full apply of a
    /// large span, one set member joining and leaving, and an agent's memory.
    Datapath {
        /// Local ports of the measured node.
        #[arg(long, default_value_t = 500)]
        ports: usize,
        /// Rules at least in the measured node's span.
        #[arg(long, default_value_t = 5_000)]
        rules: usize,
        /// Repetitions of each timed step.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Namespaces (4 pods each, 1,000 nodes) of the cluster the agent's memory is measured
        /// with: 25,000 is 100,000 pods, 100 ports per node.
        #[arg(long, default_value_t = 25_000)]
        rss_namespaces: usize,
        /// Write the full apply's transaction (nft JSON) here, to time `nft -j -f` on by hand.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Tiered cluster policies (half admin, half baseline) selecting every port, added to
        /// the span; the full apply without them is timed too.
        #[arg(long, default_value_t = 0)]
        cluster_policies: usize,
        /// The measured node as one of a cluster of this many pods, with as many nodes as
        /// give it `--ports` ports (`--ports 110 --cluster-pods 150000 --rules 0`: Kubernetes'
        /// limits); the agent's memory is then measured with that node's span.
        #[arg(long)]
        cluster_pods: Option<usize>,
    },
    /// Real packets between two pods on two nodes (network namespaces; root): new TCP
    /// connections a second and bulk throughput with no table, conntrack only, weft's table for
    /// a 5,000-rule span, and that with flow capture on, interleaved; then a paced flood of new
    /// connections with capture on, its loss counted exactly.
    Packets {
        /// Runs of each datapath (interleaved).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds each measurement lasts.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// The flood's new connections a second...
        #[arg(long, default_value_t = 10_000)]
        flood_rate: u32,
        /// ...for this many seconds.
        #[arg(long, default_value_t = 10)]
        flood_seconds: u32,
        /// Local ports of the server's node.
        #[arg(long, default_value_t = 500)]
        ports: usize,
        /// Rules at least in the server's node's span.
        #[arg(long, default_value_t = 5_000)]
        rules: usize,
        /// New connections timed into the flow log (a real server and agents); 0: none.
        #[arg(long, default_value_t = 10)]
        follows: usize,
        /// A PostgreSQL server for the server's scratch database; unset: its private one.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// kube-manager between the fake Kubernetes API server and a `weft server`: initial sync,
    /// policy change latency, a burst of pod changes.
    Kube {
        /// A PostgreSQL server; the bench creates and drops its own database there.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value_t = 1_000)]
        namespaces: usize,
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
        /// Policy changes timed one at a time.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Pods changed at once.
        #[arg(long, default_value_t = 1_000)]
        burst: usize,
        /// Nodes the pods are spread over.
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Where pods' addresses come from: `ipam` (weft's, from per-node blocks, as with
        /// weft-cni) or `status` (given by another plugin).
        #[arg(long, default_value = "ipam", value_parser = ["ipam", "status"])]
        addresses: String,
    },
    /// Where the server's memory is: the compiler's structures and the API's object cache
    /// loaded from the synthetic cluster, each counted by the allocator, and every node's
    /// snapshot encoded.
    Memory {
        #[command(flatten)]
        size: ClusterSize,
        /// Tiered cluster policies of each tier stored with the cluster (0: none).
        #[arg(long, default_value_t = 0)]
        cluster_policies: usize,
        /// Seconds of flow records (every port taking `--connections-per-port-minute` new
        /// connections a minute) fed to a flow store of `--flow-memory` (0: none).
        #[arg(long, default_value_t = 0)]
        flow_seconds: usize,
        #[arg(long, default_value_t = 2.0)]
        connections_per_port_minute: f64,
        #[arg(long, default_value = "256MiB", value_parser = crate::server_cmds::parse_size)]
        flow_memory: usize,
    },
    /// The ACL compiler on a synthetic cluster: full compile time and memory.
    Compiler {
        /// `realistic` (DESIGN.md §8's shape; Antrea's benchmark scale by default) or `dense`.
        #[arg(long, default_value = "realistic", value_parser = ["realistic", "dense"])]
        shape: String,
        #[command(flatten)]
        size: ClusterSize,
        /// Dense shape: pods, and policies that each select every pod.
        #[arg(long, default_value_t = 10_000)]
        dense_pods: usize,
        #[arg(long, default_value_t = 10_000)]
        dense_policies: usize,
        /// Changes of each kind to time after the full compile (realistic shape only; 0: none).
        #[arg(long, default_value_t = 0)]
        changes: usize,
        /// Tiered cluster policies of each tier (realistic shape only): the full compile with
        /// them beside the compile without, same run (0: none).
        #[arg(long, default_value_t = 0)]
        cluster_policies: usize,
    },
}

/// The realistic synthetic cluster's size (DESIGN.md §8's shape; Antrea's benchmark scale by
/// default).
#[derive(Debug, clap::Args)]
pub struct ClusterSize {
    #[arg(long, default_value_t = 25_000)]
    namespaces: usize,
    #[arg(long, default_value_t = 4)]
    pods_per_namespace: usize,
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
}

impl ClusterSize {
    fn shape(&self) -> weft_bench::compiler::Shape {
        weft_compiler_shape(self.namespaces, self.pods_per_namespace, self.nodes)
    }
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api { database_url, clients, duration, ports } => {
            let config = weft_bench::ApiBenchConfig {
                database_url,
                clients,
                duration,
                ports,
                weft_exe: std::env::current_exe().ok(),
            };
            let report = weft_bench::api(config).await?;
            print!("{report}");
            Ok(())
        }
        BenchCommand::Datapath { ports, rules, runs, rss_namespaces, dump, cluster_policies, cluster_pods } => {
            let config = weft_bench::datapath::DatapathConfig {
                ports,
                rules,
                runs,
                rss_namespaces,
                binary: std::env::current_exe().context("cannot find the weft binary")?,
                dump,
                cluster_policies,
                cluster_pods,
            };
            let report = tokio::task::spawn_blocking(move || weft_bench::datapath::run_bench(&config)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCommand::Packets { runs, seconds, flood_rate, flood_seconds, ports, rules, follows, database_url } => {
            let binary = std::env::current_exe().context("cannot find the weft binary")?;
            let database_url = database_url.filter(|u| !u.is_empty());
            let config = weft_bench::packets::PacketsConfig {
                runs,
                seconds,
                flood_rate,
                flood_seconds,
                ports,
                rules,
                binary,
                database_url,
                follows,
            };
            let report = tokio::task::spawn_blocking(move || weft_bench::packets::run_bench(&config)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCommand::Cni { pods, runs, concurrent } => {
            let exe = std::env::current_exe().context("the weft executable")?;
            let plugin = exe.with_file_name("weft-cni");
            anyhow::ensure!(plugin.exists(), "no {} beside weft: cargo build --release builds it", plugin.display());
            let config = weft_bench::cni::CniBenchConfig { pods, runs, concurrent, plugin };
            print!("{}", weft_bench::cni::run(config).await?);
            Ok(())
        }
        BenchCommand::Ipam { database_url, allocations, batch } => {
            let config = weft_bench::ipam::IpamBenchConfig { database_url, allocations, batch };
            print!("{}", weft_bench::ipam::run(config).await?);
            Ok(())
        }
        BenchCommand::Kube { database_url, namespaces, pods, policies, changes, burst, nodes, addresses } => {
            let addresses = match addresses.as_str() {
                "status" => weft_bench::kube::Addresses::Status,
                _ => weft_bench::kube::Addresses::Ipam,
            };
            let config = weft_bench::kube::KubeBenchConfig {
                database_url,
                namespaces,
                pods,
                policies,
                changes,
                burst,
                nodes,
                addresses,
            };
            print!("{}", weft_bench::kube::run(config).await?);
            Ok(())
        }
        BenchCommand::Fanout {
            database_url,
            agents,
            namespaces,
            pods_per_namespace,
            writes,
            cluster_policies,
            connections_per_port_minute,
            flows_for,
        } => {
            let config = weft_bench::fanout::FanoutConfig {
                database_url,
                agents,
                shape: weft_compiler_shape(namespaces, pods_per_namespace, agents),
                writes,
                weft_exe: std::env::current_exe().context("the weft executable")?,
                cluster_policies,
                connections_per_port_minute,
                flows_for,
            };
            print!("{}", weft_bench::fanout::fanout(config).await?);
            Ok(())
        }
        BenchCommand::Memory { size, cluster_policies, flow_seconds, connections_per_port_minute, flow_memory } => {
            let flows = (flow_seconds > 0).then_some(weft_bench::memory::FlowLoad {
                seconds: flow_seconds,
                per_port_minute: connections_per_port_minute,
                budget: flow_memory,
            });
            print!("{}", weft_bench::memory::run(&size.shape(), cluster_policies, flows)?);
            Ok(())
        }
        BenchCommand::Compiler { shape, size, dense_pods, dense_policies, changes, cluster_policies } => {
            let workload = if shape == "dense" {
                weft_bench::compiler::Workload::Dense { pods: dense_pods, policies: dense_policies, nodes: size.nodes }
            } else {
                weft_bench::compiler::Workload::Realistic(size.shape())
            };
            // The incremental compiler first, so that the memory it reports is its own.
            let incremental = match (&workload, changes > 0) {
                (weft_bench::compiler::Workload::Realistic(shape), true) => {
                    Some(weft_bench::compiler::incremental(shape, changes))
                }
                _ => None,
            };
            print!("{}", weft_bench::compiler::run(&workload));
            if let (weft_bench::compiler::Workload::Realistic(shape), true) = (&workload, cluster_policies > 0) {
                print!("{}", weft_bench::compiler::tiered(shape, cluster_policies, 5));
            }
            if let Some(report) = incremental {
                print!("{report}");
            }
            Ok(())
        }
    }
}

fn weft_compiler_shape(namespaces: usize, pods_per_namespace: usize, nodes: usize) -> weft_bench::compiler::Shape {
    weft_bench::compiler::Shape { namespaces, pods_per_namespace, nodes, ..weft_bench::compiler::Shape::antrea() }
}
