//! The compiler as the controller runs it: changes in, per-node span deltas out.
//!
//! This first version recompiles from scratch and diffs every node, so its output is exactly
//! right by construction; the incremental index that makes a change cost microseconds replaces
//! the recompilation behind the same interface (and the same tests).

use std::collections::BTreeMap;

use crate::cluster::{Change, Cluster};
use crate::compile::{Compiled, compile};
use crate::compiled::NodeSpan;
use crate::delta::{SpanDelta, diff};

#[derive(Debug, Default)]
pub struct Compiler {
    cluster: Cluster,
    current: Compiled,
}

impl Compiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the changes of one revision and returns, per node, what changed in its span
    /// (nodes whose span did not change are absent; a node that lost its last port gets a
    /// delta removing everything).
    pub fn apply(&mut self, revision: i64, changes: impl IntoIterator<Item = Change>) -> BTreeMap<String, SpanDelta> {
        for change in changes {
            self.cluster.apply(revision, change);
        }
        let next = compile(&self.cluster);
        let empty = NodeSpan::default();
        let mut deltas = BTreeMap::new();
        for node in self.current.spans.keys().chain(next.spans.keys()) {
            if deltas.contains_key(node) {
                continue;
            }
            let old = self.current.spans.get(node).unwrap_or(&empty);
            let new = next.spans.get(node).unwrap_or(&empty);
            let d = diff(old, new);
            if !d.is_empty() {
                deltas.insert(node.clone(), d);
            }
        }
        self.current = next;
        deltas
    }

    pub fn compiled(&self) -> &Compiled {
        &self.current
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The revision of the last change applied.
    pub fn revision(&self) -> i64 {
        self.cluster.revision()
    }
}
