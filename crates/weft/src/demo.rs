//! `weft demo yelb`: the seed's walk-through (shared/seed/use-case-4-network-policies.txt) made
//! true on this machine, with real packets. A server (on a private PostgreSQL, or a scratch
//! database of DATABASE_URL's server), kube-manager watching a directory of the demo's own
//! (the pods' ports on the cluster's pod network), and a two-node lab of the yelb pods and a
//! kube-system DNS with one nftables agent per node, each pod wired through the CNI plugin. The
//! policies go into that directory (`kubectl create -f yelb-policy.yaml`) and come out again,
//! and every expectation of the seed is checked by probing; with the policies in force the
//! app's tiers talk as yelb does, and what the policy decided (the seed's step 8) is read back
//! from the flow records. Everything the demo makes is removed at the end, also after
//! a failure or Ctrl-C, unless `--keep` (then `weft demo down DIR`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use weft_lab::watch::{Watch, ping_round};
use weft_lab::{Lab, Matrix, Protocol};
use weft_model::{Port, SecurityGroup};
use weft_store::admin::ScratchDatabase;

use crate::client_cmds;
use crate::policy_cmds::trace_lines;

const APP: &str = include_str!("../../../examples/yelb/app.yaml");
/// The cluster's DNS, in kube-system: what yelb-appserver resolves its peers through.
const KUBE_DNS: &str = include_str!("../../../examples/yelb/kube-dns.yaml");
const POLICY: &str = include_str!("../../../examples/yelb/yelb-policy.yaml");
const PROJECT: &str = "k8s-default";
/// The cluster's pod network: yelb's manifests ask for addresses in it.
const POD_NETWORK: &str = "10.47.0.0/16";
/// How long one step may wait for the stack (a write realized, a ping to stop).
const STEP: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// The seed's walk-through: the yelb app before, with and after its network policies,
    /// checked with real packets (needs root).
    Yelb {
        /// Leave the stack running afterwards for exploring; `weft demo down DIR` ends it.
        #[arg(long)]
        keep: bool,
    },
    /// Stop a stack that `weft demo yelb --keep` left running, and remove it.
    Down { dir: PathBuf },
}

pub async fn run(command: DemoCommand) -> anyhow::Result<()> {
    match command {
        DemoCommand::Yelb { keep } => yelb(keep).await,
        DemoCommand::Down { dir } => {
            let record: Record = serde_json::from_slice(
                &std::fs::read(dir.join("demo.json")).with_context(|| format!("no demo in {}", dir.display()))?,
            )?;
            Stack::from_record(dir, record).teardown().await;
            eprintln!("demo removed");
            Ok(())
        }
    }
}

/// What a kept stack is made of, in `<dir>/demo.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    url: String,
    server_pid: Option<u32>,
    kube_manager_pid: Option<u32>,
    lab_name: String,
    /// (server URL, database name) of a scratch database.
    database: Option<(String, String)>,
}

/// Everything the demo started; removed when dropped unless kept.
struct Stack {
    dir: PathBuf,
    record: Record,
    server: Option<Child>,
    kube_manager: Option<Child>,
    lab: Option<Lab>,
    keep: bool,
}

impl Stack {
    fn from_record(dir: PathBuf, record: Record) -> Stack {
        let lab = Lab::open(&dir.join("lab")).ok();
        Stack { dir, record, server: None, kube_manager: None, lab, keep: false }
    }

    fn save(&self) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("demo.json"), serde_json::to_vec_pretty(&self.record)?)?;
        Ok(())
    }

    /// Stops kube-manager, the lab and the server (which stops a private PostgreSQL), drops a
    /// scratch database or removes the private cluster, and removes the directory.
    async fn teardown(mut self) {
        self.keep = true; // Done here; Drop has nothing left to do.
        stop(self.kube_manager.take(), self.record.kube_manager_pid);
        if let Some(mut lab) = self.lab.take() {
            lab.down();
        }
        stop(self.server.take(), self.record.server_pid);
        if let Some((server, name)) = self.record.database.take() {
            ScratchDatabase::existing(&server, &name).drop_database().await;
        }
        // A private PostgreSQL's cluster, which lives in /var/tmp when the demo runs as root.
        if let Err(e) = weft_store::embedded::remove_cluster(&self.dir.join("data")) {
            eprintln!("cannot remove the demo's private PostgreSQL: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let stack = Stack {
            dir: self.dir.clone(),
            record: std::mem::take(&mut self.record),
            server: self.server.take(),
            kube_manager: self.kube_manager.take(),
            lab: self.lab.take(),
            keep: false,
        };
        // Drop cannot wait for the database to be dropped: a thread with a runtime of its own
        // does the teardown, and the demo waits for it.
        let done = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(stack.teardown());
            }
        });
        let _ = done.join();
    }
}

/// Stops a process the demo started (the server may take a while: it stops its PostgreSQL),
/// and reaps it when the demo is its parent.
fn stop(child: Option<Child>, pid: Option<u32>) {
    if let Some(pid) = child.as_ref().map(Child::id).or(pid) {
        weft_lab::stop_within(pid, Duration::from_secs(10));
    }
    if let Some(mut child) = child {
        let _ = child.wait();
    }
}

/// Prints the walk-through and keeps the score.
#[derive(Default)]
struct Narrator {
    expectations: Vec<(String, bool)>,
}

impl Narrator {
    fn step(&self, title: &str) {
        println!("\n== {title}");
    }

    fn say(&self, text: &str) {
        println!("   {text}");
    }

    fn command(&self, text: &str) {
        println!("   $ {text}");
    }

    fn expect(&mut self, what: &str, met: bool) {
        println!("   {} {what}", if met { "✓" } else { "✗ NOT MET:" });
        self.expectations.push((what.to_string(), met));
    }

    fn matrix(&self, m: &Matrix) {
        println!("   reachability ({}{}):", m.protocol, m.port.map(|p| format!("/{p}")).unwrap_or_default());
        for line in m.table().lines() {
            println!("     {line}");
        }
    }
}

/// The last lines of a log, for an error that says why.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the weft binary")
}

/// What the walk-through needs of this machine, checked before anything is made: one line
/// naming what is missing (scripts/demo.sh installs it).
fn preflight() -> anyhow::Result<()> {
    weft_lab::check_host().map_err(|e| anyhow::anyhow!("weft demo yelb: {e}"))?;
    if std::env::var("DATABASE_URL").map_or(true, |u| u.is_empty()) {
        weft_store::embedded::check_installed().map_err(|e| anyhow::anyhow!("weft demo yelb: {e}"))?;
    }
    Ok(())
}

async fn yelb(keep: bool) -> anyhow::Result<()> {
    preflight()?;
    let started = Instant::now();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let dir = std::env::temp_dir().join(format!("weft-demo-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut stack = Stack {
        dir: dir.clone(),
        record: Record { lab_name: format!("yelb-{tag}"), ..Record::default() },
        server: None,
        kube_manager: None,
        lab: None,
        keep: false,
    };
    let mut narrator = Narrator::default();
    let outcome = tokio::select! {
        outcome = walk(&mut stack, &mut narrator) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let met = narrator.expectations.iter().filter(|(_, ok)| *ok).count();
    let total = narrator.expectations.len();
    if let Err(e) = &outcome {
        println!("\n   the walk-through stopped: {e:#}");
    }
    println!(
        "\nyelb walk-through: {met} of {total} expectations met in {:.0} s{}",
        started.elapsed().as_secs_f64(),
        match (&outcome, met == total) {
            (Err(_), _) => " — stopped before the end",
            (Ok(()), false) => " — see the ✗ above",
            (Ok(()), true) => "",
        }
    );
    if keep {
        stack.keep = true;
        stack.save()?;
        println!("\nThe stack is still running. To explore it:");
        println!(
            "  export WEFT_SERVER={} WEFT_DATA_DIR={} WEFT_LAB={} WEFT_LAB_DIR={}",
            stack.record.url,
            dir.join("data").display(),
            stack.record.lab_name,
            dir.join("lab").display()
        );
        println!(
            "  weft lab probe --port 80; weft reach --port 5432; weft lab exec yelb-ui -- weft lab ping --count 1 10.47.1.21"
        );
        println!("  weft flows --project {PROJECT} -f      # what the policy decides, as it happens");
        println!(
            "  the traffic-groups page: {}/ui/traffic-groups?project={PROJECT}&group=app (sign in with the token in {})",
            stack.record.url,
            dir.join("data").join("admin.token").display()
        );
        println!("  manifests kube-manager follows: {}", dir.join("manifests").display());
        println!("To tear it down: weft demo down {}", dir.display());
    }
    outcome?;
    if met < total {
        anyhow::bail!("{} of {total} expectations not met", total - met);
    }
    Ok(())
}

/// The walk-through itself; `stack` collects what it starts as it goes.
async fn walk(stack: &mut Stack, n: &mut Narrator) -> anyhow::Result<()> {
    let dir = stack.dir.clone();
    let binary = binary()?;
    n.step("1. The stack: weft server, kube-manager, a lab of two nodes with the yelb pods");

    // PostgreSQL: a scratch database of DATABASE_URL's server, else weft's private one.
    let database_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let db = ScratchDatabase::create(&url, "weft_demo").await.context("a scratch database on DATABASE_URL")?;
            stack.record.database = Some((db.server_url().to_string(), db.name().to_string()));
            n.say(&format!("PostgreSQL: a scratch database ({}) on DATABASE_URL's server", db.name()));
            Some(db.url.clone())
        }
        _ => {
            n.say("PostgreSQL: a private server that weft server starts in its data dir");
            None
        }
    };
    let (rest, grpc) = (free_port()?, free_port()?);
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut server = Command::new(&binary);
    server
        .args(["server", "--listen", &format!("127.0.0.1:{rest}"), "--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log"))?);
    if let Some(url) = &database_url {
        server.args(["--database-url", url]);
    }
    let server = server.spawn().context("cannot start weft server")?;
    stack.record.server_pid = Some(server.id());
    stack.server = Some(server);
    let url = format!("http://127.0.0.1:{rest}");
    stack.record.url = url.clone();
    // A first start initialises the private PostgreSQL (initdb, then pg_ctl's own wait of up
    // to 60 s), which on a loaded machine has taken longer than a minute: the wait is long,
    // and ends at once when the server exits, with what its log says.
    let deadline = Instant::now() + Duration::from_secs(180);
    let anonymous = weft_client::Client::new(&url, None, None)?;
    let log = dir.join("server.log");
    while !anonymous.ready().await.unwrap_or(false) {
        if let Some(status) = stack.server.as_mut().and_then(|s| s.try_wait().ok().flatten()) {
            anyhow::bail!("weft server exited ({status}) before it was ready; {}:\n{}", log.display(), log_tail(&log));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "weft server did not become ready within 180 s; {}:\n{}",
            log.display(),
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(data.join("admin.token")).context("the server's admin token")?;
    let c = weft_client::Client::new(&url, Some(token.trim().to_string()), None)?;
    n.say(&format!("weft server at {url}, agents' gRPC at 127.0.0.1:{grpc}"));

    // kube-manager first, as in a cluster: a pod's port is written once it is scheduled, and
    // its sandbox's CNI ADD finds the port on the node.
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("app.yaml"), APP)?;
    std::fs::write(manifests.join("kube-dns.yaml"), KUBE_DNS)?;
    let kube_manager = Command::new(&binary)
        .args(["kube-manager", "--pod-network-cidr", POD_NETWORK, "--manifests"])
        .arg(&manifests)
        .arg("--data-dir")
        .arg(&data)
        .env("WEFT_SERVER", &url)
        .env_remove("WEFT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kube-manager.log"))?)
        .spawn()
        .context("cannot start kube-manager")?;
    stack.record.kube_manager_pid = Some(kube_manager.id());
    stack.kube_manager = Some(kube_manager);
    n.say(&format!(
        "kube-manager following {} (app.yaml: the namespace and the four pods; kube-dns.yaml: kube-system's DNS), the pod network {POD_NETWORK}",
        manifests.display()
    ));

    let app = dir.join("app");
    std::fs::create_dir_all(&app)?;
    std::fs::write(app.join("app.yaml"), APP)?;
    std::fs::write(app.join("kube-dns.yaml"), KUBE_DNS)?;
    let wiring = crate::lab_cmds::Wiring { plugin: None, wait: STEP };
    let lab = crate::lab_cmds::create(&app, &stack.record.lab_name, &dir.join("lab"), "k8s-", &wiring, &c).await?;
    n.say(&format!(
        "lab {}: nodes {}, pods {} wired by weft-cni, an `outside` network; an nftables agent per node",
        lab.state.name,
        lab.state.nodes.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(" and "),
        lab.state.pods.iter().map(|p| p.pod.name.as_str()).collect::<Vec<_>>().join(", ")
    ));
    stack.lab = Some(lab);
    let revision = until(&c, "kube-manager wrote the four pods and kube-dns", |ports: &[Port], _: &[SecurityGroup]| {
        ports.iter().filter(|p| p.project == PROJECT).count() == 4 && ports.iter().any(|p| p.name == "kube-dns")
    })
    .await?;
    client_cmds::realized(&c, revision, STEP).await?;
    n.say(&format!("every agent applied revision {revision}"));
    let lab = stack.lab.as_ref().context("the lab")?;
    n.say(&format!(
        "to run the commands below yourself (with --keep): export WEFT_SERVER={url} WEFT_DATA_DIR={} WEFT_LAB={} WEFT_LAB_DIR={}",
        data.display(),
        lab.state.name,
        lab.dir.display()
    ));

    let db = address_of(lab, "yelb-db")?;
    n.step("2. Before the policy (seed step 6): all pod communication is unrestricted");
    n.command(&format!("weft lab exec yelb-ui -- weft lab ping --count 3 {db}"));
    let answered = ping(lab, "yelb-ui", db)?;
    n.say(&format!("{answered} of 3 pings answered"));
    n.expect("ping from yelb-ui to yelb-db gets answers", answered > 0);
    let before = observe(n, &c, lab, Protocol::Icmp, None).await?;
    n.expect("every pod pings every other pod", before.allows(&pod("yelb-ui"), &pod("yelb-db")));
    let web = observe(n, &c, lab, Protocol::Tcp, Some(80)).await?;
    n.expect("`outside` reaches yelb-ui on TCP 80 (the web page loads)", web.allows("outside", &pod("yelb-ui")));

    n.step("3. kubectl create -f yelb-policy.yaml (seed step 7)");
    let ui_netns = &lab.pod("yelb-ui").context("no pod yelb-ui")?.netns;
    let ping_args = ["lab", "ping", "--interval-ms", "200", "--timeout-ms", "500", &db.to_string()];
    let mut running = Watch::spawn(ui_netns, &binary.to_string_lossy(), &ping_args, ping_round)?;
    n.say(&format!("a ping left running: weft lab exec yelb-ui -- weft lab ping {db}"));
    let answering = tokio::task::block_in_place(|| running.in_a_row(true, 3, Duration::from_secs(10)));
    n.expect("the running ping gets answers before the policy", answering);
    n.command(&format!("cp yelb-policy.yaml {}/   # kube-manager follows it as a cluster would", manifests.display()));
    std::fs::write(manifests.join("yelb-policy.yaml"), POLICY)?;
    let revision = until(&c, "kube-manager wrote the five policies", |_: &[Port], groups: &[SecurityGroup]| {
        groups.iter().filter(|g| g.project == PROJECT && g.name != "default").count() == 5
    })
    .await?;
    n.command(&format!("weft wait --revision {revision}"));
    let realization = client_cmds::realized(&c, revision, STEP).await?;
    n.say(&format!(
        "revision {revision} applied by every node it concerns ({})",
        realization.nodes.iter().filter_map(|x| x["name"].as_str()).collect::<Vec<_>>().join(", ")
    ));

    n.step("4. With the policy: only what the app needs gets through");
    let stopped = tokio::task::block_in_place(|| running.in_a_row(false, 3, Duration::from_secs(10)));
    n.expect("the ping left running from yelb-ui to yelb-db stops getting answers", stopped);
    drop(running);
    n.command(&format!("weft lab exec yelb-ui -- weft lab ping --count 3 {db}"));
    let answered = ping(lab, "yelb-ui", db)?;
    n.say(&format!("{answered} of 3 pings answered"));
    n.expect("ping from yelb-ui to yelb-db gets no answer", answered == 0);
    let pings = observe(n, &c, lab, Protocol::Icmp, None).await?;
    n.expect("default-deny: no pod answers another pod's ping", {
        let pods: Vec<&String> = pings.endpoints.iter().filter(|e| e.as_str() != "outside").collect();
        pods.iter().all(|a| pods.iter().all(|b| a == b || !pings.allows(a, b)))
    });
    n.command("weft trace k8s-default/yelb-ui k8s-default/yelb-db --protocol icmp");
    let why = c
        .explain(&serde_json::json!({"from": pod("yelb-ui"), "to": pod("yelb-db"), "protocol": "icmp", "revision": revision}))
        .await?;
    for line in trace_lines(&why, &pod("yelb-ui"), &pod("yelb-db"), "icmp") {
        n.say(&line);
    }
    let (outside, ui_, app, dbp, redis) =
        ("outside", pod("yelb-ui"), pod("yelb-appserver"), pod("yelb-db"), pod("redis-server"));
    let web = observe(n, &c, lab, Protocol::Tcp, Some(80)).await?;
    n.expect("`outside` still reaches yelb-ui on TCP 80 (the app keeps working)", web.allows(outside, &ui_));
    let api = observe(n, &c, lab, Protocol::Tcp, Some(4567)).await?;
    n.expect("yelb-ui reaches yelb-appserver on TCP 4567", api.allows(&ui_, &app));
    n.expect("`outside` does not reach yelb-appserver on TCP 4567", !api.allows(outside, &app));
    let sql = observe(n, &c, lab, Protocol::Tcp, Some(5432)).await?;
    n.expect("yelb-appserver reaches yelb-db on TCP 5432", sql.allows(&app, &dbp));
    n.expect("yelb-ui does not reach yelb-db on TCP 5432", !sql.allows(&ui_, &dbp));
    n.command("weft trace k8s-default/yelb-ui k8s-default/yelb-db --port 5432/tcp");
    let why = c
        .explain(&serde_json::json!({"from": ui_, "to": dbp, "protocol": "tcp", "port": 5432, "revision": revision}))
        .await?;
    for line in trace_lines(&why, &ui_, &dbp, "tcp/5432") {
        n.say(&line);
    }
    let cache = observe(n, &c, lab, Protocol::Tcp, Some(6379)).await?;
    n.expect("yelb-appserver reaches redis-server on TCP 6379", cache.allows(&app, &redis));

    flows(n, &c, lab, &url, &data).await?;

    n.step("6. kubectl delete -f yelb-policy.yaml: back to the baseline");
    std::fs::remove_file(manifests.join("yelb-policy.yaml"))?;
    n.command(&format!("rm {}/yelb-policy.yaml", manifests.display()));
    let revision = until(&c, "kube-manager removed the policies", |_: &[Port], groups: &[SecurityGroup]| {
        !groups.iter().any(|g| g.project == PROJECT && g.name != "default")
    })
    .await?;
    n.command(&format!("weft wait --revision {revision}"));
    client_cmds::realized(&c, revision, STEP).await?;
    let answered = ping(lab, "yelb-ui", db)?;
    n.say(&format!("weft lab exec yelb-ui -- weft lab ping --count 3 {db}: {answered} of 3 answered"));
    n.expect("ping from yelb-ui to yelb-db gets answers again", answered > 0);
    let web = observe(n, &c, lab, Protocol::Tcp, Some(80)).await?;
    n.expect("`outside` reaches yelb-ui on TCP 80", web.allows("outside", &pod("yelb-ui")));
    Ok(())
}

fn pod(name: &str) -> String {
    format!("{PROJECT}/{name}")
}

/// Seed step 8: the app's tiers talk as yelb does, and what the policy decided of it (the
/// denied ping of step 4 too) is read back from `weft flows` and named on the traffic-groups
/// page.
async fn flows(
    n: &mut Narrator,
    c: &weft_client::Client,
    lab: &Lab,
    url: &str,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    n.step("5. What the policy decided (seed step 8): weft flows and the traffic-groups page");
    let began = chrono::Utc::now();
    let said = tokio::task::block_in_place(|| app_traffic(lab));
    let talked = said.iter().all(|(_, ok)| *ok);
    for (line, _) in &said {
        n.say(line);
    }
    n.expect(
        "the tiers talk as the app does: outside -> yelb-ui:80, yelb-ui -> yelb-appserver:4567, yelb-appserver resolves yelb-db and redis-server and reaches them on 5432 and 6379",
        talked,
    );
    // The records reach the flow log within a few seconds (the controller holds each a moment
    // to join its two sides); what the seed says must be among them.
    let query = [("project", PROJECT.to_string()), ("since", "15m".to_string()), ("limit", "5000".to_string())];
    let deadline = Instant::now() + STEP;
    let (mut ping, mut named, mut sql) = (None, false, None);
    while Instant::now() < deadline {
        let seen = c.flows(&query).await?;
        ping = seen.iter().find(|f| denied_ping(f)).cloned();
        named = ["yelb-db", "redis-server"].iter().all(|peer| {
            let name = weft_lab::dns::service_name(peer, "default");
            seen.iter().any(|f| {
                f.src.name.as_deref() == Some("yelb-appserver") && f.dns.as_ref().is_some_and(|q| q.name == name)
            })
        });
        sql = seen.iter().find(|f| allowed_sql(f)).cloned();
        if ping.is_some() && named && sql.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shown = |n: &Narrator, query: &[(&str, String)], flows: &[weft_model::flow::Flow]| {
        let args: Vec<String> = query.iter().map(|(k, v)| format!("--{k} {v}")).collect();
        n.command(&format!("weft flows {}", args.join(" ")).replace("--limit", "--last"));
        for f in flows {
            n.say(&crate::output::flow_line(f));
        }
    };
    let pings = [
        ("project", PROJECT.to_string()),
        ("from", "app=yelb-ui".to_string()),
        ("to", "app=yelb-db".to_string()),
        ("protocol", "icmp".to_string()),
        ("verdict", "denied".to_string()),
        ("limit", "3".to_string()),
    ];
    shown(n, &pings, &c.flows(&pings).await?);
    n.expect(
        "the denied ping from yelb-ui to yelb-db is recorded, yelb-db isolated by default-deny and yelb-db-in",
        ping.is_some(),
    );
    let since = began.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // What the app did since it began to talk (the probes before left denials of their own).
    let app = [
        ("project", PROJECT.to_string()),
        ("since", since),
        ("verdict", "allowed".to_string()),
        ("limit", "40".to_string()),
    ];
    shown(n, &app, &c.flows(&app).await?);
    n.expect("yelb-appserver's DNS queries are recorded with their names (yelb-db, redis-server)", named);
    n.expect(
        "yelb-appserver -> yelb-db:5432 is recorded as allowed by yelb-db-in's rule (NetworkPolicy yelb-db-in, ingress[0])",
        sql.is_some(),
    );
    n.say(&format!("the traffic-groups page: {url}/ui/traffic-groups?project={PROJECT}&group=app"));
    n.say(&format!("(sign in with the admin token in {})", data.join("admin.token").display()));
    Ok(())
}

/// A denied ping from yelb-ui to yelb-db, its ingress naming both groups that isolate yelb-db.
fn denied_ping(f: &weft_model::flow::Flow) -> bool {
    use weft_model::flow::{SideDecision, Verdict};
    let isolated_by = match &f.ingress {
        Some(SideDecision::Denied { isolated_by }) => isolated_by.iter().map(|g| g.name.as_str()).collect(),
        _ => Vec::new(),
    };
    f.verdict == Verdict::Denied
        && f.protocol == 1
        && f.src.name.as_deref() == Some("yelb-ui")
        && f.dst.name.as_deref() == Some("yelb-db")
        && isolated_by.contains(&"default-deny")
        && isolated_by.contains(&"yelb-db-in")
}

/// yelb-appserver's connection to yelb-db on 5432, allowed on yelb-db's side by the rule of
/// yelb-db-in that came from the NetworkPolicy's first ingress entry.
fn allowed_sql(f: &weft_model::flow::Flow) -> bool {
    use weft_model::flow::{SideDecision, Verdict};
    let by_rule = match &f.ingress {
        Some(SideDecision::Allowed { rule }) => {
            rule.group_name == "yelb-db-in"
                && rule
                    .origin
                    .as_ref()
                    .is_some_and(|o| o.kind == "NetworkPolicy" && o.name == "yelb-db-in" && o.index == Some(0))
        }
        _ => false,
    };
    f.verdict == Verdict::Allowed
        && f.src.name.as_deref() == Some("yelb-appserver")
        && f.dst.name.as_deref() == Some("yelb-db")
        && f.dst_port == Some(5432)
        && by_rule
}

/// What yelb's tiers do, with real connections from inside the pods: a browser outside loads
/// the page from yelb-ui, yelb-ui asks yelb-appserver's API, and yelb-appserver resolves its
/// peers through kube-dns (as its resolv.conf would have it) and reaches its database and its
/// cache. Each exchange, and whether it went through.
fn app_traffic(lab: &Lab) -> Vec<(String, bool)> {
    let outside = lab.state.outside.clone().unwrap_or_default();
    let netns = |pod: &str| lab.pod(pod).map(|p| p.netns.clone()).unwrap_or_default();
    let address = |pod: &str| address_of(lab, pod).map_err(|e| std::io::Error::other(e.to_string()));
    let appserver = netns("yelb-appserver");
    let mut said = vec![
        talk(("outside", &outside), "yelb-ui", address("yelb-ui"), 80),
        talk(("yelb-ui", &netns("yelb-ui")), "yelb-appserver", address("yelb-appserver"), 4567),
    ];
    for (peer, port) in [("yelb-db", 5432), ("redis-server", 6379)] {
        let name = weft_lab::dns::service_name(peer, "default");
        let resolved = address("kube-dns").and_then(|dns| {
            weft_agent::netns::run_in(Some(&appserver), || weft_lab::dns::resolve(dns, &name, Duration::from_secs(2)))
        });
        let resolved = match resolved.map(|found| found.first().copied()) {
            Ok(Some(a)) => {
                said.push((format!("yelb-appserver resolves {name}: {a} (kube-dns)"), true));
                Ok(a)
            }
            Ok(None) => Err(std::io::Error::other(format!("{name}: no address"))),
            Err(e) => Err(e),
        };
        said.push(talk(("yelb-appserver", &appserver), peer, resolved, port));
    }
    said
}

/// A connection from a pod (its name and namespace) to another's port, and what came of it.
fn talk(from: (&str, &str), to: &str, address: std::io::Result<IpAddr>, port: u16) -> (String, bool) {
    let outcome = address.and_then(|a| {
        weft_agent::netns::run_in(Some(from.1), || {
            weft_lab::serve::exchange(std::net::SocketAddr::new(a, port), Duration::from_secs(2))
        })
    });
    match outcome {
        Ok(()) => (format!("{} -> {to}:{port}: connected, asked, answered", from.0), true),
        Err(e) => (format!("{} -> {to}:{port}: {e}", from.0), false),
    }
}

fn address_of(lab: &Lab, pod: &str) -> anyhow::Result<IpAddr> {
    lab.pod(pod)
        .and_then(|p| p.pod.addresses.iter().copied().find(IpAddr::is_ipv4))
        .with_context(|| format!("no pod {pod} in the lab"))
}

/// Polls the config service until `ready` holds; the revision it holds then.
async fn until(
    c: &weft_client::Client,
    what: &str,
    ready: impl Fn(&[Port], &[SecurityGroup]) -> bool,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + STEP;
    loop {
        let revision = c.info().await?.revision;
        let ports = c.list_all::<Port>(&Default::default()).await?;
        let groups = c.list_all::<SecurityGroup>(&Default::default()).await?;
        if ready(&ports, &groups) {
            return Ok(revision);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three pings from a pod (weft's own ICMP echo, sent from inside its namespace); how many
/// were answered.
fn ping(lab: &Lab, from: &str, to: IpAddr) -> anyhow::Result<u64> {
    let netns = &lab.pod(from).with_context(|| format!("no pod {from}"))?.netns;
    let answered = tokio::task::block_in_place(|| {
        weft_agent::netns::run_in(Some(netns), || {
            let mut pinger = weft_lab::icmp::Pinger::new(to.is_ipv6())?;
            pinger.rounds(to, Some(3), Duration::from_millis(200), Duration::from_millis(500), |_, _| Ok(()))
        })
    })?;
    Ok(answered)
}

/// Probes every pair of the app's project (and `outside`) with real packets, prints the
/// matrix, and checks it against what the compiler says (`weft reach`).
async fn observe(
    n: &mut Narrator,
    c: &weft_client::Client,
    lab: &Lab,
    protocol: Protocol,
    port: Option<u16>,
) -> anyhow::Result<Matrix> {
    let binary = binary()?;
    n.command(&match port {
        Some(p) => format!("weft lab probe --project {PROJECT} --protocol {protocol} --port {p}"),
        None => format!("weft lab probe --project {PROJECT} --protocol {protocol}"),
    });
    let measured = tokio::task::block_in_place(|| lab.probe(&binary, protocol, port, false, Some(PROJECT)))?;
    n.matrix(&measured);
    let mut query = vec![
        ("protocol", protocol.to_string()),
        ("outside", Lab::outside_address(false).to_string()),
        ("project", PROJECT.to_string()),
    ];
    query.extend(port.map(|p| ("port", p.to_string())));
    query.push(("revision", c.info().await?.revision.to_string()));
    let predicted: Matrix = serde_json::from_value(c.reach(&query).await?)?;
    n.expect("the compiler (weft reach) predicts exactly these pairs", predicted.allowed == measured.allowed);
    Ok(measured)
}
