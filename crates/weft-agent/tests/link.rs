//! A pod's interface made and removed over rtnetlink, in namespaces of the test's own (root):
//! the pod reaches the node through its gateway with no proxy ARP and no default route on the
//! node, a failure leaves nothing behind, and removal from either side removes both; routes
//! to other nodes' pods, and the masquerade of pod traffic leaving the cluster.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use weft_agent::link::{self, PodWiring};
use weft_agent::netns;
use weft_testkit::Netns;

mod common;

const HOST_IF: &str = "weft0123456789a";

fn wiring<'a>(node: &'a Netns, pod: &'a PathBuf, addresses: &'a [IpAddr]) -> PodWiring<'a> {
    PodWiring {
        node_netns: Some(&node.0),
        pod_netns: pod,
        host_interface: HOST_IF,
        ifname: "eth0",
        addresses,
        mtu: Some(1400),
    }
}

/// Whether a connection from the pod reaches a listener of the node's.
fn connects(pod: &Netns, node: &Netns, target: SocketAddr) -> bool {
    let listener = netns::run_in(Some(node.name()), || TcpListener::bind(target)).unwrap();
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hi").unwrap();
    });
    let answered = netns::run_in(Some(&pod.0), || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"hi")
    })
    .unwrap_or(false);
    if answered {
        accepted.join().unwrap();
    }
    answered
}

#[ignore = "needs root (network namespaces): scripts/test.sh runs it when run as root"]
#[test]
fn a_wired_pod_reaches_the_node_through_its_gateway_and_leaves_nothing_when_removed() {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    // The node's own address on lo, and no default route: the case proxy ARP fails in.
    node.ip(&["link", "set", "lo", "up"]);
    node.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    node.ip(&["-6", "addr", "add", "fd99::1/128", "dev", "lo", "nodad"]);
    let addresses: Vec<IpAddr> = vec!["10.32.0.5".parse().unwrap(), "fd32::5".parse().unwrap()];
    let path = pod.path();
    let wired = link::wire(&wiring(&node, &path, &addresses)).unwrap();
    assert_eq!(wired.mtu, Some(1400));

    let inside = link::sandbox_side(&path, "eth0").unwrap().unwrap();
    assert!(inside.link.up);
    assert_eq!(inside.link.mac, wired.pod_mac);
    for a in &addresses {
        assert!(inside.addresses.iter().any(|(x, _)| x == a), "{a} in {:?}", inside.addresses);
    }
    let gateways: Vec<Option<IpAddr>> = inside.routes.iter().filter(|r| r.prefix == 0).map(|r| r.gateway).collect();
    assert!(gateways.contains(&Some("169.254.1.1".parse().unwrap())), "{:?}", inside.routes);
    assert!(gateways.contains(&Some("fe80::1".parse().unwrap())), "{:?}", inside.routes);
    let host = link::host_side(Some(&node.0), HOST_IF).unwrap().unwrap();
    assert!(host.link.up);
    assert_eq!(host.link.mac, Some(link::HOST_MAC));
    for a in &addresses {
        assert!(host.routes.iter().any(|r| r.destination == *a), "route to {a} in {:?}", host.routes);
    }

    assert!(connects(&pod, &node, "10.99.0.1:7001".parse().unwrap()), "IPv4 through 169.254.1.1");
    assert!(connects(&pod, &node, "[fd99::1]:7002".parse().unwrap()), "IPv6 through fe80::1");

    // Removed from the sandbox's side, both ends and the node's routes are gone; again, nothing.
    assert!(link::remove_in_sandbox(&path, "eth0").unwrap());
    assert_eq!(link::host_side(Some(&node.0), HOST_IF).unwrap(), None);
    assert!(!link::remove_in_sandbox(&path, "eth0").unwrap());
    assert!(!link::remove_host_side(Some(&node.0), HOST_IF).unwrap());
    // A sandbox that is gone has nothing to remove.
    assert!(!link::remove_in_sandbox(std::path::Path::new("/run/netns/wt-never-was"), "eth0").unwrap());
}

#[ignore = "needs root (network namespaces): scripts/test.sh runs it when run as root"]
#[test]
fn a_failed_wiring_leaves_nothing_and_never_touches_what_was_there() {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let addresses: Vec<IpAddr> = vec!["10.32.0.6".parse().unwrap()];
    // No such sandbox: the error names it, and nothing is made on the node.
    let missing = PathBuf::from("/run/netns/wt-missing-sandbox");
    let e = link::wire(&wiring(&node, &missing, &addresses)).unwrap_err();
    assert!(e.to_string().contains("wt-missing-sandbox"), "{e}");
    assert_eq!(link::host_side(Some(&node.0), HOST_IF).unwrap(), None);

    // The pair is made, then the pod's side fails (IPv6 is off in the sandbox): the pair made
    // is removed, from both namespaces.
    netns::sysctl(Some(&pod.0), "net.ipv6.conf.default.disable_ipv6", "1").unwrap();
    let path = pod.path();
    let dual: Vec<IpAddr> = vec!["10.32.0.6".parse().unwrap(), "fd32::6".parse().unwrap()];
    let e = link::wire(&wiring(&node, &path, &dual)).unwrap_err();
    assert!(e.to_string().contains("fd32::6"), "{e}");
    assert_eq!(link::host_side(Some(&node.0), HOST_IF).unwrap(), None);
    assert_eq!(link::sandbox_side(&path, "eth0").unwrap(), None);

    // The sandbox's eth0 exists: an error, and the sandbox's own eth0 stays.
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]);
    assert!(link::wire(&wiring(&node, &path, &addresses)).is_err());
    assert_eq!(link::host_side(Some(&node.0), HOST_IF).unwrap(), None);
    assert!(link::sandbox_side(&path, "eth0").unwrap().is_some());

    // The node side's name is taken: an error, and what holds the name stays.
    node.ip(&["link", "add", HOST_IF, "type", "veth", "peer", "name", "taken-peer"]);
    pod.ip(&["link", "del", "eth0"]);
    let e = link::wire(&wiring(&node, &path, &addresses)).unwrap_err();
    assert!(e.to_string().contains(HOST_IF), "{e}");
    assert!(link::host_side(Some(&node.0), HOST_IF).unwrap().is_some());
    assert_eq!(link::sandbox_side(&path, "eth0").unwrap(), None);
}

#[ignore = "needs root (network namespaces): scripts/test.sh runs it when run as root"]
#[test]
fn the_nodes_underlay_addresses_are_those_its_default_routes_leave_by() {
    let node = Netns::new("node");
    assert_eq!(link::underlay_addresses(Some(node.name())).unwrap(), [] as [IpAddr; 0], "no default route: none");
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["link", "set", "up1", "up"]);
    node.ip(&["addr", "add", "192.0.2.5/24", "dev", "up0"]);
    node.ip(&["-6", "addr", "add", "fd00::5/64", "dev", "up0", "nodad"]);
    node.ip(&["addr", "add", "198.51.100.9/24", "dev", "up1"]);
    node.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    node.ip(&["-6", "route", "add", "default", "via", "fd00::1"]);
    let mut found = link::underlay_addresses(Some(node.name())).unwrap();
    found.sort();
    let expected: Vec<IpAddr> = vec!["192.0.2.5".parse().unwrap(), "fd00::5".parse().unwrap()];
    assert_eq!(found, expected, "the default routes' link's global addresses, not up1's nor fe80::");
}

#[ignore = "needs root (network namespaces): scripts/test.sh runs it when run as root"]
#[test]
fn routes_to_other_nodes_pods_are_made_exactly_what_the_table_says_and_no_others_touched() {
    let node = Netns::new("node");
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["link", "set", "up1", "up"]);
    node.ip(&["addr", "add", "192.0.2.5/24", "dev", "up0"]);
    node.ip(&["-6", "addr", "add", "fd00::5/64", "dev", "up0", "nodad"]);
    // The node's own route, which weft must never touch.
    node.ip(&["route", "add", "10.9.0.0/24", "via", "192.0.2.99"]);
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let ours = |node: &Netns| {
        let out = std::process::Command::new("ip")
            .args(["-n", node.name(), "route", "show", "proto", "87"])
            .output()
            .unwrap();
        let mut lines: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect();
        let out6 = std::process::Command::new("ip")
            .args(["-n", node.name(), "-6", "route", "show", "proto", "87"])
            .output()
            .unwrap();
        lines.extend(String::from_utf8_lossy(&out6.stdout).lines().map(|l| l.trim().to_string()));
        lines
    };
    let first = [
        (net("10.244.1.0/24"), ip("192.0.2.6")),
        (net("10.47.0.11/32"), ip("192.0.2.7")),
        (net("fd44::/80"), ip("fd00::6")),
    ];
    assert_eq!(link::sync_routes(Some(node.name()), &first).unwrap(), (3, 0));
    let routes = ours(&node);
    assert!(routes.iter().any(|l| l.starts_with("10.244.1.0/24 via 192.0.2.6")), "{routes:?}");
    assert!(routes.iter().any(|l| l.starts_with("10.47.0.11 via 192.0.2.7")), "{routes:?}");
    assert!(routes.iter().any(|l| l.starts_with("fd44::/80 via fd00::6")), "{routes:?}");
    // The same table again: nothing to do.
    assert_eq!(link::sync_routes(Some(node.name()), &first).unwrap(), (0, 0));
    // A block moves to another node, a pod goes: one changed, one removed, the node's own stays.
    let second = [(net("10.244.1.0/24"), ip("192.0.2.8")), (net("fd44::/80"), ip("fd00::6"))];
    assert_eq!(link::sync_routes(Some(node.name()), &second).unwrap(), (1, 1));
    let routes = ours(&node);
    assert!(routes.iter().any(|l| l.starts_with("10.244.1.0/24 via 192.0.2.8")), "{routes:?}");
    assert!(!routes.iter().any(|l| l.starts_with("10.47.0.11")), "{routes:?}");
    let all = std::process::Command::new("ip").args(["-n", node.name(), "route", "show"]).output().unwrap();
    assert!(String::from_utf8_lossy(&all.stdout).contains("10.9.0.0/24 via 192.0.2.99"), "the node's own route stays");
    assert_eq!(link::sync_routes(Some(node.name()), &[]).unwrap(), (0, 2));
    assert!(ours(&node).is_empty());
}

/// The address a listener in `at` sees a connection from `from` to `target` come from; None
/// when none arrives.
fn peer_seen(from: &Netns, at: &Netns, target: SocketAddr) -> Option<IpAddr> {
    let listener = netns::run_in(Some(at.name()), || TcpListener::bind(target)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let connected = netns::run_in(Some(from.name()), || TcpStream::connect_timeout(&target, Duration::from_secs(3)));
    connected.ok()?;
    weft_testkit::eventually_blocking("the connection accepted", Duration::from_secs(3), || {
        listener.accept().map(|(_, peer)| peer.ip()).map_err(|e| e.to_string())
    })
    .into()
}

#[ignore = "needs root (network namespaces): scripts/test.sh runs it when run as root"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_leaving_the_cluster_is_masqueraded_as_the_table_says_and_pod_to_pod_traffic_never_is() {
    // A node with two pods, and a network beyond it that routes the pods' addresses back to
    // the node: without masquerade, what lies beyond sees the pod's own address.
    let node = Netns::new("node");
    let beyond = Netns::new("beyond");
    node.ip(&["link", "set", "lo", "up"]);
    netns::sysctl(Some(node.name()), "net.ipv4.ip_forward", "1").unwrap();
    netns::sysctl(Some(node.name()), "net.ipv6.conf.all.forwarding", "1").unwrap();
    node.ip(&["link", "add", "out0", "type", "veth", "peer", "name", "out1", "netns", beyond.name()]);
    node.ip(&["link", "set", "out0", "up"]);
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "out0"]);
    node.ip(&["-6", "addr", "add", "fd00::1/64", "dev", "out0", "nodad"]);
    beyond.ip(&["link", "set", "out1", "up"]);
    beyond.ip(&["addr", "add", "192.0.2.2/24", "dev", "out1"]);
    beyond.ip(&["-6", "addr", "add", "fd00::2/64", "dev", "out1", "nodad"]);
    beyond.ip(&["route", "add", "10.244.0.0/16", "via", "192.0.2.1"]);
    beyond.ip(&["-6", "route", "add", "fd44::/64", "via", "fd00::1"]);
    let pods = [Netns::new("pod"), Netns::new("pod")];
    let pod_addresses: [Vec<IpAddr>; 2] = [
        vec!["10.244.0.5".parse().unwrap(), "fd44::5".parse().unwrap()],
        vec!["10.244.0.6".parse().unwrap(), "fd44::6".parse().unwrap()],
    ];
    for ((pod, addresses), host_interface) in pods.iter().zip(&pod_addresses).zip([HOST_IF, "weft0123456789b"]) {
        let path = pod.path();
        link::wire(&PodWiring { host_interface, ..wiring(&node, &path, addresses) }).unwrap();
    }
    let seen = |target: &str| peer_seen(&pods[0], &beyond, target.parse().unwrap());
    let seen_by_pod = |target: &str| peer_seen(&pods[0], &pods[1], target.parse().unwrap());
    assert_eq!(seen("192.0.2.2:7101"), Some("10.244.0.5".parse().unwrap()), "no masquerade yet");

    // The agent follows a route table naming the cluster's pod networks.
    let cluster = |nets: &[&str]| weft_proto::v1::RouteTable {
        routes: vec![],
        cluster: nets.iter().map(|n| weft_proto::encode_prefix(&n.parse().unwrap())).collect(),
        ..Default::default()
    };
    let span = weft_compiler::Compiler::new().span("node-1");
    let (addr, _spans, tables) =
        weft_testkit::span_controller::serve_with_routes(span, cluster(&["10.244.0.0/16", "fd44::/64"])).await;
    let dir = weft_testkit::TempDir::new("weft-masq");
    let config = weft_agent::Config { credential: Some("test".into()), ..common::config(addr, dir.path(), None) };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let uses = weft_agent::routes::Uses { routes: false, masquerade: true };
    tokio::spawn(weft_agent::routes::follow(config, Some(node.name().to_string()), uses, stopped));

    tokio::task::block_in_place(|| {
        // Leaving the cluster: the node's address, of each family. Between pods: their own.
        weft_testkit::eventually_blocking("masqueraded", Duration::from_secs(20), || match seen("192.0.2.2:7102") {
            Some(a) if a == "192.0.2.1".parse::<IpAddr>().unwrap() => Ok(()),
            other => Err(format!("seen as {other:?}")),
        });
        assert_eq!(seen("[fd00::2]:7103"), Some("fd00::1".parse().unwrap()));
        // nft reads weft's encoding back as the rules it meant.
        let listed = node.nft(&["list", "table", "inet", weft_agent::nft::NAT_TABLE]).to_string();
        for part in [r#""masquerade":null"#, r#""addr":"10.244.0.0","len":16"#, r#""addr":"fd44::","len":64"#] {
            assert!(listed.contains(part), "{part} in {listed}");
        }
        assert_eq!(seen_by_pod("10.244.0.6:7104"), Some("10.244.0.5".parse().unwrap()));
        assert_eq!(seen_by_pod("[fd44::6]:7105"), Some("fd44::5".parse().unwrap()));
        // No cluster network any more: no masquerade, and no table left behind.
        tables.send_replace(cluster(&[]));
        weft_testkit::eventually_blocking("not masqueraded", Duration::from_secs(20), || {
            match seen("192.0.2.2:7106") {
                Some(a) if a == "10.244.0.5".parse::<IpAddr>().unwrap() => Ok(()),
                other => Err(format!("seen as {other:?}")),
            }
        });
    });
    let tables_left = node.nft(&["list", "tables"]);
    assert!(!tables_left.to_string().contains(weft_agent::nft::NAT_TABLE), "{tables_left}");
    stop.send_replace(true);
}
