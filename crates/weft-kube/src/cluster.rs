//! kube-manager against a cluster: watchers on Namespaces, Pods, NetworkPolicies and
//! ClusterNetworkPolicies keep a
//! copy of the cluster (and one on Nodes passes their pod CIDRs on, [`crate::nodes`]); once all three have listed, the config service is reconciled to its
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

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use weft_client::Client;

use crate::cnp::ClusterNetworkPolicy;
use crate::index::{ClusterIndex, Input, PartialWork};
use crate::lease::{self, LeaseConfig};
use crate::reconcile::{self, Mirror};
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

/// Runs kube-manager until `stop` completes: follows, leads when the lease is won, releases
/// the lease on the way out.
pub async fn run(kube: kube::Client, weft: Client, config: ClusterConfig, stop: impl Future<Output = ()>) {
    let leading = |on: bool| {
        if let Some(m) = &config.metrics {
            m.leader.set(i64::from(on));
        }
    };
    match config.lease.clone() {
        None => {
            leading(true);
            tokio::select! {
                _ = manage(&kube, &weft, &config) => {}
                _ = stop => {}
            }
        }
        Some(lease) => lease::lead(kube.clone(), lease, || manage(&kube, &weft, &config), leading, stop).await,
    }
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
    index: ClusterIndex,
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

/// A warning Event kube-manager puts on an object.
pub(crate) fn warning(reason: &str, action: &str, note: String) -> KubeEvent {
    KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
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

/// Follows the cluster and writes it into the config service, and its Nodes' pod CIDRs into
/// the pod network's blocks; returns only if the watches end.
async fn manage(kube: &kube::Client, weft: &Client, config: &ClusterConfig) {
    let reporter = Reporter { controller: "weft-kube-manager".into(), instance: Some(config.instance.clone()) };
    let events_out = publisher(Recorder::new(kube.clone(), reporter));
    let (listed, mut nodes_listed) = tokio::sync::watch::channel(false);
    let nodes = crate::nodes::follow(weft, &config.options, watch::<Node>(kube), events_out.clone(), listed);
    // Pods' ports wait for the Nodes' pod CIDRs (a port written first would take its address
    // from a block weft claims), but not for ever: without the right to list Nodes, pods must
    // still get their ports.
    let objects = async {
        if tokio::time::timeout(NODES_FIRST, nodes_listed.wait_for(|l| *l)).await.is_err() {
            tracing::warn!("the cluster's Nodes are not listed yet: pods' ports are written without their pod CIDRs");
        }
        manage_objects(kube, weft, config, events_out).await
    };
    // The ClusterNetworkPolicies' conditions, written back while this kube-manager leads.
    let statuses = crate::cnp_status::follow(kube.clone(), weft.clone(), config.options.clone());
    tokio::select! {
        _ = objects => {}
        _ = nodes => {}
        _ = statuses => {}
    }
}

/// How long the first reconciliation waits for the Nodes' pod CIDRs to be passed on.
const NODES_FIRST: Duration = Duration::from_secs(30);

/// Namespaces, Pods and NetworkPolicies into projects, ports and security groups.
async fn manage_objects(
    kube: &kube::Client,
    weft: &Client,
    config: &ClusterConfig,
    events_out: tokio::sync::mpsc::UnboundedSender<(KubeEvent, ObjectReference)>,
) {
    let inputs = futures::stream::select(
        futures::stream::select(
            watch::<Namespace>(kube).map(|e| e.map(Input::Namespace)),
            watch::<Pod>(kube).map(|e| e.map(|e| Input::Pod(Box::new(e)))),
        ),
        futures::stream::select(
            watch::<NetworkPolicy>(kube).map(|e| e.map(Input::Policy)),
            // A cluster without the CRD answers 404 to this list: the watch retries with its
            // backoff, and nothing waits for it (DESIGN.md §11).
            watch::<ClusterNetworkPolicy>(kube).map(|e| e.map(|e| Input::ClusterPolicy(Box::new(e)))),
        ),
    );
    tokio::pin!(inputs);
    let mut m = Manager {
        weft,
        options: &config.options,
        index: ClusterIndex::new(),
        mirror: None,
        last_full: Instant::now(),
        backoff: FIRST_BACKOFF,
        retry_at: None,
        reported: HashSet::new(),
        events_out,
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
            m.index.want_full();
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
        self.index.take(input);
    }

    async fn step(&mut self) {
        if !self.index.has_work() {
            return;
        }
        let full = self.index.wants_full() || self.mirror.is_none();
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
                self.index.want_full();
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MOST_BACKOFF);
            }
        }
    }

    async fn full(&mut self) -> Result<i64, weft_client::ClientError> {
        let desired = self.index.desired_all(self.options);
        let started = Instant::now();
        let (outcome, mirror) = reconcile::reconcile_all_retrying(self.weft, &desired, self.options).await?;
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
        self.index.full_done();
        self.last_full = Instant::now();
        // Orphans are not reported: in a cluster their namespace's watch event is still to come.
        let problems: Vec<Problem> = desired.problems.into_iter().chain(outcome.conflicts).collect();
        self.reported.retain(|p| problems.contains(p));
        self.report(problems);
        Ok(outcome.revision)
    }

    async fn partial(&mut self) -> Result<i64, weft_client::ClientError> {
        let o = self.options;
        let PartialWork { desired, scope, changed } = self.index.desired_changed(o);
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
        self.reported.retain(|p| !changed.touches(p) || problems.contains(p));
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
            if let Some(reference) = self.index.reference(&problem) {
                let event = warning("NotEnforced", "Translate", format!("weft leaves this out: {}", problem.detail));
                let _ = self.events_out.send((event, reference));
            }
            self.reported.insert(problem);
        }
    }
}
