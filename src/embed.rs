//! Text embeddings, off the async runtime.
//!
//! Owns the [`Embedder`] seam (fastembed in production, a hashing embedder in
//! tests), the worker threads that run it, the batching of concurrent requests
//! and the chunk-and-average treatment of long texts. It must never block a
//! runtime thread: callers await a reply over a channel, and a full queue is an
//! immediate error, not a wait.

use std::{
    path::Path,
    sync::{mpsc, Arc, Mutex, OnceLock},
    time::Instant,
};

use tokio::sync::oneshot;

/// Embedding failures. None of them fails a request: the lookup is skipped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    /// The model files or the runtime could not be loaded.
    #[error("cannot load the embedding model: {0}")]
    Load(String),
    /// The model failed on an input.
    #[error("embedding failed: {0}")]
    Model(String),
    /// Too many requests are waiting.
    #[error("embedding queue is full")]
    Busy,
    /// The workers have stopped.
    #[error("embedding workers stopped")]
    Stopped,
}

/// A model that turns texts into unit vectors of a fixed size.
pub trait Embedder: Send {
    /// Vector size.
    fn dims(&self) -> usize;
    /// Embeds a batch; one vector per text, same order.
    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Makes one embedder per worker thread.
pub type EmbedderFactory = Arc<dyn Fn() -> Result<Box<dyn Embedder>, EmbedError> + Send + Sync>;

/// all-MiniLM-L6-v2 (or any BERT-style ONNX model) through fastembed, with ONNX
/// Runtime loaded from a file we ship.
pub struct FastEmbedder {
    model: fastembed::TextEmbedding,
    dims: usize,
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

impl FastEmbedder {
    /// Loads `model_dir` with the ONNX Runtime library at `ort_lib`.
    pub fn load(model_dir: &Path, ort_lib: &Path, max_length: usize) -> Result<Self, EmbedError> {
        // NOTE: ort's dynamic loader is process-global; the first path wins, so
        // every embedder in one process shares one runtime library.
        let env = ORT_ENV
            .get_or_init(|| {
                let lib = std::fs::canonicalize(ort_lib)
                    .map_err(|e| format!("{}: {e} (run `make models`)", ort_lib.display()))?;
                ort::init_from(&lib)
                    .map_err(|e| format!("{}: {e}", lib.display()))?
                    .with_name("modelcache")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EmbedError::Load)?;
        let read = |name: &str| {
            std::fs::read(model_dir.join(name)).map_err(|e| {
                EmbedError::Load(format!(
                    "{}: {e} (run `make models`)",
                    model_dir.join(name).display()
                ))
            })
        };
        let files = fastembed::TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let user_model = fastembed::UserDefinedEmbeddingModel::new(read("model.onnx")?, files)
            .with_pooling(fastembed::Pooling::Mean);
        let opts = fastembed::InitOptionsUserDefined::new()
            .with_environment(env)
            .with_max_length(max_length)
            .with_intra_threads(1);
        let mut model = fastembed::TextEmbedding::try_new_from_user_defined(user_model, opts)
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        let probe = model
            .embed(vec!["probe"], None)
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        let dims = probe.first().map(Vec::len).unwrap_or(0);
        if dims == 0 {
            return Err(EmbedError::Load(
                "the model returned an empty vector".into(),
            ));
        }
        Ok(FastEmbedder { model, dims })
    }
}

impl Embedder for FastEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let out = self
            .model
            .embed(texts, Some(texts.len().max(1)))
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(out.into_iter().map(normalized).collect())
    }
}

/// A deterministic bag-of-words embedder for logic tests: texts with the same
/// words (in any case and order) get the same vector.
pub struct HashEmbedder {
    dims: usize,
}

impl HashEmbedder {
    /// A hashing embedder with `dims` dimensions.
    pub fn new(dims: usize) -> Self {
        HashEmbedder { dims }
    }
}

impl Embedder for HashEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        use sha2::Digest;
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dims];
                for w in t
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    let h = sha2::Sha256::digest(w.to_lowercase().as_bytes());
                    let i = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize % self.dims;
                    v[i] += if h[4] & 1 == 0 { 1.0 } else { -1.0 };
                }
                normalized(v)
            })
            .collect())
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// Splits `text` into chunks of at most `words` whitespace-separated words.
pub fn chunks(text: &str, words: usize) -> Vec<String> {
    let all: Vec<&str> = text.split_whitespace().collect();
    if all.len() <= words {
        return vec![text.to_string()];
    }
    all.chunks(words.max(1)).map(|c| c.join(" ")).collect()
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// Timing observer, called with (texts in batch, seconds) after each batch.
pub type BatchObserver = Arc<dyn Fn(usize, f64) + Send + Sync>;

/// Worker threads behind a bounded queue.
pub struct EmbedService {
    tx: mpsc::SyncSender<Job>,
    dims: usize,
    chunk_words: usize,
}

impl EmbedService {
    /// Starts `threads` workers, each with its own embedder from `factory`,
    /// and waits until they have loaded. Blocking: call it off the runtime.
    pub fn start(
        factory: EmbedderFactory,
        threads: usize,
        max_batch: usize,
        queue: usize,
        chunk_words: usize,
        observe: Option<BatchObserver>,
    ) -> Result<EmbedService, EmbedError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let factory = factory.clone();
            let ready_tx = ready_tx.clone();
            let observe = observe.clone();
            std::thread::Builder::new()
                .name(format!("embed-{i}"))
                .spawn(move || {
                    let mut model = match factory() {
                        Ok(m) => {
                            let _ = ready_tx.send(Ok(m.dims()));
                            m
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    drop(ready_tx);
                    worker(&mut *model, &rx, max_batch, observe);
                })
                .map_err(|e| EmbedError::Load(e.to_string()))?;
        }
        drop(ready_tx);
        let mut dims = 0;
        for r in ready_rx.iter() {
            dims = r?;
        }
        if dims == 0 {
            return Err(EmbedError::Load("no embedding worker started".into()));
        }
        Ok(EmbedService {
            tx,
            dims,
            chunk_words,
        })
    }

    /// Vector size.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Embeds one text. A text longer than one chunk is embedded chunk by chunk
    /// and the unit mean of the chunk vectors is returned, so nothing past the
    /// model's token window is dropped.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let parts = chunks(text, self.chunk_words);
        let n = parts.len();
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                texts: parts,
                reply,
            })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => EmbedError::Busy,
                mpsc::TrySendError::Disconnected(_) => EmbedError::Stopped,
            })?;
        let vecs = rx.await.map_err(|_| EmbedError::Stopped)??;
        if n == 1 {
            return vecs.into_iter().next().ok_or(EmbedError::Stopped);
        }
        let mut mean = vec![0f32; self.dims];
        for v in &vecs {
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x;
            }
        }
        Ok(normalized(mean))
    }
}

fn worker(
    model: &mut dyn Embedder,
    rx: &Mutex<mpsc::Receiver<Job>>,
    max_batch: usize,
    observe: Option<BatchObserver>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let Ok(guard) = rx.lock() else { return };
            let Ok(first) = guard.recv() else { return };
            let mut count = first.texts.len();
            jobs.push(first);
            // NOTE: whatever queued up while the last batch ran goes into this one.
            while count < max_batch {
                match guard.try_recv() {
                    Ok(j) => {
                        count += j.texts.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let start = Instant::now();
        let result = model.embed_batch(&texts);
        if let Some(o) = &observe {
            o(texts.len(), start.elapsed().as_secs_f64());
        }
        match result {
            Ok(mut vecs) if vecs.len() == texts.len() => {
                for j in jobs.into_iter().rev() {
                    let tail = vecs.split_off(vecs.len() - j.texts.len());
                    let _ = j.reply.send(Ok(tail));
                }
            }
            Ok(_) => {
                for j in jobs {
                    let _ = j
                        .reply
                        .send(Err(EmbedError::Model("wrong number of vectors".into())));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(queue: usize) -> EmbedService {
        EmbedService::start(
            Arc::new(|| Ok(Box::new(HashEmbedder::new(64)) as Box<dyn Embedder>)),
            2,
            8,
            queue,
            4,
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_vectors() {
        let s = Arc::new(service(64));
        let mut handles = Vec::new();
        for i in 0..20 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                let t = format!("word{i} other{i}");
                (s.embed(&t).await.unwrap(), t)
            }));
        }
        let mut direct = HashEmbedder::new(64);
        for h in handles {
            let (v, t) = h.await.unwrap();
            assert_eq!(v, direct.embed_batch(&[t]).unwrap()[0]);
        }
    }

    #[tokio::test]
    async fn long_texts_are_chunked_and_averaged() {
        let s = service(8);
        let long = "a b c d e f g h";
        let v = s.embed(long).await.unwrap();
        let mut direct = HashEmbedder::new(64);
        let parts = direct
            .embed_batch(&["a b c d".to_string(), "e f g h".to_string()])
            .unwrap();
        let mean: Vec<f32> = parts[0].iter().zip(&parts[1]).map(|(a, b)| a + b).collect();
        let want = normalized(mean);
        for (a, b) in v.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(chunks("one two", 4), vec!["one two".to_string()]);
    }

    #[test]
    fn load_errors_are_reported() {
        let r = EmbedService::start(
            Arc::new(|| Err(EmbedError::Load("nope".into()))),
            1,
            1,
            1,
            10,
            None,
        );
        assert!(matches!(r, Err(EmbedError::Load(_))));
    }
}
