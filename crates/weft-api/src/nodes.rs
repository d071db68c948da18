//! Nodes and realization: registering nodes and join tokens (admin), each node's connection
//! and how far it has applied the configuration, a security group's reach and realization, and
//! whether a revision is in every datapath it concerns (`weft wait`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_model::{Kind, Resource};
use weft_store::ObjectKey;
use weft_store::nodes::NodeStatus;

use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::problem::{ApiError, ApiResult};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    pub name: String,
}

/// A node just registered, with its credential shown this once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedNode {
    pub name: String,
    pub credential: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    #[serde(default)]
    pub description: String,
    /// Lifetime in seconds: a day unless said otherwise, at most 30 days (a join token is a
    /// key to the cluster's policy: it should not outlive the joining it is for).
    #[serde(default = "default_join_token_lifetime")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub expires_in_seconds: u64,
    /// How many nodes it registers: one unless said otherwise.
    #[serde(default = "one_use")]
    #[schema(minimum = 1, maximum = 10_000)]
    pub uses: u32,
    /// The one node it registers. A token without one cannot register a node name that ports
    /// are placed on already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn default_join_token_lifetime() -> u64 {
    86_400
}

fn one_use() -> u32 {
    1
}

/// The longest a join token lives.
pub const MAX_JOIN_TOKEN_SECONDS: u64 = 30 * 86_400;
/// The most nodes one join token registers.
pub const MAX_JOIN_TOKEN_USES: u32 = 10_000;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedJoinToken {
    pub id: Uuid,
    /// Shown this once.
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// A node's connection and realization.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub name: String,
    pub connected: bool,
    pub controller: Option<String>,
    pub address: Option<String>,
    /// The node's addresses on the network between nodes, as its agent said: where other
    /// nodes route its pods.
    #[schema(value_type = Vec<String>)]
    pub underlay: Vec<std::net::IpAddr>,
    /// The pod-network blocks its ports get their addresses from.
    #[schema(value_type = Vec<String>)]
    pub blocks: Vec<ipnet::IpNet>,
    pub agent_version: Option<String>,
    pub connected_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
    pub acked_revision: i64,
    pub acked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Every update meant for the node up to here is in its datapath.
    pub realized_revision: i64,
    /// Revisions between what the node has applied and what concerns it now.
    pub lag_revisions: i64,
    /// Since the first revision it has not applied was committed.
    pub lag_seconds: f64,
    /// Ports on the node, as the compiler sees them.
    pub ports: usize,
    pub last_error: Option<String>,
    /// What the agent applied but refuses to enforce as asked (a port's interface it will not
    /// bind): the node does not enforce what the configuration says until these are gone.
    pub problems: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct RealizationQuery {
    pub revision: i64,
}

/// One node's part in a revision's realization.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRealization {
    pub name: String,
    /// Not done: the revision of the first update up to the asked one that it has not applied.
    /// Done: the revision it has realized, up to the asked one.
    pub needed: i64,
    pub realized_revision: i64,
    pub connected: bool,
    pub done: bool,
    /// What the node refuses to enforce as asked, as its agent last said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Whether a revision is in every datapath it concerns.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Realization {
    pub revision: i64,
    /// The revision this process's compiler is at.
    pub compiled: i64,
    pub complete: bool,
    pub nodes: Vec<NodeRealization>,
    /// Nodes not done yet.
    pub laggards: Vec<String>,
    /// Nodes that applied what they were sent but refuse part of it (their `problems` say
    /// what): the datapath is not what the configuration says there.
    #[serde(default)]
    pub refusing: Vec<String>,
}

/// A security group's reach and realization.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupStatus {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    /// The revision that last changed it.
    pub revision: i64,
    /// The revision this process's compiler is at.
    pub compiled: i64,
    /// The nodes whose span holds it, and whether each has applied its last change.
    pub nodes: Vec<GroupNode>,
    /// Every one of them has.
    pub applied: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupNode {
    pub name: String,
    pub realized_revision: i64,
    pub connected: bool,
    pub applied: bool,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let request: CreateNode = body::json(&headers, body)?;
    let credential = state.store.create_node(&request.name).await?;
    tracing::info!(node = %request.name, "node registered");
    Ok((StatusCode::CREATED, axum::Json(CreatedNode { name: request.name, credential })).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    if !state.store.delete_node(&name).await? {
        return Err(ApiError::not_found(format!("node {name} does not exist")));
    }
    tracing::info!(node = %name, "node deleted");
    Ok(axum::Json(serde_json::json!({ "name": name, "deleted": true })).into_response())
}

/// The blocks of the pod network the cluster assigned a node (Kubernetes' Node.spec.podCIDRs).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBlocks {
    /// The network, `project/name`: one split into node blocks.
    #[schema(max_length = 507)]
    pub network: String,
    /// Network addresses within the network's subnets; none withdraws the assignment.
    #[schema(value_type = Vec<String>, max_items = 16, example = json!(["10.244.3.0/24", "fd44::3:0:0:0/80"]))]
    pub blocks: Vec<ipnet::IpNet>,
}

/// A node's blocks on a network after an assignment: the assigned ones, and any it claimed
/// before that still hold addresses.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeBlocks {
    pub node: String,
    pub network: String,
    #[schema(value_type = Vec<String>)]
    pub blocks: Vec<ipnet::IpNet>,
}

/// The most blocks one assignment names (Kubernetes assigns one per family).
pub const MAX_ASSIGNED_BLOCKS: usize = 16;

/// `PUT /v1/nodes/{name}/blocks` (admin): what kube-manager calls when the cluster assigns a
/// node its pod CIDRs. The node need not be registered yet: the Kubernetes Node comes first.
pub async fn assign_blocks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let request: AssignBlocks = body::json(&headers, body)?;
    let mut v = weft_model::Validator::new();
    v.check("node", weft_model::syntax::dns_subdomain(&name));
    if request.blocks.len() > MAX_ASSIGNED_BLOCKS {
        v.at("blocks", |v| v.error(format!("at most {MAX_ASSIGNED_BLOCKS}")));
    }
    v.finish().map_err(ApiError::invalid)?;
    let blocks = state.store.assign_node_blocks(&request.network, &name, &request.blocks).await?;
    tracing::info!(node = %name, network = %request.network, blocks = ?blocks, "node blocks assigned");
    Ok(axum::Json(NodeBlocks { node: name, network: request.network, blocks }).into_response())
}

pub async fn create_join_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let request: CreateJoinToken = body::json(&headers, body)?;
    let mut v = weft_model::Validator::new();
    if !(1..=MAX_JOIN_TOKEN_SECONDS).contains(&request.expires_in_seconds) {
        v.at("expires_in_seconds", |v| v.error(format!("between 1 and {MAX_JOIN_TOKEN_SECONDS} (30 days)")));
    }
    if !(1..=MAX_JOIN_TOKEN_USES).contains(&request.uses) {
        v.at("uses", |v| v.error(format!("between 1 and {MAX_JOIN_TOKEN_USES}")));
    }
    if let Some(node) = &request.node {
        v.check("node", weft_model::syntax::dns_subdomain(node));
    }
    v.finish().map_err(ApiError::invalid)?;
    let limits = weft_store::nodes::JoinTokenLimits {
        expires_in: std::time::Duration::from_secs(request.expires_in_seconds),
        uses: request.uses,
        node: request.node.clone(),
    };
    let created = state.store.create_join_token(&limits, &request.description).await?;
    tracing::info!(id = %created.id, expires_at = %created.expires_at, uses = request.uses, node = ?request.node, "join token created");
    let body = CreatedJoinToken { id: created.id, token: created.secret, expires_at: created.expires_at };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// Join tokens, without their secrets (admin).
pub async fn list_join_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(serde_json::json!({ "items": state.store.list_join_tokens().await? })).into_response())
}

/// Revokes a join token: it registers no node from now on (admin).
pub async fn revoke_join_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let Some(id) = id.parse::<Uuid>().ok() else {
        return Err(ApiError::not_found(format!("{id:?} is not a join token's id")));
    };
    if !state.store.revoke_join_token(id).await? {
        return Err(ApiError::not_found(format!("join token {id} does not exist")));
    }
    tracing::info!(id = %id, "join token revoked");
    Ok(axum::Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
}

/// Node status with the lag as this process's compiler sees it.
async fn node_infos(state: &AppState) -> ApiResult<Vec<NodeInfo>> {
    let statuses = state.store.list_nodes().await?;
    let policy = &state.policy;
    let compiled = policy.revision().unwrap_or(0);
    // No compiler in service (loading): no node is known to have ports, as at start.
    let ports: BTreeMap<String, usize> = policy
        .with_compiler(|c, _| c.node_ports().map(|(n, count)| (n.to_string(), count)).collect())
        .unwrap_or_default();
    let mut since: BTreeMap<i64, Option<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    // Revisions committed that the compiler has not reached yet (a long transaction holding
    // the change log back, or a compiler behind): whom they concern is not known, so every
    // node with ports may be behind by them, and is shown so.
    let uncompiled = crate::health::behind(state).await.ok().flatten();
    let mut out = Vec::with_capacity(statuses.len());
    for s in statuses {
        let has_ports = ports.contains_key(&s.name);
        let mut lag_revisions = match policy.realized(&s.name, s.realized_revision, compiled, has_ports) {
            Ok(()) => 0,
            Err(needed) => (needed - s.realized_revision).max(1),
        };
        if let (Some((last, _)), true) = (uncompiled, has_ports) {
            lag_revisions = lag_revisions.max(last - s.realized_revision);
        }
        let lag_seconds = if lag_revisions > 0 {
            let first = match since.get(&s.realized_revision) {
                Some(t) => *t,
                None => {
                    let t = state.store.committed_after(s.realized_revision).await?;
                    since.insert(s.realized_revision, t);
                    t
                }
            };
            first.map_or(0.0, |t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
        } else {
            0.0
        };
        out.push(info(s, lag_revisions, lag_seconds, &ports));
    }
    Ok(out)
}

fn info(s: NodeStatus, lag_revisions: i64, lag_seconds: f64, ports: &BTreeMap<String, usize>) -> NodeInfo {
    NodeInfo {
        ports: ports.get(&s.name).copied().unwrap_or(0),
        name: s.name,
        connected: s.connected,
        controller: s.controller,
        address: s.address,
        underlay: s.underlay,
        blocks: s.blocks,
        agent_version: s.agent_version,
        connected_at: s.connected_at,
        last_seen: s.last_seen,
        acked_revision: s.acked_revision,
        acked_at: s.acked_at,
        realized_revision: s.realized_revision,
        lag_revisions,
        lag_seconds,
        last_error: s.last_error,
        problems: s.problems,
    }
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(serde_json::json!({ "items": node_infos(&state).await? })).into_response())
}

/// Whether `revision` is applied by every node it concerns: every node whose span is not empty
/// or that recent updates went to must have realized the last revision up to `revision` that
/// sent it anything.
pub async fn realization(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<RealizationQuery>,
) -> ApiResult<Response> {
    let policy = &state.policy;
    let compiled = policy.revision().unwrap_or(0);
    let statuses: BTreeMap<String, NodeStatus> =
        state.store.list_nodes().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
    let with_ports: std::collections::BTreeSet<String> =
        policy.with_compiler(|c, _| c.node_ports().map(|(n, _)| n.to_string()).collect()).unwrap_or_default();
    // A project's token sees the nodes its project's ports are on, and what they say of its
    // own ports only: nothing of other projects (issue 17).
    let own: Option<(String, std::collections::BTreeSet<String>)> = match (caller.is_admin(), caller.project()) {
        (true, _) => None,
        (false, project) => {
            let project = project.unwrap_or_default().to_string();
            let nodes = policy
                .with_compiler(|c, _| {
                    c.cluster()
                        .ports()
                        .filter(|(_, p)| *p.project == *project)
                        .filter_map(|(_, p)| p.node.as_deref().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Some((project, nodes))
        }
    };
    let mut names: std::collections::BTreeSet<&String> = with_ports.iter().collect();
    names.extend(statuses.keys());
    if let Some((_, nodes)) = &own {
        names.retain(|n| nodes.contains(*n));
    }
    let mut nodes = Vec::new();
    for name in names {
        let status = statuses.get(name);
        let (realized, connected) = status.map_or((0, false), |s| (s.realized_revision, s.connected));
        let outcome = policy.realized(name, realized, query.revision, with_ports.contains(name));
        nodes.push(NodeRealization {
            done: outcome.is_ok(),
            needed: outcome.err().unwrap_or(realized.min(query.revision)),
            name: name.clone(),
            realized_revision: realized,
            connected,
            problems: status
                .map(|s| match &own {
                    None => s.problems.clone(),
                    Some((project, _)) => {
                        let prefix = format!("port {project}/");
                        s.problems.iter().filter(|p| p.starts_with(&prefix)).cloned().collect()
                    }
                })
                .unwrap_or_default(),
        });
    }
    let laggards: Vec<String> = nodes.iter().filter(|n| !n.done).map(|n| n.name.clone()).collect();
    let refusing: Vec<String> = nodes.iter().filter(|n| !n.problems.is_empty()).map(|n| n.name.clone()).collect();
    // The compiler must have reached the revision to know whom it concerns.
    let complete = compiled >= query.revision && laggards.is_empty();
    Ok(axum::Json(Realization { revision: query.revision, compiled, complete, nodes, laggards, refusing })
        .into_response())
}

pub async fn group_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let key = match key.parse::<Uuid>() {
        Ok(id) => ObjectKey::Id(id),
        Err(_) => return Err(ApiError::not_found(format!("{key:?} is not a security group id"))),
    };
    group_status_of(&state, &caller, key).await
}

pub async fn group_status_by_name(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    group_status_of(&state, &caller, ObjectKey::Name { project: Some(project), name }).await
}

async fn group_status_of(state: &AppState, caller: &Caller, key: ObjectKey) -> ApiResult<Response> {
    let Some(stored) = state.store.get(Kind::SecurityGroup, &key).await? else {
        return Err(ApiError::not_found(format!("security group {key} does not exist")));
    };
    let Resource::SecurityGroup(group) = stored.decode()? else {
        return Err(ApiError::internal());
    };
    if !caller.can_read(&group.project) {
        return Err(ApiError::not_found(format!("security group {key} does not exist")));
    }
    let policy = &state.policy;
    let compiled = policy.revision().unwrap_or(0);
    let holders: Vec<String> = policy
        .with_compiler(|c, _| c.group_nodes(&stored.id).into_iter().map(String::from).collect())
        .unwrap_or_default();
    let statuses: BTreeMap<String, NodeStatus> =
        state.store.list_nodes().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
    let nodes: Vec<GroupNode> = holders
        .into_iter()
        .map(|name| {
            let (realized, connected) = statuses.get(&name).map_or((0, false), |s| (s.realized_revision, s.connected));
            GroupNode { applied: realized >= stored.revision, name, realized_revision: realized, connected }
        })
        .collect();
    let applied = compiled >= stored.revision && nodes.iter().all(|n| n.applied);
    let body = GroupStatus {
        id: stored.id,
        project: group.project,
        name: group.name,
        revision: stored.revision,
        compiled,
        nodes,
        applied,
    };
    Ok(axum::Json(body).into_response())
}
