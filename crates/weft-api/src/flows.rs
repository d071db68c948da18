//! `GET /v1/flows`: what the datapath saw (DESIGN.md §10), from the flow log the controllers
//! write (so every process answers, whichever controller heard it). Filters: project, from
//! and to (label selectors over the ends' ports), verdict, protocol, port, policy (a group's
//! or NetworkPolicy's name deciding on either side), since and until (a duration back from
//! now, or a time), limit. Without `watch`, the newest `limit` as `{"items": [...]}`; with
//! `watch=true`, newline-delimited flows as they are written, from `since_id` (default: from
//! now on). A project reader sees only flows with a port of its project at an end.

pub mod graph;

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_model::LabelSelector;
use weft_model::flow::{Flow, SideDecision, Verdict};
use weft_store::flows::FlowQuery;

use crate::AppState;
use crate::auth::{Caller, STREAM_RECHECK};
use crate::problem::{ApiError, ApiResult};

/// How often a watch reads the flow log for what is new.
const WATCH_POLL: Duration = Duration::from_millis(250);
/// Flows answered when the request names no limit, and at most.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 10_000;
/// A read filters in the database what it can; selectors and policies are matched here, on
/// at most this many times the limit.
const OVERREAD: i64 = 8;

/// The request's filters, checked.
#[derive(Debug, Default)]
struct Filters {
    query: FlowQuery,
    from: Option<LabelSelector>,
    to: Option<LabelSelector>,
    policy: Option<String>,
    watch: bool,
}

fn time(name: &str, value: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: i64 = number.parse().map_err(|_| bad_time(name))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad_time(name)),
    };
    Ok(Utc::now() - chrono::Duration::seconds(seconds))
}

fn bad_time(name: &str) -> ApiError {
    ApiError::invalid_parameter(name, "must be a time (RFC 3339) or a duration back from now (30s, 15m, 12h, 7d)")
}

fn protocol(value: &str) -> ApiResult<u8> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "sctp" => 132,
        other => other
            .parse()
            .map_err(|_| ApiError::invalid_parameter("protocol", "must be tcp, udp, sctp, icmp, icmpv6 or a number"))?,
    })
}

fn selector(name: &str, value: &str) -> ApiResult<LabelSelector> {
    LabelSelector::parse(value).map_err(|e| ApiError::invalid_parameter(name, format!("not a label selector: {e}")))
}

fn filters(caller: &Caller, params: HashMap<String, String>) -> ApiResult<Filters> {
    let mut f = Filters {
        query: FlowQuery { limit: DEFAULT_LIMIT, newest: true, ..FlowQuery::default() },
        ..Filters::default()
    };
    let mut since_id = None;
    for (name, value) in params {
        match name.as_str() {
            "project" => f.query.project = Some(value),
            "from" => f.from = Some(selector("from", &value)?),
            "to" => f.to = Some(selector("to", &value)?),
            "verdict" => {
                f.query.verdict = Some(match value.as_str() {
                    "allowed" => Verdict::Allowed,
                    "denied" => Verdict::Denied,
                    _ => return Err(ApiError::invalid_parameter("verdict", "must be allowed or denied")),
                })
            }
            "protocol" => f.query.protocol = Some(protocol(&value)?),
            "port" => {
                f.query.port =
                    Some(value.parse().map_err(|_| ApiError::invalid_parameter("port", "must be a port, 0 to 65535"))?)
            }
            "policy" => f.policy = Some(value),
            "since" => f.query.since = Some(time("since", &value)?),
            "until" => f.query.until = Some(time("until", &value)?),
            "since_id" => {
                since_id = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n: &i64| *n >= 0)
                        .ok_or_else(|| ApiError::invalid_parameter("since_id", "must be a flow id, 0 or more"))?,
                )
            }
            "limit" => {
                f.query.limit = value
                    .parse()
                    .ok()
                    .filter(|n: &i64| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::invalid_parameter("limit", format!("must be 1 to {MAX_LIMIT}")))?
            }
            "watch" => {
                f.watch = value.parse().map_err(|_| ApiError::invalid_parameter("watch", "must be true or false"))?
            }
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    "unknown parameter; flows take project, from, to, verdict, protocol, port, policy, since, until, \
                     since_id, limit and watch",
                ));
            }
        }
    }
    // A reader or writer sees its project's flows only.
    match (&f.query.project, caller.project()) {
        (Some(asked), _) if !caller.can_read(asked) => {
            return Err(ApiError::forbidden(format!("this token cannot read project {asked}")));
        }
        (None, Some(own)) if !caller.is_admin() => f.query.project = Some(own.to_string()),
        _ => {}
    }
    if let Some(id) = since_id {
        f.query.after_id = id;
        f.query.newest = false;
    }
    Ok(f)
}

/// A flow as a project token may see it: an end of another project is its address only, and
/// what decided on that end's side (and a DNS question it asked) is not said.
fn redacted(caller: &Caller, mut flow: Flow) -> Flow {
    let Some(own) = caller.project().filter(|_| !caller.is_admin()) else { return flow };
    let foreign = |e: &weft_model::flow::FlowEndpoint| e.project.as_deref().is_some_and(|p| p != own);
    let hide = |d: SideDecision| match d {
        SideDecision::Allowed { .. } => SideDecision::AllowedUnknown,
        SideDecision::Denied { .. } => SideDecision::Denied { isolated_by: vec![] },
        other => other,
    };
    // Cluster policies are an admin's: on either side, a project's token is told the tier and
    // the action of a tiered rule that decided, as explain tells it.
    let tiered = |d: SideDecision| match d {
        SideDecision::Tiered { rule } => SideDecision::Tiered { rule: rule.redacted() },
        other => other,
    };
    flow.egress = flow.egress.map(tiered);
    flow.ingress = flow.ingress.map(tiered);
    if foreign(&flow.src) {
        flow.src = weft_model::flow::FlowEndpoint::outside(flow.src.address);
        flow.egress = flow.egress.map(hide);
        flow.dns = None;
    }
    if foreign(&flow.dst) {
        flow.dst = weft_model::flow::FlowEndpoint::outside(flow.dst.address);
        flow.ingress = flow.ingress.map(hide);
    }
    flow
}

/// Whether a flow passes the filters the database could not apply.
fn wanted(f: &Filters, flow: &Flow) -> bool {
    let labelled = |s: &Option<LabelSelector>, end: &weft_model::flow::FlowEndpoint| {
        s.as_ref().is_none_or(|s| end.port.is_some() && s.matches(&end.labels))
    };
    labelled(&f.from, &flow.src)
        && labelled(&f.to, &flow.dst)
        && f.policy.as_deref().is_none_or(|p| decided_by(flow, p))
}

/// Whether the policy named `name` (a group, or the NetworkPolicy a rule came from) decided
/// either side of the flow.
fn decided_by(flow: &Flow, name: &str) -> bool {
    [&flow.egress, &flow.ingress].into_iter().flatten().any(|d| match d {
        SideDecision::Allowed { rule } => {
            rule.group_name == name || rule.origin.as_ref().is_some_and(|o| o.name == name)
        }
        SideDecision::Denied { isolated_by } => isolated_by.iter().any(|g| g.name == name),
        SideDecision::Tiered { rule } => rule.policy_name.as_deref() == Some(name),
        SideDecision::Open | SideDecision::AllowedUnknown => false,
    })
}

/// Reads what the filters select: up to the limit, after matching what SQL cannot.
async fn read(state: &AppState, caller: &Caller, f: &Filters) -> ApiResult<Vec<Flow>> {
    let plain = f.from.is_none() && f.to.is_none() && f.policy.is_none();
    let mut query = f.query.clone();
    if !plain {
        query.limit = (f.query.limit * OVERREAD).min(MAX_LIMIT * OVERREAD);
    }
    // Filtered as the caller sees them: a selector or a policy does not match what is hidden.
    let mut flows: Vec<Flow> = state
        .store
        .flows(&query)
        .await?
        .into_iter()
        .map(|flow| redacted(caller, flow))
        .filter(|flow| wanted(f, flow))
        .collect();
    let limit = usize::try_from(f.query.limit).unwrap_or(usize::MAX);
    if flows.len() > limit {
        if f.query.newest {
            flows.drain(..flows.len() - limit);
        } else {
            flows.truncate(limit);
        }
    }
    Ok(flows)
}

pub async fn flows(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut f = filters(&caller, params)?;
    if !f.watch {
        let items = read(&state, &caller, &f).await?;
        return Ok(Json(serde_json::json!({ "items": items })).into_response());
    }
    // From now on, unless asked for since an id.
    if f.query.newest {
        f.query.after_id = state.store.last_flow_id().await?;
        f.query.newest = false;
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        if let Err(e) = follow(state, caller, f, &tx).await {
            let line = serde_json::json!({"error": e.to_problem()}).to_string() + "\n";
            let _ = tx.send(Ok(Bytes::from(line))).await;
        }
    });
    let mut response = Body::from_stream(ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// Streams the flows written after `f.query.after_id` until the client goes away, the server
/// stops, or the caller's token is no longer valid (checked every [`STREAM_RECHECK`]).
async fn follow(
    state: AppState,
    caller: Caller,
    mut f: Filters,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> ApiResult<()> {
    let mut checked = tokio::time::Instant::now();
    loop {
        if checked.elapsed() >= STREAM_RECHECK {
            caller.still_valid(&state).await?;
            checked = tokio::time::Instant::now();
        }
        let mut query = f.query.clone();
        query.limit = MAX_LIMIT;
        let flows = state.store.flows(&query).await?;
        if let Some(last) = flows.last() {
            f.query.after_id = last.id;
        }
        let mut lines = String::new();
        for flow in flows.into_iter().map(|flow| redacted(&caller, flow)).filter(|flow| wanted(&f, flow)) {
            lines.push_str(&serde_json::to_string(&flow).unwrap_or_default());
            lines.push('\n');
        }
        if !lines.is_empty() && tx.send(Ok(Bytes::from(lines))).await.is_err() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_POLL) => {}
            _ = tx.closed() => return Ok(()),
            _ = state.stopped() => return Ok(()),
        }
    }
}

/// The longest window a graph may cover: the rollups' default retention.
const GRAPH_WINDOW_MAX_S: i64 = 7 * 86_400;

/// `GET /v1/flows/graph?project=&window=15m&group=app` ([`graph`]).
pub async fn flow_graph(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut project = None;
    let mut window_s: i64 = 900;
    let mut key = "app".to_string();
    for (name, value) in params {
        match name.as_str() {
            "project" => project = Some(value),
            "window" => {
                let until = Utc::now();
                let since = time("window", &value)?;
                window_s = (until - since).num_seconds();
                if !(60..=GRAPH_WINDOW_MAX_S).contains(&window_s) {
                    return Err(ApiError::invalid_parameter("window", "must be a duration from 1m to 7d"));
                }
            }
            "group" => {
                let plain = !value.is_empty()
                    && value.len() <= 317
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                if !plain {
                    return Err(ApiError::invalid_parameter("group", "must be a label key, e.g. app or tier"));
                }
                key = value;
            }
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    "unknown parameter; a graph takes project, window and group",
                ));
            }
        }
    }
    let project = match project.or_else(|| caller.project().map(str::to_string)) {
        Some(p) => p,
        None => return Err(ApiError::invalid_parameter("project", "the graph is of one project: name it")),
    };
    caller.require_read(&project)?;
    let until = Utc::now();
    let since = until - chrono::Duration::seconds(window_s);
    // Whole minutes: the one the window starts in, up to the one now.
    let first = since - chrono::Duration::seconds(since.timestamp().rem_euclid(60));
    let rows = state.store.flow_minutes(Some(&project), None, first, until + chrono::Duration::minutes(1)).await?;
    let graph = state
        .policy
        .with_compiler(|compiler, _| graph::build(compiler, &project, &key, !caller.is_admin(), &rows, (since, until)))
        .ok_or_else(crate::reach::not_loaded)?;
    Ok(Json(graph).into_response())
}

/// A rule's connections in one minute.
#[derive(Debug, serde::Serialize)]
struct RuleMinute {
    minute: DateTime<Utc>,
    connections: i64,
}

#[derive(Debug, serde::Serialize)]
struct RuleHits {
    rule: uuid::Uuid,
    direction: weft_model::Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<weft_model::RuleOrigin>,
    /// Connections the rule allowed in the window.
    connections: i64,
    /// Per minute, the minutes with any.
    minutes: Vec<RuleMinute>,
}

/// `GET /v1/security-groups/{project}/{name}/hits?window=1h`: the connections each of the
/// group's rules allowed, per minute, from the flow rollups (a rule's connections are counted
/// on the side it decided, so once each).
pub async fn group_hits(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path((project, name)): axum::extract::Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut since = Utc::now() - chrono::Duration::hours(1);
    for (parameter, value) in params {
        match parameter.as_str() {
            "window" => since = time("window", &value)?,
            other => return Err(ApiError::invalid_parameter(other, "unknown parameter; hits take window")),
        }
    }
    let key = weft_store::ObjectKey::Name { project: Some(project.clone()), name: name.clone() };
    let missing = || ApiError::not_found(format!("security group {project}/{name} does not exist"));
    let stored = state.store.get(weft_model::Kind::SecurityGroup, &key).await?.ok_or_else(missing)?;
    let weft_model::Resource::SecurityGroup(group) = stored.decode()? else { return Err(ApiError::internal()) };
    if !caller.can_read(&group.project) {
        return Err(missing());
    }
    let until = Utc::now() + chrono::Duration::minutes(1);
    let rows = state.store.flow_minutes(None, Some(stored.id), since, until).await?;
    let rules: Vec<RuleHits> = group
        .rules
        .iter()
        .filter_map(|r| {
            let id = r.id?;
            let mut minutes: std::collections::BTreeMap<DateTime<Utc>, i64> = std::collections::BTreeMap::new();
            for row in rows.iter().filter(|row| row.rule == Some(id) && !row.denied) {
                *minutes.entry(row.minute).or_default() += row.started;
            }
            Some(RuleHits {
                rule: id,
                direction: r.direction,
                origin: r.origin.clone(),
                connections: minutes.values().sum(),
                minutes: minutes.into_iter().map(|(minute, connections)| RuleMinute { minute, connections }).collect(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"group": stored.id, "since": since, "until": until, "rules": rules})).into_response())
}
