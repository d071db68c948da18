//! What an attacker holding one project's token must not be able to do (issue 17): each test
//! replays a finding against the router on a fresh database and checks that it is refused, and
//! that nothing was written.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode};
use common::Api;
use http_body_util::BodyExt;
use serde_json::json;
use sqlx::PgPool;
use weft_store::tokens::Role;

/// Two tenants, `a` and `b`, and a writer's token for each.
async fn tenants(api: &Api) -> (String, String) {
    for p in ["a", "b"] {
        let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": p}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let writer =
        |p: &'static str| async move { api.store.create_token(Role::Writer, Some(p), "", None).await.unwrap().secret };
    (writer("a").await, writer("b").await)
}

/// Finding 1: a writer of b put `a/grp` in its own port's groups and got what a allows that
/// group's members.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_port_cannot_join_another_projects_group(pool: PgPool) {
    let api = Api::new(pool).await;
    let (_, writer_b) = tenants(&api).await;
    let r = api.call(Method::POST, "/v1/security-groups", Some(json!({"name": "grp", "project": "a"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let port = json!({"name": "evil", "project": "b", "node": "node-1", "ips": ["10.0.1.9"], "security_groups": []});
    let r = api.as_token(&writer_b, Method::POST, "/v1/ports", Some(port)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = api.revision().await;

    let join = json!({"security_groups": ["a/grp"]});
    let r = api.as_token(&writer_b, Method::PATCH, "/v1/ports/b/evil", Some(join.clone())).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.pointers(), ["/security_groups/0"], "{}", r.body);
    assert!(r.body["errors"][0]["detail"].as_str().unwrap().contains("its own project's groups"), "{}", r.body);
    // Not an admin's privilege either: membership is what other projects' rules trust.
    let r = api.call(Method::PATCH, "/v1/ports/b/evil", Some(join)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let create = json!({"name": "evil2", "project": "b", "security_groups": ["default", "a/default"]});
    let r = api.as_token(&writer_b, Method::POST, "/v1/ports", Some(create)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.pointers(), ["/security_groups/1"], "{}", r.body);
    let batch = json!({"operations": [{"op": "patch", "kind": "port", "project": "b", "name": "evil", "patch": {"security_groups": ["a/grp"]}}]});
    let r = api.as_token(&writer_b, Method::POST, "/v1/batch", Some(batch)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(api.changes_after(before).await, 0, "a refused write wrote something");

    // Naming its own project's group, with or without the prefix, is a membership.
    let r = api
        .as_token(&writer_b, Method::PATCH, "/v1/ports/b/evil", Some(json!({"security_groups": ["b/default"]})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A rule's remote may name another project's group: it is b's decision about b's traffic.
    let rule = json!({"name": "from-a", "project": "b", "rules": [
        {"direction": "ingress", "remote": {"type": "security_group", "security_group": "a/grp"}}]});
    let r = api.as_token(&writer_b, Method::POST, "/v1/security-groups", Some(rule)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

/// Finding 2: `interface` took `lo`, `eth0` and `x";drop` from any writer, and the node's
/// anti-spoofing then dropped other pods' traffic. A writer cannot set it; an admin can, to a
/// name with weft's prefix that no other port of the node has.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_ports_interface_is_an_admins_unique_weft_name(pool: PgPool) {
    let api = Api::new(pool).await;
    let (writer_a, writer_b) = tenants(&api).await;
    let port = |project: &str, name: &str, node: &str, interface: Option<&str>| {
        let mut p = json!({"name": name, "project": project, "node": node, "security_groups": []});
        if let Some(i) = interface {
            p["interface"] = json!(i);
        }
        p
    };
    let before = api.revision().await;
    let r = api.as_token(&writer_b, Method::POST, "/v1/ports", Some(port("b", "evil", "node-2", Some("eth0")))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.pointers(), ["/interface"], "{}", r.body);
    for bad in ["eth0", "lo", "x\";drop", "weft", "weft/x"] {
        let r = api.call(Method::POST, "/v1/ports", Some(port("b", "evil", "node-2", Some(bad)))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
        assert_eq!(r.pointers(), ["/interface"], "{bad}: {}", r.body);
    }
    assert_eq!(api.changes_after(before).await, 0, "a refused write wrote something");

    // An admin names one; its writer may edit the port as long as the interface stays.
    let r = api.call(Method::POST, "/v1/ports", Some(port("a", "web", "node-2", Some("weftweb")))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut full = r.body.clone();
    full["labels"] = json!({"app": "web"});
    let r = api.as_token(&writer_a, Method::PUT, "/v1/ports/a/web", Some(full)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.as_token(&writer_a, Method::PATCH, "/v1/ports/a/web", Some(json!({"interface": "weftother"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = api.as_token(&writer_a, Method::PATCH, "/v1/ports/a/web", Some(json!({"interface": null}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Unique per node: another port's explicit name, or another port's derived one.
    let r = api.call(Method::POST, "/v1/ports", Some(port("b", "twin", "node-2", Some("weftweb")))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.problem_type(), "urn:weft:problem:interface-in-use", "{}", r.body);
    let r = api.as_token(&writer_b, Method::POST, "/v1/ports", Some(port("b", "plain", "node-2", None))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let derived = weft_model::default_interface("b", "plain");
    let r = api.call(Method::POST, "/v1/ports", Some(port("a", "copycat", "node-2", Some(&derived)))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // On another node the name is free; a port that moves takes its claim along.
    let r = api.call(Method::POST, "/v1/ports", Some(port("a", "copycat", "node-3", Some(&derived)))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.as_token(&writer_b, Method::PATCH, "/v1/ports/b/plain", Some(json!({"node": "node-3"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = api.as_token(&writer_b, Method::PATCH, "/v1/ports/b/plain", Some(json!({"node": "node-4"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.call(Method::PATCH, "/v1/ports/a/copycat", Some(json!({"node": "node-2"}))).await;
    assert_eq!(r.status, StatusCode::OK, "node-2's name is free once plain left: {}", r.body);
}

/// Finding 3: addresses were unique only within one network, and the datapath identifies
/// peers by address. An address belongs to one port, whatever network (or none) it is on.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn an_address_belongs_to_one_port_across_every_network(pool: PgPool) {
    let api = Api::new(pool).await;
    let (writer_a, writer_b) = tenants(&api).await;
    let net =
        |p: &str| json!({"name": "pods", "project": p, "subnets": [{"cidr": "10.40.0.0/29", "gateway": "10.40.0.1"}]});
    for (w, p) in [(&writer_a, "a"), (&writer_b, "b")] {
        let r = api.as_token(w, Method::POST, "/v1/virtual-networks", Some(net(p))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = api
        .as_token(&writer_a, Method::POST, "/v1/ports", Some(json!({"name": "db", "project": "a", "network": "pods"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let taken = r.body["ips"][0].as_str().unwrap().to_string();
    assert_eq!(taken, "10.40.0.2");
    let before = api.revision().await;
    // b's own network has the same subnet; without a network at all, any address can be named.
    for attack in [
        json!({"name": "evil", "project": "b", "network": "pods", "ips": [taken]}),
        json!({"name": "evil", "project": "b", "node": "node-1", "ips": [taken]}),
    ] {
        let r = api.as_token(&writer_b, Method::POST, "/v1/ports", Some(attack)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert_eq!(r.problem_type(), "urn:weft:problem:address-in-use", "{}", r.body);
        assert!(!r.body["detail"].as_str().unwrap().contains("a/db"), "names another project's port: {}", r.body);
    }
    assert_eq!(api.changes_after(before).await, 0, "a refused write wrote something");
    // IPAM on b's network skips what a's port holds.
    let r = api
        .as_token(&writer_b, Method::POST, "/v1/ports", Some(json!({"name": "web", "project": "b", "network": "pods"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["ips"][0], "10.40.0.3");
    // Once a's port lets go of it, the address is free.
    let r = api.as_token(&writer_a, Method::DELETE, "/v1/ports/a/db", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .as_token(&writer_b, Method::POST, "/v1/ports", Some(json!({"name": "evil", "project": "b", "ips": [taken]})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // A port keeps its own addresses across a replace.
    let r = api.as_token(&writer_b, Method::PATCH, "/v1/ports/b/evil", Some(json!({"labels": {"x": "y"}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// The lines a watch of the change log sends until it ends (at most `PATIENCE`: a guard against
/// a hang, not a measure).
async fn watch_until_it_ends(
    api: &Api,
    token: &str,
    revoke: impl std::future::Future<Output = ()>,
) -> Vec<serde_json::Value> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
    let mut body = api.watch(token, 0).await;
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("bookmark"));
    revoke.await;
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(frame) = body.frame().await {
            text.push_str(std::str::from_utf8(&frame.unwrap().into_data().unwrap()).unwrap());
        }
    })
    .await
    .expect("the watch ended");
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Finding 4: a watch of the change log went on streaming after its token was revoked or had
/// expired. It ends with an error line naming why.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_watch_ends_when_its_token_is_revoked_or_expires(pool: PgPool) {
    let api = Api::new(pool).await;
    tenants(&api).await;
    let reader = api.store.create_token(Role::Reader, Some("a"), "", None).await.unwrap();
    let revoke = async {
        let r = api.call(Method::DELETE, &format!("/v1/tokens/{}", reader.token.id), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    };
    let lines = watch_until_it_ends(&api, &reader.secret, revoke).await;
    let last = lines.last().unwrap();
    assert_eq!(last["op"], "error", "{lines:?}");
    assert_eq!(last["error"]["status"], 401, "{last}");
    assert!(last["error"]["detail"].as_str().unwrap().contains("revoked"), "{last}");

    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let expiring = api.store.create_token(Role::Reader, Some("a"), "", Some(soon)).await.unwrap();
    let lines = watch_until_it_ends(&api, &expiring.secret, async {}).await;
    let last = lines.last().unwrap();
    assert_eq!(last["op"], "error", "{lines:?}");
    assert!(last["error"]["detail"].as_str().unwrap().contains("expired"), "{last}");
}

/// Finding 9: a project's token learned of other projects: 403 for what exists and 404 for
/// what does not, explain naming their ports, realization listing every node and its problems.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_projects_token_learns_nothing_of_another_project(pool: PgPool) {
    let api = Api::new(pool).await;
    let (writer_a, writer_b) = tenants(&api).await;
    let port = |project: &str, name: &str, node: &str, ip: &str| json!({"name": name, "project": project, "node": node, "ips": [ip], "security_groups": []});
    for (w, body) in
        [(&writer_a, port("a", "db", "node-1", "10.0.0.1")), (&writer_b, port("b", "web", "node-2", "10.0.0.2"))]
    {
        let r = api.as_token(w, Method::POST, "/v1/ports", Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = api
        .as_token(&writer_a, Method::POST, "/v1/security-groups", Some(json!({"name": "grp", "project": "a"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let db_id = api.call(Method::GET, "/v1/ports/a/db", None).await.body["id"].as_str().unwrap().to_string();

    // What exists in a and what does not answer b alike, for reads and writes.
    let same = |existing: &common::Reply, absent: &common::Reply| {
        assert_eq!((existing.status, existing.problem_type()), (StatusCode::NOT_FOUND, "urn:weft:problem:not-found"));
        assert_eq!((absent.status, absent.problem_type()), (existing.status, existing.problem_type()));
    };
    for (method, existing, absent, body) in [
        (Method::GET, "/v1/ports/a/db".to_string(), "/v1/ports/a/nothing".to_string(), None),
        (Method::GET, format!("/v1/ports/{db_id}"), format!("/v1/ports/{}", uuid::Uuid::new_v4()), None),
        (Method::PATCH, "/v1/ports/a/db".into(), "/v1/ports/a/nothing".into(), Some(json!({"labels": {"x": "y"}}))),
        (Method::DELETE, "/v1/security-groups/a/grp".into(), "/v1/security-groups/a/nothing".into(), None),
        (Method::GET, "/v1/security-groups/a/grp/status".into(), "/v1/security-groups/a/nothing/status".into(), None),
    ] {
        let e = api.as_token(&writer_b, method.clone(), &existing, body.clone()).await;
        let a = api.as_token(&writer_b, method.clone(), &absent, body).await;
        same(&e, &a);
    }
    // A rule may name a's group whether it exists or not, and does not keep a from deleting it.
    for remote in ["a/grp", "a/nothing"] {
        let rule = json!({"name": format!("from-{}", remote.replace('/', "-")), "project": "b", "rules": [
            {"direction": "ingress", "remote": {"type": "security_group", "security_group": remote}}]});
        let r = api.as_token(&writer_b, Method::POST, "/v1/security-groups", Some(rule)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{remote}: {}", r.body);
    }
    let r = api.as_token(&writer_a, Method::DELETE, "/v1/security-groups/a/grp", None).await;
    assert_eq!(r.status, StatusCode::OK, "b's rule held a's group: {}", r.body);

    // explain: a's port by name does not exist for b; by address it is an address, unnamed.
    api.until_ready().await;
    let revision = api.revision().await;
    let explain = |to: &str| json!({"from": "b/web", "to": to, "protocol": "tcp", "port": 80, "revision": revision});
    let by_name = api.as_token(&writer_b, Method::POST, "/v1/explain", Some(explain("a/db"))).await;
    let nothing = api.as_token(&writer_b, Method::POST, "/v1/explain", Some(explain("a/nothing"))).await;
    assert_eq!((by_name.status, nothing.status), (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST));
    let by_address = api.as_token(&writer_b, Method::POST, "/v1/explain", Some(explain("10.0.0.1"))).await;
    assert_eq!(by_address.status, StatusCode::OK, "{}", by_address.body);
    assert!(
        by_address.body.get("ingress").is_none() && !by_address.body.to_string().contains("a/"),
        "{}",
        by_address.body
    );
    let reach = api.as_token(&writer_b, Method::GET, &format!("/v1/reach?port=80&revision={revision}"), None).await;
    assert_eq!(reach.body["endpoints"], json!(["b/web"]), "{}", reach.body);

    // realization: the nodes b's ports are on, nothing else.
    let r = api.as_token(&writer_b, Method::GET, &format!("/v1/realization?revision={revision}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let nodes: Vec<&str> = r.body["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["node-2"], "{}", r.body);
    let all = api.call(Method::GET, &format!("/v1/realization?revision={revision}"), None).await;
    assert_eq!(all.body["nodes"].as_array().unwrap().len(), 2, "{}", all.body);
    assert_eq!(api.as_token(&writer_b, Method::GET, "/v1/nodes", None).await.status, StatusCode::FORBIDDEN);
}

/// The pod network (issue 20): only an admin shares a network or splits it into node blocks
/// (its blocks are routed on every node); another project's network is usable only when
/// shared, and a reference to one that is not, or does not exist, or is in a project that does
/// not exist, reads the same.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn only_an_admin_makes_the_pod_network_and_other_projects_learn_nothing_of_theirs(pool: PgPool) {
    let api = Api::new(pool).await;
    let (writer_a, writer_b) = tenants(&api).await;
    let network = |name: &str, extra: serde_json::Value| {
        let mut n = json!({"name": name, "project": "b", "subnets": [{"cidr": "10.244.0.0/16"}]});
        n.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        n
    };
    let before = api.revision().await;
    for (extra, pointer) in [(json!({"shared": true}), "/shared"), (json!({"node_blocks": {}}), "/node_blocks")] {
        let r = api.as_token(&writer_b, Method::POST, "/v1/virtual-networks", Some(network("pods", extra))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(r.pointers(), [pointer], "{}", r.body);
    }
    assert_eq!(api.changes_after(before).await, 0, "a refused write wrote something");
    let r = api.as_token(&writer_b, Method::POST, "/v1/virtual-networks", Some(network("own", json!({})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.as_token(&writer_b, Method::PATCH, "/v1/virtual-networks/b/own", Some(json!({"shared": true}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // b's own network, one that does not exist, one in no project: the same answer to a.
    let port =
        |network: &str| json!({"name": "p", "project": "a", "node": "n1", "network": network, "security_groups": []});
    let mut details = Vec::new();
    for reference in ["b/own", "b/none", "nobody/own"] {
        let r = api.as_token(&writer_a, Method::POST, "/v1/ports", Some(port(reference))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{reference}: {}", r.body);
        assert_eq!(r.pointers(), ["/network"], "{}", r.body);
        details.push(r.body["errors"][0]["detail"].as_str().unwrap_or_default().replace(reference, "X"));
    }
    assert!(details.iter().all(|d| *d == details[0]), "{details:?}");
    // The admin shares it: then a's ports use it.
    let r = api.call(Method::PATCH, "/v1/virtual-networks/b/own", Some(json!({"shared": true}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.as_token(&writer_a, Method::POST, "/v1/ports", Some(port("b/own"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["ips"], json!(["10.244.0.1"]), "{}", r.body);
}

/// The blocks the cluster assigns a node (Node.spec.podCIDRs, issue 20) are an admin's to
/// pass on: they decide which node every address of the pod network is routed to.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn only_an_admin_assigns_a_node_its_pod_network_blocks_and_a_bad_one_is_named(pool: PgPool) {
    let api = Api::new(pool).await;
    let (_, writer_b) = tenants(&api).await;
    let pods = json!({"name": "pods", "project": "b", "shared": true, "node_blocks": {}, "subnets": [{"cidr": "10.244.0.0/16"}]});
    assert_eq!(api.call(Method::POST, "/v1/virtual-networks", Some(pods)).await.status, StatusCode::CREATED);
    let assign = |blocks: serde_json::Value| json!({"network": "b/pods", "blocks": blocks});
    let r = api.as_token(&writer_b, Method::PUT, "/v1/nodes/n1/blocks", Some(assign(json!(["10.244.3.0/24"])))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    let r = api.call(Method::PUT, "/v1/nodes/n1/blocks", Some(assign(json!(["10.244.3.0/24"])))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"node": "n1", "network": "b/pods", "blocks": ["10.244.3.0/24"]}));
    // Shown with the node once it is registered.
    assert_eq!(api.call(Method::POST, "/v1/nodes", Some(json!({"name": "n1"}))).await.status, StatusCode::CREATED);
    let listed = api.call(Method::GET, "/v1/nodes", None).await;
    assert_eq!(listed.body["items"][0]["blocks"], json!(["10.244.3.0/24"]), "{}", listed.body);

    for (body, status, pointer) in [
        (assign(json!(["10.244.3.1/24"])), StatusCode::UNPROCESSABLE_ENTITY, Some("/blocks/0")),
        (assign(json!(["10.9.0.0/24"])), StatusCode::UNPROCESSABLE_ENTITY, Some("/blocks/0")),
        (assign(json!(["not a block"])), StatusCode::UNPROCESSABLE_ENTITY, None),
        (json!({"network": "b/none", "blocks": []}), StatusCode::NOT_FOUND, None),
    ] {
        let r = api.call(Method::PUT, "/v1/nodes/n2/blocks", Some(body)).await;
        assert_eq!(r.status, status, "{}", r.body);
        if let Some(pointer) = pointer {
            assert_eq!(r.pointers(), [pointer], "{}", r.body);
        }
    }
    let r = api.call(Method::PUT, "/v1/nodes/n2/blocks", Some(assign(json!(["10.244.3.0/24"])))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.problem_type(), "urn:weft:problem:block-in-use", "{}", r.body);
    let r = api.call(Method::PUT, "/v1/nodes/Not_A_Node/blocks", Some(assign(json!([])))).await;
    assert_eq!((r.status, r.pointers()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["/node"]), "{}", r.body);
}
