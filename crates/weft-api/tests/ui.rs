//! The traffic-groups page's sign-in (crate::ui), over HTTP: nothing but the sign-in page
//! without a session; a token checked before it becomes the session cookie; the API takes the
//! cookie only with the page's header; signing out ends it. (The page itself runs in a real
//! browser in weft's tests/ui.rs.)

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use axum::http::{Method, StatusCode};
use common::Api;
use sqlx::PgPool;

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn the_page_needs_a_signed_in_session_and_the_api_takes_it_only_from_the_page(pool: PgPool) {
    let api = Api::new(pool).await;
    let location = |r: &common::Reply| r.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let r = api.raw(Method::GET, "/ui/traffic-groups", None, &[], vec![]).await;
    assert_eq!((r.status, location(&r).as_deref()), (StatusCode::SEE_OTHER, Some("/ui/sign-in")));
    let r = api.raw(Method::GET, "/ui/sign-in", None, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.as_str().unwrap().contains("Sign in with a weft token"), "{}", r.body);
    assert!(r.headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));

    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = api.raw(Method::POST, "/ui/sign-in", None, &form, b"token=weft_nope".to_vec()).await;
    assert_eq!((r.status, location(&r).as_deref()), (StatusCode::SEE_OTHER, Some("/ui/sign-in?failed")));
    assert!(r.headers.get("set-cookie").is_none());
    // A form without a token, or no form at all: the same.
    for (headers, body) in [(&form[..], b"other=1".to_vec()), (&[][..], b"token=weft_x".to_vec())] {
        let r = api.raw(Method::POST, "/ui/sign-in", None, headers, body).await;
        assert_eq!((r.status, location(&r).as_deref()), (StatusCode::SEE_OTHER, Some("/ui/sign-in?failed")));
        assert!(r.headers.get("set-cookie").is_none());
    }
    // Another site's form: refused whatever the token.
    let body = format!("token={}", api.admin).into_bytes();
    let elsewhere = [form[0], ("origin", "https://evil.example"), ("host", "weft.example")];
    let r = api.raw(Method::POST, "/ui/sign-in", None, &elsewhere, body.clone()).await;
    assert!(r.headers.get("set-cookie").is_none(), "{:?}", r.headers);
    let r = api.raw(Method::POST, "/ui/sign-in", None, &form, body).await;
    assert_eq!((r.status, location(&r).as_deref()), (StatusCode::SEE_OTHER, Some("/ui/traffic-groups")));
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();

    let with_cookie = [("cookie", cookie.as_str())];
    let r = api.raw(Method::GET, "/ui/traffic-groups", None, &with_cookie, vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.as_str().unwrap().contains("Traffic groups"));
    // The cookie alone is no credential to the API; with the page's header it is.
    let r = api.raw(Method::GET, "/v1/flows", None, &with_cookie, vec![]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let from_page = [("cookie", cookie.as_str()), ("x-weft-ui", "1")];
    let r = api.raw(Method::GET, "/v1/flows", None, &from_page, vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = api.raw(Method::POST, "/ui/sign-out", None, &with_cookie, vec![]).await;
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}
