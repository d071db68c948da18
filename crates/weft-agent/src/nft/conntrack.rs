//! Cutting established connections that the span no longer allows (DESIGN.md §4): nftables
//! accepts `ct state established` first, so without this a connection opened under an old
//! allowance (or a ping left running) would outlive it. The table is listed and pruned over
//! ctnetlink ([`Socket::conntrack`]): no process per pass.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::mpsc;

use weft_compiler::eval::{self, Packet};
use weft_compiler::{NodeSpan, PortPolicy, SpanDelta};
use weft_model::Direction;

use super::ctnetlink::{Flow, TrackedFlow};
use super::netlink::Socket;

/// Whether a delta can take an allowance away. Pure additions (new members, new sets, new
/// ports) cannot, and those are most deltas: the conntrack table is not read for them. The
/// exception is a member added to a set a tiered policy's deny or pass rule names (DESIGN.md
/// §11): it takes from that member what a later rule allowed. `new` is the span the delta
/// makes.
pub fn may_revoke(delta: &SpanDelta, new: &NodeSpan) -> bool {
    !delta.groups_upserted.is_empty()
        || !delta.groups_removed.is_empty()
        || !delta.policies_upserted.is_empty()
        || !delta.policies_removed.is_empty()
        || !delta.sets_dropped.is_empty()
        || delta.sets_changed.iter().any(|(id, m)| {
            !m.removed_addresses.is_empty()
                || !m.removed_prefixes.is_empty()
                || !m.removed_pairs.is_empty()
                || (!(m.added_addresses.is_empty() && m.added_prefixes.is_empty() && m.added_pairs.is_empty())
                    && restricts(new, id))
        })
        // A port that changes may have become isolated; a removed one has no policy to keep;
        // a new list of tiered policies may deny what the old one let through.
        || !delta.ports_upserted.is_empty()
        || !delta.lists_replaced.is_empty()
}

/// Whether a deny or pass rule of the span's tiered policies names the set.
fn restricts(span: &NodeSpan, set: &weft_compiler::SetId) -> bool {
    span.policies.values().flat_map(|p| p.ingress.iter().chain(&p.egress)).any(|rule| {
        rule.action != weft_model::PolicyAction::Accept
            && rule.matches.iter().any(|m| {
                matches!(m.remote, weft_compiler::compiled::RemoteMatch::Set(s) | weft_compiler::compiled::RemoteMatch::Pairs(s) if s == *set)
            })
    })
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

/// Re-checks established connections in the background. A change's rules are in force (and
/// acked) as soon as it is applied, and they already stop new connections; the kernel can
/// list its conntrack table only by walking its whole hash table, shared by every namespace
/// (262,144 buckets on these machines: about 10 ms empty, more with many flows), so that pass
/// follows the change instead of delaying it. Requests coalesce to the newest span, which is
/// never ahead of the kernel's rules: a request is made after its rules are applied.
#[derive(Debug)]
pub struct Cutter {
    netns: Option<String>,
    requests: Option<mpsc::Sender<Recheck>>,
}

#[derive(Debug)]
struct Recheck {
    span: NodeSpan,
    /// Read the namespace's own addresses again (after a full apply).
    refresh: bool,
}

impl Cutter {
    pub fn start(netns: Option<String>) -> Cutter {
        let (tx, rx) = mpsc::channel::<Recheck>();
        let worker_netns = netns.clone();
        let started = std::thread::Builder::new().name("weft-conntrack".into()).spawn(move || {
            let mut checker = Checker::new(worker_netns);
            while let Ok(mut next) = rx.recv() {
                let mut refresh = next.refresh;
                while let Ok(newer) = rx.try_recv() {
                    refresh |= newer.refresh;
                    next = newer;
                }
                checker.run(&next.span, refresh);
            }
        });
        match started {
            Ok(_) => Cutter { netns, requests: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "no conntrack thread: established connections are re-checked in line");
                Cutter { netns, requests: None }
            }
        }
    }

    /// Asks for a pass against `span`, which is in force.
    pub fn request(&mut self, span: &NodeSpan, refresh: bool) {
        let sent = self.requests.as_ref().is_some_and(|tx| tx.send(Recheck { span: span.clone(), refresh }).is_ok());
        if !sent {
            // No worker (it could not start, or it is gone): the pass runs here.
            self.requests = None;
            Checker::new(self.netns.clone()).run(span, true);
        }
    }
}

/// One namespace's conntrack pass: its socket and its own addresses, kept between passes.
struct Checker {
    netns: Option<String>,
    socket: Option<Socket>,
    node_addresses: BTreeSet<IpAddr>,
}

impl Checker {
    fn new(netns: Option<String>) -> Checker {
        Checker { netns, socket: None, node_addresses: BTreeSet::new() }
    }

    fn run(&mut self, span: &NodeSpan, refresh: bool) {
        if refresh || self.socket.is_none() {
            match node_addresses(self.netns.as_deref()) {
                Ok(addresses) => self.node_addresses = addresses,
                Err(e) => {
                    // Without them a connection of the node's own could be taken for a pod's.
                    tracing::warn!(error = %e, "cannot read the node's addresses; connections are re-checked later");
                    self.socket = None;
                    return;
                }
            }
        }
        let started = std::time::Instant::now();
        match super::socket(&mut self.socket, self.netns.as_deref()).and_then(|s| cut(s, &self.node_addresses, span)) {
            Ok(deleted) => {
                tracing::debug!(deleted, took_us = started.elapsed().as_micros() as u64, "connections re-checked")
            }
            Err(e) => {
                // The rules are in force either way: only established connections wait.
                tracing::warn!(error = %e, "cannot re-check established connections");
                self.socket = None;
            }
        }
    }
}

/// Deletes the conntrack entries `span` no longer allows; returns how many. Traffic from and
/// to the node's own addresses is always allowed (and never crosses the forward hook).
pub fn cut(socket: &mut Socket, node_addresses: &BTreeSet<IpAddr>, span: &NodeSpan) -> std::io::Result<usize> {
    let local = ports_by_address(span);
    let entries = socket.conntrack()?;
    let doomed: Vec<&TrackedFlow> = entries
        .iter()
        .filter(|e| {
            !node_addresses.contains(&e.flow.src)
                && !node_addresses.contains(&e.flow.dst)
                && !allowed(span, &local, &e.flow)
        })
        .collect();
    for e in &doomed {
        let f = &e.flow;
        tracing::info!(src = %f.src, dst = %f.dst, protocol = f.protocol, port = ?f.dport, "cut a connection the policy no longer allows");
    }
    if !doomed.is_empty() {
        socket.delete_conntrack(&doomed)?;
    }
    Ok(doomed.len())
}

/// The addresses of the namespace itself, asked over netlink (no `ip` runs on the node: a
/// silent failure there would leave the node's own connections unprotected from a cut).
pub fn node_addresses(netns: Option<&str>) -> std::io::Result<BTreeSet<IpAddr>> {
    Socket::open_route(netns)?.addresses()
}
