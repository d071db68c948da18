//! The controller against a real PostgreSQL (a fresh, migrated database per test) and agents
//! that speak the real protocol over gRPC.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use weft_compiler::NodeSpan;
use weft_control::{Config, Control};
use weft_model::Kind;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{self, AgentMessage, agent_message};
use weft_store::Store;

/// Long enough for any update on a loaded CI machine; tests never wait this long when right.
const PATIENCE: Duration = Duration::from_secs(20);

use weft_testkit::{create, expected_span};

async fn port(store: &Store, name: &str, node: &str, ip: &str, app: &str) -> i64 {
    create(
        store,
        Kind::Port,
        json!({"name": name, "project": "shop", "node": node, "ips": [ip], "labels": {"app": app}, "security_groups": []}),
    )
    .await
}

/// A project whose web ports accept TCP 80 from its db ports.
async fn shop(store: &Store) {
    create(store, Kind::Project, json!({"name": "shop"})).await;
    create(
        store,
        Kind::SecurityGroup,
        json!({"name": "web", "project": "shop", "selector": {"matchLabels": {"app": "web"}}, "policy_types": ["ingress"],
               "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80],
                          "remote": {"type": "selector", "ports": {"matchLabels": {"app": "db"}}}}]}),
    )
    .await;
    port(store, "web-1", "node-1", "10.0.0.1", "web").await;
    port(store, "db-1", "node-2", "10.0.0.2", "db").await;
}

async fn start(store: &Store) -> Control {
    start_with(store, |_| {}).await
}

/// A controller polling often, configured further by `configure`.
async fn start_with(store: &Store, configure: impl FnOnce(&mut Config)) -> Control {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.poll = Duration::from_millis(50);
    configure(&mut config);
    Control::start(store.clone(), config).await.unwrap()
}

/// The shop, and the credentials of node-1 and node-2.
async fn shop_on_two_nodes(store: &Store) -> (String, String) {
    shop(store).await;
    (store.create_node("node-1").await.unwrap(), store.create_node("node-2").await.unwrap())
}

/// An agent as far as the protocol goes: it applies what it receives to a span in memory.
struct TestAgent {
    span: NodeSpan,
    acks: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<v1::ControllerMessage>,
}

impl TestAgent {
    async fn connect(addr: SocketAddr, node: &str, credential: &str) -> Result<TestAgent, tonic::Status> {
        // A small HTTP/2 window: an agent that stops reading holds its stream up soon.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(Some(4096))
            .initial_connection_window_size(Some(4096))
            .connect()
            .await
            .unwrap();
        let mut client = AgentClient::new(channel).max_decoding_message_size(64 << 20);
        let (acks, rx) = mpsc::channel(16);
        let hello = v1::Hello {
            node: node.into(),
            credential: credential.into(),
            last_revision: 0,
            agent_version: "test".into(),
            // Its underlay address, and bytes that are no address (dropped, the node served).
            underlay: vec![weft_proto::encode_address(&UNDERLAY.parse().unwrap()), vec![1, 2, 3]],
        };
        acks.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await.unwrap();
        let inbound = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        Ok(TestAgent { span: NodeSpan::default(), acks, inbound })
    }

    /// Reads one whole update and applies it; its revision, and whether it was a snapshot.
    async fn next_update(&mut self) -> (i64, bool) {
        let mut parts = Vec::new();
        loop {
            let message = tokio::time::timeout(PATIENCE, self.inbound.message()).await.unwrap().unwrap().unwrap();
            let last = message.last;
            parts.push(message);
            if last {
                break;
            }
        }
        let snapshot = parts[0].snapshot;
        let mut span = if snapshot { NodeSpan::default() } else { self.span.clone() };
        for part in &parts {
            span.apply(&weft_proto::from_proto(part.delta.as_ref().unwrap()).unwrap());
        }
        self.span = span;
        (parts[0].revision, snapshot)
    }

    async fn ack(&self, revision: i64) {
        let ack = v1::Ack { revision, error: String::new(), problems: vec![] };
        self.acks.send(AgentMessage { kind: Some(agent_message::Kind::Ack(ack)) }).await.unwrap();
    }
}

/// What every test agent says its underlay address is.
const UNDERLAY: &str = "192.0.2.9";

/// Waits until the node's recorded status satisfies `f`.
async fn status_until(store: &Store, node: &str, f: impl Fn(&weft_store::nodes::NodeStatus) -> bool) {
    weft_testkit::eventually(&format!("node {node} reaching the status"), PATIENCE, || async {
        let nodes = store.list_nodes().await.unwrap();
        weft_testkit::when(nodes.iter().any(|n| n.name == node && f(n)), nodes)
    })
    .await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn an_agent_gets_its_span_then_deltas_and_its_acks_are_recorded(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let control = start(&store).await;
    let mut agent = TestAgent::connect(control.local_addr, "node-1", &credential).await.unwrap();

    let (revision, snapshot) = agent.next_update().await;
    assert!(snapshot);
    assert_eq!(agent.span, expected_span(&store, "node-1").await);
    assert_eq!(agent.span.ports.len(), 1);
    agent.ack(revision).await;
    status_until(&store, "node-1", |n| n.connected && n.acked_revision == revision && n.realized_revision >= revision)
        .await;
    let underlay = store.list_nodes().await.unwrap()[0].underlay.clone();
    assert_eq!(underlay, [UNDERLAY.parse::<std::net::IpAddr>().unwrap()], "the hello's underlay address is recorded");

    // A db port elsewhere joins the set node-1's rule references: a delta, at its revision.
    let added = port(&store, "db-2", "node-3", "10.0.0.3", "db").await;
    let (revision, snapshot) = agent.next_update().await;
    assert!(!snapshot);
    assert_eq!(revision, added);
    assert_eq!(agent.span, expected_span(&store, "node-1").await);
    agent.ack(revision).await;
    status_until(&store, "node-1", |n| n.realized_revision >= added).await;

    // A change that concerns no port of node-1 sends it nothing, and node-1 has realized it
    // as far as it is concerned.
    let elsewhere = port(&store, "web-9", "node-9", "10.0.0.9", "other").await;
    let mut compiled = control.hub.subscribe();
    tokio::time::timeout(PATIENCE, compiled.wait_for(|r| r.is_some_and(|r| r >= elsewhere))).await.unwrap().unwrap();
    let realized = store.list_nodes().await.unwrap()[0].realized_revision;
    assert!(realized < elsewhere);
    assert_eq!(control.hub.realized("node-1", realized, elsewhere, true), Ok(()));
    // And one that had not applied the earlier delta would still need it.
    assert_eq!(control.hub.realized("node-1", added - 1, elsewhere, true), Err(added));
    let nothing = tokio::time::timeout(Duration::from_millis(300), agent.inbound.message()).await;
    assert!(nothing.is_err(), "node-1 got an update about node-9: {nothing:?}");

    drop(agent);
    status_until(&store, "node-1", |n| !n.connected).await;
    control.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_controller_serves_only_the_node_a_credential_names(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let one = store.create_node("node-1").await.unwrap();
    store.create_node("node-2").await.unwrap();
    let control = start(&store).await;
    let refused = TestAgent::connect(control.local_addr, "node-2", &one).await.err().unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = TestAgent::connect(control.local_addr, "node-1", "weftn_bogus").await.err().unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // A stream that does not start with hello.
    let mut client = AgentClient::connect(format!("http://{}", control.local_addr)).await.unwrap();
    let ack = AgentMessage {
        kind: Some(agent_message::Kind::Ack(v1::Ack { revision: 1, error: String::new(), problems: vec![] })),
    };
    let refused = client.sync(tokio_stream::iter([ack])).await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    control.shutdown().await;
}

/// A join token registers as many nodes as it was made for (one unless said otherwise), only
/// the node it names if it names one, and a node ports are placed on only if it names it
/// (issue 17, finding 5: a year-long, reusable token could claim any node's name, and with it
/// that node's pods' policy).
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_node_joins_with_a_token_within_its_limits_and_gets_its_own_credential(pool: PgPool) {
    use weft_store::nodes::JoinTokenLimits;
    let store = Store::from_pool(pool);
    shop(&store).await;
    let limits = |uses: u32, node: Option<&str>| JoinTokenLimits {
        expires_in: Duration::from_secs(600),
        uses,
        node: node.map(String::from),
    };
    let control = start(&store).await;
    let mut client = AgentClient::connect(format!("http://{}", control.local_addr)).await.unwrap();
    let join = |node: &str, token: &str| v1::JoinRequest { join_token: token.into(), node: node.into() };
    let denied = |e: tonic::Status| (e.code(), e.message().to_string());

    // A general token cannot take node-1, which the shop's ports are placed on.
    let general = store.create_join_token(&limits(1, None), "test").await.unwrap();
    let (code, why) = denied(client.join(join("node-1", &general.secret)).await.unwrap_err());
    assert_eq!(code, Code::PermissionDenied);
    assert!(why.contains("ports are placed on node node-1"), "{why}");
    // It registers a new node once.
    client.join(join("node-9", &general.secret)).await.unwrap();
    let (code, why) = denied(client.join(join("node-8", &general.secret)).await.unwrap_err());
    assert_eq!(code, Code::PermissionDenied);
    assert!(why.contains("used up"), "{why}");

    // A token made for node-1 registers node-1 and nothing else.
    let bound = store.create_join_token(&limits(2, Some("node-1")), "test").await.unwrap();
    let (code, why) = denied(client.join(join("node-2", &bound.secret)).await.unwrap_err());
    assert_eq!(code, Code::PermissionDenied);
    assert!(why.contains("for node node-1"), "{why}");
    let credential = client.join(join("node-1", &bound.secret)).await.unwrap().into_inner().credential;
    let mut agent = TestAgent::connect(control.local_addr, "node-1", &credential).await.unwrap();
    assert!(agent.next_update().await.1);
    assert_eq!(agent.span, expected_span(&store, "node-1").await);
    // The name is taken now; a bad token is refused; an expired one, a revoked one too.
    assert_eq!(client.join(join("node-1", &bound.secret)).await.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(client.join(join("node-7", "weftj_bogus")).await.unwrap_err().code(), Code::PermissionDenied);
    let at_once = JoinTokenLimits { expires_in: Duration::ZERO, ..limits(5, None) };
    let expired = store.create_join_token(&at_once, "test").await.unwrap();
    assert_eq!(client.join(join("node-7", &expired.secret)).await.unwrap_err().code(), Code::PermissionDenied);
    let many = store.create_join_token(&limits(5, None), "test").await.unwrap();
    assert_eq!(client.join(join("Not A Name", &many.secret)).await.unwrap_err().code(), Code::InvalidArgument);
    client.join(join("node-7", &many.secret)).await.unwrap();
    assert!(store.revoke_join_token(many.id).await.unwrap());
    assert_eq!(client.join(join("node-6", &many.secret)).await.unwrap_err().code(), Code::PermissionDenied);
    let listed = store.list_join_tokens().await.unwrap();
    let used: Vec<(i32, Option<i32>)> = listed.iter().map(|t| (t.used, t.uses)).collect();
    assert_eq!(used, [(1, Some(1)), (1, Some(2)), (0, Some(5)), (1, Some(5))]);
    assert!(listed[3].revoked_at.is_some());
    control.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_stuck_agent_never_delays_the_others_and_catches_up_with_a_snapshot(pool: PgPool) {
    let store = Store::from_pool(pool);
    let (one, two) = shop_on_two_nodes(&store).await;
    let control = start_with(&store, |c| c.ring_updates = 4).await;
    let mut stuck = TestAgent::connect(control.local_addr, "node-1", &one).await.unwrap();
    let mut live = TestAgent::connect(control.local_addr, "node-2", &two).await.unwrap();
    assert!(stuck.next_update().await.1);
    assert!(live.next_update().await.1);
    // node-1 reads nothing while db ports come (each joins the set node-1 references, and is a
    // port of node-2): node-2 keeps up with every one. 300 updates are more than the stream's
    // HTTP/2 window (4 KiB here) and the session's queue hold, so node-1's session is held up.
    let mut last = 0;
    for i in 0..300 {
        last = port(&store, &format!("db-x{i}"), "node-2", &format!("10.1.{}.{}", i / 200, i % 200), "db").await;
        let (revision, _) = live.next_update().await;
        assert_eq!(revision, last);
        live.ack(revision).await;
    }
    assert_eq!(live.span, expected_span(&store, "node-2").await);
    // node-1, reading again, ends at the same state: the updates it missed are long gone from
    // the ring, so it gets a fresh snapshot.
    let mut snapshots = 0;
    loop {
        let (revision, snapshot) = stuck.next_update().await;
        snapshots += usize::from(snapshot);
        if revision >= last {
            break;
        }
    }
    assert!(snapshots >= 1);
    assert_eq!(stuck.span, expected_span(&store, "node-1").await);
    control.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn snapshots_wait_for_a_slot_that_an_ack_or_a_timeout_gives_back(pool: PgPool) {
    let store = Store::from_pool(pool);
    let (one, two) = shop_on_two_nodes(&store).await;
    let control = start_with(&store, |c| {
        c.snapshots_in_flight = 1;
        c.snapshot_slot_timeout = Duration::from_secs(2);
    })
    .await;
    let mut first = TestAgent::connect(control.local_addr, "node-1", &one).await.unwrap();
    let (revision, snapshot) = first.next_update().await;
    assert!(snapshot);
    // The one slot is node-1's until it acks: node-2's snapshot waits.
    let mut second = TestAgent::connect(control.local_addr, "node-2", &two).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.next_update()).await;
    assert!(waited.is_err(), "node-2 got its snapshot while node-1's held the only slot");
    first.ack(revision).await;
    assert!(second.next_update().await.1);
    assert_eq!(second.span, expected_span(&store, "node-2").await);
    // node-2 never acks: node-1, connecting again, gets its snapshot once the slot's time is up
    // (without the timeout it would wait for ever, and `next_update` gives up after PATIENCE).
    drop(first);
    let mut again = TestAgent::connect(control.local_addr, "node-1", &one).await.unwrap();
    assert!(again.next_update().await.1);
    assert_eq!(again.span, expected_span(&store, "node-1").await);
    control.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn two_controllers_on_one_database_both_serve_agents(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let one = store.create_node("node-1").await.unwrap();
    let a = start(&store).await;
    let b = start(&store).await;
    let mut on_a = TestAgent::connect(a.local_addr, "node-1", &one).await.unwrap();
    let mut on_b = TestAgent::connect(b.local_addr, "node-1", &one).await.unwrap();
    on_a.next_update().await;
    on_b.next_update().await;
    let added = port(&store, "db-2", "node-3", "10.0.0.3", "db").await;
    assert_eq!(on_a.next_update().await.0, added);
    assert_eq!(on_b.next_update().await.0, added);
    assert_eq!(on_a.span, on_b.span);
    assert_eq!(on_a.span, expected_span(&store, "node-1").await);
    a.shutdown().await;
    b.shutdown().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_controller_behind_the_change_logs_compaction_reloads(pool: PgPool) {
    // The controller's handle, and another process's: its commits neither wake this
    // controller directly nor NOTIFY (it runs no follower), and polling is an hour away.
    let store = Store::from_pool(pool.clone());
    let other = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.poll = Duration::from_secs(3600);
    let control = Control::start(store.clone(), config).await.unwrap();
    let mut agent = TestAgent::connect(control.local_addr, "node-1", &credential).await.unwrap();
    let (first, snapshot) = agent.next_update().await;
    assert!(snapshot);
    agent.ack(first).await;

    // Meanwhile the other process writes (a db port joins node-1's set) and compacts the
    // change log past everything this controller has read.
    let missed = port(&other, "db-2", "node-3", "10.0.0.3", "db").await;
    let last = port(&other, "db-3", "node-4", "10.0.0.4", "db").await;
    let mark = other.compact_through(last).await.unwrap();
    assert!(mark >= missed, "compacted through {mark}");

    // A commit of its own wakes it: the entries it needs are gone, so it reloads, and the
    // agent starts again from a snapshot that has everything.
    let woke = port(&store, "web-9", "node-9", "10.0.0.9", "other").await;
    let mut snapshots = 0;
    loop {
        let (revision, snapshot) = agent.next_update().await;
        snapshots += usize::from(snapshot);
        agent.ack(revision).await;
        if revision >= woke {
            break;
        }
    }
    assert_eq!(snapshots, 1);
    assert_eq!(agent.span, expected_span(&store, "node-1").await);
    assert!(agent.span.sets.values().any(|s| s.contains(&"10.0.0.3".parse().unwrap())));
    control.shutdown().await;
}

/// Issue 17, finding 4: deleting a node disconnects its agent at once (the stream ends with
/// UNAUTHENTICATED, whichever control process deleted it), and its credential stops working.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn deleting_a_node_ends_its_agents_stream_and_its_credential(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let other = store.create_node("node-2").await.unwrap();
    let control = start(&store).await;
    let mut agent = TestAgent::connect(control.local_addr, "node-1", &credential).await.unwrap();
    let mut bystander = TestAgent::connect(control.local_addr, "node-2", &other).await.unwrap();
    let (revision, _) = agent.next_update().await;
    agent.ack(revision).await;
    bystander.next_update().await;
    status_until(&store, "node-1", |n| n.connected).await;

    // The controller hears of it as any process's deletion: through PostgreSQL.
    assert!(store.delete_node("node-1").await.unwrap());
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match agent.inbound.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("node-1 was deleted"), "{status:?}");
    let refused = TestAgent::connect(control.local_addr, "node-1", &credential).await.err().expect("refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Another node's stream goes on.
    create(&store, Kind::Port, json!({"name": "web-2", "project": "shop", "node": "node-2", "ips": ["10.0.0.3"], "labels": {"app": "web"}, "security_groups": []})).await;
    bystander.next_update().await;
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_route_table_streams_each_nodes_blocks_through_its_underlay(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let control = start(&store).await;
    let mut agent = TestAgent::connect(control.local_addr, "node-1", &credential).await.unwrap();
    let (revision, _) = agent.next_update().await;
    agent.ack(revision).await;
    status_until(&store, "node-1", |n| !n.underlay.is_empty()).await;

    // The route table, on its own stream: the block node-1's pod on the pod network got,
    // through node-1's underlay address (web-1, on no such network, is no pod's to route);
    // another node's credential is refused it.
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "pods", "project": "shop", "node_blocks": {"ipv4": 24}, "subnets": [{"cidr": "10.244.0.0/16"}]}),
    )
    .await;
    create(&store, Kind::Port, json!({"name": "pod-1", "project": "shop", "node": "node-1", "network": "pods"})).await;
    let mut client = agent_client(&control).await;
    let request =
        |node: &str| v1::RoutesRequest { node: node.into(), credential: credential.clone(), incremental: false };
    let mut tables = client.routes(request("node-1")).await.unwrap().into_inner();
    let expected = v1::Route {
        destination: vec![10, 244, 0, 0],
        prefix: 24,
        node: "node-1".into(),
        via: vec![weft_proto::encode_address(&UNDERLAY.parse().unwrap())],
    };
    // The controller reads the table every 2 s: the first may predate the hello.
    let table = tokio::time::timeout(PATIENCE, async {
        loop {
            let table = tables.message().await.unwrap().unwrap();
            if table.routes.contains(&expected) {
                return table;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(table.routes, [expected], "node-2 never said where it is: none of its pods");
    // With it, the cluster's pod networks, where pod traffic is not masqueraded.
    assert_eq!(table.cluster, [v1::Prefix { address: vec![10, 244, 0, 0], length: 16 }]);
    let refused = client.routes(request("node-2")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    control.shutdown().await;
}

/// At thousands of nodes a route table is larger than any message the controller otherwise
/// sends: an agent that asks for `incremental` gets it in parts of at most about 4 KiB, then
/// only what changed; put together, they are the table an agent of before gets whole each time.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_large_route_table_comes_in_parts_then_changes_to_an_agent_that_asks(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "pods", "project": "shop", "node_blocks": {"ipv4": 24}, "subnets": [{"cidr": "10.128.0.0/9"}]}),
    )
    .await;
    // A node with its block and underlay address: a route.
    let join = async |n: usize| {
        let node = format!("node-{n}");
        let credential = store.create_node(&node).await.unwrap();
        let block: ipnet::IpNet = format!("10.{}.{}.0/24", 128 + n / 256, n % 256).parse().unwrap();
        store.assign_node_blocks("shop/pods", &node, &[block]).await.unwrap();
        let underlay: std::net::IpAddr = format!("198.18.{}.{}", n / 256, n % 256).parse().unwrap();
        store.node_connected(&node, "elsewhere", "198.18.255.1:1", "test", &[underlay]).await.unwrap();
        credential
    };
    // 400 nodes' blocks, some 10 KiB of routes: over two messages' worth.
    const NODES: usize = 400;
    let credential = join(0).await;
    for n in 1..NODES {
        join(n).await;
    }
    let control = start(&store).await;
    let mut client = agent_client(&control).await;
    let request =
        |incremental| v1::RoutesRequest { node: "node-0".into(), credential: credential.clone(), incremental };
    // The controller reads the table every 2 s: the first one in may be from before the blocks.
    let mut whole = client.routes(request(false)).await.unwrap().into_inner();
    let whole_with = async |whole: &mut tonic::Streaming<v1::RouteTable>, routes: usize| {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let table = whole.message().await.unwrap().unwrap();
                assert!(!table.continued && !table.changes && table.withdrawn.is_empty());
                if table.routes.len() == routes {
                    return table;
                }
            }
        })
        .await
        .unwrap()
    };
    let table = whole_with(&mut whole, NODES).await;
    assert!(prost::Message::encoded_len(&table) > 2 * weft_control::MESSAGE_BYTES);

    let mut incremental = client.routes(request(true)).await.unwrap().into_inner();
    let mut follower = weft_proto::RouteFollower::default();
    // The messages of the next update, and the table the agent then has.
    let mut update = async || {
        tokio::time::timeout(PATIENCE, async {
            let mut messages = Vec::new();
            loop {
                let part = incremental.message().await.unwrap().unwrap();
                assert!(prost::Message::encoded_len(&part) <= weft_control::MESSAGE_BYTES);
                messages.push(part.clone());
                if let Some(table) = follower.take(part) {
                    return (messages, table);
                }
            }
        })
        .await
        .unwrap()
    };
    let (parts, followed) = update().await;
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert_eq!(followed, table);

    // A node more: a route more, all that the agent that asked for changes is sent.
    join(NODES).await;
    let table = whole_with(&mut whole, NODES + 1).await;
    let (changes, followed) = update().await;
    assert_eq!(followed, table);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].changes);
    assert_eq!(changes[0].routes.len(), 1);
    assert_eq!(changes[0].routes[0].node, format!("node-{NODES}"));
    control.shutdown().await;
}

/// The Flows stream (DESIGN.md §10): a node's reports are kept only for its own ports, and a
/// credential speaks only for its node.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_nodes_flow_reports_are_kept_only_for_its_own_ports(pool: PgPool) {
    let store = Store::from_pool(pool);
    shop(&store).await;
    let credential = store.create_node("node-1").await.unwrap();
    let control = start(&store).await;
    let id_of = async |name: &str| {
        let key = weft_store::ObjectKey::Name { project: Some("shop".into()), name: name.into() };
        store.get(Kind::Port, &key).await.unwrap().unwrap().id.to_string()
    };
    let (web, db) = (id_of("web-1").await, id_of("db-1").await);
    // The controller answers once it has loaded the configuration.
    status_until_loaded(&control).await;
    let address = |s: &str| weft_proto::encode_address(&s.parse().unwrap());
    let denied = |port: &str| v1::DeniedRecord {
        port: port.into(),
        ingress: true,
        src: address("10.0.0.2"),
        dst: address("10.0.0.1"),
        protocol: 6,
        src_port: Some(40000),
        dst_port: Some(5432),
        icmp_type: None,
        icmp_code: None,
        at_ms: 1,
        tiered: None,
    };
    let (group, rule) = (uuid::Uuid::from_u128(7), |s: &str| match s {
        "a" => uuid::Uuid::from_u128(8).to_string(),
        "b" => uuid::Uuid::from_u128(9).to_string(),
        other => other.to_string(),
    });
    let connection = |port: &str, which: &str| v1::ConnectionRecord {
        port: port.into(),
        ingress: false,
        src: address("10.0.0.1"),
        dst: address("10.0.0.2"),
        protocol: 6,
        src_port: Some(40001),
        dst_port: Some(5432),
        at_ms: 3,
        group: group.to_string(),
        rule: rule(which),
        isolated: true,
        id: 42,
        ..Default::default()
    };
    let report = |node: &str, credential: &str| v1::FlowReport {
        node: node.into(),
        credential: credential.into(),
        // web-1 is node-1's; db-1 is node-2's; the third names no port at all.
        denied: vec![denied(&web), denied(&db), denied("not-a-port")],
        dns: vec![v1::DnsRecord {
            port: web.clone(),
            server: address("10.96.0.10"),
            name: "db.shop.svc.cluster.local".into(),
            qtype: 1,
            at_ms: 2,
            src_port: Some(50000),
        }],
        // web-1's connection, allowed by a rule; db-1's (another node's); one whose rule is
        // no id.
        connections: vec![connection(&web, "a"), connection(&db, "b"), connection(&web, "not-a-rule")],
        // A window of web-1's connections, and of db-1's (left out).
        windows: vec![v1::FlowWindow {
            start_ms: 15_000,
            end_ms: 30_000,
            closed: true,
            aggregates: [&web, &db]
                .iter()
                .map(|port| v1::FlowAggregate {
                    port: port.to_string(),
                    remote: address("10.0.0.2"),
                    protocol: 6,
                    started: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    };
    let mut client = agent_client(&control).await;
    let receipt = client.flows(tokio_stream::iter(vec![report("node-1", &credential)])).await.unwrap().into_inner();
    assert_eq!((receipt.accepted, receipt.refused), (3, 5));
    // Written to the flow log as flows: none of their other halves comes (node-2 says
    // nothing), so each goes alone once it has waited.
    let written = weft_testkit::eventually("the records in the flow log", PATIENCE, async || {
        let query = weft_store::flows::FlowQuery { limit: 100, ..Default::default() };
        let flows = store.flows(&query).await.unwrap();
        if flows.len() >= 3 { Ok(flows) } else { Err(flows.len()) }
    })
    .await;
    let kinds: Vec<_> = written.iter().map(|f| (f.kind, f.src.name.clone(), f.dst.name.clone())).collect();
    use weft_model::flow::FlowKind;
    assert!(kinds.contains(&(FlowKind::Denied, Some("db-1".into()), Some("web-1".into()))), "{kinds:?}");
    assert!(kinds.contains(&(FlowKind::Connection, Some("web-1".into()), Some("db-1".into()))), "{kinds:?}");
    assert!(kinds.contains(&(FlowKind::Dns, Some("web-1".into()), None)), "{kinds:?}");
    assert!(written.iter().all(|f| f.nodes == ["node-1"]), "{written:?}");
    let windows = control.flows.windows(0);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].0, (15_000, "node-1".to_string()));
    assert_eq!(windows[0].1.aggregates.len(), 1, "only web-1's");
    let kept = control.flows.records(|_| true);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().all(|r| r.node == "node-1" && r.port.to_string() == web), "{kept:?}");
    assert!(
        matches!(&kept[1].what, weft_control::flows::Observed::Dns { name, qtype: 1, .. } if name == "db.shop.svc.cluster.local")
    );
    let weft_control::flows::Observed::Connection(c) = &kept[2].what else { panic!("{kept:?}") };
    assert_eq!(c.allowed_by, weft_control::flows::AllowedBy::Rule { group, rule: uuid::Uuid::from_u128(8) });
    assert_eq!((c.ports, c.id, c.ended), (Some((40001, 5432)), 42, false));
    // node-1's credential does not speak for node-2, nor does a made-up one for anyone.
    let refused = client.flows(tokio_stream::iter(vec![report("node-2", &credential)])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = client.flows(tokio_stream::iter(vec![report("node-1", "weftn_nope")])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(control.flows.records(|_| true).len(), 3);
    // A stream the agent keeps open does not hold the controller's shutdown.
    let (open, reports) = tokio::sync::mpsc::channel(1);
    open.send(report("node-1", &credential)).await.unwrap();
    let held = tokio::spawn(async move { client.flows(tokio_stream::wrappers::ReceiverStream::new(reports)).await });
    weft_testkit::eventually("the open stream's first report kept", PATIENCE, async || {
        let kept = control.flows.records(|_| true).len();
        if kept == 6 { Ok(()) } else { Err(kept) }
    })
    .await;
    // The window sent again replaced itself: counted once, in memory and in its minute's
    // rollup, which names web-1's project and db-1 as the remote end.
    let windows = control.flows.windows(0);
    assert_eq!((windows.len(), windows[0].1.aggregates[0].started), (1, 1));
    let epoch = chrono::DateTime::from_timestamp_millis(0).unwrap();
    let rolled = weft_testkit::eventually("the minute's rollup written", PATIENCE, async || {
        let rows = store.flow_minutes(None, None, epoch, epoch + chrono::Duration::minutes(1)).await.unwrap();
        if rows.is_empty() { Err("none yet") } else { Ok(rows) }
    })
    .await;
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_eq!((rolled[0].project.as_str(), rolled[0].started, rolled[0].node.as_str()), ("shop", 1, "node-1"));
    assert_eq!(rolled[0].remote_port.map(|p| p.to_string()), Some(db.clone()), "{rolled:?}");
    tokio::time::timeout(PATIENCE, control.shutdown()).await.expect("the controller stopped with a stream open");
    let ended = tokio::time::timeout(PATIENCE, held).await;
    assert!(ended.is_ok(), "the open stream ended with the controller");
    drop(open);
}

/// Flows a tiered cluster policy decided (DESIGN.md §10, §11): a drop of its deny rule and a
/// connection its accept let through name the tier, the policy and the rule, as the live
/// flows and as the minute's rollup; a record that says a deny let a connection through is
/// refused.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_tiered_rules_drops_and_connections_name_its_tier_policy_and_rule(pool: PgPool) {
    use weft_model::flow::{FlowKind, FlowTieredRule, SideDecision};
    use weft_model::{PolicyAction, Tier};
    let store = Store::from_pool(pool);
    shop(&store).await;
    create(
        &store,
        Kind::ClusterPolicy,
        json!({"name": "guard", "tier": "admin", "priority": 5, "subject": {},
               "egress": [{"name": "no-db", "action": "deny", "remotes": [{"type": "networks", "networks": ["10.0.0.2/32"]}]},
                          {"name": "web-out", "action": "accept", "remotes": [{"type": "networks", "networks": ["0.0.0.0/0"]}]}]}),
    )
    .await;
    let key = weft_store::ObjectKey::Name { project: None, name: "guard".into() };
    let policy = store.get(Kind::ClusterPolicy, &key).await.unwrap().unwrap().id;
    let key = weft_store::ObjectKey::Name { project: Some("shop".into()), name: "web-1".into() };
    let web = store.get(Kind::Port, &key).await.unwrap().unwrap().id.to_string();
    let credential = store.create_node("node-1").await.unwrap();
    let control = start(&store).await;
    status_until_loaded(&control).await;
    let address = |s: &str| weft_proto::encode_address(&s.parse().unwrap());
    let by = |rule: u32, action: PolicyAction| v1::TieredRuleRef {
        policy: policy.to_string(),
        rule,
        tier: weft_proto::encode_tier(Tier::Admin),
        action: weft_proto::encode_action(action),
    };
    let denied = v1::DeniedRecord {
        port: web.clone(),
        ingress: false,
        src: address("10.0.0.1"),
        dst: address("10.0.0.2"),
        protocol: 6,
        src_port: Some(40000),
        dst_port: Some(5432),
        at_ms: 1,
        tiered: Some(by(0, PolicyAction::Deny)),
        ..Default::default()
    };
    let connection = |rule, action| v1::ConnectionRecord {
        port: web.clone(),
        ingress: false,
        src: address("10.0.0.1"),
        dst: address("192.0.2.9"),
        protocol: 6,
        src_port: Some(40001),
        dst_port: Some(443),
        at_ms: 2,
        tiered: Some(by(rule, action)),
        ..Default::default()
    };
    let window = v1::FlowWindow {
        start_ms: 15_000,
        end_ms: 30_000,
        closed: true,
        aggregates: vec![v1::FlowAggregate {
            port: web.clone(),
            remote: address("10.0.0.2"),
            protocol: 6,
            service: Some(5432),
            denied: true,
            sampled: 1,
            tiered: Some(by(0, PolicyAction::Deny)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let report = v1::FlowReport {
        node: "node-1".into(),
        credential,
        denied: vec![denied],
        connections: vec![connection(1, PolicyAction::Accept), connection(0, PolicyAction::Deny)],
        windows: vec![window],
        ..Default::default()
    };
    let mut client = agent_client(&control).await;
    let receipt = client.flows(tokio_stream::iter(vec![report])).await.unwrap().into_inner();
    assert_eq!((receipt.accepted, receipt.refused), (2, 1), "a deny that let a connection through is refused");
    let rule = |rule: u16, name: &str, action| FlowTieredRule {
        tier: Tier::Admin,
        action,
        policy: Some(policy),
        policy_name: Some("guard".into()),
        rule: Some(rule),
        rule_name: Some(name.into()),
    };
    let written = weft_testkit::eventually("the records in the flow log", PATIENCE, async || {
        let flows = store.flows(&weft_store::flows::FlowQuery { limit: 10, ..Default::default() }).await.unwrap();
        if flows.len() >= 2 { Ok(flows) } else { Err(flows.len()) }
    })
    .await;
    let dropped = written.iter().find(|f| f.kind == FlowKind::Denied).expect("the drop");
    assert_eq!(dropped.egress, Some(SideDecision::Tiered { rule: rule(0, "no-db", PolicyAction::Deny) }));
    assert_eq!(dropped.verdict, weft_model::flow::Verdict::Denied);
    let allowed = written.iter().find(|f| f.kind == FlowKind::Connection).expect("the connection");
    assert_eq!(allowed.egress, Some(SideDecision::Tiered { rule: rule(1, "web-out", PolicyAction::Accept) }));
    let epoch = chrono::DateTime::from_timestamp_millis(0).unwrap();
    let rolled = weft_testkit::eventually("the minute's rollup written", PATIENCE, async || {
        let rows = store.flow_minutes(None, None, epoch, epoch + chrono::Duration::minutes(1)).await.unwrap();
        if rows.is_empty() { Err("none yet") } else { Ok(rows) }
    })
    .await;
    assert_eq!((rolled[0].policy, rolled[0].policy_rule, rolled[0].denied), (Some(policy), Some(0), true));
    assert_eq!(rolled[0].tiered.as_ref().map(|t| t.0.clone()), Some(rule(0, "no-db", PolicyAction::Deny)));
    assert_eq!(rolled[0].isolated_by, None, "no group isolated it");
    tokio::time::timeout(PATIENCE, control.shutdown()).await.expect("the controller stopped");
}

/// A plain client of the controller's agent service.
async fn agent_client(control: &Control) -> weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", control.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    weft_proto::v1::agent_client::AgentClient::new(channel)
}

/// Waits until the controller has loaded the configuration.
async fn status_until_loaded(control: &Control) {
    weft_testkit::eventually("the configuration loaded", PATIENCE, async || {
        control.hub.with_compiler(|_, revision| revision).ok_or("not yet")
    })
    .await;
}
