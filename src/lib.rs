//! modelcache: a semantic-cache gateway for OpenAI-compatible LLM APIs.
//!
//! The folder tree is the request path, and the modules below are listed in
//! its order, top to bottom: each imports only modules listed after it
//! (`scripts/module-graph.py` checks it). `app` and `cli` wire the process;
//! `eval` measures lookups on labelled pairs; `proxy` and `admin` are HTTP in
//! and out, side by side; `cache` is the whole hit-or-miss decision (plan,
//! lookup, judge, guards, memory layers, following, the one writer);
//! `tenants` says who a caller is; `index`, `embed` and `store` are what the
//! cache stands on; `http` holds the body types, the upstream client and the
//! gateway's own errors; `config` makes plain settings; `clock`, `keying`
//! and `metrics` are leaves anyone may import.

// NOTE: the request path's order, not the alphabet's; rustfmt sorts `mod`
// lines within a group, so a module that must come first stands alone.
pub mod app;
pub mod cli;
pub mod eval;
pub mod import;

pub mod admin;
pub mod proxy;

pub mod cache;

pub mod tenants;

pub mod index;

pub mod embed;
pub mod store;

pub mod http;

pub mod config;

pub mod clock;
pub mod keying;
pub mod metrics;
