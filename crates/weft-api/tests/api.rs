//! The REST API end to end through the router (`oneshot`), on a fresh PostgreSQL database per
//! test.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode, header};
use common::{Api, Reply};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use weft_store::Store;
use weft_store::tokens::Role;

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn crud_over_http(pool: PgPool) {
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "k8s-default", "labels": {"team": "a"}}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let project_id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers[header::ETAG], format!("\"{}\"", r.body["revision"]));
    assert_eq!(r.headers[header::LOCATION], format!("/v1/projects/{project_id}"));

    let r = api.call(Method::POST, "/v1/security-groups", Some(json!({"name": "db", "project": "k8s-default",
        "selector": {"matchLabels": {"app": "db"}}, "policy_types": ["ingress"],
        "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432], "remote": {"type": "selector", "ports": {"matchLabels": {"app": "api"}}}}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let sg_id = r.body["id"].as_str().unwrap().to_string();
    let rule_id = r.body["rules"][0]["id"].as_str().unwrap().to_string();

    // by id, by project/name and (for projects) by name
    let by_id = api.call(Method::GET, &format!("/v1/security-groups/{sg_id}"), None).await;
    let by_name = api.call(Method::GET, "/v1/security-groups/k8s-default/db", None).await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(by_id.body, by_name.body);
    assert_eq!(api.call(Method::GET, "/v1/projects/k8s-default", None).await.body["id"], project_id.as_str());

    // merge patch keeps rule ids and what it does not mention
    let etag = by_id.headers[header::ETAG].to_str().unwrap().to_string();
    let patch = serde_json::to_vec(&json!({"labels": {"tier": "backend"}})).unwrap();
    let r = api
        .raw(
            Method::PATCH,
            &format!("/v1/security-groups/{sg_id}"),
            Some(&api.admin),
            &[("content-type", "application/merge-patch+json"), ("if-match", &etag)],
            patch.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["labels"], json!({"tier": "backend"}));
    assert_eq!(r.body["rules"][0]["id"], rule_id.as_str());
    assert_eq!(r.body["selector"], json!({"matchLabels": {"app": "db"}}));
    // the same If-Match again is stale now
    let r = api
        .raw(Method::PATCH, &format!("/v1/security-groups/{sg_id}"), Some(&api.admin), &[("if-match", &etag)], patch)
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    assert_eq!(r.problem_type(), "urn:weft:problem:precondition-failed");

    // replace
    let mut body = api.call(Method::GET, "/v1/security-groups/k8s-default/db", None).await.body;
    body["rules"] = json!([]);
    let r = api.call(Method::PUT, "/v1/security-groups/k8s-default/db", Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["rules"], json!([]));

    // networks and ports
    let r = api.call(Method::POST, "/v1/virtual-networks", Some(json!({"name": "pods", "project": "k8s-default", "subnets": [{"cidr": "10.32.0.0/24", "gateway": "10.32.0.1"}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.call(Method::POST, "/v1/ports", Some(json!({"name": "db-0", "project": "k8s-default", "network": "pods", "node": "node-1", "labels": {"app": "db"}, "security_groups": []}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["ips"], json!(["10.32.0.2"]));
    let port_id = r.body["id"].as_str().unwrap().to_string();

    // delete protection, then cascade
    let r = api.call(Method::DELETE, "/v1/projects/k8s-default", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.problem_type(), "urn:weft:problem:has-children");
    let r = api.call(Method::DELETE, &format!("/v1/ports/{port_id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(api.call(Method::GET, &format!("/v1/ports/{port_id}"), None).await.status, StatusCode::NOT_FOUND);
    let r = api.call(Method::DELETE, "/v1/projects/k8s-default?cascade=true", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["revision"].as_i64(), Some(api.revision().await));
    assert_eq!(api.call(Method::GET, "/v1/projects/k8s-default", None).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn bad_input_gets_a_clear_error_and_writes_nothing(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    api.call(Method::POST, "/v1/virtual-networks", Some(json!({"name": "net", "project": "p"}))).await;
    let before = api.revision().await;
    let sg = |rule: Value| json!({"name": "g", "project": "p", "rules": [rule]});
    // (path, body, status, problem type, pointers)
    let cases: Vec<(&str, Value, u16, &str, Vec<&str>)> = vec![
        ("/v1/projects", json!({"name": "Bad_Name"}), 422, "invalid", vec!["/name"]),
        ("/v1/projects", json!({"name": "p"}), 409, "duplicate", vec![]),
        ("/v1/projects", json!({"name": "q", "colour": "red"}), 422, "invalid", vec!["/colour"]),
        ("/v1/projects", json!({"name": 7}), 422, "invalid", vec!["/name"]),
        ("/v1/projects", json!({"labels": {}}), 422, "invalid", vec![""]),
        ("/v1/projects", json!({"name": "q", "labels": {"app": "a b"}}), 422, "invalid", vec!["/labels/app"]),
        (
            "/v1/virtual-networks",
            json!({"name": "n2", "project": "p", "subnets": [{"cidr": "10.0.0.1/24"}]}),
            422,
            "invalid",
            vec!["/subnets/0/cidr"],
        ),
        (
            "/v1/virtual-networks",
            json!({"name": "n2", "project": "p", "subnets": [{"cidr": "10.0.0.0/16"}, {"cidr": "10.0.1.0/24"}]}),
            422,
            "invalid",
            vec!["/subnets/1/cidr"],
        ),
        (
            "/v1/virtual-networks",
            json!({"name": "n2", "project": "p", "subnets": [{"cidr": "10.0.0/24"}]}),
            422,
            "invalid",
            vec!["/subnets/0/cidr"],
        ),
        ("/v1/virtual-networks", json!({"name": "n2", "project": "missing"}), 422, "invalid", vec!["/project"]),
        (
            "/v1/security-groups",
            sg(json!({"direction": "ingress", "protocol": "tcp", "ports": [70000]})),
            422,
            "invalid",
            vec!["/rules/0/ports/0"],
        ),
        (
            "/v1/security-groups",
            sg(json!({"direction": "ingress", "protocol": "tcp", "ports": [{"from": 9, "to": 1}]})),
            422,
            "invalid",
            vec!["/rules/0/ports/0"],
        ),
        ("/v1/security-groups", sg(json!({"direction": "sideways"})), 422, "invalid", vec!["/rules/0/direction"]),
        (
            "/v1/security-groups",
            sg(json!({"direction": "ingress", "protocol": "icmp", "icmp": {"type": 300}})),
            422,
            "invalid",
            vec!["/rules/0/icmp/type"],
        ),
        (
            "/v1/security-groups",
            sg(json!({"direction": "egress", "ethertype": "IPv6", "remote": {"type": "cidr", "cidr": "10.0.0.0/8"}})),
            422,
            "invalid",
            vec!["/rules/0/remote"],
        ),
        (
            "/v1/security-groups",
            sg(
                json!({"direction": "egress", "remote": {"type": "selector", "ports": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}}),
            ),
            422,
            "invalid",
            vec!["/rules/0/remote/ports/matchExpressions/0/values"],
        ),
        ("/v1/ports", json!({"name": "x", "project": "p", "network": "net"}), 422, "invalid", vec!["/network"]),
        (
            "/v1/ports",
            json!({"name": "x", "project": "p", "named_ports": {"http": {"protocol": "tcp", "port": 0}}}),
            422,
            "invalid",
            vec!["/named_ports/http/port"],
        ),
        ("/v1/ports", json!({"name": "x", "project": "p", "ips": ["10.0.0.300"]}), 422, "invalid", vec!["/ips/0"]),
    ];
    for (path, body, status, slug, pointers) in cases {
        let r = api.call(Method::POST, path, Some(body.clone())).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        assert_eq!(r.problem_type(), format!("urn:weft:problem:{slug}"), "{body}");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(!r.body["detail"].as_str().unwrap_or("").is_empty());
        if !pointers.is_empty() {
            assert_eq!(r.pointers(), pointers, "{body}: {}", r.body);
        }
    }
    // malformed JSON, a wrong media type and an oversized body
    let r = api.raw(Method::POST, "/v1/projects", Some(&api.admin), &[], b"{\"name\": ".to_vec()).await;
    assert_eq!((r.status, r.problem_type()), (StatusCode::BAD_REQUEST, "urn:weft:problem:malformed-json"));
    let r = api
        .raw(Method::POST, "/v1/projects", Some(&api.admin), &[("content-type", "text/plain")], b"{}".to_vec())
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = serde_json::to_vec(&json!({"name": "big", "annotations": {"a": "x".repeat(5 * 1024 * 1024)}})).unwrap();
    let r = api.raw(Method::POST, "/v1/projects", Some(&api.admin), &[("content-type", "application/json")], big).await;
    assert_eq!((r.status, r.problem_type()), (StatusCode::PAYLOAD_TOO_LARGE, "urn:weft:problem:payload-too-large"));
    // bad query parameters
    let r = api.call(Method::GET, "/v1/ports?labelSelector=app%20in%20(a", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["parameter"], "labelSelector");
    let r = api.call(Method::GET, "/v1/ports?limit=0", None).await;
    assert_eq!(r.body["errors"][0]["parameter"], "limit");
    let r = api.call(Method::GET, "/v1/ports?colour=red", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // and none of it was written
    assert_eq!(api.changes_after(before).await, 0);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn authentication_and_authorization(pool: PgPool) {
    let api = Api::new(pool).await;
    for p in ["a", "b"] {
        assert_eq!(api.call(Method::POST, "/v1/projects", Some(json!({"name": p}))).await.status, StatusCode::CREATED);
    }
    // no token, a malformed header, an unknown token
    let r = api.raw(Method::GET, "/v1/projects", None, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    let r = api.raw(Method::GET, "/v1/projects", None, &[("authorization", "Basic eDp5")], vec![]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.as_token("weft_bogus", Method::GET, "/v1/projects", None).await.status, StatusCode::UNAUTHORIZED);
    // health and metrics need no token
    assert_eq!(api.raw(Method::GET, "/healthz", None, &[], vec![]).await.status, StatusCode::OK);
    api.until_ready().await;

    // tokens through the API
    let r = api.call(Method::POST, "/v1/tokens", Some(json!({"role": "writer", "project": "a"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let writer = r.body["token"].as_str().unwrap().to_string();
    let writer_id = r.body["id"].as_str().unwrap().to_string();
    let reader = api.store.create_token(Role::Reader, Some("a"), "", None).await.unwrap().secret;
    let expired = api
        .store
        .create_token(Role::Reader, Some("a"), "", Some(chrono::Utc::now() - chrono::Duration::seconds(1)))
        .await
        .unwrap()
        .secret;
    let r = api.as_token(&expired, Method::GET, "/v1/projects", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["detail"].as_str().unwrap().contains("expired"));

    // a writer of a changes a, not b, and cannot create projects or tokens
    let sg = |p: &str| json!({"name": "g", "project": p});
    assert_eq!(
        api.as_token(&writer, Method::POST, "/v1/security-groups", Some(sg("a"))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.as_token(&writer, Method::POST, "/v1/security-groups", Some(sg("b"))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.as_token(&writer, Method::POST, "/v1/projects", Some(json!({"name": "c"}))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.as_token(&writer, Method::GET, "/v1/tokens", None).await.status, StatusCode::FORBIDDEN);
    // another project's objects do not exist for it (issue 17)
    assert_eq!(
        api.as_token(&writer, Method::GET, "/v1/security-groups/b/default", None).await.status,
        StatusCode::NOT_FOUND
    );
    // a reader reads a, writes nothing
    assert_eq!(api.as_token(&reader, Method::GET, "/v1/security-groups/a/g", None).await.status, StatusCode::OK);
    assert_eq!(
        api.as_token(&reader, Method::DELETE, "/v1/security-groups/a/g", None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.as_token(&reader, Method::GET, "/v1/ports?project=b", None).await.status, StatusCode::FORBIDDEN);
    // lists only show what the token may read
    let r = api.as_token(&reader, Method::GET, "/v1/security-groups", None).await;
    let projects: Vec<&str> =
        r.body["items"].as_array().unwrap().iter().map(|o| o["project"].as_str().unwrap()).collect();
    assert_eq!(projects, ["a", "a"]);
    let r = api.as_token(&reader, Method::GET, "/v1/projects", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    // the change log too
    let r = api.as_token(&reader, Method::GET, "/v1/changes?since=0&watch=false", None).await;
    let text = r.body.as_str().unwrap().to_string();
    assert!(
        text.lines()
            .filter(|l| l.contains("\"object\""))
            .all(|l| !l.contains("\"project\":\"b\"") && !l.contains("\"name\":\"b\"")),
        "{text}"
    );

    // revocation takes effect at once
    let r = api.call(Method::DELETE, &format!("/v1/tokens/{writer_id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.as_token(&writer, Method::GET, "/v1/projects", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["detail"].as_str().unwrap().contains("revoked"));
    let r = api.call(Method::GET, "/v1/tokens", None).await;
    assert!(r.body["items"].as_array().unwrap().iter().all(|t| t.get("token").is_none()), "secrets are never listed");
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn batch_is_all_or_nothing_with_one_revision(pool: PgPool) {
    let api = Api::new(pool).await;
    let before = api.revision().await;
    let bad = json!({"operations": [
        {"op": "create", "kind": "project", "object": {"name": "p"}},
        {"op": "create", "kind": "port", "object": {"name": "x", "project": "p", "ips": ["10.0.0.1"]}},
        {"op": "create", "kind": "security-group", "object": {"name": "g", "project": "p", "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [0]}]}}
    ]});
    let r = api.call(Method::POST, "/v1/batch", Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.pointers(), ["/operations/2/object/rules/0/ports/0"]);
    assert_eq!(api.changes_after(before).await, 0);
    assert_eq!(
        api.call(Method::GET, "/v1/projects/p", None).await.status,
        StatusCode::NOT_FOUND,
        "the first op was rolled back"
    );

    let good = json!({"operations": [
        {"op": "create", "kind": "project", "object": {"name": "p"}},
        {"op": "create", "kind": "port", "object": {"name": "x", "project": "p", "ips": ["10.0.0.1"], "labels": {"a": "1"}}},
        {"op": "replace", "kind": "port", "object": {"name": "x", "project": "p", "ips": ["10.0.0.2"]}},
        {"op": "patch", "kind": "port", "project": "p", "name": "x", "patch": {"labels": {"b": "2"}}},
        {"op": "create", "kind": "security-group", "object": {"name": "g", "project": "p"}},
        {"op": "delete", "kind": "security-group", "project": "p", "name": "g"}
    ]});
    let r = api.call(Method::POST, "/v1/batch", Some(good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let revision = r.body["revision"].as_i64().unwrap();
    let page = api.store.changes_since(before, 1_000_000).await.unwrap();
    assert_eq!(page.changes.len(), 7, "six operations, the project's default group among them");
    assert!(page.changes.iter().all(|c| c.revision == revision), "one revision for the whole batch");
    assert_eq!(r.body["results"].as_array().unwrap().len(), 6);
    let port = api.call(Method::GET, "/v1/ports/p/x", None).await.body;
    assert_eq!(port["ips"], json!(["10.0.0.2"]));
    assert_eq!(port["labels"], json!({"b": "2"}));
    assert_eq!(port["revision"].as_i64(), Some(revision));
    // unknown op and missing target are named
    let r = api.call(Method::POST, "/v1/batch", Some(json!({"operations": [{"op": "explode", "kind": "port"}]}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .call(Method::POST, "/v1/batch", Some(json!({"operations": [{"op": "delete", "kind": "port", "name": "x"}]})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.pointers(), ["/operations/0"]);
}

/// A batch's creates of one kind in a row go in together (Txn::create_all): each is still
/// checked as on its own, and the one that fails is named by its position.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_batchs_creates_go_in_together_and_the_one_that_fails_is_named(pool: PgPool) {
    let api = Api::new(pool).await;
    let port = |name: &str, extra: Value| {
        let mut object = json!({"name": name, "project": "p"});
        object.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"op": "create", "kind": "port", "object": object})
    };
    let batch = |operations: Vec<Value>| json!({ "operations": operations });
    let setup = batch(vec![
        json!({"op": "create", "kind": "project", "object": {"name": "p"}}),
        json!({"op": "create", "kind": "project", "object": {"name": "q"}}),
        json!({"op": "create", "kind": "virtual-network", "object": {"name": "n", "project": "p", "subnets": [{"cidr": "10.1.0.0/29", "gateway": "10.1.0.1"}]}}),
    ]);
    assert_eq!(api.call(Method::POST, "/v1/batch", Some(setup)).await.status, StatusCode::OK);
    let before = api.revision().await;

    let refused = [
        (
            vec![port("a", json!({})), port("b", json!({})), port("a", json!({}))],
            StatusCode::CONFLICT,
            None,
            "port p/a already exists",
        ),
        (
            vec![port("a", json!({})), port("b", json!({"security_groups": ["nope"]}))],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/operations/1/object/security_groups/0"),
            "does not exist",
        ),
        (
            vec![
                port("a", json!({})),
                json!({"op": "create", "kind": "port", "object": {"name": "c", "project": "gone"}}),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/operations/1/object/project"),
            "does not exist",
        ),
        (
            vec![port("a", json!({"ips": ["10.9.0.1"]})), port("b", json!({"ips": ["10.9.0.1"]}))],
            StatusCode::CONFLICT,
            None,
            "10.9.0.1",
        ),
        (
            vec![
                port("a", json!({"node": "n1", "interface": "weft9"})),
                port("b", json!({"node": "n1", "interface": "weft9"})),
            ],
            StatusCode::CONFLICT,
            None,
            "weft9",
        ),
    ];
    for (operations, status, pointer, detail) in refused {
        let r = api.call(Method::POST, "/v1/batch", Some(batch(operations))).await;
        assert_eq!(r.status, status, "{}", r.body);
        if let Some(pointer) = pointer {
            assert_eq!(r.pointers(), [pointer], "{}", r.body);
        }
        assert!(r.body.to_string().contains(detail), "{}", r.body);
        assert_eq!(api.changes_after(before).await, 0, "nothing of a refused batch stays");
    }

    // IPAM hands the ports of one batch distinct addresses, and none a port of the batch
    // names for itself, even one written after them.
    let mut operations: Vec<Value> = (0..4).map(|i| port(&format!("auto-{i}"), json!({"network": "n"}))).collect();
    operations.push(port("named", json!({"network": "n", "ips": ["10.1.0.3"]})));
    // A group's rule may name a group created after it in the same batch.
    operations.push(json!({"op": "create", "kind": "security-group", "object": {"name": "g1", "project": "p", "rules": [{"direction": "ingress", "remote": {"type": "security_group", "security_group": "g2"}}]}}));
    operations.push(json!({"op": "create", "kind": "security-group", "object": {"name": "g2", "project": "p"}}));
    let r = api.call(Method::POST, "/v1/batch", Some(batch(operations))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut addresses: Vec<String> = r.body["results"].as_array().unwrap()[..5]
        .iter()
        .map(|result| result["object"]["ips"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addresses[4], "10.1.0.3");
    addresses.sort();
    assert_eq!(addresses, ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
    let r = api.call(Method::DELETE, "/v1/security-groups/p/g2", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "g1's rule holds g2: {}", r.body);
    // The network is full now: the next port says so.
    let r = api.call(Method::POST, "/v1/batch", Some(batch(vec![port("late", json!({"network": "n"}))]))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn lists_page_and_select(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    let ops: Vec<Value> = (0..30)
        .map(|i| json!({"op": "create", "kind": "port", "object": {"name": format!("pod-{i:02}"), "project": "p", "labels": {"app": if i < 10 { "db" } else { "web" }}}}))
        .collect();
    assert_eq!(api.call(Method::POST, "/v1/batch", Some(json!({"operations": ops}))).await.status, StatusCode::OK);
    let mut names = Vec::new();
    let mut uri = "/v1/ports?project=p&limit=7".to_string();
    loop {
        let r = api.call(Method::GET, &uri, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        names.extend(r.body["items"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()));
        match r.body["continue"].as_str() {
            Some(c) => uri = format!("/v1/ports?project=p&limit=7&continue={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).map(|i| format!("pod-{i:02}")).collect();
    assert_eq!(names, expected);
    let r = api.call(Method::GET, "/v1/ports?labelSelector=app%3Ddb", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 10);
    let r = api.call(Method::GET, "/v1/ports?labelSelector=app%20notin%20(db)&name=pod-15", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["revision"].as_i64(), Some(api.revision().await));
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn change_log_watch_streams_and_reports_compaction(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    // replay without watching
    let r = api.call(Method::GET, "/v1/changes?since=0&watch=false", None).await;
    let text = r.body.as_str().unwrap().to_string();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["kind"], "project");
    assert_eq!(lines[1]["kind"], "security-group");
    assert_eq!(lines[2], json!({"op": "bookmark", "revision": 1}));

    // a live watch sees a write committed after it started
    let mut body = api.watch(&api.admin, 1).await;
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(std::str::from_utf8(&first).unwrap(), "{\"op\":\"bookmark\",\"revision\":1}\n");
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "q"}))).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(next.into_data().unwrap().to_vec()).unwrap();
    let change: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (change["revision"].as_i64(), change["op"].as_str(), change["object"]["name"].as_str()),
        (Some(2), Some("put"), Some("q"))
    );

    // after compaction an old `since` is refused with 410
    api.store.compact_through(1).await.unwrap();
    let r = api.call(Method::GET, "/v1/changes?since=0", None).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.problem_type(), "urn:weft:problem:compacted");
    let r = api.call(Method::GET, "/v1/info", None).await;
    assert_eq!((r.body["revision"].as_i64(), r.body["compacted"].as_i64()), (Some(2), Some(1)));
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn metrics_count_requests_by_route_and_status(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::GET, "/v1/projects/nope", None).await;
    api.call(Method::GET, "/v1/projects/nope", None).await;
    let r = api.raw(Method::GET, "/metrics", None, &[], vec![]).await;
    let text = r.body.as_str().unwrap();
    assert!(
        text.contains("weft_api_http_requests_total{method=\"GET\",route=\"/v1/projects/{key}\",status=\"404\"} 2"),
        "{text}"
    );
    assert!(text.contains("weft_api_http_request_duration_seconds_bucket"), "{text}");
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn server_metrics_report_the_controllers_and_each_agents_lag_and_compile_time(pool: PgPool) {
    let api = Api::new(pool).await;
    // The compiler loads in the background: the writes below must come after, so that each
    // is compiled as a change (not taken in with the snapshot).
    let patience = std::time::Duration::from_secs(10);
    tokio::time::timeout(patience, api.state.policy.reached(0)).await.expect("the compiler loaded");
    api.store.create_node("n1").await.unwrap();
    api.store.create_node("n2").await.unwrap();
    api.store.node_connected("n1", "ctl-a", "127.0.0.1:1", "test", &["192.0.2.7".parse().unwrap()]).await.unwrap();
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "q"}))).await;
    let acked = weft_store::nodes::Acked { node: "n1".into(), acked: 1, realized: 1, error: None, problems: vec![] };
    api.store.nodes_acked("ctl-a", &[acked]).await.unwrap();
    // Once the compiler has both projects, the figures are settled.
    tokio::time::timeout(patience, api.state.policy.reached(2)).await.expect("the compiler caught up");
    let r = api.raw(Method::GET, "/metrics", None, &[], vec![]).await;
    let text = r.body.as_str().unwrap();
    for line in [
        "weft_api_server_config_revision 2",
        "weft_api_server_controller_revision 2",
        "weft_api_server_controller_lag_revisions 0",
        "weft_api_server_agents_connected 1",
        "weft_api_server_agent_connected{node=\"n1\"} 1",
        "weft_api_server_agent_connected{node=\"n2\"} 0",
        "weft_api_server_agent_lag_revisions{node=\"n1\"} 1",
        "weft_api_server_agent_lag_revisions{node=\"n2\"} 2",
        "weft_api_server_compile_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // The node's underlay address, as its agent said it in its hello.
    let nodes = api.call(Method::GET, "/v1/nodes", None).await;
    let n1 = nodes.body["items"].as_array().unwrap().iter().find(|n| n["name"] == "n1").unwrap().clone();
    assert_eq!(n1["underlay"], json!(["192.0.2.7"]), "{n1}");
}

/// Waits (bounded) until `check` holds for the reply to a GET.
async fn eventually(api: &Api, uri: &str, check: impl Fn(&Reply) -> bool) -> Reply {
    weft_testkit::eventually(uri, std::time::Duration::from_secs(10), || async {
        let r = api.call(Method::GET, uri, None).await;
        if check(&r) { Ok(r) } else { Err(format!("{} {}", r.status, r.body)) }
    })
    .await
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn gets_follow_writes_made_through_another_api_process(pool: PgPool) {
    let api = Api::new(pool.clone()).await;
    // Another API process on the same database: its commits do not wake this one directly.
    let other = Store::from_pool(pool);
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    // Once the cache has caught up with this process's writes, GETs come from it.
    let committed = *api.store.local_commits().borrow();
    weft_testkit::eventually("the cache caught up", std::time::Duration::from_secs(10), || async {
        let at = api.state.cache.revision();
        weft_testkit::when(at.unwrap_or(0) >= committed, at)
    })
    .await;

    let write = |body: serde_json::Value| {
        let other = other.clone();
        async move {
            let mut txn = other.begin().await.unwrap();
            let resource = weft_model::Resource::from_json(weft_model::Kind::SecurityGroup, body.clone()).unwrap();
            let key = weft_store::ObjectKey::Name { project: Some("p".into()), name: "x".into() };
            let exists = other.get(weft_model::Kind::SecurityGroup, &key).await.unwrap().is_some();
            if exists {
                txn.replace(weft_model::Kind::SecurityGroup, &key, resource, None).await.unwrap();
            } else {
                txn.create(resource).await.unwrap();
            }
            txn.commit().await.unwrap()
        }
    };
    let created = write(json!({"name": "x", "project": "p", "labels": {"v": "1"}})).await;
    let hits_before = api.state.metrics.cache_hits.get();
    let r = eventually(&api, "/v1/security-groups/p/x", |r| r.status == StatusCode::OK).await;
    assert_eq!(r.body["revision"].as_i64(), Some(created));
    assert_eq!(r.headers[header::ETAG], format!("\"{created}\""));

    write(json!({"name": "x", "project": "p", "labels": {"v": "2"}})).await;
    eventually(&api, "/v1/security-groups/p/x", |r| r.body["labels"]["v"] == "2").await;

    let mut txn = other.begin().await.unwrap();
    let key = weft_store::ObjectKey::Name { project: Some("p".into()), name: "x".into() };
    txn.delete(weft_model::Kind::SecurityGroup, &key, false, None).await.unwrap();
    txn.commit().await.unwrap();
    eventually(&api, "/v1/security-groups/p/x", |r| r.status == StatusCode::NOT_FOUND).await;
    assert!(api.state.metrics.cache_hits.get() > hits_before, "the GETs were answered from the cache");

    // and a write through this process is read back at once, whatever the cache knows
    let r = api.call(Method::POST, "/v1/security-groups", Some(json!({"name": "y", "project": "p"}))).await;
    let got = api.call(Method::GET, "/v1/security-groups/p/y", None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["revision"], r.body["revision"]);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn nodes_and_join_tokens_are_for_admins_and_validated(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "a"}))).await;
    let reader = api.store.create_token(Role::Reader, Some("a"), "", None).await.unwrap().secret;
    let created = api.call(Method::POST, "/v1/nodes", Some(json!({"name": "node-1"}))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let credential = created.body["credential"].as_str().unwrap();
    assert_eq!(api.store.authenticate_node(credential).await.unwrap().as_deref(), Some("node-1"));
    // Shown once: the list never has it.
    let list = api.call(Method::GET, "/v1/nodes", None).await;
    assert_eq!(list.body["items"][0]["name"], "node-1");
    assert!(!list.body.to_string().contains(credential));
    assert_eq!(api.call(Method::POST, "/v1/nodes", Some(json!({"name": "node-1"}))).await.status, StatusCode::CONFLICT);
    let bad = api.call(Method::POST, "/v1/nodes", Some(json!({"name": "Node One"}))).await;
    assert_eq!((bad.status, bad.pointers()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["/name"]));
    for (method, uri) in [(Method::POST, "/v1/nodes"), (Method::GET, "/v1/nodes"), (Method::POST, "/v1/join-tokens")] {
        let body = (method == Method::POST).then(|| json!({"name": "node-2"}));
        assert_eq!(api.as_token(&reader, method, uri, body).await.status, StatusCode::FORBIDDEN, "{uri}");
    }
    let bad = api.call(Method::POST, "/v1/join-tokens", Some(json!({"expires_in_seconds": 0}))).await;
    assert_eq!((bad.status, bad.pointers()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["/expires_in_seconds"]));
    let bad = api
        .call(Method::POST, "/v1/join-tokens", Some(json!({"expires_in_seconds": 31 * 86_400, "uses": 0, "node": "N"})))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.pointers(), ["/expires_in_seconds", "/uses", "/node"], "{}", bad.body);
    for (method, uri) in
        [(Method::GET, "/v1/join-tokens"), (Method::DELETE, "/v1/join-tokens/00000000-0000-0000-0000-000000000000")]
    {
        assert_eq!(api.as_token(&reader, method, uri, None).await.status, StatusCode::FORBIDDEN, "{uri}");
    }
    // Made without limits: one use, a day.
    let token = api.call(Method::POST, "/v1/join-tokens", Some(json!({"description": "rack 4"}))).await;
    assert_eq!(token.status, StatusCode::CREATED);
    let secret = token.body["token"].as_str().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = token.body["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires - chrono::Utc::now();
    assert!(lifetime > chrono::Duration::hours(23) && lifetime <= chrono::Duration::hours(24), "{lifetime}");
    assert!(api.store.join(secret, "node-2").await.is_ok());
    assert!(api.store.join(secret, "node-3").await.is_err(), "used once");
    let listed = api.call(Method::GET, "/v1/join-tokens", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let item = &listed.body["items"][0];
    assert_eq!(
        (item["uses"].as_i64(), item["used"].as_i64(), item["description"].as_str()),
        (Some(1), Some(1), Some("rack 4"))
    );
    assert!(!listed.body.to_string().contains(secret), "secrets are never listed");
    let id = item["id"].as_str().unwrap();
    let revoked = api.call(Method::DELETE, &format!("/v1/join-tokens/{id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let listed = api.call(Method::GET, "/v1/join-tokens", None).await;
    assert!(listed.body["items"][0]["revoked_at"].is_string(), "{}", listed.body);
    assert_eq!(api.call(Method::DELETE, "/v1/nodes/node-2", None).await.status, StatusCode::OK);
    assert_eq!(api.call(Method::DELETE, "/v1/nodes/node-2", None).await.status, StatusCode::NOT_FOUND);
    // A group's status needs read access to its project: another's does not exist for it.
    let group = api.call(Method::GET, "/v1/security-groups/a/default/status", None).await;
    assert_eq!(group.status, StatusCode::OK, "{:?}", group.body);
    assert_eq!(group.body["name"], "default");
    let b = api.call(Method::POST, "/v1/projects", Some(json!({"name": "b"}))).await;
    assert_eq!(b.status, StatusCode::CREATED);
    let other = api.as_token(&reader, Method::GET, "/v1/security-groups/b/default/status", None).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

/// A port's instance (a pod's UID, a VM's id) is stored and served as given, and one that is
/// not an instance id is refused naming the field, with nothing written.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_ports_instance_round_trips_and_a_bad_one_is_refused(pool: PgPool) {
    let api = Api::new(pool).await;
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    let r = api.call(Method::POST, "/v1/ports", Some(json!({"name": "web", "project": "p", "instance": uid}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = api.call(Method::GET, &format!("/v1/ports/{id}"), None).await;
    assert_eq!(r.body["instance"], uid, "{}", r.body);
    for bad in ["", "a b", "-x", &"a".repeat(129)] {
        let r = api.call(Method::POST, "/v1/ports", Some(json!({"name": "db", "project": "p", "instance": bad}))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {}", r.body);
        assert_eq!(r.pointers(), ["/instance"], "{bad:?}: {}", r.body);
    }
    let r = api.call(Method::GET, "/v1/ports?project=p", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1), "nothing of the refused ports: {}", r.body);
}
