//! Test support: a fresh PostgreSQL database per test for tests that need a URL rather than a
//! pool (a `weft server` process, a client against a live server). Store and API tests use
//! `#[sqlx::test]`, which does the same for a pool.
//!
//! The server is the one `DATABASE_URL` names (CI provides it; see scripts/test.sh).
//!
//! [`kube_api::FakeKube`] stands in for a Kubernetes API server, which cannot run here.

pub mod kube_api;

pub use weft_store::admin::ScratchDatabase as TestDatabase;

/// The server tests use: `DATABASE_URL`, which must be set (see README.md).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server for tests (see README.md)")
}

/// A fresh, empty database on the test server (no migrations: `weft server` applies them).
pub async fn fresh_database() -> TestDatabase {
    TestDatabase::create(&server_url(), "weft_test").await.expect("create a test database on DATABASE_URL")
}

/// Creates one object in its own transaction; its revision. Panics on failure (test input).
pub async fn create(store: &weft_store::Store, kind: weft_model::Kind, body: serde_json::Value) -> i64 {
    let resource = weft_model::Resource::from_json(kind, body).expect("test object decodes");
    let mut txn = store.begin().await.expect("begin");
    txn.create(resource).await.expect("test object is valid");
    txn.commit().await.expect("commit")
}

/// A compiler loaded with everything the store holds.
pub async fn compiler(store: &weft_store::Store) -> weft_compiler::Compiler {
    use weft_compiler::Change;
    use weft_model::Resource;
    let snapshot = store.snapshot().await.expect("snapshot");
    let changes = snapshot.objects.iter().filter_map(|o| match o.decode().expect("stored object decodes") {
        Resource::Project(p) => Some(Change::UpsertProject(p)),
        Resource::Port(p) => Some(Change::UpsertPort(p)),
        Resource::SecurityGroup(g) => Some(Change::UpsertGroup(g)),
        Resource::VirtualNetwork(_) => None,
    });
    let mut compiler = weft_compiler::Compiler::new();
    compiler.load(snapshot.horizon, changes);
    compiler
}

/// A node's span compiled from scratch from what the store holds: what a controller must have
/// sent an agent that is up to date.
pub async fn expected_span(store: &weft_store::Store, node: &str) -> weft_compiler::NodeSpan {
    compiler(store).await.span(node)
}

/// Whether the tests run as root: network namespaces, nft and real packets need it; tests
/// that need them say so and pass elsewhere (CI runs as root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
