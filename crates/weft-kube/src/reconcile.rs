//! The config service made to hold exactly what the cluster says, for the objects this
//! cluster's kube-manager owns: what is missing is created, what differs replaced (only if
//! unchanged since it was read), what the cluster no longer has deleted, through
//! `POST /v1/batch`. Objects another owner wrote are never changed; a name taken by one is
//! reported. [`plan`] is pure; [`reconcile`] lists, plans and applies.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use weft_client::{BatchOp, Client, ClientError, Target};
use weft_model::{DEFAULT_GROUP, Kind, Port, Project, SecurityGroup};

use crate::translate::{self, OWNER_ANNOTATION, Options, Problem};

/// The most operations one batch takes (the API's limit).
const BATCH_OPERATIONS: usize = 10_000;

/// What the config service should hold for a cluster.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub projects: BTreeMap<String, Project>,
    /// By (project, name).
    pub ports: BTreeMap<Key, Port>,
    pub groups: BTreeMap<Key, SecurityGroup>,
    pub problems: Vec<Problem>,
}

impl Desired {
    /// The translation of a cluster's objects (DESIGN.md §3-§4).
    pub fn of(namespaces: &[Namespace], pods: &[Pod], policies: &[NetworkPolicy], o: &Options) -> Desired {
        let mut d = Desired::default();
        for ns in namespaces {
            match translate::namespace(ns, o) {
                Ok(p) => {
                    d.projects.insert(p.name.clone(), p);
                }
                Err(problem) => d.problems.push(problem),
            }
        }
        for pod in pods {
            match translate::pod(pod, o) {
                Ok(Some(port)) if d.projects.contains_key(&port.project) => {
                    d.ports.insert((port.project.clone(), port.name.clone()), port);
                }
                Ok(Some(port)) => d.problems.push(orphan("Pod", &port.project, &port.name)),
                Ok(None) => {}
                Err(problem) => d.problems.push(problem),
            }
        }
        for np in policies {
            let (group, problems) = translate::network_policy(np, o);
            d.problems.extend(problems);
            match group {
                Some(g) if d.projects.contains_key(&g.project) => {
                    d.groups.insert((g.project.clone(), g.name.clone()), g);
                }
                Some(g) => d.problems.push(orphan("NetworkPolicy", &g.project, &g.name)),
                None => {}
            }
        }
        d
    }
}

fn orphan(kind: &'static str, project: &str, name: &str) -> Problem {
    Problem { kind, namespace: None, name: format!("{project}/{name}"), detail: "its namespace is not known".into() }
}

/// What the config service holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub projects: Vec<Project>,
    pub ports: Vec<Port>,
    pub groups: Vec<SecurityGroup>,
}

/// The writes that make `current` what `desired` says.
#[derive(Debug, Default)]
pub struct Plan {
    pub operations: Vec<BatchOp>,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Names taken by objects this kube-manager does not own.
    pub conflicts: Vec<Problem>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

fn owned_by(annotations: &BTreeMap<String, String>, owner: &str) -> bool {
    annotations.get(OWNER_ANNOTATION).is_some_and(|v| v == owner)
}

/// An object as JSON without what the server assigns (ids, revisions, times), so that what
/// was read compares with what is wanted.
fn content(object: &impl Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for key in ["id", "revision", "created_at", "updated_at"] {
            map.remove(key);
        }
        if let Some(rules) = map.get_mut("rules").and_then(|r| r.as_array_mut()) {
            for rule in rules.iter_mut().filter_map(|r| r.as_object_mut()) {
                rule.remove("id");
            }
        }
    }
    v
}

/// An object the config service holds, with what decides whether it may be changed.
struct Stored<'a, T> {
    object: &'a T,
    annotations: &'a BTreeMap<String, String>,
    revision: Option<i64>,
}

/// (project, name); the project is empty for projects themselves.
type Key = (String, String);

fn stored<'a, T>(
    objects: &'a [T],
    parts: impl Fn(&'a T) -> (Key, &'a BTreeMap<String, String>, Option<i64>),
) -> BTreeMap<Key, Stored<'a, T>> {
    objects
        .iter()
        .map(|object| {
            let (key, annotations, revision) = parts(object);
            (key, Stored { object, annotations, revision })
        })
        .collect()
}

/// One kind's writes: creates and replaces of what is wanted, deletes of what is owned and no
/// longer wanted (returned apart, to go after every create).
fn kind_plan<T: Serialize>(
    plan: &mut Plan,
    kind: Kind,
    wanted: &BTreeMap<Key, T>,
    mut current: BTreeMap<Key, Stored<'_, T>>,
    owner: &str,
) -> Vec<BatchOp> {
    for (key, object) in wanted {
        match current.remove(key) {
            None => {
                plan.operations
                    .push(BatchOp::Create { kind, object: serde_json::to_value(object).unwrap_or_default() });
                plan.created += 1;
            }
            Some(Stored { annotations, .. }) if !owned_by(annotations, owner) => plan.conflicts.push(Problem {
                kind: kind.as_str(),
                namespace: None,
                name: if key.0.is_empty() { key.1.clone() } else { format!("{}/{}", key.0, key.1) },
                detail: format!(
                    "the name is taken by an object {} wrote; left alone",
                    annotations.get(OWNER_ANNOTATION).map_or("someone else", String::as_str)
                ),
            }),
            Some(Stored { object: have, revision, .. }) => {
                if content(have) != content(object) {
                    plan.operations.push(BatchOp::Replace {
                        kind,
                        object: serde_json::to_value(object).unwrap_or_default(),
                        if_match: revision,
                    });
                    plan.updated += 1;
                }
            }
        }
    }
    current
        .into_iter()
        .filter(|(_, stored)| owned_by(stored.annotations, owner))
        .map(|((project, name), _)| {
            let project = (!project.is_empty()).then_some(project.as_str());
            BatchOp::Delete { kind, target: Target::named(project, &name), cascade: false }
        })
        .collect()
}

/// The writes, in an order one batch accepts: projects created before what goes in them,
/// ports and groups deleted before their projects.
pub fn plan(desired: &Desired, current: &Current, owner: &str) -> Plan {
    let mut plan = Plan::default();
    let projects: BTreeMap<Key, Project> =
        desired.projects.iter().map(|(n, p)| ((String::new(), n.clone()), p.clone())).collect();
    let current_projects = stored(&current.projects, |p| ((String::new(), p.name.clone()), &p.annotations, p.revision));
    let project_deletes = kind_plan(&mut plan, Kind::Project, &projects, current_projects, owner);
    let current_groups = stored(&current.groups, |g| ((g.project.clone(), g.name.clone()), &g.annotations, g.revision));
    let mut deletes = kind_plan(&mut plan, Kind::SecurityGroup, &desired.groups, current_groups, owner);
    let current_ports = stored(&current.ports, |p| ((p.project.clone(), p.name.clone()), &p.annotations, p.revision));
    deletes.extend(kind_plan(&mut plan, Kind::Port, &desired.ports, current_ports, owner));
    plan.deleted = deletes.len();
    plan.operations.extend(deletes);
    // A project goes with everything in it; one that holds what another owner wrote stays
    // (its project-made `default` group aside).
    let foreign: BTreeSet<&str> = current
        .ports
        .iter()
        .filter(|p| !owned_by(&p.annotations, owner))
        .map(|p| p.project.as_str())
        .chain(
            current
                .groups
                .iter()
                .filter(|g| !owned_by(&g.annotations, owner) && g.name != DEFAULT_GROUP)
                .map(|g| g.project.as_str()),
        )
        .collect();
    for op in project_deletes {
        if let BatchOp::Delete { kind, target, .. } = op {
            let name = target.name.clone().unwrap_or_default();
            if foreign.contains(name.as_str()) {
                plan.conflicts.push(Problem {
                    kind: Kind::Project.as_str(),
                    namespace: None,
                    name,
                    detail: "its namespace is gone, but it holds objects another owner wrote; left alone".into(),
                });
                continue;
            }
            plan.operations.push(BatchOp::Delete { kind, target, cascade: true });
            plan.deleted += 1;
        }
    }
    plan
}

/// What one reconciliation did.
#[derive(Debug)]
pub struct Outcome {
    /// The revision at which the config service held what was desired.
    pub revision: i64,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub conflicts: Vec<Problem>,
}

/// Lists what the config service holds, plans, and applies the plan in batches. An object
/// changed by someone else between the listing and the write fails its batch (412): the
/// caller reconciles again.
pub async fn reconcile(client: &Client, desired: &Desired, o: &Options) -> Result<Outcome, ClientError> {
    let everything = Default::default();
    let current = Current {
        projects: client.list_all::<Project>(&everything).await?,
        ports: client.list_all::<Port>(&everything).await?,
        groups: client.list_all::<SecurityGroup>(&everything).await?,
    };
    let plan = plan(desired, &current, &o.owner());
    let mut revision = None;
    for chunk in plan.operations.chunks(BATCH_OPERATIONS) {
        revision = Some(client.batch(chunk).await?.revision);
    }
    let revision = match revision {
        Some(r) => r,
        None => client.info().await?.revision,
    };
    Ok(Outcome {
        revision,
        created: plan.created,
        updated: plan.updated,
        deleted: plan.deleted,
        conflicts: plan.conflicts,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ours<T: serde::de::DeserializeOwned>(mut v: serde_json::Value) -> T {
        v["annotations"] = json!({OWNER_ANNOTATION: "kube-manager/default"});
        serde_json::from_value(v).expect("a valid object")
    }

    fn theirs<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn op_names(plan: &Plan) -> Vec<String> {
        plan.operations
            .iter()
            .map(|op| match op {
                BatchOp::Create { object, .. } => format!("create {}", object["name"].as_str().unwrap_or("")),
                BatchOp::Replace { object, .. } => format!("replace {}", object["name"].as_str().unwrap_or("")),
                BatchOp::Delete { target, cascade, .. } => {
                    format!(
                        "delete {}{}",
                        target.name.clone().unwrap_or_default(),
                        if *cascade { " (cascade)" } else { "" }
                    )
                }
                BatchOp::Patch { .. } => "patch".into(),
            })
            .collect()
    }

    #[test]
    fn a_gone_namespace_takes_its_ports_then_its_project_unless_another_owner_is_in_it() {
        let current = Current {
            projects: vec![ours(json!({"name": "k8s-a"})), ours(json!({"name": "k8s-b"}))],
            ports: vec![
                ours(json!({"name": "web", "project": "k8s-a"})),
                theirs(json!({"name": "manual", "project": "k8s-b"})),
            ],
            groups: vec![theirs(json!({"name": "default", "project": "k8s-a"}))],
        };
        let mut desired = Desired::default();
        desired.projects.insert("k8s-c".into(), ours(json!({"name": "k8s-c"})));
        desired.ports.insert(("k8s-c".into(), "api".into()), ours(json!({"name": "api", "project": "k8s-c"})));
        let plan = plan(&desired, &current, "kube-manager/default");
        assert_eq!(op_names(&plan), ["create k8s-c", "create api", "delete web", "delete k8s-a (cascade)"]);
        assert_eq!((plan.created, plan.deleted), (2, 2));
        assert_eq!(plan.conflicts.len(), 1, "k8s-b holds someone else's port: {:?}", plan.conflicts);
        assert_eq!(plan.conflicts[0].name, "k8s-b");
    }
}
