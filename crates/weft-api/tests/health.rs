//! Health that tells the truth (issue 17, finding 6): `/readyz` fails, saying which, when the
//! change-log follower is dead or stuck, when a long transaction holds the change log back, or
//! when the agents' gRPC service is down; the lag metrics show what agents wait.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Api, Reply};
use serde_json::json;
use sqlx::PgPool;
use weft_api::Config;

/// Long enough for any step on a loaded CI machine; tests never wait this long when right.
const PATIENCE: Duration = Duration::from_secs(30);

async fn readyz(api: &Api) -> Reply {
    api.raw(Method::GET, "/readyz", None, &[], vec![]).await
}

/// Polls `/readyz` until `ready` says it is as wanted.
async fn readiness_until(api: &Api, want: impl Fn(&Reply) -> bool) -> Reply {
    weft_testkit::eventually("readiness as wanted", PATIENCE, || async {
        let r = readyz(api).await;
        if want(&r) { Ok(r) } else { Err(format!("{} {}", r.status, r.body)) }
    })
    .await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

async fn metrics(api: &Api) -> String {
    let r = api.raw(Method::GET, "/metrics", None, &[], vec![]).await;
    r.body.as_str().unwrap().to_string()
}

/// A transaction left open in weft's database keeps every follower of the change log below it:
/// the lag metrics read 0 while agents got nothing for 19 s. Now they show it, and `/readyz`
/// fails naming the transaction once it holds the compiler back past `stuck_after`.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_long_transaction_holding_the_change_log_back_shows_in_lag_and_readiness(pool: PgPool) {
    let config = Config { stuck_after: Duration::from_secs(1), ..Config::default() };
    let api = Api::with_poll(pool.clone(), config, Duration::from_millis(50)).await;
    // A node with a port, whose agent has everything so far.
    api.call(Method::POST, "/v1/projects", Some(json!({"name": "p"}))).await;
    let port = json!({"name": "web", "project": "p", "node": "n1", "ips": ["10.0.0.1"]});
    assert_eq!(api.call(Method::POST, "/v1/ports", Some(port)).await.status, StatusCode::CREATED);
    api.store.create_node("n1").await.unwrap();
    let now = api.revision().await;
    let acked =
        weft_store::nodes::Acked { node: "n1".into(), acked: now, realized: now, error: None, problems: vec![] };
    sqlx::query("UPDATE nodes SET controller = 'c1'").execute(&pool).await.unwrap();
    api.store.nodes_acked("c1", &[acked]).await.unwrap();
    readiness_until(&api, |r| r.status == StatusCode::OK).await;
    // Ready allows the compiler to be a moment behind: it must have the port before the
    // transaction below holds the change log back, or n1 has no ports as far as it knows.
    tokio::time::timeout(PATIENCE, api.state.policy.reached(now)).await.expect("the compiler has the port");
    let mut long = pool.begin().await.unwrap();
    // A transaction id taken, as any transaction that writes takes one.
    let (pid, _): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), txid_current()").fetch_one(&mut *long).await.unwrap();
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "waiting"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let text = metrics(&api).await;
    assert!(metric(&text, "weft_api_server_controller_lag_revisions") >= 1.0, "{text}");
    let not_ready = readiness_until(&api, |r| r.status == StatusCode::SERVICE_UNAVAILABLE).await;
    let detail = not_ready.body["detail"].as_str().unwrap();
    assert!(detail.contains("held back by a transaction") && detail.contains(&format!("pid {pid}")), "{detail}");
    assert!(metric(&metrics(&api).await, "weft_api_server_controller_lag_seconds") >= 1.0);
    // weft node list: n1 may be behind by what the compiler has not reached.
    let nodes = api.call(Method::GET, "/v1/nodes", None).await;
    let n1 = &nodes.body["items"][0];
    assert!(n1["lag_revisions"].as_i64().unwrap() >= 1 && n1["lag_seconds"].as_f64().unwrap() >= 1.0, "{n1}");
    long.rollback().await.unwrap();
    readiness_until(&api, |r| r.status == StatusCode::OK).await;
    let text = metrics(&api).await;
    assert_eq!(metric(&text, "weft_api_server_controller_lag_revisions"), 0.0, "{text}");
    assert_eq!(metric(&text, "weft_api_server_controller_lag_seconds"), 0.0, "{text}");
}

/// A follower that has ended, or a gRPC service that is not serving, is not a ready server.
#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn readiness_names_a_dead_follower_and_a_grpc_service_that_is_down(pool: PgPool) {
    let serving = Arc::new(AtomicBool::new(true));
    let config = Config { grpc_serving: Some(Arc::clone(&serving)), ..Config::default() };
    let api = Api::with_config(pool, config).await;
    readiness_until(&api, |r| r.status == StatusCode::OK).await;
    serving.store(false, std::sync::atomic::Ordering::Relaxed);
    let r = readyz(&api).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["detail"], "the agents' gRPC service is not serving", "{}", r.body);
    serving.store(true, std::sync::atomic::Ordering::Relaxed);
    api.follower.stop();
    let r = readiness_until(&api, |r| r.status == StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(r.body["detail"], "the change-log follower is not running", "{}", r.body);
    assert_eq!(r.body["type"], "urn:weft:problem:not-ready");
}
