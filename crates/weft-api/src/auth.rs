//! Bearer-token authentication and project-scoped authorization.
//!
//! Every `/v1` request names a token; the token's role decides what it may touch: `admin`
//! everything, `writer` and `reader` one project's objects. Checking a token costs one SHA-256
//! and, at most every [`CACHE_TTL`], one indexed lookup; a revocation made through this
//! process takes effect at once, one made through another API process within `CACHE_TTL`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weft_store::tokens::{Role, Token, digest};

use crate::AppState;
use crate::problem::{ApiError, ApiResult};

pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// How often a long-lived response (a watch of the change log) checks that its token is still
/// good: a revocation or an expiry ends it within this (a revocation made through another API
/// process within this plus [`CACHE_TTL`]).
pub const STREAM_RECHECK: Duration = Duration::from_secs(2);

/// Who is calling, as the handlers see it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (`--insecure-no-auth`): full access.
    Unauthenticated,
    Token(Token),
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Unauthenticated => true,
            Caller::Token(t) => t.role == Role::Admin,
        }
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::forbidden("this needs an admin token")) }
    }

    /// The one project a reader or writer token is for (`None` for admins and without auth).
    pub fn project(&self) -> Option<&str> {
        match self {
            Caller::Token(t) => t.project.as_deref(),
            Caller::Unauthenticated => None,
        }
    }

    pub fn can_read(&self, project: &str) -> bool {
        self.is_admin() || self.project() == Some(project)
    }

    pub fn can_write(&self, project: &str) -> bool {
        self.is_admin()
            || matches!(self, Caller::Token(t) if t.role == Role::Writer && t.project.as_deref() == Some(project))
    }

    pub fn require_read(&self, project: &str) -> ApiResult<()> {
        if self.can_read(project) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this token may not read project {project:?}")))
        }
    }

    pub fn require_write(&self, project: &str) -> ApiResult<()> {
        if self.can_write(project) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this token may not change project {project:?}")))
        }
    }

    /// The caller's token, when authentication is on.
    pub fn token_id(&self) -> Option<uuid::Uuid> {
        match self {
            Caller::Token(t) => Some(t.id),
            Caller::Unauthenticated => None,
        }
    }

    /// When the caller's token expires, if it does.
    pub fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Caller::Token(t) => t.expires_at,
            Caller::Unauthenticated => None,
        }
    }

    /// Whether the token a long-lived response was opened with is still good: neither
    /// revoked nor expired since. Reads the database at most once per [`CACHE_TTL`] per token.
    pub async fn still_valid(&self, state: &AppState) -> ApiResult<()> {
        let Caller::Token(token) = self else { return Ok(()) };
        let current = match state.tokens.get_by_id(token.id) {
            Some(t) => t,
            None => {
                let t = state
                    .store
                    .token(token.id)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("this token was deleted"))?;
                state.tokens.put_by_id(t.clone());
                t
            }
        };
        check_active(&current)
    }

    /// The projects a list may show; `None` means all.
    pub fn readable_projects(&self) -> Option<Vec<String>> {
        if self.is_admin() { None } else { Some(self.project().map(String::from).into_iter().collect()) }
    }
}

/// Verified tokens by digest, so that most requests skip the database; and by id, for the
/// long-lived responses that check again that their token is still good.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Vec<u8>, (Token, Instant)>>,
    by_id: Mutex<HashMap<uuid::Uuid, (Token, Instant)>>,
}

impl TokenCache {
    fn get(&self, digest: &[u8]) -> Option<Token> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(digest).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(t, _)| t.clone())
    }

    fn put(&self, digest: Vec<u8>, token: Token) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(digest, (token, Instant::now()));
    }

    fn get_by_id(&self, id: uuid::Uuid) -> Option<Token> {
        let entries = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&id).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(t, _)| t.clone())
    }

    fn put_by_id(&self, token: Token) {
        let mut entries = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(token.id, (token, Instant::now()));
    }

    /// Forgets a token at once (after a revocation through this process).
    pub fn forget(&self, id: uuid::Uuid) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (t, _)| t.id != id);
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Middleware: resolves the caller or answers 401.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if !state.auth_enabled {
        request.extensions_mut().insert(Caller::Unauthenticated);
        return next.run(request).await;
    }
    // The traffic-groups page's requests carry its session cookie and the header that no
    // other site's form can send (crate::ui).
    let from_page = request.headers().get(header::AUTHORIZATION).is_none()
        && request.headers().get(crate::ui::UI_HEADER).is_some_and(|v| v == "1");
    let resolved = match crate::ui::session_secret(request.headers()).filter(|_| from_page) {
        Some(secret) => token_for(&state, &secret).await,
        None => resolve(&state, request.headers().get(header::AUTHORIZATION)).await,
    };
    match resolved {
        Ok(token) => {
            request.extensions_mut().insert(Caller::Token(token));
            next.run(request).await
        }
        Err(e) => {
            let mut response = e.into_response();
            if response.status() == axum::http::StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"weft\""));
            }
            response
        }
    }
}

async fn resolve(state: &AppState, header: Option<&HeaderValue>) -> ApiResult<Token> {
    let Some(value) = header else {
        return Err(ApiError::unauthorized("no bearer token: send Authorization: Bearer <token>"));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not a bearer token"))?;
    token_for(state, secret).await
}

/// The active token a secret is, from the cache or the database.
pub(crate) async fn token_for(state: &AppState, secret: &str) -> ApiResult<Token> {
    let key = digest(secret);
    let token = match state.tokens.get(&key) {
        Some(t) => t,
        None => {
            let found = state.store.find_token(secret).await?;
            let t = found.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
            state.tokens.put(key, t.clone());
            t
        }
    };
    check_active(&token)?;
    Ok(token)
}

fn check_active(token: &Token) -> ApiResult<()> {
    if token.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this token was revoked"));
    }
    if !token.is_active(chrono::Utc::now()) {
        return Err(ApiError::unauthorized("this token has expired"));
    }
    Ok(())
}
