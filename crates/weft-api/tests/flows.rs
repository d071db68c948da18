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
    assert_eq!(names(&api, &admin, "?since=1h").await.len(), 3);
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
