//! The admin listener: calls with the test admin token, `POST /modelcache`,
//! and the dry run. Each goes to the admin listener of anything with
//! [`Addrs`]: an in-process gateway, a gateway process, or the address
//! itself.
//!
//! ```ignore
//! admin(&app, "GET", "/admin/stats", Value::Null).await;
//! dry_run(&running, "What is Rust?").await;   // a `modelcache serve` child
//! dry_run(addr, "What is Rust?").await;       // a bare admin address
//! ```

use std::net::SocketAddr;

use modelcache::config::Settings;
use serde_json::{json, Value};

use super::{Addrs, Call, Got};

/// The admin token of test gateways.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Gives `s` the test admin token.
pub fn with_admin_token(s: &mut Settings) {
    s.admin.token = Some(modelcache::config::Secret::new(ADMIN_TOKEN));
}

impl Call {
    /// `method path` with the test admin token and `body` as JSON (no body
    /// if it is null).
    pub fn admin(method: &str, path: &str, body: Value) -> Call {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        Call::new(method, path)
            .key(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
    }
}

/// A call to the admin listener of `at` with the test admin token.
pub async fn admin(at: impl Addrs, method: &str, path: &str, body: Value) -> Got {
    Call::admin(method, path, body).send(at.admin_addr()).await
}

/// `POST /modelcache` with a plain JSON body and `headers`.
pub async fn modelcache_call(at: impl Addrs, body: Value, headers: &[(&str, &str)]) -> Got {
    Call::new("POST", "/modelcache")
        .header("content-type", "application/json")
        .headers(headers)
        .body(body.to_string())
        .send(at.admin_addr())
        .await
}

/// `POST /admin/lookup` for one user message to `gpt-test`: the dry run's JSON.
pub async fn dry_run(at: impl Addrs, q: &str) -> Value {
    admin(
        at,
        "POST",
        "/admin/lookup",
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": q}]}),
    )
    .await
    .json()
}
