//! Test support: a fresh PostgreSQL database per test for tests that need a URL rather than a
//! pool (a `weft server` process, a client against a live server). Store and API tests use
//! `#[sqlx::test]`, which does the same for a pool.
//!
//! The server is the one `DATABASE_URL` names (CI provides it); each database is named
//! `weft_test_<uuid>` and dropped by [`TestDatabase::drop_database`].

use sqlx::Connection;
use sqlx::postgres::PgConnection;

#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The URL of the fresh database.
    pub url: String,
}

/// The server tests use: `DATABASE_URL`, which must be set (see README.md).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server for tests (see README.md)")
}

impl TestDatabase {
    /// Creates an empty database (no migrations: `weft server` applies them).
    pub async fn create() -> TestDatabase {
        let admin_url = server_url();
        let name = format!("weft_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.expect("connect to DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let url = with_database(&admin_url, &name);
        TestDatabase { admin_url, name, url }
    }

    /// Drops the database, ending its other sessions first.
    pub async fn drop_database(self) {
        if let Ok(mut conn) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut conn)
                .await;
        }
    }
}

/// `url` with its database (the path) replaced by `name`, keeping the query string.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(super::with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(super::with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(super::with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
