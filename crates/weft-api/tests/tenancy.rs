//! What an attacker holding one project's token must not be able to do (issue 17): each test
//! replays a finding against the router on a fresh database and checks that it is refused, and
//! that nothing was written.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode};
use common::Api;
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
