//! The agent against a scripted controller, no database: each stream the agent opens gets the
//! next script (messages, and an error where the script says), so that the stream's edge
//! cases can be played exactly: an update cut off before its last part, an error in the middle
//! of a snapshot, an update out of order, a delta before the stream's snapshot.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;
use weft_agent::{Datapath, DatapathError};
use weft_compiler::{Isolation, NodeSpan, PortPolicy, SpanDelta};
use weft_proto::server::agent_server::{Agent, AgentServer};
use weft_proto::{Encoded, v1};

mod common;
use common::{PATIENCE, config, spawn, temp_dir};

/// What the controller does on one stream, in order; after the last step the stream stays
/// open until the agent goes.
#[derive(Debug, Clone)]
enum Step {
    Send(Box<v1::ControllerMessage>),
    Fail(Status),
}

#[derive(Debug, Default)]
struct Scripted {
    streams: Mutex<VecDeque<Vec<Step>>>,
    /// How many streams the agent opened.
    opened: Mutex<usize>,
}

/// The gRPC service over the scripts (the scripts stay with the test, to count streams).
#[derive(Debug)]
struct Service(Arc<Scripted>);

#[tonic::async_trait]
impl Agent for Service {
    type SyncStream = ReceiverStream<Result<Encoded, Status>>;

    async fn sync(&self, request: Request<Streaming<v1::AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        // The hello; acks are read and dropped, so the agent is never held up.
        inbound.message().await?;
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        *self.0.opened.lock().unwrap() += 1;
        let script = self.0.streams.lock().unwrap().pop_front().unwrap_or_default();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for step in script {
                let item = match step {
                    Step::Send(m) => Ok(Encoded::of(&m)),
                    Step::Fail(status) => Err(status),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(&self, _: Request<v1::JoinRequest>) -> Result<Response<v1::JoinResponse>, Status> {
        Err(Status::unimplemented("no joins here"))
    }

    async fn flows(&self, _: Request<Streaming<v1::FlowReport>>) -> Result<Response<v1::FlowReceipt>, Status> {
        Err(Status::unimplemented("no flows here"))
    }

    type RoutesStream = ReceiverStream<Result<weft_proto::Encoded, Status>>;

    async fn routes(&self, _: Request<v1::RoutesRequest>) -> Result<Response<Self::RoutesStream>, Status> {
        Err(Status::unimplemented("no routes here"))
    }
}

/// Serves the scripts on a listener bound here (port 0: no port chosen first and bound later).
async fn controller(scripts: Vec<Vec<Step>>) -> (SocketAddr, Arc<Scripted>) {
    let scripted = Arc::new(Scripted { streams: Mutex::new(scripts.into()), ..Scripted::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AgentServer::new(Service(Arc::clone(&scripted)));
    tokio::spawn(
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, scripted)
}

/// A datapath that records every span it was given, by the port names it holds.
#[derive(Debug, Clone, Default)]
struct Recording(Arc<Mutex<Vec<Vec<String>>>>);

impl Datapath for Recording {
    fn apply(&mut self, _old: &NodeSpan, new: &NodeSpan, _: Option<&SpanDelta>) -> Result<(), DatapathError> {
        self.0.lock().unwrap().push(new.ports.values().map(|p| p.name.clone()).collect());
        Ok(())
    }
}

impl Recording {
    fn applied(&self) -> Vec<Vec<String>> {
        self.0.lock().unwrap().clone()
    }
}

fn port(name: &str, n: u8) -> (Uuid, PortPolicy) {
    let policy = PortPolicy {
        project: "p".into(),
        name: name.into(),
        addresses: vec![std::net::IpAddr::from([10, 0, 0, n])],
        refused_addresses: vec![],
        interface: format!("weft{name}"),
        instance: None,
        named_ports: Default::default(),
        ingress: Isolation::Open,
        egress: Isolation::Open,
        policies: Default::default(),
    };
    (Uuid::from_u128(u128::from(n)), policy)
}

fn span(ports: &[(&str, u8)]) -> NodeSpan {
    NodeSpan { ports: ports.iter().map(|(name, n)| port(name, *n)).collect::<BTreeMap<_, _>>(), ..NodeSpan::default() }
}

/// A snapshot at `revision`, in as many parts as it takes (one, for these spans).
fn snapshot(revision: i64, ports: &[(&str, u8)]) -> Vec<Step> {
    weft_proto::snapshot(revision, &span(ports), 1 << 20).into_iter().map(|m| Step::Send(Box::new(m))).collect()
}

/// A delta adding a port, at `revision`; `last` false leaves the update open.
fn adding(revision: i64, name: &str, n: u8, last: bool) -> Step {
    let delta = SpanDelta { ports_upserted: [port(name, n)].into(), ..SpanDelta::default() };
    Step::Send(Box::new(v1::ControllerMessage {
        revision,
        snapshot: false,
        last,
        delta: Some(weft_proto::to_proto(&delta)),
    }))
}

async fn run_until(scripts: Vec<Vec<Step>>, done: impl Fn(&[Vec<String>]) -> bool) -> (Vec<Vec<String>>, usize) {
    let (addr, scripted) = controller(scripts).await;
    let dir = temp_dir();
    let mut cfg = config(addr, dir.path(), None);
    cfg.credential = Some("scripted".into());
    let datapath = Recording::default();
    let agent = spawn(cfg, datapath.clone());
    let applied = weft_testkit::eventually("the agent applying what the scripts say", PATIENCE, async || {
        let applied = datapath.applied();
        if done(&applied) { Ok(applied) } else { Err(format!("{applied:?}")) }
    })
    .await;
    agent.stop().await;
    let opened = *scripted.opened.lock().unwrap();
    (applied, opened)
}

#[tokio::test]
async fn an_update_cut_off_before_its_last_part_is_never_applied() {
    let first = [snapshot(1, &[("a", 1)]), vec![adding(2, "b", 2, false), Step::Fail(Status::unavailable("gone"))]];
    let second = snapshot(3, &[("a", 1), ("c", 3)]);
    let (applied, opened) = run_until(vec![first.concat(), second], |a| a.len() >= 2).await;
    assert_eq!(applied, [vec!["a"], vec!["a", "c"]], "b's half update was never applied");
    assert_eq!(opened, 2);
}

#[tokio::test]
async fn an_error_in_the_middle_of_a_snapshot_keeps_the_last_span_until_a_whole_one_comes() {
    let mut parts = weft_proto::snapshot(2, &span(&[("a", 1), ("b", 2)]), 1 << 20);
    parts[0].last = false;
    let first =
        [snapshot(1, &[("a", 1)]), vec![Step::Send(Box::new(parts[0].clone())), Step::Fail(Status::internal("oops"))]];
    let second = snapshot(3, &[("b", 2)]);
    let (applied, opened) = run_until(vec![first.concat(), second], |a| a.len() >= 2).await;
    assert_eq!(applied, [vec!["a"], vec!["b"]]);
    assert_eq!(opened, 2);
}

#[tokio::test]
async fn an_update_out_of_order_is_refused_and_a_new_stream_asked_for() {
    let first = [snapshot(5, &[("a", 1)]), vec![adding(4, "late", 4, true), adding(6, "b", 2, true)]];
    let second = snapshot(6, &[("a", 1), ("b", 2)]);
    let (applied, opened) = run_until(vec![first.concat(), second], |a| a.len() >= 2).await;
    assert_eq!(applied, [vec!["a"], vec!["a", "b"]], "revision 4 after 5 was not applied, nor what followed it");
    assert_eq!(opened, 2);
}

#[tokio::test]
async fn a_delta_before_the_streams_snapshot_is_refused() {
    let first = snapshot(3, &[("a", 1)]);
    // The controller came back and sends a delta first: on top of what would it apply?
    let second = vec![adding(4, "b", 2, true)];
    let third = snapshot(4, &[("a", 1), ("b", 2)]);
    let (applied, opened) =
        run_until(vec![[first, vec![Step::Fail(Status::unavailable("restarting"))]].concat(), second, third], |a| {
            a.len() >= 2
        })
        .await;
    assert_eq!(applied, [vec!["a"], vec!["a", "b"]], "the delta was applied only as part of a snapshot");
    assert_eq!(opened, 3);
}
