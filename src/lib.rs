//! modelcache: a semantic-cache gateway for OpenAI-compatible LLM APIs.
//!
//! The folder tree is the architecture: `proxy` is the data plane, `cache` the
//! lookup facade over `embed`, `index` and `store`, `writeback` the only
//! writer, `keying` the cache key, `tenants` who a caller is, `config` the settings, `admin` the admin
//! listener, `app` the wiring, `cli` the command line, `eval` the measurement of
//! lookups against labelled pairs.

pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod embed;
pub mod eval;
pub mod http;
pub mod index;
pub mod keying;
pub mod metrics;
pub mod proxy;
pub mod store;
pub mod tenants;
