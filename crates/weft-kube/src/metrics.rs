//! Prometheus metrics of kube-manager: watch events taken in, reconciliations and their
//! time, errors, problems reported, and whether this process leads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `full` or `partial`.
    kind: &'static str,
}

#[derive(Debug)]
pub struct KubeMetrics {
    registry: Registry,
    pub(crate) events: Counter,
    reconciles: Family<KindLabels, Counter>,
    reconcile_seconds: Family<KindLabels, Histogram>,
    pub(crate) reconcile_errors: Counter,
    pub(crate) problems: Gauge,
    pub(crate) leader: Gauge,
}

impl Default for KubeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_kube_manager");
        let events = Counter::default();
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
        });
        let reconcile_errors = Counter::default();
        let problems = Gauge::default();
        let leader = Gauge::default();
        registry.register(
            "watch_events",
            "Watch events taken in (Namespaces, Pods, NetworkPolicies, ClusterNetworkPolicies)",
            events.clone(),
        );
        registry.register("reconciles", "Reconciliations written to the config service", reconciles.clone());
        registry.register("reconcile_seconds", "Time a reconciliation takes", reconcile_seconds.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations the config service refused or missed",
            reconcile_errors.clone(),
        );
        registry.register("problems", "Objects with something weft cannot represent", problems.clone());
        registry.register("leader", "Whether this process holds the lease and writes", leader.clone());
        KubeMetrics { registry, events, reconciles, reconcile_seconds, reconcile_errors, problems, leader }
    }
}

impl KubeMetrics {
    pub(crate) fn reconciled(&self, full: bool, seconds: f64) {
        let labels = KindLabels { kind: if full { "full" } else { "partial" } };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_seconds.get_or_create(&labels).observe(seconds);
    }

    /// The metrics in the text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
