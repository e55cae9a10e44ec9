//! Raw configuration: the serde shape of `config.toml`, exactly as written.
//!
//! Owns parsing only. Every struct denies unknown keys and every field has a
//! named default, so a missing key is never an error and a misspelt one always
//! is. It must never interpret values (durations, addresses, URLs): that is
//! each section's `load()`. The sections' raw structs live in their own files
//! (`config/server.rs`, ...) and are re-exported here.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use super::{
    admin::RawAdmin,
    auth::RawAuth,
    cache::{RawGuards, RawPolicy},
    embedding::RawEmbedding,
    index::RawIndex,
    prices::RawPrice,
    server::RawServer,
    storage::RawStorage,
    tenants::{RawHeaderMatch, RawTenant},
    upstream::{RawTenantUpstream, RawUpstream},
};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// Where misses are forwarded.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Where the cache keeps its state.
    #[serde(default)]
    pub storage: RawStorage,
    /// Where the vector index lives.
    #[serde(default)]
    pub index: RawIndex,
    /// The embedding model.
    #[serde(default)]
    pub embedding: RawEmbedding,
    /// Cache policy: the defaults of every tenant.
    #[serde(default)]
    pub cache: RawPolicy,
    /// Callers that match no tenant, and upstream verification of keys.
    #[serde(default)]
    pub auth: RawAuth,
    /// The admin listener's API: its token and who may call `/modelcache`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[[tenants]]`; none means one implicit `default` tenant for every caller.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// `[prices]`: USD per million tokens by model name or pattern. When the
    /// table is absent, built-in example prices apply.
    #[serde(default = "super::prices::d_prices")]
    pub prices: BTreeMap<String, RawPrice>,
}
