//! Where a node's span is enforced. The agent hands a datapath the whole new span and the
//! delta that led to it (a kernel datapath changes only what the delta touches); a datapath
//! that fails keeps what it had.

use std::collections::BTreeMap;

use uuid::Uuid;
use weft_compiler::{NodeSpan, SpanDelta};

/// Why a datapath could not do what it was asked; the kernel's own error is kept as the
/// source where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// What was being done, and what the kernel (or the socket to it, or a program) said.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else, in a sentence.
    #[error("{0}")]
    Other(String),
}

impl DatapathError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
        let context = context.into();
        move |source| DatapathError::Io { context, source }
    }
}

/// The ports of a span whose interface the agent refuses to bind, and why: one that is not a
/// port's interface (no weft prefix, not a valid name: the node's own links, `lo`, a name
/// written before the API checked them), or one that two ports of the node name (neither can
/// be trusted with the other's traffic). The agent reports these with its ack (issue 17).
pub fn refused_interfaces(span: &NodeSpan) -> BTreeMap<Uuid, String> {
    let mut named: BTreeMap<&str, usize> = BTreeMap::new();
    for port in span.ports.values() {
        *named.entry(port.interface.as_str()).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for (id, port) in &span.ports {
        if let Err(e) = weft_model::syntax::port_interface(&port.interface) {
            out.insert(*id, e);
        } else if named[port.interface.as_str()] > 1 {
            out.insert(
                *id,
                format!(
                    "interface {} is named by {} ports of this node",
                    port.interface,
                    named[port.interface.as_str()]
                ),
            );
        }
    }
    out
}

/// What the agent reports with its ack: each refused interface and each address it
/// dispatches to no port, named by its port.
pub fn problems(span: &NodeSpan) -> Vec<String> {
    let refused = refused_interfaces(span);
    let mut out = Vec::new();
    for (id, port) in &span.ports {
        if let Some(why) = refused.get(id) {
            out.push(format!("port {}/{}: interface refused: {why}", port.project, port.name));
        }
        for address in &port.refused_addresses {
            out.push(format!(
                "port {}/{}: address {address} refused: another port claims it too, so it is dispatched to neither",
                port.project, port.name
            ));
        }
    }
    out
}

pub trait Datapath: Send {
    /// Enforces `new`. `old` is the span last applied and `delta` what turns it into `new`
    /// (`None`: compare with what is in force and change what differs, as after a snapshot or
    /// at start).
    fn apply(&mut self, old: &NodeSpan, new: &NodeSpan, delta: Option<&SpanDelta>) -> Result<(), DatapathError>;

    /// At start, when the agent has no saved span: keeps whatever the datapath already
    /// enforces, and where it enforces nothing, closes the ports the agent does not know yet,
    /// so no pod is open before its policy arrives.
    fn hold(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
}

/// Holds the span and nothing else: for simulated nodes and tests. `eval::side` on what it
/// holds is what the kernel datapath enforces.
#[derive(Debug, Default, Clone)]
pub struct MemoryDatapath {
    pub span: NodeSpan,
    /// How many times `apply` ran, and how many of those were from scratch.
    pub applies: usize,
    pub full: usize,
}

impl Datapath for MemoryDatapath {
    fn apply(&mut self, _old: &NodeSpan, new: &NodeSpan, delta: Option<&SpanDelta>) -> Result<(), DatapathError> {
        self.span = new.clone();
        self.applies += 1;
        self.full += usize::from(delta.is_none());
        Ok(())
    }
}

/// A shared handle on a datapath, so that tests (and `weft trace`) can look at what the agent
/// enforces while it runs.
#[derive(Debug, Default)]
pub struct Shared<D>(pub std::sync::Arc<std::sync::Mutex<D>>);

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Shared(std::sync::Arc::clone(&self.0))
    }
}

impl<D: Datapath> Datapath for Shared<D> {
    fn apply(&mut self, old: &NodeSpan, new: &NodeSpan, delta: Option<&SpanDelta>) -> Result<(), DatapathError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).apply(old, new, delta)
    }

    fn hold(&mut self) -> Result<(), DatapathError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).hold()
    }
}
