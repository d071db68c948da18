//! `weft bench api`: the REST API's throughput and latency, each figure next to the physical
//! limit pgbench shows on the same PostgreSQL with the same number of clients.
//!
//! ```text
//!   fresh database ─► in-process `weft server` (auth on) ◄─ N client tasks (keep-alive HTTP)
//!        │                                                      GET by id / create group / list page
//!        └─► pgbench -S -M prepared, and pgbench with "insert one row + one change-log row"
//! ```
//!
//! The load generator runs in the same process as the server, as pgbench runs beside
//! PostgreSQL: on a 2-core machine both share the cores with what they measure.

pub mod cni;
pub mod compiler;
pub mod datapath;
pub mod fanout;
pub mod ipam;
pub mod kube;
pub mod memory;
pub mod packets;

/// A process's resident set and its peak (`/proc/<pid>/status`: VmRSS, VmHWM), in MiB.
/// `pid`: `None` for this process.
pub(crate) fn rss_mib(pid: Option<u32>) -> (f64, f64) {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;
use weft_client::{Client, ListOptions};
use weft_model::{Port, SecurityGroup};

#[derive(Debug, Clone)]
pub struct ApiBenchConfig {
    /// A PostgreSQL server URL (its database is used to create and drop the bench databases).
    pub database_url: String,
    pub clients: usize,
    pub duration: Duration,
    /// Ports stored for the list and start-up figures.
    pub ports: usize,
    /// The `weft` executable, to time a real server's start.
    pub weft_exe: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store: {0}")]
    Store(#[from] weft_store::StoreError),
    #[error("client: {0}")]
    Client(#[from] weft_client::ClientError),
    #[error("{0}")]
    Other(String),
}

/// Any other failure, by its message.
pub(crate) fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// Throughput and latency of one workload.
#[derive(Debug, Clone)]
pub struct Rate {
    pub requests: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn rate(mut latencies: Vec<Duration>, elapsed: Duration) -> Rate {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Rate { requests: latencies.len(), elapsed, p50: at(0.50), p99: at(0.99) }
}

/// Runs `clients` loops of `op` for `duration`; `op` gets (client, iteration).
async fn load<F, Fut>(clients: usize, duration: Duration, op: F) -> Result<Rate, BenchError>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let tasks = (0..clients).map(|c| {
        let op = op.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(c, i).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok::<_, BenchError>(latencies)
        })
    });
    let mut all = Vec::new();
    for r in join_all(tasks).await {
        all.extend(r.map_err(other)??);
    }
    Ok(rate(all, start.elapsed()))
}

use weft_store::admin::ScratchDatabase as BenchDb;

/// Parses pgbench's "tps = N (without initial connection time)".
fn pgbench_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
}

/// pgbench's connection options for a URL: pgbench takes a URI as its dbname argument.
async fn pgbench(url: &str, args: &[&str], script: Option<&str>) -> Result<f64, BenchError> {
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(args);
    let mut script_file = None;
    if let Some(script) = script {
        let path = std::env::temp_dir().join(format!("weft-bench-{}.sql", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, script).map_err(other)?;
        cmd.arg("-f").arg(&path);
        script_file = Some(path);
    }
    cmd.arg(url);
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|e| BenchError::Other(format!("pgbench: {e}")));
    // The script goes with the run (it stayed behind in /tmp, one per pgbench run).
    if let Some(path) = script_file {
        let _ = std::fs::remove_file(path);
    }
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    pgbench_tps(&text).ok_or_else(|| BenchError::Other(format!("pgbench gave no tps:\n{text}")))
}

#[derive(Debug, Clone, Copy)]
pub struct PgbenchFigures {
    /// `pgbench -S -M prepared`: a primary-key select per transaction.
    pub select: f64,
    /// Insert one row and one change-log row, into two bare tables.
    pub insert_minimal: f64,
    /// The same two rows into weft's own `objects` and `changes` tables.
    pub insert_same_tables: f64,
}

/// Every figure of one run.
#[derive(Debug)]
pub struct ApiReport {
    pub clients: usize,
    /// `wrk` or the built-in client.
    pub load_generator: &'static str,
    pub get_by_id: Rate,
    pub create_group: Rate,
    pub pgbench: PgbenchFigures,
    pub list_page: Rate,
    pub under_reach: UnderReach,
    pub ports: usize,
    pub ready_after: Option<Duration>,
}

impl std::fmt::Display for ApiReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(f, "weft bench api: {} clients, load from {}", self.clients, self.load_generator)?;
        writeln!(f, "{:<48} {:>10} {:>10} {:>10} {:>12}", "workload", "req/s", "p50 ms", "p99 ms", "weft/pgbench")?;
        let pg = &self.pgbench;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, r: &Rate| {
            writeln!(f, "{:<48} {:>10.0} {:>10.2} {:>10.2}", name, r.per_second(), ms(r.p50), ms(r.p99))
        };
        let vs = |f: &mut std::fmt::Formatter<'_>, name: &str, tps: f64, r: &Rate| {
            writeln!(f, "  {:<46} {:>10.0} {:>21} {:>11.0}%", name, tps, "", 100.0 * r.per_second() / tps)
        };
        row(f, "GET /v1/security-groups/{id}", &self.get_by_id)?;
        vs(f, "pgbench -S -M prepared", pg.select, &self.get_by_id)?;
        row(f, "POST /v1/security-groups", &self.create_group)?;
        vs(f, "pgbench: object + change rows, weft's tables", pg.insert_same_tables, &self.create_group)?;
        vs(f, "pgbench: object + change rows, bare tables", pg.insert_minimal, &self.create_group)?;
        writeln!(
            f,
            "{:<48} {:>10.0} {:>10.2} {:>10.2}",
            format!("GET /v1/ports?limit=500 (of {})", self.ports),
            self.list_page.per_second(),
            ms(self.list_page.p50),
            ms(self.list_page.p99)
        )?;
        let u = &self.under_reach;
        row(f, "POST /v1/security-groups, one writer alone", &u.alone)?;
        row(f, &format!("  the same, {} readers asking 500x500 reach", u.readers), &u.loaded)?;
        writeln!(
            f,
            "  {:<46} {:>10.1}x p99; {} matrices answered, {} refused (429/503)",
            "p99 under reach / alone",
            ms(u.loaded.p99) / ms(u.alone.p99).max(1e-6),
            u.matrices,
            u.refused
        )?;
        if let Some(ready) = self.ready_after {
            writeln!(
                f,
                "{:<44} {:>10.2} s",
                format!("weft server ready, {} ports stored", self.ports),
                ready.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

pub async fn api(config: ApiBenchConfig) -> Result<ApiReport, BenchError> {
    let db = BenchDb::create(&config.database_url, "weft_bench_api").await?;
    let result = api_on(&config, &db).await;
    db.drop_database().await;
    result
}

pub(crate) async fn start_server(
    url: &str,
) -> Result<(SocketAddr, String, tokio::sync::oneshot::Sender<()>), BenchError> {
    let store = weft_store::Store::connect(url, 32).await?;
    store.migrate().await?;
    let token = store
        .bootstrap_admin_token()
        .await?
        .ok_or_else(|| BenchError::Other("the bench database already has tokens".into()))?
        .secret;
    // An API-only process's compiler, as `weft server --role api` holds one.
    let horizon = store.revision_watch(std::time::Duration::from_secs(1)).await?;
    let follower = weft_control::Follower::start(
        store.clone(),
        horizon.clone(),
        weft_control::RING_UPDATES,
        weft_control::Encoding::None,
    );
    let policy = std::sync::Arc::clone(&follower.hub) as _;
    let state = weft_api::AppState::new(store, policy, horizon, weft_api::Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(other)?;
    let addr = listener.local_addr().map_err(other)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopping = async move {
            let _ = stopped.await;
        };
        let served = weft_api::serve(state, listener, None, stopping).await;
        drop(follower);
        served
    });
    Ok((addr, token, stop))
}

async fn api_on(config: &ApiBenchConfig, db: &BenchDb) -> Result<ApiReport, BenchError> {
    let (addr, token, stop) = start_server(&db.url).await?;
    let client = Client::new(&format!("http://{addr}"), Some(token.clone()), None)?;
    let n = config.clients;

    client.create(&weft_model::Project { name: "bench".into(), ..Default::default() }).await?;
    let group: SecurityGroup =
        client.get(&weft_client::Key::Named { project: "bench".into(), name: "default".into() }).await?;
    let id = group.id.ok_or_else(|| BenchError::Other("group without id".into()))?;
    let wrk = which_wrk();
    let base = format!("http://{addr}");
    tracing::info!(wrk = wrk.is_some(), "GET by id");
    let get_by_id = match &wrk {
        Some(wrk) => {
            wrk_rate(wrk, &format!("{base}/v1/security-groups/{id}"), &token, None, n, config.duration).await?
        }
        None => {
            load(n, config.duration, {
                let client = client.clone();
                move |_, _| {
                    let client = client.clone();
                    async move {
                        let _: SecurityGroup = client.get(&weft_client::Key::Id(id)).await?;
                        Ok(())
                    }
                }
            })
            .await?
        }
    };

    tracing::info!("create security group");
    let create_group = match &wrk {
        Some(wrk) => {
            // Every request a new name: per wrk thread and per request.
            let script = format!(
                "local threads = 0\n\
                 function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end\n\
                 counter = 0\n\
                 request = function()\n\
                   counter = counter + 1\n\
                   local body = '{{\"name\":\"w' .. tid .. '-' .. counter .. '\",\"project\":\"bench\"}}'\n\
                   return wrk.format(\"POST\", \"/v1/security-groups\", \
                     {{[\"Content-Type\"] = \"application/json\", [\"Authorization\"] = \"Bearer {token}\"}}, body)\n\
                 end\n"
            );
            wrk_rate(wrk, &base, &token, Some(&script), n, config.duration).await?
        }
        None => {
            load(n, config.duration, {
                let client = client.clone();
                move |c, i| {
                    let client = client.clone();
                    async move {
                        let sg: SecurityGroup =
                            serde_json::from_value(json!({"name": format!("g-{c}-{i}"), "project": "bench"}))
                                .map_err(other)?;
                        client.create(&sg).await?;
                        Ok(())
                    }
                }
            })
            .await?
        }
    };

    tracing::info!(ports = config.ports, "storing ports");
    const BATCH: usize = 2000;
    const TIERS: [&str; 3] = ["web", "api", "db"];
    for start in (0..config.ports).step_by(BATCH) {
        let ops: Vec<weft_client::BatchOp> = (start..(start + BATCH).min(config.ports))
            .map(|i| weft_client::BatchOp::Create {
                kind: weft_model::Kind::Port,
                object: weft_client::object(&json!({
                    "name": format!("pod-{i:06}"), "project": "bench", "node": format!("node-{}", i % 50),
                    "ips": [format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)],
                    "labels": {"app": format!("app-{}", i % 1000), "tier": TIERS[i % 3], "pod-template-hash": "abc123"},
                    "security_groups": [],
                })),
            })
            .collect();
        client.batch(&ops).await?;
    }
    tracing::info!("list pages");
    // Walk the whole list page by page with the continue tokens, as a client does, over and
    // over until the time is up: pages from every position of the list.
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut token = None;
    while started.elapsed() < config.duration.min(Duration::from_secs(10)) {
        let t = Instant::now();
        let page = client
            .list::<Port>(&ListOptions {
                project: Some("bench".into()),
                limit: Some(500),
                continue_token: token.take(),
                ..ListOptions::default()
            })
            .await?;
        latencies.push(t.elapsed());
        token = page.continue_token;
    }
    let list_page = rate(latencies, started.elapsed());
    let under_reach = writes_under_reach(&client, &base, config.duration).await?;
    let _ = stop.send(());

    let ready_after = match &config.weft_exe {
        Some(exe) => Some(time_ready(exe, &db.url).await?),
        None => None,
    };

    tracing::info!("pgbench");
    let pgbench = pgbench_figures(&config.database_url, n, config.duration).await?;
    Ok(ApiReport {
        clients: n,
        load_generator: if wrk.is_some() { "wrk (2 threads)" } else { "the built-in client" },
        get_by_id,
        create_group,
        pgbench,
        list_page,
        under_reach,
        ports: config.ports,
        ready_after,
    })
}

/// Writes while readers ask for reach matrices.
#[derive(Debug)]
pub struct UnderReach {
    /// One writer alone, then with `readers` asking for 500x500 matrices as fast as answered.
    pub alone: Rate,
    pub loaded: Rate,
    pub readers: usize,
    /// Matrices answered, and refused (429: the token has one in progress; 503: the server's
    /// turns were taken for too long).
    pub matrices: usize,
    pub refused: usize,
}

/// A project of 500 ports (the largest matrix), then one writer creating groups elsewhere,
/// alone and while 8 readers (each its own token) ask for the project's matrix.
async fn writes_under_reach(client: &Client, base: &str, duration: Duration) -> Result<UnderReach, BenchError> {
    const READERS: usize = 8;
    client.create(&weft_model::Project { name: "reach".into(), ..Default::default() }).await?;
    let ops: Vec<weft_client::BatchOp> = (0..500)
        .map(|i| weft_client::BatchOp::Create {
            kind: weft_model::Kind::Port,
            object: weft_client::object(
                &json!({"name": format!("p{i}"), "project": "reach", "node": format!("node-{}", i % 50),
                "ips": [format!("10.250.{}.{}", i / 250, i % 250 + 1)], "labels": {"app": format!("a{}", i % 20)},
                "security_groups": []}),
            ),
        })
        .collect();
    client.batch(&ops).await?;
    let duration = duration.min(Duration::from_secs(10));
    let write = |client: Client, tag: &'static str| {
        move |_: usize, i: usize| {
            let client = client.clone();
            async move {
                let sg: SecurityGroup =
                    serde_json::from_value(json!({"name": format!("{tag}-{i}"), "project": "bench"})).map_err(other)?;
                client.create(&sg).await?;
                Ok(())
            }
        }
    };
    let alone = load(1, duration, write(client.clone(), "alone")).await?;
    let stop = Instant::now() + duration;
    let mut readers = Vec::new();
    for r in 0..READERS {
        let reader = client.create_token("reader", Some("reach"), &format!("bench reader {r}"), None).await?;
        let reader = Client::new(base, reader.token, None)?;
        readers.push(tokio::spawn(async move {
            let (mut answered, mut refused) = (0, 0);
            while Instant::now() < stop {
                match reader.reach(&[("project", "reach".into()), ("port", "80".into())]).await {
                    Ok(_) => answered += 1,
                    Err(e) if matches!(e.status(), Some(429 | 503)) => refused += 1,
                    Err(e) => return Err(BenchError::from(e)),
                }
            }
            Ok((answered, refused))
        }));
    }
    let loaded = load(1, duration, write(client.clone(), "loaded")).await?;
    let (mut matrices, mut refused) = (0, 0);
    for r in join_all(readers).await {
        let (a, f) = r.map_err(other)??;
        matrices += a;
        refused += f;
    }
    Ok(UnderReach { alone, loaded, readers: READERS, matrices, refused })
}

/// wrk, when installed: a load generator in C, as lean as pgbench, so that the two figures are
/// measured alike. Without it the bench falls back to its own Rust client.
fn which_wrk() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join("wrk")).find(|p| p.is_file()))
}

/// Runs wrk with `clients` connections on two threads and reads its figures. Any non-2xx
/// answer fails the bench: it would measure errors, not work.
async fn wrk_rate(
    wrk: &PathBuf,
    url: &str,
    token: &str,
    script: Option<&str>,
    clients: usize,
    duration: Duration,
) -> Result<Rate, BenchError> {
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.args(["-t", "2", "-c", &clients.to_string(), "-d", &format!("{}s", duration.as_secs().max(1)), "--latency"]);
    let script_file = std::env::temp_dir().join(format!("weft-bench-{}.lua", uuid::Uuid::new_v4().simple()));
    match script {
        Some(script) => {
            std::fs::write(&script_file, script).map_err(other)?;
            cmd.arg("-s").arg(&script_file);
        }
        None => {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().await.map_err(|e| BenchError::Other(format!("wrk: {e}")));
    let _ = std::fs::remove_file(&script_file);
    let text = String::from_utf8_lossy(&out?.stdout).into_owned();
    if text.contains("Non-2xx") {
        return Err(BenchError::Other(format!("wrk saw error answers:\n{text}")));
    }
    let ms = |label: &str| -> Option<Duration> {
        let value = text.lines().find(|l| l.trim_start().starts_with(label))?.split_whitespace().nth(1)?.to_string();
        let (number, factor) = if let Some(v) = value.strip_suffix("us") {
            (v, 1e-6)
        } else if let Some(v) = value.strip_suffix("ms") {
            (v, 1e-3)
        } else if let Some(v) = value.strip_suffix('s') {
            (v, 1.0)
        } else {
            return None;
        };
        number.parse::<f64>().ok().map(|n| Duration::from_secs_f64(n * factor))
    };
    let requests: usize = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BenchError::Other(format!("cannot read wrk's output:\n{text}")))?;
    let elapsed = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split(" requests in ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|d| d.trim().strip_suffix('s'))
        .and_then(|d| d.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(duration);
    Ok(Rate { requests, elapsed, p50: ms("50%").unwrap_or_default(), p99: ms("99%").unwrap_or_default() })
}

async fn time_ready(exe: &PathBuf, url: &str) -> Result<Duration, BenchError> {
    let data_dir = std::env::temp_dir().join(format!("weft-bench-{}", uuid::Uuid::new_v4().simple()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(other)?;
    let port = listener.local_addr().map_err(other)?.port();
    drop(listener);
    let start = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--grpc-listen",
            "127.0.0.1:0",
            "--database-url",
            url,
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Other(format!("cannot start {}: {e}", exe.display())))?;
    let probe = Client::new(&format!("http://127.0.0.1:{port}"), None, None)?;
    let ready = loop {
        if probe.ready().await.unwrap_or(false) {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill().await;
            return Err(BenchError::Other("weft server was not ready within 60 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(ready)
}

/// pgbench's figures on fresh databases: `-S -M prepared`, a minimal "insert one row and one
/// change-log row" on two bare tables, and the same two rows written into weft's own tables
/// (every index weft's schema has): the last isolates what the API adds on top of PostgreSQL.
async fn pgbench_figures(admin_url: &str, clients: usize, duration: Duration) -> Result<PgbenchFigures, BenchError> {
    let db = BenchDb::create(admin_url, "weft_bench_pgbench").await?;
    let result = async {
        let c = clients.to_string();
        let t = duration.as_secs().max(1).to_string();
        let run = ["-M", "prepared", "-c", &c, "-j", "2", "-T", &t, "-n"];
        pgbench(&db.url, &["-i", "-q", "-s", "10"], None).await.ok();
        let select = pgbench(&db.url, &["-S", "-M", "prepared", "-c", &c, "-j", "2", "-T", &t, "-n"], None).await?;
        let mut conn = sqlx::PgConnection::connect(&db.url).await?;
        sqlx::raw_sql(
            "CREATE TABLE bench_objects (id uuid PRIMARY KEY, name text NOT NULL, body json NOT NULL); \
             CREATE TABLE bench_changes (revision bigserial PRIMARY KEY, id uuid NOT NULL, body json NOT NULL);",
        )
        .execute(&mut conn)
        .await?;
        let minimal = "\\set n random(1, 1000000000)\n\
            BEGIN;\n\
            INSERT INTO bench_objects VALUES (gen_random_uuid(), 'g-' || :n || '-' || :client_id, '{\"name\":\"g\",\"project\":\"bench\",\"rules\":[]}');\n\
            INSERT INTO bench_changes (id, body) VALUES (gen_random_uuid(), '{\"name\":\"g\",\"project\":\"bench\",\"rules\":[]}');\n\
            END;\n";
        let insert_minimal = pgbench(&db.url, &run, Some(minimal)).await?;
        drop(conn);

        let schema = BenchDb::create(admin_url, "weft_bench_schema").await?;
        let store = weft_store::Store::connect(&schema.url, 2).await?;
        store.migrate().await?;
        let mut txn = store.begin().await?;
        txn.create(weft_model::Resource::Project(weft_model::Project { name: "bench".into(), ..Default::default() }))
            .await?;
        txn.commit().await?;
        let project: uuid::Uuid = sqlx::query_scalar("SELECT id FROM objects WHERE kind = 'project'")
            .fetch_one(store.pool())
            .await?;
        store.pool().close().await;
        let same_tables = format!(
            "\\set n random(1, 1000000000)\n\
            BEGIN;\n\
            INSERT INTO objects (id, kind, project_id, scope, name, labels, body, revision, created_at, updated_at) VALUES (gen_random_uuid(), 'security-group', '{project}', '{project}', 'g-' || :n || '-' || :client_id, '{{}}', '{{\"name\":\"g\",\"project\":\"bench\",\"rules\":[]}}', nextval('revisions'), now(), now());\n\
            INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) VALUES (currval('revisions'), 0, 'security-group', gen_random_uuid(), 'put', '{{\"name\":\"g\",\"project\":\"bench\",\"rules\":[]}}', now(), now());\n\
            END;\n"
        );
        let insert_same_tables = pgbench(&schema.url, &run, Some(&same_tables)).await;
        schema.drop_database().await;
        Ok::<_, BenchError>(PgbenchFigures { select, insert_minimal, insert_same_tables: insert_same_tables? })
    }
    .await;
    db.drop_database().await;
    result
}
