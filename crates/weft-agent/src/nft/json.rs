//! nft's JSON input form of a transaction (`nft -j -f -`): what [`super::Nft`] feeds the nft
//! program, for tests and tools that compare weft's netlink encoding with nft's. The agent
//! never writes it; a rule's statements are already JSON ([`super::expr`]), spliced in.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::ruleset::{Command, Element, SetKind, TABLE};

/// A transaction in nft's JSON input form (`nft -j -f -`).
pub fn encode(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * commands.len() + 32);
    out.extend_from_slice(b"{\"nftables\":[");
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = match c {
            // The rule's statements are written as JSON text: spliced into its frame (an object
            // left open).
            Command::AddRule { chain, rule } => {
                let frame = json!({"family": "inet", "table": TABLE, "chain": chain, "comment": rule.comment});
                let frame = frame.to_string();
                out.extend_from_slice(b"{\"add\":{\"rule\":");
                out.extend_from_slice(&frame.as_bytes()[..frame.len() - 1]);
                out.extend_from_slice(b",\"expr\":");
                out.extend_from_slice(rule.expr().as_bytes());
                out.extend_from_slice(b"}}}");
                Ok(())
            }
            other => serde_json::to_writer(&mut out, &command_json(other)),
        };
    }
    out.extend_from_slice(b"]}");
    out
}

/// The same transaction as a JSON value (for tests and tools that read it).
pub fn to_json(commands: &[Command]) -> Value {
    serde_json::from_slice(&encode(commands)).unwrap_or(Value::Null)
}

/// Every command but `AddRule`, which [`encode`] writes from the rule's text.
fn command_json(c: &Command) -> Value {
    let table = json!({"family": "inet", "name": TABLE});
    match c {
        Command::AddTable => json!({"add": {"table": table}}),
        Command::DeleteTable => json!({"delete": {"table": table}}),
        Command::AddSet { name, set } => {
            let mut body = json!({"family": "inet", "table": TABLE, "name": name, "type": key_type(set.kind)});
            if matches!(set.kind, SetKind::Prefix { .. } | SetKind::Fold { .. }) {
                body["flags"] = json!(["interval"]);
            }
            if matches!(set.kind, SetKind::Fold { .. }) {
                body["stmt"] = json!([{"counter": null}]);
            }
            if !set.elements.is_empty() {
                body["elem"] = Value::Array(set.elements.iter().map(element).collect());
            }
            if set.kind.is_map() {
                body["map"] = json!("verdict");
                json!({"add": {"map": body}})
            } else {
                json!({"add": {"set": body}})
            }
        }
        Command::DeleteSet { name, kind } => {
            let body = json!({"family": "inet", "table": TABLE, "name": name});
            if kind.is_map() { json!({"delete": {"map": body}}) } else { json!({"delete": {"set": body}}) }
        }
        Command::AddElements { name, elements, .. } | Command::DeleteElements { name, elements, .. } => {
            let verb = if matches!(c, Command::AddElements { .. }) { "add" } else { "delete" };
            let elem: Vec<Value> = elements.iter().map(element).collect();
            json!({verb: {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elem}}})
        }
        Command::AddChain { name, hook } => {
            let mut body = json!({"family": "inet", "table": TABLE, "name": name});
            if let Some(h) = hook {
                body["type"] = json!("filter");
                body["hook"] = json!("forward");
                body["prio"] = json!(h.priority);
                body["policy"] = json!("accept");
            }
            json!({"add": {"chain": body}})
        }
        Command::FlushChain { name } => json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": name}}}),
        Command::DeleteChain { name } => json!({"delete": {"chain": {"family": "inet", "table": TABLE, "name": name}}}),
        Command::AddRule { .. } => Value::Null,
    }
}

/// The nft JSON `type` of the key.
fn key_type(kind: SetKind) -> Value {
    let addr = if kind.v6() { "ipv6_addr" } else { "ipv4_addr" };
    match kind {
        SetKind::Addr { .. } | SetKind::Prefix { .. } | SetKind::Dispatch { .. } => json!(addr),
        SetKind::AddrPort { .. } => json!([addr, "inet_service"]),
        SetKind::AddrProtoPort { .. } => json!([addr, "inet_proto", "inet_service"]),
        SetKind::Iface => json!("ifname"),
        SetKind::IfaceAddr { .. } => json!(["ifname", addr]),
        SetKind::Fold { .. } => json!([addr, addr, "inet_proto", "inet_service"]),
    }
}

/// An element as nft's JSON writes it.
fn element(e: &Element) -> Value {
    match e {
        Element::Addr(a) => json!(a.to_string()),
        Element::Prefix(p) => prefix_json(p),
        Element::AddrPort(a, p) => json!({"concat": [a.to_string(), p]}),
        Element::AddrProtoPort(a, proto, p) => json!({"concat": [a.to_string(), proto, p]}),
        Element::Iface(i) => json!(i),
        Element::IfaceAddr(i, a) => json!({"concat": [i, a.to_string()]}),
        Element::Jump(a, chain) => json!([a.to_string(), {"jump": {"target": chain}}]),
        Element::Fold { local, remote, proto, ports } => {
            let remote = address_range(remote.0, remote.1);
            let ports = if ports.0 == ports.1 { json!(ports.0) } else { json!({"range": [ports.0, ports.1]}) };
            json!({"concat": [local.to_string(), remote, proto, ports]})
        }
    }
}

fn prefix_json(p: &IpNet) -> Value {
    json!({"prefix": {"addr": p.network().to_string(), "len": p.prefix_len()}})
}

/// An address range as nft lists it: one address, a prefix where the range is one, or a range.
fn address_range(first: IpAddr, last: IpAddr) -> Value {
    let mut prefixes: Vec<IpNet> = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).take(2).collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).take(2).collect(),
        _ => Vec::new(),
    };
    match prefixes.pop() {
        Some(p) if prefixes.is_empty() && p.prefix_len() == p.max_prefix_len() => json!(p.addr().to_string()),
        Some(p) if prefixes.is_empty() => prefix_json(&p),
        _ => json!({"range": [first.to_string(), last.to_string()]}),
    }
}
