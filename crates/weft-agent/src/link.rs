//! A pod's interface on the node (DESIGN.md §7, §9), made, inspected and removed over
//! rtnetlink: a veth pair whose node side bears the port's interface name and whose pod side is
//! created directly in the sandbox's namespace; the pod's addresses (/32, /128); its default
//! routes through 169.254.1.1 and fe80::1 with permanent neighbour entries for both, at the
//! node side's fixed MAC; and host routes to the pod on the node.
//!
//! The permanent neighbour is what makes the gateway work: proxy ARP alone answers only while
//! the node has a route to 169.254.1.1 through another interface, and a node without a
//! default route never has one (research/cni.md §4, verified on these machines). Every
//! node-side interface has the same MAC, as Calico's: the pod never learns anything of the
//! node from it.
//!
//! Synchronous, with no program run: the agent calls it from a blocking task.

pub mod rtnl;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

pub use rtnl::{LinkInfo, RouteInfo};

use crate::nft::Socket;

/// The MAC of every node-side interface of a pod.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pods' IPv4 gateway: reached through the permanent neighbour entry, never configured
/// on the node.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: the node side holds it, so a pod can ping it.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;

/// What a pod's interface is made of.
#[derive(Debug, Clone)]
pub struct PodWiring<'a> {
    /// The node's namespace (the agent's datapath namespace; `None`: the agent's own).
    pub node_netns: Option<&'a str>,
    /// The sandbox's namespace, as the runtime names it (`CNI_NETNS`).
    pub pod_netns: &'a Path,
    /// The node side's name: the port's interface.
    pub host_interface: &'a str,
    /// The pod side's name (`CNI_IFNAME`).
    pub ifname: &'a str,
    pub addresses: &'a [IpAddr],
    /// Both ends' MTU; `None`: the kernel's default for a veth.
    pub mtu: Option<u32>,
}

/// What the wiring made that the runtime is told of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub pod_mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn prefix_of(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// Makes the pod's interface whole, or nothing: on an error, what was made is removed (the
/// pair goes with its node side, and every route through it).
pub fn wire(w: &PodWiring<'_>) -> io::Result<Wired> {
    let sandbox = std::fs::File::open(w.pod_netns)
        .map_err(context(format_args!("the sandbox's network namespace {}", w.pod_netns.display())))?;
    let mut node = Socket::open_route(w.node_netns).map_err(context("the node's routing socket"))?;
    let fd = u32::try_from(sandbox.as_raw_fd()).map_err(|_| io::Error::other("a negative descriptor"))?;
    node.ask(|seq| rtnl::new_veth(seq, w.host_interface, HOST_MAC, w.ifname, fd, w.mtu))
        .map_err(context(format_args!("cannot create the veth pair {} / {}", w.host_interface, w.ifname)))?;
    match finish(w, &mut node) {
        Ok(wired) => Ok(wired),
        Err(e) => {
            if let Err(undo) = delete(&mut node, w.host_interface) {
                tracing::warn!(interface = w.host_interface, error = %undo, "cannot remove a half-made interface");
            }
            Err(e)
        }
    }
}

fn finish(w: &PodWiring<'_>, node: &mut Socket) -> io::Result<Wired> {
    let mut pod = Socket::open_route_at(w.pod_netns).map_err(context("the sandbox's routing socket"))?;
    // The runtime's loopback plugin sets lo up too; a runtime without one still gets it.
    if let Some(lo) = find(&mut pod, "lo")?
        && !lo.up
    {
        pod.ask(|seq| rtnl::set_up(seq, lo.index)).map_err(context("cannot set the sandbox's lo up"))?;
    }
    let eth = find(&mut pod, w.ifname)?
        .ok_or_else(|| io::Error::other(format!("{} did not appear in the sandbox", w.ifname)))?;
    let index = eth.index;
    pod.ask(|seq| rtnl::set_up(seq, index)).map_err(context(format_args!("cannot set {} up", w.ifname)))?;
    for &a in w.addresses {
        pod.ask(|seq| rtnl::new_address(seq, index, a, prefix_of(a)))
            .map_err(context(format_args!("cannot give the pod {a}")))?;
    }
    let gateway_v4 = IpAddr::V4(GATEWAY_V4);
    let gateway_v6 = IpAddr::V6(GATEWAY_V6);
    let has_v6 = w.addresses.iter().any(IpAddr::is_ipv6);
    if w.addresses.iter().any(IpAddr::is_ipv4) {
        pod.ask(|seq| rtnl::new_neighbour(seq, index, gateway_v4, HOST_MAC))
            .map_err(context("cannot add the gateway's neighbour entry"))?;
        pod.ask(|seq| rtnl::new_route(seq, gateway_v4, 32, None, index))
            .map_err(context("cannot add the route to the gateway"))?;
        pod.ask(|seq| rtnl::new_route(seq, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, Some(gateway_v4), index))
            .map_err(context("cannot add the pod's default route"))?;
    }
    if has_v6 {
        pod.ask(|seq| rtnl::new_neighbour(seq, index, gateway_v6, HOST_MAC))
            .map_err(context("cannot add the IPv6 gateway's neighbour entry"))?;
        pod.ask(|seq| rtnl::new_route(seq, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0, Some(gateway_v6), index))
            .map_err(context("cannot add the pod's IPv6 default route"))?;
    }
    let host = find(node, w.host_interface)?
        .ok_or_else(|| io::Error::other(format!("{} did not appear on the node", w.host_interface)))?;
    let host_index = host.index;
    node.ask(|seq| rtnl::set_up(seq, host_index))
        .map_err(context(format_args!("cannot set {} up", w.host_interface)))?;
    if has_v6 {
        node.ask(|seq| rtnl::new_address(seq, host_index, gateway_v6, 64))
            .map_err(context("cannot give the node side the IPv6 gateway"))?;
    }
    for &a in w.addresses {
        node.ask(|seq| rtnl::new_route(seq, a, prefix_of(a), None, host_index))
            .map_err(context(format_args!("cannot route {a} to the pod")))?;
    }
    Ok(Wired { pod_mac: eth.mac, mtu: eth.mtu })
}

/// A link of the namespace by name, if it has one.
fn find(socket: &mut Socket, name: &str) -> io::Result<Option<LinkInfo>> {
    match socket.ask(|seq| rtnl::get_link(seq, name)) {
        Ok(answers) => Ok(answers.iter().find(|(k, _)| *k == rtnl::RTM_NEWLINK).and_then(|(_, p)| rtnl::read_link(p))),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(None),
        Err(e) => Err(context(format_args!("cannot look {name} up"))(e)),
    }
}

/// Deletes a link by name; whether there was one.
fn delete(socket: &mut Socket, name: &str) -> io::Result<bool> {
    match socket.ask(|seq| rtnl::del_link(seq, name)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(false),
        Err(e) => Err(context(format_args!("cannot delete {name}"))(e)),
    }
}

/// Sets a pod's node-side interface down, which stops its traffic at once (its removal takes
/// the kernel an RCU grace period); whether it existed.
pub fn take_down(node_netns: Option<&str>, host_interface: &str) -> io::Result<bool> {
    let mut socket = Socket::open_route(node_netns)?;
    let Some(link) = find(&mut socket, host_interface)? else { return Ok(false) };
    socket
        .ask(|seq| rtnl::set_down(seq, link.index))
        .map_err(context(format_args!("cannot set {host_interface} down")))?;
    Ok(true)
}

/// Removes a pod's node-side interface (its peer and routes go with it); whether it existed.
pub fn remove_host_side(node_netns: Option<&str>, host_interface: &str) -> io::Result<bool> {
    delete(&mut Socket::open_route(node_netns)?, host_interface)
}

/// Removes `ifname` inside a sandbox; whether it existed. A namespace that is gone has
/// nothing left to remove.
pub fn remove_in_sandbox(pod_netns: &Path, ifname: &str) -> io::Result<bool> {
    let mut socket = match Socket::open_route_at(pod_netns) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(ENOENT) || e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    delete(&mut socket, ifname)
}

/// A link with its addresses and the main table's routes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub link: LinkInfo,
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<RouteInfo>,
}

fn state(socket: &mut Socket, name: &str) -> io::Result<Option<LinkState>> {
    let Some(link) = find(socket, name)? else { return Ok(None) };
    let addresses = socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETADDR))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_address(p))
        .filter(|(index, _, _)| *index == link.index)
        .map(|(_, a, prefix)| (a, prefix))
        .collect();
    let routes = socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETROUTE))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_route(p))
        .filter(|r| r.main_table && r.index == Some(link.index))
        .collect();
    Ok(Some(LinkState { link, addresses, routes }))
}

/// The node side of a pod's interface as it is now.
pub fn host_side(node_netns: Option<&str>, host_interface: &str) -> io::Result<Option<LinkState>> {
    state(&mut Socket::open_route(node_netns)?, host_interface)
}

/// The pod side of a pod's interface as it is now.
pub fn sandbox_side(pod_netns: &Path, ifname: &str) -> io::Result<Option<LinkState>> {
    state(&mut Socket::open_route_at(pod_netns)?, ifname)
}

/// The MTU of the link the node's default route leaves by: a pod's default when the
/// configuration names none (an underlay of 9000, or 1450 under a cloud's encapsulation).
pub fn node_mtu(node_netns: Option<&str>) -> io::Result<Option<u32>> {
    let mut socket = Socket::open_route(node_netns)?;
    let default_link = socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETROUTE))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_route(p))
        .find(|r| r.main_table && r.prefix == 0 && r.destination.is_ipv4())
        .and_then(|r| r.index);
    let Some(index) = default_link else { return Ok(None) };
    Ok(socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETLINK))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_link(p))
        .find(|l| l.index == index)
        .and_then(|l| l.mtu))
}

/// The node's addresses on the network between nodes, as far as the namespace tells: the
/// global addresses of the links its default routes leave by (IPv4 and IPv6). None when it has
/// no default route: then the agent must be told (`--node-address`).
pub fn underlay_addresses(node_netns: Option<&str>) -> io::Result<Vec<IpAddr>> {
    let mut socket = Socket::open_route(node_netns)?;
    let default_links: Vec<(bool, i32)> = socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETROUTE))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_route(p))
        .filter(|r| r.main_table && r.prefix == 0)
        .filter_map(|r| Some((r.destination.is_ipv4(), r.index?)))
        .collect();
    let usable = |a: &IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    };
    Ok(socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETADDR))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_address(p))
        .filter(|(index, a, _)| default_links.contains(&(a.is_ipv4(), *index)) && usable(a))
        .map(|(_, a, _)| a)
        .collect())
}

/// The protocol tag of the routes to other nodes' pods: the agent replaces and removes only
/// routes that carry it, never the node's own ('W', unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL: u8 = 87;

/// Makes the node's routes to other nodes' pods exactly `desired` (destination → gateway):
/// missing or changed ones added (replacing), weft's routes no longer wanted removed. Routes
/// of other protocols are never touched. Returns (added or changed, removed).
pub fn sync_routes(node_netns: Option<&str>, desired: &[(ipnet::IpNet, IpAddr)]) -> io::Result<(usize, usize)> {
    let mut socket = Socket::open_route(node_netns)?;
    let current: std::collections::BTreeMap<(IpAddr, u8), Option<IpAddr>> = socket
        .dump_all(|seq| rtnl::dump(seq, rtnl::RTM_GETROUTE))?
        .iter()
        .filter_map(|(_, p)| rtnl::read_route(p))
        .filter(|r| r.main_table && r.protocol == ROUTE_PROTOCOL)
        .map(|r| ((r.destination, r.prefix), r.gateway))
        .collect();
    let wanted: std::collections::BTreeMap<(IpAddr, u8), IpAddr> =
        desired.iter().map(|(net, via)| ((net.network(), net.prefix_len()), *via)).collect();
    let (mut added, mut removed) = (0, 0);
    for (&(destination, prefix), &via) in &wanted {
        if current.get(&(destination, prefix)) == Some(&Some(via)) {
            continue;
        }
        match socket.ask(|seq| rtnl::new_route_via(seq, destination, prefix, via, ROUTE_PROTOCOL)) {
            Ok(_) => added += 1,
            // An unreachable gateway (a node not on this node's underlay) is skipped, not fatal.
            Err(e) => {
                tracing::warn!(route = %format!("{destination}/{prefix} via {via}"), error = %e, "cannot add a route")
            }
        }
    }
    for &(destination, prefix) in current.keys().filter(|k| !wanted.contains_key(k)) {
        socket
            .ask(|seq| rtnl::del_route(seq, destination, prefix, ROUTE_PROTOCOL))
            .map_err(context(format_args!("cannot remove the route to {destination}/{prefix}")))?;
        removed += 1;
    }
    Ok((added, removed))
}

/// The MAC as runtimes print it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
