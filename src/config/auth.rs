//! `[auth]`: what happens to callers that match no tenant, and how long an
//! upstream-verified key is trusted.
//!
//! Owns the raw section, the typed settings and their `load()`. It must never
//! hold a key: the tenants' keys belong to `tenants.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, Errors};

/// `[auth]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `reject` (401) or `passthrough` (forwarded with no cache at all).
    #[serde(default = "d_unknown_keys")]
    pub unknown_keys: String,
    /// How long an upstream 2xx lets a caller's key be served from cache.
    #[serde(default = "d_verified_key_ttl")]
    pub verified_key_ttl: String,
}

defaults! {
    d_unknown_keys: String = "reject".into();
    d_verified_key_ttl: String = "10m".into();
}

default_from_serde!(RawAuth);

/// What happens to a caller that matches no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    /// 401 in OpenAI's error shape.
    Reject,
    /// Forwarded to `[upstream]` with no cache read or write.
    Passthrough,
}

/// `[auth]`
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Callers that match no tenant.
    pub unknown_keys: UnknownKeys,
    /// How long an upstream 2xx lets a key be served from cache.
    pub verified_key_ttl: Duration,
}

/// `[auth]` into [`AuthSettings`].
pub(super) fn load(errs: &mut Errors, a: &RawAuth) -> AuthSettings {
    AuthSettings {
        unknown_keys: match a.unknown_keys.as_str() {
            "reject" => UnknownKeys::Reject,
            "passthrough" => UnknownKeys::Passthrough,
            other => {
                errs.push(
                    "auth.unknown_keys",
                    format!("`{other}`: expected reject or passthrough"),
                );
                UnknownKeys::Reject
            }
        },
        verified_key_ttl: duration(errs, "auth.verified_key_ttl", &a.verified_key_ttl),
    }
}
