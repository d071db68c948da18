//! Leader election through a coordination.k8s.io Lease, the way client-go's leaderelection
//! does it: the holder renews the lease; another candidate takes it when its record has not
//! changed for a whole lease duration *as that candidate observed it* (so clocks need not
//! agree), or at once when the holder released it. Every write carries the resourceVersion
//! it read, so two candidates cannot both win.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate, unique among them (a pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews, and a candidate tries.
    pub retry: Duration,
}

impl LeaseConfig {
    /// How long the holder goes on after its last renewal before it stops leading: well
    /// inside the lease duration, so it has stopped before anyone else may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.mul_f64(2.0 / 3.0)
    }
}

#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The lease record as last read (its resourceVersion), and when it was first seen so.
    observed: Option<(String, Instant)>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Elector {
        Elector { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let mine = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.config.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)),
            acquire_time: if mine { previous.and_then(|p| p.acquire_time.clone()) } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if mine || previous.is_none() { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; whether this candidate holds it now.
    pub async fn try_acquire(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.took(&created)),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, Instant::now()));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.duration, Duration::from_secs);
        let unchanged_for = self.observed.as_ref().map_or(Duration::ZERO, |(_, at)| at.elapsed());
        let free = holder.is_none() || unchanged_for > held_for;
        if holder != Some(self.config.identity.as_str()) && !free {
            return Ok(false);
        }
        let renewed = Lease { metadata: lease.metadata.clone(), spec: Some(self.spec(Some(&spec), now)) };
        match self.api.replace(&self.config.name, &PostParams::default(), &renewed).await {
            Ok(written) => Ok(self.took(&written)),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn took(&mut self, lease: &Lease) -> bool {
        self.observed = lease.metadata.resource_version.clone().map(|v| (v, Instant::now()));
        true
    }

    /// Gives the lease up, so that another candidate takes over at once rather than after
    /// a lease duration. Only a lease this candidate holds is touched.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let released = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }),
        };
        match self.api.replace(&self.config.name, &PostParams::default(), &released).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Runs `work` only while this candidate holds the lease, until `stop` completes: tries to
/// take the lease every `retry`, runs `work` once it is won, and stops it as soon as the
/// lease was not renewed within the deadline, before another candidate may take over (then
/// follows again). `leading` is told each change. The lease is released on the way out.
pub async fn lead<W, F>(
    kube: kube::Client,
    lease: LeaseConfig,
    mut work: W,
    leading: impl Fn(bool),
    stop: impl Future<Output = ()>,
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut elector = Elector::new(kube, lease.clone());
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
        leading(true);
        let lost = tokio::select! {
            _ = work() => false,
            _ = keep(&mut elector) => true,
            _ = &mut stop => false,
        };
        leading(false);
        if lost {
            tracing::warn!(identity = %lease.identity, "lost the lease: stopped writing, following");
            continue;
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "could not release the lease; another candidate takes over when it expires");
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
