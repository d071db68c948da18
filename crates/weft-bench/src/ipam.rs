//! IPAM at cluster scale: ports allocated addresses one after another on one network of a
//! scratch database, as the config service does for pods, in transactions of `batch` ports
//! (kube-manager writes in batches). The figure is whether an allocation's cost stays flat as
//! the addresses held grow: the first thousand's time per port beside the last thousand's.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_model::{Kind, Resource};
use weft_store::Store;
use weft_store::admin::ScratchDatabase;

use crate::{BenchError, other};

#[derive(Debug, Clone)]
pub struct IpamBenchConfig {
    pub database_url: String,
    pub allocations: usize,
    /// Ports per transaction.
    pub batch: usize,
}

#[derive(Debug)]
pub struct IpamReport {
    pub config: IpamBenchConfig,
    pub total: Duration,
    /// Time per port over the first and the last thousand ports.
    pub first: Duration,
    pub last: Duration,
    /// Time per port over each tenth of the run, in order.
    pub tenths: Vec<Duration>,
}

impl fmt::Display for IpamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        writeln!(f, "ipam: {} ports on one network, {} per transaction", self.config.allocations, self.config.batch)?;
        writeln!(f, "  total                 {:.1} s", self.total.as_secs_f64())?;
        writeln!(f, "  first 1,000 per port  {}", per(self.first))?;
        writeln!(f, "  last 1,000 per port   {}", per(self.last))?;
        writeln!(f, "  last / first          {:.2}", self.last.as_secs_f64() / self.first.as_secs_f64().max(1e-9))?;
        let tenths: Vec<String> = self.tenths.iter().map(|d| per(*d)).collect();
        writeln!(f, "  per port, by tenth    {}", tenths.join(", "))
    }
}

pub async fn run(config: IpamBenchConfig) -> Result<IpamReport, BenchError> {
    let db = ScratchDatabase::create(&config.database_url, "weft_bench_ipam").await?;
    let result = run_on(&config, &db).await;
    db.drop_database().await;
    result
}

fn resource(kind: Kind, body: serde_json::Value) -> Result<Resource, BenchError> {
    Resource::from_json(kind, body).map_err(other)
}

async fn run_on(config: &IpamBenchConfig, db: &ScratchDatabase) -> Result<IpamReport, BenchError> {
    let store = Store::connect(&db.url, 4).await?;
    store.migrate().await?;
    let mut txn = store.begin().await?;
    txn.create(resource(Kind::Project, json!({"name": "bench"}))?).await?;
    // A /14 (262,142 addresses) and an IPv6 /64: both families are allocated for each port.
    txn.create(resource(
        Kind::VirtualNetwork,
        json!({"name": "pods", "project": "bench", "subnets": [
            {"cidr": "10.64.0.0/14", "gateway": "10.64.0.1"}, {"cidr": "fd64::/64", "gateway": "fd64::1"}]}),
    )?)
    .await?;
    txn.commit().await?;
    let batch = config.batch.max(1);
    let mut per_port = Vec::with_capacity(config.allocations);
    let started = Instant::now();
    let mut n = 0;
    while n < config.allocations {
        let size = batch.min(config.allocations - n);
        let t = Instant::now();
        let mut txn = store.begin().await?;
        for i in n..n + size {
            let body = json!({"name": format!("pod-{i}"), "project": "bench", "network": "pods", "node": format!("node-{}", i % 1000)});
            txn.create(resource(Kind::Port, body)?).await?;
        }
        txn.commit().await?;
        let each = t.elapsed() / size as u32;
        per_port.extend(std::iter::repeat_n(each, size));
        n += size;
    }
    let total = started.elapsed();
    let mean = |s: &[Duration]| s.iter().sum::<Duration>() / s.len().max(1) as u32;
    let k = per_port.len().min(1_000);
    let tenth = per_port.len().div_ceil(10).max(1);
    Ok(IpamReport {
        config: config.clone(),
        total,
        first: mean(&per_port[..k]),
        last: mean(&per_port[per_port.len() - k..]),
        tenths: per_port.chunks(tenth).map(mean).collect(),
    })
}
