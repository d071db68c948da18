//! Address allocation for ports on virtual networks: the first free address of the network's
//! subnets, one per address family. Callers hold the network row's lock, so allocations on one
//! network are serialised and never collide; the primary key of `ip_allocations` enforces it
//! regardless.

use std::net::IpAddr;

use ipnet::IpNet;
use uuid::Uuid;
use weft_model::{Subnet, VirtualNetwork};

use crate::error::{ConflictKind, Result, StoreError};

/// One address from each family the network has subnets of (IPv4 first).
pub(crate) async fn allocate(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    network_id: Uuid,
    vn: &VirtualNetwork,
) -> Result<Vec<IpAddr>> {
    if vn.subnets.is_empty() {
        return Err(StoreError::invalid(
            "/network",
            format!("network {:?} has no subnets to allocate from; give the port's ips", vn.name),
        ));
    }
    let mut addresses = Vec::new();
    for v4 in [true, false] {
        let family: Vec<&Subnet> = vn.subnets.iter().filter(|s| matches!(s.cidr, IpNet::V4(_)) == v4).collect();
        if family.is_empty() {
            continue;
        }
        let mut found = None;
        for subnet in family {
            let held: Vec<IpNet> = sqlx::query_scalar(
                "SELECT address FROM ip_allocations WHERE network_id = $1 AND address <<= $2 \
                 UNION SELECT address FROM port_addresses WHERE address <<= $2 ORDER BY address",
            )
            .bind(network_id)
            .bind(subnet.cidr)
            .fetch_all(&mut **tx)
            .await?;
            let held: Vec<u128> = held.iter().map(|n| to_u128(n.addr())).collect();
            if let Some(a) = first_free(subnet, &held) {
                found = Some(a);
                break;
            }
        }
        match found {
            Some(a) => addresses.push(a),
            None => {
                return Err(StoreError::conflict(
                    ConflictKind::AddressesExhausted,
                    format!("network {:?} has no free {} address left", vn.name, if v4 { "IPv4" } else { "IPv6" }),
                ));
            }
        }
    }
    Ok(addresses)
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 { IpAddr::V4((n as u32).into()) } else { IpAddr::V6(n.into()) }
}

/// The usable host range of a subnet: without the network address (and, for IPv4, the
/// broadcast address) unless the subnet is too small to have hosts besides them.
fn host_range(cidr: &IpNet) -> (u128, u128) {
    let first = to_u128(cidr.network());
    let last = to_u128(cidr.broadcast());
    let small = cidr.max_prefix_len() - cidr.prefix_len() <= 1;
    match cidr {
        _ if small => (first, last),
        IpNet::V4(_) => (first + 1, last - 1),
        IpNet::V6(_) => (first + 1, last),
    }
}

/// The lowest address of `subnet` that is neither held (`held` is sorted) nor the gateway.
pub(crate) fn first_free(subnet: &Subnet, held: &[u128]) -> Option<IpAddr> {
    let (first, last) = host_range(&subnet.cidr);
    let gateway = subnet.gateway.map(to_u128);
    let mut candidate = first;
    let mut held = held.iter().copied().peekable();
    while candidate <= last {
        if Some(candidate) == gateway {
            candidate += 1;
            continue;
        }
        while held.next_if(|&a| a < candidate).is_some() {}
        if held.peek() == Some(&candidate) {
            candidate += 1;
            continue;
        }
        return Some(from_u128(matches!(subnet.cidr, IpNet::V4(_)), candidate));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(cidr: &str, gateway: Option<&str>) -> Subnet {
        Subnet { cidr: cidr.parse().unwrap(), gateway: gateway.map(|g| g.parse().unwrap()) }
    }

    fn ips(list: &[&str]) -> Vec<u128> {
        list.iter().map(|s| to_u128(s.parse().unwrap())).collect()
    }

    #[test]
    fn skips_network_gateway_and_held() {
        let s = subnet("10.0.0.0/29", Some("10.0.0.1"));
        assert_eq!(first_free(&s, &[]), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(first_free(&s, &ips(&["10.0.0.2", "10.0.0.3"])), Some("10.0.0.4".parse().unwrap()));
        assert_eq!(first_free(&s, &ips(&["10.0.0.2", "10.0.0.4"])), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(first_free(&s, &ips(&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"])), None);
    }

    #[test]
    fn ipv6_and_tiny_subnets() {
        assert_eq!(first_free(&subnet("fd00::/126", None), &[]), Some("fd00::1".parse().unwrap()));
        assert_eq!(
            first_free(&subnet("fd00::/126", None), &ips(&["fd00::1", "fd00::2"])),
            Some("fd00::3".parse().unwrap())
        );
        assert_eq!(first_free(&subnet("10.0.0.4/31", None), &[]), Some("10.0.0.4".parse().unwrap()));
        assert_eq!(first_free(&subnet("10.0.0.4/32", None), &ips(&["10.0.0.4"])), None);
    }
}
