//! rtnetlink messages for a pod's wiring, pure: a veth pair made across two namespaces, a link
//! set up, addresses, routes and neighbour entries added, links looked up and deleted. Written
//! on the same TLV codec as nf_tables' messages ([`crate::nft::wire`]) rather than with
//! netlink-packet-route: the handful of messages below is smaller than that crate's API churn
//! (three breaking releases in 2026), and it keeps the agent on one netlink stack.

use std::net::IpAddr;

use crate::nft::wire::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, attr, attr_str, attributes, ip_address, message_with, nest,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;

const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFF_UP: u32 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: the address is assigned, and a tentative IPv6 address would
/// leave the pod without it for a second or two after ADD has answered.
const IFA_F_NODAD: u8 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
/// RTPROT_STATIC: routes an administrator (here, the agent) added.
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An ifinfomsg: family, type, index, flags, and which flags change.
fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// A veth pair: `host` in the namespace the request is sent in, with the MAC `host_mac`, and
/// `peer` made directly in the namespace `peer_netns_fd` refers to (nothing of the pod's side
/// ever exists in the node's namespace, so no name there can collide with it).
pub fn new_veth(seq: u32, host: &str, host_mac: [u8; 6], peer: &str, peer_netns_fd: u32, mtu: Option<u32>) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr_str(&mut attrs, IFLA_IFNAME, host);
    attr(&mut attrs, IFLA_ADDRESS, &host_mac);
    if let Some(mtu) = mtu {
        attr(&mut attrs, IFLA_MTU, &mtu.to_ne_bytes());
    }
    nest(&mut attrs, IFLA_LINKINFO, |info| {
        attr_str(info, IFLA_INFO_KIND, "veth");
        nest(info, IFLA_INFO_DATA, |data| {
            nest(data, VETH_INFO_PEER, |p| {
                p.extend_from_slice(&ifinfo(0, 0, 0));
                attr_str(p, IFLA_IFNAME, peer);
                attr(p, IFLA_NET_NS_FD, &peer_netns_fd.to_ne_bytes());
                if let Some(mtu) = mtu {
                    attr(p, IFLA_MTU, &mtu.to_ne_bytes());
                }
            });
        });
    });
    let mut out = Vec::new();
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    message_with(&mut out, RTM_NEWLINK, flags, seq, &ifinfo(0, 0, 0), &attrs);
    out
}

/// Sets link `index` up.
pub fn set_up(seq: u32, index: i32) -> Vec<u8> {
    let mut out = Vec::new();
    message_with(&mut out, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(index, IFF_UP, IFF_UP), &[]);
    out
}

/// Sets link `index` down.
pub fn set_down(seq: u32, index: i32) -> Vec<u8> {
    let mut out = Vec::new();
    message_with(&mut out, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(index, 0, IFF_UP), &[]);
    out
}

/// Looks a link up by name (the answer is an RTM_NEWLINK, [`read_link`]).
pub fn get_link(seq: u32, name: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr_str(&mut attrs, IFLA_IFNAME, name);
    let mut out = Vec::new();
    message_with(&mut out, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(0, 0, 0), &attrs);
    out
}

/// Deletes a link by name; a veth's peer goes with it, and every route through either.
pub fn del_link(seq: u32, name: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr_str(&mut attrs, IFLA_IFNAME, name);
    let mut out = Vec::new();
    message_with(&mut out, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(0, 0, 0), &attrs);
    out
}

/// Adds `address/prefix` to link `index`, without duplicate address detection.
pub fn new_address(seq: u32, index: i32, address: IpAddr, prefix: u8) -> Vec<u8> {
    let mut header = vec![family(address), prefix, IFA_F_NODAD, RT_SCOPE_UNIVERSE];
    header.extend_from_slice(&(index as u32).to_ne_bytes());
    let mut attrs = Vec::new();
    attr(&mut attrs, IFA_LOCAL, &octets(address));
    attr(&mut attrs, IFA_ADDRESS, &octets(address));
    attr(&mut attrs, IFA_FLAGS, &u32::from(IFA_F_NODAD).to_ne_bytes());
    let mut out = Vec::new();
    message_with(&mut out, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, &header, &attrs);
    out
}

/// A route in the main table to `destination/prefix` out of link `index`: through `gateway`,
/// or on the link itself (scope link) when there is none. It replaces a route to the same
/// destination: a host route left by a sandbox of the pod that died unannounced points at
/// the pod's old interface.
pub fn new_route(seq: u32, destination: IpAddr, prefix: u8, gateway: Option<IpAddr>, index: i32) -> Vec<u8> {
    route_message(seq, destination, prefix, gateway, Some(index), RTPROT_STATIC)
}

/// A route through `gateway` (the kernel finds the link), tagged with `protocol`, replacing
/// any route to the same destination.
pub fn new_route_via(seq: u32, destination: IpAddr, prefix: u8, gateway: IpAddr, protocol: u8) -> Vec<u8> {
    route_message(seq, destination, prefix, Some(gateway), None, protocol)
}

/// Deletes the main table's route to `destination/prefix` tagged with `protocol`.
pub fn del_route(seq: u32, destination: IpAddr, prefix: u8, protocol: u8) -> Vec<u8> {
    // Scope "nowhere" matches a route of any scope.
    let mut header = vec![family(destination), prefix, 0, 0, RT_TABLE_MAIN, protocol, 255, 0];
    header.extend_from_slice(&0u32.to_ne_bytes());
    let mut attrs = Vec::new();
    if prefix > 0 {
        attr(&mut attrs, RTA_DST, &octets(destination));
    }
    let mut out = Vec::new();
    message_with(&mut out, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, seq, &header, &attrs);
    out
}

fn route_message(
    seq: u32,
    destination: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    index: Option<i32>,
    protocol: u8,
) -> Vec<u8> {
    let scope = if gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
    let mut header = vec![family(destination), prefix, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST];
    header.extend_from_slice(&0u32.to_ne_bytes());
    let mut attrs = Vec::new();
    if prefix > 0 {
        attr(&mut attrs, RTA_DST, &octets(destination));
    }
    if let Some(gw) = gateway {
        attr(&mut attrs, RTA_GATEWAY, &octets(gw));
    }
    if let Some(index) = index {
        attr(&mut attrs, RTA_OIF, &(index as u32).to_ne_bytes());
    }
    let mut out = Vec::new();
    message_with(
        &mut out,
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &header,
        &attrs,
    );
    out
}

/// A permanent neighbour entry: `address` is at `mac` on link `index`.
pub fn new_neighbour(seq: u32, index: i32, address: IpAddr, mac: [u8; 6]) -> Vec<u8> {
    let mut header = vec![family(address), 0, 0, 0];
    header.extend_from_slice(&index.to_ne_bytes());
    header.extend_from_slice(&NUD_PERMANENT.to_ne_bytes());
    header.extend_from_slice(&[0, 0]);
    let mut attrs = Vec::new();
    attr(&mut attrs, NDA_DST, &octets(address));
    attr(&mut attrs, NDA_LLADDR, &mac);
    let mut out = Vec::new();
    message_with(
        &mut out,
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &header,
        &attrs,
    );
    out
}

/// Asks for every link, address or route of the namespace (`kind` is RTM_GETLINK,
/// RTM_GETADDR or RTM_GETROUTE), of any family.
pub fn dump(seq: u32, kind: u16) -> Vec<u8> {
    let header: &[u8] = match kind {
        RTM_GETLINK => &[0; 16],
        RTM_GETADDR => &[0; 8],
        _ => &[0; 12],
    };
    let mut out = Vec::new();
    message_with(&mut out, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, header, &[]);
    out
}

/// What a link answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: i32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// Reads an RTM_NEWLINK's payload (ifinfomsg and attributes).
pub fn read_link(payload: &[u8]) -> Option<LinkInfo> {
    if payload.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
    let mut info = LinkInfo { index, name: String::new(), mac: None, mtu: None, up: flags & IFF_UP != 0 };
    for (kind, value, _) in attributes(&payload[16..]) {
        match kind {
            IFLA_IFNAME => info.name = String::from_utf8_lossy(value.split(|b| *b == 0).next()?).into_owned(),
            IFLA_ADDRESS => info.mac = value.try_into().ok(),
            IFLA_MTU => info.mtu = value.try_into().ok().map(u32::from_ne_bytes),
            _ => {}
        }
    }
    Some(info)
}

/// Reads an RTM_NEWADDR's payload: the link's index and the address with its prefix length.
pub fn read_address(payload: &[u8]) -> Option<(i32, IpAddr, u8)> {
    if payload.len() < 8 {
        return None;
    }
    let prefix = payload[1];
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?) as i32;
    let attrs = attributes(&payload[8..]);
    let find = |k| attrs.clone().find(|a| a.0 == k).map(|a| a.1);
    let address = find(IFA_LOCAL).or_else(|| find(IFA_ADDRESS)).and_then(ip_address)?;
    Some((index, address, prefix))
}

/// Reads an RTM_NEWROUTE's payload: destination with its prefix length, gateway, output link.
pub fn read_route(payload: &[u8]) -> Option<RouteInfo> {
    if payload.len() < 12 {
        return None;
    }
    let (prefix, table) = (payload[1], payload[4]);
    let attrs = attributes(&payload[12..]);
    let find = |k| attrs.clone().find(|a| a.0 == k).map(|a| a.1);
    let unspecified = if payload[0] == AF_INET { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
    Some(RouteInfo {
        destination: find(RTA_DST).and_then(ip_address).unwrap_or(unspecified),
        prefix,
        gateway: find(RTA_GATEWAY).and_then(ip_address),
        index: find(RTA_OIF).and_then(|v| v.try_into().ok()).map(i32::from_ne_bytes),
        main_table: table == RT_TABLE_MAIN,
        protocol: payload[5],
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub index: Option<i32>,
    pub main_table: bool,
    /// Who added it (RTPROT_*): weft's routes between nodes carry [`super::ROUTE_PROTOCOL`].
    pub protocol: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veth_request_nests_its_peer_with_the_peers_namespace() {
        let bytes = new_veth(7, "weft0123456789a", [0xee; 6], "eth0", 42, Some(1400));
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), RTM_NEWLINK);
        let attrs: Vec<_> = attributes(&bytes[32..]).collect();
        let names: Vec<u16> = attrs.iter().map(|a| a.0).collect();
        assert_eq!(names, vec![IFLA_IFNAME, IFLA_ADDRESS, IFLA_MTU, IFLA_LINKINFO]);
        assert_eq!(attrs[0].1, b"weft0123456789a\0");
        let info: Vec<_> = attributes(attrs[3].1).collect();
        assert_eq!(info[0].1, b"veth\0");
        let peer_body = attributes(info[1].1).next().unwrap().1;
        let peer_attrs: Vec<_> = attributes(&peer_body[16..]).collect();
        assert_eq!(peer_attrs[0].1, b"eth0\0");
        assert_eq!((peer_attrs[1].0, peer_attrs[1].1), (IFLA_NET_NS_FD, &42u32.to_ne_bytes()[..]));
    }

    #[test]
    fn addresses_routes_and_neighbours_read_back() {
        let a: IpAddr = "10.32.0.5".parse().unwrap();
        let bytes = new_address(1, 9, a, 32);
        assert_eq!(read_address(&bytes[16..]), Some((9, a, 32)));
        let gw: IpAddr = "fe80::1".parse().unwrap();
        let route = new_route(2, "::".parse().unwrap(), 0, Some(gw), 9);
        let read = read_route(&route[16..]).unwrap();
        assert_eq!((read.prefix, read.gateway, read.index, read.main_table), (0, Some(gw), Some(9), true));
        assert_eq!(route[16 + 6], RT_SCOPE_UNIVERSE);
        let host = new_route(3, a, 32, None, 4);
        assert_eq!(host[16 + 6], RT_SCOPE_LINK);
        assert_eq!(read_route(&host[16..]).unwrap().destination, a);
        let neighbour = new_neighbour(4, 9, gw, [0xee; 6]);
        assert_eq!(u16::from_ne_bytes([neighbour[16 + 8], neighbour[16 + 9]]), NUD_PERMANENT);
    }
}
