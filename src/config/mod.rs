//! Configuration: `config.toml` plus `MODELCACHE_*` environment overrides plus
//! command-line flags, turned into typed [`Settings`].
//!
//! Owns validation and defaults. Every error names the path of the key that
//! caused it. It must never read secrets from the file: they come only from the
//! environment, by name.
//!
//! One file per section, each with its raw serde struct, its typed settings
//! and its `load()`: [`server`](ServerSettings), [`upstream`](UpstreamSettings),
//! [`storage`](StorageSettings), [`index`](IndexSettings), [`embedding`](EmbeddingSettings),
//! [`cache`](CacheSettings), [`auth`](AuthSettings), [`admin`](AdminSettings),
//! [`tenants`](TenantSettings) and [`prices`](PriceTable). This file keeps the
//! whole: reading the file, environment overrides, the error collection and
//! the parsers the sections share.

macro_rules! defaults {
    ($($name:ident : $ty:ty = $val:expr;)*) => { $(fn $name() -> $ty { $val })* };
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

mod admin;
mod auth;
mod cache;
mod embedding;
mod index;
mod prices;
pub mod raw;
mod server;
mod storage;
mod tenants;
mod upstream;

use std::{collections::HashMap, path::Path, time::Duration};

use raw::RawConfig;

pub use crate::keying::TextMode;
pub use admin::{AdminSettings, KeylessAccess};
pub use auth::{AuthSettings, UnknownKeys};
pub use cache::{
    ApiEntriesMatch, CacheMode, CacheSettings, Calibrate, GuardSet, Policy, ReaderThresholds,
    Verifier,
};
pub use embedding::{E5Files, EmbeddingBackend, EmbeddingSettings, RemoteSettings};
pub use index::{IndexBackend, IndexSettings, MILVUS_QUEUE, MILVUS_SEARCH_TIMEOUT};
pub use prices::{ModelPrice, PriceTable};
pub use server::ServerSettings;
pub use storage::{Quantization, StorageBackend, StorageSettings, MYSQL_POLL};
pub use tenants::{key_hash, AuthMode, TenantSettings, DEFAULT_TENANT};
pub use upstream::{upstream_url, UpstreamSettings};

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

/// The typed runtime configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`
    pub server: ServerSettings,
    /// `[upstream]`
    pub upstream: UpstreamSettings,
    /// `[storage]`
    pub storage: StorageSettings,
    /// `[index]`
    pub index: IndexSettings,
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

const SECTIONS: [&str; 7] = [
    "server",
    "upstream",
    "storage",
    "index",
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

/// `*` matches any run of characters; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    text.ends_with(last)
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

fn at_least_one(errs: &mut Errors, key: &str, v: usize) -> usize {
    if v == 0 {
        errs.push(key, "must be at least 1");
    }
    v
}

/// The URL `url` gives, or the variable `url_env` names (exactly one of
/// them), for `section`; `needs` says why one is required, `example` how.
fn url_or_env(
    errs: &mut Errors,
    env: &HashMap<String, String>,
    section: &str,
    (url, url_env): (&Option<String>, &Option<String>),
    (needs, example): (&str, &str),
) -> Option<String> {
    match (url, url_env) {
        (Some(u), None) => Some(u.clone()),
        (None, Some(name)) => {
            env_var(errs, env, &format!("{section}.url_env"), name).map(|v| v.trim().to_string())
        }
        _ => {
            errs.push(
                &format!("{section}.url"),
                format!("{needs} needs url or url_env (one of them), e.g. {example}"),
            );
            None
        }
    }
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

fn settings_from_raw(
    raw: RawConfig,
    o: &Overrides,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    // NOTE: the sections load in file order, each pushing its errors, so
    // that one run names every invalid value, in a stable order.
    let mut errs = Errors::default();
    let server = server::load(&mut errs, &raw.server, o);
    let upstream = upstream::load(&mut errs, &raw.upstream, o);
    let storage = storage::load(&mut errs, &raw.storage, o, env);
    let index = index::load(&mut errs, &raw.index, env);
    let embedding = embedding::load(&mut errs, &raw.embedding, env);
    let cache = cache::load(&mut errs, &raw.cache, embedding.max_length);
    let auth = auth::load(&mut errs, &raw.auth);
    let admin = admin::load(&mut errs, &raw.admin, env);
    let tenants = tenants::load(&mut errs, &raw.tenants, &upstream, &cache.policy, env);
    let prices = prices::load(&mut errs, &raw.prices);
    match errs.0.len() {
        0 => Ok(Settings {
            server,
            upstream,
            storage,
            index,
            embedding,
            cache,
            auth,
            admin,
            tenants,
            prices,
        }),
        1 => Err(errs.0.remove(0)),
        _ => Err(ConfigError::Many(errs.0)),
    }
}

#[cfg(test)]
fn from_str(text: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    load(Some(&p), Vec::new(), &Overrides::default())
}

#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let s = from_str("").unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.server.admin_listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.upstream.url.as_str(), "https://api.openai.com/");
        assert_eq!(
            s.upstream.anthropic_url.as_str(),
            "https://api.anthropic.com/"
        );
        assert_eq!(
            s.tenants[0].upstream.anthropic_url.as_str(),
            "https://api.anthropic.com/"
        );
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
}
