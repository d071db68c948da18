//! The route table as the controller sends it: each version encoded once for every agent,
//! whole, in parts, and as the changes from the version before; and the agent's side, which
//! puts parts and changes back together into its table.
//!
//! Parts exist for the controller's memory: the gRPC stack encodes each message whole into its
//! stream's buffer and keeps that buffer at the largest size it grew to for as long as the
//! stream lives. At 5,000 nodes a table is some 140 KiB, so every agent's routes stream held a
//! buffer that size (1,067 MiB against 446 MiB in parts, `weft bench fanout --agents 5000`).
//! Changes exist for the traffic: every node that joins changes the table, and each change
//! was the whole table again to every agent (700 MiB at 5,000 agents).

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::v1;

/// One version of the route table, encoded for every agent that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRoutes {
    /// Counts the versions of one controller's table, from 1.
    pub version: u64,
    /// The table in one message, for an agent that did not ask for `incremental`.
    pub whole: Bytes,
    /// The table in parts; at least one.
    pub parts: Vec<Bytes>,
    /// What changed from the version before, in parts; none for the first version.
    pub changes: Option<Vec<Bytes>>,
}

impl EncodedRoutes {
    /// What a stream is sent of this version: the table whole to an agent that did not ask
    /// for `incremental`; else the changes when the stream's last version (`sent`) is the one
    /// before, and the parts when it is not (a stream's first table, or versions it missed).
    pub fn messages(&self, incremental: bool, sent: Option<u64>) -> &[Bytes] {
        match (&self.changes, sent) {
            _ if !incremental => std::slice::from_ref(&self.whole),
            (Some(changes), Some(sent)) if sent + 1 == self.version => changes,
            _ => &self.parts,
        }
    }
}

/// A route's identity in a table: what a withdrawal names.
type RouteKey = (Vec<u8>, u32, String);

fn key(route: &v1::Route) -> RouteKey {
    (route.destination.clone(), route.prefix, route.node.clone())
}

/// The controller's route tables, one version after another.
#[derive(Debug)]
pub struct RouteVersions {
    part_bytes: usize,
    last: Option<(u64, v1::RouteTable)>,
}

impl RouteVersions {
    /// Parts of about `part_bytes` at most: a part holds as many routes as fit (at least one).
    pub fn new(part_bytes: usize) -> RouteVersions {
        RouteVersions { part_bytes, last: None }
    }

    /// The next version, if `table` (its `continued`, `changes` and `withdrawn` ignored) is
    /// not the last one.
    pub fn next(&mut self, table: v1::RouteTable) -> Option<EncodedRoutes> {
        let table = v1::RouteTable { routes: table.routes, cluster: table.cluster, ..Default::default() };
        if self.last.as_ref().is_some_and(|(_, last)| *last == table) {
            return None;
        }
        let all: Vec<&v1::Route> = table.routes.iter().collect();
        let parts = encode_parts(&all, &[], &table.cluster, false, self.part_bytes);
        let changes = self.last.as_ref().map(|(_, before)| {
            let (routes, withdrawn) = changes(before, &table);
            encode_parts(&routes, &withdrawn, &table.cluster, true, self.part_bytes)
        });
        let version = self.last.as_ref().map_or(1, |(v, _)| v + 1);
        let whole = Bytes::from(table.encode_to_vec());
        self.last = Some((version, table));
        Some(EncodedRoutes { version, whole, parts, changes })
    }
}

/// The routes of `after` that `before` does not have as they are, and the routes of `before`
/// that `after` does not have (destination, prefix and node only).
fn changes<'a>(before: &v1::RouteTable, after: &'a v1::RouteTable) -> (Vec<&'a v1::Route>, Vec<v1::Route>) {
    let old: BTreeMap<RouteKey, &v1::Route> = before.routes.iter().map(|r| (key(r), r)).collect();
    let new: BTreeMap<RouteKey, &v1::Route> = after.routes.iter().map(|r| (key(r), r)).collect();
    let routes = new.iter().filter(|(k, r)| old.get(*k) != Some(*r)).map(|(_, r)| *r).collect();
    let withdrawn = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, r)| v1::Route { via: Vec::new(), ..(*r).clone() })
        .collect();
    (routes, withdrawn)
}

/// Bytes of `continued = true` or `changes = true` in a part.
const FLAG_LEN: usize = 2;

/// An update in parts of about `part_bytes` at most, the cluster's networks in the first.
fn encode_parts(
    routes: &[&v1::Route],
    withdrawn: &[v1::Route],
    cluster: &[v1::Prefix],
    changes: bool,
    part_bytes: usize,
) -> Vec<Bytes> {
    let flags = FLAG_LEN * (1 + usize::from(changes));
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let finish = |part: &mut Vec<u8>, continued: bool| {
        if continued {
            prost::encoding::bool::encode(3, &true, part);
        }
        if changes {
            prost::encoding::bool::encode(4, &true, part);
        }
        Bytes::from(std::mem::take(part))
    };
    for prefix in cluster {
        prost::encoding::message::encode(2, prefix, &mut part);
    }
    let items = routes.iter().map(|r| (1, *r)).chain(withdrawn.iter().map(|r| (5, r)));
    for (tag, route) in items {
        let len = prost::encoding::message::encoded_len(tag, route);
        if !part.is_empty() && part.len() + len + flags > part_bytes {
            parts.push(finish(&mut part, true));
        }
        prost::encoding::message::encode(tag, route, &mut part);
    }
    parts.push(finish(&mut part, false));
    parts
}

/// The agent's route table, kept from the updates of its stream, whole or in changes.
#[derive(Debug, Default)]
pub struct RouteFollower {
    routes: BTreeMap<RouteKey, v1::Route>,
    cluster: Vec<v1::Prefix>,
    pending: v1::RouteTable,
}

impl RouteFollower {
    /// Takes the next message of the stream: the table, once the update's last part is in.
    pub fn take(&mut self, part: v1::RouteTable) -> Option<v1::RouteTable> {
        let v1::RouteTable { routes, cluster, continued, changes, withdrawn } = part;
        self.pending.routes.extend(routes);
        self.pending.cluster.extend(cluster);
        self.pending.withdrawn.extend(withdrawn);
        self.pending.changes |= changes;
        if continued {
            return None;
        }
        let update = std::mem::take(&mut self.pending);
        if !update.changes {
            self.routes.clear();
        }
        for gone in &update.withdrawn {
            self.routes.remove(&key(gone));
        }
        for route in update.routes {
            self.routes.insert(key(&route), route);
        }
        self.cluster = update.cluster;
        Some(v1::RouteTable {
            routes: self.routes.values().cloned().collect(),
            cluster: self.cluster.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn route(n: u32, node: u32, via: usize) -> v1::Route {
        v1::Route {
            destination: n.to_be_bytes().to_vec(),
            prefix: 24,
            node: format!("node-{node}"),
            via: (0..via).map(|v| vec![198, 18, 0, v as u8]).collect(),
        }
    }

    fn table(routes: u32, cluster: usize) -> v1::RouteTable {
        v1::RouteTable {
            routes: (0..routes).map(|n| route(n, n, 1 + n as usize % 3)).collect(),
            cluster: (0..cluster).map(|c| v1::Prefix { address: vec![100, 64 + c as u8, 0, 0], length: 16 }).collect(),
            ..Default::default()
        }
    }

    /// What an agent that follows `parts` has after each update.
    fn followed(follower: &mut RouteFollower, parts: &[Bytes]) -> Vec<v1::RouteTable> {
        let mut tables = Vec::new();
        for part in parts {
            let part = v1::RouteTable::decode(part.clone()).unwrap_or_else(|e| panic!("a part does not decode: {e}"));
            tables.extend(follower.take(part));
        }
        tables
    }

    fn sorted(mut table: v1::RouteTable) -> v1::RouteTable {
        table.routes.sort_by_key(key);
        table
    }

    #[test]
    fn a_table_of_five_thousand_nodes_goes_in_parts_the_agent_puts_back_together() {
        let table = table(5_000, 2);
        let encoded = RouteVersions::new(16 << 10).next(table.clone()).unwrap_or_else(|| panic!("no version"));
        assert_eq!((encoded.version, encoded.changes.is_none()), (1, true));
        assert!(encoded.whole.len() > 100 << 10, "the table is {} bytes", encoded.whole.len());
        assert!(encoded.parts.len() > 5, "{} parts", encoded.parts.len());
        assert!(encoded.parts.iter().all(|p| p.len() <= 16 << 10));
        assert_eq!(followed(&mut RouteFollower::default(), &encoded.parts), vec![table.clone()]);
        // An agent of before reads the whole table in one message.
        assert_eq!(v1::RouteTable::decode(encoded.whole.clone()).ok(), Some(table));
    }

    #[test]
    fn a_node_joining_is_one_route_more_to_every_agent_not_the_table_again() {
        let mut versions = RouteVersions::new(16 << 10);
        let before = table(5_000, 1);
        let first = versions.next(before.clone()).unwrap_or_else(|| panic!("no version"));
        assert_eq!(versions.next(before.clone()), None, "the same table is no new version");
        let mut after = before.clone();
        after.routes.push(route(5_000, 5_000, 1));
        let second = versions.next(after.clone()).unwrap_or_else(|| panic!("no version"));
        assert_eq!(second.version, 2);
        let changes = second.changes.clone().unwrap_or_default();
        assert_eq!(changes.len(), 1);
        assert!(changes[0].len() < 64, "{} bytes", changes[0].len());
        let mut agent = RouteFollower::default();
        followed(&mut agent, &first.parts);
        assert_eq!(followed(&mut agent, &changes), vec![after]);
    }

    #[test]
    fn a_stream_is_sent_changes_only_from_the_version_before() {
        let mut versions = RouteVersions::new(16 << 10);
        let next = |versions: &mut RouteVersions, routes| {
            versions.next(table(routes, 1)).unwrap_or_else(|| panic!("no version"))
        };
        let (_, _, third) = (next(&mut versions, 10), next(&mut versions, 11), next(&mut versions, 12));
        let changes = third.changes.clone().unwrap_or_default();
        assert_eq!(third.messages(false, Some(2)), std::slice::from_ref(&third.whole), "an agent of before: whole");
        assert_eq!(third.messages(true, None), third.parts.as_slice(), "a stream's first table: parts");
        assert_eq!(third.messages(true, Some(2)), changes.as_slice());
        assert_eq!(third.messages(true, Some(1)), third.parts.as_slice(), "a version missed: parts");
    }

    #[test]
    fn an_empty_table_is_one_part() {
        let encoded = RouteVersions::new(16 << 10).next(v1::RouteTable::default());
        let encoded = encoded.unwrap_or_else(|| panic!("no version"));
        assert_eq!(encoded.parts.len(), 1);
        assert_eq!(followed(&mut RouteFollower::default(), &encoded.parts), vec![v1::RouteTable::default()]);
    }

    prop_compose! {
        /// A table of up to `n` blocks on nodes 0..8, some moved, some with another address.
        fn any_table(n: u32)(picks in proptest::collection::btree_map(0..n, (0u32..8, 1usize..3), 0..n as usize), cluster in 0usize..3) -> v1::RouteTable {
            v1::RouteTable {
                routes: picks.into_iter().map(|(dest, (node, via))| route(dest, node, via)).collect(),
                cluster: (0..cluster).map(|c| v1::Prefix { address: vec![100, 64 + c as u8, 0, 0], length: 16 }).collect(),
                ..Default::default()
            }
        }
    }

    proptest! {
        #[test]
        fn an_agent_following_changes_has_each_table_and_parts_stay_under_their_size(
            tables in proptest::collection::vec(any_table(300), 1..5), part_bytes in 1usize..2_000,
        ) {
            let mut versions = RouteVersions::new(part_bytes);
            let (mut by_changes, mut whole) = (RouteFollower::default(), RouteFollower::default());
            let mut first = true;
            for table in tables {
                let Some(encoded) = versions.next(table.clone()) else { continue };
                let update = if first { encoded.parts.clone() } else { encoded.changes.clone().unwrap_or_default() };
                first = false;
                prop_assert_eq!(followed(&mut by_changes, &update), vec![sorted(table.clone())]);
                prop_assert_eq!(followed(&mut whole, &encoded.parts), vec![sorted(table)]);
                // A part over the size holds one route only (or only the cluster's networks).
                for part in encoded.parts.iter().chain(&update) {
                    let decoded = v1::RouteTable::decode(part.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(part.len() <= part_bytes || decoded.routes.len() + decoded.withdrawn.len() <= 1, "{} bytes", part.len());
                }
            }
        }
    }
}
