//! What the agent keeps in `--state-dir`: its node credential (mode 0600) and the last span it
//! applied with its revision, written atomically (temporary file, then rename) so that a crash
//! leaves the old or the new state, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_compiler::NodeSpan;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub node: String,
    pub revision: i64,
    pub span: NodeSpan,
}

#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> std::io::Result<StateDir> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        Ok(StateDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn credential(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.0.join("credential")).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    pub fn save_credential(&self, credential: &str) -> std::io::Result<()> {
        write_atomically(&self.0.join("credential"), format!("{credential}\n").as_bytes(), true)
    }

    /// The last applied span, when there is one for this node and it reads back.
    pub fn load(&self, node: &str) -> Option<Saved> {
        let bytes = std::fs::read(self.0.join("span.json")).ok()?;
        match serde_json::from_slice::<Saved>(&bytes) {
            Ok(saved) if saved.node == node => Some(saved),
            Ok(saved) => {
                tracing::warn!(saved = %saved.node, node, "the state dir holds another node's span; ignoring it");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved span does not read back; ignoring it");
                None
            }
        }
    }

    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
        write_atomically(&self.0.join("span.json"), &bytes, false)
    }
}

fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
