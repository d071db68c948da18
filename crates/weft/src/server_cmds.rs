//! `weft server`: its flags, made into the server's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::common::{parse_duration, shutdown_signal};

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
    /// How long the flow log keeps a flow the controllers wrote (`weft flows`, GET /v1/flows).
    #[arg(long, env = "WEFT_FLOW_LOG_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub flow_log_retention: Duration,
    /// How long the per-minute rollups of what the nodes' ports did are kept (the graph, the
    /// per-rule hit counts).
    #[arg(long, env = "WEFT_FLOW_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub flow_retention: Duration,
    /// What the controller's flows in memory may take (the newest records and the last hour
    /// of the nodes' windows, half each; estimated), e.g. 256MiB or 1GiB: past it the oldest
    /// go, counted.
    #[arg(long, env = "WEFT_FLOW_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub flow_memory: usize,
    /// How long an address a port released is not handed out again (conntrack and neighbour
    /// entries on other nodes may still point at it).
    #[arg(long, env = "WEFT_ADDRESS_REUSE_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub address_reuse_grace: Duration,
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

/// Parses `256MiB`, `1GiB`, `512KiB` (or plain bytes): at least 1 MiB.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = number.parse().map_err(|_| format!("{s:?} is not a size like 256MiB or 1GiB"))?;
    let bytes = match unit {
        "" => Some(n),
        "KiB" => n.checked_mul(1 << 10),
        "MiB" => n.checked_mul(1 << 20),
        "GiB" => n.checked_mul(1 << 30),
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use KiB, MiB or GiB")),
    };
    bytes.filter(|b| *b >= 1 << 20).ok_or_else(|| format!("{s:?}: give at least 1MiB"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerRole {
    All,
    Api,
    Control,
}

/// Runs the server until SIGINT or SIGTERM. Every flag is taken apart here, so one that is
/// added and never used does not compile.
pub async fn run(args: ServerArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let ServerArgs {
        listen,
        database_url,
        tls_cert,
        tls_key,
        insecure_no_auth,
        grpc_address,
        change_retention,
        flow_log_retention,
        flow_retention,
        flow_memory,
        address_reuse_grace,
        db_max_connections,
        role,
        grpc_listen,
        grpc_tls_cert,
        grpc_tls_key,
        // Handled before logging starts (main.rs): it prints and exits.
        print_config: _,
    } = args;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls_files = |cert, key| match (cert, key) {
        (Some(cert), Some(key)) => Some(weft_api::tls::TlsFiles { cert, key }),
        _ => None,
    };
    let config = weft_server::ServerConfig {
        listen,
        // DATABASE_URL is the variable every PostgreSQL tool reads; WEFT_DATABASE_URL wins.
        database_url: database_url.or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())),
        data_dir,
        tls: tls_files(tls_cert, tls_key),
        auth_enabled: !insecure_no_auth,
        grpc_address,
        change_retention,
        flow_log_retention,
        flow_retention,
        flow_memory,
        address_reuse_grace,
        max_connections: db_max_connections,
        role: match role {
            ServerRole::All => weft_server::Role::All,
            ServerRole::Api => weft_server::Role::Api,
            ServerRole::Control => weft_server::Role::Control,
        },
        grpc_listen,
        grpc_tls: tls_files(grpc_tls_cert, grpc_tls_key),
    };
    weft_server::run(config, shutdown_signal()).await.context("weft server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units_and_a_tiny_one_is_refused() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        assert!(parse_size("12KiB").unwrap_err().contains("at least 1MiB"));
        assert!(parse_size("1TB").unwrap_err().contains("unknown unit"));
    }
}
