//! The agent against a real controller (and PostgreSQL): joining, applying, saving, acking;
//! enforcing its saved span before any controller answers; converging after the controller
//! comes back; keeping its last good state when an update cannot be applied.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use weft_agent::{Datapath, DatapathError, MemoryDatapath, Shared, StateDir};
use weft_compiler::{NodeSpan, SpanDelta};
use weft_control::Control;
use weft_model::Kind;
use weft_store::Store;
use weft_testkit::{create, expected_span};

mod common;
use common::{PATIENCE, config, spawn, temp_dir};

async fn shop(store: &Store) {
    create(store, Kind::Project, json!({"name": "shop"})).await;
    create(
        store,
        Kind::SecurityGroup,
        json!({"name": "db", "project": "shop", "selector": {"matchLabels": {"app": "db"}}, "policy_types": ["ingress"],
               "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432],
                          "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}}]}),
    )
    .await;
    port(store, "db-0", "node-1", "10.0.0.1", "db").await;
}

async fn port(store: &Store, name: &str, node: &str, ip: &str, app: &str) -> i64 {
    let body = json!({"name": name, "project": "shop", "node": node, "ips": [ip], "labels": {"app": app}, "security_groups": []});
    create(store, Kind::Port, body).await
}

/// A controller on `addr`: port 0 picks a free port when it binds (no port chosen first and
/// bound later, which another test could take in between); the same address again restarts
/// one where an earlier one was.
async fn control_on(store: &Store, addr: SocketAddr) -> Control {
    let mut config = weft_control::Config::new(addr);
    config.poll = Duration::from_millis(50);
    Control::start(store.clone(), config).await.unwrap()
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn joins_applies_saves_and_enforces_its_last_span_while_the_controller_is_away(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let control = control_on(&store, any_port()).await;
    let addr = control.local_addr;
    let limits = weft_store::nodes::JoinTokenLimits {
        expires_in: Duration::from_secs(600),
        uses: 1,
        node: Some("node-1".into()),
    };
    let token = store.create_join_token(&limits, "test").await.unwrap();
    let dir = temp_dir();

    let datapath = Shared::<MemoryDatapath>::default();
    let mut agent = spawn(config(addr, dir.path(), Some(token.secret.clone())), datapath.clone());
    agent.until(|p| p.synced).await;
    let expected = expected_span(&store, "node-1").await;
    assert_eq!(datapath.0.lock().unwrap().span, expected);
    // The credential is kept, readable by root only.
    let credential = StateDir::new(dir.path()).unwrap().credential().unwrap();
    assert_eq!(store.authenticate_node(&credential).await.unwrap().as_deref(), Some("node-1"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("credential")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let added = port(&store, "api-0", "node-2", "10.0.0.2", "api").await;
    agent.until(|p| p.revision >= added).await;
    let span = expected_span(&store, "node-1").await;
    {
        let applied = datapath.0.lock().unwrap();
        assert_eq!(applied.span, span);
        assert!(applied.applies > applied.full, "deltas were applied as deltas");
    }
    agent.stop().await;
    control.shutdown().await;

    // Restarted with the controller away: the saved span is enforced at once (no join token
    // now: the credential comes from the state dir).
    let restarted = Shared::<MemoryDatapath>::default();
    let mut agent = spawn(config(addr, dir.path(), None), restarted.clone());
    let p = agent.until(|p| p.revision >= added).await;
    assert!(!p.synced);
    assert_eq!(restarted.0.lock().unwrap().span, span);

    // The controller comes back with a change made meanwhile: the agent converges.
    let meanwhile = port(&store, "db-1", "node-1", "10.0.0.3", "db").await;
    let control = control_on(&store, addr).await;
    agent.until(|p| p.synced && p.revision >= meanwhile).await;
    let expected = expected_span(&store, "node-1").await;
    assert_eq!(restarted.0.lock().unwrap().span, expected);
    agent.stop().await;
    control.shutdown().await;
}

/// A datapath that refuses every update after the first.
#[derive(Debug, Default)]
struct Refusing {
    span: NodeSpan,
    seen: usize,
}

impl Datapath for Refusing {
    fn apply(&mut self, _old: &NodeSpan, span: &NodeSpan, _: Option<&SpanDelta>) -> Result<(), DatapathError> {
        self.seen += 1;
        if self.seen > 1 {
            return Err(DatapathError::Other("the kernel said no".into()));
        }
        self.span = span.clone();
        Ok(())
    }
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn an_update_that_cannot_be_applied_is_reported_and_the_last_good_state_stays(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let control = control_on(&store, any_port()).await;
    let addr = control.local_addr;
    let credential = store.create_node("node-1").await.unwrap();
    let dir = temp_dir();
    let datapath = Shared(std::sync::Arc::new(std::sync::Mutex::new(Refusing::default())));
    let mut cfg = config(addr, dir.path(), None);
    cfg.credential = Some(credential);
    let mut agent = spawn(cfg, datapath.clone());
    let first = agent.until(|p| p.synced).await;
    let good = datapath.0.lock().unwrap().span.clone();
    assert_eq!(good, expected_span(&store, "node-1").await);

    port(&store, "api-0", "node-2", "10.0.0.2", "api").await;
    // The controller hears about it: the node's status carries the error.
    weft_testkit::eventually("the agent's error recorded", PATIENCE, || async {
        let nodes = store.list_nodes().await.unwrap();
        weft_testkit::when(nodes[0].last_error.as_deref().is_some_and(|e| e.contains("the kernel said no")), nodes)
    })
    .await;
    // What is in force, and what the agent would save, is still the last good state.
    assert_eq!(datapath.0.lock().unwrap().span, good);
    assert_eq!(agent.progress.borrow().revision, first.revision);
    assert!(!first.apply_failing);
    assert!(agent.progress.borrow().apply_failing, "the agent says its updates fail (CNI STATUS: 51)");
    assert_eq!(StateDir::new(dir.path()).unwrap().load("node-1").unwrap().span, good);
    agent.stop().await;
    control.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_stream_runs_over_tls_verified_with_the_agents_ca(pool: PgPool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Store::from_pool(pool);
    shop(&store).await;
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let mut settings = weft_control::Config::new(any_port());
    settings.tls = Some((ca.cert.pem().into_bytes(), ca.signing_key.serialize_pem().into_bytes()));
    let control = Control::start(store.clone(), settings).await.unwrap();
    let addr = control.local_addr;
    let credential = store.create_node("node-1").await.unwrap();
    let dir = temp_dir();
    let mut cfg = config(addr, dir.path(), None);
    cfg.server = format!("https://localhost:{}", addr.port());
    cfg.credential = Some(credential.clone());
    cfg.ca = Some(ca.cert.pem().into_bytes());
    let datapath = Shared::<MemoryDatapath>::default();
    let mut agent = spawn(cfg, datapath.clone());
    agent.until(|p| p.synced).await;
    let expected = expected_span(&store, "node-1").await;
    assert_eq!(datapath.0.lock().unwrap().span, expected);
    agent.stop().await;
    // Without the CA the controller is not trusted; in plaintext it does not answer.
    for (server, ca) in [(format!("https://localhost:{}", addr.port()), None), (format!("http://{addr}"), None)] {
        let mut cfg = config(addr, dir.path(), None);
        cfg.server = server;
        cfg.ca = ca;
        cfg.credential = Some(credential.clone());
        let mut agent = spawn(cfg, MemoryDatapath::default());
        let synced =
            tokio::time::timeout(Duration::from_millis(500), agent.progress.wait_for(|p| p.synced)).await.is_ok();
        assert!(!synced, "{addr}: synced without trusting the controller");
        agent.stop().await;
    }
    control.shutdown().await;
}

/// What the datapath saw reaches the controller on the agent's Flows stream (DESIGN.md §10):
/// a denied sample as it is, a DNS query under the local port holding its source address, a
/// connection under its local side, with what decided there.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn samples_are_reported_to_the_controller_under_their_ports(pool: PgPool) {
    use weft_agent::flows::{DeniedSample, DnsQuery, PacketHeader, Sample};
    let store = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let control = control_on(&store, any_port()).await;
    let key = weft_store::ObjectKey::Name { project: Some("shop".into()), name: "db-0".into() };
    let db = store.get(Kind::Port, &key).await.unwrap().unwrap().id;
    let dir = temp_dir();
    let mut agent_config = config(control.local_addr, dir.path(), None);
    agent_config.credential = Some(credential);
    // The agent's ports in force, as its stream would have them.
    let local = weft_agent::LocalPort {
        id: db,
        instance: None,
        interface: "weftdb".into(),
        addresses: vec!["10.0.0.1".parse().unwrap()],
    };
    // db-0 open both ways: no group isolates it.
    let policy = weft_compiler::PortPolicy {
        project: "shop".into(),
        name: "db-0".into(),
        addresses: local.addresses.clone(),
        refused_addresses: vec![],
        interface: "weftdb".into(),
        instance: None,
        named_ports: Default::default(),
        ingress: weft_compiler::Isolation::Open,
        egress: weft_compiler::Isolation::Open,
        policies: Default::default(),
    };
    let progress = weft_agent::Progress {
        ports: std::sync::Arc::new([(("shop".to_string(), "db-0".to_string()), local)].into()),
        span: std::sync::Arc::new(weft_compiler::NodeSpan { ports: [(db, policy)].into(), ..Default::default() }),
        ..Default::default()
    };
    let (_progress_tx, progress_rx) = tokio::sync::watch::channel(progress);
    let (samples, queued) = tokio::sync::mpsc::channel(16);
    // One sample a batch, as the denied samples' reader queues them.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(weft_agent::flows::report(agent_config, progress_rx, queued, stopped, None));
    let packet = PacketHeader {
        src: "10.0.0.9".parse().unwrap(),
        dst: "10.0.0.1".parse().unwrap(),
        protocol: 6,
        ports: Some((40000, 5432)),
        icmp: None,
    };
    samples
        .send(vec![(
            Sample::Denied(DeniedSample { by: weft_agent::flows::DeniedBy::Port(db), ingress: true, packet }),
            7,
        )])
        .await
        .unwrap();
    let query = DnsQuery {
        src: "10.0.0.1".parse().unwrap(),
        server: "10.96.0.10".parse().unwrap(),
        name: "api.shop.svc.cluster.local".into(),
        qtype: 1,
        src_port: Some(50000),
    };
    samples.send(vec![(Sample::Dns(query.clone()), 8)]).await.unwrap();
    // A query from an address no local port holds names no port: left out.
    samples.send(vec![(Sample::Dns(DnsQuery { src: "10.0.0.77".parse().unwrap(), ..query }), 9)]).await.unwrap();
    let connection = weft_agent::nft::ConnectionEvent {
        ended: false,
        id: 5,
        flow: weft_agent::nft::ConnectionTuple {
            protocol: 6,
            src: "10.0.0.9".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            sport: Some(40001),
            dport: Some(5432),
            icmp: None,
        },
        counters: None,
    };
    samples.send(vec![(Sample::Connection(connection), 10)]).await.unwrap();
    let kept = weft_testkit::eventually("the three records at the controller", PATIENCE, async || {
        let kept = control.flows.records(|_| true);
        if kept.len() >= 3 { Ok(kept) } else { Err(format!("{kept:?}")) }
    })
    .await;
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().all(|r| r.node == "node-1" && r.port == db), "{kept:?}");
    assert_eq!((kept[0].at_ms, kept[1].at_ms), (7, 8));
    assert!(matches!(
        &kept[0].what,
        weft_control::flows::Observed::Denied { ingress: true, protocol: 6, ports: Some((40000, 5432)), .. }
    ));
    assert!(
        matches!(&kept[1].what, weft_control::flows::Observed::Dns { name, .. } if name == "api.shop.svc.cluster.local")
    );
    let weft_control::flows::Observed::Connection(c) = &kept[2].what else { panic!("{kept:?}") };
    assert_eq!(
        (c.ingress, c.allowed_by, c.ports, c.id),
        (true, weft_control::flows::AllowedBy::Open, Some((40001, 5432)), 5)
    );
    assert_eq!(control.flows.refused.load(std::sync::atomic::Ordering::Relaxed), 0);
    stop.send_replace(true);
    control.shutdown().await;
}
