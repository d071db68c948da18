//! RFC 9457 problem details: every error the API returns, with a stable `type`, a sentence for
//! a person and, for invalid input, the JSON pointer of each bad field. Internal errors are
//! logged here and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use weft_model::ValidationErrors;
use weft_store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One invalid field of a request: in the body (`pointer`) or the query string (`parameter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub detail: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:weft:problem:invalid`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<InvalidField>,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    errors: Vec<InvalidField>,
    /// Seconds a client should wait before trying again (`Retry-After`).
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, slug, detail: detail.into(), errors: Vec::new(), retry_after: None }
    }

    /// Asks the client to wait this many seconds before trying again.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The database cannot take the request now: 503, try again in a second.
    pub fn database_unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "the database is unavailable; nothing was changed; try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// A field of the body that this caller may not set.
    pub fn forbidden_field(pointer: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e = Self::new(StatusCode::FORBIDDEN, "forbidden", format!("{pointer}: {detail}"));
        e.errors.push(InvalidField { pointer: Some(pointer.to_string()), parameter: None, detail });
        e
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn invalid_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid-parameter", format!("?{parameter}: {detail}"));
        e.errors.push(InvalidField { pointer: None, parameter: Some(parameter.to_string()), detail });
        e
    }

    pub fn invalid(errors: ValidationErrors) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", errors.to_string());
        e.errors = errors
            .errors
            .into_iter()
            .map(|f| InvalidField { pointer: Some(f.pointer), parameter: None, detail: f.detail })
            .collect();
        e
    }

    /// Adds one of several reasons (a readiness check that failed) as an error entry.
    pub fn with_error(mut self, detail: impl Into<String>) -> Self {
        self.errors.push(InvalidField { pointer: None, parameter: None, detail: detail.into() });
        self
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the server log has the details")
    }

    /// Puts every body pointer under `prefix` (a batch operation's position).
    pub fn under(mut self, prefix: &str) -> Self {
        for f in &mut self.errors {
            if let Some(p) = &mut f.pointer {
                *p = format!("{prefix}{p}");
            }
        }
        self.detail = format!("{prefix}: {}", self.detail);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:weft:problem:{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("Error").to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(errors) => ApiError::invalid(errors),
            StoreError::NotFound { kind, key } => ApiError::not_found(format!("{kind} {key} does not exist")),
            StoreError::Conflict { kind, detail } => ApiError::new(StatusCode::CONFLICT, kind.as_str(), detail),
            StoreError::PreconditionFailed { expected, current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                format!("If-Match named revision {expected}, but the object is at revision {current}"),
            ),
            StoreError::Compacted { requested, compacted } => ApiError::new(
                StatusCode::GONE,
                "compacted",
                format!(
                    "revision {requested} is no longer in the change log (it starts after {compacted}): list the objects again and watch from the list's revision"
                ),
            ),
            StoreError::Denied(detail) => ApiError::new(StatusCode::FORBIDDEN, "denied", detail),
            e if e.is_bad_value() => {
                tracing::warn!(error = %e, "PostgreSQL refused a value of a request");
                ApiError::bad_request("a value of the request cannot be stored (PostgreSQL refused it)")
            }
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "the database is unavailable to a request");
                ApiError::database_unavailable()
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
