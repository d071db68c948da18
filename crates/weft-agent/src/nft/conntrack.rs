//! Cutting established connections that the span no longer allows (DESIGN.md §4): nftables
//! accepts `ct state established` first, so without this a connection opened under an old
//! allowance (or a ping left running) would outlive it. Uses Debian's `conntrack` tool.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::process::Stdio;

use weft_compiler::eval::{self, Packet};
use weft_compiler::{NodeSpan, PortPolicy, SpanDelta};
use weft_model::Direction;

use super::Nft;
use crate::netns;

/// Whether a delta can take an allowance away. Pure additions (new members, new sets, new
/// ports) cannot, and those are most deltas: the conntrack table is not read for them.
pub fn may_revoke(delta: &SpanDelta) -> bool {
    !delta.groups_upserted.is_empty()
        || !delta.groups_removed.is_empty()
        || !delta.sets_dropped.is_empty()
        || delta.sets_changed.values().any(|m| {
            !m.removed_addresses.is_empty() || !m.removed_prefixes.is_empty() || !m.removed_pairs.is_empty()
        })
        // A port that changes may have become isolated; a removed one has no policy to keep.
        || !delta.ports_upserted.is_empty()
}

/// One conntrack entry's original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp: Option<(u8, u8)>,
}

/// Parses `conntrack -L` output lines (the first tuple is the original direction).
pub fn parse(listing: &str) -> Vec<Flow> {
    listing.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let _name = words.next()?;
    let protocol: u8 = words.next()?.parse().ok()?;
    let (mut src, mut dst, mut sport, mut dport, mut itype, mut icode) = (None, None, None, None, None, None);
    for w in words {
        let Some((key, value)) = w.split_once('=') else { continue };
        match key {
            "src" if src.is_none() => src = value.parse().ok(),
            "dst" if dst.is_none() => dst = value.parse().ok(),
            "sport" if sport.is_none() => sport = value.parse().ok(),
            "dport" if dport.is_none() => dport = value.parse().ok(),
            "type" if itype.is_none() => itype = value.parse().ok(),
            "code" if icode.is_none() => icode = value.parse().ok(),
            // The reply tuple starts with a second src=: everything needed is read.
            "src" => break,
            _ => {}
        }
    }
    Some(Flow { protocol, src: src?, dst: dst?, sport, dport, icmp: itype.zip(icode) })
}

/// The local port at each address of a span.
pub fn ports_by_address(span: &NodeSpan) -> HashMap<IpAddr, &PortPolicy> {
    span.ports.values().flat_map(|p| p.addresses.iter().map(move |a| (*a, p))).collect()
}

/// Whether `span` still allows a flow that crosses this node: the sender's egress if the
/// sender is a local port, the receiver's ingress if the receiver is. `local` is
/// [`ports_by_address`] of `span`.
pub fn allowed(span: &NodeSpan, local: &HashMap<IpAddr, &PortPolicy>, flow: &Flow) -> bool {
    let packet = Packet { src: flow.src, dst: flow.dst, protocol: flow.protocol, port: flow.dport, icmp: flow.icmp };
    if eval::is_neighbour_discovery(&packet) {
        return true;
    }
    if let Some(p) = local.get(&flow.src)
        && !eval::side(span, p, Direction::Egress, &packet).allows()
    {
        return false;
    }
    if let Some(p) = local.get(&flow.dst)
        && !eval::side(span, p, Direction::Ingress, &packet).allows()
    {
        return false;
    }
    true
}

/// Deletes the entries `span` no longer allows; returns how many. Failures are logged, not
/// fatal: the rules are in force either way.
pub fn cut(nft: &Nft, span: &NodeSpan) -> usize {
    let node_addresses = node_addresses(nft.netns.as_deref());
    let local = ports_by_address(span);
    let mut deleted = 0;
    for family in ["ipv4", "ipv6"] {
        let out = netns::command(nft.netns.as_deref(), "conntrack")
            .args(["-L", "-f", family])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let listing = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot run conntrack; established connections are not re-checked");
                return 0;
            }
        };
        for flow in parse(&listing) {
            // The node's own traffic to and from its pods is always allowed (and never
            // crosses the forward hook).
            if node_addresses.contains(&flow.src) || node_addresses.contains(&flow.dst) || allowed(span, &local, &flow)
            {
                continue;
            }
            let mut cmd = netns::command(nft.netns.as_deref(), "conntrack");
            cmd.args(["-D", "-f", family, "-p", &flow.protocol.to_string()]).args([
                "-s",
                &flow.src.to_string(),
                "-d",
                &flow.dst.to_string(),
            ]);
            if let (Some(s), Some(d)) = (flow.sport, flow.dport) {
                cmd.args(["--sport", &s.to_string(), "--dport", &d.to_string()]);
            }
            match cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status() {
                Ok(_) => {
                    deleted += 1;
                    tracing::info!(src = %flow.src, dst = %flow.dst, protocol = flow.protocol, port = ?flow.dport, "cut a connection the policy no longer allows");
                }
                Err(e) => tracing::warn!(error = %e, "cannot run conntrack"),
            }
        }
    }
    deleted
}

/// The addresses of the namespace itself (`ip -j addr`).
fn node_addresses(netns: Option<&str>) -> BTreeSet<IpAddr> {
    let Ok(out) = netns::command(netns, "ip").args(["-j", "addr", "show"]).stdin(Stdio::null()).output() else {
        return BTreeSet::new();
    };
    let Ok(links) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return BTreeSet::new() };
    links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l.get("addr_info").and_then(|a| a.as_array()).cloned().unwrap_or_default())
        .filter_map(|a| a.get("local").and_then(|x| x.as_str()).and_then(|x| x.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_direction_of_each_entry() {
        let listing = "tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=45678 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=45678 [ASSURED] mark=0 use=1\n\
icmp     1 29 src=10.0.0.1 dst=10.0.0.3 type=8 code=0 id=77 src=10.0.0.3 dst=10.0.0.1 type=0 code=0 id=77 mark=0 use=1\n\
conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n";
        let flows = parse(listing);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].protocol, 6);
        assert_eq!(flows[0].src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((flows[0].sport, flows[0].dport), (Some(45678), Some(80)));
        assert_eq!(flows[1].icmp, Some((8, 0)));
        assert_eq!(flows[1].dst, "10.0.0.3".parse::<IpAddr>().unwrap());
    }
}
