//! Input made to break the server (issue 17, finding 8): every answer is a problem+json 4xx
//! naming what is wrong, never a panic, a dropped connection or a 500, and nothing is written.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode};
use common::Api;
use serde_json::json;
use sqlx::PgPool;

/// A request, and the status and the pointer of the bad field its answer must have.
type Case = (Method, &'static str, Option<serde_json::Value>, StatusCode, Option<&'static str>);

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn hostile_input_gets_a_4xx_problem_and_writes_nothing(pool: PgPool) {
    let api = Api::new(pool).await;
    let r = api.call(Method::POST, "/v1/projects", Some(json!({"name": "a"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let before = api.revision().await;
    let cases: Vec<Case> = vec![
        // A lifetime that overflowed the clock and panicked the handler.
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "admin", "expires_in_seconds": 9_000_000_000_000_000u64})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/expires_in_seconds"),
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "admin", "expires_in_seconds": u64::MAX})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/expires_in_seconds"),
        ),
        // NUL characters PostgreSQL cannot store answered 500.
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "admin", "description": "a\u{0}b"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/description"),
        ),
        (
            Method::POST,
            "/v1/projects",
            Some(json!({"name": "b\u{0}"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/name"),
        ),
        (
            Method::POST,
            "/v1/projects",
            Some(json!({"name": "b", "annotations": {"note": "x\u{0}"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/annotations/note"),
        ),
        (
            Method::POST,
            "/v1/join-tokens",
            Some(json!({"description": "\u{0}"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/description"),
        ),
        (Method::GET, "/v1/projects?name=a%00b", None, StatusCode::BAD_REQUEST, None),
        (Method::GET, "/v1/ports/a/x%00", None, StatusCode::BAD_REQUEST, None),
        // A body that is no object, which serde took for a struct of defaults.
        (Method::POST, "/v1/join-tokens", Some(json!([])), StatusCode::UNPROCESSABLE_ENTITY, Some("")),
        (Method::POST, "/v1/nodes", Some(json!(["node-1"])), StatusCode::UNPROCESSABLE_ENTITY, Some("")),
        (Method::POST, "/v1/explain", Some(json!("x")), StatusCode::UNPROCESSABLE_ENTITY, Some("")),
        // Query strings axum refused in plain text.
        (Method::GET, "/v1/reach?port=99999", None, StatusCode::BAD_REQUEST, None),
        (Method::GET, "/v1/realization?revision=x", None, StatusCode::BAD_REQUEST, None),
    ];
    for (method, path, body, status, pointer) in cases {
        let r = api.call(method.clone(), path, body.clone()).await;
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.body);
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{method} {path}: {}",
            r.body
        );
        if let Some(p) = pointer {
            assert_eq!(r.pointers(), [p], "{method} {path}: {}", r.body);
        }
    }
    let long = format!("/v1/projects?name={}", "a".repeat(10_000));
    let r = api.call(Method::GET, &long, None).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG, "{}", r.body);
    assert_eq!(r.problem_type(), "urn:weft:problem:uri-too-long");
    assert_eq!(api.changes_after(before).await, 0, "a refused request wrote something");
    assert_eq!(api.store.list_tokens().await.unwrap().len(), 1, "only the admin token");
}
