//! weft's CNI plugin (DESIGN.md §9). A container runtime execs `weft-cni` for every call on a
//! pod's network; the plugin forwards the call to the node's agent over a unix socket and prints
//! its answer, doing no network or policy work of its own: the agent knows the node's ports and
//! their policy, and wires the pod once that policy is in the kernel.
//!
//! ```text
//!   runtime ─exec─► weft-cni (CNI_* env + conflist on stdin)
//!                     │ VERSION: answered here
//!                     └─ POST /v1/cni over /run/weft/cni.sock ─► weft agent ─► result / error JSON
//!                        agent away: ADD, CHECK, GC → 11; STATUS → 50; DEL → queued, success
//! ```
//!
//! The library holds the spec's types, which the agent uses to read calls and write answers.

pub mod http;
pub mod shim;
pub mod spec;

pub use spec::{AddResult, Attachment, CniError, Command, NetConf, Request, VersionInfo, code};
