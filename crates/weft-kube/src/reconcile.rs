//! The config service made to hold exactly what the cluster says, for the objects this
//! cluster's kube-manager owns: what is missing is created, what differs replaced (only if
//! unchanged since it was read), what the cluster no longer has deleted, through
//! `POST /v1/batch`. Objects another owner wrote are never changed; a name taken by one is
//! reported. [`plan`] is pure; [`reconcile`] lists, plans and applies.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use weft_client::{BatchOp, Client, ClientError, Target};
use weft_model::{ClusterPolicy, DEFAULT_GROUP, Kind, Port, Project, SecurityGroup, VirtualNetwork};

use crate::translate::{self, OWNER_ANNOTATION, Options, Problem, ProblemKind};

/// What the config service should hold for a cluster.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub projects: BTreeMap<String, Project>,
    /// By (project, name).
    pub ports: BTreeMap<Key, Port>,
    pub groups: BTreeMap<Key, SecurityGroup>,
    /// The cluster's tiered policies by weft name; `None` while they are not known (their
    /// watch has not listed, or the cluster has no ClusterNetworkPolicy CRD): the config
    /// service's are then left as they are.
    pub cluster_policies: Option<BTreeMap<String, ClusterPolicy>>,
    /// What weft cannot represent, left out.
    pub problems: Vec<Problem>,
    /// Pods and policies left out because their namespace is not among those translated:
    /// in a directory, a mistake; in a cluster, a namespace whose watch event is still to
    /// come.
    pub orphans: Vec<Problem>,
}

impl Desired {
    /// The translation of a cluster's objects (DESIGN.md §3-§4).
    pub fn of<'a>(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        o: &Options,
    ) -> Desired {
        let mut d = Desired::default();
        if let Some((project, _)) = o.pod_network_objects() {
            d.projects.insert(project.name.clone(), project);
        }
        for ns in namespaces {
            d.add_namespace(ns, o);
        }
        let known: BTreeSet<String> = d.projects.keys().cloned().collect();
        let known = |project: &str| known.contains(project);
        for pod in pods {
            d.add_pod(pod, &known, o);
        }
        for np in policies {
            d.add_policy(np, &known, o);
        }
        d
    }

    pub fn add_namespace(&mut self, ns: &Namespace, o: &Options) {
        match translate::namespace(ns, o) {
            Ok(p) => {
                self.projects.insert(p.name.clone(), p);
            }
            Err(problem) => self.problems.push(problem),
        }
    }

    /// Adds a pod's port; `known` says which projects exist (the pod's namespace may not be
    /// among the objects translated, when only what changed is).
    pub fn add_pod(&mut self, pod: &Pod, known: &dyn Fn(&str) -> bool, o: &Options) {
        match translate::pod(pod, o) {
            Ok(Some(port)) if known(&port.project) => {
                self.ports.insert((port.project.clone(), port.name.clone()), port);
            }
            Ok(Some(_)) => self.orphans.push(orphan(ProblemKind::Pod, &pod.metadata)),
            Ok(None) => {}
            Err(problem) => self.problems.push(problem),
        }
    }

    pub fn add_policy(&mut self, np: &NetworkPolicy, known: &dyn Fn(&str) -> bool, o: &Options) {
        let (group, problems) = translate::network_policy(np, o);
        self.problems.extend(problems);
        match group {
            Some(g) if known(&g.project) => {
                self.groups.insert((g.project.clone(), g.name.clone()), g);
            }
            Some(_) => self.orphans.push(orphan(ProblemKind::NetworkPolicy, &np.metadata)),
            None => {}
        }
    }
}

impl Desired {
    /// Adds a ClusterNetworkPolicy's translation (and makes the cluster's policies known).
    pub fn add_cluster_policy(&mut self, cnp: &crate::cnp::ClusterNetworkPolicy, o: &Options) {
        let (policy, problems) = crate::cnp::cluster_network_policy(cnp, o);
        self.problems.extend(problems);
        let policies = self.cluster_policies.get_or_insert_default();
        if let Some(p) = policy {
            policies.insert(p.name.clone(), p);
        }
    }
}

fn orphan(kind: ProblemKind, meta: &ObjectMeta) -> Problem {
    Problem {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        detail: "its namespace is not known".into(),
    }
}

/// What the config service holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub projects: Vec<Project>,
    pub ports: Vec<Port>,
    pub groups: Vec<SecurityGroup>,
    pub cluster_policies: Vec<ClusterPolicy>,
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
        for key in ["id", "revision", "created_at", "updated_at", "status"] {
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
pub type Key = (String, String);

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
    o: &Options,
    owner: &str,
) -> Vec<BatchOp> {
    for (key, object) in wanted {
        match current.remove(key) {
            None => {
                plan.operations.push(BatchOp::Create { kind, object: weft_client::object(object) });
                plan.created += 1;
            }
            Some(Stored { annotations, .. }) if !owned_by(annotations, owner) => plan.conflicts.push(o.problem(
                kind,
                &key.0,
                &key.1,
                format!(
                    "the name is taken by an object {} wrote; left alone",
                    annotations.get(OWNER_ANNOTATION).map_or("someone else", String::as_str)
                ),
            )),
            Some(Stored { object: have, revision, .. }) => {
                if content(have) != content(object) {
                    plan.operations.push(BatchOp::Replace {
                        kind,
                        object: weft_client::object(object),
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
pub fn plan(desired: &Desired, current: &Current, o: &Options) -> Plan {
    plan_with(desired, current, &|_| None, o)
}

/// [`plan`], for a `current` that is part of what the config service holds: `elsewhere` names
/// the port outside it that holds an address, if one does. An address belongs to one port
/// (issue 17): a pod whose address another port holds (a terminated pod's, or one written by
/// hand) is left out and reported until the address is free, rather than failing the batch
/// the whole reconciliation is in.
pub fn plan_with(
    desired: &Desired,
    current: &Current,
    elsewhere: &dyn Fn(&IpAddr) -> Option<Key>,
    o: &Options,
) -> Plan {
    let owner = &o.owner();
    let mut plan = Plan::default();
    let allocated = with_allocated_addresses(&desired.ports, current, o, &mut plan);
    let ports = ports_with_free_addresses(&allocated, current, elsewhere, owner, o, &mut plan);
    let projects: BTreeMap<Key, Project> =
        desired.projects.iter().map(|(n, p)| ((String::new(), n.clone()), p.clone())).collect();
    let current_projects = stored(&current.projects, |p| ((String::new(), p.name.clone()), &p.annotations, p.revision));
    let project_deletes = kind_plan(&mut plan, Kind::Project, &projects, current_projects, o, owner);
    let mut wanted_groups = Cow::Borrowed(&desired.groups);
    let mut current_groups =
        stored(&current.groups, |g| ((g.project.clone(), g.name.clone()), &g.annotations, g.revision));
    default_groups(&mut plan, desired, current, owner, &mut wanted_groups, &mut current_groups);
    let deletes = kind_plan(&mut plan, Kind::SecurityGroup, &wanted_groups, current_groups, o, owner);
    let current_ports = stored(&current.ports, |p| ((p.project.clone(), p.name.clone()), &p.annotations, p.revision));
    let first_port = plan.operations.len();
    let port_deletes = kind_plan(&mut plan, Kind::Port, &ports, current_ports, o, owner);
    // Ports that go give their addresses up before others take them: deletes first, then
    // replaces (which may give some up), then creates. Nothing refers to a port.
    // Creates that ask for addresses go before those IPAM gives some to, so that no allocation
    // takes an address a pod already has.
    plan.operations[first_port..].sort_by_cached_key(|op| match op {
        BatchOp::Create { object, .. } => {
            if names_addresses(object) {
                1
            } else {
                2
            }
        }
        _ => 0,
    });
    plan.deleted = deletes.len() + port_deletes.len();
    plan.operations.splice(first_port..first_port, port_deletes);
    plan.operations.extend(deletes);
    if let Some(wanted) = &desired.cluster_policies {
        let wanted: BTreeMap<Key, ClusterPolicy> =
            wanted.iter().map(|(name, p)| ((String::new(), name.clone()), p.clone())).collect();
        let current_policies =
            stored(&current.cluster_policies, |p| ((String::new(), p.name.clone()), &p.annotations, p.revision));
        let policy_deletes = kind_plan(&mut plan, Kind::ClusterPolicy, &wanted, current_policies, o, owner);
        plan.deleted += policy_deletes.len();
        plan.operations.extend(policy_deletes);
    }
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
                plan.conflicts.push(o.problem(
                    Kind::Project,
                    "",
                    &name,
                    "its namespace is gone, but it holds objects another owner wrote; left alone".into(),
                ));
                continue;
            }
            plan.operations.push(BatchOp::Delete { kind, target, cascade: true });
            plan.deleted += 1;
        }
    }
    plan
}

/// The desired ports as the config service will hold them: a port on the pod network that asks
/// for no address keeps the ones IPAM gave it (the config service keeps them on a replace, as
/// long as the port stays on its node), so it is not written again for want of them. A pod
/// whose addresses differ from those IPAM gave its port (something else wired it) is reported:
/// the port follows the pod.
fn with_allocated_addresses<'a>(
    desired: &'a BTreeMap<Key, Port>,
    current: &Current,
    o: &Options,
    plan: &mut Plan,
) -> Cow<'a, BTreeMap<Key, Port>> {
    if o.pod_network.is_none() {
        return Cow::Borrowed(desired);
    }
    let stored: HashMap<(&str, &str), &Port> =
        current.ports.iter().map(|p| ((p.project.as_str(), p.name.as_str()), p)).collect();
    let mut ports = Cow::Borrowed(desired);
    for (key, port) in desired {
        let Some(have) = stored.get(&(key.0.as_str(), key.1.as_str())) else { continue };
        if port.network.is_none() || have.network != port.network || have.ips.is_empty() {
            continue;
        }
        if port.ips.is_empty() {
            if have.node == port.node
                && let Some(p) = ports.to_mut().get_mut(key)
            {
                p.ips.clone_from(&have.ips);
            }
        } else if port.ips != have.ips {
            let show = |ips: &[IpAddr]| ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ");
            plan.conflicts.push(o.problem(
                Kind::Port,
                &key.0,
                &key.1,
                format!(
                    "its addresses ({}) differ from those weft allocated its port ({}): the port follows the pod",
                    show(&port.ips),
                    show(&have.ips)
                ),
            ));
        }
    }
    ports
}

/// The ports to write: the desired ones whose addresses no other port holds once the plan is
/// applied (ports another owner wrote keep theirs, ports this plan deletes give theirs up),
/// first come first served in (project, name) order. A port left out keeps what the config
/// service holds of it, if anything.
fn ports_with_free_addresses<'a>(
    desired: &'a BTreeMap<Key, Port>,
    current: &'a Current,
    elsewhere: &dyn Fn(&IpAddr) -> Option<Key>,
    owner: &str,
    o: &Options,
    plan: &mut Plan,
) -> Cow<'a, BTreeMap<Key, Port>> {
    let key = |p: &Port| (p.project.clone(), p.name.clone());
    let mut held: BTreeMap<IpAddr, Key> = BTreeMap::new();
    for port in current.ports.iter().filter(|p| !owned_by(&p.annotations, owner)) {
        held.extend(port.ips.iter().map(|ip| (*ip, key(port))));
    }
    let taken = |held: &BTreeMap<IpAddr, Key>, port: &Port, k: &Key| {
        port.ips
            .iter()
            .copied()
            .find(|ip| held.get(ip).is_some_and(|h| h != k) || elsewhere(ip).is_some_and(|h| &h != k))
    };
    let mut left_out = Vec::new();
    for (k, port) in desired {
        match taken(&held, port, k) {
            None => held.extend(port.ips.iter().map(|ip| (*ip, k.clone()))),
            Some(ip) => {
                plan.conflicts.push(o.problem(
                    Kind::Port,
                    &k.0,
                    &k.1,
                    format!("its address {ip} is held by another port; left out until the address is free"),
                ));
                left_out.push(k);
            }
        }
    }
    if left_out.is_empty() {
        return Cow::Borrowed(desired);
    }
    let mut ports = desired.clone();
    for k in left_out {
        match current.ports.iter().find(|p| &key(p) == k) {
            // Kept as it is: not deleted, not changed.
            Some(stored) => {
                ports.insert(k.clone(), stored.clone());
            }
            None => {
                ports.remove(k);
            }
        }
    }
    Cow::Owned(ports)
}

/// The `default` group the config service gives every project is, in a project this
/// kube-manager owns, the group of a NetworkPolicy named `default`: replaced by the policy
/// while it exists, put back as the config service made it when the policy goes. (Treating it
/// as another owner's would leave such a policy unenforced.) Handled here and taken out of
/// the general plan.
fn default_groups(
    plan: &mut Plan,
    desired: &Desired,
    current: &Current,
    owner: &str,
    wanted: &mut Cow<'_, BTreeMap<Key, SecurityGroup>>,
    stored: &mut BTreeMap<Key, Stored<'_, SecurityGroup>>,
) {
    let ours: BTreeSet<&str> =
        current.projects.iter().filter(|p| owned_by(&p.annotations, owner)).map(|p| p.name.as_str()).collect();
    let keys: Vec<Key> = stored
        .keys()
        .filter(|(project, name)| name == DEFAULT_GROUP && ours.contains(project.as_str()))
        .filter(|(project, _)| desired.projects.contains_key(project))
        .cloned()
        .collect();
    for key in keys {
        let Some(have) = stored.remove(&key) else { continue };
        let policy = if wanted.contains_key(&key) { wanted.to_mut().remove(&key) } else { None };
        let want = match policy {
            Some(policy) => policy,
            None if owned_by(have.annotations, owner) => SecurityGroup::default_for(&key.0),
            None => continue,
        };
        if content(have.object) != content(&want) {
            plan.operations.push(BatchOp::Replace {
                kind: Kind::SecurityGroup,
                object: weft_client::object(&want),
                if_match: have.revision,
            });
            plan.updated += 1;
        }
    }
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

/// What the config service holds now, listed.
pub async fn list(client: &Client) -> Result<Current, ClientError> {
    let everything = Default::default();
    Ok(Current {
        projects: client.list_all::<Project>(&everything).await?,
        ports: client.list_all::<Port>(&everything).await?,
        groups: client.list_all::<SecurityGroup>(&everything).await?,
        cluster_policies: client.list_all::<ClusterPolicy>(&everything).await?,
    })
}

/// Whether a port, as a batch carries it, names its addresses.
fn names_addresses(port: &weft_client::Object) -> bool {
    #[derive(serde::Deserialize)]
    struct Ips {
        #[serde(default)]
        ips: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Ips>(port.get()).is_ok_and(|p| !p.ips.is_empty())
}

/// Batches of one plan in flight at once, where they may be ([`independent`]).
const IN_FLIGHT: usize = 2;

/// What makes batches independent of one another: creates only, of one kind, and for ports,
/// all naming their addresses or none. Such batches may go in concurrently, in any order:
/// nothing kube-manager creates refers to an object of its own kind, and ports that take
/// their addresses from IPAM queue on the network's lock. Anything else (a replace or delete,
/// or ports that name addresses beside ports given some) waits for what comes before it.
fn independent(batch: &[BatchOp]) -> Option<(Kind, bool)> {
    let class = |op: &BatchOp| match op {
        BatchOp::Create { kind: Kind::Port, object } => Some((Kind::Port, names_addresses(object))),
        BatchOp::Create { kind, .. } => Some((*kind, false)),
        _ => None,
    };
    let first = class(batch.first()?)?;
    batch.iter().all(|op| class(op) == Some(first)).then_some(first)
}

/// One batch, with its result.
async fn send<'a>(
    client: &Client,
    chunk: &'a [BatchOp],
) -> (&'a [BatchOp], Result<weft_client::BatchResult, ClientError>) {
    (chunk, client.batch(chunk).await)
}

/// Applies a plan in batches, recording what was written in `mirror`. Independent batches
/// in a row go [`IN_FLIGHT`] at a time: while the config service writes one, the next is
/// encoded, sent and decoded (the initial sync of 150,000 pods is some 40 batches).
async fn apply(client: &Client, plan: Plan, mirror: &mut Mirror) -> Result<Outcome, ClientError> {
    use futures::StreamExt;
    let mut revision = None;
    let chunks = weft_client::batches(&plan.operations);
    let classes: Vec<Option<(Kind, bool)>> = chunks.iter().map(|chunk| independent(chunk)).collect();
    let mut waves = chunks.as_slice();
    for wave in classes.chunk_by(|a, b| a.is_some() && a == b) {
        let (this, rest) = waves.split_at(wave.len());
        waves = rest;
        let mut batches = this.iter();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        loop {
            while in_flight.len() < IN_FLIGHT
                && let Some(chunk) = batches.next()
            {
                in_flight.push_back(send(client, chunk));
            }
            let Some((chunk, result)) = in_flight.next().await else { break };
            let result = result?;
            mirror.record(chunk, &result);
            revision = revision.max(Some(result.revision));
        }
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

/// Lists what the config service holds, plans, and applies the plan in batches. An object
/// changed by someone else between the listing and the write fails its batch (412): the
/// caller reconciles again.
pub async fn reconcile(client: &Client, desired: &Desired, o: &Options) -> Result<Outcome, ClientError> {
    Ok(reconcile_all(client, desired, o).await?.0)
}

/// A reconciliation refused because an object changed between listing and writing (a 412)
/// is planned again at once, up to this many times in all.
const ATTEMPTS: usize = 5;

/// [`reconcile_all`], planned again when a concurrent write got in between listing and
/// writing.
pub async fn reconcile_all_retrying(
    client: &Client,
    desired: &Desired,
    o: &Options,
) -> Result<(Outcome, Mirror), ClientError> {
    let mut attempt = 1;
    loop {
        match reconcile_all(client, desired, o).await {
            Err(e) if attempt < ATTEMPTS && e.status() == Some(412) => {
                tracing::info!(attempt, "an object changed while reconciling; planning again");
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// [`reconcile`], also returning what the config service holds afterwards.
pub async fn reconcile_all(client: &Client, desired: &Desired, o: &Options) -> Result<(Outcome, Mirror), ClientError> {
    let network_problem = ensure_pod_network(client, o).await?;
    let current = list(client).await?;
    let mut plan = plan(desired, &current, o);
    plan.conflicts.extend(network_problem);
    let mut mirror = Mirror::from(current);
    let outcome = apply(client, plan, &mut mirror).await?;
    Ok((outcome, mirror))
}

/// Makes the config service hold the pod network as `o` says, when it says one (DESIGN.md
/// §9): its project, and the shared network split into node blocks, created or put right.
/// The network is not in the batch plan: kube-manager owns only the one, and pods' ports need
/// it before their batch. A network of that name another owner wrote is left alone and
/// reported: pods' ports then fail to be written, each reported.
pub async fn ensure_pod_network(client: &Client, o: &Options) -> Result<Option<Problem>, ClientError> {
    let Some((project, network)) = o.pod_network_objects() else { return Ok(None) };
    let owner = o.owner();
    match client.get::<Project>(&weft_client::Key::Name(project.name.clone())).await {
        Ok(_) => {}
        Err(e) if e.status() == Some(404) => {
            client.create(&project).await?;
            tracing::info!(project = %project.name, "created the pod network's project");
        }
        Err(e) => return Err(e),
    }
    let key = weft_client::Key::Named { project: project.name.clone(), name: network.name.clone() };
    match client.get::<VirtualNetwork>(&key).await {
        Ok(have) if !owned_by(&have.annotations, &owner) => Ok(Some(o.problem(
            Kind::VirtualNetwork,
            &project.name,
            &network.name,
            "the pod network's name is taken by a network another owner wrote; left alone".into(),
        ))),
        Ok(have) if content(&have) != content(&network) => {
            client.replace(&key, &network, have.revision).await?;
            tracing::info!(network = %o.pod_network_ref(), "put the pod network right");
            Ok(None)
        }
        Ok(_) => Ok(None),
        Err(e) if e.status() == Some(404) => {
            client.create(&network).await?;
            tracing::info!(network = %o.pod_network_ref(), "created the pod network");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reconciles only some objects against what `mirror` says the config service holds:
/// `desired` is the translation of the objects named in `scope`, and whatever `scope` names
/// that `desired` lacks is deleted. The mirror must be current (a 412 says it is not).
pub async fn reconcile_some(
    client: &Client,
    desired: &Desired,
    scope: &Scope,
    mirror: &mut Mirror,
    o: &Options,
) -> Result<Outcome, ClientError> {
    let current = mirror.subset(scope);
    let elsewhere = |ip: &IpAddr| mirror.addresses.get(ip).filter(|k| !scope.ports.contains(*k)).cloned();
    let plan = plan_with(desired, &current, &elsewhere, o);
    apply(client, plan, mirror).await
}

/// Which objects a partial reconciliation covers, by (project, name).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub projects: BTreeSet<String>,
    pub ports: BTreeSet<Key>,
    pub groups: BTreeSet<Key>,
    /// By weft name.
    pub cluster_policies: BTreeSet<String>,
    /// Every cluster policy the config service holds.
    pub all_cluster_policies: bool,
}

/// What the config service holds, as last listed and then written by this kube-manager, so
/// that a change to one object does not need a listing of all.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    projects: BTreeMap<String, Project>,
    ports: BTreeMap<Key, Port>,
    groups: BTreeMap<Key, SecurityGroup>,
    cluster_policies: BTreeMap<String, ClusterPolicy>,
    /// The port that holds each address: a pod's change is checked against every port, not
    /// only those the change names.
    addresses: HashMap<IpAddr, Key>,
}

impl From<Current> for Mirror {
    fn from(c: Current) -> Mirror {
        let mut mirror = Mirror {
            projects: c.projects.into_iter().map(|p| (p.name.clone(), p)).collect(),
            groups: c.groups.into_iter().map(|g| ((g.project.clone(), g.name.clone()), g)).collect(),
            cluster_policies: c.cluster_policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            ..Mirror::default()
        };
        for port in c.ports {
            mirror.put_port(port);
        }
        mirror
    }
}

impl Mirror {
    /// The part of the mirror `scope` names.
    pub fn subset(&self, scope: &Scope) -> Current {
        Current {
            projects: scope.projects.iter().filter_map(|p| self.projects.get(p)).cloned().collect(),
            ports: scope.ports.iter().filter_map(|k| self.ports.get(k)).cloned().collect(),
            groups: scope.groups.iter().filter_map(|k| self.groups.get(k)).cloned().collect(),
            cluster_policies: if scope.all_cluster_policies {
                self.cluster_policies.values().cloned().collect()
            } else {
                scope.cluster_policies.iter().filter_map(|n| self.cluster_policies.get(n)).cloned().collect()
            },
        }
    }

    pub fn len(&self) -> usize {
        self.projects.len() + self.ports.len() + self.groups.len() + self.cluster_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put_port(&mut self, port: Port) {
        let key = (port.project.clone(), port.name.clone());
        self.remove_port(&key);
        self.addresses.extend(port.ips.iter().map(|ip| (*ip, key.clone())));
        self.ports.insert(key, port);
    }

    fn remove_port(&mut self, key: &Key) {
        if let Some(old) = self.ports.remove(key) {
            for ip in &old.ips {
                if self.addresses.get(ip) == Some(key) {
                    self.addresses.remove(ip);
                }
            }
        }
    }

    /// Takes in a batch's results (in the order of its operations).
    fn record(&mut self, operations: &[BatchOp], result: &weft_client::BatchResult) {
        fn decode<T: serde::de::DeserializeOwned>(result: &serde_json::Value) -> Option<T> {
            serde_json::from_value(result.get("object")?.clone()).ok()
        }
        for (op, result) in operations.iter().zip(&result.results) {
            match op {
                BatchOp::Create { kind: Kind::Project, .. } | BatchOp::Replace { kind: Kind::Project, .. } => {
                    if let Some(p) = decode::<Project>(result) {
                        // The config service gives a new project its default group.
                        let default = SecurityGroup { revision: p.revision, ..SecurityGroup::default_for(&p.name) };
                        self.groups.entry((p.name.clone(), DEFAULT_GROUP.into())).or_insert(default);
                        self.projects.insert(p.name.clone(), p);
                    }
                }
                BatchOp::Create { kind: Kind::Port, .. } | BatchOp::Replace { kind: Kind::Port, .. } => {
                    if let Some(p) = decode::<Port>(result) {
                        self.put_port(p);
                    }
                }
                BatchOp::Create { kind: Kind::SecurityGroup, .. }
                | BatchOp::Replace { kind: Kind::SecurityGroup, .. } => {
                    if let Some(g) = decode::<SecurityGroup>(result) {
                        self.groups.insert((g.project.clone(), g.name.clone()), g);
                    }
                }
                BatchOp::Create { kind: Kind::ClusterPolicy, .. }
                | BatchOp::Replace { kind: Kind::ClusterPolicy, .. } => {
                    if let Some(p) = decode::<ClusterPolicy>(result) {
                        self.cluster_policies.insert(p.name.clone(), p);
                    }
                }
                BatchOp::Delete { kind, target, cascade } => {
                    let name = target.name.clone().unwrap_or_default();
                    let key = (target.project.clone().unwrap_or_default(), name.clone());
                    match kind {
                        Kind::Project => {
                            self.projects.remove(&name);
                            if *cascade {
                                let gone: Vec<Key> = self.ports.keys().filter(|(p, _)| *p == name).cloned().collect();
                                for port in gone {
                                    self.remove_port(&port);
                                }
                                self.groups.retain(|(p, _), _| *p != name);
                            }
                        }
                        Kind::Port => {
                            self.remove_port(&key);
                        }
                        Kind::SecurityGroup => {
                            self.groups.remove(&key);
                        }
                        Kind::ClusterPolicy => {
                            self.cluster_policies.remove(&name);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
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

    /// Batches go in concurrently only when nothing in one can depend on another.
    #[test]
    fn only_batches_of_creates_of_one_kind_are_independent() {
        let create =
            |kind: Kind, object: serde_json::Value| BatchOp::Create { kind, object: weft_client::object(&object) };
        let group = |name: &str| create(Kind::SecurityGroup, json!({"name": name, "project": "p"}));
        let port = |ips: &[&str]| create(Kind::Port, json!({"name": "x", "project": "p", "ips": ips}));
        assert_eq!(independent(&[group("a"), group("b")]), Some((Kind::SecurityGroup, false)));
        assert_eq!(independent(&[port(&[]), port(&[])]), Some((Kind::Port, false)));
        assert_eq!(independent(&[port(&["10.0.0.1"])]), Some((Kind::Port, true)));
        assert_eq!(independent(&[port(&["10.0.0.1"]), port(&[])]), None, "named and allocated addresses");
        assert_eq!(independent(&[group("a"), port(&[])]), None, "two kinds");
        let replace =
            BatchOp::Replace { kind: Kind::SecurityGroup, object: weft_client::object(&json!({})), if_match: None };
        assert_eq!(independent(&[group("a"), replace]), None);
        let delete = BatchOp::Delete { kind: Kind::Port, target: Target::named(Some("p"), "x"), cascade: false };
        assert_eq!(independent(&[delete]), None);
        assert_eq!(independent(&[]), None);
    }

    fn name_of(object: &weft_client::Object) -> String {
        let value: serde_json::Value = serde_json::from_str(object.get()).expect("JSON");
        value["name"].as_str().unwrap_or("").to_string()
    }

    fn op_names(plan: &Plan) -> Vec<String> {
        plan.operations
            .iter()
            .map(|op| match op {
                BatchOp::Create { object, .. } => format!("create {}", name_of(object)),
                BatchOp::Replace { object, .. } => format!("replace {}", name_of(object)),
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
            cluster_policies: vec![],
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
        let plan = plan(&desired, &current, &Options::default());
        assert_eq!(op_names(&plan), ["create k8s-c", "delete web", "create api", "delete k8s-a (cascade)"]);
        assert_eq!((plan.created, plan.deleted), (2, 2));
        assert_eq!(plan.conflicts.len(), 1, "k8s-b holds someone else's port: {:?}", plan.conflicts);
        // Named as the Kubernetes object it comes from: the namespace b.
        assert_eq!((plan.conflicts[0].kind, plan.conflicts[0].namespace.as_deref()), (ProblemKind::Namespace, None));
        assert_eq!(plan.conflicts[0].name, "b");
    }

    fn cluster_policy(name: &str, priority: i64, owned: bool) -> ClusterPolicy {
        let body = json!({"name": name, "tier": "admin", "priority": priority, "subject": {}});
        if owned { ours(body) } else { theirs(body) }
    }

    /// Cluster policies: what the cluster has is created or replaced (the status the config
    /// service serves is no difference), what it has no more is deleted if this kube-manager
    /// wrote it, and a name another owner took is reported; while the cluster's are not
    /// known, nothing is touched.
    #[test]
    fn cluster_policies_follow_the_cluster_and_are_left_alone_while_not_known() {
        let mut served = cluster_policy("k8s-cnp-same", 1, true);
        served.status =
            Some(weft_model::ClusterPolicyStatus { ties: vec!["k8s-cnp-other".into()], nodes: 2, applied: 1 });
        served.revision = Some(7);
        let current = Current {
            cluster_policies: vec![
                served,
                cluster_policy("k8s-cnp-changed", 1, true),
                cluster_policy("k8s-cnp-gone", 1, true),
                cluster_policy("manual", 1, false),
                cluster_policy("k8s-cnp-taken", 1, false),
            ],
            ..Current::default()
        };
        let mut desired = Desired::default();
        let o = Options::default();
        assert!(plan(&desired, &current, &o).is_empty(), "not known: left alone");
        desired.cluster_policies = Some(
            [
                cluster_policy("k8s-cnp-same", 1, true),
                cluster_policy("k8s-cnp-changed", 2, true),
                cluster_policy("k8s-cnp-new", 1, true),
                cluster_policy("k8s-cnp-taken", 1, true),
            ]
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect(),
        );
        let plan = plan(&desired, &current, &o);
        assert_eq!(op_names(&plan), ["replace k8s-cnp-changed", "create k8s-cnp-new", "delete k8s-cnp-gone"]);
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(
            (plan.conflicts[0].kind, plan.conflicts[0].name.as_str()),
            (ProblemKind::ClusterNetworkPolicy, "taken"),
            "named as the ClusterNetworkPolicy it comes from"
        );
    }

    /// An address belongs to one port (issue 17): a pod whose address another port holds is
    /// left out and reported, never a batch the config service refuses; one that takes the
    /// address of a pod that is gone or moved on is written after that one gives it up.
    #[test]
    fn a_port_on_the_pod_network_keeps_what_ipam_gave_it_and_follows_its_pod() {
        let o = Options {
            pod_network: Some(crate::translate::PodNetwork {
                subnets: vec!["10.244.0.0/16".parse().unwrap()],
                blocks: weft_model::NodeBlocks::default(),
            }),
            ..Options::default()
        };
        let (network_project, _) = o.pod_network_objects().unwrap();
        let pod = |node: &str, ips: &[&str]| {
            ours::<Port>(json!({"name": "p", "project": "k8s-a", "network": "cluster.default/pods", "node": node,
                                "ips": ips, "security_groups": []}))
        };
        let current = Current {
            cluster_policies: vec![],
            projects: vec![ours(json!({"name": "k8s-a"})), network_project.clone()],
            ports: vec![pod("n1", &["10.244.0.1"])],
            groups: vec![],
        };
        let desired_with = |port: Port| {
            let mut d = Desired::default();
            d.projects.insert("k8s-a".into(), ours(json!({"name": "k8s-a"})));
            d.projects.insert(network_project.name.clone(), network_project.clone());
            d.ports.insert(("k8s-a".into(), "p".into()), port);
            d
        };
        // Asking for no address: what IPAM gave it stands, nothing to write.
        let plan = plan(&desired_with(pod("n1", &[])), &current, &o);
        assert!(plan.is_empty() && plan.conflicts.is_empty(), "{:?} {:?}", op_names(&plan), plan.conflicts);
        // On another node, it is written again, for IPAM to give it that node's addresses.
        let moved = super::plan(&desired_with(pod("n2", &[])), &current, &o);
        assert_eq!(op_names(&moved), ["replace p"]);
        assert_eq!(moved.operations.len(), 1);
        // The pod has other addresses than its port: the port follows, and it is reported.
        let other = super::plan(&desired_with(pod("n1", &["10.244.0.9"])), &current, &o);
        assert_eq!(op_names(&other), ["replace p"]);
        assert_eq!(other.conflicts.len(), 1);
        assert!(other.conflicts[0].detail.contains("10.244.0.9") && other.conflicts[0].detail.contains("10.244.0.1"));
    }

    #[test]
    fn a_pod_whose_address_another_port_holds_is_left_out_and_reported() {
        let project = ours::<Project>(json!({"name": "k8s-a"}));
        let port = |name: &str, ip: &str| ours::<Port>(json!({"name": name, "project": "k8s-a", "ips": [ip]}));
        let current = Current {
            cluster_policies: vec![],
            projects: vec![project.clone()],
            ports: vec![
                theirs(json!({"name": "manual", "project": "k8s-a", "ips": ["10.0.0.1"]})),
                port("gone", "10.0.0.2"),
                port("moving", "10.0.0.3"),
                port("stuck", "10.0.0.9"),
            ],
            groups: vec![SecurityGroup::default_for("k8s-a")],
        };
        let mut desired = Desired::default();
        desired.projects.insert("k8s-a".into(), project);
        for (name, ip) in [("clash", "10.0.0.1"), ("heir", "10.0.0.2"), ("moving", "10.0.0.4"), ("taker", "10.0.0.3")] {
            desired.ports.insert(("k8s-a".into(), name.into()), port(name, ip));
        }
        // stuck wants an address a port outside this (partial) reconciliation holds.
        desired.ports.insert(("k8s-a".into(), "stuck".into()), port("stuck", "10.0.0.8"));
        let elsewhere = |ip: &IpAddr| (ip.to_string() == "10.0.0.8").then(|| ("k8s-b".to_string(), "x".to_string()));
        let plan = plan_with(&desired, &current, &elsewhere, &Options::default());
        assert_eq!(op_names(&plan), ["delete gone", "replace moving", "create heir", "create taker"]);
        let left_out: Vec<&str> = plan.conflicts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(left_out, ["clash", "stuck"], "{:?}", plan.conflicts);
        assert!(plan.conflicts[0].detail.contains("10.0.0.1 is held by another port"), "{:?}", plan.conflicts);
    }

    #[test]
    fn a_policy_named_default_takes_over_the_default_group_of_its_project_and_gives_it_back() {
        let made = SecurityGroup { revision: Some(3), ..SecurityGroup::default_for("k8s-a") };
        let current = Current {
            projects: vec![ours(json!({"name": "k8s-a"}))],
            ports: vec![],
            groups: vec![made],
            cluster_policies: vec![],
        };
        let mut desired = Desired::default();
        desired.projects.insert("k8s-a".into(), ours(json!({"name": "k8s-a"})));
        let policy: SecurityGroup = ours(json!({"name": "default", "project": "k8s-a", "selector": {}}));
        desired.groups.insert(("k8s-a".into(), "default".into()), policy.clone());
        let taken = plan(&desired, &current, &Options::default());
        assert_eq!(op_names(&taken), ["replace default"]);
        assert!(matches!(taken.operations[0], BatchOp::Replace { if_match: Some(3), .. }));
        assert!(taken.conflicts.is_empty(), "{:?}", taken.conflicts);

        // The policy is gone: the group is put back as the config service made it.
        let current = Current {
            cluster_policies: vec![],
            projects: current.projects,
            ports: vec![],
            groups: vec![SecurityGroup { revision: Some(4), ..policy }],
        };
        desired.groups.clear();
        let given_back = plan(&desired, &current, &Options::default());
        assert_eq!(op_names(&given_back), ["replace default"]);
        let BatchOp::Replace { object, .. } = &given_back.operations[0] else { unreachable!() };
        let restored: SecurityGroup = serde_json::from_str(object.get()).expect("a group");
        assert_eq!(content(&restored), content(&SecurityGroup::default_for("k8s-a")));
        // And left alone from then on.
        let current = Current { groups: vec![restored], ..current };
        assert!(plan(&desired, &current, &Options::default()).is_empty());
    }

    #[test]
    fn a_pod_whose_namespace_is_not_translated_is_an_orphan_not_a_port_or_a_problem() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "gone"},
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]}
        }))
        .expect("a pod");
        let desired = Desired::of([], [&pod], [], &Options::default());
        assert!(desired.ports.is_empty() && desired.problems.is_empty(), "{desired:?}");
        assert_eq!(desired.orphans.len(), 1);
        assert_eq!(
            (desired.orphans[0].kind, desired.orphans[0].namespace.as_deref()),
            (ProblemKind::Pod, Some("gone"))
        );
    }
}
