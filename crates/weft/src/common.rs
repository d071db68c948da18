//! What several commands share: how to reach the API ([`ClientArgs`], [`client`]), the
//! output format, durations on the command line, secrets in files, and the shutdown signal.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use weft_client::Client;

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
    pub ca: Option<std::path::PathBuf>,
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

pub fn client(args: &ClientArgs, data_dir: &Path) -> anyhow::Result<Client> {
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None => {
            let path = data_dir.join("admin.token");
            std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string())
        }
    };
    Ok(Client::new(&args.server, token, args.ca.as_deref())?)
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

/// A secret kept in a file, without the line end an editor or `echo` adds.
pub fn secret_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = text.trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
