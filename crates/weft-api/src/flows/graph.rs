//! `GET /v1/flows/graph?project=&window=&group=`: a project's traffic groups (DESIGN.md §10),
//! from the per-minute rollups. Ports grouped by a label (`app` unless told; a port without it
//! stands alone under its name), ports of other projects by project and label, and what is no
//! port as `outside`; edges between groups per protocol and destination port, with the
//! connections allowed and the denied packets sampled, their verdict (allowed, denied, both),
//! and what decided each side. Laid out here, in columns by the order traffic flows, so that
//! every client draws the same picture.
//!
//! An allowed connection between two ports is counted once, from its destination's side (both
//! nodes report it); one to an address that is no port, from its source's.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use uuid::Uuid;
use weft_compiler::Compiler;
use weft_model::Direction;
use weft_store::flows::MinuteRow;

/// A group of ports, or `outside`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphNode {
    pub id: String,
    /// What the page writes on it: the label's value, a port's name, `outside`.
    pub label: String,
    /// The project, for ports of another project than the graph's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Ports in it (that the rollups saw).
    pub ports: Vec<String>,
    /// Packets its ports' policies dropped in the window (their drop counters).
    pub dropped: i64,
    /// Its place: column (the order traffic flows) and row.
    pub column: usize,
    pub row: usize,
}

/// What decided one side of an edge's traffic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum EdgeDecision {
    Open,
    Allowed {
        group: Uuid,
        group_name: String,
        rule: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    AllowedUnknown,
    Denied {
        isolated_by: Vec<String>,
    },
    /// A tiered cluster policy's rule; to a project's token, its tier and action only.
    Tiered {
        rule: weft_model::flow::FlowTieredRule,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub protocol: i32,
    /// The destination port, or the ICMP type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<i32>,
    /// allowed, denied or both.
    pub verdict: &'static str,
    pub connections: i64,
    pub denied: i64,
    pub bytes: i64,
    pub egress: Vec<EdgeDecision>,
    pub ingress: Vec<EdgeDecision>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Graph {
    pub project: String,
    pub group: String,
    pub since: chrono::DateTime<chrono::Utc>,
    pub until: chrono::DateTime<chrono::Utc>,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

pub const OUTSIDE: &str = "outside";
/// What a project token sees of other projects' ports.
pub const OTHER_PROJECTS: &str = "other projects";

/// What a port is to the graph: its group's id and label, and its project when not the graph's.
fn group_of(
    compiler: &Compiler,
    project: &str,
    key: &str,
    port: Option<Uuid>,
    redact: bool,
) -> (String, String, Option<String>) {
    let Some(p) = port.and_then(|id| compiler.cluster().port(&id)) else {
        return (OUTSIDE.to_string(), OUTSIDE.to_string(), None);
    };
    // A project token learns nothing of another project's ports: they are one group.
    if redact && &*p.project != project {
        return (OTHER_PROJECTS.to_string(), OTHER_PROJECTS.to_string(), None);
    }
    let label = p.labels.get(key).cloned().unwrap_or_else(|| p.name.to_string());
    if &*p.project == project {
        (format!("{key}={label}"), label, None)
    } else {
        (format!("{}/{key}={label}", p.project), label, Some(p.project.to_string()))
    }
}

/// What decided a row: by the names the controller wrote with it (as they were then), or, for
/// a row written without them, as the policy in force has it.
fn decision(compiler: &Compiler, row: &MinuteRow) -> EdgeDecision {
    let cluster = compiler.cluster();
    if let Some(rule) = &row.tiered {
        return EdgeDecision::Tiered { rule: rule.0.clone() };
    }
    if row.denied {
        if let Some(names) = &row.isolated_by {
            let isolated_by = names.split(", ").filter(|n| !n.is_empty()).map(str::to_string).collect();
            return EdgeDecision::Denied { isolated_by };
        }
        let direction = if row.ingress { Direction::Ingress } else { Direction::Egress };
        let groups =
            cluster.port(&row.port).map_or_else(Vec::new, |p| cluster.isolating(&cluster.applied(p), direction));
        let mut isolated_by: Vec<String> =
            groups.iter().filter_map(|g| cluster.group(g).map(|g| g.name.clone())).collect();
        isolated_by.sort();
        return EdgeDecision::Denied { isolated_by };
    }
    match (row.grp, row.rule, row.isolated) {
        (Some(group), Some(rule), _) => match (&row.group_name, cluster.group(&group)) {
            (Some(name), _) => {
                EdgeDecision::Allowed { group, group_name: name.clone(), rule, origin: row.origin.clone() }
            }
            (None, Some(g)) => {
                let origin = g.rules.iter().find(|r| r.id == Some(rule)).and_then(|r| r.origin.as_ref());
                EdgeDecision::Allowed { group, group_name: g.name.clone(), rule, origin: origin.map(|o| o.to_string()) }
            }
            (None, None) => EdgeDecision::AllowedUnknown,
        },
        (_, _, false) => EdgeDecision::Open,
        _ => EdgeDecision::AllowedUnknown,
    }
}

/// The graph of `rows` (a project's minutes) grouped by the label `key`; with `redact` (a
/// project token's graph), other projects' ports are one group, unnamed, and what decided on
/// their side is not said.
pub fn build(
    compiler: &Compiler,
    project: &str,
    key: &str,
    redact: bool,
    rows: &[MinuteRow],
    (since, until): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> Graph {
    let mut nodes: BTreeMap<String, GraphNode> = BTreeMap::new();
    let mut node = |port: Option<Uuid>| -> String {
        let (id, label, other) = group_of(compiler, project, key, port, redact);
        let entry = nodes.entry(id.clone()).or_insert_with(|| GraphNode {
            id: id.clone(),
            label,
            project: other,
            ports: Vec::new(),
            dropped: 0,
            column: 0,
            row: 0,
        });
        // Another project's port is named to no project token: not in the group's list either.
        let shown = port.and_then(|id| compiler.cluster().port(&id)).filter(|p| !redact || &*p.project == project);
        if let Some(name) = shown.map(|p| format!("{}/{}", p.project, p.name))
            && !entry.ports.contains(&name)
        {
            entry.ports.push(name);
        }
        id
    };
    type EdgeKey = (String, String, i32, Option<i32>);
    let mut edges: BTreeMap<EdgeKey, (GraphEdge, BTreeSet<EdgeDecision>, BTreeSet<EdgeDecision>)> = BTreeMap::new();
    let mut drops: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        let local = node(Some(row.port));
        let Some(_) = &row.remote else {
            *drops.entry(local).or_default() += row.dropped;
            continue;
        };
        let remote = node(row.remote_port);
        let (from, to) = if row.ingress { (remote, local) } else { (local, remote) };
        let entry = edges.entry((from.clone(), to.clone(), row.protocol, row.service)).or_insert_with(|| {
            let edge = GraphEdge {
                from,
                to,
                protocol: row.protocol,
                service: row.service,
                verdict: "allowed",
                connections: 0,
                denied: 0,
                bytes: 0,
                egress: Vec::new(),
                ingress: Vec::new(),
            };
            (edge, BTreeSet::new(), BTreeSet::new())
        });
        // Counted once: from the destination's side, or the source's when the destination is
        // no port.
        let counts = row.ingress || row.remote_port.is_none();
        if row.denied {
            entry.0.denied += row.sampled;
        } else if counts {
            entry.0.connections += row.started;
            entry.0.bytes += row.bytes_sent + row.bytes_received;
        }
        let d = match decision(compiler, row) {
            EdgeDecision::Denied { .. } if redact && row.project != project => {
                EdgeDecision::Denied { isolated_by: vec![] }
            }
            EdgeDecision::Allowed { .. } if redact && row.project != project => EdgeDecision::AllowedUnknown,
            // Cluster policies are an admin's: a project's token is told tier and action.
            EdgeDecision::Tiered { rule } if redact => EdgeDecision::Tiered { rule: rule.redacted() },
            d => d,
        };
        if row.ingress {
            entry.2.insert(d)
        } else {
            entry.1.insert(d)
        };
    }
    for (id, dropped) in drops {
        if let Some(n) = nodes.get_mut(&id) {
            n.dropped += dropped;
        }
    }
    let mut edges: Vec<GraphEdge> = edges
        .into_values()
        .map(|(mut e, egress, ingress)| {
            e.verdict = match (e.connections > 0, e.denied > 0) {
                (true, true) => "both",
                (false, true) => "denied",
                _ => "allowed",
            };
            e.egress = egress.into_iter().collect();
            e.ingress = ingress.into_iter().collect();
            e
        })
        .collect();
    edges.sort_by(|a, b| (&a.from, &a.to, a.protocol, a.service).cmp(&(&b.from, &b.to, b.protocol, b.service)));
    let mut nodes: Vec<GraphNode> = nodes.into_values().collect();
    lay_out(&mut nodes, &edges);
    Graph { project: project.to_string(), group: key.to_string(), since, until, nodes, edges }
}

/// Columns by the order traffic flows: a group's column is one past the furthest of the groups
/// sending to it (edges that close a cycle ignored), `outside` sources first; rows by name.
fn lay_out(nodes: &mut [GraphNode], edges: &[GraphEdge]) {
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let mut column: BTreeMap<&str, usize> = ids.iter().map(|id| (id.as_str(), 0)).collect();
    // Longest path with at most as many rounds as nodes: a cycle stops growing there.
    for _ in 0..ids.len() {
        let mut changed = false;
        for e in edges.iter().filter(|e| e.from != e.to) {
            let next = column.get(e.from.as_str()).copied().unwrap_or(0) + 1;
            if let Some(c) = column.get_mut(e.to.as_str())
                && *c < next
                && next < ids.len()
            {
                *c = next;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    nodes.sort_by(|a, b| (column[a.id.as_str()], &a.label, &a.id).cmp(&(column[b.id.as_str()], &b.label, &b.id)));
    for n in nodes.iter_mut() {
        n.column = column[n.id.as_str()];
        let row = rows.entry(n.column).or_default();
        n.row = *row;
        *row += 1;
    }
}
