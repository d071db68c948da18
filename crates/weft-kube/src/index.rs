//! kube-manager's copy of the cluster, apart from its runtime: the objects of the three
//! watches, what changed since the last reconciliation and whether the next one must be
//! full. Synchronous and without I/O, so the rules for reacting to events are tested here
//! with plain tests:
//!
//! - nothing is reconciled before all three watches have listed;
//! - a (re)list replaces a watch's objects at once, when it is done, and asks for a full
//!   reconciliation (what was deleted meanwhile is known only to a whole comparison);
//! - a namespace that goes asks for a full one (its project goes with what is in it);
//! - a namespace that arrives after its pods and policies pulls them in (they were left out
//!   as orphans until it came);
//! - any other event marks only its object changed;
//! - ClusterNetworkPolicies are reconciled once their watch has listed, and never wait for it
//!   (a cluster without the CRD never lists them): until then weft's cluster policies are left
//!   as they are.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::cnp::ClusterNetworkPolicy;
use crate::reconcile::{Desired, Scope};
use crate::translate::{Options, Problem, ProblemKind};

/// One watch event, of any of the kinds watched.
#[derive(Debug)]
pub enum Input {
    Namespace(Event<Namespace>),
    Pod(Box<Event<Pod>>),
    Policy(Event<NetworkPolicy>),
    ClusterPolicy(Box<Event<ClusterNetworkPolicy>>),
}

/// The objects changed since the last reconciliation, by (namespace, name).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    pub namespaces: BTreeSet<String>,
    pub pods: BTreeSet<(String, String)>,
    pub policies: BTreeSet<(String, String)>,
    /// ClusterNetworkPolicies, by name.
    pub cluster_policies: BTreeSet<String>,
    /// Every ClusterNetworkPolicy: their watch listed (again), and weft's cluster policies are
    /// compared with all of them, and only them (the rest of the cluster needs no full
    /// reconciliation for it).
    pub all_cluster_policies: bool,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.policies.is_empty()
            && self.cluster_policies.is_empty()
            && !self.all_cluster_policies
    }

    /// Whether `problem` is about one of these objects.
    pub fn touches(&self, problem: &Problem) -> bool {
        let key = || (problem.namespace.clone().unwrap_or_default(), problem.name.clone());
        match problem.kind {
            ProblemKind::Namespace => self.namespaces.contains(&problem.name),
            ProblemKind::Pod => self.pods.contains(&key()),
            ProblemKind::NetworkPolicy => self.policies.contains(&key()),
            ProblemKind::ClusterNetworkPolicy => {
                self.all_cluster_policies || self.cluster_policies.contains(&problem.name)
            }
            ProblemKind::Weft(_) => false,
        }
    }
}

/// What a reconciliation of only the changed objects writes: their translation, and the
/// scope of the config service it compares with (so what is gone is deleted).
#[derive(Debug)]
pub struct PartialWork {
    pub desired: Desired,
    pub scope: Scope,
    pub changed: Changed,
}

/// The cluster as watched.
#[derive(Debug)]
pub struct ClusterIndex {
    namespaces: Watched<Namespace>,
    pods: Watched<Pod>,
    policies: Watched<NetworkPolicy>,
    cluster_policies: Watched<ClusterNetworkPolicy>,
    changed: Changed,
    full: bool,
}

impl Default for ClusterIndex {
    fn default() -> Self {
        ClusterIndex::new()
    }
}

impl ClusterIndex {
    /// An index that has listed nothing; its first reconciliation is a full one.
    pub fn new() -> ClusterIndex {
        ClusterIndex {
            namespaces: Watched::default(),
            pods: Watched::default(),
            policies: Watched::default(),
            cluster_policies: Watched::default(),
            changed: Changed::default(),
            full: true,
        }
    }

    /// Takes in one watch event.
    pub fn take(&mut self, input: Input) {
        match input {
            Input::Namespace(e) => match self.namespaces.absorb(e) {
                Absorbed::Changed((_, name), new) => {
                    if !self.namespaces.objects.contains_key(&(String::new(), name.clone())) {
                        self.full = true;
                    } else if new {
                        let of_it = |(ns, _): &&(String, String)| *ns == name;
                        self.changed.pods.extend(self.pods.objects.keys().filter(of_it).cloned());
                        self.changed.policies.extend(self.policies.objects.keys().filter(of_it).cloned());
                    }
                    self.changed.namespaces.insert(name);
                }
                Absorbed::Listed => self.full = true,
                Absorbed::Nothing => {}
            },
            Input::Pod(e) => match self.pods.absorb(*e) {
                Absorbed::Changed(key, _) => {
                    self.changed.pods.insert(key);
                }
                Absorbed::Listed => self.full = true,
                Absorbed::Nothing => {}
            },
            Input::Policy(e) => match self.policies.absorb(e) {
                Absorbed::Changed(key, _) => {
                    self.changed.policies.insert(key);
                }
                Absorbed::Listed => self.full = true,
                Absorbed::Nothing => {}
            },
            Input::ClusterPolicy(e) => match self.cluster_policies.absorb(*e) {
                Absorbed::Changed((_, name), _) => {
                    self.changed.cluster_policies.insert(name);
                }
                Absorbed::Listed => self.changed.all_cluster_policies = true,
                Absorbed::Nothing => {}
            },
        }
    }

    /// Whether the namespaced watches have listed (before that, nothing is reconciled).
    pub fn listed(&self) -> bool {
        self.namespaces.listed && self.pods.listed && self.policies.listed
    }

    /// Whether the next reconciliation must be a full one.
    pub fn wants_full(&self) -> bool {
        self.full
    }

    /// Asks for a full reconciliation next (a resync is due, or a write failed and what the
    /// config service holds is no longer known).
    pub fn want_full(&mut self) {
        self.full = true;
    }

    /// Whether there is anything to reconcile.
    pub fn has_work(&self) -> bool {
        self.listed() && (self.full || !self.changed.is_empty())
    }

    /// The translation of the whole cluster; what changed is part of it, so it is forgotten.
    /// Call [`ClusterIndex::full_done`] once it is written.
    pub fn desired_all(&mut self, o: &Options) -> Desired {
        self.changed = Changed::default();
        let mut desired = Desired::of(
            self.namespaces.objects.values(),
            self.pods.objects.values(),
            self.policies.objects.values(),
            o,
        );
        if self.cluster_policies.listed {
            desired.cluster_policies = Some(Default::default());
            for cnp in self.cluster_policies.objects.values() {
                desired.add_cluster_policy(cnp, o);
            }
        }
        desired
    }

    /// A full reconciliation was written.
    pub fn full_done(&mut self) {
        self.full = false;
    }

    /// The translation of what changed since the last reconciliation, which is forgotten.
    pub fn desired_changed(&mut self, o: &Options) -> PartialWork {
        let changed = std::mem::take(&mut self.changed);
        let project = |ns: &str| o.project(ns);
        // The namespaces touched, and with them their projects, planned from the namespaces
        // (one that went has made the reconciliation a full one).
        let namespaces: BTreeSet<&str> = changed
            .namespaces
            .iter()
            .map(String::as_str)
            .chain(changed.pods.iter().chain(&changed.policies).map(|(ns, _)| ns.as_str()))
            .collect();
        let scope = Scope {
            projects: namespaces.iter().map(|ns| project(ns)).collect(),
            ports: changed.pods.iter().map(|(ns, name)| (project(ns), name.clone())).collect(),
            groups: changed.policies.iter().map(|(ns, name)| (project(ns), name.clone())).collect(),
            cluster_policies: changed.cluster_policies.iter().map(|name| crate::cnp::policy_name(name, o)).collect(),
            all_cluster_policies: changed.all_cluster_policies,
        };
        let mut desired = Desired::default();
        for name in &namespaces {
            if let Some(ns) = self.namespaces.objects.get(&(String::new(), name.to_string())) {
                desired.add_namespace(ns, o);
            }
        }
        let known = |p: &str| {
            p.strip_prefix(o.project_prefix.as_str())
                .is_some_and(|ns| self.namespaces.objects.contains_key(&(String::new(), ns.to_string())))
        };
        for key in &changed.pods {
            if let Some(pod) = self.pods.objects.get(key) {
                desired.add_pod(pod, &known, o);
            }
        }
        for key in &changed.policies {
            if let Some(np) = self.policies.objects.get(key) {
                desired.add_policy(np, &known, o);
            }
        }
        if changed.all_cluster_policies {
            desired.cluster_policies = Some(Default::default());
            for cnp in self.cluster_policies.objects.values() {
                desired.add_cluster_policy(cnp, o);
            }
        } else if !changed.cluster_policies.is_empty() {
            desired.cluster_policies = Some(Default::default());
            for name in &changed.cluster_policies {
                if let Some(cnp) = self.cluster_policies.objects.get(&(String::new(), name.clone())) {
                    desired.add_cluster_policy(cnp, o);
                }
            }
        }
        PartialWork { desired, scope, changed }
    }

    /// The Kubernetes object a problem is about, as an Event refers to it.
    pub fn reference(&self, p: &Problem) -> Option<ObjectReference> {
        let key = (p.namespace.clone().unwrap_or_default(), p.name.clone());
        let (api_version, uid) = match p.kind {
            ProblemKind::Namespace => ("v1", self.namespaces.objects.get(&key).and_then(|o| o.metadata.uid.clone())),
            ProblemKind::Pod => ("v1", self.pods.objects.get(&key).and_then(|o| o.metadata.uid.clone())),
            ProblemKind::NetworkPolicy => {
                ("networking.k8s.io/v1", self.policies.objects.get(&key).and_then(|o| o.metadata.uid.clone()))
            }
            ProblemKind::ClusterNetworkPolicy => (
                "policy.networking.k8s.io/v1alpha2",
                self.cluster_policies.objects.get(&key).and_then(|o| o.metadata.uid.clone()),
            ),
            ProblemKind::Weft(_) => return None,
        };
        Some(ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(p.kind.to_string()),
            namespace: p.namespace.clone(),
            name: Some(p.name.clone()),
            uid,
            ..ObjectReference::default()
        })
    }
}

/// One watched type: its objects by (namespace, name), and the listing under way.
#[derive(Debug)]
struct Watched<K> {
    objects: BTreeMap<(String, String), K>,
    listing: Option<BTreeMap<(String, String), K>>,
    listed: bool,
}

impl<K> Default for Watched<K> {
    fn default() -> Self {
        Watched { objects: BTreeMap::new(), listing: None, listed: false }
    }
}

enum Absorbed {
    /// An object was applied or deleted; whether it is new.
    Changed((String, String), bool),
    Listed,
    Nothing,
}

fn key_of<K: ResourceExt>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K: ResourceExt> Watched<K> {
    /// Takes in one watch event: a listing is buffered and swapped in whole when it is done,
    /// as kube's reflector does, so a relist never shows half a cluster.
    fn absorb(&mut self, event: Event<K>) -> Absorbed {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                Absorbed::Nothing
            }
            Event::InitApply(object) => {
                self.listing.get_or_insert_default().insert(key_of(&object), object);
                Absorbed::Nothing
            }
            Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.listed = true;
                Absorbed::Listed
            }
            Event::Apply(object) => {
                let key = key_of(&object);
                let new = self.objects.insert(key.clone(), object).is_none();
                Absorbed::Changed(key, new)
            }
            Event::Delete(object) => {
                let key = key_of(&object);
                self.objects.remove(&key);
                Absorbed::Changed(key, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn namespace(name: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "uid": format!("uid-{name}")}})).expect("a namespace")
    }

    fn pod(namespace: &str, name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("a pod")
    }

    fn policy(namespace: &str, name: &str) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .expect("a policy")
    }

    /// An index whose three watches have listed these objects, and whose full
    /// reconciliation is done.
    fn listed(namespaces: &[Namespace], pods: &[Pod], policies: &[NetworkPolicy]) -> ClusterIndex {
        let mut index = ClusterIndex::new();
        index.take(Input::Namespace(Event::Init));
        for ns in namespaces {
            index.take(Input::Namespace(Event::InitApply(ns.clone())));
        }
        index.take(Input::Namespace(Event::InitDone));
        index.take(Input::Pod(Box::new(Event::Init)));
        for p in pods {
            index.take(Input::Pod(Box::new(Event::InitApply(p.clone()))));
        }
        index.take(Input::Pod(Box::new(Event::InitDone)));
        index.take(Input::Policy(Event::Init));
        for np in policies {
            index.take(Input::Policy(Event::InitApply(np.clone())));
        }
        index.take(Input::Policy(Event::InitDone));
        let _ = index.desired_all(&Options::default());
        index.full_done();
        index
    }

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.into(), name.into())
    }

    #[test]
    fn nothing_is_reconciled_before_all_three_watches_have_listed() {
        let mut index = ClusterIndex::new();
        index.take(Input::Namespace(Event::Init));
        index.take(Input::Namespace(Event::InitDone));
        index.take(Input::Pod(Box::new(Event::Init)));
        index.take(Input::Pod(Box::new(Event::InitDone)));
        index.take(Input::Namespace(Event::Apply(namespace("a"))));
        assert!(!index.listed() && !index.has_work(), "policies have not listed");
        index.take(Input::Policy(Event::Init));
        index.take(Input::Policy(Event::InitDone));
        assert!(index.listed() && index.wants_full() && index.has_work());
        let desired = index.desired_all(&Options::default());
        assert_eq!(desired.projects.keys().collect::<Vec<_>>(), ["k8s-a"]);
        index.full_done();
        assert!(!index.has_work(), "what changed went into the full reconciliation");
    }

    fn cnp(name: &str, priority: i64) -> ClusterNetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
        }))
        .expect("a cluster network policy")
    }

    /// ClusterNetworkPolicies never hold the rest up (a cluster without their CRD never lists
    /// them), are left alone until listed, and a listing of them compares all of weft's with
    /// all of them, without a full reconciliation of the rest.
    #[test]
    fn cluster_network_policies_wait_for_nothing_and_are_left_alone_until_listed() {
        let o = Options::default();
        let mut index = listed(&[namespace("a")], &[], &[]);
        index.want_full();
        let desired = index.desired_all(&o);
        index.full_done();
        assert!(desired.cluster_policies.is_none(), "not listed: weft's are left as they are");

        index.take(Input::ClusterPolicy(Box::new(Event::Init)));
        index.take(Input::ClusterPolicy(Box::new(Event::InitApply(cnp("tenancy", 1)))));
        index.take(Input::ClusterPolicy(Box::new(Event::InitDone)));
        assert!(index.has_work() && !index.wants_full(), "a listing of them is no full reconciliation");
        let work = index.desired_changed(&o);
        assert!(work.scope.all_cluster_policies);
        let policies = work.desired.cluster_policies.expect("known now");
        assert_eq!(policies.keys().collect::<Vec<_>>(), ["k8s-cnp-tenancy"]);

        index.take(Input::ClusterPolicy(Box::new(Event::Apply(cnp("tenancy", 2)))));
        let work = index.desired_changed(&o);
        assert!(!work.scope.all_cluster_policies);
        assert_eq!(work.scope.cluster_policies, BTreeSet::from(["k8s-cnp-tenancy".to_string()]));
        assert_eq!(work.desired.cluster_policies.unwrap()["k8s-cnp-tenancy"].priority, 2);
        index.take(Input::ClusterPolicy(Box::new(Event::Delete(cnp("tenancy", 2)))));
        let work = index.desired_changed(&o);
        assert_eq!(work.desired.cluster_policies.map(|p| p.len()), Some(0), "deleted: in scope, not desired");
        let problem = Problem {
            kind: ProblemKind::ClusterNetworkPolicy,
            namespace: None,
            name: "tenancy".into(),
            detail: String::new(),
        };
        assert!(work.changed.touches(&problem));
        index.take(Input::ClusterPolicy(Box::new(Event::Apply(cnp("tenancy", 2)))));
        assert_eq!(index.reference(&problem).and_then(|r| r.uid), Some("uid-tenancy".to_string()));
    }

    #[test]
    fn a_namespace_arriving_after_its_pods_and_policies_pulls_them_in() {
        let mut index = listed(&[], &[], &[]);
        index.take(Input::Pod(Box::new(Event::Apply(pod("late", "web", "10.0.0.1")))));
        index.take(Input::Policy(Event::Apply(policy("late", "deny"))));
        let first = index.desired_changed(&Options::default());
        assert!(first.desired.ports.is_empty() && first.desired.groups.is_empty());
        assert_eq!(first.desired.orphans.len(), 2, "left out until the namespace comes: {:?}", first.desired.orphans);
        assert!(!index.has_work());

        index.take(Input::Namespace(Event::Apply(namespace("late"))));
        assert!(!index.wants_full(), "a namespace that arrives is a partial change");
        let work = index.desired_changed(&Options::default());
        assert_eq!(work.changed.pods, BTreeSet::from([key("late", "web")]));
        assert_eq!(work.changed.policies, BTreeSet::from([key("late", "deny")]));
        assert!(work.desired.projects.contains_key("k8s-late"));
        assert!(work.desired.ports.contains_key(&key("k8s-late", "web")));
        assert!(work.desired.groups.contains_key(&key("k8s-late", "deny")));
        assert!(work.desired.orphans.is_empty());
    }

    #[test]
    fn a_namespace_seen_again_does_not_pull_in_its_pods() {
        let mut index = listed(&[namespace("a")], &[pod("a", "web", "10.0.0.1")], &[]);
        index.take(Input::Namespace(Event::Apply(namespace("a"))));
        let work = index.desired_changed(&Options::default());
        assert_eq!(work.changed.namespaces, BTreeSet::from(["a".to_string()]));
        assert!(work.changed.pods.is_empty(), "only a new namespace pulls in what waited for it");
    }

    #[test]
    fn a_relist_is_swapped_in_whole_when_done_and_asks_for_a_full_reconciliation() {
        let mut index = listed(&[namespace("a")], &[pod("a", "web", "10.0.0.1"), pod("a", "db", "10.0.0.2")], &[]);
        index.take(Input::Pod(Box::new(Event::Init)));
        index.take(Input::Pod(Box::new(Event::InitApply(pod("a", "web", "10.0.0.1")))));
        assert!(!index.wants_full(), "a listing under way changes nothing yet");
        let during = index.desired_all(&Options::default());
        assert_eq!(during.ports.len(), 2, "the old objects stand until the listing is done");
        index.take(Input::Pod(Box::new(Event::InitDone)));
        assert!(index.wants_full() && index.has_work(), "db was deleted while unwatched: only a full pass knows");
        let after = index.desired_all(&Options::default());
        assert_eq!(after.ports.keys().collect::<Vec<_>>(), [&key("k8s-a", "web")]);
    }

    #[test]
    fn a_namespace_deleted_asks_for_a_full_reconciliation() {
        let mut index = listed(&[namespace("a"), namespace("b")], &[pod("a", "web", "10.0.0.1")], &[]);
        index.take(Input::Namespace(Event::Delete(namespace("a"))));
        assert!(index.wants_full());
        let desired = index.desired_all(&Options::default());
        assert_eq!(desired.projects.keys().collect::<Vec<_>>(), ["k8s-b"]);
        assert!(desired.ports.is_empty() && desired.orphans.len() == 1, "web's namespace is gone");
    }

    #[test]
    fn a_pod_event_changes_only_that_pod_and_a_deleted_one_is_in_scope_to_go() {
        let mut index = listed(&[namespace("a")], &[pod("a", "web", "10.0.0.1"), pod("a", "db", "10.0.0.2")], &[]);
        index.take(Input::Pod(Box::new(Event::Delete(pod("a", "db", "10.0.0.2")))));
        index.take(Input::Pod(Box::new(Event::Apply(pod("a", "web", "10.0.0.9")))));
        assert!(!index.wants_full());
        let work = index.desired_changed(&Options::default());
        assert_eq!(work.changed.pods, BTreeSet::from([key("a", "db"), key("a", "web")]));
        assert_eq!(work.scope.ports, BTreeSet::from([key("k8s-a", "db"), key("k8s-a", "web")]));
        assert_eq!(
            work.desired.ports.keys().collect::<Vec<_>>(),
            [&key("k8s-a", "web")],
            "db is in scope, not desired"
        );
        assert!(work.desired.projects.contains_key("k8s-a"), "its namespace's project is planned with it");
    }

    #[test]
    fn problems_refer_to_their_kubernetes_object() {
        let index = listed(&[namespace("a")], &[], &[]);
        let problem = Problem { kind: ProblemKind::Namespace, namespace: None, name: "a".into(), detail: "x".into() };
        let reference = index.reference(&problem).expect("a reference");
        assert_eq!((reference.kind.as_deref(), reference.uid.as_deref()), (Some("Namespace"), Some("uid-a")));
        let changed = Changed { namespaces: BTreeSet::from(["a".to_string()]), ..Changed::default() };
        assert!(changed.touches(&problem));
    }
}
