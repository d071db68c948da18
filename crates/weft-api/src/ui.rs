//! The traffic-groups page (DESIGN.md §10), served from the binary: one HTML file with its CSS
//! and script inline, nothing fetched from anywhere else. Its data comes from the JSON API
//! (`/v1/flows/graph`, `/v1/flows`, `/v1/explain`) under the same tokens and project rules.
//!
//! Sign-in: the browser posts a weft token to `/ui/sign-in`; it is checked and kept in an
//! HttpOnly, SameSite=Strict cookie (Secure over TLS), which the page's requests carry. The API
//! takes the cookie only with the header `x-weft-ui: 1`, which no form of another site can send
//! (and a cross-site script cannot without a CORS preflight weft never answers): a link or a
//! form elsewhere cannot act with a signed-in browser's token. Without a valid cookie the page is
//! a redirect to the sign-in page, the only thing an unauthenticated browser gets.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

const SIGN_IN: &str = include_str!("../ui/sign-in.html");
const TRAFFIC_GROUPS: &str = include_str!("../ui/traffic-groups.html");

/// The cookie the page's requests carry.
pub const SESSION_COOKIE: &str = "weft_session";
/// The header a request must carry for the API to take the cookie.
pub const UI_HEADER: &str = "x-weft-ui";

/// The session's secret in a request's cookies, if any.
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_string())
    })
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not no-referrer: under it a browser sends `Origin: null` with the sign-in form, which the
    // origin check then refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn cookie(state: &AppState, value: &str, max_age: Option<i64>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("weft_session=; Path=/; Max-Age=0"))
}

/// Whether the request's cookie holds a token that is valid now (any token, without auth).
async fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    if !state.auth_enabled {
        return true;
    }
    match session_secret(headers) {
        Some(secret) => crate::auth::token_for(state, &secret).await.is_ok(),
        None => false,
    }
}

pub async fn root() -> Response {
    see_other("/ui/traffic-groups")
}

pub async fn sign_in_page(Query(params): Query<std::collections::HashMap<String, String>>) -> Response {
    let failed = params.contains_key("failed");
    let message = if failed { r#"<p class="error" id="failed">That token was not accepted.</p>"# } else { "" };
    html(StatusCode::OK, SIGN_IN.replace("<!--FAILED-->", message))
}

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
pub struct SignIn {
    token: String,
}

/// Whether a form post came from a page of this server: its Origin (when the browser sends
/// one) names the host the request was sent to. Another site's form cannot sign a browser in
/// with a token of its choosing.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && origin_host == host
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<axum::Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return see_other("/ui/sign-in?failed");
    }
    let Some(secret) = form.ok().map(|f| f.0.token.trim().to_string()).filter(|t| !t.is_empty()) else {
        return see_other("/ui/sign-in?failed");
    };
    if state.auth_enabled && crate::auth::token_for(&state, &secret).await.is_err() {
        return see_other("/ui/sign-in?failed");
    }
    let mut response = see_other("/ui/traffic-groups");
    response.headers_mut().insert(header::SET_COOKIE, cookie(&state, &secret, None));
    response
}

pub async fn sign_out(State(state): State<AppState>) -> Response {
    let mut response = see_other("/ui/sign-in");
    response.headers_mut().insert(header::SET_COOKIE, cookie(&state, "", Some(0)));
    response
}

pub async fn traffic_groups(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !signed_in(&state, &headers).await {
        return see_other("/ui/sign-in");
    }
    html(StatusCode::OK, TRAFFIC_GROUPS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_found_among_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; weft_session=weft_s3cret; b=2"));
        assert_eq!(session_secret(&headers).as_deref(), Some("weft_s3cret"));
        headers.insert(header::COOKIE, HeaderValue::from_static("weft_session="));
        assert_eq!(session_secret(&headers), None);
    }

    #[test]
    fn a_sign_in_from_another_sites_form_is_refused() {
        let mut headers = HeaderMap::new();
        assert!(same_origin(&headers), "no Origin: a browser that sends none, or a tool");
        headers.insert(header::HOST, HeaderValue::from_static("weft.example:8080"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://weft.example:8080"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
    }
}
