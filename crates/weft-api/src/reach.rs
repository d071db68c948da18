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

/// Waits until this process's compiler has reached `revision`.
async fn caught_up(state: &AppState, revision: Option<i64>) -> ApiResult<()> {
    let Some(wanted) = revision else { return Ok(()) };
    let mut at = state.follower.hub.subscribe();
    let reached = tokio::time::timeout(CATCH_UP, at.wait_for(|r| r.is_some_and(|r| r >= wanted))).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-yet",
            format!(
                "the compiler is at revision {}, not yet {wanted}; try again",
                state.follower.hub.revision().unwrap_or(0)
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
        let found = compiler.cluster().ports().find(|(_, p)| p.project == project && p.name == name);
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
) -> SideExplanation {
    let mut isolated_by: Vec<String> =
        view.isolated_by(&port.0, direction).unwrap_or_default().iter().map(|g| group_name(compiler, g)).collect();
    isolated_by.sort();
    let (group, rule) = match side {
        Side::Allowed { group, rule } => (Some(group_name(compiler, &group)), Some(rule)),
        _ => (None, None),
    };
    SideExplanation { port: port.1, verdict: verdict(side).into(), isolated_by, group, rule }
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
    let answer = state.follower.hub.with_compiler(|compiler, revision| -> ApiResult<ExplainResponse> {
        let (src, src_addr, src_name) = endpoint(compiler, &caller, &request.from, ipv6, "from")?;
        let (dst, dst_addr, dst_name) = endpoint(compiler, &caller, &request.to, ipv6, "to")?;
        let ports: Vec<Uuid> = [&src, &dst]
            .into_iter()
            .filter_map(|e| if let Endpoint::Port(id) = e { Some(*id) } else { None })
            .collect();
        let view = compiler.view_of(&ports);
        let e = view.explain(&src, &dst, &l4.packet(src_addr, dst_addr));
        let side = |end: &Endpoint, name: Option<String>, direction, decided: Option<Side>| match (end, name, decided) {
            (Endpoint::Port(id), Some(name), Some(s)) => {
                Some(side_explanation(compiler, &view, (*id, name), direction, s))
            }
            _ => None,
        };
        Ok(ExplainResponse {
            revision,
            allowed: e.allowed,
            always: e
                .always
                .map(|a| serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
            egress: side(&src, src_name, Direction::Egress, e.egress),
            ingress: side(&dst, dst_name, Direction::Ingress, e.ingress),
        })
    })?;
    Ok(axum::Json(answer).into_response())
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
    let matrix = state.follower.hub.with_compiler(|compiler, revision| -> ApiResult<ReachMatrix> {
        let mut selected: Vec<Selected> = compiler
            .cluster()
            .ports()
            .filter(|(_, p)| query.project.as_ref().is_none_or(|name| &p.project == name))
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
        let mut allowed = Vec::new();
        for (from, src, src_addr) in &ends {
            for (to, dst, dst_addr) in &ends {
                if view.explain(src, dst, &l4.packet(*src_addr, *dst_addr)).allowed {
                    allowed.push((from.clone(), to.clone()));
                }
            }
        }
        Ok(ReachMatrix {
            revision,
            protocol: if l4.icmp.is_some() { "icmp".into() } else { protocol.clone() },
            port: l4.port,
            endpoints: ends.into_iter().map(|(name, _, _)| name).collect(),
            allowed,
        })
    })?;
    Ok(axum::Json(matrix).into_response())
}
