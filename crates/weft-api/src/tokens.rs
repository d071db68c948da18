//! `/v1/tokens`: creating, listing and revoking API tokens (admin only).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_store::tokens::{Role, Token};

use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::problem::{ApiError, ApiResult};

/// The longest lifetime a token can be given (a huge one used to overflow the clock and
/// panic the handler).
pub const MAX_TOKEN_SECONDS: u64 = 10 * 365 * 86_400;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `admin`, `reader` or `writer`.
    pub role: String,
    /// The project a reader or writer token is for.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Lifetime in seconds; absent: until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_seconds: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: Uuid,
    pub role: String,
    pub project: Option<String>,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A token just created, with the secret shown this once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

impl From<Token> for TokenInfo {
    fn from(t: Token) -> Self {
        TokenInfo {
            id: t.id,
            role: t.role.as_str().to_string(),
            project: t.project,
            description: t.description,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let request: CreateToken = body::json(&headers, body)?;
    let role: Role = request
        .role
        .parse()
        .map_err(|e: String| ApiError::invalid(weft_model::ValidationErrors::single("/role", e)))?;
    let expires_at = match request.expires_in_seconds {
        Some(s) if (1..=MAX_TOKEN_SECONDS).contains(&s) => {
            let d = chrono::Duration::seconds(s as i64);
            Some(chrono::Utc::now().checked_add_signed(d).ok_or_else(ApiError::internal)?)
        }
        Some(_) => {
            return Err(ApiError::invalid(weft_model::ValidationErrors::single(
                "/expires_in_seconds",
                format!(
                    "between 1 and {MAX_TOKEN_SECONDS} (10 years); leave it out for a token that lasts until revoked"
                ),
            )));
        }
        None => None,
    };
    let created = state.store.create_token(role, request.project.as_deref(), &request.description, expires_at).await?;
    tracing::info!(id = %created.token.id, role = role.as_str(), project = ?created.token.project, "token created");
    let body = CreatedToken { token: created.secret, info: created.token.into() };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    caller.require_admin()?;
    let tokens: Vec<TokenInfo> = state.store.list_tokens().await?.into_iter().map(Into::into).collect();
    Ok(axum::Json(serde_json::json!({ "items": tokens })).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found(format!("{id:?} is not a token id")))?;
    if !state.store.revoke_token(id).await? {
        return Err(ApiError::not_found(format!("token {id} does not exist")));
    }
    state.tokens.forget(id);
    tracing::info!(%id, "token revoked");
    Ok(axum::Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
}
