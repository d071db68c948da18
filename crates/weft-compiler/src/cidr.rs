//! Prefix arithmetic: a CIDR minus its excepted prefixes, as the fewest prefixes that cover
//! exactly the addresses left (Kubernetes ipBlock with except).

use ipnet::IpNet;

/// `cidr` minus every prefix of `except`, coalesced and sorted.
pub fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    split(cidr, except, &mut out);
    IpNet::aggregate(&out)
}

fn split(net: IpNet, except: &[IpNet], out: &mut Vec<IpNet>) {
    let overlapping: Vec<IpNet> = except.iter().copied().filter(|e| e.contains(&net) || net.contains(e)).collect();
    if overlapping.is_empty() {
        out.push(net);
        return;
    }
    if overlapping.iter().any(|e| e.contains(&net)) {
        return;
    }
    // Some except lies strictly inside: split in halves and look again.
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for half in halves {
            split(half, &overlapping, out);
        }
    }
}

/// Whether `addr` is in `cidr` and in none of `except`.
pub fn contains(cidr: &IpNet, except: &[IpNet], addr: &std::net::IpAddr) -> bool {
    cidr.contains(addr) && !except.iter().any(|e| e.contains(addr))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subtracts_and_coalesces() {
        assert_eq!(subtract(net("10.0.0.0/8"), &[]), vec![net("10.0.0.0/8")]);
        assert_eq!(subtract(net("10.0.0.0/8"), &[net("10.0.0.0/8")]), Vec::<IpNet>::new());
        assert_eq!(subtract(net("10.0.0.0/30"), &[net("10.0.0.1/32")]), vec![net("10.0.0.0/32"), net("10.0.0.2/31")]);
        let left = subtract(net("10.0.0.0/8"), &[net("10.1.0.0/16"), net("11.0.0.0/8")]);
        assert_eq!(left.len(), 8, "{left:?}");
        assert!(!left.iter().any(|n| n.contains(&net("10.1.2.0/24"))));
    }

    proptest! {
        /// Membership in the result equals membership in the CIDR and in no except.
        #[test]
        fn subtract_is_exact(base in 0u32..=255, len in 20u8..=30, excepts in prop::collection::vec((0u32..1024, 22u8..=32), 0..4), probes in prop::collection::vec(0u32..4096, 16)) {
            let cidr = IpNet::new(IpAddr::V4(Ipv4Addr::from((10 << 24) | (base << 12))), len).unwrap().trunc();
            let except: Vec<IpNet> = excepts
                .iter()
                .map(|(off, l)| IpNet::new(IpAddr::V4(Ipv4Addr::from((10 << 24) | (base << 12) | off)), *l).unwrap().trunc())
                .collect();
            let result = subtract(cidr, &except);
            for p in probes {
                let addr = IpAddr::V4(Ipv4Addr::from((10 << 24) | (base << 12) | p));
                prop_assert_eq!(result.iter().any(|n| n.contains(&addr)), contains(&cidr, &except, &addr));
            }
            // coalesced: no two prefixes overlap or could merge
            prop_assert_eq!(IpNet::aggregate(&result), result.clone());
        }
    }
}
