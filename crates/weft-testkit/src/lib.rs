//! Test support: a fresh PostgreSQL database per test for tests that need a URL rather than a
//! pool (a `weft server` process, a client against a live server). Store and API tests use
//! `#[sqlx::test]`, which does the same for a pool.
//!
//! The server is the one `DATABASE_URL` names (CI provides it; see scripts/test.sh).
//!
//! [`kube_api::FakeKube`] stands in for a Kubernetes API server, which cannot run here;
//! [`eventually`] is how every test waits for a condition.

pub mod containerd;
pub mod kube_api;
pub mod netns;
mod poll;
pub mod span_controller;

pub use netns::Netns;
pub use poll::{eventually, eventually_blocking, when};

use weft_store::admin::ScratchDatabase;

/// A scratch database for one test, dropped when the test is done with it (also when the
/// test fails), so that test runs leave nothing on the PostgreSQL server.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    inner: Option<ScratchDatabase>,
}

impl TestDatabase {
    /// Drops the database now.
    pub async fn drop_database(mut self) {
        if let Some(db) = self.inner.take() {
            db.drop_database().await;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(db) = self.inner.take() else { return };
        // Drop may run inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own does the dropping (WITH (FORCE) ends any session
        // still connected, such as a server process being killed).
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                runtime.block_on(db.drop_database());
            }
        })
        .join();
    }
}

/// A directory of the test's own under the system's temporary directory, removed when dropped
/// (also when the test fails).
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new directory named `<prefix>-<random>`.
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot make {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server tests use: `DATABASE_URL`, which must be set (see README.md).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server for tests (see README.md)")
}

/// A fresh, empty database on the test server (no migrations: `weft server` applies them).
pub async fn fresh_database() -> TestDatabase {
    let db = ScratchDatabase::create(&server_url(), "weft_test").await.expect("create a test database on DATABASE_URL");
    TestDatabase { url: db.url.clone(), name: db.name().to_string(), inner: Some(db) }
}

/// Creates one object in its own transaction; its revision. Panics on failure (test input).
pub async fn create(store: &weft_store::Store, kind: weft_model::Kind, body: serde_json::Value) -> i64 {
    let resource = weft_model::Resource::from_json(kind, body).expect("test object decodes");
    let mut txn = store.begin().await.expect("begin");
    txn.create(resource).await.expect("test object is valid");
    txn.commit().await.expect("commit")
}

/// Writes a port the way a version of weft that did not check it would have (issue 17: an
/// interface or an address another port claims), object and change-log row in one revision,
/// bypassing every check of the API and the store. For tests of what the compiler and the
/// agents do with such rows. Returns the revision.
pub async fn write_unchecked_port(store: &weft_store::Store, port: &weft_model::Port) -> i64 {
    let id = port.id.unwrap_or_else(uuid::Uuid::new_v4);
    let mut body = serde_json::to_value(port).expect("a port serialises");
    if let Some(map) = body.as_object_mut() {
        for meta in ["id", "revision", "created_at", "updated_at"] {
            map.remove(meta);
        }
    }
    sqlx::query_scalar(
        "WITH r AS (SELECT nextval('revisions') AS revision), \
         p AS (SELECT id FROM objects WHERE kind = 'project' AND name = $1), \
         o AS (INSERT INTO objects (id, kind, project_id, scope, name, labels, body, revision) \
               SELECT $2, 'port', p.id, p.id, $3, $4, $5::json, r.revision FROM r, p \
               RETURNING created_at, updated_at), \
         c AS (INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
               SELECT r.revision, 0, 'port', $2, 'put', $5::json, o.created_at, o.updated_at FROM r, o) \
         SELECT revision FROM r",
    )
    .bind(&port.project)
    .bind(id)
    .bind(&port.name)
    .bind(serde_json::to_value(&port.labels).expect("labels serialise"))
    .bind(body.to_string())
    .fetch_one(store.pool())
    .await
    .expect("an unchecked port is written")
}

/// A compiler loaded with everything the store holds.
pub async fn compiler(store: &weft_store::Store) -> weft_compiler::Compiler {
    let snapshot = store.snapshot().await.expect("snapshot");
    let changes = snapshot
        .objects
        .iter()
        .filter_map(|o| weft_compiler::Change::upsert(o.decode().expect("stored object decodes")));
    let mut compiler = weft_compiler::Compiler::new();
    compiler.load(snapshot.horizon, changes);
    compiler
}

/// A node's span compiled from scratch from what the store holds: what a controller must have
/// sent an agent that is up to date.
pub async fn expected_span(store: &weft_store::Store, node: &str) -> weft_compiler::NodeSpan {
    compiler(store).await.span(node)
}

/// Whether the tests run as root: network namespaces, nft and real packets need it. Tests
/// that need them are `#[ignore]`d, so a run that is not root reports them as ignored, never
/// as passed; scripts/test.sh runs them when it runs as root (CI does).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Fails a test that needs root when it is run without (`--run-ignored` by a user who is not
/// root): a failure saying so, not a pass.
pub fn require_root() {
    assert!(is_root(), "this test needs root (network namespaces, nftables, raw sockets): run it as root");
}
