//! Explain and reach (DESIGN.md §5): what the compiler this process keeps current says of a
//! packet between two endpoints (`POST /v1/explain`), and of every pair among selected ports
//! (`GET /v1/reach`, the lab probe's JSON shape), each stamped with the revision it reflects.
//! A caller sees only the ports of projects it may read.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_compiler::eval::Side;
use weft_compiler::{Compiled, Compiler, Endpoint, Packet};
use weft_model::{Direction, LabelSelector};

use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult};
use crate::{AppState, body};

/// The most endpoints a reach matrix has (their square is the work).
pub const MAX_REACH_ENDPOINTS: usize = 500;

/// One packet between two endpoints: a port (`project/name`) or an address.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// `project/name` of a port, or an address (a port's own address means that port).
    pub from: String,
    pub to: String,
    /// tcp, udp, sctp or icmp (icmpv6 for IPv6 pings).
    pub protocol: String,
    /// The destination port (tcp, udp, sctp).
    #[serde(default)]
    pub port: Option<u16>,
    /// ipv4 (the default) or ipv6: which of the ports' addresses the packet uses.
    #[serde(default)]
    pub family: Option<String>,
    /// Answer once the compiler has reached at least this revision (read your writes).
    #[serde(default)]
    pub revision: Option<i64>,
}

/// One side's decision.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SideExplanation {
    /// The port (`project/name`).
    pub port: String,
    /// open (no group isolates it this way), allowed, denied, or refused (the port's address
    /// in the packet is one another port names too: dispatched to neither).
    pub verdict: String,
    /// The groups that isolate it this way (`project/name`).
    pub isolated_by: Vec<String>,
    /// The group and rule that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Uuid>,
    /// What that rule was written from (kube-manager: the NetworkPolicy and its entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<weft_model::RuleOrigin>,
    /// The tiered cluster policy rule that decided (DESIGN.md §11): accept or deny in either
    /// tier, or a baseline pass (allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiered: Option<TieredExplanation>,
    /// The admin rule that passed this side to its security groups (which then decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<TieredExplanation>,
}

/// A tiered cluster policy's rule. Cluster policies are an admin's: a project's token is told
/// the tier and the action, not which policy or rule.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TieredExplanation {
    /// admin or baseline.
    pub tier: String,
    /// The cluster policy's name (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The rule's position among the policy's rules of this direction, from 0 (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    /// The rule's name (admins only; may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule_name: String,
    /// accept, deny or pass.
    pub action: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExplainResponse {
    pub revision: i64,
    pub allowed: bool,
    /// Why it is allowed whatever the groups say: same_port, own_node, neighbour_discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    /// The source port's egress (absent when the source is no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SideExplanation>,
    /// The destination port's ingress (absent when the destination is no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SideExplanation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReachQuery {
    /// tcp (the default), udp, sctp or icmp.
    #[serde(default)]
    pub protocol: Option<String>,
    pub port: Option<u16>,
    /// Only the ports of this project.
    pub project: Option<String>,
    /// Only the ports these labels select (Kubernetes syntax).
    pub label_selector: Option<String>,
    /// ipv4 (the default) or ipv6.
    pub family: Option<String>,
    /// An address outside the cluster, as the endpoint `outside`.
    pub outside: Option<IpAddr>,
    /// Answer once the compiler has reached at least this revision (read your writes).
    pub revision: Option<i64>,
}

/// How long a request waits for the compiler to reach the revision it asks for.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until this process's compiler has reached `revision`. A revision no write has taken
/// yet is a bad request at once, not a wait that ends in 503.
async fn caught_up(state: &AppState, revision: Option<i64>) -> ApiResult<()> {
    let Some(wanted) = revision else { return Ok(()) };
    if state.policy.revision().is_some_and(|at| at >= wanted) {
        return Ok(());
    }
    let last = state.store.last_revision().await?;
    if wanted > last {
        return Err(ApiError::invalid_parameter(
            "revision",
            format!("no revision {wanted} exists: the configuration is at revision {last}"),
        ));
    }
    match tokio::time::timeout(CATCH_UP, state.policy.reached(wanted)).await {
        Ok(()) => Ok(()),
        _ => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-yet",
            format!(
                "the compiler is at revision {}, not yet {wanted}; try again",
                state.policy.revision().unwrap_or(0)
            ),
        )),
    }
}

/// The lab probe's shape: `allowed` holds every (from, to) that connects.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReachMatrix {
    pub revision: i64,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub endpoints: Vec<String>,
    pub allowed: Vec<(String, String)>,
}

fn family(name: Option<&str>) -> ApiResult<bool> {
    match name.unwrap_or("ipv4") {
        "ipv4" => Ok(false),
        "ipv6" => Ok(true),
        other => Err(ApiError::invalid_parameter("family", format!("{other:?} is not ipv4 or ipv6"))),
    }
}

/// The transport part of a packet: protocol number, destination port, ICMP (type, code).
struct L4 {
    protocol: u8,
    port: Option<u16>,
    icmp: Option<(u8, u8)>,
}

impl L4 {
    fn parse(protocol: &str, port: Option<u16>, ipv6: bool) -> ApiResult<L4> {
        let ported = |number| match port {
            Some(p) => Ok(L4 { protocol: number, port: Some(p), icmp: None }),
            None => Err(ApiError::invalid_parameter("port", format!("{protocol} needs a port"))),
        };
        match protocol {
            "tcp" => ported(6),
            "udp" => ported(17),
            "sctp" => ported(132),
            // An echo request: what ping sends.
            "icmp" | "icmpv6" if ipv6 => Ok(L4 { protocol: 58, port: None, icmp: Some((128, 0)) }),
            "icmp" | "icmpv6" => Ok(L4 { protocol: 1, port: None, icmp: Some((8, 0)) }),
            other => Err(ApiError::invalid_parameter("protocol", format!("{other:?} is not tcp, udp, sctp or icmp"))),
        }
    }

    fn packet(&self, src: IpAddr, dst: IpAddr) -> Packet {
        Packet { src, dst, protocol: self.protocol, port: self.port, icmp: self.icmp }
    }
}

fn verdict(side: Side) -> &'static str {
    match side {
        Side::Open => "open",
        Side::Allowed { .. } => "allowed",
        Side::Denied => "denied",
        Side::Refused => "refused",
        Side::Tiered { action: weft_model::PolicyAction::Deny, .. } => "denied",
        Side::Tiered { .. } => "allowed",
    }
}

fn tiered_explanation(
    compiler: &Compiler,
    by: weft_compiler::TieredRuleRef,
    direction: Direction,
    action: weft_model::PolicyAction,
    admin: bool,
) -> TieredExplanation {
    let policy = compiler.cluster().cluster_policy(&by.policy);
    let rules = policy.map(|p| match direction {
        Direction::Ingress => &p.ingress,
        Direction::Egress => &p.egress,
    });
    let rule_name = rules.and_then(|r| r.get(usize::from(by.rule))).map(|r| r.name.clone()).unwrap_or_default();
    TieredExplanation {
        tier: policy.map(|p| p.tier.to_string()).unwrap_or_default(),
        policy: admin.then(|| policy.map_or_else(|| by.policy.to_string(), |p| p.name.clone())),
        rule: admin.then_some(by.rule),
        rule_name: if admin { rule_name } else { String::new() },
        action: action.to_string(),
    }
}

fn group_name(compiler: &Compiler, id: &Uuid) -> String {
    compiler.cluster().group(id).map_or_else(|| id.to_string(), |g| format!("{}/{}", g.project, g.name))
}

/// A port's id, name and address of a family, when the caller may read it.
struct Selected {
    id: Uuid,
    name: String,
    address: IpAddr,
}

fn endpoint(
    compiler: &Compiler,
    caller: &Caller,
    text: &str,
    ipv6: bool,
    field: &str,
) -> ApiResult<(Endpoint, IpAddr, Option<String>)> {
    // Another project's port is, to a project's token, not a port: by name it does not exist,
    // by address it is an address outside the caller's view, whose side is not explained
    // (issue 17: a tenant learns nothing of another's ports and policy).
    let (id, port) = if let Some((project, name)) = text.split_once('/') {
        let found = compiler.cluster().ports().find(|(_, p)| &*p.project == project && &*p.name == name);
        found
            .filter(|(_, p)| caller.can_read(&p.project))
            .ok_or_else(|| ApiError::invalid_parameter(field, format!("no port {text}")))?
    } else {
        let address: IpAddr = text
            .parse()
            .map_err(|_| ApiError::invalid_parameter(field, format!("{text:?} is no project/port or address")))?;
        match compiler.cluster().ports().find(|(_, p)| p.ips.contains(&address)) {
            Some(found) if caller.can_read(&found.1.project) => found,
            _ => return Ok((Endpoint::Address(address), address, None)),
        }
    };
    let name = format!("{}/{}", port.project, port.name);
    let address = port.ips.iter().copied().find(|a| a.is_ipv6() == ipv6).ok_or_else(|| {
        ApiError::invalid_parameter(field, format!("{name} has no {} address", if ipv6 { "IPv6" } else { "IPv4" }))
    })?;
    Ok((Endpoint::Port(*id), address, Some(name)))
}

fn side_explanation(
    compiler: &Compiler,
    view: &Compiled,
    port: (Uuid, String),
    direction: Direction,
    side: Side,
    passed: Option<weft_compiler::TieredRuleRef>,
    admin: bool,
) -> SideExplanation {
    let mut isolated_by: Vec<String> =
        view.isolated_by(&port.0, direction).unwrap_or_default().iter().map(|g| group_name(compiler, g)).collect();
    isolated_by.sort();
    let (group, rule, origin) = match side {
        Side::Allowed { group, rule } => {
            let written = compiler.cluster().group(&group).and_then(|g| g.rules.iter().find(|r| r.id == Some(rule)));
            (Some(group_name(compiler, &group)), Some(rule), written.and_then(|r| r.origin.clone()))
        }
        _ => (None, None, None),
    };
    let tiered = match side {
        Side::Tiered { by, action } => Some(tiered_explanation(compiler, by, direction, action, admin)),
        _ => None,
    };
    let passed = passed.map(|by| tiered_explanation(compiler, by, direction, weft_model::PolicyAction::Pass, admin));
    SideExplanation { port: port.1, verdict: verdict(side).into(), isolated_by, group, rule, origin, tiered, passed }
}

pub async fn explain(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: ExplainRequest = body::json(&headers, raw)?;
    caught_up(&state, request.revision).await?;
    let ipv6 = family(request.family.as_deref())?;
    let l4 = L4::parse(&request.protocol, request.port, ipv6)?;
    let answer = state
        .policy
        .with_compiler(|compiler, revision| -> ApiResult<ExplainResponse> {
            let (src, src_addr, src_name) = endpoint(compiler, &caller, &request.from, ipv6, "from")?;
            let (dst, dst_addr, dst_name) = endpoint(compiler, &caller, &request.to, ipv6, "to")?;
            let ports: Vec<Uuid> = [&src, &dst]
                .into_iter()
                .filter_map(|e| if let Endpoint::Port(id) = e { Some(*id) } else { None })
                .collect();
            let view = compiler.view_of(&ports);
            let e = view.explain(&src, &dst, &l4.packet(src_addr, dst_addr));
            let side = |end: &Endpoint, name: Option<String>, direction, decided: Option<Side>, passed| match (
                end, name, decided,
            ) {
                (Endpoint::Port(id), Some(name), Some(s)) => {
                    Some(side_explanation(compiler, &view, (*id, name), direction, s, passed, caller.is_admin()))
                }
                _ => None,
            };
            Ok(ExplainResponse {
                revision,
                allowed: e.allowed,
                always: e.always.map(|a| {
                    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
                }),
                egress: side(&src, src_name, Direction::Egress, e.egress, e.egress_passed),
                ingress: side(&dst, dst_name, Direction::Ingress, e.ingress, e.ingress_passed),
            })
        })
        .ok_or_else(not_loaded)??;
    Ok(axum::Json(answer).into_response())
}

/// Explain and reach while this process has no compiler in service (at start, or while one
/// that failed is loaded again).
pub(crate) fn not_loaded() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "the compiler is being loaded from the configuration; try again",
    )
    .retry_after(1)
}

pub async fn reach(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ReachQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; reach takes protocol, port, project, labelSelector, family, outside and revision",
            e.body_text()
        ))
    })?;
    caught_up(&state, query.revision).await?;
    let ipv6 = family(query.family.as_deref())?;
    let protocol = query.protocol.clone().unwrap_or_else(|| "tcp".into());
    let l4 = L4::parse(&protocol, query.port, ipv6)?;
    let selector = match &query.label_selector {
        Some(text) => {
            let s =
                LabelSelector::parse(text).map_err(|e| ApiError::invalid_parameter("labelSelector", e.to_string()))?;
            let mut v = weft_model::Validator::new();
            s.validate(&mut v);
            v.finish().map_err(|e| ApiError::invalid_parameter("labelSelector", e.to_string()))?;
            Some(s)
        }
        None => None,
    };
    if let Some(outside) = query.outside
        && outside.is_ipv6() != ipv6
    {
        return Err(ApiError::invalid_parameter("outside", "not of the family probed"));
    }
    // At most one matrix per token at a time (429 for a second), and MATRICES at a time on
    // the server (the rest wait their turn, then 503): a reader must not be able to take the
    // server's cores, nor the compiler's lock from the writes (issue 17: 8 concurrent 500x500
    // matrices pushed write latency from 3 ms to 537 ms).
    let _token_turn = state.reach_limits.one_per_token(&caller)?;
    let _server_turn = state.reach_limits.server_turn().await?;
    // Under the compiler's lock: only choosing the endpoints and taking their spans (shared,
    // cheap). The matrix is computed from those, without the lock, off the async runtime.
    let chosen = state.policy.with_compiler(|compiler, revision| -> ApiResult<_> {
        let mut selected: Vec<Selected> = compiler
            .cluster()
            .ports()
            .filter(|(_, p)| query.project.as_deref().is_none_or(|name| &*p.project == name))
            .filter(|(_, p)| selector.as_ref().is_none_or(|s| s.matches(&p.labels)))
            .filter(|(_, p)| caller.can_read(&p.project))
            .filter_map(|(id, p)| {
                let address = p.ips.iter().copied().find(|a| a.is_ipv6() == ipv6)?;
                Some(Selected { id: *id, name: format!("{}/{}", p.project, p.name), address })
            })
            .collect();
        selected.sort_by(|a, b| a.name.cmp(&b.name));
        if selected.len() > MAX_REACH_ENDPOINTS {
            return Err(ApiError::bad_request(format!(
                "{} ports are selected and a matrix takes at most {MAX_REACH_ENDPOINTS}: narrow it with project= or labelSelector=",
                selected.len()
            )));
        }
        let view = compiler.view_of(&selected.iter().map(|s| s.id).collect::<Vec<_>>());
        let mut ends: Vec<(String, Endpoint, IpAddr)> =
            selected.into_iter().map(|s| (s.name, Endpoint::Port(s.id), s.address)).collect();
        if let Some(outside) = query.outside {
            ends.push(("outside".into(), Endpoint::Address(outside), outside));
        }
        Ok((view, ends, revision))
    })
    .ok_or_else(not_loaded)??;
    let (view, ends, revision) = chosen;
    let matrix = tokio::task::spawn_blocking(move || {
        let mut allowed = Vec::new();
        for (from, src, src_addr) in &ends {
            for (to, dst, dst_addr) in &ends {
                if view.explain(src, dst, &l4.packet(*src_addr, *dst_addr)).allowed {
                    allowed.push((from.clone(), to.clone()));
                }
            }
        }
        ReachMatrix {
            revision,
            protocol: if l4.icmp.is_some() { "icmp".into() } else { protocol },
            port: l4.port,
            endpoints: ends.into_iter().map(|(name, _, _)| name).collect(),
            allowed,
        }
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a reach matrix failed");
        ApiError::internal()
    })?;
    Ok(axum::Json(matrix).into_response())
}

/// How many reach matrices the server computes at once.
pub const MATRICES: usize = 1;

/// How long a matrix waits for its turn before the server answers 503.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who is computing a reach matrix now.
#[derive(Debug)]
pub struct ReachLimits {
    turns: std::sync::Arc<tokio::sync::Semaphore>,
    /// The tokens with a matrix in progress (`None`: authentication off).
    running: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Option<Uuid>>>>,
}

impl Default for ReachLimits {
    fn default() -> Self {
        ReachLimits { turns: std::sync::Arc::new(tokio::sync::Semaphore::new(MATRICES)), running: Default::default() }
    }
}

/// A token's matrix in progress; the token may ask for another once it is dropped.
#[derive(Debug)]
pub struct TokenTurn {
    running: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Option<Uuid>>>>,
    token: Option<Uuid>,
}

impl Drop for TokenTurn {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.token);
    }
}

impl ReachLimits {
    /// The caller's turn, or 429 while one of its matrices is in progress.
    fn one_per_token(&self, caller: &Caller) -> ApiResult<TokenTurn> {
        let token = caller.token_id();
        if !self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(token) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "this token has a reach matrix in progress already; ask again once it is answered",
            )
            .retry_after(1));
        }
        Ok(TokenTurn { running: std::sync::Arc::clone(&self.running), token })
    }

    /// The server's turn: waits for a matrix in progress to finish, up to TURN_WAIT.
    async fn server_turn(&self) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
        let busy = || {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server is computing other reach matrices; try again shortly",
            )
            .retry_after(1)
        };
        match tokio::time::timeout(TURN_WAIT, std::sync::Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Caller {
        let now = chrono::Utc::now();
        Caller::Token(weft_store::tokens::Token {
            id: Uuid::new_v4(),
            role: weft_store::tokens::Role::Reader,
            project: Some("a".into()),
            description: String::new(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
        })
    }

    /// Issue 17, finding 10: one token, one matrix at a time (429 with Retry-After), and a
    /// bounded number on the server, the rest waiting their turn.
    #[tokio::test]
    async fn a_token_has_one_matrix_at_a_time_and_the_server_a_few() {
        let limits = ReachLimits::default();
        let (a, b) = (token(), token());
        let first = limits.one_per_token(&a).expect("a's first");
        let refused = limits.one_per_token(&a).expect_err("a's second while the first runs").into_response();
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[axum::http::header::RETRY_AFTER], "1");
        let _other = limits.one_per_token(&b).expect("b is not held up by a");
        drop(first);
        let _again = limits.one_per_token(&a).expect("a's next, once the first is answered");

        let turn = limits.server_turn().await.expect("the server's first turn");
        let waiting = tokio::spawn({
            let turns = std::sync::Arc::clone(&limits.turns);
            async move { turns.acquire_owned().await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a second matrix waits while MATRICES run");
        drop(turn);
        assert!(waiting.await.expect("the waiter"), "and gets its turn after");
    }
}
