//! The admin listener: health, metrics, the ModelCache API, the admin API and
//! the web console.
//!
//! Owns every route that is not proxied, and who may call each one. It listens
//! on its own address so that it is never reachable through the proxy port.
//! `/admin/*` needs the admin token (loopback callers may be trusted to read,
//! and only by a second opt-in to write); `/modelcache` is scoped to the
//! caller's tenant exactly as the proxy is, and a caller without a tenant key
//! may only query unless configured otherwise; `/ui` is a static page that
//! asks for the token. It must never expose secrets, and never let a caller
//! reach another tenant's entries.

mod api;
mod console;
mod modelcache;

pub use modelcache::{api_entry, api_key};

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, RwLock},
};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    cache::Cache,
    config::AdminSettings,
    http::body::{full, ProxyBody},
    metrics::Metrics,
    tenants::{credential, TenantSet},
};

/// State the admin routes read.
pub struct Admin {
    cache: Arc<OnceLock<Arc<Cache>>>,
    metrics: Arc<Metrics>,
    tenants: Arc<RwLock<Arc<TenantSet>>>,
    settings: AdminSettings,
    max_body: usize,
    embed_batch: usize,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = text(status, "application/json", v.to_string());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error of the admin API, in OpenAI's error shape.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json_response(
        status,
        &json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
    )
}

/// Whether `given` is the admin token; compared by hash, in constant time.
fn same_secret(given: &str, secret: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A short, stable fingerprint of a credential for logs: never the credential.
fn fingerprint(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..6])
}

/// `x-modelcache-actor`, for the audit log: printable ASCII, at most 64 bytes.
fn actor_label(h: &HeaderMap) -> Option<String> {
    let v = h.get("x-modelcache-actor")?.to_str().ok()?.trim();
    let clean: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// Whether an `/admin/*` request may change the cache: anything but a read
/// (`GET`, `HEAD`) or the dry-run lookup.
fn writes(method: &Method, path: &str) -> bool {
    let read = method == Method::GET
        || method == Method::HEAD
        || (method == Method::POST && path.trim_end_matches('/') == "/admin/lookup");
    !read
}

enum Body {
    Read(Bytes),
    TooLarge,
    Broken(String),
}

async fn read_body(body: Incoming, max: usize) -> Body {
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                    if buf.len() > max {
                        return Body::TooLarge;
                    }
                }
            }
            Err(e) => return Body::Broken(e.to_string()),
        }
    }
    Body::Read(buf.freeze())
}

/// The text of a stored answer: the first choice's message content (or a
/// note about tool calls), or a completion's text.
pub fn answer_text(answer: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(answer) else {
        return String::new();
    };
    let choice = &v["choices"][0];
    if let Some(t) = choice["message"]["content"].as_str() {
        return t.to_string();
    }
    if let Some(t) = choice["text"].as_str() {
        return t.to_string();
    }
    if let Some(calls) = choice["message"]["tool_calls"].as_array() {
        let names: Vec<&str> = calls
            .iter()
            .filter_map(|c| c["function"]["name"].as_str())
            .collect();
        return format!("[tool calls: {}]", names.join(", "));
    }
    if let Some(r) = choice["message"]["refusal"].as_str() {
        return format!("[refusal] {r}");
    }
    String::new()
}

/// The key of a chat request for `model` with `msgs` and optional extra
/// request fields, under a tenant's policy: the key the proxy would build.
fn request_key(
    policy: &crate::config::Policy,
    model: &str,
    msgs: &[Value],
    params: Option<&serde_json::Map<String, Value>>,
    namespace: Option<&str>,
) -> Result<crate::keying::CacheKey, String> {
    crate::keying::key_with(
        crate::keying::Endpoint::Chat,
        &request_body(model, msgs, params),
        &policy.key_options(namespace),
    )
    .map_err(|e| e.to_string())
}

fn request_body(
    model: &str,
    msgs: &[Value],
    params: Option<&serde_json::Map<String, Value>>,
) -> Value {
    let mut body = params.cloned().unwrap_or_default();
    body.insert("model".into(), Value::String(model.to_string()));
    body.insert("messages".into(), Value::Array(msgs.to_vec()));
    Value::Object(body)
}

impl Admin {
    /// Admin routes over the shared cache cell, metrics and tenants.
    pub fn new(
        cache: Arc<OnceLock<Arc<Cache>>>,
        metrics: Arc<Metrics>,
        tenants: Arc<RwLock<Arc<TenantSet>>>,
        settings: AdminSettings,
        max_body: usize,
        embed_batch: usize,
    ) -> Admin {
        Admin {
            cache,
            metrics,
            tenants,
            settings,
            max_body,
            embed_batch,
        }
    }

    fn snapshot(&self) -> Arc<TenantSet> {
        match self.tenants.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Who is calling `/admin/*` (on a route that `writes`, or only reads),
    /// for the audit log; or the refusal.
    fn authorize(
        &self,
        h: &HeaderMap,
        peer: SocketAddr,
        writes: bool,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        let label = actor_label(h)
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        if let (Some(token), Some(given)) = (&self.settings.token, credential(h)) {
            if same_secret(given, token.expose()) {
                return Ok(format!(
                    "admin token {} from {peer}{label}",
                    fingerprint(given)
                ));
            }
        }
        if self.settings.loopback_without_token && peer.ip().is_loopback() {
            if !writes || self.settings.loopback_writes_without_token {
                return Ok(format!("loopback {peer}{label}"));
            }
            // NOTE: trusting every local process to read is not trusting it
            // to delete, flush or report answers wrong.
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "admin_token_required",
                format!(
                    "this route changes the cache: send the admin token ({}) as Authorization: Bearer <token>, \
                     or set [admin] loopback_writes_without_token = true to let local callers without one write",
                    self.settings.token_env
                ),
            )));
        }
        if self.settings.token.is_none() {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "admin_token_unset",
                format!(
                    "the admin API is closed: set {} to a token of at least 16 characters and restart",
                    self.settings.token_env
                ),
            )));
        }
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "send the admin token as Authorization: Bearer <token>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"modelcache admin\""),
        );
        Err(Box::new(r))
    }

    /// Handles one admin request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
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
            (&Method::GET, "/welcome") => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "hello, modelcache!".into(),
            ),
            (&Method::POST, "/modelcache") => {
                let (parts, body) = req.into_parts();
                let body = match read_body(body, self.max_body).await {
                    Body::Read(b) => b,
                    Body::TooLarge => {
                        return modelcache::too_large(self.max_body);
                    }
                    Body::Broken(e) => return modelcache::unreadable(&e),
                };
                self.modelcache(&parts.headers, peer, &body).await
            }
            (&Method::GET, "/ui" | "/ui/") => console::page(),
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                let (parts, body) = req.into_parts();
                let actor = match self.authorize(&parts.headers, peer, writes(&parts.method, p)) {
                    Ok(a) => a,
                    Err(r) => return *r,
                };
                let body = match read_body(body, self.max_body).await {
                    Body::Read(b) => b,
                    Body::TooLarge => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            format!("the body is over {} bytes", self.max_body),
                        )
                    }
                    Body::Broken(e) => {
                        return error(StatusCode::BAD_REQUEST, "unreadable_body", e);
                    }
                };
                self.admin(&parts.method, p, parts.uri.query(), &body, &actor)
                    .await
            }
            (_, "/modelcache" | "/welcome" | "/healthz" | "/readyz" | "/metrics" | "/ui") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin route"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_of_chat_completion_and_tool_calls() {
        let chat = r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(answer_text(chat), "hi");
        let comp = r#"{"choices":[{"text":"done"}]}"#;
        assert_eq!(answer_text(comp), "done");
        let tools = r#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f"}}]}}]}"#;
        assert_eq!(answer_text(tools), "[tool calls: f]");
        assert_eq!(answer_text("not json"), "");
    }

    #[test]
    fn secrets_compare_whole_and_fingerprints_do_not_reveal() {
        assert!(same_secret("a-long-admin-token", "a-long-admin-token"));
        assert!(!same_secret("a-long-admin-token", "a-long-admin-tokeN"));
        assert!(!same_secret("", "a-long-admin-token"));
        let f = fingerprint("a-long-admin-token");
        assert_eq!(f.len(), 12);
        assert!(!f.contains("admin"));
    }

    #[test]
    fn only_reads_and_the_dry_run_do_not_write() {
        assert!(!writes(&Method::GET, "/admin/entries/1"));
        assert!(!writes(&Method::POST, "/admin/lookup"));
        assert!(!writes(&Method::POST, "/admin/lookup/"));
        assert!(writes(&Method::DELETE, "/admin/entries/1"));
        assert!(writes(&Method::POST, "/admin/flush"));
        assert!(writes(&Method::POST, "/admin/feedback"));
        assert!(writes(&Method::PUT, "/admin/tenants"));
    }

    #[test]
    fn actor_labels_are_sanitised() {
        let mut h = HeaderMap::new();
        h.insert("x-modelcache-actor", HeaderValue::from_static("alice\tops"));
        assert_eq!(actor_label(&h).as_deref(), Some("aliceops"));
    }
}
