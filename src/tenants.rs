//! Tenants at run time: who a caller is, where their requests go, which
//! policy applies, and whether their key may be served from cache.
//!
//! Owns caller matching (key, then header, then model, then the catch-all
//! tenant) and the verified-key table. A [`TenantSet`] is immutable; a reload
//! builds a new one and swaps it in, so requests in flight finish under the
//! set they started with. It must never keep a caller's key: keys are known
//! here only by their SHA-256.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{header, HeaderMap, HeaderName};

use crate::{
    config::{glob_match, key_hash, Policy, PriceTable, Settings, TenantSettings, UnknownKeys},
    http::upstream::{is_anthropic, Upstream},
    store::Limits,
};

/// One tenant, ready to serve.
pub struct Tenant {
    /// Its settings, policy included.
    pub settings: TenantSettings,
    /// Its upstream client (auth and extra headers applied there).
    pub upstream: Upstream,
    /// Its client for Anthropic's API.
    pub anthropic: Upstream,
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The tenant's cache policy.
    pub fn policy(&self) -> &Policy {
        &self.settings.policy
    }

    /// Where a request of `parts` goes: Anthropic's family or the rest.
    pub fn upstream_for(&self, parts: &http::request::Parts) -> &Upstream {
        if is_anthropic(parts.uri.path(), &parts.headers) {
            &self.anthropic
        } else {
            &self.upstream
        }
    }
}

/// Every tenant of one configuration.
pub struct TenantSet {
    tenants: Vec<Arc<Tenant>>,
    by_key: HashMap<[u8; 32], usize>,
    by_header: Vec<(HeaderName, String, usize)>,
    by_model: Vec<(String, usize)>,
    catch_all: Option<usize>,
    /// What happens to callers that match no tenant.
    pub unknown_keys: UnknownKeys,
    /// How long an upstream 2xx lets a key be served from cache.
    pub verified_key_ttl: Duration,
    /// `[upstream]`, for unknown callers in `passthrough`.
    pub fallback: Upstream,
    /// `[upstream].anthropic_url`, likewise.
    pub fallback_anthropic: Upstream,
    /// `[prices]`, for the money saved.
    pub prices: PriceTable,
    default_max_entries: u64,
}

/// The credential a caller presented: the bearer token of `Authorization`,
/// else `api-key` (Azure style), else `x-api-key`.
pub fn credential(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let token = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => v,
        };
        return Some(token);
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The hash a caller is known by: of its credential, or of "" without one.
pub fn caller_hash(h: &HeaderMap) -> [u8; 32] {
    key_hash(credential(h).unwrap_or(""))
}

impl TenantSet {
    /// Builds the tenants of `settings` (one upstream client each).
    pub fn build(settings: &Settings) -> Result<TenantSet, String> {
        let mut set = TenantSet {
            tenants: Vec::new(),
            by_key: HashMap::new(),
            by_header: Vec::new(),
            by_model: Vec::new(),
            catch_all: None,
            unknown_keys: settings.auth.unknown_keys,
            verified_key_ttl: settings.auth.verified_key_ttl,
            fallback: Upstream::new(&settings.upstream)?,
            fallback_anthropic: Upstream::anthropic(&settings.upstream)?,
            prices: settings.prices.clone(),
            default_max_entries: settings.cache.policy.max_entries,
        };
        for (i, t) in settings.tenants.iter().enumerate() {
            for h in &t.key_hashes {
                set.by_key.insert(*h, i);
            }
            if let Some((n, v)) = &t.match_header {
                set.by_header.push((n.clone(), v.clone(), i));
            }
            for m in &t.match_models {
                set.by_model.push((m.clone(), i));
            }
            if t.is_catch_all() {
                set.catch_all = Some(i);
            }
            set.tenants.push(Arc::new(Tenant {
                upstream: Upstream::new(&t.upstream)
                    .map_err(|e| format!("tenant {}: {e}", t.name))?,
                anthropic: Upstream::anthropic(&t.upstream)
                    .map_err(|e| format!("tenant {}: {e}", t.name))?,
                settings: t.clone(),
            }));
        }
        Ok(set)
    }

    /// Where a request of a caller that matches no tenant goes.
    pub fn fallback_for(&self, parts: &http::request::Parts) -> &Upstream {
        if is_anthropic(parts.uri.path(), &parts.headers) {
            &self.fallback_anthropic
        } else {
            &self.fallback
        }
    }

    /// The tenant a caller belongs to by key or header, if any.
    pub fn by_key_or_header(&self, h: &HeaderMap, caller: &[u8; 32]) -> Option<Arc<Tenant>> {
        if let Some(i) = self.by_key.get(caller) {
            return Some(self.tenants[*i].clone());
        }
        self.by_header
            .iter()
            .find(|(n, v, _)| h.get(n).is_some_and(|x| x.as_bytes() == v.as_bytes()))
            .map(|(_, _, i)| self.tenants[*i].clone())
    }

    /// The tenant a caller's key names (keys_sha256 or keys_env), if any.
    pub fn by_key(&self, caller: &[u8; 32]) -> Option<Arc<Tenant>> {
        self.by_key.get(caller).map(|i| self.tenants[*i].clone())
    }

    /// The tenant called `name`, if configured.
    pub fn by_name(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.iter().find(|t| t.name() == name).cloned()
    }

    /// Every tenant, in config order.
    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The first tenant whose model pattern matches `model`, if any.
    pub fn by_model(&self, model: &str) -> Option<Arc<Tenant>> {
        self.by_model
            .iter()
            .find(|(p, _)| glob_match(p, model))
            .map(|(_, i)| self.tenants[*i].clone())
    }

    /// The tenant with nothing to match on, if there is one.
    pub fn catch_all(&self) -> Option<Arc<Tenant>> {
        self.catch_all.map(|i| self.tenants[i].clone())
    }

    /// Tenant names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.tenants.iter().map(|t| t.name().to_string()).collect()
    }

    /// Entry caps for a sweep.
    pub fn limits(&self) -> Limits {
        Limits {
            per_tenant: self
                .tenants
                .iter()
                .map(|t| (t.name().to_string(), t.policy().max_entries))
                .collect(),
            default: self.default_max_entries,
        }
    }
}

/// Keys the upstream has accepted recently, by (tenant, key hash), with the
/// time (unix milliseconds) of the last acceptance.
///
/// Lives across reloads. A key gets cache hits only while an upstream 2xx for
/// it is younger than `verified_key_ttl`; a 401 or 403 forgets it at once.
/// This is the memory of one process; the store keeps the same records for a
/// restart and for the other replicas.
pub struct VerifiedKeys {
    seen: moka::sync::Cache<(String, [u8; 32]), i64>,
}

/// How stale a key's stored record may get before an upstream 2xx writes it
/// again: one write per key per minute at most.
pub const VERIFIED_KEY_REFRESH_MS: i64 = 60_000;

impl Default for VerifiedKeys {
    fn default() -> Self {
        VerifiedKeys {
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }
    }
}

impl VerifiedKeys {
    /// Whether `caller` may be served from `tenant`'s cache at `now_ms`.
    pub fn is_verified(&self, tenant: &str, caller: &[u8; 32], ttl: Duration, now_ms: i64) -> bool {
        self.seen
            .get(&(tenant.to_string(), *caller))
            .is_some_and(|at| fresh(at, ttl, now_ms))
    }

    /// Records an upstream 2xx for `caller` at `at_ms` (now, or a time the
    /// store remembered). True when the record is new or was older than
    /// [`VERIFIED_KEY_REFRESH_MS`]: the time to write it to the store.
    pub fn verify(&self, tenant: &str, caller: &[u8; 32], at_ms: i64) -> bool {
        let key = (tenant.to_string(), *caller);
        let before = self.seen.get(&key);
        if before.is_none_or(|b| b < at_ms) {
            self.seen.insert(key, at_ms);
        }
        before.is_none_or(|b| at_ms - b >= VERIFIED_KEY_REFRESH_MS)
    }

    /// Forgets `caller` after the upstream refused it.
    pub fn revoke(&self, tenant: &str, caller: &[u8; 32]) {
        self.seen.invalidate(&(tenant.to_string(), *caller));
    }
}

/// Whether an acceptance at `at_ms` is younger than `ttl` at `now_ms`.
pub fn fresh(at_ms: i64, ttl: Duration, now_ms: i64) -> bool {
    now_ms.saturating_sub(at_ms) < i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn globs() {
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("gpt-4o*", "gpt-4o"));
        assert!(!glob_match("gpt-4o*", "gpt-4"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("ft:*:acme:*", "ft:gpt-4o:acme:abc"));
        assert!(!glob_match("ft:*:acme:*", "ft:gpt-4o:other:abc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("api-key", HeaderValue::from_static("azure-key"));
        assert_eq!(credential(&h), Some("azure-key"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-abc"),
        );
        assert_eq!(credential(&h), Some("sk-abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  sk-abc "),
        );
        assert_eq!(caller_hash(&h), key_hash("sk-abc"));
    }

    #[test]
    fn verified_keys_expire_and_are_revoked() {
        let v = VerifiedKeys::default();
        let k = key_hash("k");
        let ttl = Duration::from_secs(60);
        assert!(!v.is_verified("t", &k, ttl, 1_000));
        assert!(
            v.verify("t", &k, 1_000),
            "a new key is written to the store"
        );
        assert!(
            !v.verify("t", &k, 2_000),
            "again within a minute: not written"
        );
        assert!(v.verify("t", &k, 62_000), "a minute later: written again");
        assert!(v.is_verified("t", &k, ttl, 62_000 + 59_999));
        assert!(!v.is_verified("t", &k, ttl, 62_000 + 60_000), "expired");
        assert!(!v.is_verified("other", &k, ttl, 62_000));
        assert!(!v.is_verified("t", &k, Duration::ZERO, 62_000));
        // An older time (from the store) never moves the record back.
        v.verify("t", &k, 5_000);
        assert!(v.is_verified("t", &k, ttl, 100_000));
        v.revoke("t", &k);
        assert!(!v.is_verified("t", &k, ttl, 62_000));
    }
}
