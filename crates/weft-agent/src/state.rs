//! What the agent keeps in `--state-dir` (mode 0700, every file 0600: a span names every pod
//! of the node, its addresses and its policy): its node credential, and the last span it
//! applied with its revision, so that a restarted agent enforces it before the controller
//! answers.
//!
//! The span is `span.json` (a whole span with its [`FORMAT`], written atomically: temporary
//! file, then rename)
//! plus `span.log`, the updates applied since, one JSON line each, appended and synced before
//! the agent acks them. An update costs what it changes, not what the node holds: rewriting
//! the whole span on every update made a node of many pods spend its time writing (issue 17:
//! with 200 agents on 2 cores the server waited on their acks). The log is folded into a new
//! `span.json` once it outgrows it.
//!
//! ```text
//!   snapshot ─► span.json (rename) ─► span.log emptied
//!   delta ──► span.log += {"revision":R,"delta":{..}} (fsync) ─► ack
//!   start ──► span.json, then each line of span.log after its revision (a torn last line,
//!             never acked, is left out)
//! ```

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_compiler::{NodeSpan, SpanDelta};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub node: String,
    pub revision: i64,
    pub span: NodeSpan,
}

/// The format of `span.json` (and of the `span.log` that goes with it) this agent writes. A
/// file of a format it does not know (written by a newer agent before a downgrade) is not
/// read: the agent then starts as a new node does, from the kernel's table and the
/// controller's snapshot, rather than failing or misreading it. A file without a format is
/// of format 1, the first.
pub const FORMAT: u32 = 1;

/// `span.json` as written.
#[derive(Serialize)]
struct SavedFile<'a> {
    format: u32,
    #[serde(flatten)]
    saved: &'a Saved,
}

/// The part of `span.json` read first: which format it is.
#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    format: Option<u32>,
}

/// One line of `span.log`.
#[derive(Debug, Serialize, Deserialize)]
struct Logged<D> {
    revision: i64,
    delta: D,
}

/// The log is folded into `span.json` once it is this much bigger than it (and at least
/// [`MIN_FOLD_BYTES`]): replaying it at start then costs about what reading the span does.
const FOLD_RATIO: u64 = 1;
const MIN_FOLD_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> std::io::Result<StateDir> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(StateDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn base(&self) -> PathBuf {
        self.0.join("span.json")
    }

    fn log(&self) -> PathBuf {
        self.0.join("span.log")
    }

    pub fn credential(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.0.join("credential")).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    pub fn save_credential(&self, credential: &str) -> std::io::Result<()> {
        write_atomically(&self.0.join("credential"), format!("{credential}\n").as_bytes())
    }

    /// The last applied span, when there is one for this node and it reads back: the saved
    /// span with the logged updates after it applied.
    pub fn load(&self, node: &str) -> Option<Saved> {
        let bytes = std::fs::read(self.base()).ok()?;
        match serde_json::from_slice::<Format>(&bytes).map(|f| f.format.unwrap_or(1)) {
            Ok(FORMAT) => {}
            Ok(other) => {
                tracing::warn!(
                    format = other,
                    known = FORMAT,
                    "the saved span is of a format this agent does not know; starting from the kernel's table and the controller's snapshot"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved span does not read back; ignoring it");
                return None;
            }
        }
        let mut saved = match serde_json::from_slice::<Saved>(&bytes) {
            Ok(saved) if saved.node == node => saved,
            Ok(saved) => {
                tracing::warn!(saved = %saved.node, node, "the state dir holds another node's span; ignoring it");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved span does not read back; ignoring it");
                return None;
            }
        };
        if let Ok(file) = std::fs::File::open(self.log()) {
            for line in std::io::BufReader::new(file).lines() {
                // A line cut short by a crash was never acked: it and anything after it (there
                // is nothing) are left out, and the controller sends them again.
                let Ok(line) = line else { break };
                let Ok(logged) = serde_json::from_str::<Logged<SpanDelta>>(&line) else { break };
                if logged.revision > saved.revision {
                    saved.span.apply(&logged.delta);
                    saved.revision = logged.revision;
                }
            }
        }
        Some(saved)
    }

    /// Saves a whole span (after a snapshot, or when the log has grown): the log starts anew.
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&SavedFile { format: FORMAT, saved }).map_err(std::io::Error::other)?;
        write_atomically(&self.base(), &bytes)?;
        // The log's lines are all at or below the saved revision now: a crash before this
        // leaves them, and loading skips them.
        match std::fs::remove_file(self.log()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records an update applied on top of what is saved: `delta`, which brought the span to
    /// `now` (whose revision it has). Durable when this returns.
    pub fn append(&self, delta: &SpanDelta, now: &Saved) -> std::io::Result<()> {
        let base = match std::fs::metadata(self.base()) {
            Ok(m) => m.len(),
            // Nothing to append to: the whole span, then.
            Err(_) => return self.save(now),
        };
        let mut line = serde_json::to_vec(&Logged { revision: now.revision, delta }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = open_private(&self.log(), std::fs::OpenOptions::new().append(true).create(true))?;
        file.write_all(&line)?;
        file.sync_data()?;
        if file.metadata()?.len() > (base * FOLD_RATIO).max(MIN_FOLD_BYTES) {
            self.save(now)?;
        }
        Ok(())
    }
}

fn open_private(path: &Path, options: &mut std::fs::OpenOptions) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = open_private(&tmp, std::fs::OpenOptions::new().write(true).create(true).truncate(true))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use uuid::Uuid;
    use weft_compiler::{Isolation, PortPolicy};

    use super::*;

    fn port(i: u32) -> PortPolicy {
        PortPolicy {
            project: "p".into(),
            name: format!("pod-{i}"),
            addresses: vec![std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])],
            refused_addresses: vec![],
            interface: format!("weft{i:011x}"),
            instance: None,
            named_ports: Arc::new(BTreeMap::new()),
            ingress: Isolation::Open,
            egress: Isolation::Open,
            policies: Default::default(),
        }
    }

    fn dir() -> StateDir {
        let path = std::env::temp_dir().join(format!("weft-state-test-{}", Uuid::new_v4().simple()));
        StateDir::new(path).expect("a state dir")
    }

    /// A span saved by an agent of another format is not read (issue 19, item 9); one saved
    /// before formats were written is format 1.
    #[test]
    fn a_saved_span_of_an_unknown_format_is_left_alone_and_one_without_is_the_first() {
        let state = dir();
        let saved = Saved { node: "n1".into(), revision: 3, span: NodeSpan::default() };
        state.save(&saved).expect("saved");
        let text = std::fs::read_to_string(state.base()).expect("written");
        assert!(text.starts_with(&format!("{{\"format\":{FORMAT},")), "{text}");
        assert_eq!(state.load("n1"), Some(saved.clone()));
        let unversioned = serde_json::to_vec(&saved).expect("encodes");
        std::fs::write(state.base(), unversioned).expect("written");
        assert_eq!(state.load("n1"), Some(saved.clone()), "no format: the first");
        let future =
            text.replacen(&format!("\"format\":{FORMAT}"), "\"format\":99", 1).replace("\"span\":", "\"spans\":");
        std::fs::write(state.base(), future).expect("written");
        assert_eq!(state.load("n1"), None, "format 99 is not read, whatever its shape");
        let _ = std::fs::remove_dir_all(state.path());
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Issue 17, finding 7: an update's cost on disk is what it changes. The saved span of a
    /// node of 5,000 ports is not rewritten for a port that comes and goes; the log grows by
    /// a line of the delta's size, and a restart reads back exactly what was applied.
    #[test]
    fn an_update_appends_what_it_changes_and_loading_replays_it() {
        let state = dir();
        let mut saved = Saved { node: "n1".into(), revision: 7, ..Saved::default() };
        for i in 0..5000 {
            saved.span.ports.insert(Uuid::from_u128(u128::from(i)), port(i));
        }
        state.save(&saved).expect("saved");
        let base = size(&state.base());
        let modified = std::fs::metadata(state.base()).and_then(|m| m.modified()).ok();
        for (revision, i) in [(8, 9000), (9, 9001)] {
            let delta =
                SpanDelta { ports_upserted: [(Uuid::from_u128(i), port(i as u32))].into(), ..SpanDelta::default() };
            saved.span.apply(&delta);
            saved.revision = revision;
            state.append(&delta, &saved).expect("appended");
        }
        let removed = SpanDelta { ports_removed: [Uuid::from_u128(0)].into(), ..SpanDelta::default() };
        saved.span.apply(&removed);
        saved.revision = 10;
        state.append(&removed, &saved).expect("appended");
        assert_eq!(size(&state.base()), base, "span.json was rewritten");
        assert_eq!(std::fs::metadata(state.base()).and_then(|m| m.modified()).ok(), modified);
        assert!(size(&state.log()) < 2_000, "three small updates took {} bytes", size(&state.log()));
        assert_eq!(state.load("n1"), Some(saved.clone()));

        // A crash in the middle of an append leaves a torn line: what was acked comes back.
        let mut log = std::fs::OpenOptions::new().append(true).open(state.log()).expect("the log");
        log.write_all(b"{\"revision\":11,\"delta\":{\"ports_rem").expect("written");
        assert_eq!(state.load("n1"), Some(saved.clone()));
        // A snapshot starts the log anew; lines at or below a saved revision are skipped.
        saved.revision = 12;
        state.save(&saved).expect("saved");
        assert!(!state.log().exists());
        assert_eq!(state.load("n1"), Some(saved));
        let _ = std::fs::remove_dir_all(state.path());
    }

    #[test]
    fn the_log_is_folded_into_the_span_once_it_outgrows_it() {
        let state = dir();
        let mut saved = Saved { node: "n1".into(), revision: 1, ..Saved::default() };
        state.save(&saved).expect("saved");
        for revision in 2..100_000 {
            let i = revision as u32;
            let delta =
                SpanDelta { ports_upserted: [(Uuid::from_u128(i.into()), port(i))].into(), ..SpanDelta::default() };
            saved.span.apply(&delta);
            saved.revision = revision;
            state.append(&delta, &saved).expect("appended");
            if !state.log().exists() {
                break;
            }
        }
        assert!(!state.log().exists(), "the log was never folded");
        let folded: Saved = serde_json::from_slice(&std::fs::read(state.base()).expect("span.json")).expect("a span");
        assert_eq!(folded, saved, "span.json holds everything once folded");
        assert_eq!(state.load("n1"), Some(saved));
        let _ = std::fs::remove_dir_all(state.path());
    }

    #[test]
    fn everything_in_the_state_dir_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let state = dir();
        let saved = Saved { node: "n1".into(), revision: 1, ..Saved::default() };
        state.save(&saved).expect("saved");
        state.append(&SpanDelta::default(), &Saved { revision: 2, ..saved }).expect("appended");
        state.save_credential("weftn_x").expect("saved");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(state.path()), 0o700);
        for file in ["span.json", "span.log", "credential"] {
            assert_eq!(mode(&state.path().join(file)), 0o600, "{file}");
        }
        let _ = std::fs::remove_dir_all(state.path());
    }
}
