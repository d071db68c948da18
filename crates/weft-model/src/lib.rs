//! weft's domain: the four resources of the config service (projects, virtual networks,
//! security groups, ports), their validation, Kubernetes label selectors, and the flows the
//! datapath reports.
//!
//! Everything here is plain data and pure functions, shared by the store, the API, the client
//! and the compiler:
//!
//! ```text
//!   JSON body ──serde──► Project / VirtualNetwork / SecurityGroup / Port ──validate()──► store
//!                                                      │
//!                                      LabelSelector::matches(labels)
//! ```

pub mod cluster_policy;
pub mod flow;
mod resource;
mod rule;
pub mod selector;
pub mod syntax;
pub mod validation;

pub use cluster_policy::{
    ClusterPolicy, ClusterPolicyStatus, PolicyAction, PolicyProtocol, PolicyRemote, PolicySubject, Tier, TieredRule,
};
pub use resource::{
    DEFAULT_GROUP, Kind, MAX_PORT_IPS, MAX_RULES, NamedPort, NodeBlocks, Port, Project, Resource, SecurityGroup,
    Subnet, VirtualNetwork, both_directions, member_group,
};
pub use rule::{
    Direction, Ethertype, IcmpMatch, PortMatch, Protocol, Remote, Rule, RuleOrigin, canonical_net, port_number,
};
pub use selector::{LabelSelector, Labels, MatchLabels, Operator, Requirement};
pub use validation::{FieldError, ValidationErrors, Validator};

/// Entries in a list field (subnets, ports of a rule, except prefixes, groups of a port).
pub const MAX_LIST_LEN: usize = 256;

/// The REST API's request bodies take at most this many bytes (a security group of 4,096
/// rules fits); clients split what they send to stay under it.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Operations in one batch (`POST /v1/batch`) at most.
pub const MAX_BATCH_OPERATIONS: usize = 10_000;

/// A reference to a project-scoped object: `name` (in the referrer's project) or
/// `project/name` (Tungsten Fabric's fq_name, in another project).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectRef<'a> {
    pub project: Option<&'a str>,
    pub name: &'a str,
}

impl<'a> ObjectRef<'a> {
    pub fn parse(s: &'a str) -> Result<Self, String> {
        let (project, name) = match s.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, s),
        };
        if let Some(p) = project {
            syntax::dns_subdomain(p).map_err(|e| format!("project part of {s:?}: {e}"))?;
        }
        syntax::dns_subdomain(name).map_err(|e| format!("reference {s:?}: {e}"))?;
        Ok(ObjectRef { project, name })
    }

    /// The project the reference points into, given the referrer's.
    pub fn project_or(&self, own: &'a str) -> &'a str {
        self.project.unwrap_or(own)
    }
}

/// The host-side interface name of a port that does not name one (DESIGN.md §7): `weft` and
/// 11 hex digits of a 64-bit FNV-1a hash of `project/name`, 15 characters in all (Linux's
/// limit). FNV is used because it is tiny, stable across releases and platforms, and a CNI
/// plugin in any language can compute it.
pub fn default_interface(project: &str, name: &str) -> String {
    let hash = fnv1a64(format!("{project}/{name}").as_bytes());
    format!("{}{:011x}", syntax::INTERFACE_PREFIX, hash >> 20)
}

/// What a caught panic said (its `&str` or `String` payload), for the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// FNV-1a, 64 bits: stable across releases and platforms, for names derived from content
/// (interface names here, rule comments and set names in the agent).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Applies an RFC 7396 JSON merge patch to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_refs() {
        assert_eq!(ObjectRef::parse("web").unwrap(), ObjectRef { project: None, name: "web" });
        assert_eq!(ObjectRef::parse("k8s-a/web").unwrap().project_or("x"), "k8s-a");
        assert!(ObjectRef::parse("a/b/c").is_err());
        assert!(ObjectRef::parse("/web").is_err());
    }

    #[test]
    fn default_interface_is_short_and_stable() {
        let a = default_interface("k8s-default", "yelb-ui");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert_eq!(a, default_interface("k8s-default", "yelb-ui"));
        assert_ne!(a, default_interface("k8s-default", "yelb-db"));
        // docs/cni.md gives this name as the worked example a CNI plugin can check against.
        assert_eq!(a, "weft0ab4915f708");
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut doc = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &serde_json::json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, serde_json::json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut doc, &serde_json::json!({"c": ["x"]}));
        assert_eq!(doc["c"], serde_json::json!(["x"]));
    }
}
