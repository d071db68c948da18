//! Printing answers: a readable table by default, or JSON / YAML; errors as the problem's
//! detail and its invalid fields.

use serde_json::Value;
use weft_model::Kind;

use crate::common::Output;

pub fn print_error(e: &anyhow::Error) {
    if let Some(weft_client::ClientError::Api(problem)) = e.downcast_ref::<weft_client::ClientError>() {
        eprintln!("error: {} ({})", problem.detail, problem.slug());
        for field in &problem.errors {
            let at =
                field.pointer.clone().or_else(|| field.parameter.as_ref().map(|p| format!("?{p}"))).unwrap_or_default();
            eprintln!("  {}: {}", if at.is_empty() { "/" } else { &at }, field.detail);
        }
        return;
    }
    eprintln!("error: {e:#}");
}

fn structured(out: Output, value: &Value) -> anyhow::Result<bool> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Output::Table => return Ok(false),
    }
    Ok(true)
}

pub fn show(out: Output, value: &Value, kind: Option<Kind>) -> anyhow::Result<()> {
    if structured(out, value)? {
        return Ok(());
    }
    match kind {
        Some(kind) => {
            table(&columns(kind), std::slice::from_ref(value), kind);
            if kind == Kind::SecurityGroup {
                println!();
                rules_table(value);
            }
            if kind == Kind::ClusterPolicy {
                println!();
                tiered_rules_table(value);
            }
        }
        None => {
            if let Value::Object(map) = value {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    println!("{k:width$}  {}", scalar(v));
                }
            }
        }
    }
    Ok(())
}

pub fn show_list(out: Output, items: &Value, kind: Kind) -> anyhow::Result<()> {
    if structured(out, items)? {
        return Ok(());
    }
    table(&columns(kind), items.as_array().map(Vec::as_slice).unwrap_or(&[]), kind);
    Ok(())
}

pub fn show_tokens(out: Output, items: &Value) -> anyhow::Result<()> {
    if structured(out, items)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|t| {
            ["id", "role", "project", "expires_at", "revoked_at", "description"]
                .iter()
                .map(|f| scalar(&t[*f]))
                .collect()
        })
        .collect();
    print_rows(&["ID", "ROLE", "PROJECT", "EXPIRES", "REVOKED", "DESCRIPTION"], rows);
    Ok(())
}

pub fn show_join_tokens(out: Output, items: &[Value]) -> anyhow::Result<()> {
    if structured(out, &Value::Array(items.to_vec()))? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| {
            let uses = match (&t["used"], &t["uses"]) {
                (used, Value::Null) => format!("{}/any", scalar(used)),
                (used, uses) => format!("{}/{}", scalar(used), scalar(uses)),
            };
            vec![
                scalar(&t["id"]),
                scalar(&t["node"]),
                uses,
                scalar(&t["expires_at"]),
                scalar(&t["revoked_at"]),
                scalar(&t["description"]),
            ]
        })
        .collect();
    print_rows(&["ID", "NODE", "USED", "EXPIRES", "REVOKED", "DESCRIPTION"], rows);
    Ok(())
}

pub fn show_nodes(out: Output, items: &[Value]) -> anyhow::Result<()> {
    if structured(out, &Value::Array(items.to_vec()))? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            let fields = [
                "name",
                "connected",
                "address",
                "agent_version",
                "ports",
                "realized_revision",
                "lag_revisions",
                "lag_seconds",
            ];
            let mut row: Vec<String> = fields.iter().map(|f| scalar(&n[*f])).collect();
            // Where the other nodes route this node's pods, as its agent said.
            let underlay = n["underlay"].as_array().map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(","));
            row.insert(3, underlay.filter(|u| !u.is_empty()).unwrap_or_else(|| "-".to_string()));
            row.push(scalar(&n["last_error"]));
            // What the agent refuses is the thing an operator must not miss: said in full.
            let problems = n["problems"].as_array().map(|p| p.iter().map(scalar).collect::<Vec<_>>().join("; "));
            row.push(problems.filter(|p| !p.is_empty()).unwrap_or_else(|| "-".to_string()));
            row
        })
        .collect();
    print_rows(
        &[
            "NAME",
            "CONNECTED",
            "ADDRESS",
            "UNDERLAY",
            "VERSION",
            "PORTS",
            "REALIZED",
            "LAG",
            "LAG (S)",
            "ERROR",
            "PROBLEMS",
        ],
        rows,
    );
    Ok(())
}

fn columns(kind: Kind) -> Vec<(&'static str, &'static str)> {
    match kind {
        Kind::Project => vec![("NAME", "name"), ("LABELS", "labels"), ("REVISION", "revision"), ("ID", "id")],
        Kind::VirtualNetwork => {
            vec![("PROJECT", "project"), ("NAME", "name"), ("SUBNETS", "subnets"), ("REVISION", "revision")]
        }
        Kind::SecurityGroup => vec![
            ("PROJECT", "project"),
            ("NAME", "name"),
            ("SELECTOR", "selector"),
            ("POLICY-TYPES", "policy_types"),
            ("RULES", "rules"),
            ("REVISION", "revision"),
        ],
        Kind::Port => vec![
            ("PROJECT", "project"),
            ("NAME", "name"),
            ("NODE", "node"),
            ("IPS", "ips"),
            ("GROUPS", "security_groups"),
            ("LABELS", "labels"),
        ],
        Kind::ClusterPolicy => vec![
            ("TIER", "tier"),
            ("PRIORITY", "priority"),
            ("NAME", "name"),
            ("SUBJECT", "subject"),
            ("INGRESS", "ingress"),
            ("EGRESS", "egress"),
            ("STATUS", "status"),
        ],
    }
}

fn cell(kind: Kind, field: &str, value: &Value) -> String {
    match (kind, field) {
        (Kind::SecurityGroup, "rules") => value.as_array().map_or(0, Vec::len).to_string(),
        (Kind::SecurityGroup, "selector") => match value {
            Value::Null => "(ports that name it)".to_string(),
            v => serde_json::from_value::<weft_model::LabelSelector>(v.clone())
                .map(|s| if s.is_empty() { "(all ports)".to_string() } else { s.to_string() })
                .unwrap_or_default(),
        },
        (Kind::ClusterPolicy, "ingress" | "egress") => value.as_array().map_or(0, Vec::len).to_string(),
        (Kind::ClusterPolicy, "subject") => selectors(value),
        (Kind::ClusterPolicy, "status") => {
            let applied = format!("applied on {}/{} nodes", scalar(&value["applied"]), scalar(&value["nodes"]));
            match value["ties"].as_array().filter(|t| !t.is_empty()) {
                Some(_) => format!("{applied}; tied with {}", scalar(&value["ties"])),
                None => applied,
            }
        }
        (Kind::VirtualNetwork, "subnets") => value
            .as_array()
            .map(|a| a.iter().map(|s| scalar(&s["cidr"])).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        _ => scalar(value),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn table(columns: &[(&str, &str)], items: &[Value], kind: Kind) {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows = items.iter().map(|item| columns.iter().map(|(_, f)| cell(kind, f, &item[*f])).collect()).collect();
    print_rows(&headers, rows);
}

/// A subject's or remote's `ports` and `projects` selectors, as `projects: ... ports: ...`
/// (an empty selector matches everything and is left out).
fn selectors(value: &Value) -> String {
    let mut parts = Vec::new();
    for field in ["projects", "ports"] {
        let selector = serde_json::from_value::<weft_model::LabelSelector>(value[field].clone()).unwrap_or_default();
        if !selector.is_empty() {
            parts.push(format!("{field}: {selector}"));
        }
    }
    if parts.is_empty() { "(every port)".to_string() } else { parts.join(" ") }
}

/// A cluster policy's rules, in the order they decide.
fn tiered_rules_table(policy: &Value) {
    let mut rows = Vec::new();
    for direction in ["ingress", "egress"] {
        for (i, rule) in policy[direction].as_array().map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            let remotes = rule["remotes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|r| match r["type"].as_str() {
                    Some("networks") => scalar(&r["networks"]),
                    _ => selectors(r),
                })
                .collect::<Vec<_>>()
                .join("; ");
            let protocols = rule["protocols"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|p| {
                    let port = match &p["port"] {
                        Value::Object(range) => format!("{}-{}", scalar(&range["from"]), scalar(&range["to"])),
                        port => scalar(port),
                    };
                    match &p["protocol"] {
                        Value::Null => port,
                        proto if p["port"].is_null() => scalar(proto),
                        proto => format!("{}/{port}", scalar(proto)),
                    }
                })
                .collect::<Vec<_>>();
            let protocols = if protocols.is_empty() { "any".to_string() } else { protocols.join(",") };
            rows.push(vec![
                direction.to_string(),
                i.to_string(),
                scalar(&rule["name"]),
                scalar(&rule["action"]),
                remotes,
                protocols,
            ]);
        }
    }
    print_rows(&["DIRECTION", "#", "NAME", "ACTION", "REMOTES", "PROTOCOLS"], rows);
}

fn rules_table(sg: &Value) {
    let rows = sg["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|r| {
            let remote = &r["remote"];
            let remote = match remote["type"].as_str() {
                Some("cidr") => {
                    let except = scalar(&remote["except"]);
                    if except == "-" || except.is_empty() {
                        scalar(&remote["cidr"])
                    } else {
                        format!("{} except {except}", scalar(&remote["cidr"]))
                    }
                }
                Some("security_group") => format!("group {}", scalar(&remote["security_group"])),
                Some("selector") => {
                    let ports = serde_json::from_value::<weft_model::LabelSelector>(remote["ports"].clone())
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    match remote.get("projects").filter(|p| !p.is_null()) {
                        Some(p) => format!(
                            "ports [{ports}] in projects [{}]",
                            serde_json::from_value::<weft_model::LabelSelector>(p.clone())
                                .map(|s| s.to_string())
                                .unwrap_or_default()
                        ),
                        None => format!("ports [{ports}]"),
                    }
                }
                _ => "any".to_string(),
            };
            let ports = r["ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| match p {
                            Value::Object(_) => format!("{}-{}", scalar(&p["from"]), scalar(&p["to"])),
                            p => scalar(p),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "-".to_string());
            vec![
                scalar(&r["id"]),
                scalar(&r["direction"]),
                scalar(&r["ethertype"]),
                scalar(&r["protocol"]),
                ports,
                remote,
            ]
        })
        .collect();
    print_rows(&["RULE", "DIRECTION", "ETHERTYPE", "PROTOCOL", "PORTS", "REMOTE"], rows);
}

fn print_rows(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// One change-log event: a line of JSON, or `REVISION OP KIND PROJECT/NAME`.
/// One flow: a line in the style of `hubble observe` (time, nodes, source → destination,
/// protocol and port, kind and verdict, what decided each side), or the record as JSON/YAML.
pub fn show_flow(out: Output, flow: &weft_model::flow::Flow) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string(flow)?),
        Output::Yaml => print!("---\n{}", serde_yaml::to_string(flow)?),
        Output::Table => println!("{}", flow_line(flow)),
    }
    Ok(())
}

pub fn flow_line(f: &weft_model::flow::Flow) -> String {
    use weft_model::flow::{FlowKind, SideDecision, Verdict};
    let time = chrono::DateTime::from_timestamp_millis(f.at_ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%b %e %H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let end = |e: &weft_model::flow::FlowEndpoint, port: Option<u16>| {
        let name = match (&e.project, &e.name) {
            (Some(p), Some(n)) => format!("{p}/{n}"),
            _ => e.address.to_string(),
        };
        match port {
            Some(p) => format!("{name}:{p}"),
            None => name,
        }
    };
    let what = match (f.protocol, f.icmp_type) {
        (1 | 58, Some(8 | 128)) => format!("{} echo request", f.protocol_name()),
        (1 | 58, Some(t)) => format!("{} type {t}", f.protocol_name()),
        _ => f.protocol_name(),
    };
    let kind = match (f.kind, f.ended) {
        (FlowKind::Connection, false) => "connection",
        (FlowKind::Connection, true) => "closed",
        (FlowKind::Denied, _) => "packet",
        (FlowKind::Dns, _) => "dns-query",
    };
    let verdict = match f.verdict {
        Verdict::Allowed => "ALLOWED",
        Verdict::Denied => "DENIED",
    };
    let side = |name: &str, d: &Option<SideDecision>| -> Option<String> {
        let d = d.as_ref()?;
        Some(match d {
            SideDecision::Open => format!("{name}: open"),
            SideDecision::AllowedUnknown => format!("{name}: allowed"),
            SideDecision::Allowed { rule } => match &rule.origin {
                Some(o) => {
                    let ns = o.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
                    let index = o.index.map(|i| format!(" [{i}]")).unwrap_or_default();
                    format!("{name}: {} {ns}{}{index}", o.kind, o.name)
                }
                None => format!("{name}: {}/{}", rule.project, rule.group_name),
            },
            SideDecision::Denied { isolated_by } => {
                let groups: Vec<String> = isolated_by.iter().map(|g| g.name.clone()).collect();
                format!("{name}: isolated by {}", groups.join(", "))
            }
            SideDecision::Tiered { rule } => format!("{name}: {rule}"),
        })
    };
    let decided: Vec<String> = [side("egress", &f.egress), side("ingress", &f.ingress)].into_iter().flatten().collect();
    let mut line = format!(
        "{time} [{}]: {} -> {} {what} {kind} {verdict}",
        f.nodes.join(","),
        end(&f.src, f.src_port),
        end(&f.dst, f.dst_port)
    );
    if !decided.is_empty() {
        line.push_str(&format!(" ({})", decided.join("; ")));
    }
    if let Some(q) = &f.dns {
        line.push_str(&format!(" query {} type {}", q.name, q.qtype));
    }
    if let Some(c) = &f.counters {
        line.push_str(&format!(
            " {}/{} packets {}/{} bytes",
            c.packets_sent, c.packets_received, c.bytes_sent, c.bytes_received
        ));
    }
    line
}

pub fn show_change(out: Output, event: &weft_client::ChangeEvent) -> anyhow::Result<()> {
    let object = event.object.clone().unwrap_or(Value::Null);
    match out {
        Output::Json => {
            let line = serde_json::json!({
                "revision": event.revision, "op": event.op, "kind": event.kind, "id": event.id, "object": object,
            });
            println!("{line}");
        }
        Output::Yaml => print!(
            "---\n{}",
            serde_yaml::to_string(&serde_json::json!({
                "revision": event.revision, "op": event.op, "kind": event.kind, "object": object,
            }))?
        ),
        // Bookmarks tell programs how far the stream has read; a person does not need them.
        Output::Table if event.op == "bookmark" => {}
        Output::Table => {
            let name = match (object["project"].as_str(), object["name"].as_str()) {
                (Some(p), Some(n)) => format!("{p}/{n}"),
                (None, Some(n)) => n.to_string(),
                _ => String::new(),
            };
            let kind = event.kind.map(|k| k.to_string()).unwrap_or_default();
            println!("{:>8}  {:<8}  {:<16}  {name}", event.revision, event.op, kind);
        }
    }
    Ok(())
}
