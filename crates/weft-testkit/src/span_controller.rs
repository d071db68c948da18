//! A controller that speaks the agent protocol and serves one span the caller steers: each
//! time the span changes, every stream gets it whole as a snapshot; and, when asked, a route
//! table the caller steers too. For tests and benchmarks of what happens on a node (the CNI
//! plugin, a pod's wiring, routes and masquerade) without a database or a compiler kept
//! current.

#![allow(clippy::unwrap_used)] // test support fails loudly by design

use std::net::SocketAddr;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use weft_compiler::NodeSpan;
use weft_proto::server::agent_server::{Agent, AgentServer};
use weft_proto::{Encoded, v1};

/// The span at a revision; changing it (a higher revision) sends it to every agent.
pub type Spans = watch::Sender<(i64, NodeSpan)>;

/// The route table; changing it sends it to every agent following it.
pub type Tables = watch::Sender<v1::RouteTable>;

struct Controller {
    spans: watch::Receiver<(i64, NodeSpan)>,
    /// None: the Routes call is unimplemented, as a controller without routes would answer.
    tables: Option<watch::Receiver<v1::RouteTable>>,
}

#[tonic::async_trait]
impl Agent for Controller {
    type SyncStream = ReceiverStream<Result<Encoded, Status>>;

    async fn sync(&self, request: Request<Streaming<v1::AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        inbound.message().await?;
        // Acks are read and dropped, so the agent is never held up.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let (tx, rx) = mpsc::channel(16);
        let mut spans = self.spans.clone();
        tokio::spawn(async move {
            loop {
                let (revision, span) = spans.borrow_and_update().clone();
                for m in weft_proto::snapshot(revision, &span, 1 << 20) {
                    if tx.send(Ok(Encoded::of(&m))).await.is_err() {
                        return;
                    }
                }
                if spans.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(&self, _: Request<v1::JoinRequest>) -> Result<Response<v1::JoinResponse>, Status> {
        Err(Status::unimplemented("no joins here"))
    }

    async fn flows(&self, _: Request<Streaming<v1::FlowReport>>) -> Result<Response<v1::FlowReceipt>, Status> {
        Err(Status::unimplemented("no flows here"))
    }

    type RoutesStream = ReceiverStream<Result<Encoded, Status>>;

    async fn routes(&self, request: Request<v1::RoutesRequest>) -> Result<Response<Self::RoutesStream>, Status> {
        let Some(mut tables) = self.tables.clone() else { return Err(Status::unimplemented("no routes here")) };
        let incremental = request.into_inner().incremental;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // As the controller sends them: changes after the first, to an agent that asks.
            let mut versions = weft_proto::RouteVersions::new(4 << 10);
            let mut sent = None;
            loop {
                let table = tables.borrow_and_update().clone();
                if let Some(table) = versions.next(table) {
                    for message in table.messages(incremental, sent) {
                        if tx.send(Ok(Encoded(vec![message.clone()]))).await.is_err() {
                            return;
                        }
                    }
                    sent = Some(table.version);
                }
                if tables.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `span` (at revision 1) on a loopback port picked here; the address, and the sender
/// that changes the span.
pub async fn serve(span: NodeSpan) -> (SocketAddr, Spans) {
    let (spans, rx) = watch::channel((1, span));
    (listen(Controller { spans: rx, tables: None }).await, spans)
}

/// As [`serve`], and serves `table` on the Routes stream; the sender changes it.
pub async fn serve_with_routes(span: NodeSpan, table: v1::RouteTable) -> (SocketAddr, Spans, Tables) {
    let (spans, rx) = watch::channel((1, span));
    let (tables, tables_rx) = watch::channel(table);
    (listen(Controller { spans: rx, tables: Some(tables_rx) }).await, spans, tables)
}

async fn listen(controller: Controller) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(controller))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}
