//! `weft reach` and `weft trace`: what the compiler says of traffic between ports (the
//! matrix, or one pair with the groups and rules on each side). `weft lab probe` prints the
//! same matrix measured with real packets.

use std::net::IpAddr;

use clap::Args;

use crate::common::{ClientArgs, Output};

#[derive(Debug, Args)]
pub struct ReachArgs {
    /// tcp, udp, sctp or icmp.
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// The destination port (not for icmp).
    #[arg(long)]
    pub port: Option<u16>,
    /// Only the ports of this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only the ports these labels select (Kubernetes syntax).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// ipv4 or ipv6.
    #[arg(long, default_value = "ipv4")]
    pub family: String,
    /// An address outside the cluster, shown as the endpoint `outside`.
    #[arg(long)]
    pub outside: Option<IpAddr>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// `project/name` of a port, or an address.
    pub from: String,
    pub to: String,
    /// The destination port, as `80/tcp`, or `80` with --protocol.
    #[arg(long)]
    pub port: Option<String>,
    /// tcp (the default with a port), udp, sctp or icmp (the default without one).
    #[arg(long)]
    pub protocol: Option<String>,
    /// ipv4 or ipv6.
    #[arg(long, default_value = "ipv4")]
    pub family: String,
}

pub async fn reach(args: ReachArgs, client: &ClientArgs, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let c = crate::common::client(client, data_dir)?;
    // What the server holds now, including this user's own last write.
    let revision = c.info().await?.revision.to_string();
    let mut query = vec![("protocol", args.protocol), ("family", args.family), ("revision", revision)];
    let optional = [
        ("port", args.port.map(|p| p.to_string())),
        ("project", args.project),
        ("labelSelector", args.selector),
        ("outside", args.outside.map(|a| a.to_string())),
    ];
    query.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    let answer = c.reach(&query).await?;
    let matrix: weft_lab::Matrix = serde_json::from_value(answer)?;
    crate::lab_cmds::print_matrix(client.output, &matrix)
}

/// `80/tcp`, or `80` and a protocol, or nothing (ICMP).
fn port_and_protocol(port: Option<&str>, protocol: Option<&str>) -> anyhow::Result<(Option<u16>, String)> {
    let (number, named) = match port.map(|p| p.split_once('/').map_or((p, None), |(n, proto)| (n, Some(proto)))) {
        Some((n, named)) => {
            (Some(n.parse::<u16>().map_err(|_| anyhow::anyhow!("--port {n:?}: not a port number"))?), named)
        }
        None => (None, None),
    };
    let protocol = match (named, protocol, number) {
        (Some(a), Some(b), _) if a != b => anyhow::bail!("--port says {a} and --protocol {b}"),
        (Some(p), _, _) | (None, Some(p), _) => p.to_string(),
        (None, None, Some(_)) => "tcp".into(),
        (None, None, None) => "icmp".into(),
    };
    Ok((number, protocol))
}

pub async fn trace(args: TraceArgs, client: &ClientArgs, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let c = crate::common::client(client, data_dir)?;
    let (port, protocol) = port_and_protocol(args.port.as_deref(), args.protocol.as_deref())?;
    let revision = c.info().await?.revision;
    let request = serde_json::json!({"from": args.from, "to": args.to, "protocol": protocol, "port": port,
        "family": args.family, "revision": revision});
    let answer = c.explain(&request).await?;
    if client.output != Output::Table {
        return crate::output::show(client.output, &answer, None);
    }
    let what = match port {
        Some(p) => format!("{protocol}/{p}"),
        None => protocol,
    };
    for line in trace_lines(&answer, &args.from, &args.to, &what) {
        println!("{line}");
    }
    Ok(())
}

/// An explanation as `weft trace` prints it: the verdict, then each side.
pub fn trace_lines(answer: &serde_json::Value, from: &str, to: &str, what: &str) -> Vec<String> {
    let allowed = answer["allowed"].as_bool().unwrap_or(false);
    let mut lines = vec![format!(
        "{from} -> {to} {what}: {} (revision {})",
        if allowed { "allowed" } else { "denied" },
        answer["revision"]
    )];
    if let Some(always) = answer["always"].as_str() {
        lines.push(format!("  always allowed: {}", always.replace('_', " ")));
    }
    for (direction, side) in [("egress", &answer["egress"]), ("ingress", &answer["ingress"])] {
        let Some(port) = side["port"].as_str() else { continue };
        let isolated: Vec<&str> =
            side["isolated_by"].as_array().map(|a| a.iter().filter_map(|g| g.as_str()).collect()).unwrap_or_default();
        let tiered = &side["tiered"];
        let line = match side["verdict"].as_str().unwrap_or_default() {
            _ if tiered.is_object() => {
                let verdict = if tiered["action"] == "deny" { "denied" } else { "allowed" };
                let how = if tiered["action"] == "pass" { ", a pass: the baseline tier allows" } else { "" };
                format!("{verdict} by {}{how}", tiered_rule_text(tiered))
            }
            "open" => "open: no policy isolates it this way".to_string(),
            "allowed" => format!(
                "allowed by {} (rule {}{}); isolated by {}",
                side["group"].as_str().unwrap_or("?"),
                side["rule"].as_str().unwrap_or("?"),
                origin_text(&side["origin"]).map(|o| format!(", from {o}")).unwrap_or_default(),
                isolated.join(", ")
            ),
            _ => format!("denied: isolated by {}, and no rule of theirs allows it", isolated.join(", ")),
        };
        lines.push(format!("  {direction} of {port}: {line}"));
        if side["passed"].is_object() {
            lines.push(format!("    passed to its security groups by {}", tiered_rule_text(&side["passed"])));
        }
    }
    lines
}

/// A tiered rule as `admin cluster policy db-guard, rule 1 (nothing-else): deny`, or, to a
/// project's token (not told which), `an admin cluster policy: deny`.
fn tiered_rule_text(rule: &serde_json::Value) -> String {
    let tier = rule["tier"].as_str().unwrap_or("?");
    let action = rule["action"].as_str().unwrap_or("?");
    let Some(policy) = rule["policy"].as_str() else { return format!("an {tier} cluster policy: {action}") };
    let name = rule["rule_name"].as_str().filter(|n| !n.is_empty()).map(|n| format!(" ({n})")).unwrap_or_default();
    format!("{tier} cluster policy {policy}, rule {}{name}: {action}", rule["rule"])
}

/// A rule's origin as `NetworkPolicy default/yelb-db-in [0]`, when it has one.
fn origin_text(origin: &serde_json::Value) -> Option<String> {
    serde_json::from_value::<weft_model::RuleOrigin>(origin.clone()).ok().map(|o| o.to_string())
}

#[cfg(test)]
mod tests {
    use super::{port_and_protocol, trace_lines};

    #[test]
    fn a_trace_names_the_tiered_rule_that_decided_or_passed() {
        let answer = serde_json::json!({
            "revision": 7, "allowed": false,
            "egress": {"port": "a/web", "verdict": "open", "isolated_by": [],
                       "passed": {"tier": "admin", "policy": "guard", "rule": 0, "rule_name": "sql", "action": "pass"}},
            "ingress": {"port": "a/db", "verdict": "denied", "isolated_by": [],
                        "tiered": {"tier": "admin", "policy": "db-guard", "rule": 1, "rule_name": "nothing-else", "action": "deny"}}
        });
        assert_eq!(
            trace_lines(&answer, "a/web", "a/db", "tcp/22"),
            [
                "a/web -> a/db tcp/22: denied (revision 7)",
                "  egress of a/web: open: no policy isolates it this way",
                "    passed to its security groups by admin cluster policy guard, rule 0 (sql): pass",
                "  ingress of a/db: denied by admin cluster policy db-guard, rule 1 (nothing-else): deny",
            ]
        );
        // A project's token is not told which policy.
        let answer = serde_json::json!({"revision": 7, "allowed": false, "ingress": {"port": "a/db", "verdict": "denied",
            "isolated_by": [], "tiered": {"tier": "admin", "action": "deny"}}});
        assert_eq!(
            trace_lines(&answer, "a/web", "a/db", "tcp/22")[1],
            "  ingress of a/db: denied by an admin cluster policy: deny"
        );
    }

    #[test]
    fn ports_name_their_protocol_or_take_the_default() {
        assert_eq!(port_and_protocol(Some("5432/tcp"), None).unwrap(), (Some(5432), "tcp".into()));
        assert_eq!(port_and_protocol(Some("53"), Some("udp")).unwrap(), (Some(53), "udp".into()));
        assert_eq!(port_and_protocol(Some("80"), None).unwrap(), (Some(80), "tcp".into()));
        assert_eq!(port_and_protocol(None, None).unwrap(), (None, "icmp".into()));
        assert!(port_and_protocol(Some("80/tcp"), Some("udp")).is_err());
        assert!(port_and_protocol(Some("http"), None).is_err());
    }
}
