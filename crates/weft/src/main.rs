//! The `weft` binary: parses the command line and hands over to the library that owns each
//! subcommand.

mod agent_cmds;
#[cfg(feature = "bench")]
mod bench_cmds;
mod cli;
mod client_cmds;
mod common;
mod config_file;
mod demo;
mod kube_cmds;
mod lab_cmds;
mod metrics_http;
mod output;
mod policy_cmds;
mod server_cmds;

use clap::Parser;

/// jemalloc instead of glibc's malloc: the server's memory after loading 100,000 pods varied
/// between 765 and 938 MiB from run to run with glibc (its per-thread arenas keep freed memory
/// of the load interleaved with live data); see docs/controller.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let loaded = match config_file::load(std::env::args_os().collect()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_from(&loaded.argv);
    if let cli::Command::Server(args) = &cli.command
        && args.print_config
    {
        return match config_file::print_server(&loaded) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                output::print_error(&e);
                std::process::ExitCode::FAILURE
            }
        };
    }
    cli::init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
