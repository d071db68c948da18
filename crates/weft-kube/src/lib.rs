//! kube-manager (DESIGN.md §1, §3-§4): Kubernetes Namespaces, Pods and NetworkPolicies become
//! weft's projects, ports and security groups, written through the REST API like any client.
//!
//! ```text
//!   manifests dir ─┐                                      ┌─ create / replace / delete
//!   (cluster: next)┴─► translate (pure) ─► Desired ─► plan ┤   of owned objects, in batches
//!                                          Current ◄─ list ┘   (POST /v1/batch)
//! ```

pub mod manifests;
pub mod reconcile;
pub mod translate;

pub use manifests::{Manifests, read_dir};
pub use reconcile::{Current, Desired, Outcome, Plan, plan, reconcile};
pub use translate::{CLUSTER_LABEL, OWNER_ANNOTATION, Options, Problem};
