//! A private PostgreSQL server for `weft server` when no database URL is configured: the
//! installed `initdb` and `pg_ctl` run a cluster that listens only on a Unix socket in its own
//! directory, so it never collides with another server's port.
//!
//! PostgreSQL refuses to run as root. As root, the cluster belongs to the `postgres` user and
//! lives under `/var/tmp/weft-postgres-<hash of the data dir>`: the data dir itself may sit
//! under a directory that user cannot enter (such as /root). Otherwise it lives in
//! `<data-dir>/postgres`. Either way it persists across restarts; `<data-dir>/postgres.location`
//! says where it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl in /usr/lib/postgresql/*/bin or PATH): apt-get install postgresql, or set DATABASE_URL"
    )]
    NotInstalled,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running private server; [`PrivatePostgres::stop`] stops it.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    cluster: PathBuf,
    run_as: Option<&'static str>,
}

fn is_root() -> bool {
    // The effective uid is what matters, and /proc says it without unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Whether a private server can be started here (its binaries are installed): checked before
/// anything is created.
pub fn check_installed() -> Result<(), EmbeddedError> {
    find_bin().map(|_| ()).ok_or(EmbeddedError::NotInstalled)
}

fn find_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Highest version first.
    candidates.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()),
        )
    });
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

/// Removes the private cluster that belongs to `data_dir` (it must be stopped): as root it
/// lives outside the data dir, in /var/tmp, where removing the data dir leaves it. Only a
/// directory this module would have made is removed.
pub fn remove_cluster(data_dir: &Path) -> std::io::Result<()> {
    let location = match std::fs::read_to_string(data_dir.join("postgres.location")) {
        Ok(text) => PathBuf::from(text.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ours = location.parent() == Some(Path::new("/var/tmp"))
        && location.file_name().is_some_and(|n| n.to_string_lossy().starts_with("weft-postgres-"))
        || location.starts_with(data_dir);
    if !ours {
        return Err(std::io::Error::other(format!("{} is not a private cluster of weft's", location.display())));
    }
    match std::fs::remove_dir_all(&location) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl PrivatePostgres {
    /// Starts (initialising on first use) the private cluster that belongs to `data_dir`.
    pub async fn start(data_dir: &Path) -> Result<PrivatePostgres, EmbeddedError> {
        let bin = find_bin().ok_or(EmbeddedError::NotInstalled)?;
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let root = is_root();
        let (cluster, run_as) = if root {
            let hash = hex::encode(&Sha256::digest(data_dir.to_string_lossy().as_bytes())[..8]);
            (PathBuf::from(format!("/var/tmp/weft-postgres-{hash}")), Some("postgres"))
        } else {
            (data_dir.join("postgres"), None)
        };
        std::fs::write(data_dir.join("postgres.location"), format!("{}\n", cluster.display()))?;
        let pg = PrivatePostgres { bin, cluster, run_as };
        pg.prepare_dirs().await?;
        if !pg.data().join("PG_VERSION").exists() {
            tracing::info!(cluster = %pg.cluster.display(), "initialising a private PostgreSQL cluster");
            pg.run(
                "initdb",
                "initdb",
                &["-D", &pg.data_str(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            )
            .await?;
        }
        if pg.run("pg_ctl status", "pg_ctl", &["-D", &pg.data_str(), "status"]).await.is_ok() {
            tracing::info!("the private PostgreSQL is already running; using it");
        } else {
            let options = format!(
                "-k {} -c listen_addresses='' -c max_connections=200 -c shared_buffers=256MB",
                pg.cluster.display()
            );
            let log = pg.cluster.join("postgres.log").to_string_lossy().into_owned();
            pg.run(
                "pg_ctl start",
                "pg_ctl",
                &["-D", &pg.data_str(), "-l", &log, "-w", "-t", "60", "-o", &options, "start"],
            )
            .await?;
        }
        tracing::info!(socket_dir = %pg.cluster.display(), "private PostgreSQL is up");
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.cluster.join("data")
    }

    fn data_str(&self) -> String {
        self.data().to_string_lossy().into_owned()
    }

    /// A URL for the `postgres` database over the cluster's socket.
    pub fn url(&self) -> String {
        format!("postgres://postgres@localhost/postgres?host={}", self.cluster.display())
    }

    async fn prepare_dirs(&self) -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(&self.cluster)?;
        if let Some(user) = self.run_as {
            let status =
                Command::new("chown").args(["-R", &format!("{user}:{user}")]).arg(&self.cluster).status().await?;
            if !status.success() {
                return Err(EmbeddedError::Command { step: "chown", detail: format!("exit status {status}") });
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.cluster, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    async fn run(&self, step: &'static str, program: &str, args: &[&str]) -> Result<(), EmbeddedError> {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let output = cmd.args(args).stdin(Stdio::null()).output().await?;
        if output.status.success() {
            Ok(())
        } else {
            let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            Err(EmbeddedError::Command { step, detail })
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub async fn stop(self) -> Result<(), EmbeddedError> {
        self.run("pg_ctl stop", "pg_ctl", &["-D", &self.data_str(), "-m", "fast", "-w", "stop"]).await
    }
}
