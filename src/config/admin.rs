//! `[admin]`: the admin token and who may call `/admin/*` and `/modelcache`
//! without one.
//!
//! Owns the raw section, the typed settings and their `load()`. It must never
//! read the token from the file: only the name of its variable.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Errors, Secret};

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The environment variable holding the admin token.
    #[serde(default = "d_admin_token_env")]
    pub token_env: String,
    /// Whether `/admin/*` needs no token from a loopback address, for the
    /// routes that only read.
    #[serde(default)]
    pub loopback_without_token: bool,
    /// Whether those loopback callers may also delete, flush and send feedback.
    #[serde(default)]
    pub loopback_writes_without_token: bool,
    /// Who may call `/modelcache` without a tenant key: `loopback`, `any` or `never`.
    #[serde(default = "d_modelcache_without_key")]
    pub modelcache_without_key: String,
    /// Whether those keyless callers may also insert, remove and register.
    #[serde(default)]
    pub modelcache_writes_without_key: bool,
}

defaults! {
    d_admin_token_env: String = "MODELCACHE_ADMIN_TOKEN".into();
    d_modelcache_without_key: String = "loopback".into();
}

default_from_serde!(RawAdmin);

/// Who may call `/modelcache` without a key that names a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeylessAccess {
    /// Callers on a loopback address (the default, with the admin listener
    /// on 127.0.0.1).
    Loopback,
    /// Any caller that reaches the admin listener.
    Any,
    /// Nobody: a tenant key or the admin token is needed.
    Never,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The admin token, from the environment; without one `/admin/*` is closed.
    pub token: Option<Secret>,
    /// The variable it is read from (named in errors).
    pub token_env: String,
    /// Whether `/admin/*` needs no token from a loopback address, for the
    /// routes that only read (`GET`, and the dry-run `POST /admin/lookup`).
    pub loopback_without_token: bool,
    /// Whether loopback callers without a token may also write: delete,
    /// flush, feedback. Needs `loopback_without_token`.
    pub loopback_writes_without_token: bool,
    /// Who may call `/modelcache` without a tenant key.
    pub modelcache_without_key: KeylessAccess,
    /// Whether a caller without a tenant key (admitted by
    /// `modelcache_without_key`) may also `insert`, `remove` and `register`;
    /// otherwise it may only `query`.
    pub modelcache_writes_without_key: bool,
}

/// `[admin]` into [`AdminSettings`]; the token is read from `env`.
pub(super) fn load(
    errs: &mut Errors,
    ad: &RawAdmin,
    env: &HashMap<String, String>,
) -> AdminSettings {
    let admin = AdminSettings {
        // NOTE: no token is not an error: /admin/* then answers 503 naming
        // the variable, and everything else runs.
        token: env
            .get(&ad.token_env)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| Secret(v.to_string())),
        token_env: ad.token_env.clone(),
        loopback_without_token: ad.loopback_without_token,
        loopback_writes_without_token: ad.loopback_writes_without_token,
        modelcache_writes_without_key: ad.modelcache_writes_without_key,
        modelcache_without_key: match ad.modelcache_without_key.as_str() {
            "loopback" => KeylessAccess::Loopback,
            "any" => KeylessAccess::Any,
            "never" => KeylessAccess::Never,
            other => {
                errs.push(
                    "admin.modelcache_without_key",
                    format!("`{other}`: expected loopback, any or never"),
                );
                KeylessAccess::Never
            }
        },
    };
    // NOTE: a write opt-in widens a read opt-in; alone it would do nothing,
    // and a reader of the file would think it did.
    if admin.loopback_writes_without_token && !admin.loopback_without_token {
        errs.push(
            "admin.loopback_writes_without_token",
            "needs admin.loopback_without_token = true",
        );
    }
    if admin.modelcache_writes_without_key && admin.modelcache_without_key == KeylessAccess::Never {
        errs.push(
            "admin.modelcache_writes_without_key",
            "needs admin.modelcache_without_key = \"loopback\" or \"any\"",
        );
    }
    if admin.token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        errs.push(
            "admin.token_env",
            format!(
                "the admin token in {} is shorter than 16 characters",
                ad.token_env
            ),
        );
    }
    admin
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    #[test]
    fn keyless_and_tokenless_writes_are_opt_in_and_widen_a_read_opt_in() {
        let d = from_str("").unwrap().admin;
        assert_eq!(d.modelcache_without_key, KeylessAccess::Loopback);
        assert!(!d.modelcache_writes_without_key);
        assert!(!d.loopback_without_token && !d.loopback_writes_without_token);
        let s = from_str(
            "[admin]\nloopback_without_token = true\nloopback_writes_without_token = true\nmodelcache_writes_without_key = true\n",
        )
        .unwrap()
        .admin;
        assert!(s.loopback_writes_without_token && s.modelcache_writes_without_key);
        let err = from_str("[admin]\nloopback_writes_without_token = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("admin.loopback_writes_without_token")
                && err.contains("loopback_without_token = true"),
            "{err}"
        );
        let err = from_str(
            "[admin]\nmodelcache_without_key = \"never\"\nmodelcache_writes_without_key = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("admin.modelcache_writes_without_key"),
            "{err}"
        );
    }
}
