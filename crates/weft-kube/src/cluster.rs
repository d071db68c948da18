//! kube-manager against a cluster: watchers on Namespaces, Pods and NetworkPolicies keep a
//! copy of the cluster; once all three have listed, the config service is reconciled to its
//! translation in full; after that each watch event reconciles only the objects it touched,
//! against a mirror of what the config service holds, with the events that arrived together
//! in one batch.
//!
//! A full reconciliation happens again whenever a watcher lists again (a 410 Gone, a
//! reconnect without history), when a namespace goes (its project is deleted with what is in
//! it, which needs the whole picture), when a partial write fails (someone else changed an
//! object: the mirror is stale), and every `resync` anyway.
//!
//! With a lease configured, only the candidate holding it writes; the others wait, and a
//! holder that cannot renew in time stops writing before anyone else may start.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use weft_client::Client;

use crate::lease::{Elector, LeaseConfig};
use crate::reconcile::{self, Desired, Mirror, Scope};
use crate::translate::{Options, Problem};

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub options: Options,
    /// Elect a leader among kube-managers of one cluster; `None` writes unconditionally.
    pub lease: Option<LeaseConfig>,
    /// How often the config service is reconciled in full even without a reason.
    pub resync: Duration,
    /// Names this process in the Kubernetes Events it publishes.
    pub instance: String,
    /// Told after every reconciliation that wrote or checked the config service.
    pub progress: Option<tokio::sync::watch::Sender<Progress>>,
    pub metrics: Option<std::sync::Arc<crate::KubeMetrics>>,
}

/// How far kube-manager has come, for benchmarks and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The config service's revision after the last reconciliation.
    pub revision: i64,
    pub full: u64,
    pub partial: u64,
    /// Watch events taken in.
    pub events: u64,
}

/// Most watch events taken into one reconciliation.
const MOST_EVENTS_AT_ONCE: usize = 10_000;
/// How long the events of a burst are waited for before they are written together: the
/// price every change pays in latency.
const LINGER: Duration = Duration::from_millis(2);
/// Events closer together than this make a burst.
const BURST_GAP: Duration = Duration::from_millis(10);
/// A refused write is retried after this, doubling up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MOST_BACKOFF: Duration = Duration::from_secs(30);
/// Full reconciliations retried at once when an object changed between listing and writing.
const ATTEMPTS: usize = 5;

/// Runs kube-manager until `stop` completes: follows, leads when the lease is won, releases
/// the lease on the way out.
pub async fn run(kube: kube::Client, weft: Client, config: ClusterConfig, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let Some(lease) = config.lease.clone() else {
        if let Some(m) = &config.metrics {
            m.leader.set(1);
        }
        tokio::select! {
            _ = manage(&kube, &weft, &config) => {}
            _ = &mut stop => {}
        }
        return;
    };
    let mut elector = Elector::new(kube.clone(), lease.clone());
    loop {
        loop {
            match tokio::time::timeout(lease.retry, elector.try_acquire()).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the lease"),
                Err(_) => tracing::warn!("the lease did not answer in time"),
            }
            tokio::select! {
                _ = tokio::time::sleep(lease.retry) => {}
                _ = &mut stop => return,
            }
        }
        tracing::info!(identity = %lease.identity, lease = %lease.name, "leading");
        let leading = |on: bool| {
            if let Some(m) = &config.metrics {
                m.leader.set(i64::from(on));
            }
        };
        leading(true);
        let lost = tokio::select! {
            _ = manage(&kube, &weft, &config) => false,
            _ = keep(&mut elector) => true,
            _ = &mut stop => false,
        };
        leading(false);
        if lost {
            tracing::warn!(identity = %lease.identity, "lost the lease: stopped writing, following");
            continue;
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "could not release the lease; another kube-manager takes over when it expires");
        }
        return;
    }
}

/// Renews the lease; returns when it is lost or was not renewed within the deadline.
async fn keep(elector: &mut Elector) {
    let (retry, deadline) = (elector.config().retry, elector.config().renew_deadline());
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(retry).await;
        match tokio::time::timeout(retry, elector.try_acquire()).await {
            Ok(Ok(true)) => renewed = Instant::now(),
            Ok(Ok(false)) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the lease"),
            Err(_) => tracing::warn!("renewing the lease did not answer in time"),
        }
        if renewed.elapsed() >= deadline {
            return;
        }
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
    Changed((String, String), bool),
    Listed,
    Nothing,
}

fn key_of<K: ResourceExt>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K: ResourceExt> Watched<K> {
    /// Takes in one watch event. A change says whether the object is new.
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

enum Input {
    Namespace(Event<Namespace>),
    Pod(Box<Event<Pod>>),
    Policy(Event<NetworkPolicy>),
}

fn watch<K>(client: &kube::Client) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + use<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff()
}

/// The cluster as watched, what changed since the last reconciliation, and what the config
/// service holds.
struct Manager<'a> {
    weft: &'a Client,
    options: &'a Options,
    namespaces: Watched<Namespace>,
    pods: Watched<Pod>,
    policies: Watched<NetworkPolicy>,
    changed: Changed,
    full: bool,
    mirror: Option<Mirror>,
    last_full: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
    reported: HashSet<Problem>,
    /// Events go out one at a time, in order: the recorder turns a repeat on the same object
    /// into a patch of the first only if that one is written.
    events_out: tokio::sync::mpsc::UnboundedSender<(KubeEvent, ObjectReference)>,
    progress: Option<tokio::sync::watch::Sender<Progress>>,
    metrics: Option<std::sync::Arc<crate::KubeMetrics>>,
    events: u64,
}

#[derive(Debug, Default)]
struct Changed {
    namespaces: BTreeSet<String>,
    pods: BTreeSet<(String, String)>,
    policies: BTreeSet<(String, String)>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods.is_empty() && self.policies.is_empty()
    }
}

/// Publishes Events in the order given, off the reconciliation's path.
fn publisher(recorder: Recorder) -> tokio::sync::mpsc::UnboundedSender<(KubeEvent, ObjectReference)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(KubeEvent, ObjectReference)>();
    tokio::spawn(async move {
        while let Some((event, reference)) = rx.recv().await {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an event");
            }
        }
    });
    tx
}

/// Follows the cluster and writes it into the config service; returns only if the watches end.
async fn manage(kube: &kube::Client, weft: &Client, config: &ClusterConfig) {
    let inputs = futures::stream::select(
        futures::stream::select(
            watch::<Namespace>(kube).map(|e| e.map(Input::Namespace)),
            watch::<Pod>(kube).map(|e| e.map(|e| Input::Pod(Box::new(e)))),
        ),
        watch::<NetworkPolicy>(kube).map(|e| e.map(Input::Policy)),
    );
    tokio::pin!(inputs);
    let reporter = Reporter { controller: "weft-kube-manager".into(), instance: Some(config.instance.clone()) };
    let mut m = Manager {
        weft,
        options: &config.options,
        namespaces: Watched::default(),
        pods: Watched::default(),
        policies: Watched::default(),
        changed: Changed::default(),
        full: true,
        mirror: None,
        last_full: Instant::now(),
        backoff: FIRST_BACKOFF,
        retry_at: None,
        reported: HashSet::new(),
        events_out: publisher(Recorder::new(kube.clone(), reporter)),
        progress: config.progress.clone(),
        metrics: config.metrics.clone(),
        events: 0,
    };
    let mut last_input = Instant::now() - BURST_GAP;
    loop {
        let wake = m.retry_at.unwrap_or(m.last_full + config.resync);
        let first = tokio::select! {
            input = inputs.next() => match input {
                Some(input) => Some(input),
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => None,
        };
        let mut taken = 0;
        if let Some(input) = first {
            m.take(input);
            taken += 1;
            // Whatever else has arrived goes into the same reconciliation. In a burst (this
            // event came hard on the last), events still on their way (in the connection, not
            // yet decoded) get a moment, so that the burst is written in a few large batches
            // rather than one small batch per event; a lone event does not wait.
            let now = Instant::now();
            let burst = now.duration_since(last_input) < BURST_GAP;
            let linger_until = if burst { now + LINGER } else { now };
            while taken < MOST_EVENTS_AT_ONCE {
                let next = match inputs.next().now_or_never() {
                    Some(next) => next,
                    None if Instant::now() < linger_until => {
                        match tokio::time::timeout_at(linger_until.into(), inputs.next()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                    None => break,
                };
                match next {
                    Some(input) => {
                        m.take(input);
                        taken += 1;
                    }
                    None => break,
                }
            }
            last_input = Instant::now();
        }
        if m.last_full.elapsed() >= config.resync {
            m.full = true;
        }
        if m.retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        m.step().await;
    }
}

impl Manager<'_> {
    fn take(&mut self, input: Result<Input, watcher::Error>) {
        self.events += 1;
        if let Some(m) = &self.metrics {
            m.events.inc();
        }
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                tracing::warn!(error = %e, "watching the cluster; trying again");
                return;
            }
        };
        match input {
            Input::Namespace(e) => match self.namespaces.absorb(e) {
                Absorbed::Changed((_, name), new) => {
                    if !self.namespaces.objects.contains_key(&("".into(), name.clone())) {
                        // Its project goes with what is in it: that takes the whole picture.
                        self.full = true;
                    } else if new {
                        // What arrived before its namespace was left out; now it can go in.
                        self.changed.pods.extend(self.pods.objects.keys().filter(|(ns, _)| *ns == name).cloned());
                        self.changed
                            .policies
                            .extend(self.policies.objects.keys().filter(|(ns, _)| *ns == name).cloned());
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
        }
    }

    fn listed(&self) -> bool {
        self.namespaces.listed && self.pods.listed && self.policies.listed
    }

    async fn step(&mut self) {
        if !self.listed() || (!self.full && self.changed.is_empty()) {
            return;
        }
        let full = self.full || self.mirror.is_none();
        let started = Instant::now();
        let result = if full { self.full().await } else { self.partial().await };
        match result {
            Ok(revision) => {
                if let Some(m) = &self.metrics {
                    m.reconciled(full, started.elapsed().as_secs_f64());
                    m.problems.set(self.reported.len() as i64);
                }
                if let Some(progress) = &self.progress {
                    let events = self.events;
                    progress.send_modify(|p| {
                        p.revision = revision;
                        p.events = events;
                        if full {
                            p.full += 1;
                        } else {
                            p.partial += 1;
                        }
                    });
                }
                self.backoff = FIRST_BACKOFF;
                self.retry_at = None;
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.reconcile_errors.inc();
                }
                tracing::warn!(error = %e, retry_in = ?self.backoff, "cannot reconcile with the config service");
                // The mirror may be stale: list again next time.
                self.full = true;
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MOST_BACKOFF);
            }
        }
    }

    async fn full(&mut self) -> Result<i64, weft_client::ClientError> {
        let desired = Desired::of(
            self.namespaces.objects.values(),
            self.pods.objects.values(),
            self.policies.objects.values(),
            self.options,
        );
        self.changed = Changed::default();
        let started = Instant::now();
        let mut attempt = 1;
        let (outcome, mirror) = loop {
            match reconcile::reconcile_all(self.weft, &desired, self.options).await {
                Ok(done) => break done,
                Err(e) if attempt < ATTEMPTS && e.status() == Some(412) => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        tracing::info!(
            revision = outcome.revision,
            created = outcome.created,
            updated = outcome.updated,
            deleted = outcome.deleted,
            objects = mirror.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "reconciled in full"
        );
        self.mirror = Some(mirror);
        self.full = false;
        self.last_full = Instant::now();
        // Orphans are not reported: in a cluster their namespace's watch event is still to come.
        let problems: Vec<Problem> = desired.problems.into_iter().chain(outcome.conflicts).collect();
        self.reported.retain(|p| problems.contains(p));
        self.report(problems);
        Ok(outcome.revision)
    }

    async fn partial(&mut self) -> Result<i64, weft_client::ClientError> {
        let changed = std::mem::take(&mut self.changed);
        let o = self.options;
        let project = |ns: &str| o.project(ns);
        // The namespaces touched, and with them their projects, planned from the namespaces
        // (one that went has made this reconciliation a full one).
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
        let Some(mirror) = self.mirror.as_mut() else { return Ok(0) };
        let started = Instant::now();
        let outcome = reconcile::reconcile_some(self.weft, &desired, &scope, mirror, o).await?;
        if outcome.created + outcome.updated + outcome.deleted > 0 {
            tracing::debug!(
                revision = outcome.revision,
                created = outcome.created,
                updated = outcome.updated,
                deleted = outcome.deleted,
                took_ms = started.elapsed().as_millis() as u64,
                "reconciled"
            );
        }
        let problems: Vec<Problem> = desired.problems.into_iter().chain(outcome.conflicts).collect();
        let touched = |p: &Problem| match p.kind {
            "Namespace" => changed.namespaces.contains(&p.name),
            "Pod" => p.namespace.as_ref().is_some_and(|ns| changed.pods.contains(&(ns.clone(), p.name.clone()))),
            "NetworkPolicy" => {
                p.namespace.as_ref().is_some_and(|ns| changed.policies.contains(&(ns.clone(), p.name.clone())))
            }
            _ => false,
        };
        self.reported.retain(|p| !touched(p) || problems.contains(p));
        self.report(problems);
        Ok(outcome.revision)
    }

    /// Logs each problem not reported yet and puts it on its object as a Kubernetes Event.
    fn report(&mut self, problems: Vec<Problem>) {
        for problem in problems {
            if self.reported.contains(&problem) {
                continue;
            }
            tracing::warn!(%problem, "left out: weft cannot represent it");
            if let Some(reference) = self.reference(&problem) {
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: "NotEnforced".into(),
                    note: Some(format!("weft leaves this out: {}", problem.detail)),
                    action: "Translate".into(),
                    secondary: None,
                };
                let _ = self.events_out.send((event, reference));
            }
            self.reported.insert(problem);
        }
    }

    /// The Kubernetes object a problem is about, as an Event refers to it.
    fn reference(&self, p: &Problem) -> Option<ObjectReference> {
        let key = (p.namespace.clone().unwrap_or_default(), p.name.clone());
        let (api_version, uid) = match p.kind {
            "Namespace" => ("v1", self.namespaces.objects.get(&key).and_then(|o| o.metadata.uid.clone())),
            "Pod" => ("v1", self.pods.objects.get(&key).and_then(|o| o.metadata.uid.clone())),
            "NetworkPolicy" => {
                ("networking.k8s.io/v1", self.policies.objects.get(&key).and_then(|o| o.metadata.uid.clone()))
            }
            _ => return None,
        };
        Some(ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(p.kind.into()),
            namespace: p.namespace.clone(),
            name: Some(p.name.clone()),
            uid,
            ..ObjectReference::default()
        })
    }
}
