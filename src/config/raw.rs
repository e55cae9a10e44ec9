//! Raw configuration: the serde shape of `config.toml`, exactly as written.
//!
//! Owns parsing only. Every struct denies unknown keys and every field has a
//! named default, so a missing key is never an error and a misspelt one always
//! is. It must never interpret values (durations, addresses, URLs): that is
//! `load()`'s job in `config/mod.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    /// The embedding model.
    #[serde(default)]
    pub embedding: RawEmbedding,
    /// Cache policy: the defaults of every tenant.
    #[serde(default)]
    pub cache: RawCache,
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
    #[serde(default = "d_prices")]
    pub prices: BTreeMap<String, RawPrice>,
}

/// One model's price, USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Prompt (input) tokens.
    pub prompt: f64,
    /// Completion (output) tokens.
    pub completion: f64,
}

/// Example list prices (USD per million tokens, standard tier) of common
/// OpenAI models. They go stale: set `[prices]` to your provider's.
fn d_prices() -> BTreeMap<String, RawPrice> {
    [
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4.1", 2.00, 8.00),
        ("gpt-4.1-mini", 0.40, 1.60),
        ("gpt-4.1-nano", 0.10, 0.40),
        ("gpt-3.5-turbo", 0.50, 1.50),
        ("o3-mini", 1.10, 4.40),
    ]
    .into_iter()
    .map(|(m, prompt, completion)| (format!("{m}*"), RawPrice { prompt, completion }))
    .collect()
}

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
    pub cache: RawTenantCache,
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
}

/// `[tenants.cache]`: every key defaults to `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantCache {
    /// `false` is `mode = "off"`.
    pub enabled: Option<bool>,
    /// `read_write`, `read_only`, `write_only` or `off`.
    pub mode: Option<String>,
    /// Short-text threshold.
    pub threshold: Option<f32>,
    /// Long-text threshold.
    pub long_threshold: Option<f32>,
    /// Words above which a text is long.
    pub long_text_words: Option<usize>,
    /// Entry lifetime.
    pub ttl: Option<String>,
    /// Entry cap, least recently hit evicted first.
    pub max_entries: Option<u64>,
    /// `system_and_user`, `last_user` or `all`.
    pub text: Option<String>,
    /// Chats with more messages are matched exactly only.
    pub max_messages: Option<usize>,
    /// Cacheable finish reasons.
    pub cacheable_finish_reasons: Option<Vec<String>>,
    /// Requests with a higher temperature skip the cache.
    pub skip_when_temperature_above: Option<f64>,
    /// Which requests entries inserted through `/modelcache` answer.
    pub api_entries_match: Option<String>,
    /// Overrides of `[cache.guards]`.
    #[serde(default)]
    pub guards: RawTenantGuards,
    /// Whether the word-by-word verifier chooses each candidate's threshold.
    pub verifier: Option<bool>,
    /// Similarity needed when no content word differs.
    pub same_words_threshold: Option<f32>,
    /// Similarity needed when one or two content words differ.
    pub small_edit_threshold: Option<f32>,
    /// The largest share of wrong answers the tenant accepts; its thresholds
    /// are calibrated to it on `calibration_pairs` at start.
    pub max_wrong_rate: Option<f64>,
    /// Labelled pairs (the `modelcache eval` format) to calibrate on.
    pub calibration_pairs: Option<String>,
}

/// `[tenants.cache.guards]`: each key defaults to `[cache.guards]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantGuards {
    /// Numbers and units must match.
    pub numbers: Option<bool>,
    /// Negation and polarity words must match.
    pub negation: Option<bool>,
    /// Programming languages and platforms must match.
    pub code: Option<bool>,
    /// The natural language must match.
    pub language: Option<bool>,
    /// Text past the embedding window must be equal.
    pub long_text: Option<bool>,
}

/// `[cache.guards]`: structural checks of every semantic candidate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuards {
    /// Numbers and units must match.
    #[serde(default = "d_true")]
    pub numbers: bool,
    /// Negation and polarity words must match.
    #[serde(default = "d_true")]
    pub negation: bool,
    /// Programming languages and platforms must match.
    #[serde(default = "d_true")]
    pub code: bool,
    /// The natural language must match.
    #[serde(default = "d_true")]
    pub language: bool,
    /// Text past the embedding window must be equal.
    #[serde(default = "d_true")]
    pub long_text: bool,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Proxy listener.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Admin listener (health, readiness, metrics).
    #[serde(default = "d_admin_listen")]
    pub admin_listen: String,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(default = "d_drain_timeout")]
    pub drain_timeout: String,
    /// Largest request body read for a cache lookup; larger ones are forwarded uncached.
    #[serde(default = "d_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest upstream answer that is kept for the cache; larger ones are passed on uncached.
    #[serde(default = "d_max_answer_bytes")]
    pub max_answer_bytes: u64,
    /// Longest wait for a new connection's first request line and headers
    /// (and for the next request on an idle keep-alive connection).
    #[serde(default = "d_header_read_timeout")]
    pub header_read_timeout: String,
    /// Longest silence between two pieces of a request body.
    #[serde(default = "d_body_read_timeout")]
    pub body_read_timeout: String,
    /// Most client connections the proxy holds open at once; past this, new
    /// ones wait in the listen backlog. Capped at start by the process's
    /// file-descriptor limit.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
}

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
}

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Folder for SQLite and the vector indexes.
    #[serde(default = "d_data_dir")]
    pub data_dir: String,
    /// How often dirty vector indexes are saved.
    #[serde(default = "d_index_save_interval")]
    pub index_save_interval: String,
    /// `f16`, `i8` or `f32`.
    #[serde(default = "d_index_quantization")]
    pub index_quantization: String,
    /// `sqlite` (embedded, in `data_dir`) or `postgres`.
    #[serde(default = "d_storage_backend")]
    pub backend: String,
    /// The PostgreSQL URL (`backend = "postgres"`); prefer `url_env`.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the PostgreSQL URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// A PostgreSQL schema of its own for the tables (default: the user's).
    #[serde(default)]
    pub schema: Option<String>,
    /// Wake replicas with LISTEN/NOTIFY (default true); false polls only,
    /// for poolers that cannot LISTEN (PgBouncer in transaction mode).
    #[serde(default)]
    pub notify: Option<bool>,
}

/// `[embedding]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedding {
    /// Folder with `model.onnx`, `tokenizer.json`, `config.json`,
    /// `special_tokens_map.json` and `tokenizer_config.json`.
    #[serde(default = "d_model_dir")]
    pub model_dir: String,
    /// Path of `libonnxruntime.so`.
    #[serde(default = "d_onnxruntime")]
    pub onnxruntime: String,
    /// Embedding worker threads; each runs its own model instance.
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// ONNX Runtime threads inside one embedding (lower latency, more CPU).
    /// Default: 2, or 1 on a one-core machine.
    #[serde(default = "d_intra_threads")]
    pub intra_threads: usize,
    /// Most texts embedded in one batch.
    #[serde(default = "d_max_batch")]
    pub max_batch: usize,
    /// Tokens per chunk; longer texts are split at token boundaries and the
    /// chunk embeddings averaged.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// Most chunks of `max_length` tokens one text may be embedded as; a
    /// longer text is matched exactly only.
    #[serde(default = "d_max_chunks")]
    pub max_chunks: usize,
    /// Pending embedding requests before lookups are skipped (counted, forwarded).
    #[serde(default = "d_queue")]
    pub queue: usize,
    /// `local` (the model in `model_dir`) or `openai` (a remote
    /// OpenAI-compatible `/v1/embeddings` endpoint).
    #[serde(default = "d_embedding_kind")]
    pub kind: String,
    /// The remote endpoint (`kind = "openai"`).
    #[serde(default)]
    pub url: Option<String>,
    /// The remote model name (`kind = "openai"`).
    #[serde(default)]
    pub model: Option<String>,
    /// The environment variable holding the remote API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Longest wait for one remote batch.
    #[serde(default = "d_embedding_timeout")]
    pub timeout: String,
    /// The remote vector size; asked of the endpoint at start when unset.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// The folder `scripts/fetch-e5.sh` fills (`kind = "e5"`).
    #[serde(default = "d_e5_dir")]
    pub e5_dir: String,
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// `false` makes "off" every tenant's default mode (a tenant may still turn
    /// its own cache on); with no tenant caching, no model is loaded.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Cosine similarity needed for a semantic hit on a short text.
    #[serde(default = "d_threshold")]
    pub threshold: f32,
    /// Cosine similarity needed for a semantic hit on a long text.
    #[serde(default = "d_long_threshold")]
    pub long_threshold: f32,
    /// A text with more words than this is "long".
    #[serde(default = "d_long_text_words")]
    pub long_text_words: usize,
    /// How long an entry may be served.
    #[serde(default = "d_ttl")]
    pub ttl: String,
    /// Most entries kept; the least recently hit go first.
    #[serde(default = "d_max_entries")]
    pub max_entries: u64,
    /// Entries kept in memory for exact hits.
    #[serde(default = "d_exact_capacity")]
    pub exact_capacity: u64,
    /// Write-back queue length; a full queue drops the write and counts it.
    #[serde(default = "d_writeback_queue")]
    pub writeback_queue: usize,
    /// Most writes committed in one transaction.
    #[serde(default = "d_writeback_batch")]
    pub writeback_batch: usize,
    /// Longest an identical miss waits for the one already on its way
    /// upstream, before it is forwarded itself; "0s" forwards every miss.
    #[serde(default = "d_single_flight_wait")]
    pub single_flight_wait: String,
    /// `finish_reason`s whose answers may be cached.
    #[serde(default = "d_finish_reasons")]
    pub cacheable_finish_reasons: Vec<String>,
    /// `read_write`, `read_only`, `write_only` or `off`.
    #[serde(default = "d_mode")]
    pub mode: String,
    /// Which turns are compared by meaning.
    #[serde(default = "d_text")]
    pub text: String,
    /// Chats with more messages than this are matched exactly only.
    #[serde(default = "d_max_messages")]
    pub max_messages: usize,
    /// Requests with a higher temperature neither read nor write the cache.
    #[serde(default)]
    pub skip_when_temperature_above: Option<f64>,
    /// Which requests entries inserted through `/modelcache` answer:
    /// `default_params` or `any_sampling_params`.
    #[serde(default = "d_api_entries_match")]
    pub api_entries_match: String,
    /// Structural guards.
    #[serde(default)]
    pub guards: RawGuards,
    /// Whether the word-by-word verifier chooses each candidate's threshold.
    #[serde(default = "d_true")]
    pub verifier: bool,
    /// Similarity needed when no content word differs.
    #[serde(default = "d_same_words_threshold")]
    pub same_words_threshold: f32,
    /// Similarity needed when one or two content words differ.
    #[serde(default = "d_small_edit_threshold")]
    pub small_edit_threshold: f32,
    /// The largest share of wrong answers accepted; thresholds are calibrated
    /// to it on `calibration_pairs` at start.
    #[serde(default)]
    pub max_wrong_rate: Option<f64>,
    /// Labelled pairs (the `modelcache eval` format) to calibrate on.
    #[serde(default)]
    pub calibration_pairs: Option<String>,
}

macro_rules! defaults {
    ($($name:ident : $ty:ty = $val:expr;)*) => { $(fn $name() -> $ty { $val })* };
}

defaults! {
    d_listen: String = "127.0.0.1:8080".into();
    d_admin_listen: String = "127.0.0.1:5000".into();
    d_drain_timeout: String = "30s".into();
    d_max_body_bytes: u64 = 4 * 1024 * 1024;
    d_max_answer_bytes: u64 = 8 * 1024 * 1024;
    d_header_read_timeout: String = "10s".into();
    d_body_read_timeout: String = "30s".into();
    d_max_connections: usize = 10_000;
    d_upstream_url: String = "https://api.openai.com".into();
    d_connect_timeout: String = "10s".into();
    d_header_timeout: String = "10m".into();
    d_idle_timeout: String = "5m".into();
    d_data_dir: String = "./data".into();
    d_index_save_interval: String = "60s".into();
    d_index_quantization: String = "f16".into();
    d_model_dir: String = "models/all-minilm-l6-v2-int8".into();
    d_onnxruntime: String = "models/onnxruntime/libonnxruntime.so".into();
    d_threads: usize = 1;
    d_intra_threads: usize = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    d_max_batch: usize = 32;
    d_max_length: usize = 256;
    d_max_chunks: usize = 16;
    d_queue: usize = 256;
    d_true: bool = true;
    d_threshold: f32 = 0.90;
    d_long_threshold: f32 = 0.98;
    d_long_text_words: usize = 150;
    d_ttl: String = "7d".into();
    d_max_entries: u64 = 1_000_000;
    d_exact_capacity: u64 = 100_000;
    d_writeback_queue: usize = 4096;
    d_writeback_batch: usize = 128;
    d_single_flight_wait: String = "30s".into();
    d_finish_reasons: Vec<String> = vec!["stop".into(), "tool_calls".into()];
    d_mode: String = "read_write".into();
    d_text: String = "system_and_user".into();
    d_max_messages: usize = 20;
    d_unknown_keys: String = "reject".into();
    d_verified_key_ttl: String = "10m".into();
    d_auth: String = "passthrough".into();
    d_admin_token_env: String = "MODELCACHE_ADMIN_TOKEN".into();
    d_modelcache_without_key: String = "loopback".into();
    d_api_entries_match: String = "default_params".into();
    d_same_words_threshold: f32 = 0.80;
    d_embedding_kind: String = "local".into();
    d_storage_backend: String = "sqlite".into();
    d_e5_dir: String = "models/multilingual-e5-small".into();
    d_embedding_timeout: String = "2s".into();
    d_small_edit_threshold: f32 = 0.94;
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // NOTE: an empty table runs every `#[serde(default = ...)]`, so the
                // defaults are written once, on the fields.
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    RawServer,
    RawUpstream,
    RawStorage,
    RawEmbedding,
    RawCache,
    RawAuth,
    RawAdmin,
    RawGuards
);
