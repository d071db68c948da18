//! Masquerade (DESIGN.md §9): pod traffic leaving the cluster's pod networks leaves the node
//! with the node's address, as Calico's `natOutgoing` and Antrea's do: what lies outside the
//! cluster (the internet, the nodes' own network) has no route back to a pod's address.
//! Traffic between pods keeps its addresses: policy on the far side sees the real peer.
//!
//! A table of its own, `inet weft-nat`, apart from the filter table the span renders: it
//! changes with the cluster's networks, not with policy, so the filter render, its diff and
//! its property tests stay as they are. It holds a rule or two per network, so it is replaced
//! whole, in one transaction, each time it changes; with no cluster network (or masquerade
//! turned off) there is no table at all.

use ipnet::IpNet;

use super::batch::{
    Batch, NF_ACCEPT, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWTABLE, NFTA_CHAIN_HOOK,
    NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY, NFTA_CHAIN_TABLE, NFTA_CHAIN_TYPE, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY,
    NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_TABLE_NAME, NLM_F_APPEND, NLM_F_CREATE,
};
use super::expr::{Field, Left, Op, Right, Stmt};
use super::wire::{NLA_F_NESTED, attr, attr_str};

/// The table: `inet weft-nat`.
pub const NAT_TABLE: &str = "weft-nat";
/// Its one chain, a nat chain on the postrouting hook.
pub const NAT_CHAIN: &str = "postrouting";
const NF_INET_POST_ROUTING: u32 = 4;
/// nft's `srcnat` priority.
const SRCNAT: i32 = 100;

/// The chain's rules: traffic to a cluster network is left as it is; traffic from one to
/// anywhere else is masqueraded (and counted, so `nft list` shows how much left the cluster).
pub fn rules(cluster: &[IpNet]) -> Vec<Vec<Stmt>> {
    let matching = |p: &IpNet, field: &'static str| Stmt::Match {
        op: Op::Eq,
        left: Left::Field(Field::Payload(if p.addr().is_ipv4() { "ip" } else { "ip6" }, field)),
        right: Right::Prefix(p.trunc()),
    };
    let inside = cluster.iter().map(|p| vec![matching(p, "daddr"), Stmt::Accept]);
    let leaving = cluster.iter().map(|p| vec![matching(p, "saddr"), Stmt::Counter, Stmt::Masquerade]);
    inside.chain(leaving).collect()
}

/// The transaction that leaves `inet weft-nat` holding exactly the rules for `cluster`, or
/// removes it when `cluster` is empty. Adding a table that exists does nothing, so the
/// delete after it never fails on a node that had none.
pub fn batch(cluster: &[IpNet]) -> Result<Batch, String> {
    let mut batch = Batch::default();
    let table = || {
        let mut a = Vec::new();
        attr_str(&mut a, NFTA_TABLE_NAME, NAT_TABLE);
        a
    };
    batch.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, table());
    batch.push(NFT_MSG_DELTABLE, 0, table());
    if cluster.is_empty() {
        return Ok(batch);
    }
    batch.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, table());
    let mut chain = Vec::new();
    attr_str(&mut chain, NFTA_CHAIN_TABLE, NAT_TABLE);
    attr_str(&mut chain, NFTA_CHAIN_NAME, NAT_CHAIN);
    let mut hook = Vec::new();
    attr(&mut hook, NFTA_HOOK_HOOKNUM, &NF_INET_POST_ROUTING.to_be_bytes());
    attr(&mut hook, NFTA_HOOK_PRIORITY, &SRCNAT.to_be_bytes());
    attr(&mut chain, NFTA_CHAIN_HOOK | NLA_F_NESTED, &hook);
    attr(&mut chain, NFTA_CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
    attr_str(&mut chain, NFTA_CHAIN_TYPE, "nat");
    batch.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, chain);
    for stmts in rules(cluster) {
        let mut rule = Vec::new();
        attr_str(&mut rule, NFTA_RULE_TABLE, NAT_TABLE);
        attr_str(&mut rule, NFTA_RULE_CHAIN, NAT_CHAIN);
        attr(&mut rule, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &super::bytecode::compile(&stmts)?);
        batch.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, rule);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_traffic_keeps_its_addresses_and_traffic_leaving_it_is_masqueraded() {
        let cluster: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap(), "fd44::/64".parse().unwrap()];
        let text: Vec<String> = rules(&cluster).iter().map(|r| super::super::expr::to_json_text(r)).collect();
        assert_eq!(text.len(), 4);
        // Every exemption comes before any masquerade, so pod-to-pod traffic of either family
        // is never rewritten.
        assert!(text[0].contains(r#""field":"daddr","protocol":"ip""#) && text[0].contains("accept"), "{}", text[0]);
        assert!(text[1].contains(r#""field":"daddr","protocol":"ip6""#) && text[1].contains("accept"), "{}", text[1]);
        assert!(
            text[2].contains(r#""field":"saddr","protocol":"ip""#) && text[2].contains("masquerade"),
            "{}",
            text[2]
        );
        assert!(
            text[3].contains(r#""field":"saddr","protocol":"ip6""#) && text[3].contains("masquerade"),
            "{}",
            text[3]
        );
        assert!(text[2].contains(r#""addr":"10.244.0.0","len":16"#), "{}", text[2]);
    }

    #[test]
    fn no_cluster_network_is_no_table() {
        let batch = batch(&[]).unwrap();
        assert_eq!(batch.messages_of(NFT_MSG_NEWTABLE).len(), 1);
        assert_eq!(batch.messages_of(NFT_MSG_DELTABLE).len(), 1);
        assert!(batch.messages_of(NFT_MSG_NEWCHAIN).is_empty());
        let cluster = ["10.244.0.0/16".parse().unwrap()];
        let full = super::batch(&cluster).unwrap();
        assert_eq!(full.messages_of(NFT_MSG_NEWRULE).len(), 2);
    }
}
