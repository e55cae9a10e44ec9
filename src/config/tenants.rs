//! `[[tenants]]`: who a caller is (keys, a header, model names), how it
//! authenticates upstream, and its overrides of `[upstream]` and `[cache]`.
//!
//! Owns the raw section, the typed [`TenantSettings`] and their `load()`,
//! including the checks across tenants (unique names and keys, one catch-all)
//! and the implicit `default` tenant. It must never hold a key itself: only
//! its SHA-256.

use std::collections::HashMap;

use http::HeaderName;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    cache::{tenant_policy, Policy, RawPolicy},
    env_var,
    upstream::{tenant_upstream, RawTenantUpstream, UpstreamSettings},
    Errors,
};

/// The tenant every caller belongs to when the file declares none.
pub const DEFAULT_TENANT: &str = "default";

/// `[[tenants]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Unique name; also the storage scope of the tenant's entries.
    pub name: String,
    /// SHA-256 (hex) of the bearer keys that identify this tenant.
    #[serde(default)]
    pub keys_sha256: Vec<String>,
    /// Names of environment variables holding bearer keys of this tenant.
    #[serde(default)]
    pub keys_env: Vec<String>,
    /// A request header that identifies this tenant.
    #[serde(default)]
    pub match_header: Option<RawHeaderMatch>,
    /// Model-name patterns (`*` matches any run of characters).
    #[serde(default)]
    pub match_models: Vec<String>,
    /// `passthrough` or `replace`.
    #[serde(default = "d_auth")]
    pub auth: String,
    /// Overrides of `[upstream]`.
    #[serde(default)]
    pub upstream: RawTenantUpstream,
    /// Overrides of `[cache]`.
    #[serde(default)]
    pub cache: RawPolicy,
}

/// `match_header = { name = "...", value = "..." }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    /// Header name.
    pub name: String,
    /// Exact header value.
    pub value: String,
}

defaults! {
    d_auth: String = "passthrough".into();
}

/// How a tenant's callers authenticate upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The caller's own `Authorization` goes upstream.
    Passthrough,
    /// The caller's key is a gateway key; the tenant's key goes upstream.
    Replace,
}

/// One tenant.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Unique name.
    pub name: String,
    /// SHA-256 of the bearer keys that identify the tenant.
    pub key_hashes: Vec<[u8; 32]>,
    /// A header (name, exact value) that identifies the tenant.
    pub match_header: Option<(HeaderName, String)>,
    /// Model-name patterns.
    pub match_models: Vec<String>,
    /// Passthrough or replace.
    pub auth: AuthMode,
    /// Where its requests go.
    pub upstream: UpstreamSettings,
    /// Its cache policy.
    pub policy: Policy,
}

impl TenantSettings {
    /// A tenant with nothing to match on matches every caller.
    pub fn is_catch_all(&self) -> bool {
        self.key_hashes.is_empty() && self.match_header.is_none() && self.match_models.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn tenant(
    errs: &mut Errors,
    i: usize,
    t: &RawTenant,
    upstream: &UpstreamSettings,
    policy: &Policy,
    env: &HashMap<String, String>,
) -> TenantSettings {
    let p = format!("tenants[{i}]");
    let k = |name: &str| format!("{p}.{name}");
    if !valid_name(&t.name) {
        errs.push(
            &k("name"),
            format!(
                "`{}`: use 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `_`",
                t.name
            ),
        );
    }
    let mut key_hashes = Vec::new();
    for (j, h) in t.keys_sha256.iter().enumerate() {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(h.trim(), &mut out) {
            Ok(()) => key_hashes.push(out),
            Err(_) => errs.push(
                &format!("{p}.keys_sha256[{j}]"),
                "must be 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`)",
            ),
        }
    }
    for (j, name) in t.keys_env.iter().enumerate() {
        if let Some(v) = env_var(errs, env, &format!("{p}.keys_env[{j}]"), name) {
            key_hashes.push(key_hash(v.trim()));
        }
    }
    let match_header =
        t.match_header
            .as_ref()
            .and_then(|h| match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(n) => Some((n, h.value.clone())),
                Err(_) => {
                    errs.push(&k("match_header.name"), "not a valid header name");
                    None
                }
            });
    let auth = match t.auth.as_str() {
        "passthrough" => AuthMode::Passthrough,
        "replace" => AuthMode::Replace,
        other => {
            errs.push(
                &k("auth"),
                format!("`{other}`: expected passthrough or replace"),
            );
            AuthMode::Passthrough
        }
    };
    let upstream = tenant_upstream(errs, &p, upstream, &t.upstream, env);
    if auth == AuthMode::Replace {
        if t.upstream.api_key_env.is_none() {
            errs.push(
                &k("upstream.api_key_env"),
                "auth = \"replace\" needs the name of the environment variable that holds the upstream key",
            );
        }
        if t.keys_sha256.is_empty() && t.keys_env.is_empty() {
            errs.push(
                &k("auth"),
                "auth = \"replace\" needs keys_sha256 or keys_env: matching by header or model alone would hand the tenant's upstream key to any caller",
            );
        }
        if t.match_header.is_some() || !t.match_models.is_empty() {
            errs.push(
                &k("auth"),
                "auth = \"replace\" tenants are matched by key only; remove match_header and match_models",
            );
        }
    } else {
        if t.upstream.api_key_env.is_some() {
            errs.push(
                &k("upstream.api_key_env"),
                "only used with auth = \"replace\"",
            );
        }
        if t.upstream.anthropic_api_key_env.is_some() {
            errs.push(
                &k("upstream.anthropic_api_key_env"),
                "only used with auth = \"replace\"",
            );
        }
    }
    for (j, m) in t.match_models.iter().enumerate() {
        if m.is_empty() {
            errs.push(&format!("{p}.match_models[{j}]"), "must not be empty");
        }
    }
    TenantSettings {
        name: t.name.clone(),
        key_hashes,
        match_header,
        match_models: t.match_models.clone(),
        auth,
        upstream,
        policy: tenant_policy(errs, &p, policy, &t.cache),
    }
}

/// SHA-256 of a bearer key, as tenants are matched and verified keys tracked.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `[[tenants]]` into [`TenantSettings`], over the global `upstream` and
/// `policy`; never empty.
pub(super) fn load(
    errs: &mut Errors,
    raw: &[RawTenant],
    upstream: &UpstreamSettings,
    policy: &Policy,
    env: &HashMap<String, String>,
) -> Vec<TenantSettings> {
    let mut tenants: Vec<TenantSettings> = raw
        .iter()
        .enumerate()
        .map(|(i, t)| tenant(errs, i, t, upstream, policy, env))
        .collect();
    let mut names = HashMap::new();
    let mut keys = HashMap::new();
    let mut catch_all = None;
    for (i, t) in tenants.iter().enumerate() {
        if let Some(j) = names.insert(t.name.as_str(), i) {
            errs.push(
                &format!("tenants[{i}].name"),
                format!("`{}` is already the name of tenants[{j}]", t.name),
            );
        }
        for h in &t.key_hashes {
            if let Some(j) = keys.insert(*h, i) {
                if j != i {
                    errs.push(
                        &format!("tenants[{i}]"),
                        format!("a key of this tenant also belongs to tenants[{j}]"),
                    );
                }
            }
        }
        // NOTE: judged on what was written, not on what resolved, so that a
        // missing key variable is not also reported as a second catch-all.
        let r = &raw[i];
        let written_catch_all = r.keys_sha256.is_empty()
            && r.keys_env.is_empty()
            && r.match_header.is_none()
            && r.match_models.is_empty();
        if written_catch_all {
            if let Some(j) = catch_all.replace(i) {
                errs.push(
                    &format!("tenants[{i}]"),
                    format!("no keys, header or models: like tenants[{j}], it would match every caller; only one tenant may"),
                );
            }
        }
    }
    if tenants.is_empty() {
        tenants.push(TenantSettings {
            name: DEFAULT_TENANT.to_string(),
            key_hashes: Vec::new(),
            match_header: None,
            match_models: Vec::new(),
            auth: AuthMode::Passthrough,
            upstream: upstream.clone(),
            policy: policy.clone(),
        });
    }
    tenants
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::*;

    #[test]
    fn tenants_inherit_upstream_and_cache_defaults() {
        let s = with_env(
            r#"
[upstream]
url = "http://127.0.0.1:9000"
headers = { "x-org" = "acme" }
[cache]
ttl = "1h"
threshold = 0.85
[auth]
unknown_keys = "passthrough"
verified_key_ttl = "5m"
[[tenants]]
name = "a"
keys_sha256 = ["9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"]
keys_env = ["A_KEY"]
[[tenants]]
name = "b"
auth = "replace"
keys_env = ["B_KEY"]
[tenants.upstream]
url = "https://example.com"
api_key_env = "B_UPSTREAM"
[tenants.cache]
mode = "read_only"
ttl = "10s"
text = "last_user"
max_messages = 4
skip_when_temperature_above = 0.7
"#,
            &[
                ("A_KEY", "alpha"),
                ("B_KEY", "beta"),
                ("B_UPSTREAM", "sk-b"),
            ],
        )
        .unwrap();
        assert_eq!(s.auth.unknown_keys, UnknownKeys::Passthrough);
        assert_eq!(s.auth.verified_key_ttl, Duration::from_secs(300));
        let (a, b) = (&s.tenants[0], &s.tenants[1]);
        assert_eq!(a.key_hashes, vec![key_hash("test"), key_hash("alpha")]);
        assert_eq!(a.upstream.url.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(a.upstream.headers.len(), 1);
        assert_eq!(a.policy.ttl, Duration::from_secs(3600));
        assert!((a.policy.threshold - 0.85).abs() < 1e-6);
        assert_eq!(a.policy.mode, CacheMode::ReadWrite);
        assert_eq!(b.auth, AuthMode::Replace);
        assert_eq!(b.upstream.api_key.as_ref().unwrap().expose(), "sk-b");
        assert_eq!(format!("{:?}", b.upstream.api_key), "Some(Secret(***))");
        assert_eq!(b.upstream.url.as_str(), "https://example.com/");
        assert_eq!(b.upstream.headers.len(), 1, "inherited");
        assert_eq!(b.policy.mode, CacheMode::ReadOnly);
        assert_eq!(b.policy.ttl, Duration::from_secs(10));
        assert_eq!(b.policy.text, TextMode::LastUser);
        assert_eq!(b.policy.max_messages, 4);
        assert_eq!(b.policy.skip_when_temperature_above, Some(0.7));
        assert!((b.policy.threshold - 0.85).abs() < 1e-6, "inherited");
    }

    #[test]
    fn one_raw_policy_laid_over_the_builtin_then_cache_key_by_key() {
        let s = with_env(
            r#"
[cache]
threshold = 0.93
verifier = false
[cache.guards]
numbers = false
[[tenants]]
name = "a"
keys_env = ["A_KEY"]
[tenants.cache]
long_threshold = 0.99
[tenants.cache.guards]
code = false
"#,
            &[("A_KEY", "alpha")],
        )
        .unwrap();
        let (g, a) = (&s.cache.policy, &s.tenants[0].policy);
        // [cache] over the built-in defaults.
        assert!((g.threshold - 0.93).abs() < 1e-6 && (g.long_threshold - 0.98).abs() < 1e-6);
        assert!(!g.verifier.enabled && !g.guards.numbers && g.guards.code);
        assert_eq!(s.cache.single_flight_wait, Duration::from_secs(30));
        // A tenant over [cache], key by key, guards included.
        assert!((a.threshold - 0.93).abs() < 1e-6 && (a.long_threshold - 0.99).abs() < 1e-6);
        assert!(!a.verifier.enabled && !a.guards.numbers && !a.guards.code && a.guards.negation);
        assert_eq!(a.guards.window_words, g.guards.window_words);
        // The process-wide keys are refused in a tenant's table, by path.
        let err = with_env(
            "[[tenants]]\nname = \"a\"\nkeys_env = [\"A_KEY\"]\n[tenants.cache]\nwriteback_queue = 8\nthreshold = 2.0\n",
            &[("A_KEY", "alpha")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tenants[0].cache.writeback_queue: is process-wide"),
            "{err}"
        );
        assert!(err.contains("tenants[0].cache.threshold"), "{err}");
    }

    #[test]
    fn every_tenant_error_is_named_at_once() {
        let err = with_env(
            r#"
[[tenants]]
name = "bad name!"
keys_sha256 = ["nothex"]
keys_env = ["MISSING_KEY"]
[[tenants]]
name = "open"
auth = "replace"
match_header = { name = "x-team", value = "t" }
[[tenants]]
name = "c1"
[[tenants]]
name = "c1"
[tenants.cache]
mode = "sometimes"
threshold = 1.5
text = "everything"
"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        for want in [
            "tenants[0].name",
            "tenants[0].keys_sha256[0]",
            "tenants[0].keys_env[0]: environment variable MISSING_KEY is not set",
            "tenants[1].upstream.api_key_env",
            "tenants[1].auth: auth = \"replace\" needs keys_sha256 or keys_env",
            "tenants[3].name: `c1` is already the name of tenants[2]",
            "tenants[3]: no keys, header or models",
            "tenants[3].cache.mode",
            "tenants[3].cache.threshold",
            "tenants[3].cache.text",
        ] {
            assert!(err.contains(want), "missing `{want}` in:\n{err}");
        }
        assert!(err.lines().count() >= 10, "{err}");
    }

    #[test]
    fn a_key_may_belong_to_one_tenant_only() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let err = with_env(
            &format!(
                "[[tenants]]\nname = \"a\"\nkeys_sha256 = [\"{h}\"]\n[[tenants]]\nname = \"b\"\nkeys_env = [\"K\"]\n"
            ),
            &[("K", "test")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tenants[1]") && err.contains("also belongs to tenants[0]"),
            "{err}"
        );
    }

    #[test]
    fn replace_mode_needs_its_upstream_key_in_the_environment() {
        let text = "[[tenants]]\nname = \"v\"\nauth = \"replace\"\nkeys_env = [\"GW\"]\nupstream = { api_key_env = \"UP\" }\n";
        let err = with_env(text, &[("GW", "g")]).unwrap_err().to_string();
        assert!(
            err.contains("tenants[0].upstream.api_key_env: environment variable UP is not set"),
            "{err}"
        );
        assert!(with_env(text, &[("GW", "g"), ("UP", "sk")]).is_ok());
        let err = with_env(
            "[[tenants]]\nname = \"p\"\nupstream = { api_key_env = \"UP\" }\n",
            &[("UP", "sk")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("only used with auth = \"replace\""), "{err}");
    }
}
