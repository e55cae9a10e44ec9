//! Configuration: `config.toml` plus `MODELCACHE_*` environment overrides plus
//! command-line flags, turned into typed [`Settings`].
//!
//! Owns validation and defaults. Every error names the path of the key that
//! caused it. It must never read secrets from the file: they come only from the
//! environment, by name.

pub mod raw;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use raw::RawConfig;

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
    /// TOML syntax, a wrong type or an unknown key.
    #[error("{origin}: {key}: {message}")]
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
    /// Pending request cap.
    pub queue: usize,
}

/// Cache policy.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Master switch.
    pub enabled: bool,
    /// Short-text similarity threshold.
    pub threshold: f32,
    /// Long-text similarity threshold.
    pub long_threshold: f32,
    /// Word count above which a text is long.
    pub long_text_words: usize,
    /// Entry lifetime.
    pub ttl: Duration,
    /// Entry cap.
    pub max_entries: u64,
    /// In-memory exact layer size.
    pub exact_capacity: u64,
    /// Write-back queue length.
    pub writeback_queue: usize,
    /// Write-back batch size.
    pub writeback_batch: usize,
    /// Cacheable finish reasons.
    pub cacheable_finish_reasons: Vec<String>,
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

const SECTIONS: [&str; 5] = ["server", "upstream", "storage", "embedding", "cache"];

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
    apply_env(&mut doc, env)?;
    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
            ConfigError::Parse {
                origin: origin.clone(),
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            }
        })?;
    settings_from_raw(raw, overrides)
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

fn settings_from_raw(raw: RawConfig, o: &Overrides) -> Result<Settings, ConfigError> {
    let s = &raw.server;
    let server = ServerSettings {
        listen: addr("server.listen", o.listen.as_deref().unwrap_or(&s.listen))?,
        admin_listen: addr(
            "server.admin_listen",
            o.admin_listen.as_deref().unwrap_or(&s.admin_listen),
        )?,
        drain_timeout: parse_duration("server.drain_timeout", &s.drain_timeout)?,
        max_body_bytes: s.max_body_bytes as usize,
        max_answer_bytes: s.max_answer_bytes as usize,
    };
    let u = &raw.upstream;
    let upstream = UpstreamSettings {
        url: upstream_url("upstream.url", o.upstream.as_deref().unwrap_or(&u.url))?,
        connect_timeout: parse_duration("upstream.connect_timeout", &u.connect_timeout)?,
        header_timeout: parse_duration("upstream.header_timeout", &u.header_timeout)?,
        idle_timeout: parse_duration("upstream.idle_timeout", &u.idle_timeout)?,
    };
    let st = &raw.storage;
    let storage = StorageSettings {
        data_dir: PathBuf::from(o.data_dir.as_deref().unwrap_or(&st.data_dir)),
        index_save_interval: parse_duration(
            "storage.index_save_interval",
            &st.index_save_interval,
        )?,
        index_quantization: match st.index_quantization.as_str() {
            "f32" => Quantization::F32,
            "f16" => Quantization::F16,
            "i8" => Quantization::I8,
            other => {
                return Err(invalid(
                    "storage.index_quantization",
                    format!("`{other}`: expected f32, f16 or i8"),
                ))
            }
        },
    };
    let e = &raw.embedding;
    for (k, v) in [
        ("embedding.threads", e.threads),
        ("embedding.intra_threads", e.intra_threads),
        ("embedding.max_batch", e.max_batch),
        ("embedding.queue", e.queue),
    ] {
        if v == 0 {
            return Err(invalid(k, "must be at least 1"));
        }
    }
    if e.max_length < 16 {
        return Err(invalid(
            "embedding.max_length",
            "must be at least 16 tokens",
        ));
    }
    let embedding = EmbeddingSettings {
        model_dir: PathBuf::from(&e.model_dir),
        onnxruntime: PathBuf::from(&e.onnxruntime),
        threads: e.threads,
        intra_threads: e.intra_threads,
        max_batch: e.max_batch,
        max_length: e.max_length,
        queue: e.queue,
    };
    let c = &raw.cache;
    for (k, v) in [
        ("cache.threshold", c.threshold),
        ("cache.long_threshold", c.long_threshold),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(k, "must be between 0 and 1"));
        }
    }
    for (k, v) in [
        ("cache.writeback_queue", c.writeback_queue),
        ("cache.writeback_batch", c.writeback_batch),
    ] {
        if v == 0 {
            return Err(invalid(k, "must be at least 1"));
        }
    }
    let cache = CacheSettings {
        enabled: c.enabled,
        threshold: c.threshold,
        long_threshold: c.long_threshold,
        long_text_words: c.long_text_words,
        ttl: parse_duration("cache.ttl", &c.ttl)?,
        max_entries: c.max_entries,
        exact_capacity: c.exact_capacity,
        writeback_queue: c.writeback_queue,
        writeback_batch: c.writeback_batch,
        cacheable_finish_reasons: c.cacheable_finish_reasons.clone(),
    };
    Ok(Settings {
        server,
        upstream,
        storage,
        embedding,
        cache,
    })
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
        assert_eq!(s.cache.ttl, Duration::from_secs(7 * 86400));
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
        assert!((s.cache.threshold - 0.8).abs() < 1e-6);
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
    fn shipped_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        load(Some(&p), Vec::new(), &Overrides::default()).unwrap();
    }
}
