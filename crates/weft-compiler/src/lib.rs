//! weft's ACL compiler: projects (with labels), ports, security groups and tiered cluster
//! policies in; per node, the
//! compiled form of DESIGN.md §5 out, implementing the semantics of §4. Pure: no I/O, no async.
//!
//! ```text
//!   Change (upsert/delete, revision) ─► Cluster ─► compile() ─► node ─► NodeSpan
//!                                                                       ├ ports: PortPolicy (isolation per direction)
//!                                                                       ├ groups: CompiledGroup (rules, shared)
//!                                                                       └ sets: AddressSet (by definition, shared)
//!   eval::side(span, port, direction, packet) ─► Open | Allowed{group, rule} | Denied
//!
//!   Compiler::apply(revision, changes) ─► Deltas { per node: SpanDelta, shared: set changes }
//! ```
//!
//! `compile()` compiles from scratch and defines the output; `Compiler` keeps an index so a
//! change costs what it touches, and is tested to equal `compile()` after every batch.

pub mod cidr;
mod cluster;
mod compile;
pub mod compiled;
pub mod delta;
pub mod eval;
mod explain;
mod fast;
mod incremental;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod reference;
#[cfg(any(test, feature = "synthetic"))]
pub mod synthetic;
pub mod view;

pub use cluster::{Change, Cluster, Dangling, PortRecord};
pub use compile::{Compiled, compile};
pub use compiled::{
    AddressSet, CompiledGroup, CompiledPolicy, CompiledRule, CompiledTieredRule, Family, Isolation, NodeSpan,
    PortPolicy, SetId, TieredMatch,
};
pub use delta::{Deltas, MemberDelta, NodeName, SharedSetChange, SpanDelta, diff};
pub use eval::{Decision, Packet, Side, TieredRuleRef};
pub use explain::{AlwaysAllowed, Endpoint, Explanation};
pub use incremental::Compiler;
pub use view::PolicyView;
