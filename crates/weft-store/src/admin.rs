//! Creating and dropping whole databases on a PostgreSQL server: for tests and benchmarks that
//! want a fresh database each, beside whatever else the server holds.

use sqlx::Connection;

/// `url` with its database (the path) replaced by `name`, keeping the query string.
pub fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    match query {
        Some(q) => format!("{}/{name}?{q}", &base[..host_end]),
        None => format!("{}/{name}", &base[..host_end]),
    }
}

/// A database made for one test or benchmark run.
#[derive(Debug)]
pub struct ScratchDatabase {
    server_url: String,
    name: String,
    /// The URL of the new, empty database.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<random>` on the server `server_url` names.
    pub async fn create(server_url: &str, prefix: &str) -> Result<ScratchDatabase, sqlx::Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(server_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        Ok(ScratchDatabase { url: url_with_database(server_url, &name), server_url: server_url.to_string(), name })
    }

    /// A database made earlier (by another process) on `server_url`, to drop it.
    pub fn existing(server_url: &str, name: &str) -> ScratchDatabase {
        ScratchDatabase {
            url: url_with_database(server_url, name),
            server_url: server_url.to_string(),
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Drops the database, ending its sessions first; errors are ignored (best effort).
    pub async fn drop_database(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.server_url).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut conn)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_of_a_url() {
        use super::url_with_database as w;
        assert_eq!(w("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(w("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(w("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
