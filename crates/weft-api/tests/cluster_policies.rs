//! Tiered cluster policies over the REST API (DESIGN.md §11): an admin's object, addressed by
//! name like a project, validated as the CRD, with its ties in its status; a project's token
//! neither reads nor writes one, nor sees one go by in the change log.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode, header};
use common::Api;
use serde_json::{Value, json};
use sqlx::PgPool;
use weft_store::tokens::Role;

fn policy(name: &str, tier: &str, priority: i64) -> Value {
    json!({
        "name": name,
        "tier": tier,
        "priority": priority,
        "subject": {"projects": {"matchLabels": {"tenant": "a"}}},
        "ingress": [{"name": "others", "action": "deny", "remotes": [{"type": "selector"}]}],
        "egress": [{"name": "metadata", "action": "deny",
                    "remotes": [{"type": "networks", "networks": ["169.254.169.254/32"]}]}]
    })
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn an_admin_writes_reads_and_deletes_a_cluster_policy_by_name(pool: PgPool) {
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(policy("tenancy", "admin", 10))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers[header::LOCATION], format!("/v1/cluster-policies/{id}").as_str());
    assert_eq!(r.body["status"], json!({"ties": [], "nodes": 0, "applied": 0}), "no port: no node holds it");
    let etag = r.headers[header::ETAG].to_str().unwrap().to_string();

    let by_name = api.call(Method::GET, "/v1/cluster-policies/tenancy", None).await;
    let by_id = api.call(Method::GET, &format!("/v1/cluster-policies/{id}"), None).await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.body);
    assert_eq!(by_name.body, by_id.body);
    assert_eq!(by_name.body["egress"][0]["remotes"][0]["networks"], json!(["169.254.169.254/32"]));
    let again = api.call(Method::POST, "/v1/cluster-policies", Some(policy("tenancy", "baseline", 1))).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "one name in the cluster: {}", again.body);

    // GET, edit, PUT back: the status read is ignored on input.
    let mut edited = by_name.body.clone();
    edited["priority"] = json!(20);
    let r = api
        .raw(
            Method::PUT,
            "/v1/cluster-policies/tenancy",
            Some(&api.admin),
            &[("content-type", "application/json"), ("if-match", &etag)],
            serde_json::to_vec(&edited).unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["priority"], 20);
    let stale = api
        .raw(
            Method::PATCH,
            "/v1/cluster-policies/tenancy",
            Some(&api.admin),
            &[("content-type", "application/json"), ("if-match", &etag)],
            br#"{"priority": 30}"#.to_vec(),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{}", stale.body);

    let list = api.call(Method::GET, "/v1/cluster-policies", None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{}", list.body);
    let r = api.call(Method::GET, "/v1/cluster-policies?project=a", None).await;
    assert_eq!((r.status, r.body["errors"][0]["parameter"].as_str()), (StatusCode::BAD_REQUEST, Some("project")));

    let r = api.call(Method::DELETE, "/v1/cluster-policies/tenancy", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(api.call(Method::GET, "/v1/cluster-policies/tenancy", None).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_policys_status_names_the_policies_it_is_tied_with(pool: PgPool) {
    let api = Api::new(pool).await;
    for (name, tier, priority) in [("a", "admin", 5), ("b", "admin", 5), ("c", "baseline", 5), ("d", "admin", 6)] {
        let r = api.call(Method::POST, "/v1/cluster-policies", Some(policy(name, tier, priority))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let ties = |body: &Value| body["status"]["ties"].clone();
    assert_eq!(ties(&api.call(Method::GET, "/v1/cluster-policies/a", None).await.body), json!(["b"]));
    assert_eq!(ties(&api.call(Method::GET, "/v1/cluster-policies/c", None).await.body), json!([]));
    let list = api.call(Method::GET, "/v1/cluster-policies", None).await.body;
    let listed: Vec<(Value, Value)> =
        list["items"].as_array().unwrap().iter().map(|p| (p["name"].clone(), ties(p))).collect();
    assert_eq!(
        listed,
        [(json!("a"), json!(["b"])), (json!("b"), json!(["a"])), (json!("c"), json!([])), (json!("d"), json!([]))]
    );
    // The write that makes a tie reports it in its own response.
    let r = api.call(Method::PATCH, "/v1/cluster-policies/d", Some(json!({"priority": 5}))).await;
    assert_eq!(ties(&r.body), json!(["a", "b"]), "{}", r.body);
    assert_eq!(ties(&api.call(Method::GET, "/v1/cluster-policies/a", None).await.body), json!(["b", "d"]));
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_bad_policy_is_refused_naming_each_field_and_writes_nothing(pool: PgPool) {
    let api = Api::new(pool).await;
    let before = api.revision().await;
    let mut bad = policy("bad", "admin", 1001);
    bad["ingress"][0]["remotes"] = json!([{"type": "networks", "networks": ["10.0.0.0/8"]}]);
    bad["egress"][0]["protocols"] = json!([{"protocol": "tcp", "port": {"from": 90, "to": 80}}]);
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.pointers(), ["/priority", "/ingress/0/remotes/0", "/egress/0/protocols/0/port"]);
    let mut unknown = policy("bad", "middle", 1);
    unknown["status"] = json!({"ties": ["x"]});
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(unknown)).await;
    assert_eq!((r.status, r.pointers()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["/tier"]), "{}", r.body);
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(json!({"name": "p", "project": "a"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(api.changes_after(before).await, 0);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_projects_token_neither_reads_nor_writes_cluster_policies(pool: PgPool) {
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "a"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let writer = api.store.create_token(Role::Writer, Some("a"), "", None).await.unwrap().secret;
    let reader = api.store.create_token(Role::Reader, Some("a"), "", None).await.unwrap().secret;
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(policy("tenancy", "admin", 10))).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let since = api.revision().await - 1;

    for token in [&writer, &reader] {
        let r = api.as_token(token, Method::POST, "/v1/cluster-policies", Some(policy("mine", "admin", 0))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(api.as_token(token, Method::GET, "/v1/cluster-policies", None).await.status, StatusCode::FORBIDDEN);
        // Refused whether it exists or not: the answer says nothing of what exists.
        for (method, body) in [
            (Method::GET, None),
            (Method::PATCH, Some(json!({"priority": 1}))),
            (Method::PUT, Some(policy("tenancy", "admin", 1))),
            (Method::DELETE, None),
        ] {
            for path in ["/v1/cluster-policies/tenancy", &format!("/v1/cluster-policies/{id}")] {
                let existing = api.as_token(token, method.clone(), path, body.clone()).await;
                let absent = api.as_token(token, method.clone(), "/v1/cluster-policies/nothing", body.clone()).await;
                assert_eq!(
                    (existing.status, absent.status),
                    (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
                    "{method} {path}"
                );
            }
        }
        let batch =
            json!({"operations": [{"op": "create", "kind": "cluster-policy", "object": policy("b", "baseline", 1)}]});
        let r = api.as_token(token, Method::POST, "/v1/batch", Some(batch)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    let r = api.call(Method::GET, "/v1/cluster-policies/tenancy", None).await;
    assert_eq!(r.body["priority"], 10, "nothing a project's token sent changed it");

    // The change log: the admin's watch shows the policy, the project's does not.
    let replay = |token: String| {
        let api = &api;
        async move {
            let r = api.as_token(&token, Method::GET, &format!("/v1/changes?since={since}&watch=false"), None).await;
            // One line reads as one JSON value; more as text.
            let lines = match &r.body {
                Value::String(text) => text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect(),
                one => vec![one.clone()],
            };
            lines.iter().map(|l| l["kind"].clone()).collect::<Vec<_>>()
        }
    };
    assert_eq!(replay(api.admin.clone()).await, [json!("cluster-policy"), Value::Null]);
    assert_eq!(replay(writer).await, [Value::Null], "only the bookmark");
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_batch_writes_cluster_policies_by_name(pool: PgPool) {
    let api = Api::new(pool).await;
    let batch = json!({"operations": [
        {"op": "create", "kind": "cluster-policy", "object": policy("a", "admin", 1)},
        {"op": "patch", "kind": "cluster-policy", "name": "a", "patch": {"priority": 2}},
        {"op": "create", "kind": "cluster-policy", "object": policy("b", "baseline", 1)},
        {"op": "delete", "kind": "cluster-policy", "name": "b"}
    ]});
    let r = api.call(Method::POST, "/v1/batch", Some(batch)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = api.call(Method::GET, "/v1/cluster-policies", None).await.body;
    let names: Vec<(Value, Value)> =
        list["items"].as_array().unwrap().iter().map(|p| (p["name"].clone(), p["priority"].clone())).collect();
    assert_eq!(names, [(json!("a"), json!(2))]);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn explain_names_the_tier_policy_and_rule_that_decided(pool: PgPool) {
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "a", "labels": {"tenant": "a"}}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (name, ip, app) in [("web", "10.0.0.1", "web"), ("db", "10.0.0.2", "db")] {
        let port = json!({"name": name, "project": "a", "node": "node-1", "ips": [ip], "labels": {"app": app}, "security_groups": []});
        let r = api.call(Method::POST, "/v1/ports", Some(port)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let admin = json!({
        "name": "db-guard", "tier": "admin", "priority": 1,
        "subject": {"ports": {"matchLabels": {"app": "db"}}},
        "ingress": [
            {"name": "sql", "action": "pass", "remotes": [{"type": "selector", "ports": {"matchLabels": {"app": "web"}}}],
             "protocols": [{"protocol": "tcp", "port": 5432}]},
            {"name": "nothing-else", "action": "deny", "remotes": [{"type": "selector"}]}
        ]
    });
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(admin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    api.until_ready().await;
    let revision = api.revision().await;
    let explain =
        |port: u16| json!({"from": "a/web", "to": "a/db", "protocol": "tcp", "port": port, "revision": revision});

    let denied = api.call(Method::POST, "/v1/explain", Some(explain(22))).await;
    assert_eq!(denied.status, StatusCode::OK, "{}", denied.body);
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["ingress"]["verdict"], "denied");
    assert_eq!(
        denied.body["ingress"]["tiered"],
        json!({"tier": "admin", "policy": "db-guard", "rule": 1, "rule_name": "nothing-else", "action": "deny"})
    );
    // Passed to the security groups: none isolates db, so it is open, and the pass is named.
    // Its status: node-1 holds it (db is there), and no agent has applied it.
    let served = api.call(Method::GET, "/v1/cluster-policies/db-guard", None).await;
    assert_eq!(
        (served.body["status"]["nodes"].as_u64(), served.body["status"]["applied"].as_u64()),
        (Some(1), Some(0))
    );
    let passed = api.call(Method::POST, "/v1/explain", Some(explain(5432))).await;
    assert_eq!(passed.body["allowed"], true, "{}", passed.body);
    assert_eq!(passed.body["ingress"]["verdict"], "open");
    assert_eq!(passed.body["ingress"]["passed"]["rule_name"], "sql");
    assert!(passed.body["ingress"].get("tiered").is_none(), "{}", passed.body);
    // A project's token is told the tier and the action, not which cluster policy or rule.
    let reader = api.store.create_token(Role::Reader, Some("a"), "", None).await.unwrap().secret;
    let denied = api.as_token(&reader, Method::POST, "/v1/explain", Some(explain(22))).await;
    assert_eq!(denied.body["ingress"]["tiered"], json!({"tier": "admin", "action": "deny"}), "{}", denied.body);
}

/// The example README shows is a policy the API takes.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_readme_example_is_accepted(pool: PgPool) {
    let api = Api::new(pool).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster-policy/no-metadata.yaml");
    let body: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let r = api.call(Method::POST, "/v1/cluster-policies", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["egress"][1]["protocols"], json!([{"port": "dns"}]));
}
