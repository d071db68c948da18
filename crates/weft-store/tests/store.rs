//! The store against a real PostgreSQL: a fresh, migrated database per test (`#[sqlx::test]`).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::json;
use sqlx::PgPool;
use weft_model::{Kind, Resource};
use weft_store::tokens::Role;
use weft_store::{ChangeOp, ConflictKind, ListQuery, ObjectKey, Store, StoreError};

fn resource(kind: Kind, body: serde_json::Value) -> Resource {
    Resource::from_json(kind, body).expect("test body decodes")
}

fn by_name(project: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::Name { project: project.map(String::from), name: name.to_string() }
}

async fn create(store: &Store, kind: Kind, body: serde_json::Value) -> Result<weft_store::StoredObject, StoreError> {
    let mut txn = store.begin().await?;
    let mut object = txn.create(resource(kind, body)).await?;
    object.revision = txn.commit().await?;
    Ok(object)
}

async fn project(store: &Store, name: &str) {
    create(store, Kind::Project, json!({"name": name})).await.expect("project created");
}

fn conflict(e: StoreError) -> ConflictKind {
    match e {
        StoreError::Conflict { kind, .. } => kind,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn invalid_pointers(e: StoreError) -> Vec<String> {
    match e {
        StoreError::Invalid(v) => v.errors.into_iter().map(|e| e.pointer).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn project_comes_with_its_default_group(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "k8s-default").await;
    let sg = store.get(Kind::SecurityGroup, &by_name(Some("k8s-default"), "default")).await.unwrap().unwrap();
    let Resource::SecurityGroup(sg) = sg.decode().unwrap() else { panic!("not a group") };
    assert_eq!(sg.rules.len(), 2);
    assert!(sg.rules.iter().all(|r| r.id.is_some()));
    // One transaction, one revision: the project and its group share it.
    let page = store.changes_since(0, 100).await.unwrap();
    assert_eq!(page.changes.len(), 2);
    assert!(page.changes.iter().all(|c| c.revision == 1));
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn crud_of_every_resource(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    let net = create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "net", "project": "p", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}]}),
    )
    .await
    .unwrap();
    let sg = create(&store, Kind::SecurityGroup, json!({"name": "web", "project": "p", "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80], "remote": {"type": "security_group", "security_group": "web"}}]})).await.unwrap();
    let port = create(
        &store,
        Kind::Port,
        json!({"name": "vm1", "project": "p", "network": "net", "node": "node-1", "security_groups": ["web"]}),
    )
    .await
    .unwrap();
    let Resource::Port(p) = port.decode().unwrap() else { panic!() };
    assert_eq!(p.ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);

    // get by id and by name agree
    let by_id = store.get(Kind::Port, &ObjectKey::Id(port.id)).await.unwrap().unwrap();
    assert_eq!(by_id, store.get(Kind::Port, &by_name(Some("p"), "vm1")).await.unwrap().unwrap());
    assert_eq!(by_id.revision, port.revision);
    // a kind mismatch is not found
    assert!(store.get(Kind::SecurityGroup, &ObjectKey::Id(port.id)).await.unwrap().is_none());

    // replace keeps id, created_at and the allocated address, moves the revision
    let mut txn = store.begin().await.unwrap();
    let replaced = txn
        .replace(
            Kind::Port,
            &ObjectKey::Id(port.id),
            resource(Kind::Port, json!({"name": "vm1", "project": "p", "network": "net", "labels": {"app": "x"}})),
            Some(port.revision),
        )
        .await
        .unwrap();
    let rev = txn.commit().await.unwrap();
    let now = store.get(Kind::Port, &ObjectKey::Id(port.id)).await.unwrap().unwrap();
    assert_eq!(now.revision, rev);
    assert_eq!(now.created_at, port.created_at);
    let Resource::Port(p) = now.decode().unwrap() else { panic!() };
    assert_eq!(p.ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(p.security_groups, Some(vec!["default".to_string()]), "omitted groups mean [default]");
    assert_eq!(replaced.id, port.id);

    // name changes are refused
    let mut txn = store.begin().await.unwrap();
    let e = txn
        .replace(
            Kind::VirtualNetwork,
            &ObjectKey::Id(net.id),
            resource(Kind::VirtualNetwork, json!({"name": "other", "project": "p"})),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/name"]);
    drop(txn);

    // a stale If-Match is refused
    let mut txn = store.begin().await.unwrap();
    let e = txn.delete(Kind::Port, &ObjectKey::Id(port.id), false, Some(port.revision)).await.unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { current, .. } if current == rev));
    drop(txn);

    // delete everything, children first
    for (kind, id) in [(Kind::Port, port.id), (Kind::SecurityGroup, sg.id), (Kind::VirtualNetwork, net.id)] {
        let mut txn = store.begin().await.unwrap();
        txn.delete(kind, &ObjectKey::Id(id), false, None).await.unwrap();
        txn.commit().await.unwrap();
        assert!(store.get(kind, &ObjectKey::Id(id)).await.unwrap().is_none());
    }
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Project, &by_name(None, "p"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    let page = store.list(Kind::SecurityGroup, &ListQuery::default()).await.unwrap();
    assert!(page.items.is_empty(), "the default group goes with its project");
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn duplicates_and_missing_references(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    let e = create(&store, Kind::Project, json!({"name": "p"})).await.unwrap_err();
    assert_eq!(conflict(e), ConflictKind::Duplicate);
    let e = create(&store, Kind::VirtualNetwork, json!({"name": "n", "project": "nope"})).await.unwrap_err();
    assert_eq!(invalid_pointers(e), ["/project"]);
    let e = create(&store, Kind::Port, json!({"name": "x", "project": "p", "security_groups": ["default", "missing"]}))
        .await
        .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/security_groups/1"]);
    let e = create(&store, Kind::Port, json!({"name": "x", "project": "p", "network": "missing"})).await.unwrap_err();
    assert_eq!(invalid_pointers(e), ["/network"]);
    let e = create(&store, Kind::SecurityGroup, json!({"name": "g", "project": "p", "rules": [{"direction": "ingress"}, {"direction": "egress", "remote": {"type": "security_group", "security_group": "missing"}}]})).await.unwrap_err();
    assert_eq!(invalid_pointers(e), ["/rules/1/remote/security_group"]);
    // nothing of the failed writes was kept
    assert!(store.changes_since(1, 1000).await.unwrap().changes.is_empty());
    assert_eq!(store.list(Kind::Project, &ListQuery::default()).await.unwrap().items.len(), 1);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn referenced_objects_cannot_be_deleted(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "a").await;
    project(&store, "b").await;
    create(&store, Kind::SecurityGroup, json!({"name": "db", "project": "a"})).await.unwrap();
    create(&store, Kind::SecurityGroup, json!({"name": "app", "project": "a", "rules": [{"direction": "egress", "remote": {"type": "security_group", "security_group": "db"}}]})).await.unwrap();
    let mut txn = store.begin().await.unwrap();
    let e = txn.delete(Kind::SecurityGroup, &by_name(Some("a"), "db"), false, None).await.unwrap_err();
    assert!(e.to_string().contains("security-group a/app"), "{e}");
    assert_eq!(conflict(e), ConflictKind::InUse);
    drop(txn);
    // Another project's rule names a group without holding it (issue 17): a tenant cannot keep
    // another from deleting its own group, nor learn whether it exists.
    create(
        &store,
        Kind::SecurityGroup,
        json!({"name": "spy", "project": "b", "rules": [
        {"direction": "egress", "remote": {"type": "security_group", "security_group": "a/app"}},
        {"direction": "egress", "remote": {"type": "security_group", "security_group": "a/never"}}]}),
    )
    .await
    .unwrap();
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::SecurityGroup, &by_name(Some("a"), "app"), false, None).await.unwrap();
    txn.delete(Kind::Project, &by_name(None, "a"), true, None).await.unwrap();
    txn.commit().await.unwrap();
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn projects_and_networks_with_children_need_cascade(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    create(&store, Kind::VirtualNetwork, json!({"name": "net", "project": "p", "subnets": [{"cidr": "10.0.0.0/24"}]}))
        .await
        .unwrap();
    create(&store, Kind::Port, json!({"name": "vm1", "project": "p", "network": "net"})).await.unwrap();
    let before = store.current_revision().await.unwrap();

    let mut txn = store.begin().await.unwrap();
    let e = txn.delete(Kind::VirtualNetwork, &by_name(Some("p"), "net"), false, None).await.unwrap_err();
    assert!(e.to_string().contains("port vm1"), "{e}");
    assert_eq!(conflict(e), ConflictKind::HasChildren);
    drop(txn);
    let mut txn = store.begin().await.unwrap();
    let e = txn.delete(Kind::Project, &by_name(None, "p"), false, None).await.unwrap_err();
    assert_eq!(conflict(e), ConflictKind::HasChildren);
    drop(txn);

    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Project, &by_name(None, "p"), true, None).await.unwrap();
    let rev = txn.commit().await.unwrap();
    let page = store.changes_since(before, 10).await.unwrap();
    let mut kinds: Vec<Kind> = page.changes.iter().map(|c| c.object.kind).collect();
    kinds.sort();
    assert_eq!(kinds, [Kind::Project, Kind::VirtualNetwork, Kind::SecurityGroup, Kind::Port]);
    assert!(page.changes.iter().all(|c| c.revision == rev && c.op == ChangeOp::Delete));
    assert_eq!(page.changes.first().map(|c| c.object.kind), Some(Kind::Port), "ports go first");
    assert_eq!(page.changes.last().map(|c| c.object.kind), Some(Kind::Project), "the project goes last");
    for kind in Kind::ALL {
        assert!(store.list(kind, &ListQuery::default()).await.unwrap().items.is_empty(), "{kind} left behind");
    }
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn ipam_hands_out_first_free_addresses_concurrently(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    // 10.0.0.0/24 with a gateway: 253 allocatable IPv4 addresses; plus an IPv6 subnet.
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "net", "project": "p", "subnets": [
        {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}, {"cidr": "fd00::/120", "gateway": "fd00::1"}]}),
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                create(&store, Kind::Port, json!({"name": format!("vm{i}"), "project": "p", "network": "net"})).await
            })
        })
        .collect();
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for t in tasks {
        let Resource::Port(port) = t.await.unwrap().unwrap().decode().unwrap() else { panic!() };
        assert_eq!(port.ips.len(), 2, "one address per family");
        for ip in port.ips {
            let fresh = match ip {
                IpAddr::V4(a) => v4.insert(u32::from(a)),
                IpAddr::V6(a) => v6.insert(u128::from(a)),
            };
            assert!(fresh, "{ip} handed out twice");
        }
    }
    // no duplicate and no gap: exactly .2 to .201
    let first4 = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(v4, (first4..first4 + 200).collect());
    let first6 = u128::from("fd00::2".parse::<std::net::Ipv6Addr>().unwrap());
    assert_eq!(v6, (first6..first6 + 200).collect());

    // A port deleted releases its addresses, and the next allocation goes on from where the
    // last one stopped (next fit): the released address waits out its grace period.
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Port, &by_name(Some("p"), "vm7"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    let Resource::Port(port) = create(&store, Kind::Port, json!({"name": "again", "project": "p", "network": "net"}))
        .await
        .unwrap()
        .decode()
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(port.ips, ["10.0.0.202".parse::<IpAddr>().unwrap(), "fd00::ca".parse().unwrap()]);

    // an address asked for explicitly must be free and inside the network
    let e = create(&store, Kind::Port, json!({"name": "taken", "project": "p", "network": "net", "ips": ["10.0.0.2"]}))
        .await
        .unwrap_err();
    assert_eq!(conflict(e), ConflictKind::AddressInUse);
    let e =
        create(&store, Kind::Port, json!({"name": "outside", "project": "p", "network": "net", "ips": ["10.9.0.2"]}))
            .await
            .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/ips/0"]);
    let e = create(&store, Kind::Port, json!({"name": "gw", "project": "p", "network": "net", "ips": ["10.0.0.1"]}))
        .await
        .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/ips/0"]);
}

/// Projects `k8s-cluster` and `k8s-a`, and the shared network `k8s-cluster/pods` of `cidr` in
/// /24 blocks per node.
async fn pod_network(store: &Store, cidr: &str) {
    for p in ["k8s-cluster", "k8s-a"] {
        project(store, p).await;
    }
    create(
        store,
        Kind::VirtualNetwork,
        json!({"name": "pods", "project": "k8s-cluster", "shared": true, "node_blocks": {"ipv4": 24},
               "subnets": [{"cidr": cidr}]}),
    )
    .await
    .unwrap();
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_node_the_cluster_assigned_blocks_gets_its_addresses_only_from_them(pool: PgPool) {
    let store = Store::from_pool(pool);
    pod_network(&store, "10.244.0.0/16").await;
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let pod = |name: &str, node: &str| json!({"name": name, "project": "k8s-a", "network": "k8s-cluster/pods", "node": node, "security_groups": []});
    let assign = |node: &'static str, blocks: &[&str]| {
        let blocks: Vec<ipnet::IpNet> = blocks.iter().map(|b| net(b)).collect();
        let store = store.clone();
        async move { store.assign_node_blocks("k8s-cluster/pods", node, &blocks).await }
    };
    // n1 claims a block of weft's choosing; n2, assigned one, takes its addresses from it.
    assert_eq!(port_ips(&store, pod("a", "n1")).await.unwrap(), [ip("10.244.0.1")]);
    let before = store.route_fingerprint().await.unwrap();
    assert_eq!(assign("n2", &["10.244.5.0/24"]).await.unwrap(), [net("10.244.5.0/24")]);
    assert_ne!(store.route_fingerprint().await.unwrap(), before, "an assigned block is a route to read again");
    assert_eq!(port_ips(&store, pod("b", "n2")).await.unwrap(), [ip("10.244.5.1")]);
    // Again, the same: nothing changes.
    assert_eq!(assign("n2", &["10.244.5.0/24"]).await.unwrap(), [net("10.244.5.0/24")]);
    // Another node's block, an overlap with a block holding addresses: conflicts.
    assert_eq!(conflict(assign("n3", &["10.244.0.0/24"]).await.unwrap_err()), ConflictKind::BlockInUse);
    assert_eq!(conflict(assign("n2", &["10.244.5.0/25"]).await.unwrap_err()), ConflictKind::BlockInUse);
    // Not a network address, outside the subnets, overlapping each other: invalid, by index.
    assert_eq!(invalid_pointers(assign("n3", &["10.244.7.1/24"]).await.unwrap_err()), ["/blocks/0"]);
    assert_eq!(invalid_pointers(assign("n3", &["10.9.0.0/24"]).await.unwrap_err()), ["/blocks/0"]);
    assert_eq!(invalid_pointers(assign("n3", &["10.244.8.0/24", "10.244.8.0/25"]).await.unwrap_err()), ["/blocks/1"]);
    let missing = store.assign_node_blocks("k8s-cluster/none", "n3", &[]).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing:?}");
    // A full assigned block is the end: a node the cluster assigns never claims one itself.
    store.create_node("n4").await.unwrap();
    assign("n4", &["10.244.9.0/30"]).await.unwrap();
    let held = [port_ips(&store, pod("c1", "n4")).await.unwrap(), port_ips(&store, pod("c2", "n4")).await.unwrap()];
    assert_eq!(held, [[ip("10.244.9.1")], [ip("10.244.9.2")]]);
    assert_eq!(conflict(port_ips(&store, pod("c3", "n4")).await.unwrap_err()), ConflictKind::AddressesExhausted);
    // The weft node goes; the cluster's assignment stays until the cluster withdraws it.
    assert!(store.delete_node("n4").await.unwrap());
    assert_eq!(conflict(assign("n5", &["10.244.9.0/30"]).await.unwrap_err()), ConflictKind::BlockInUse);
    // Withdrawn: a block that holds addresses stays the node's, as one it claimed; an empty
    // one is given up, and another node may have it.
    assert_eq!(assign("n2", &[]).await.unwrap(), [net("10.244.5.0/24")]);
    assign("n3", &["10.244.6.0/24"]).await.unwrap();
    assert_eq!(assign("n3", &[]).await.unwrap(), Vec::<ipnet::IpNet>::new());
    assert_eq!(assign("n5", &["10.244.6.0/24"]).await.unwrap(), [net("10.244.6.0/24")]);
}

/// The addresses a port got.
async fn port_ips(store: &Store, body: serde_json::Value) -> Result<Vec<IpAddr>, StoreError> {
    let Resource::Port(port) = create(store, Kind::Port, body).await?.decode().unwrap() else { panic!() };
    Ok(port.ips)
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_shared_network_gives_each_node_its_own_blocks(pool: PgPool) {
    let store = Store::from_pool(pool);
    for p in ["k8s-cluster", "k8s-a", "other"] {
        project(&store, p).await;
    }
    store.create_node("n1").await.unwrap();
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "pods", "project": "k8s-cluster", "shared": true, "node_blocks": {"ipv4": 24, "ipv6": 120},
               "subnets": [{"cidr": "10.244.0.0/22"}, {"cidr": "fd44::/64"}]}),
    )
    .await
    .unwrap();
    let pod = |name: &str, node: &str| json!({"name": name, "project": "k8s-a", "network": "k8s-cluster/pods", "node": node, "security_groups": []});
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // Each node its own block, lowest first; a port of another project uses the shared network.
    assert_eq!(port_ips(&store, pod("a0", "n1")).await.unwrap(), [ip("10.244.0.1"), ip("fd44::1")]);
    assert_eq!(port_ips(&store, pod("b0", "n2")).await.unwrap(), [ip("10.244.1.1"), ip("fd44::101")]);
    // A full block: the node claims the next free one. Each family on its own: a /120 of IPv6
    // holds one address more than a /24 of IPv4 (no broadcast address).
    for i in 1..254 {
        port_ips(&store, pod(&format!("a{i}"), "n1")).await.unwrap();
    }
    assert_eq!(port_ips(&store, pod("a254", "n1")).await.unwrap(), [ip("10.244.2.1"), ip("fd44::ff")]);
    assert_eq!(port_ips(&store, pod("a255", "n1")).await.unwrap(), [ip("10.244.2.2"), ip("fd44::201")]);
    // The blocks are the node's, shown with it.
    let n1 = store.list_nodes().await.unwrap().into_iter().find(|n| n.name == "n1").unwrap();
    let blocks: Vec<String> = n1.blocks.iter().map(|b| b.to_string()).collect();
    assert_eq!(blocks, ["10.244.0.0/24", "10.244.2.0/24", "fd44::/120", "fd44::200/120"]);
    // The route table: n1's blocks through its underlay address, and an address one of its
    // pods asked for outside them as a host route; n2, which never said where it is, none.
    store.node_connected("n1", "ctl", "127.0.0.1:1", "t", &[ip("192.0.2.1")]).await.unwrap();
    let mut asked = pod("asked", "n1");
    asked["ips"] = json!(["10.244.1.77"]);
    port_ips(&store, asked).await.unwrap();
    let table: Vec<String> =
        store.route_table().await.unwrap().iter().map(|(d, n, via)| format!("{d} {n} {via:?}")).collect();
    assert_eq!(
        table,
        [
            "10.244.0.0/24 n1 [192.0.2.1]",
            "10.244.1.77/32 n1 [192.0.2.1]",
            "10.244.2.0/24 n1 [192.0.2.1]",
            "fd44::/120 n1 [192.0.2.1]",
            "fd44::200/120 n1 [192.0.2.1]"
        ]
    );

    // A port on a blocked network needs a node; a network not shared is its project's own.
    let e = create(&store, Kind::Port, json!({"name": "nowhere", "project": "k8s-a", "network": "k8s-cluster/pods"}))
        .await
        .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/node"]);
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "own", "project": "other", "subnets": [{"cidr": "10.9.0.0/24"}]}),
    )
    .await
    .unwrap();
    let e =
        create(&store, Kind::Port, json!({"name": "x", "project": "k8s-a", "network": "other/own"})).await.unwrap_err();
    assert_eq!(invalid_pointers(e), ["/network"]);
    // The cluster's pod networks, where pod traffic is not masqueraded: the blocked network's
    // subnets, and not those of a project's own network.
    let cluster: Vec<String> = store.cluster_prefixes().await.unwrap().iter().map(|p| p.to_string()).collect();
    assert_eq!(cluster, ["10.244.0.0/22", "fd44::/64"]);
    // Nor can the pod network stop being shared while other projects' ports use it.
    let mut txn = store.begin().await.unwrap();
    let e = txn
        .replace(
            Kind::VirtualNetwork,
            &by_name(Some("k8s-cluster"), "pods"),
            resource(
                Kind::VirtualNetwork,
                json!({"name": "pods", "project": "k8s-cluster", "node_blocks": {"ipv4": 24, "ipv6": 120},
                       "subnets": [{"cidr": "10.244.0.0/22"}, {"cidr": "fd44::/64"}]}),
            ),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(conflict(e), ConflictKind::InUse);
    drop(txn);

    // A deleted node's empty blocks are released and go to the next node that needs one.
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Port, &by_name(Some("k8s-a"), "b0"), false, None).await.unwrap();
    // (and the address n1's pod asked for inside it: a block holding one is kept)
    txn.delete(Kind::Port, &by_name(Some("k8s-a"), "asked"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    store.delete_node("n2").await.unwrap();
    let n3 = port_ips(&store, pod("c0", "n3")).await.unwrap();
    assert!("10.244.1.0/24".parse::<ipnet::IpNet>().unwrap().contains(&n3[0]), "{n3:?}");
    assert_ne!(n3[0], ip("10.244.1.1"), "the released address waits out its grace period");
}

/// A batch is one transaction, which keeps what it read of the network and its blocks and
/// cursors (issue 23): it must hand out what as many transactions would, keep its cursors for
/// the next one, and read again after a write that may change what it knew.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn one_transaction_of_many_ports_allocates_as_one_transaction_each_would(pool: PgPool) {
    let store = Store::from_pool(pool);
    pod_network(&store, "10.244.0.0/22").await;
    let pod = |name: &str, node: &str| {
        resource(
            Kind::Port,
            json!({"name": name, "project": "k8s-a", "network": "k8s-cluster/pods", "node": node, "security_groups": []}),
        )
    };
    let ips = |o: weft_store::StoredObject| match o.decode().unwrap() {
        Resource::Port(p) => p.ips,
        _ => panic!("not a port"),
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut txn = store.begin().await.unwrap();
    let mut n1 = Vec::new();
    for i in 0..300 {
        n1.extend(ips(txn.create(pod(&format!("a{i}"), "n1")).await.unwrap()));
        if i == 0 {
            // n2's first pod claims the next block, between n1's.
            assert_eq!(ips(txn.create(pod("b0", "n2")).await.unwrap()), [ip("10.244.1.1")]);
        }
        if i == 100 {
            // A replace forgets what the transaction knew, having written its cursors.
            let mut b0 = pod("b0", "n2");
            if let Resource::Port(p) = &mut b0 {
                p.labels.insert("app".into(), "db".into());
            }
            txn.replace(Kind::Port, &by_name(Some("k8s-a"), "b0"), b0, None).await.unwrap();
        }
    }
    assert_eq!(ips(txn.create(pod("b1", "n2")).await.unwrap()), [ip("10.244.1.2")]);
    txn.commit().await.unwrap();
    // n1's first block in order, then a block of its own past n2's.
    let expected: Vec<IpAddr> =
        (1..=254).map(|i| ip(&format!("10.244.0.{i}"))).chain((1..=46).map(|i| ip(&format!("10.244.2.{i}")))).collect();
    assert_eq!(n1, expected);
    // The next transaction goes on from the cursors the batch left.
    assert_eq!(
        port_ips(
            &store,
            json!({"name": "a300", "project": "k8s-a", "network": "k8s-cluster/pods",
        "node": "n1", "security_groups": []})
        )
        .await
        .unwrap(),
        [ip("10.244.2.47")]
    );
}

/// Ports created together (`Txn::create_all`, a batch's creates) over many nodes: the nodes'
/// blocks, cursors and held addresses are read at once, and each port gets what it would
/// have got on its own: no held, released or claimed address, a new block for a new node.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn ports_created_together_over_many_nodes_get_what_each_would_alone(pool: PgPool) {
    let store = Store::from_pool(pool);
    pod_network(&store, "10.244.0.0/22").await;
    let body = |name: &str, node: &str| json!({"name": name, "project": "k8s-a", "network": "k8s-cluster/pods", "node": node, "security_groups": []});
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    for name in ["a0", "a1", "a2"] {
        port_ips(&store, body(name, "n1")).await.unwrap();
    }
    // a1's address is released (and within its grace), 10.244.0.4 another port's claim.
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Port, &by_name(Some("k8s-a"), "a1"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    create(
        &store,
        Kind::Port,
        json!({"name": "fixed", "project": "k8s-a", "ips": ["10.244.0.4"], "security_groups": []}),
    )
    .await
    .unwrap();
    let mut ports: Vec<Resource> = ["n1", "n2", "n1", "n3", "n2", "n1"]
        .iter()
        .enumerate()
        .map(|(i, node)| resource(Kind::Port, body(&format!("b{i}"), node)))
        .collect();
    // A port of the batch naming its address in n2's block-to-be keeps it.
    let mut named = body("named", "n2");
    named["ips"] = json!(["10.244.1.2"]);
    ports.push(resource(Kind::Port, named));
    let mut txn = store.begin().await.unwrap();
    let created = txn.create_all(ports).await.unwrap();
    txn.commit().await.unwrap();
    let got: Vec<Vec<IpAddr>> = created
        .into_iter()
        .map(|o| match o.decode().unwrap() {
            Resource::Port(p) => p.ips,
            _ => panic!("not a port"),
        })
        .collect();
    let expected = ["10.244.0.5", "10.244.1.1", "10.244.0.6", "10.244.2.1", "10.244.1.3", "10.244.0.7", "10.244.1.2"];
    assert_eq!(got, expected.map(|a| vec![ip(a)]));
    // The blocks and cursors were written: the next port of n3 goes on from them.
    assert_eq!(port_ips(&store, body("c0", "n3")).await.unwrap(), [ip("10.244.2.2")]);
    assert_eq!(port_ips(&store, body("c1", "n2")).await.unwrap(), [ip("10.244.1.4")]);
}

/// A node deleted while a transaction gives one of its pods an address in the node's empty
/// block: the deletion waits for it, and the block, now holding an address, stays the node's
/// (another node taking it would put two nodes' pods behind one route).
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_node_deleted_while_its_pod_gets_an_address_keeps_the_block_that_holds_it(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    pod_network(&store, "10.244.0.0/22").await;
    store.create_node("n1").await.unwrap();
    let pod = |name: &str, node: &str| {
        resource(
            Kind::Port,
            json!({"name": name, "project": "k8s-a", "network": "k8s-cluster/pods", "node": node, "security_groups": []}),
        )
    };
    // n1's block, empty again.
    create(
        &store,
        Kind::Port,
        json!({"name": "a0", "project": "k8s-a", "network": "k8s-cluster/pods",
        "node": "n1", "security_groups": []}),
    )
    .await
    .unwrap();
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Port, &by_name(Some("k8s-a"), "a0"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    let mut txn = store.begin().await.unwrap();
    txn.create(pod("a1", "n1")).await.unwrap();
    let deleting = tokio::spawn({
        let store = store.clone();
        async move { store.delete_node("n1").await }
    });
    // The deletion waits on the network's row (a condition, polled).
    let waiting = async {
        loop {
            let waits: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waits > 0 || deleting.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.expect("the deletion started");
    assert!(!deleting.is_finished(), "the deletion did not wait for the allocation");
    txn.commit().await.unwrap();
    assert!(deleting.await.unwrap().unwrap());
    // n1's block holds a1's address: n2 gets the next one.
    let n2 = port_ips(
        &store,
        json!({"name": "b0", "project": "k8s-a", "network": "k8s-cluster/pods",
        "node": "n2", "security_groups": []}),
    )
    .await
    .unwrap();
    assert_eq!(n2, ["10.244.1.1".parse::<IpAddr>().unwrap()]);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn ipam_reports_exhaustion(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    // a /30 has two hosts; one is the gateway
    create(
        &store,
        Kind::VirtualNetwork,
        json!({"name": "tiny", "project": "p", "subnets": [{"cidr": "10.0.0.0/30", "gateway": "10.0.0.1"}]}),
    )
    .await
    .unwrap();
    create(&store, Kind::Port, json!({"name": "a", "project": "p", "network": "tiny"})).await.unwrap();
    let e = create(&store, Kind::Port, json!({"name": "b", "project": "p", "network": "tiny"})).await.unwrap_err();
    assert!(e.to_string().contains("no free IPv4 address"), "{e}");
    assert_eq!(conflict(e), ConflictKind::AddressesExhausted);
    // A released address is not handed out again within its grace period, even when it is
    // the only one; past it, it is.
    let mut txn = store.begin().await.unwrap();
    txn.delete(Kind::Port, &by_name(Some("p"), "a"), false, None).await.unwrap();
    txn.commit().await.unwrap();
    let e = create(&store, Kind::Port, json!({"name": "b", "project": "p", "network": "tiny"})).await.unwrap_err();
    assert_eq!(conflict(e), ConflictKind::AddressesExhausted);
    let impatient = store.clone().with_address_reuse_grace(std::time::Duration::ZERO);
    let b = create(&impatient, Kind::Port, json!({"name": "b", "project": "p", "network": "tiny"})).await.unwrap();
    let Resource::Port(b) = b.decode().unwrap() else { panic!() };
    assert_eq!(b.ips, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
    // shrinking a network below what its ports hold is refused
    let mut txn = store.begin().await.unwrap();
    let e = txn
        .replace(
            Kind::VirtualNetwork,
            &by_name(Some("p"), "tiny"),
            resource(
                Kind::VirtualNetwork,
                json!({"name": "tiny", "project": "p", "subnets": [{"cidr": "10.1.0.0/30"}]}),
            ),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(conflict(e), ConflictKind::InUse);
}

/// Many writers commit concurrently while a follower reads the change log: the follower sees
/// every revision exactly once, in order, with no gap. A revision committed after the follower
/// passed it would show up as a gap, since the follower only ever asks for `revision > seen`.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn change_log_never_skips_under_concurrent_writers(pool: PgPool) {
    const WRITERS: usize = 8;
    const WRITES_EACH: usize = 40;
    let store = Store::from_pool(pool);
    project(&store, "p").await;
    let start = store.current_revision().await.unwrap();

    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut since = start;
            let target = start + (WRITERS * WRITES_EACH) as i64;
            while since < target {
                let page = store.changes_since(since, 7).await.unwrap();
                for c in &page.changes {
                    if seen.last() != Some(&c.revision) {
                        seen.push(c.revision);
                    }
                }
                since = page.up_to;
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..WRITES_EACH {
                    if w % 2 == 0 {
                        let mut txn = store.begin().await.unwrap();
                        txn.create(resource(Kind::SecurityGroup, json!({"name": format!("g{w}-{i}"), "project": "p"})))
                            .await
                            .unwrap();
                        txn.commit().await.unwrap();
                    } else {
                        // The worst case for a follower: a writer that stalls between taking its
                        // revision and committing, while others commit higher revisions.
                        let mut tx = store.pool().begin().await.unwrap();
                        let r: i64 =
                            sqlx::query_scalar("SELECT nextval('revisions')").fetch_one(&mut *tx).await.unwrap();
                        sqlx::query(
                            "INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
                             VALUES ($1, 0, 'project', gen_random_uuid(), 'put', '{}', now(), now())",
                        )
                        .bind(r)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(1 + (i % 3) as u64)).await;
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let seen = follower.await.unwrap();
    let expected: Vec<i64> = (start + 1..=start + (WRITERS * WRITES_EACH) as i64).collect();
    assert_eq!(seen, expected);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn compaction_removes_old_entries_and_refuses_old_readers(pool: PgPool) {
    let store = Store::from_pool(pool);
    for i in 0..5 {
        project(&store, &format!("p{i}")).await;
    }
    assert_eq!(store.compact_through(3).await.unwrap(), 3);
    match store.changes_since(2, 10).await {
        Err(StoreError::Compacted { requested: 2, compacted: 3 }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    let page = store.changes_since(3, 10).await.unwrap();
    assert_eq!(page.changes.iter().map(|c| c.revision).collect::<BTreeSet<_>>(), BTreeSet::from([4, 5]));
    // the current revision is never compacted, and the mark never moves back
    assert_eq!(store.compact_through(100).await.unwrap(), 4);
    assert_eq!(store.compact_through(1).await.unwrap(), 4);
    // nothing is older than an hour
    assert_eq!(store.compact_older_than(std::time::Duration::from_secs(3600)).await.unwrap(), 4);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn lists_filter_by_project_labels_and_page(pool: PgPool) {
    let store = Store::from_pool(pool);
    project(&store, "a").await;
    project(&store, "b").await;
    for i in 0..25 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        create(
            &store,
            Kind::Port,
            json!({"name": format!("p{i:02}"), "project": "a", "labels": {"tier": tier, "i": i.to_string()}}),
        )
        .await
        .unwrap();
    }
    create(&store, Kind::Port, json!({"name": "other", "project": "b", "labels": {"tier": "web"}})).await.unwrap();

    let all = |q: ListQuery| {
        let store = store.clone();
        async move {
            let mut q = q;
            let mut names = Vec::new();
            loop {
                let page = store.list(Kind::Port, &q).await.unwrap();
                names.extend(page.items.iter().map(|o| {
                    let Resource::Port(p) = o.decode().unwrap() else { panic!() };
                    format!("{}/{}", p.project, p.name)
                }));
                match page.continue_token {
                    Some(t) => q.continue_after = Some(t),
                    None => return names,
                }
            }
        }
    };
    let paged = all(ListQuery { limit: 4, ..Default::default() }).await;
    assert_eq!(paged.len(), 26);
    let unpaged = all(ListQuery::default()).await;
    assert_eq!(paged, unpaged, "pages concatenate to the whole list");

    let web_in_a = all(ListQuery {
        project: Some("a".into()),
        selector: Some(weft_model::LabelSelector::parse("tier=web").unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(web_in_a.len(), 13);
    let sel = weft_model::LabelSelector::parse("tier in (web),i notin (0,2),!missing").unwrap();
    let some = all(ListQuery { selector: Some(sel), ..Default::default() }).await;
    assert_eq!(some.len(), 12, "{some:?}");
    let only_b = all(ListQuery { allowed_projects: Some(vec!["b".into()]), ..Default::default() }).await;
    assert_eq!(only_b, ["b/other"]);
    let named = all(ListQuery { name: Some("p03".into()), ..Default::default() }).await;
    assert_eq!(named, ["a/p03"]);
    let e = store
        .list(Kind::Port, &ListQuery { continue_after: Some("zz".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(invalid_pointers(e), ["/continue"]);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn tokens_are_stored_as_digests_and_can_expire_or_be_revoked(pool: PgPool) {
    let store = Store::from_pool(pool);
    let first = store.bootstrap_admin_token().await.unwrap().expect("first start creates an admin token");
    assert!(store.bootstrap_admin_token().await.unwrap().is_none(), "only once");
    assert_eq!(first.token.role, Role::Admin);
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT digest FROM tokens").fetch_all(store.pool()).await.unwrap();
    assert!(!stored.iter().any(|d| d == first.secret.as_bytes()), "the secret itself is never stored");

    let now = chrono::Utc::now();
    let reader =
        store.create_token(Role::Reader, Some("p"), "ci", Some(now + chrono::Duration::hours(1))).await.unwrap();
    let found = store.find_token(&reader.secret).await.unwrap().unwrap();
    assert!(found.is_active(now));
    assert!(!found.is_active(now + chrono::Duration::hours(2)), "expired later");
    assert!(store.revoke_token(found.id).await.unwrap());
    assert!(!store.find_token(&reader.secret).await.unwrap().unwrap().is_active(now));
    assert!(store.find_token("weft_nope").await.unwrap().is_none());
    assert!(store.create_token(Role::Writer, None, "", None).await.is_err());
    assert!(store.create_token(Role::Admin, Some("p"), "", None).await.is_err());
}

/// A transaction that has taken a revision and not yet committed holds every follower back:
/// the revision after it, already visible, is not handed out until it ends.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn followers_wait_for_a_transaction_holding_a_lower_revision(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    project(&store, "p").await;
    let before = store.current_revision().await.unwrap();

    // A writer takes revision `slow` and stalls before COMMIT.
    let mut slow_tx = pool.begin().await.unwrap();
    let slow: i64 = sqlx::query_scalar("SELECT nextval('revisions')").fetch_one(&mut *slow_tx).await.unwrap();
    sqlx::query(
        "INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
         VALUES ($1, 0, 'project', gen_random_uuid(), 'put', '{\"name\":\"slow\"}', now(), now())",
    )
    .bind(slow)
    .execute(&mut *slow_tx)
    .await
    .unwrap();

    // Another commits after it, with a higher revision.
    let fast = create(&store, Kind::Project, json!({"name": "fast"})).await.unwrap().revision;
    assert!(fast > slow);

    // The horizon does not move past the stalled writer while it runs...
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(300), store.safe_horizon()).await;
    assert!(waiting.is_err(), "the horizon passed a transaction still in flight: {waiting:?}");
    // ...and once it commits, a follower gets both, in revision order.
    slow_tx.commit().await.unwrap();
    let page = store.changes_since(before, 100).await.unwrap();
    let revisions: Vec<i64> = page.changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions.first(), Some(&slow));
    assert_eq!(revisions.last(), Some(&fast));
    assert!(page.caught_up());

    // A writer that rolls back leaves a gap that followers step over.
    let mut doomed = pool.begin().await.unwrap();
    let gap: i64 = sqlx::query_scalar("SELECT nextval('revisions')").fetch_one(&mut *doomed).await.unwrap();
    doomed.rollback().await.unwrap();
    let after = create(&store, Kind::Project, json!({"name": "after"})).await.unwrap().revision;
    let page = store.changes_since(fast, 100).await.unwrap();
    assert!(page.changes.iter().all(|c| c.revision != gap));
    assert_eq!(page.changes.last().map(|c| c.revision), Some(after));
    assert_eq!(page.up_to, after);
}

/// Ports written before interfaces were claims (migration 0003) get their claims at start,
/// the oldest first; a port whose interface an older one holds is named, not claimed.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn interface_claims_of_older_ports_are_made_at_start_oldest_first(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    project(&store, "p").await;
    for name in ["a", "b", "c"] {
        let port = json!({"name": name, "project": "p", "node": "node-1", "security_groups": []});
        create(&store, Kind::Port, port).await.unwrap();
    }
    // As a database migrated from before would hold them: no claims, and b naming a's
    // derived interface, which the API would have refused.
    sqlx::query("DELETE FROM port_interfaces").execute(&pool).await.unwrap();
    let taken = weft_model::default_interface("p", "a");
    sqlx::query(
        "UPDATE objects SET body = jsonb_set(body::jsonb, '{interface}', to_jsonb($1::text))::json WHERE name = 'b'",
    )
    .bind(&taken)
    .execute(&pool)
    .await
    .unwrap();
    let refused = store.claim_interfaces().await.unwrap();
    assert_eq!(refused, vec![("p/b".to_string(), format!("node-1/{taken}"))]);
    let claims: Vec<(String, String)> = sqlx::query_as(
        "SELECT o.name, i.interface FROM port_interfaces i JOIN objects o ON o.id = i.port_id ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(claims, vec![("a".into(), taken.clone()), ("c".into(), weft_model::default_interface("p", "c"))]);
    // Done once: a second start finds only the port still without a claim.
    assert_eq!(store.claim_interfaces().await.unwrap().len(), 1);
    // Its next write must give the interface up.
    let mut txn = store.begin().await.unwrap();
    let b = txn.get_for_update(Kind::Port, &by_name(Some("p"), "b")).await.unwrap();
    let e = txn.replace(Kind::Port, &by_name(Some("p"), "b"), b.decode().unwrap(), None).await.unwrap_err();
    assert_eq!(conflict(e), ConflictKind::InterfaceInUse);
}
