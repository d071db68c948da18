//! `GET /v1/flows` (DESIGN.md §10) over a flow log a controller wrote: the filters, a
//! project reader's view, and a watch that streams what is written after it opened.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode};
use common::Api;
use http_body_util::BodyExt;
use sqlx::PgPool;
use uuid::Uuid;
use weft_model::RuleOrigin;
use weft_model::flow::{Flow, FlowEndpoint, FlowGroup, FlowKind, FlowRule, SideDecision, Verdict};
use weft_store::tokens::Role;

fn end(address: &str, project: &str, name: &str, app: &str) -> FlowEndpoint {
    FlowEndpoint {
        address: address.parse().unwrap(),
        port: Some(Uuid::new_v4()),
        project: Some(project.into()),
        name: Some(name.into()),
        labels: [("app".to_string(), app.to_string())].into(),
        node: Some("n1".into()),
    }
}

fn flow(src: FlowEndpoint, dst: FlowEndpoint, protocol: u8, port: Option<u16>, ingress: SideDecision) -> Flow {
    let verdict = if matches!(ingress, SideDecision::Denied { .. }) { Verdict::Denied } else { Verdict::Allowed };
    Flow {
        id: 0,
        at_ms: chrono::Utc::now().timestamp_millis(),
        kind: if verdict == Verdict::Denied { FlowKind::Denied } else { FlowKind::Connection },
        verdict,
        ended: false,
        protocol,
        src,
        dst,
        src_port: port.map(|_| 40000),
        dst_port: port,
        icmp_type: port.is_none().then_some(8),
        icmp_code: port.is_none().then_some(0),
        egress: Some(SideDecision::Open),
        ingress: Some(ingress),
        dns: None,
        counters: None,
        nodes: vec!["n1".into()],
    }
}

/// Project a's ping from ui to db (denied by default-deny and db-in), a's app to db on 5432
/// (allowed by db-in's first rule), b's x to y on 80 (open).
fn three() -> Vec<Flow> {
    let group = |name: &str| FlowGroup { id: Uuid::new_v4(), project: "a".into(), name: name.into() };
    let denied = SideDecision::Denied { isolated_by: vec![group("default-deny"), group("db-in")] };
    let rule = SideDecision::Allowed {
        rule: FlowRule {
            group: Uuid::new_v4(),
            project: "a".into(),
            group_name: "np-db-in".into(),
            rule: Uuid::new_v4(),
            origin: Some(RuleOrigin {
                kind: "NetworkPolicy".into(),
                namespace: Some("a".into()),
                name: "db-in".into(),
                index: Some(0),
            }),
        },
    };
    vec![
        flow(end("10.0.0.1", "a", "ui", "ui"), end("10.0.0.3", "a", "db", "db"), 1, None, denied),
        flow(end("10.0.0.2", "a", "app", "app"), end("10.0.0.3", "a", "db", "db"), 6, Some(5432), rule),
        flow(end("10.0.1.1", "b", "x", "x"), end("10.0.1.2", "b", "y", "y"), 6, Some(80), SideDecision::Open),
    ]
}

async fn names(api: &Api, token: &str, query: &str) -> Vec<String> {
    let r = api.as_token(token, Method::GET, &format!("/v1/flows{query}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}>{}", f["src"]["name"].as_str().unwrap(), f["dst"]["name"].as_str().unwrap()))
        .collect()
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn flows_are_filtered_and_a_reader_sees_its_projects_only(pool: PgPool) {
    let api = Api::new(pool).await;
    api.store.insert_flows(&three()).await.unwrap();
    let admin = api.admin.clone();
    assert_eq!(names(&api, &admin, "").await, ["ui>db", "app>db", "x>y"], "oldest first");
    assert_eq!(names(&api, &admin, "?verdict=denied").await, ["ui>db"]);
    assert_eq!(names(&api, &admin, "?protocol=tcp&port=5432").await, ["app>db"]);
    assert_eq!(names(&api, &admin, "?protocol=icmp").await, ["ui>db"]);
    assert_eq!(names(&api, &admin, "?from=app%3Dui").await, ["ui>db"]);
    assert_eq!(names(&api, &admin, "?to=app%20in%20(db,y)&limit=2").await, ["app>db", "x>y"], "the newest two");
    // By the NetworkPolicy a rule came from, or a group that isolated the port.
    assert_eq!(names(&api, &admin, "?policy=db-in").await, ["ui>db", "app>db"]);
    assert_eq!(names(&api, &admin, "?policy=default-deny").await, ["ui>db"]);
    assert_eq!(names(&api, &admin, "?project=b").await, ["x>y"]);
    // A reader of b sees b's flow, and cannot ask for a's.
    let reader = api.store.create_token(Role::Reader, Some("b"), "", None).await.unwrap().secret;
    assert_eq!(names(&api, &reader, "").await, ["x>y"]);
    let r = api.as_token(&reader, Method::GET, "/v1/flows?project=a", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // A flow from b's port to a's: b's reader sees a's end as an address, nothing of what a
    // decided, and cannot find it by a's labels or policies.
    let mut across = three().remove(1);
    across.src = end("10.0.1.1", "b", "x", "x");
    api.store.insert_flows(&[across]).await.unwrap();
    let r = api.as_token(&reader, Method::GET, "/v1/flows?protocol=tcp&port=5432", None).await;
    let seen = &r.body["items"][0];
    assert_eq!(
        (seen["src"]["name"].as_str(), seen["dst"]["address"].as_str()),
        (Some("x"), Some("10.0.0.3")),
        "{seen}"
    );
    assert!(seen["dst"].get("name").is_none() && seen["dst"].get("labels").is_none(), "{seen}");
    assert_eq!(seen["ingress"]["decision"], "allowed_unknown", "{seen}");
    for hidden in ["?to=app%3Ddb", "?policy=db-in"] {
        assert!(names(&api, &reader, hidden).await.is_empty(), "{hidden}");
    }
    assert_eq!(names(&api, &admin, "?protocol=tcp&port=5432").await, ["app>db", "x>db"], "an admin sees both ends");
    // What a parameter must be, named.
    for (query, parameter) in [
        ("?verdict=maybe", "verdict"),
        ("?since=yesterday", "since"),
        ("?from=a%3D%3D%3D", "from"),
        ("?limit=0", "limit"),
        ("?colour=red", "colour"),
    ] {
        let r = api.call(Method::GET, &format!("/v1/flows{query}"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert_eq!(r.body["errors"][0]["parameter"], parameter, "{}", r.body);
    }
    let r = api.raw(Method::GET, "/v1/flows", None, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // since: only what is newer.
    assert!(names(&api, &admin, "?until=1h").await.is_empty());
    assert_eq!(names(&api, &admin, "?since=1h").await.len(), 4);
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_watch_streams_the_flows_written_after_it_opened(pool: PgPool) {
    let api = Api::new(pool).await;
    let flows = three();
    api.store.insert_flows(&flows[..1]).await.unwrap();
    let request = axum::http::Request::get("/v1/flows?watch=true&project=a")
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {}", api.admin))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(api.router.clone(), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // b's flow is not a's; a's second is what the watch shows.
    api.store.insert_flows(&flows[1..]).await.unwrap();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!((lines[0]["src"]["name"].as_str(), lines[0]["dst_port"].as_u64()), (Some("app"), Some(5432)));
}

/// The traffic-groups graph (`GET /v1/flows/graph`): ports grouped by app, an allowed edge
/// counted once though both ends reported it, with the rule and its NetworkPolicy, a denied
/// edge with the group isolating its destination, what is no port as `outside`, the drops on
/// their group, and columns in the order traffic flows.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_graph_groups_ports_by_label_and_says_what_decided_each_edge(pool: PgPool) {
    use serde_json::json;
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "a"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut ids = std::collections::HashMap::new();
    for (name, ip) in [("ui", "10.0.0.1"), ("app", "10.0.0.2"), ("db", "10.0.0.3")] {
        let port = json!({"name": name, "project": "a", "node": "n1", "ips": [ip], "labels": {"app": name}});
        let r = api.call(Method::POST, "/v1/ports", Some(port)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.insert(name, Uuid::parse_str(r.body["id"].as_str().unwrap()).unwrap());
    }
    let group = json!({"name": "db-in", "project": "a", "selector": {"matchLabels": {"app": "db"}},
        "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [5432],
        "remote": {"type": "selector", "ports": {"matchLabels": {"app": "app"}}},
        "origin": {"kind": "NetworkPolicy", "namespace": "a", "name": "db-in", "index": 0}}]});
    let r = api.call(Method::POST, "/v1/security-groups", Some(group)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (grp, rule) = (
        Uuid::parse_str(r.body["id"].as_str().unwrap()).unwrap(),
        Uuid::parse_str(r.body["rules"][0]["id"].as_str().unwrap()).unwrap(),
    );
    api.until_ready().await;
    let revision = api.revision().await;
    let r =
        api.call(Method::GET, &format!("/v1/reach?project=a&protocol=tcp&port=5432&revision={revision}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "the compiler has the ports: {}", r.body);

    let now = chrono::Utc::now();
    let minute = now - chrono::Duration::seconds(now.timestamp().rem_euclid(60));
    let row = |port: &str, ingress: bool, remote: Option<(&str, Option<&str>)>, protocol: i32, service: i32| {
        weft_store::flows::MinuteRow {
            remote: remote.map(|(address, _)| address.to_string()),
            remote_port: remote.and_then(|(_, p)| p).map(|p| ids[p]),
            remote_project: remote.and_then(|(_, p)| p).map(|_| "a".to_string()),
            protocol,
            service: Some(service),
            ..weft_store::flows::MinuteRow::empty(minute, "n1", ids[port], "a", ingress)
        }
    };
    let allowed_in = weft_store::flows::MinuteRow {
        grp: Some(grp),
        rule: Some(rule),
        isolated: true,
        started: 3,
        bytes_sent: 100,
        ..row("db", true, Some(("10.0.0.2", Some("app"))), 6, 5432)
    };
    let allowed_out =
        weft_store::flows::MinuteRow { started: 3, ..row("app", false, Some(("10.0.0.3", Some("db"))), 6, 5432) };
    let denied_in = weft_store::flows::MinuteRow {
        denied: true,
        isolated: true,
        sampled: 4,
        ..row("db", true, Some(("10.0.0.1", Some("ui"))), 1, 8)
    };
    let ping_out =
        weft_store::flows::MinuteRow { started: 1, ..row("ui", false, Some(("10.0.0.3", Some("db"))), 1, 8) };
    let drops =
        weft_store::flows::MinuteRow { denied: true, isolated: true, dropped: 9, ..row("db", true, None, 0, 0) };
    let dns = weft_store::flows::MinuteRow { started: 2, ..row("app", false, Some(("192.0.2.9", None)), 17, 53) };
    api.store
        .replace_flow_minute(minute, "n1", &[allowed_in, allowed_out, denied_in, ping_out, drops, dns])
        .await
        .unwrap();

    let r = api.call(Method::GET, "/v1/flows/graph?project=a&window=15m", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let nodes: Vec<(String, u64, u64)> = r.body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["column"].as_u64().unwrap(), n["row"].as_u64().unwrap()))
        .collect();
    let at = |id: &str| nodes.iter().find(|n| n.0 == id).map(|n| (n.1, n.2));
    assert_eq!((at("app=app"), at("app=ui")), (Some((0, 0)), Some((0, 1))), "{nodes:?}");
    assert_eq!((at("app=db"), at("outside")), (Some((1, 0)), Some((1, 1))), "{nodes:?}");
    let db = r.body["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "app=db").unwrap();
    assert_eq!((db["dropped"].as_i64(), db["ports"].clone()), (Some(9), json!(["a/db"])));
    let edges = r.body["edges"].as_array().unwrap();
    let edge = |from: &str, to: &str| edges.iter().find(|e| e["from"] == from && e["to"] == to).unwrap().clone();
    let to_db = edge("app=app", "app=db");
    assert_eq!(
        (to_db["verdict"].as_str(), to_db["connections"].as_i64()),
        (Some("allowed"), Some(3)),
        "counted once: {to_db}"
    );
    assert_eq!(to_db["ingress"][0]["origin"], "NetworkPolicy a/db-in [0]", "{to_db}");
    assert_eq!(to_db["egress"][0]["decision"], "open", "{to_db}");
    let ping = edge("app=ui", "app=db");
    assert_eq!(
        (ping["verdict"].as_str(), ping["denied"].as_i64(), ping["service"].as_i64()),
        (Some("denied"), Some(4), Some(8))
    );
    // The project's default group isolates too (ingress from its own members only).
    assert_eq!(ping["ingress"][0]["isolated_by"], json!(["db-in", "default"]), "{ping}");
    assert_eq!(edge("app=app", "outside")["connections"], 2);
    // A minute before: what decided is said by the names written with its rows, as they were
    // then, though that group is gone now.
    let before = minute - chrono::Duration::minutes(1);
    let old_rule = weft_store::flows::MinuteRow {
        minute: before,
        grp: Some(Uuid::from_u128(77)),
        rule: Some(Uuid::from_u128(78)),
        isolated: true,
        started: 1,
        group_name: Some("old-db-in".into()),
        origin: Some("NetworkPolicy a/old-db-in [1]".into()),
        ..row("db", true, Some(("10.0.0.2", Some("app"))), 6, 5433)
    };
    let old_denial = weft_store::flows::MinuteRow {
        minute: before,
        denied: true,
        isolated: true,
        sampled: 1,
        isolated_by: Some("gone-deny, old-db-in".into()),
        ..row("db", true, Some(("10.0.0.1", Some("ui"))), 6, 80)
    };
    api.store.replace_flow_minute(before, "n1", &[old_rule, old_denial]).await.unwrap();
    let r = api.call(Method::GET, "/v1/flows/graph?project=a&window=15m", None).await;
    let edges = r.body["edges"].as_array().unwrap();
    let on = |service: i64| edges.iter().find(|e| e["service"] == service).unwrap().clone();
    assert_eq!(
        (on(5433)["ingress"][0]["group_name"].as_str(), on(5433)["ingress"][0]["origin"].as_str()),
        (Some("old-db-in"), Some("NetworkPolicy a/old-db-in [1]")),
        "{}",
        r.body
    );
    assert_eq!(on(80)["ingress"][0]["isolated_by"], json!(["gone-deny", "old-db-in"]), "{}", r.body);
    // The rule's hits: the connections it allowed, per minute.
    let r = api.call(Method::GET, "/v1/security-groups/a/db-in/hits?window=1h", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["rules"][0]["rule"].as_str(), r.body["rules"][0]["connections"].as_i64()),
        (Some(rule.to_string().as_str()), Some(3)),
        "{}",
        r.body
    );
    assert_eq!(r.body["rules"][0]["minutes"][0]["connections"], 3, "{}", r.body);
    let r = api
        .as_token(
            &api.store.create_token(Role::Reader, Some("b"), "", None).await.unwrap().secret,
            Method::GET,
            "/v1/security-groups/a/db-in/hits",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another project's group is not there: {}", r.body);
    // Grouped by another label: every port stands alone under its name.
    let r = api.call(Method::GET, "/v1/flows/graph?project=a&group=tier", None).await;
    assert!(r.body["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "tier=db"), "{}", r.body);
    // A reader of another project may not see it; a parameter is checked.
    let reader = api.store.create_token(Role::Reader, Some("b"), "", None).await.unwrap().secret;
    let r = api.as_token(&reader, Method::GET, "/v1/flows/graph?project=a", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = api.call(Method::GET, "/v1/flows/graph?project=a&window=30d", None).await;
    assert_eq!((r.status, r.body["errors"][0]["parameter"].as_str()), (StatusCode::BAD_REQUEST, Some("window")));
}

/// A project's reader sees the graph of its project with every other project's ports as one
/// group, "other projects", and nothing of what decided on their side: not the rule that let
/// its port in, nor the groups that isolate it. An admin sees the same rows in full.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_project_reader_sees_other_projects_in_the_graph_as_one_group_without_their_deciders(pool: PgPool) {
    use serde_json::json;
    let api = Api::new(pool).await;
    let mut ids = std::collections::HashMap::new();
    for (project, name, ip) in [("a", "db", "10.0.0.3"), ("b", "x", "10.0.1.1")] {
        let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": project}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let port = json!({"name": name, "project": project, "node": "n1", "ips": [ip], "labels": {"app": name}});
        let r = api.call(Method::POST, "/v1/ports", Some(port)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.insert(name, Uuid::parse_str(r.body["id"].as_str().unwrap()).unwrap());
    }
    api.until_ready().await;
    // The compiler has the ports (reach at a revision waits for it).
    let revision = api.revision().await;
    let r = api.call(Method::GET, &format!("/v1/reach?protocol=tcp&port=80&revision={revision}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let now = chrono::Utc::now();
    let minute = now - chrono::Duration::seconds(now.timestamp().rem_euclid(60));
    let row = |port: &str, project: &str, ingress: bool, remote: (&str, &str, &str), service: i32| {
        weft_store::flows::MinuteRow {
            remote: Some(remote.0.into()),
            remote_port: Some(ids[remote.1]),
            remote_project: Some(remote.2.into()),
            protocol: 6,
            service: Some(service),
            ..weft_store::flows::MinuteRow::empty(minute, "n1", ids[port], project, ingress)
        }
    };
    let rows = [
        // b's x connects to a's db on 5432: a's rule let it in; on 80: a's groups dropped it.
        weft_store::flows::MinuteRow { started: 2, ..row("x", "b", false, ("10.0.0.3", "db", "a"), 5432) },
        weft_store::flows::MinuteRow {
            started: 2,
            isolated: true,
            grp: Some(Uuid::from_u128(1)),
            rule: Some(Uuid::from_u128(2)),
            group_name: Some("db-in".into()),
            origin: Some("NetworkPolicy a/db-in [0]".into()),
            ..row("db", "a", true, ("10.0.1.1", "x", "b"), 5432)
        },
        weft_store::flows::MinuteRow {
            denied: true,
            isolated: true,
            sampled: 3,
            isolated_by: Some("db-in, default-deny".into()),
            ..row("db", "a", true, ("10.0.1.1", "x", "b"), 80)
        },
    ];
    api.store.replace_flow_minute(minute, "n1", &rows).await.unwrap();

    let reader = api.store.create_token(Role::Reader, Some("b"), "", None).await.unwrap().secret;
    let r = api.as_token(&reader, Method::GET, "/v1/flows/graph?project=b", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ids_of = |body: &serde_json::Value| -> Vec<String> {
        body["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids_of(&r.body), ["app=x", "other projects"], "{}", r.body);
    let text = r.body.to_string();
    assert!(!text.contains("db-in") && !text.contains("\"a/") && !text.contains("default-deny"), "{text}");
    let edges = r.body["edges"].as_array().unwrap();
    let on = |service: i64| edges.iter().find(|e| e["service"] == service).unwrap().clone();
    assert_eq!((on(5432)["from"].as_str(), on(5432)["to"].as_str()), (Some("app=x"), Some("other projects")));
    assert_eq!(on(5432)["ingress"], json!([{"decision": "allowed_unknown"}]), "{}", r.body);
    assert_eq!(on(80)["ingress"], json!([{"decision": "denied", "isolated_by": []}]), "{}", r.body);
    assert_eq!(on(80)["verdict"], "denied");
    // An admin sees a's group by its project and label, and what decided there.
    let r = api.call(Method::GET, "/v1/flows/graph?project=b", None).await;
    assert_eq!(ids_of(&r.body), ["app=x", "a/app=db"], "{}", r.body);
    let edges = r.body["edges"].as_array().unwrap();
    let to_db = edges.iter().find(|e| e["service"] == 5432).unwrap();
    assert_eq!(to_db["ingress"][0]["group_name"], "db-in", "{}", r.body);
}

/// Traffic a tiered cluster policy decided (DESIGN.md §11): an admin is told the tier, the
/// policy and the rule, in the flows and in the graph, and finds the flows by the policy's
/// name; a project's reader is told the tier and the action only, as explain tells it, and
/// cannot find them by the policy's name.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_tiered_rules_flows_name_it_to_an_admin_and_only_its_tier_and_action_to_a_project(pool: PgPool) {
    use serde_json::json;
    use weft_model::flow::FlowTieredRule;
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "b"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let port = json!({"name": "x", "project": "b", "node": "n1", "ips": ["10.0.1.1"], "labels": {"app": "x"}});
    let r = api.call(Method::POST, "/v1/ports", Some(port)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let x = Uuid::parse_str(r.body["id"].as_str().unwrap()).unwrap();
    api.until_ready().await;
    let revision = api.revision().await;
    let r = api.call(Method::GET, &format!("/v1/reach?protocol=tcp&port=80&revision={revision}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let policy = Uuid::from_u128(77);
    let rule = FlowTieredRule {
        tier: weft_model::Tier::Admin,
        action: weft_model::PolicyAction::Deny,
        policy: Some(policy),
        policy_name: Some("no-metadata".into()),
        rule: Some(0),
        rule_name: Some("metadata".into()),
    };
    let mut dropped = flow(
        FlowEndpoint { port: Some(x), ..end("10.0.1.1", "b", "x", "x") },
        FlowEndpoint::outside("169.254.169.254".parse().unwrap()),
        6,
        Some(80),
        SideDecision::Open,
    );
    (dropped.kind, dropped.verdict) = (FlowKind::Denied, Verdict::Denied);
    dropped.egress = Some(SideDecision::Tiered { rule: rule.clone() });
    dropped.ingress = None;
    api.store.insert_flows(&[dropped]).await.unwrap();
    let now = chrono::Utc::now();
    let minute = now - chrono::Duration::seconds(now.timestamp().rem_euclid(60));
    let row = weft_store::flows::MinuteRow {
        remote: Some("169.254.169.254".into()),
        protocol: 6,
        service: Some(80),
        denied: true,
        sampled: 2,
        policy: Some(policy),
        policy_rule: Some(0),
        tiered: Some(weft_store::flows::Json(rule)),
        ..weft_store::flows::MinuteRow::empty(minute, "n1", x, "b", false)
    };
    api.store.replace_flow_minute(minute, "n1", &[row]).await.unwrap();

    // The admin: all of it, and the flow by its policy's name.
    let full = json!({"decision": "tiered", "rule": {"tier": "admin", "action": "deny", "policy": policy,
                      "policy_name": "no-metadata", "rule": 0, "rule_name": "metadata"}});
    let r = api.call(Method::GET, "/v1/flows?policy=no-metadata", None).await;
    assert_eq!(r.body["items"][0]["egress"], full, "{}", r.body);
    let r = api.call(Method::GET, "/v1/flows/graph?project=b", None).await;
    let edge = &r.body["edges"][0];
    assert_eq!((edge["egress"][0].clone(), edge["verdict"].as_str()), (full, Some("denied")), "{}", r.body);
    // b's reader: the tier and the action, nothing that names the policy.
    let reader = api.store.create_token(Role::Reader, Some("b"), "", None).await.unwrap().secret;
    let told = json!({"decision": "tiered", "rule": {"tier": "admin", "action": "deny"}});
    let r = api.as_token(&reader, Method::GET, "/v1/flows", None).await;
    assert_eq!(r.body["items"][0]["egress"], told, "{}", r.body);
    assert_eq!(names(&api, &reader, "?policy=no-metadata").await, Vec::<String>::new());
    let r = api.as_token(&reader, Method::GET, "/v1/flows/graph?project=b", None).await;
    assert_eq!(r.body["edges"][0]["egress"][0], told, "{}", r.body);
    assert!(!r.body.to_string().contains("metadata"), "{}", r.body);
}
