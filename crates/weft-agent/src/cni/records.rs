//! What the agent wired for each attachment (a sandbox's interface), kept on disk so that DEL,
//! CHECK, GC and a restarted agent know what is theirs: one file per (container id, ifname),
//! written before the wiring starts and marked wired once it is whole, so an agent that died
//! halfway finds what it left.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    /// The sandbox's namespace, as the runtime named it.
    pub netns: String,
    pub project: String,
    pub name: String,
    pub port: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The node side's name: the port's interface.
    pub host_interface: String,
    pub addresses: Vec<IpAddr>,
    /// False from the moment the wiring starts until it is whole.
    pub wired: bool,
}

/// The records' directory.
#[derive(Debug, Clone)]
pub struct Records(PathBuf);

impl Records {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Records> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Records(dir))
    }

    /// `<container id>:<ifname>.json`: neither may hold a `:` (nor a `/`), so names never
    /// collide and never leave the directory.
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.0.join(format!("{container_id}:{ifname}.json"))
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Option<Record> {
        let bytes = std::fs::read(self.path(container_id, ifname)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, record: &Record) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        crate::state::write_atomically(&self.path(&record.container_id, &record.ifname), &bytes)
    }

    pub fn remove(&self, container_id: &str, ifname: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(container_id, ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record; one that cannot be read is logged and skipped.
    pub fn all(&self) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "an unreadable CNI record"),
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        out
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}
