//! Test support: a fresh PostgreSQL database per test for tests that need a URL rather than a
//! pool (a `weft server` process, a client against a live server). Store and API tests use
//! `#[sqlx::test]`, which does the same for a pool.
//!
//! The server is the one `DATABASE_URL` names (CI provides it; see scripts/test.sh).

pub use weft_store::admin::ScratchDatabase as TestDatabase;

/// The server tests use: `DATABASE_URL`, which must be set (see README.md).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server for tests (see README.md)")
}

/// A fresh, empty database on the test server (no migrations: `weft server` applies them).
pub async fn fresh_database() -> TestDatabase {
    TestDatabase::create(&server_url(), "weft_test").await.expect("create a test database on DATABASE_URL")
}
