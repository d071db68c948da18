//! The outermost layer of the REST service: whatever a request holds, the answer is a
//! problem+json, never a dropped connection or a plain-text error (issue 17, finding 8).
//!
//! * A handler that panics is caught: the panic is logged with the request's method and route,
//!   and the client gets a 500 problem (the connection used to close with no answer).
//! * A URI longer than [`MAX_URI_BYTES`] gets 414, and a NUL byte anywhere in the path or the
//!   query 400, before any handler or the database sees them.
//! * An error answered below this layer in another form (axum's own rejections, a 405 or 404
//!   of the router) is rewritten as a problem with the same status.
//!
//! Beyond hyper's own limits (a URI of 64 KiB, a request head larger than its buffer) hyper
//! answers 414 or 431 with an empty body before weft sees the request: those stay as they are.

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use http_body_util::BodyExt;

use crate::problem::{ApiError, CONTENT_TYPE};

/// The longest URI (path and query) a request may have: far above any the API needs.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// How much of a foreign error body becomes the problem's detail.
const MAX_DETAIL_BYTES: usize = 1024;

pub async fn guard(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!("the URI is {length} bytes, more than the {MAX_URI_BYTES} allowed"),
        )
        .into_response();
    }
    let has_nul = |s: &str| s.contains("%00") || s.contains('\0');
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad_request("the path or query holds a NUL byte (%00), which no name or value may hold")
            .into_response();
    }
    let (method, path) = (request.method().clone(), uri.path().to_string());
    let response = match std::panic::AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = weft_model::panic_message(&*panic);
            tracing::error!(%method, path, panic = %what, "a request handler panicked");
            return ApiError::internal().into_response();
        }
    };
    as_problem(response).await
}

/// An error response in another form, as a problem with the same status.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(CONTENT_TYPE.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_DETAIL_BYTES)]).trim().to_string()
        }
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut problem = ApiError::new(status, slug(status), detail).into_response();
    // Headers the original answer carried (Allow, WWW-Authenticate, Retry-After) stay.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

fn slug(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::URI_TOO_LONG => "uri-too-long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::TOO_MANY_REQUESTS => "too-many-requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: &Router, uri: &str) -> (StatusCode, String, String) {
        let request = Request::get(uri).body(axum::body::Body::empty()).expect("a request");
        let response = router.clone().oneshot(request).await.expect("an answer");
        let status = response.status();
        let ct = response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("").to_string());
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        (status, ct.unwrap_or_default(), String::from_utf8_lossy(&body).into_owned())
    }

    fn router() -> Router {
        Router::new()
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("boom")
                    }
                }),
            )
            .route("/plain", get(|| async { (StatusCode::BAD_REQUEST, "plain words") }))
            .route("/fine", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(guard))
    }

    /// Issue 17, finding 8: a panic in a handler closed the connection with no answer.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_json() {
        let (status, ct, body) = call(&router(), "/panics").await;
        assert_eq!((status, ct.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, CONTENT_TYPE));
        assert!(body.contains("urn:weft:problem:internal") && !body.contains("boom"), "{body}");
        // The server goes on.
        assert_eq!(call(&router(), "/fine").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn every_error_is_problem_json() {
        let (status, ct, body) = call(&router(), "/plain").await;
        assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, CONTENT_TYPE));
        assert!(body.contains("\"detail\":\"plain words\""), "{body}");
        let long = format!("/fine?x={}", "a".repeat(MAX_URI_BYTES));
        let (status, ct, body) = call(&router(), &long).await;
        assert_eq!((status, ct.as_str()), (StatusCode::URI_TOO_LONG, CONTENT_TYPE), "{body}");
        for nul in ["/fine?name=a%00b", "/fi%00ne"] {
            let (status, ct, body) = call(&router(), nul).await;
            assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, CONTENT_TYPE), "{nul}: {body}");
            assert!(body.contains("NUL"), "{body}");
        }
        assert_eq!(call(&router(), "/fine").await.2, "fine", "a success passes untouched");
    }
}
