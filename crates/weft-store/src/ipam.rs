//! Address allocation for ports on virtual networks: one address per family of the network's
//! subnets, found next fit — from where the subnet's last allocation stopped, a page of its
//! held addresses at a time through the indexes — so an allocation costs a few index reads
//! whatever the number of addresses held, and an address released is handed out again only
//! after the cursor has come round to it and its grace period has passed (conntrack and
//! neighbour entries elsewhere may still point at it; migrations/0005_ipam_next_fit.sql).
//! Callers hold the network row's lock, so allocations on one network are serialised and never
//! collide; the primary key of `ip_allocations` enforces it regardless.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use uuid::Uuid;
use weft_model::{Subnet, VirtualNetwork};

use crate::error::{ConflictKind, Result, StoreError};

/// How many held addresses one read brings.
const PAGE: i64 = 256;

/// What a transaction that holds a network's row locked has read of its IPAM state and
/// may use again: nobody else claims blocks or moves cursors on that network until it ends.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// A node's blocks on a network, in order, with whether the cluster assigned each.
    blocks: HashMap<(Uuid, String), Vec<(IpNet, bool)>>,
    /// Where a subnet's next allocation starts (None: at its start).
    cursors: HashMap<(Uuid, IpNet), Option<IpNet>>,
    /// Cursors moved and not written yet: written once each, before the transaction commits
    /// or forgets what it knows ([`Known::write`]).
    moved: HashMap<(Uuid, IpNet), IpNet>,
    /// The blocks claimed in a subnet, by first and last address, in order.
    claimed: HashMap<(Uuid, IpNet), Vec<(u128, u128)>>,
    /// What the last read of a subnet's (or block's) held addresses found, with what this
    /// transaction took since: the next allocation there reads nothing while its candidate is
    /// in the window. A batch of a node's 30 pods reads its block once, not 30 times.
    windows: HashMap<(Uuid, IpNet), Window>,
    /// Addresses ports of this transaction name themselves ([`Known::taken`]), by family
    /// (IPv4 or not) and number: a window read before their rows are written must not hand
    /// them out.
    reserved: BTreeSet<(bool, u128)>,
    /// Blocks claimed and not written yet, by network, with their node: written together
    /// with the cursors ([`Known::write`]); until then nobody else reads them (the network's
    /// row is locked) and this transaction knows them (`blocks`, `claimed`).
    new_blocks: Vec<(Uuid, IpNet, String)>,
}

/// A range of a subnet whose held addresses are all known.
#[derive(Debug)]
struct Window {
    from: u128,
    until: u128,
    /// In order.
    held: Vec<u128>,
}

impl Window {
    fn take(&mut self, address: u128) {
        if let Err(at) = self.held.binary_search(&address) {
            self.held.insert(at, address);
        }
    }
}

/// One address from each family the network has subnets of (IPv4 first); on a network split
/// into node blocks, from the blocks of the port's `node`.
pub(crate) async fn allocate(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    known: &mut Known,
    network_id: Uuid,
    vn: &VirtualNetwork,
    node: Option<&str>,
    grace: Duration,
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
        let found = match (&vn.node_blocks, node) {
            (Some(blocks), Some(node)) => from_blocks(tx, known, network_id, &family, blocks, node, grace).await?,
            (Some(_), None) => {
                return Err(StoreError::invalid(
                    "/node",
                    format!("network {:?} gives each node its own addresses: the port needs a node", vn.name),
                ));
            }
            (None, _) => {
                let mut found = None;
                for subnet in family {
                    if let Some(a) = allocate_in(tx, known, network_id, subnet, grace).await? {
                        found = Some(a);
                        break;
                    }
                }
                found
            }
        };
        let family_name = if v4 { "IPv4" } else { "IPv6" };
        match found {
            Some(a) => addresses.push(a),
            None if vn.node_blocks.is_some() => {
                return Err(StoreError::conflict(
                    ConflictKind::AddressesExhausted,
                    format!(
                        "network {:?} has no free {family_name} address in the blocks of node {:?}, and no free block left",
                        vn.name,
                        node.unwrap_or_default()
                    ),
                ));
            }
            None => {
                return Err(StoreError::conflict(
                    ConflictKind::AddressesExhausted,
                    format!("network {:?} has no free {family_name} address left", vn.name),
                ));
            }
        }
    }
    Ok(addresses)
}

/// Reads at once what allocations for ports on `nodes` of a network split into node blocks
/// will need: the nodes' blocks, their cursors, and the addresses held in them. A batch of
/// ports spread over 5,000 nodes asked each node's blocks, cursor and addresses in turn.
pub(crate) async fn prefetch(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    known: &mut Known,
    network_id: Uuid,
    vn: &VirtualNetwork,
    nodes: Vec<String>,
    grace: Duration,
) -> Result<()> {
    let Some(node_blocks) = &vn.node_blocks else { return Ok(()) };
    let nodes: Vec<String> =
        nodes.into_iter().filter(|n| !known.blocks.contains_key(&(network_id, n.clone()))).collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, IpNet, bool)> = sqlx::query_as(
        "SELECT node, block, assigned FROM ip_blocks WHERE network_id = $1 AND node = ANY($2) ORDER BY node, block",
    )
    .bind(network_id)
    .bind(&nodes)
    .fetch_all(&mut **tx)
    .await?;
    for node in &nodes {
        known.blocks.entry((network_id, node.clone())).or_default();
    }
    let mut blocks = Vec::new();
    for (node, block, assigned) in rows {
        if let Some(held) = known.blocks.get_mut(&(network_id, node)) {
            held.push((block, assigned));
        }
        blocks.push(block);
    }
    // A node with no block yet gets one of each family now, as its first port would.
    for node in nodes {
        if known.blocks.get(&(network_id, node.clone())).is_some_and(|held| !held.is_empty()) {
            continue;
        }
        for v4 in [true, false] {
            for subnet in vn.subnets.iter().filter(|s| matches!(s.cidr, IpNet::V4(_)) == v4) {
                let prefix = node_blocks.prefix_for(&subnet.cidr);
                if let Some(block) = claim_block(tx, known, network_id, subnet, prefix, &node).await? {
                    known.blocks.entry((network_id, node.clone())).or_default().push((block, false));
                    blocks.push(block);
                    break;
                }
            }
        }
    }
    let unknown: Vec<IpNet> =
        blocks.iter().copied().filter(|b| !known.cursors.contains_key(&(network_id, *b))).collect();
    if !unknown.is_empty() {
        let cursors: HashMap<IpNet, IpNet> =
            sqlx::query_as("SELECT subnet, next FROM ipam_cursors WHERE network_id = $1 AND subnet = ANY($2::cidr[])")
                .bind(network_id)
                .bind(&unknown)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .collect();
        for block in unknown {
            known.cursors.insert((network_id, block), cursors.get(&block).copied());
        }
    }
    // Small blocks are read whole: a window over each.
    let small: Vec<IpNet> = blocks
        .into_iter()
        .filter(|b| b.max_prefix_len() - b.prefix_len() <= 12 && !known.windows.contains_key(&(network_id, *b)))
        .collect();
    if small.is_empty() {
        return Ok(());
    }
    let (firsts, lasts): (Vec<IpNet>, Vec<IpNet>) =
        small.iter().map(|b| (IpNet::from(b.network()), IpNet::from(b.broadcast()))).unzip();
    let held = held_between(tx, network_id, &firsts, &lasts, grace, i64::MAX).await?;
    let starts: std::collections::BTreeMap<(bool, u128), IpNet> =
        small.iter().map(|b| ((b.network().is_ipv4(), to_u128(b.network())), *b)).collect();
    let mut by_block: HashMap<IpNet, Vec<u128>> = HashMap::new();
    for address in held {
        let a = (address.addr().is_ipv4(), to_u128(address.addr()));
        if let Some((_, block)) = starts.range(..=a).next_back()
            && block.contains(&address.addr())
        {
            by_block.entry(*block).or_default().push(a.1);
        }
    }
    for block in small {
        let (first, last) = host_range(&block);
        let v4 = matches!(block, IpNet::V4(_));
        let window = known.window(v4, first, last, by_block.remove(&block).unwrap_or_default());
        known.windows.insert((network_id, block), window);
    }
    Ok(())
}

/// An address from one of `node`'s blocks of this family, claiming a new block from the
/// subnets when the node has none or they are full — unless the cluster assigned the node
/// blocks of this family: then only those ([`assign`]).
async fn from_blocks(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    known: &mut Known,
    network_id: Uuid,
    family: &[&Subnet],
    blocks: &weft_model::NodeBlocks,
    node: &str,
    grace: Duration,
) -> Result<Option<IpAddr>> {
    let key = (network_id, node.to_string());
    let held = match known.blocks.get(&key) {
        Some(held) => held.clone(),
        None => {
            let held: Vec<(IpNet, bool)> = sqlx::query_as(
                "SELECT block, assigned FROM ip_blocks WHERE network_id = $1 AND node = $2 ORDER BY block",
            )
            .bind(network_id)
            .bind(node)
            .fetch_all(&mut **tx)
            .await?;
            known.blocks.insert(key.clone(), held.clone());
            held
        }
    };
    let in_family = |block: &IpNet| family.iter().any(|s| s.cidr.contains(block));
    let assigned = held.iter().any(|(b, assigned)| *assigned && in_family(b));
    let in_block = |block: IpNet| {
        let subnet = family.iter().find(|s| s.cidr.contains(&block))?;
        Some(Subnet { cidr: block, gateway: subnet.gateway.filter(|g| block.contains(g)) })
    };
    let usable = held.into_iter().filter(|(_, a)| *a || !assigned).map(|(b, _)| b);
    for block in usable.filter_map(in_block) {
        if let Some(a) = allocate_in(tx, known, network_id, &block, grace).await? {
            return Ok(Some(a));
        }
    }
    if assigned {
        return Ok(None);
    }
    for subnet in family {
        let Some(block) = claim_block(tx, known, network_id, subnet, blocks.prefix_for(&subnet.cidr), node).await?
        else {
            continue;
        };
        let held = known.blocks.entry(key.clone()).or_default();
        held.push((block, false));
        held.sort();
        if let Some(block) = in_block(block)
            && let Some(a) = allocate_in(tx, known, network_id, &block, grace).await?
        {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// Claims for `node` the lowest block of `subnet` (of `/prefix`) that overlaps no claimed one.
/// Reads the subnet's claimed blocks: a few thousand rows at most (one or two per node), and
/// only when a node needs a new block.
async fn claim_block(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    known: &mut Known,
    network_id: Uuid,
    subnet: &Subnet,
    prefix: u8,
    node: &str,
) -> Result<Option<IpNet>> {
    let claimed = match known.claimed.entry((network_id, subnet.cidr)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let claimed: Vec<IpNet> =
                sqlx::query_scalar("SELECT block FROM ip_blocks WHERE network_id = $1 AND block <<= $2 ORDER BY block")
                    .bind(network_id)
                    .bind(subnet.cidr)
                    .fetch_all(&mut **tx)
                    .await?;
            e.insert(claimed.iter().map(|b| (to_u128(b.network()), to_u128(b.broadcast()))).collect())
        }
    };
    let Some(start) = free_block(&subnet.cidr, prefix, claimed) else { return Ok(None) };
    let v4 = matches!(subnet.cidr, IpNet::V4(_));
    let block =
        IpNet::new(from_u128(v4, start), prefix).map_err(|e| StoreError::invalid("/node_blocks", e.to_string()))?;
    known.new_blocks.push((network_id, block, node.to_string()));
    claimed.push((to_u128(block.network()), to_u128(block.broadcast())));
    claimed.sort_unstable();
    Ok(Some(block))
}

/// The first address of the lowest `/prefix` block of `cidr` that overlaps none of `claimed`
/// (first and last addresses, in order).
fn free_block(cidr: &IpNet, prefix: u8, claimed: &[(u128, u128)]) -> Option<u128> {
    if prefix < cidr.prefix_len() || prefix > cidr.max_prefix_len() {
        return None;
    }
    let step = 1u128 << (cidr.max_prefix_len() - prefix);
    let (base, end) = (to_u128(cidr.network()), to_u128(cidr.broadcast()));
    let mut start = base;
    let mut claimed = claimed.iter().peekable();
    while start <= end && end - start >= step - 1 {
        let last = start + (step - 1);
        while claimed.next_if(|(_, e)| *e < start).is_some() {}
        match claimed.peek() {
            Some(&&(s, e)) if s <= last => {
                // Overlaps a claimed block: the next candidate starts past it, aligned.
                start = base + ((e - base) / step + 1) * step;
            }
            _ => return Some(start),
        }
    }
    None
}

/// The next free address of one subnet, from its cursor to its end and then from its start:
/// the cursor moves past it.
async fn allocate_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    known: &mut Known,
    network_id: Uuid,
    subnet: &Subnet,
    grace: Duration,
) -> Result<Option<IpAddr>> {
    let v4 = matches!(subnet.cidr, IpNet::V4(_));
    let (first, last) = host_range(&subnet.cidr);
    let gateway = subnet.gateway.map(to_u128);
    let cursor = match known.cursors.get(&(network_id, subnet.cidr)) {
        Some(cursor) => *cursor,
        None => {
            let cursor: Option<IpNet> =
                sqlx::query_scalar("SELECT next FROM ipam_cursors WHERE network_id = $1 AND subnet = $2")
                    .bind(network_id)
                    .bind(subnet.cidr)
                    .fetch_optional(&mut **tx)
                    .await?;
            known.cursors.insert((network_id, subnet.cidr), cursor);
            cursor
        }
    };
    let start = cursor.map(|c| to_u128(c.addr())).filter(|c| (first..=last).contains(c)).unwrap_or(first);
    let mut rounds = vec![(start, last)];
    if start > first {
        rounds.push((first, start - 1));
    }
    let key = (network_id, subnet.cidr);
    for (from, to) in rounds {
        let mut candidate = from;
        loop {
            if let Some(window) = known.windows.get_mut(&key)
                && (window.from..=window.until).contains(&candidate)
            {
                let until = window.until.min(to);
                if let Scan::Free(a) = scan(candidate, until, gateway, &window.held, true) {
                    window.take(a);
                    known.advance(key, v4, if a >= last { first } else { a + 1 });
                    return Ok(Some(from_u128(v4, a)));
                }
                if until >= to {
                    break;
                }
                candidate = until + 1;
            }
            let (lo, hi) = (IpNet::from(from_u128(v4, candidate)), IpNet::from(from_u128(v4, to)));
            let held = held_between(tx, network_id, &[lo], &[hi], grace, PAGE).await?;
            let held: Vec<u128> = held.iter().map(|n| to_u128(n.addr())).collect();
            let complete = held.len() < PAGE as usize;
            let until = if complete { to } else { held.last().copied().unwrap_or(to).min(to) };
            let window = known.window(v4, candidate, until, held);
            let found = scan(candidate, to, gateway, &window.held, complete);
            let window = known.windows.entry(key).insert_entry(window).into_mut();
            match found {
                Scan::Free(a) => {
                    window.take(a);
                    known.advance(key, v4, if a >= last { first } else { a + 1 });
                    return Ok(Some(from_u128(v4, a)));
                }
                Scan::From(next) => candidate = next,
                Scan::Exhausted => break,
            }
        }
    }
    Ok(None)
}

/// The addresses held in each range `lo[i]..=hi[i]` of a network, at most `limit` a range in
/// order (duplicates possible): allocated on it, claimed by any port, or released on it
/// within `grace`. A range scan of each index per range (LATERAL), whatever the planner
/// thinks of the arrays' sizes.
async fn held_between(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    network_id: Uuid,
    lo: &[IpNet],
    hi: &[IpNet],
    grace: Duration,
    limit: i64,
) -> Result<Vec<IpNet>> {
    Ok(sqlx::query_scalar(
        "SELECT x.address FROM unnest($2::inet[], $3::inet[]) AS r(lo, hi), LATERAL ( \
           SELECT h.address FROM ( \
             SELECT a.address FROM ip_allocations a WHERE a.network_id = $1 AND a.address >= r.lo AND a.address <= r.hi \
             UNION ALL SELECT p.address FROM port_addresses p WHERE p.address >= r.lo AND p.address <= r.hi \
             UNION ALL SELECT d.address FROM ip_released d WHERE d.network_id = $1 AND d.address >= r.lo \
                   AND d.address <= r.hi AND d.released_at > now() - make_interval(secs => $4)) h \
           ORDER BY 1 LIMIT $5) x",
    )
    .bind(network_id)
    .bind(lo)
    .bind(hi)
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

impl Known {
    /// A window over `from..=until` holding `held` and what this transaction reserved there.
    fn window(&self, v4: bool, from: u128, until: u128, mut held: Vec<u128>) -> Window {
        held.extend(self.reserved.range((v4, from)..=(v4, until)).map(|(_, a)| *a));
        held.sort_unstable();
        held.dedup();
        Window { from, until, held }
    }

    fn advance(&mut self, key: (Uuid, IpNet), v4: bool, next: u128) {
        let next = IpNet::from(from_u128(v4, next));
        self.cursors.insert(key, Some(next));
        self.moved.insert(key, next);
    }

    /// Addresses this transaction claims otherwise than by allocating them (ports that name
    /// their own): nothing may hand them out, though their rows are not written yet.
    pub(crate) fn taken(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        for address in addresses {
            let a = to_u128(address);
            self.reserved.insert((address.is_ipv4(), a));
            for ((_, range), window) in &mut self.windows {
                if range.contains(&address) && (window.from..=window.until).contains(&a) {
                    window.take(a);
                }
            }
        }
    }

    /// Writes the cursors moved since the last write, in one statement.
    pub(crate) async fn write(&mut self, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> Result<()> {
        if !self.new_blocks.is_empty() {
            let (mut networks, mut blocks, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
            for (network, block, node) in self.new_blocks.drain(..) {
                networks.push(network);
                blocks.push(block);
                nodes.push(node);
            }
            sqlx::query(
                "INSERT INTO ip_blocks (network_id, block, node) SELECT * FROM unnest($1::uuid[], $2::cidr[], $3::text[])",
            )
            .bind(networks)
            .bind(blocks)
            .bind(nodes)
            .execute(&mut **tx)
            .await?;
        }
        if self.moved.is_empty() {
            return Ok(());
        }
        let (mut networks, mut subnets, mut nexts) = (Vec::new(), Vec::new(), Vec::new());
        for ((network, subnet), next) in self.moved.drain() {
            networks.push(network);
            subnets.push(subnet);
            nexts.push(next);
        }
        sqlx::query(
            "INSERT INTO ipam_cursors (network_id, subnet, next) \
             SELECT * FROM unnest($1::uuid[], $2::cidr[], $3::inet[]) \
             ON CONFLICT (network_id, subnet) DO UPDATE SET next = EXCLUDED.next",
        )
        .bind(networks)
        .bind(subnets)
        .bind(nexts)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// What one page of held addresses says about `[candidate, to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// This address is free.
    Free(u128),
    /// Everything before this address is taken; the next page starts here.
    From(u128),
    /// Nothing is free up to `to`.
    Exhausted,
}

/// Looks for a free address from `candidate` on, given the held addresses from there in order
/// (`held`), which are all of them up to `to` when `complete`, else those up to the page's
/// last. The gateway is never free.
fn scan(candidate: u128, to: u128, gateway: Option<u128>, held: &[u128], complete: bool) -> Scan {
    let known_until = if complete { to } else { held.last().copied().unwrap_or(to).min(to) };
    let mut c = candidate;
    let mut held = held.iter().copied().peekable();
    while c <= known_until {
        if Some(c) == gateway {
            c += 1;
            continue;
        }
        while held.next_if(|&a| a < c).is_some() {}
        if held.peek() == Some(&c) {
            c += 1;
            continue;
        }
        return Scan::Free(c);
    }
    if c > to { Scan::Exhausted } else { Scan::From(c) }
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

/// The lowest address of `subnet` that is neither held (`held` is sorted, all of them) nor the
/// gateway.
#[cfg(test)]
fn first_free(subnet: &Subnet, held: &[u128]) -> Option<IpAddr> {
    let (first, last) = host_range(&subnet.cidr);
    match scan(first, last, subnet.gateway.map(to_u128), held, true) {
        Scan::Free(a) => Some(from_u128(matches!(subnet.cidr, IpNet::V4(_)), a)),
        _ => None,
    }
}

/// Makes `blocks` the blocks the cluster assigned `node` on the network (Kubernetes'
/// Node.spec.podCIDRs): each must be a network address within the network's subnets. A block
/// weft had claimed for the node that overlaps one is given up if it holds no address; one of
/// another node's that overlaps is a conflict. Blocks assigned before and not now are given up
/// if empty, and kept as claimed ones otherwise. The node's blocks on the network, after.
pub(crate) async fn assign(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    network_id: Uuid,
    vn: &VirtualNetwork,
    node: &str,
    blocks: &[IpNet],
) -> Result<Vec<IpNet>> {
    for (i, block) in blocks.iter().enumerate() {
        let pointer = format!("/blocks/{i}");
        if block.trunc() != *block {
            return Err(StoreError::invalid(
                &pointer,
                format!("{block} is not a network address (it is in {})", block.trunc()),
            ));
        }
        if !vn.subnets.iter().any(|s| s.cidr.contains(block)) {
            return Err(StoreError::invalid(
                &pointer,
                format!("{block} is not within network {:?}'s subnets", vn.name),
            ));
        }
        if let Some(j) = blocks[..i].iter().position(|b| b.contains(block) || block.contains(b)) {
            return Err(StoreError::invalid(&pointer, format!("{block} overlaps /blocks/{j}")));
        }
    }
    let overlapping: Vec<(IpNet, String, bool)> = sqlx::query_as(
        "SELECT k.block, k.node, EXISTS (SELECT 1 FROM ip_allocations a \
                WHERE a.network_id = k.network_id AND a.address <<= k.block) \
         FROM ip_blocks k WHERE k.network_id = $1 AND k.block && ANY($2::cidr[]) ORDER BY k.block",
    )
    .bind(network_id)
    .bind(blocks)
    .fetch_all(&mut **tx)
    .await?;
    let mut given_up = Vec::new();
    for (held, owner, used) in overlapping {
        if owner != node {
            return Err(StoreError::conflict(
                ConflictKind::BlockInUse,
                format!("{held} of network {:?} is node {owner:?}'s: it cannot be node {node:?}'s too", vn.name),
            ));
        }
        if !blocks.contains(&held) {
            if used {
                return Err(StoreError::conflict(
                    ConflictKind::BlockInUse,
                    format!("node {node:?}'s block {held} overlaps the assignment and still holds addresses"),
                ));
            }
            given_up.push(held);
        }
    }
    sqlx::query("DELETE FROM ip_blocks WHERE network_id = $1 AND node = $2 AND block = ANY($3::cidr[])")
        .bind(network_id)
        .bind(node)
        .bind(&given_up)
        .execute(&mut **tx)
        .await?;
    // What was assigned before and is not now: given up when empty, else kept as claimed.
    sqlx::query(
        "WITH old AS (SELECT k.block, EXISTS (SELECT 1 FROM ip_allocations a \
                      WHERE a.network_id = k.network_id AND a.address <<= k.block) AS used \
                      FROM ip_blocks k WHERE k.network_id = $1 AND k.node = $2 AND k.assigned \
                      AND NOT k.block = ANY($3::cidr[])), \
         gone AS (DELETE FROM ip_blocks k USING old WHERE k.network_id = $1 AND k.block = old.block AND NOT old.used) \
         UPDATE ip_blocks k SET assigned = false FROM old WHERE k.network_id = $1 AND k.block = old.block AND old.used",
    )
    .bind(network_id)
    .bind(node)
    .bind(blocks)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO ip_blocks (network_id, block, node, assigned) SELECT $1, b, $2, true FROM unnest($3::cidr[]) b \
         ON CONFLICT (network_id, block) DO UPDATE SET assigned = true",
    )
    .bind(network_id)
    .bind(node)
    .bind(blocks)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_scalar("SELECT block FROM ip_blocks WHERE network_id = $1 AND node = $2 ORDER BY block")
        .bind(network_id)
        .bind(node)
        .fetch_all(&mut **tx)
        .await?)
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

    #[test]
    fn blocks_are_claimed_lowest_first_around_those_taken() {
        let net: IpNet = "10.0.0.0/22".parse().unwrap();
        let block = |s: &str| {
            let b: IpNet = s.parse().unwrap();
            (to_u128(b.network()), to_u128(b.broadcast()))
        };
        let at = |s: &str| Some(to_u128(s.parse().unwrap()));
        assert_eq!(free_block(&net, 24, &[]), at("10.0.0.0"));
        assert_eq!(free_block(&net, 24, &[block("10.0.0.0/24"), block("10.0.2.0/24")]), at("10.0.1.0"));
        // A smaller block claimed before the size changed still blocks its /24.
        assert_eq!(free_block(&net, 24, &[block("10.0.0.0/24"), block("10.0.1.128/25")]), at("10.0.2.0"));
        let all: Vec<_> = ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"].map(block).to_vec();
        assert_eq!(free_block(&net, 24, &all), None);
        assert_eq!(free_block(&net, 21, &[]), None, "a block larger than the subnet");
        let v6: IpNet = "fd00::/64".parse().unwrap();
        assert_eq!(free_block(&v6, 80, &[block("fd00::/80")]), at("fd00::1:0:0:0"));
    }

    #[test]
    fn a_full_page_says_where_the_next_one_starts() {
        let gw = Some(1);
        // Held 2..=5 on a page of 4: nothing known free, the next page starts at 6.
        assert_eq!(scan(2, 100, gw, &[2, 3, 4, 5], false), Scan::From(6));
        // A gap inside a full page is free.
        assert_eq!(scan(2, 100, gw, &[2, 4, 5, 6], false), Scan::Free(3));
        // The gateway is skipped; past `to` nothing is free.
        assert_eq!(scan(1, 100, gw, &[2, 3], true), Scan::Free(4));
        assert_eq!(scan(1, 3, gw, &[2, 3], true), Scan::Exhausted);
        assert_eq!(scan(98, 100, None, &[98, 99, 100], false), Scan::Exhausted);
        assert_eq!(scan(5, 4, None, &[], true), Scan::Exhausted);
    }
}
