//! The admin listener: health, readiness and metrics.
//!
//! Owns every route that is not proxied. It listens on its own address so that
//! it is never reachable through the proxy port. It must never expose secrets.

use std::sync::{Arc, OnceLock};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    cache::Cache,
    metrics::Metrics,
    proxy::body::{full, ProxyBody},
};

/// State the admin routes read.
pub struct Admin {
    cache: Arc<OnceLock<Arc<Cache>>>,
    metrics: Arc<Metrics>,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

impl Admin {
    /// Admin routes over the shared cache cell and metrics.
    pub fn new(cache: Arc<OnceLock<Arc<Cache>>>, metrics: Arc<Metrics>) -> Admin {
        Admin { cache, metrics }
    }

    /// Handles one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => {
                if self.cache.get().is_some() {
                    text(StatusCode::OK, "text/plain", "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "loading the embedding model and the index\n".into(),
                    )
                }
            }
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "application/json",
                serde_json::json!({"error": {"message": "no such admin route", "type": "invalid_request_error", "param": null, "code": "not_found"}}).to_string(),
            ),
        }
    }
}
