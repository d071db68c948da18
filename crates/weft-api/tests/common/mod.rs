//! The API test harness: the router on a fresh database, called with `oneshot` as a client
//! would, with an admin token and helpers for replies.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of these; they fail loudly

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use weft_api::{AppState, Config, router};
use weft_control::{Encoding, Follower};
use weft_store::Store;

pub struct Api {
    pub router: Router,
    pub store: Store,
    pub state: AppState,
    /// The compiler the API reads, kept current from the change log, as an API-only
    /// process holds one.
    pub follower: Arc<Follower>,
    pub admin: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    pub fn pointers(&self) -> Vec<&str> {
        self.body["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["pointer"].as_str()).collect())
            .unwrap_or_default()
    }
}

impl Api {
    pub async fn new(pool: PgPool) -> Api {
        Api::with_config(pool, Config::default()).await
    }

    pub async fn with_config(pool: PgPool, config: Config) -> Api {
        Api::with_poll(pool, config, Duration::from_secs(1)).await
    }

    /// An API whose process looks at the change log's horizon every `poll` when no
    /// notification arrives.
    pub async fn with_poll(pool: PgPool, config: Config, poll: Duration) -> Api {
        let store = Store::from_pool(pool);
        let admin = store.bootstrap_admin_token().await.unwrap().unwrap().secret;
        let horizon = store.revision_watch(poll).await.unwrap();
        let follower =
            Arc::new(Follower::start(store.clone(), horizon.clone(), weft_control::RING_UPDATES, Encoding::None));
        let config = Config { compile_seconds: Some(follower.hub.compile_seconds.clone()), ..config };
        let state = AppState::new(store.clone(), Arc::clone(&follower.hub) as _, horizon, config);
        Api { router: router(state.clone()), store, state, follower, admin }
    }

    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    /// Opens a watch of the change log after `since` with `token`; its body, to read frames from.
    pub async fn watch(&self, token: &str, since: i64) -> Body {
        let request = Request::get(format!("/v1/changes?since={since}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body()
    }

    /// Waits (at most 30 s) until `/readyz` answers 200: the compiler has loaded.
    pub async fn until_ready(&self) {
        weft_testkit::eventually("/readyz answering 200", std::time::Duration::from_secs(30), || async {
            let r = self.raw(Method::GET, "/readyz", None, &[], vec![]).await;
            weft_testkit::when(r.status == StatusCode::OK, r.body)
        })
        .await;
    }

    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.as_token(&self.admin.clone(), method, uri, body).await
    }

    pub async fn as_token(&self, token: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, uri, Some(token), &[("content-type", "application/json")], bytes).await
    }

    pub async fn revision(&self) -> i64 {
        self.store.current_revision().await.unwrap()
    }

    /// Change-log entries committed after `revision`: none means nothing was written.
    pub async fn changes_after(&self, revision: i64) -> usize {
        self.store.changes_since(revision, 1_000_000).await.unwrap().changes.len()
    }
}
