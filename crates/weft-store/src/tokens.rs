//! API bearer tokens. Only a SHA-256 digest of each token is stored: a token is 256 random
//! bits, so a fast hash is as safe as a slow one and keeps checking a request cheap.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Store;
use crate::error::{Result, StoreError};

/// What a token may do. `reader` and `writer` are scoped to one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Reader,
    Writer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
            Role::Writer => "writer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            _ => Err(format!("unknown role {s:?}: use admin, reader or writer")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Token {
    pub id: Uuid,
    pub role: Role,
    /// The project a reader or writer token is for; `None` for admin.
    pub project: Option<String>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Token {
    /// Neither revoked nor expired at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// A token just created: the only time its secret is known.
#[derive(Debug)]
pub struct NewToken {
    pub token: Token,
    pub secret: String,
}

/// The stored form of a secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn generate_secret() -> String {
    generate_secret_with("weft_")
}

/// 32 random bytes in hex after a prefix that says what the secret is for.
pub(crate) fn generate_secret_with(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

type TokenRow = (Uuid, String, Option<String>, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn from_row(row: TokenRow) -> Result<Token> {
    let (id, role, project, description, created_at, expires_at, revoked_at) = row;
    let role = role.parse().map_err(|e: String| StoreError::Database(sqlx::Error::Decode(e.into())))?;
    Ok(Token { id, role, project, description, created_at, expires_at, revoked_at })
}

macro_rules! token_columns {
    () => {
        "id, role, project, description, created_at, expires_at, revoked_at"
    };
}

impl Store {
    pub async fn create_token(
        &self,
        role: Role,
        project: Option<&str>,
        description: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewToken> {
        match (role, project) {
            (Role::Admin, Some(_)) => {
                return Err(StoreError::invalid("/project", "an admin token is not for one project"));
            }
            (Role::Reader | Role::Writer, None) => {
                return Err(StoreError::invalid("/project", format!("a {} token needs a project", role.as_str())));
            }
            (_, Some(p)) => weft_model::syntax::dns_subdomain(p).map_err(|e| StoreError::invalid("/project", e))?,
            _ => {}
        }
        let secret = generate_secret();
        let row: TokenRow = sqlx::query_as(concat!(
            "INSERT INTO tokens (id, digest, role, project, description, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING ",
            token_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(digest(&secret))
        .bind(role.as_str())
        .bind(project)
        .bind(description)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(NewToken { token: from_row(row)?, secret })
    }

    /// The token a secret belongs to, whether active or not.
    pub async fn find_token(&self, secret: &str) -> Result<Option<Token>> {
        let row: Option<TokenRow> =
            sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens WHERE digest = $1"))
                .bind(digest(secret))
                .fetch_optional(&self.pool)
                .await?;
        row.map(from_row).transpose()
    }

    /// A token by id, whether active or not.
    pub async fn token(&self, id: Uuid) -> Result<Option<Token>> {
        let row: Option<TokenRow> = sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(from_row).transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        let rows: Vec<TokenRow> =
            sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens ORDER BY created_at, id"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Revokes a token; revoking it again is a no-op. `false` when no such token exists.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// On a database with no token at all, creates the first admin token. Serialised by an
    /// advisory lock, so that two servers starting together create one.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<NewToken>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('weft.bootstrap_admin_token'))").execute(&mut *tx).await?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tokens)").fetch_one(&mut *tx).await?;
        if any {
            return Ok(None);
        }
        let secret = generate_secret();
        let row: TokenRow = sqlx::query_as(concat!(
            "INSERT INTO tokens (id, digest, role, description) VALUES ($1, $2, 'admin', 'created at first start') \
             RETURNING ",
            token_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(digest(&secret))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(NewToken { token: from_row(row)?, secret }))
    }
}
