//! `[upstream]` and its per-tenant overrides `[tenants.upstream]`: where
//! misses are forwarded, with which timeouts and extra headers.
//!
//! Owns the raw sections, the typed settings and their `load()`. It must never
//! read the upstream key from the file: only the name of its variable.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{duration, env_var, invalid, ConfigError, Errors, Overrides, Secret};

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Origin that request paths are appended to.
    #[serde(default = "d_upstream_url")]
    pub url: String,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: String,
    /// Time allowed until the upstream's response headers arrive.
    #[serde(default = "d_header_timeout")]
    pub header_timeout: String,
    /// Longest silence allowed between two chunks of a response body.
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: String,
    /// Extra headers sent with every upstream request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Origin of Anthropic's API: `/v1/messages`, and any request that
    /// carries an `anthropic-version` header, go there.
    #[serde(default = "d_anthropic_url")]
    pub anthropic_url: String,
}

/// `[tenants.upstream]`: every key defaults to `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantUpstream {
    /// Origin.
    pub url: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
    /// Time to response headers.
    pub header_timeout: Option<String>,
    /// Idle time between body chunks.
    pub idle_timeout: Option<String>,
    /// Extra headers sent with every upstream request (replace `[upstream].headers`).
    pub headers: Option<BTreeMap<String, String>>,
    /// Environment variable holding the tenant's upstream key (`auth = "replace"`).
    pub api_key_env: Option<String>,
    /// Origin of Anthropic's API for this tenant.
    pub anthropic_url: Option<String>,
    /// Environment variable holding the tenant's Anthropic key (`auth =
    /// "replace"`), sent as `x-api-key`.
    pub anthropic_api_key_env: Option<String>,
}

defaults! {
    d_upstream_url: String = "https://api.openai.com".into();
    d_anthropic_url: String = "https://api.anthropic.com".into();
    d_connect_timeout: String = "10s".into();
    d_header_timeout: String = "10m".into();
    d_idle_timeout: String = "5m".into();
}

default_from_serde!(RawUpstream);

/// Upstream origin and timeouts.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Origin, without a trailing slash; request paths are appended unchanged.
    pub url: url::Url,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time to response headers.
    pub header_timeout: Duration,
    /// Idle time between body chunks.
    pub idle_timeout: Duration,
    /// Extra headers sent with every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The key sent instead of the caller's (`auth = "replace"`).
    pub api_key: Option<Secret>,
    /// Origin of Anthropic's API (the Messages family).
    pub anthropic_url: url::Url,
    /// The Anthropic key sent instead of the caller's (`auth = "replace"`).
    pub anthropic_api_key: Option<Secret>,
}

/// Parses and checks an upstream origin (`http(s)://host[:port]`).
pub fn upstream_url(key: &str, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| invalid(key, format!("`{s}`: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(invalid(key, "scheme must be http or https"));
    }
    if u.host_str().is_none() {
        return Err(invalid(key, "needs a host"));
    }
    if u.query().is_some() {
        return Err(invalid(key, "must not carry a query"));
    }
    Ok(u)
}

pub(super) fn headers(
    errs: &mut Errors,
    key: &str,
    raw: &BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (n, v) in raw {
        let k = format!("{key}.{n}");
        match (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => errs.push(&k, "not a valid header name"),
            (_, Err(_)) => errs.push(&k, "not a valid header value"),
        }
    }
    out
}

/// `[upstream]` into [`UpstreamSettings`]; `--upstream` wins.
pub(super) fn load(errs: &mut Errors, u: &RawUpstream, o: &Overrides) -> UpstreamSettings {
    let fallback_url = url::Url::parse("http://127.0.0.1/").expect("a valid URL");
    let upstream = UpstreamSettings {
        url: errs.take(
            upstream_url("upstream.url", o.upstream.as_deref().unwrap_or(&u.url)),
            fallback_url.clone(),
        ),
        connect_timeout: duration(errs, "upstream.connect_timeout", &u.connect_timeout),
        header_timeout: duration(errs, "upstream.header_timeout", &u.header_timeout),
        idle_timeout: duration(errs, "upstream.idle_timeout", &u.idle_timeout),
        headers: headers(errs, "upstream.headers", &u.headers),
        api_key: None,
        anthropic_url: errs.take(
            upstream_url("upstream.anthropic_url", &u.anthropic_url),
            fallback_url,
        ),
        anthropic_api_key: None,
    };
    upstream
}

/// `[tenants.upstream]`: each key set replaces the one of `base`.
pub(super) fn tenant_upstream(
    errs: &mut Errors,
    p: &str,
    base: &UpstreamSettings,
    u: &RawTenantUpstream,
    env: &HashMap<String, String>,
) -> UpstreamSettings {
    let k = |name: &str| format!("{p}.upstream.{name}");
    UpstreamSettings {
        url: match &u.url {
            Some(v) => errs.take(upstream_url(&k("url"), v), base.url.clone()),
            None => base.url.clone(),
        },
        connect_timeout: u
            .connect_timeout
            .as_deref()
            .map_or(base.connect_timeout, |v| {
                duration(errs, &k("connect_timeout"), v)
            }),
        header_timeout: u
            .header_timeout
            .as_deref()
            .map_or(base.header_timeout, |v| {
                duration(errs, &k("header_timeout"), v)
            }),
        idle_timeout: u
            .idle_timeout
            .as_deref()
            .map_or(base.idle_timeout, |v| duration(errs, &k("idle_timeout"), v)),
        headers: match &u.headers {
            Some(h) => headers(errs, &k("headers"), h),
            None => base.headers.clone(),
        },
        api_key: u.api_key_env.as_deref().and_then(|name| {
            env_var(errs, env, &k("api_key_env"), name).map(|v| Secret(v.trim().to_string()))
        }),
        anthropic_url: match &u.anthropic_url {
            Some(v) => errs.take(
                upstream_url(&k("anthropic_url"), v),
                base.anthropic_url.clone(),
            ),
            None => base.anthropic_url.clone(),
        },
        anthropic_api_key: u.anthropic_api_key_env.as_deref().and_then(|name| {
            env_var(errs, env, &k("anthropic_api_key_env"), name)
                .map(|v| Secret(v.trim().to_string()))
        }),
    }
}
