//! A typed async client for weft's REST API, used by the `weft` CLI and kube-manager.
//!
//! ```text
//!   Client::create(&Port{..}) ─► POST /v1/ports ─► Port (with id, revision)
//!   Client::changes(since)    ─► GET /v1/changes ─► Stream<ChangeEvent>
//! ```
//!
//! Errors from the server arrive as [`ClientError::Api`] with the problem's `type`, `detail`
//! and invalid fields.

use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_model::{Kind, Port, Project, SecurityGroup, VirtualNetwork};

/// A problem+json error body, as the server sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    #[serde(default)]
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<InvalidField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidField {
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub parameter: Option<String>,
    pub detail: String,
}

impl Problem {
    /// The last segment of the type URN: `invalid`, `duplicate`, `not-found`, ...
    pub fn slug(&self) -> &str {
        self.problem_type.rsplit(':').next().unwrap_or(&self.problem_type)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .0.detail)]
    Api(Problem),
    #[error("cannot reach the server: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected answer from the server ({status}): {detail}")]
    Unexpected { status: u16, detail: String },
    #[error("cannot read {path}: {detail}")]
    Config { path: String, detail: String },
}

impl ClientError {
    /// The HTTP status the server answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(p) => Some(p.status),
            ClientError::Unexpected { status, .. } => Some(*status),
            ClientError::Http(_) | ClientError::Config { .. } => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A resource the API serves.
pub trait Resource: Serialize + DeserializeOwned {
    const KIND: Kind;
}

impl Resource for Project {
    const KIND: Kind = Kind::Project;
}
impl Resource for VirtualNetwork {
    const KIND: Kind = Kind::VirtualNetwork;
}
impl Resource for SecurityGroup {
    const KIND: Kind = Kind::SecurityGroup;
}
impl Resource for Port {
    const KIND: Kind = Kind::Port;
}
impl Resource for weft_model::ClusterPolicy {
    const KIND: Kind = Kind::ClusterPolicy;
}

/// How to address one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Id(Uuid),
    /// A project or a cluster policy by name.
    Name(String),
    /// A project's object by name.
    Named {
        project: String,
        name: String,
    },
}

impl Key {
    /// Parses `id`, `name` (projects, cluster policies) or `project/name` (everything else).
    pub fn parse(kind: Kind, s: &str) -> Key {
        if let Ok(id) = s.parse() {
            return Key::Id(id);
        }
        match (kind, s.split_once('/')) {
            (kind, _) if kind.is_cluster_scoped() => Key::Name(s.to_string()),
            (_, None) => Key::Name(s.to_string()),
            (_, Some((project, name))) => Key::Named { project: project.to_string(), name: name.to_string() },
        }
    }

    fn path(&self, kind: Kind) -> String {
        match self {
            Key::Id(id) => format!("/v1/{}/{id}", kind.plural()),
            Key::Name(name) => format!("/v1/{}/{}", kind.plural(), enc(name)),
            Key::Named { project, name } => format!("/v1/{}/{}/{}", kind.plural(), enc(project), enc(name)),
        }
    }
}

fn enc(s: &str) -> String {
    // Names are DNS subdomains; anything else is escaped so that it cannot change the path.
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub project: Option<String>,
    pub label_selector: Option<String>,
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub revision: i64,
    #[serde(rename = "continue", default)]
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub revision: i64,
    pub compacted: i64,
    pub grpc_address: Option<String>,
}

/// One line of the change-log watch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChangeEvent {
    pub op: String,
    pub revision: i64,
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub object: Option<serde_json::Value>,
    /// For `op: "error"`: the stream ended with this problem.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// `operations` in order, split into the batches the API takes: at most
/// [`weft_model::MAX_BATCH_OPERATIONS`] operations each and a body under
/// [`weft_model::MAX_REQUEST_BYTES`]. An operation too large alone is a batch of its own, for
/// the API to refuse by name.
pub fn batches(operations: &[BatchOp]) -> Vec<&[BatchOp]> {
    // `{"operations":[` ... `]}`, and room to spare.
    const FRAME: usize = 64;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, FRAME);
    for (i, op) in operations.iter().enumerate() {
        let size = op.encoded_len() + 1;
        let full = i - start == weft_model::MAX_BATCH_OPERATIONS || bytes + size > weft_model::MAX_REQUEST_BYTES;
        if full && i > start {
            out.push(&operations[start..i]);
            (start, bytes) = (i, FRAME);
        }
        bytes += size;
    }
    if start < operations.len() {
        out.push(&operations[start..]);
    }
    out
}

/// An object as a batch carries it: JSON text, encoded once. kube-manager's plan of 150,000
/// pods held each as a `serde_json::Value` tree (seconds to build, gigabytes to hold) only to
/// encode it again, twice.
pub type Object = Box<serde_json::value::RawValue>;

/// `value` as a batch carries it.
pub fn object(value: &impl Serialize) -> Object {
    // Plain data with string keys always encodes.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}

/// A write inside `POST /v1/batch`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BatchOp {
    Create {
        kind: Kind,
        object: Object,
    },
    Replace {
        kind: Kind,
        object: Object,
        #[serde(skip_serializing_if = "Option::is_none")]
        if_match: Option<i64>,
    },
    Patch {
        kind: Kind,
        #[serde(flatten)]
        target: Target,
        patch: serde_json::Value,
    },
    Delete {
        kind: Kind,
        #[serde(flatten)]
        target: Target,
        cascade: bool,
    },
}

impl BatchOp {
    /// The length of the operation's JSON, near enough to split batches by (a little over).
    fn encoded_len(&self) -> usize {
        // `{"op":"replace","kind":"virtual-network","object":,"if_match":-9223372036854775808}`
        const FIELDS: usize = 96;
        match self {
            BatchOp::Create { object, .. } | BatchOp::Replace { object, .. } => object.get().len() + FIELDS,
            BatchOp::Patch { .. } | BatchOp::Delete { .. } => serde_json::to_vec(self).map_or(0, |v| v.len()),
        }
    }
}

/// Which object a batch patch or delete addresses: by id, or by project and name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Target {
    pub fn id(id: Uuid) -> Target {
        Target { id: Some(id), ..Target::default() }
    }

    /// `project` is `None` for projects themselves.
    pub fn named(project: Option<&str>, name: &str) -> Target {
        Target { id: None, project: project.map(String::from), name: Some(name.to_string()) }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchResult {
    pub revision: i64,
    pub results: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub role: String,
    pub project: Option<String>,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Only when just created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:8080`), authenticating with `token`.
    /// `ca` is a PEM file of the CA that signed an https server's certificate.
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> Result<Client> {
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).pool_max_idle_per_host(64);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError::Config { path: ca.display().to_string(), detail: e.to_string() })?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError::Config { path: ca.display().to_string(), detail: e.to_string() })?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Client { http: builder.build()?, base: base.trim_end_matches('/').to_string(), token })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let response = check(request.send().await?).await?;
        Ok(response.json().await?)
    }

    /// Whether the server answers `/readyz` with success (its database is reachable).
    pub async fn ready(&self) -> Result<bool> {
        Ok(self.request(Method::GET, "/readyz").send().await?.status().is_success())
    }

    /// The server's metrics, as Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        let response = self.request(Method::GET, "/metrics").send().await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(ClientError::Unexpected { status, detail: response.text().await.unwrap_or_default() });
        }
        Ok(response.text().await?)
    }

    pub async fn info(&self) -> Result<Info> {
        self.send(self.request(Method::GET, "/v1/info")).await
    }

    pub async fn create<R: Resource>(&self, object: &R) -> Result<R> {
        self.send(self.request(Method::POST, &format!("/v1/{}", R::KIND.plural())).json(object)).await
    }

    pub async fn get<R: Resource>(&self, key: &Key) -> Result<R> {
        self.send(self.request(Method::GET, &key.path(R::KIND))).await
    }

    pub async fn replace<R: Resource>(&self, key: &Key, object: &R, if_match: Option<i64>) -> Result<R> {
        let mut request = self.request(Method::PUT, &key.path(R::KIND)).json(object);
        if let Some(rev) = if_match {
            request = request.header(header::IF_MATCH, format!("\"{rev}\""));
        }
        self.send(request).await
    }

    /// A JSON merge patch (RFC 7396).
    pub async fn patch<R: Resource>(&self, key: &Key, patch: &serde_json::Value, if_match: Option<i64>) -> Result<R> {
        let mut request = self
            .request(Method::PATCH, &key.path(R::KIND))
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(patch.to_string());
        if let Some(rev) = if_match {
            request = request.header(header::IF_MATCH, format!("\"{rev}\""));
        }
        self.send(request).await
    }

    /// Deletes and returns the revision of the deletion.
    pub async fn delete(&self, kind: Kind, key: &Key, cascade: bool) -> Result<i64> {
        let mut path = key.path(kind);
        if cascade {
            path.push_str("?cascade=true");
        }
        #[derive(Deserialize)]
        struct Deleted {
            revision: i64,
        }
        let d: Deleted = self.send(self.request(Method::DELETE, &path)).await?;
        Ok(d.revision)
    }

    pub async fn list<R: Resource>(&self, options: &ListOptions) -> Result<Page<R>> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &options.project {
            query.push(("project", p.clone()));
        }
        if let Some(s) = &options.label_selector {
            query.push(("labelSelector", s.clone()));
        }
        if let Some(n) = &options.name {
            query.push(("name", n.clone()));
        }
        if let Some(l) = options.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &options.continue_token {
            query.push(("continue", c.clone()));
        }
        self.send(self.request(Method::GET, &format!("/v1/{}", R::KIND.plural())).query(&query)).await
    }

    /// Every object a list matches, following `continue` tokens.
    pub async fn list_all<R: Resource>(&self, options: &ListOptions) -> Result<Vec<R>> {
        let mut options = options.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list::<R>(&options).await?;
            all.extend(page.items);
            match page.continue_token {
                Some(c) => options.continue_token = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// One batch: one transaction. [`batches`] splits operations into batches the API takes.
    pub async fn batch(&self, operations: &[BatchOp]) -> Result<BatchResult> {
        #[derive(Serialize)]
        struct Body<'a> {
            operations: &'a [BatchOp],
        }
        self.send(self.request(Method::POST, "/v1/batch").json(&Body { operations })).await
    }

    /// Streams the change log after `since`; with `watch`, keeps streaming new revisions.
    pub async fn changes(&self, since: i64, watch: bool) -> Result<impl Stream<Item = Result<ChangeEvent>> + use<>> {
        let request = self
            .request(Method::GET, "/v1/changes")
            .query(&[("since", since.to_string()), ("watch", watch.to_string())]);
        let response = check(request.send().await?).await?;
        let bytes = response.bytes_stream();
        Ok(lines(bytes).map(|line| {
            let line = line?;
            serde_json::from_str(&line).map_err(|e| ClientError::Unexpected { status: 200, detail: e.to_string() })
        }))
    }

    pub async fn create_token(
        &self,
        role: &str,
        project: Option<&str>,
        description: &str,
        expires_in: Option<Duration>,
    ) -> Result<TokenInfo> {
        let body = serde_json::json!({
            "role": role,
            "project": project,
            "description": description,
            "expires_in_seconds": expires_in.map(|d| d.as_secs()),
        });
        self.send(self.request(Method::POST, "/v1/tokens").json(&body)).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        #[derive(Deserialize)]
        struct Items {
            items: Vec<TokenInfo>,
        }
        let items: Items = self.send(self.request(Method::GET, "/v1/tokens")).await?;
        Ok(items.items)
    }

    pub async fn revoke_token(&self, id: Uuid) -> Result<()> {
        let _: serde_json::Value = self.send(self.request(Method::DELETE, &format!("/v1/tokens/{id}"))).await?;
        Ok(())
    }

    /// Registers a node; the answer holds its credential (shown once).
    pub async fn create_node(&self, name: &str) -> Result<serde_json::Value> {
        self.send(self.request(Method::POST, "/v1/nodes").json(&serde_json::json!({ "name": name }))).await
    }

    /// Every node with its connection and realization.
    pub async fn list_nodes(&self) -> Result<Vec<serde_json::Value>> {
        #[derive(Deserialize)]
        struct Items {
            items: Vec<serde_json::Value>,
        }
        let items: Items = self.send(self.request(Method::GET, "/v1/nodes")).await?;
        Ok(items.items)
    }

    pub async fn delete_node(&self, name: &str) -> Result<()> {
        let _: serde_json::Value = self.send(self.request(Method::DELETE, &format!("/v1/nodes/{}", enc(name)))).await?;
        Ok(())
    }

    /// Makes `blocks` the pod-network blocks the cluster assigned `node` on `network`
    /// (`project/name`); none withdraws them. The node's blocks on the network, after.
    pub async fn assign_node_blocks(
        &self,
        node: &str,
        network: &str,
        blocks: &[ipnet::IpNet],
    ) -> Result<Vec<ipnet::IpNet>> {
        #[derive(Deserialize)]
        struct Assigned {
            blocks: Vec<ipnet::IpNet>,
        }
        let body = serde_json::json!({ "network": network, "blocks": blocks });
        let path = format!("/v1/nodes/{}/blocks", enc(node));
        let assigned: Assigned = self.send(self.request(Method::PUT, &path).json(&body)).await?;
        Ok(assigned.blocks)
    }

    /// A join token (shown once) with which agents register their own nodes.
    /// A join token that registers `uses` nodes (only `node`, when given) for `expires_in`.
    pub async fn create_join_token(
        &self,
        expires_in: Duration,
        uses: u32,
        node: Option<&str>,
        description: &str,
    ) -> Result<serde_json::Value> {
        let body = serde_json::json!({
            "expires_in_seconds": expires_in.as_secs(),
            "uses": uses,
            "node": node,
            "description": description,
        });
        self.send(self.request(Method::POST, "/v1/join-tokens").json(&body)).await
    }

    pub async fn list_join_tokens(&self) -> Result<Vec<serde_json::Value>> {
        #[derive(Deserialize)]
        struct Items {
            items: Vec<serde_json::Value>,
        }
        let items: Items = self.send(self.request(Method::GET, "/v1/join-tokens")).await?;
        Ok(items.items)
    }

    pub async fn revoke_join_token(&self, id: Uuid) -> Result<()> {
        let _: serde_json::Value = self.send(self.request(Method::DELETE, &format!("/v1/join-tokens/{id}"))).await?;
        Ok(())
    }

    /// Whether `revision` is applied by every node it concerns.
    pub async fn realization(&self, revision: i64) -> Result<Realization> {
        self.send(self.request(Method::GET, "/v1/realization").query(&[("revision", revision)])).await
    }

    /// The verdict for one packet (`POST /v1/explain`): `{"from", "to", "protocol", "port"}`.
    pub async fn explain(&self, request: &serde_json::Value) -> Result<serde_json::Value> {
        self.send(self.request(Method::POST, "/v1/explain").json(request)).await
    }

    /// The reachability matrix between selected ports (`GET /v1/reach`), with query
    /// parameters such as `protocol`, `port`, `project`, `labelSelector`, `family`, `outside`.
    pub async fn reach(&self, query: &[(&str, String)]) -> Result<serde_json::Value> {
        self.send(self.request(Method::GET, "/v1/reach").query(query)).await
    }

    /// Flows the datapath saw (`GET /v1/flows`), with query parameters such as `project`,
    /// `from`, `to`, `verdict`, `protocol`, `port`, `policy`, `since`, `limit`: oldest first.
    pub async fn flows(&self, query: &[(&str, String)]) -> Result<Vec<weft_model::flow::Flow>> {
        #[derive(serde::Deserialize)]
        struct Items {
            items: Vec<weft_model::flow::Flow>,
        }
        let items: Items = self.send(self.request(Method::GET, "/v1/flows").query(query)).await?;
        Ok(items.items)
    }

    /// Follows the flows written after `since_id` (`GET /v1/flows?watch=true`), filtered by
    /// `query` as [`Client::flows`].
    pub async fn watch_flows(
        &self,
        query: &[(&str, String)],
        since_id: i64,
    ) -> Result<impl Stream<Item = Result<weft_model::flow::Flow>> + use<>> {
        let request = self
            .request(Method::GET, "/v1/flows")
            .query(query)
            .query(&[("watch", "true".to_string()), ("since_id", since_id.to_string())]);
        let response = check(request.send().await?).await?;
        Ok(lines(response.bytes_stream()).map(|line| {
            let line = line?;
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| ClientError::Unexpected { status: 200, detail: e.to_string() })?;
            if let Some(problem) = value.get("error") {
                let problem = serde_json::from_value(problem.clone())
                    .map_err(|e| ClientError::Unexpected { status: 200, detail: e.to_string() })?;
                return Err(ClientError::Api(problem));
            }
            serde_json::from_value(value).map_err(|e| ClientError::Unexpected { status: 200, detail: e.to_string() })
        }))
    }

    /// A security group's reach (the nodes whose span holds it) and realization.
    pub async fn group_status(&self, key: &Key) -> Result<serde_json::Value> {
        self.send(self.request(Method::GET, &format!("{}/status", key.path(Kind::SecurityGroup)))).await
    }
}

/// The answer of `GET /v1/realization`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Realization {
    pub revision: i64,
    /// The revision the server's compiler is at.
    pub compiled: i64,
    pub complete: bool,
    pub nodes: Vec<serde_json::Value>,
    pub laggards: Vec<String>,
    /// Nodes that refuse part of what they were sent (each node's `problems` say what).
    #[serde(default)]
    pub refusing: Vec<String>,
}

impl Realization {
    /// Every problem the refusing nodes report, as `node: problem` lines.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let name = node["name"].as_str().unwrap_or("?");
            for problem in node["problems"].as_array().into_iter().flatten() {
                out.push(format!("{name}: {}", problem.as_str().unwrap_or_default()));
            }
        }
        out
    }
}

/// Turns an error status into [`ClientError::Api`] (or `Unexpected` when the body is not a
/// problem).
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(problem) => Err(ClientError::Api(problem)),
        Err(_) => Err(ClientError::Unexpected { status: status.as_u16(), detail: text }),
    }
}

/// Splits a byte stream into lines.
fn lines(
    bytes: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> impl Stream<Item = Result<String>> + Unpin {
    Box::pin(futures::stream::unfold((bytes, Vec::<u8>::new(), false), |(mut bytes, mut buf, mut done)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if text.trim().is_empty() {
                    continue;
                }
                return Some((Ok(text), (bytes, buf, done)));
            }
            if done {
                return None;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(ClientError::Http(e)), (bytes, buf, true))),
                None => {
                    // A last line without its newline still counts.
                    if !buf.is_empty() {
                        buf.push(b'\n');
                    }
                    done = true;
                }
            }
        }
    }))
}

/// Whether an error is the server saying "not found".
pub fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(p) if p.status == StatusCode::NOT_FOUND.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_operations_serialize_as_the_api_reads_them() {
        let op = BatchOp::Delete { kind: Kind::Port, target: Target::named(Some("p"), "x"), cascade: false };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            serde_json::json!({"op": "delete", "kind": "port", "project": "p", "name": "x", "cascade": false})
        );
        let id = Uuid::nil();
        let op =
            BatchOp::Patch { kind: Kind::Project, target: Target::id(id), patch: serde_json::json!({"labels": {}}) };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            serde_json::json!({"op": "patch", "kind": "project", "id": id, "patch": {"labels": {}}})
        );
    }

    #[test]
    fn batches_stay_within_the_apis_limits_and_keep_the_order() {
        let body = |ops: &[BatchOp]| serde_json::to_vec(&serde_json::json!({ "operations": ops })).unwrap().len();
        // 5,000 operations of about 1 KiB: under the count limit, over the size limit.
        let large: Vec<BatchOp> = (0..5_000)
            .map(|i| BatchOp::Create {
                kind: Kind::Port,
                object: object(&serde_json::json!({"name": format!("p{i}"), "description": "x".repeat(1_000)})),
            })
            .collect();
        assert!(body(&large) > weft_model::MAX_REQUEST_BYTES);
        let split = batches(&large);
        assert!(split.len() >= 2, "{} batches", split.len());
        assert!(split.iter().all(|b| body(b) <= weft_model::MAX_REQUEST_BYTES && !b.is_empty()));
        assert_eq!(split.concat().len(), large.len());
        assert!(std::ptr::eq(split[0].as_ptr(), large.as_ptr()), "in order, from the first");
        // Small ones: split by count.
        let small: Vec<BatchOp> = (0..25_000)
            .map(|i| BatchOp::Delete { kind: Kind::Port, target: Target::id(Uuid::from_u128(i)), cascade: false })
            .collect();
        let lengths: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(lengths, [10_000, 10_000, 5_000]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn keys_make_paths() {
        assert_eq!(Key::parse(Kind::Port, "k8s-a/web").path(Kind::Port), "/v1/ports/k8s-a/web");
        assert_eq!(Key::parse(Kind::Project, "k8s-a").path(Kind::Project), "/v1/projects/k8s-a");
        let id = Uuid::new_v4();
        assert_eq!(Key::parse(Kind::SecurityGroup, &id.to_string()), Key::Id(id));
        assert_eq!(Key::Name("a b/c".into()).path(Kind::Project), "/v1/projects/a%20b%2Fc");
    }
}
