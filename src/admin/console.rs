//! The web console at `/ui`: one static page, embedded in the binary.
//!
//! Owns serving the page and its security headers. The page itself calls the
//! admin API with the token the user types, kept in `sessionStorage` only. It
//! must never embed data or secrets: everything it shows comes from
//! `/admin/*` at run time.

use http::{header, HeaderValue, StatusCode};

use super::text;
use crate::http::body::ProxyBody;

const PAGE: &str = include_str!("console.html");

/// `GET /ui`.
pub(super) fn page() -> http::Response<ProxyBody> {
    let mut r = text(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string());
    let h = r.headers_mut();
    // NOTE: inline script and style are the page's own; nothing else loads,
    // and no other origin may frame it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
