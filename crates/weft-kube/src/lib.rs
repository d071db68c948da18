//! kube-manager (DESIGN.md §1, §3-§4): Kubernetes Namespaces, Pods and NetworkPolicies become
//! weft's projects, ports and security groups, written through the REST API like any client.
//!
//! ```text
//!   manifests dir ─┐                                      ┌─ create / replace / delete
//!   cluster watch ─┴─► translate (pure) ─► Desired ─► plan ┤   of owned objects, in batches
//!                                          Current ◄─ list ┘   (POST /v1/batch)
//! ```
//!
//! [`cluster`] follows a cluster (list, watch, leader election through a [`lease`]) into a
//! synchronous [`index`] of it, and its Nodes' pod CIDRs into the pod network's blocks
//! ([`nodes`]); [`manifests`] reads and follows a directory instead.

pub mod cluster;
pub mod cnp;
pub mod cnp_status;
pub mod index;
pub mod lease;
pub mod manifests;
pub mod metrics;
pub mod nodes;
pub mod reconcile;
pub mod translate;

pub use cluster::{ClusterConfig, Progress};
pub use lease::LeaseConfig;
pub use manifests::{FollowError, Manifests, read_dir};
pub use metrics::KubeMetrics;
pub use reconcile::{
    Current, Desired, Mirror, Outcome, Plan, Scope, plan, reconcile, reconcile_all, reconcile_all_retrying,
    reconcile_some,
};
pub use translate::{CLUSTER_LABEL, OWNER_ANNOTATION, Options, Problem, ProblemKind};
