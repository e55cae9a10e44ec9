//! Text embeddings, off the async runtime.
//!
//! Owns the [`Embedder`] seam (fastembed in production, a hashing embedder in
//! tests), the worker threads that run it, the batching of concurrent requests
//! and the chunk-and-average treatment of long texts. It must never block a
//! runtime thread: callers await a reply over a channel, and a full queue is an
//! immediate error, not a wait.

pub mod e5;
pub mod openai;

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
    /// Splits a text into pieces that each fit the model's window. The
    /// default keeps the text whole.
    fn split(&self, text: &str) -> Vec<String> {
        vec![text.to_string()]
    }
}

/// Makes one embedder per worker thread.
pub type EmbedderFactory = Arc<dyn Fn() -> Result<Box<dyn Embedder>, EmbedError> + Send + Sync>;

/// all-MiniLM-L6-v2 (or any BERT-style ONNX model) through fastembed, with ONNX
/// Runtime loaded from a file we ship.
pub struct FastEmbedder {
    model: fastembed::TextEmbedding,
    dims: usize,
    splitter: tokenizers::Tokenizer,
    chunk_tokens: usize,
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

impl FastEmbedder {
    /// Loads `model_dir` with the ONNX Runtime library at `ort_lib`, using
    /// `intra_threads` threads inside each embedding.
    pub fn load(
        model_dir: &Path,
        ort_lib: &Path,
        max_length: usize,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
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
        let tokenizer_json = read("tokenizer.json")?;
        // NOTE: our own copy of the tokenizer, without truncation, finds the
        // token boundaries to split long texts at.
        let mut splitter = tokenizers::Tokenizer::from_bytes(&tokenizer_json)
            .map_err(|e| EmbedError::Load(format!("tokenizer.json: {e}")))?;
        splitter.with_padding(None);
        splitter
            .with_truncation(None)
            .map_err(|e| EmbedError::Load(format!("tokenizer.json: {e}")))?;
        let files = fastembed::TokenizerFiles {
            tokenizer_file: tokenizer_json,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let user_model = fastembed::UserDefinedEmbeddingModel::new(read("model.onnx")?, files)
            .with_pooling(fastembed::Pooling::Mean);
        let opts = fastembed::InitOptionsUserDefined::new()
            .with_environment(env)
            .with_max_length(max_length)
            .with_intra_threads(intra_threads.max(1));
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
        Ok(FastEmbedder {
            model,
            dims,
            splitter,
            // Room for [CLS], [SEP] and boundary effects when a piece is
            // tokenized again on its own.
            chunk_tokens: max_length.saturating_sub(8).max(8),
        })
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

    fn split(&self, text: &str) -> Vec<String> {
        let Ok(enc) = self.splitter.encode(text, false) else {
            return vec![text.to_string()];
        };
        let offsets = enc.get_offsets();
        if offsets.len() <= self.chunk_tokens {
            return vec![text.to_string()];
        }
        let mut out = Vec::new();
        let mut start = 0usize;
        for group in offsets.chunks(self.chunk_tokens) {
            let end = group.last().map_or(start, |o| o.1);
            // Each piece runs to the end of its last token; whitespace between
            // pieces is dropped by the tokenizer anyway.
            match text.get(start..end) {
                Some(piece) if !piece.trim().is_empty() => out.push(piece.to_string()),
                Some(_) => {}
                None => return vec![text.to_string()],
            }
            start = end;
        }
        if start < text.len() {
            if let Some(rest) = text.get(start..) {
                if !rest.trim().is_empty() {
                    out.push(rest.to_string());
                }
            }
        }
        if out.is_empty() {
            vec![text.to_string()]
        } else {
            out
        }
    }
}

/// A deterministic bag-of-words embedder for logic tests: texts with the same
/// words (in any case and order) get the same vector.
pub struct HashEmbedder {
    dims: usize,
    chunk_words: Option<usize>,
}

impl HashEmbedder {
    /// A hashing embedder with `dims` dimensions.
    pub fn new(dims: usize) -> Self {
        HashEmbedder {
            dims,
            chunk_words: None,
        }
    }

    /// Splits texts into pieces of `words` words, like a model with a window.
    pub fn with_chunk_words(mut self, words: usize) -> Self {
        self.chunk_words = Some(words.max(1));
        self
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

    fn split(&self, text: &str) -> Vec<String> {
        match self.chunk_words {
            Some(n) => {
                let words: Vec<&str> = text.split_whitespace().collect();
                if words.len() <= n {
                    vec![text.to_string()]
                } else {
                    words.chunks(n).map(|c| c.join(" ")).collect()
                }
            }
            None => vec![text.to_string()],
        }
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

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// Timing observer, called with (texts in batch, seconds) after each batch.
pub type BatchObserver = Arc<dyn Fn(usize, f64) + Send + Sync>;

/// Worker threads behind a bounded queue. Clones share the workers.
#[derive(Clone)]
pub struct EmbedService {
    tx: mpsc::SyncSender<Job>,
    dims: usize,
}

impl EmbedService {
    /// Starts `threads` workers, each with its own embedder from `factory`,
    /// and waits until they have loaded. Blocking: call it off the runtime.
    pub fn start(
        factory: EmbedderFactory,
        threads: usize,
        max_batch: usize,
        queue: usize,
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
        Ok(EmbedService { tx, dims })
    }

    /// Vector size.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Embeds one text. A text longer than the model's window is embedded
    /// piece by piece and the unit mean of the pieces is returned, so nothing
    /// past the window is dropped.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                text: text.to_string(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => EmbedError::Busy,
                mpsc::TrySendError::Disconnected(_) => EmbedError::Stopped,
            })?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    /// Embeds many texts, waiting for room in a full queue: the texts are
    /// queued back to back, so that the workers take them in full batches.
    /// For bulk work (inserts through the ModelCache API), never for lookups.
    pub async fn embed_all_waiting(&self, texts: &[String]) -> Vec<Result<Vec<f32>, EmbedError>> {
        let mut jobs = Vec::with_capacity(texts.len());
        let mut replies = Vec::with_capacity(texts.len());
        for t in texts {
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                text: t.clone(),
                reply,
            });
            replies.push(rx);
        }
        let tx = self.tx.clone();
        let sent =
            tokio::task::spawn_blocking(move || jobs.into_iter().all(|job| tx.send(job).is_ok()))
                .await
                .unwrap_or(false);
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(if sent {
                rx.await.map_err(|_| EmbedError::Stopped).and_then(|r| r)
            } else {
                Err(EmbedError::Stopped)
            });
        }
        out
    }
}

/// The unit mean of `vecs`.
fn mean(vecs: &[Vec<f32>], dims: usize) -> Vec<f32> {
    let mut m = vec![0f32; dims];
    for v in vecs {
        for (a, x) in m.iter_mut().zip(v) {
            *a += x;
        }
    }
    normalized(m)
}

fn worker(
    model: &mut dyn Embedder,
    rx: &Mutex<mpsc::Receiver<Job>>,
    max_batch: usize,
    observe: Option<BatchObserver>,
) {
    loop {
        // Each job with its pieces.
        let mut jobs: Vec<(Job, Vec<String>)> = Vec::new();
        {
            let Ok(guard) = rx.lock() else { return };
            let Ok(first) = guard.recv() else { return };
            let pieces = model.split(&first.text);
            let mut count = pieces.len();
            jobs.push((first, pieces));
            // NOTE: whatever queued up while the last batch ran goes into this one.
            while count < max_batch {
                match guard.try_recv() {
                    Ok(j) => {
                        let pieces = model.split(&j.text);
                        count += pieces.len();
                        jobs.push((j, pieces));
                    }
                    Err(_) => break,
                }
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
        let start = Instant::now();
        let result = model.embed_batch(&texts);
        if let Some(o) = &observe {
            o(texts.len(), start.elapsed().as_secs_f64());
        }
        match result {
            Ok(vecs) if vecs.len() == texts.len() => {
                let mut at = 0;
                for (job, pieces) in jobs {
                    let mine = &vecs[at..at + pieces.len()];
                    at += pieces.len();
                    let v = if mine.len() == 1 {
                        mine[0].clone()
                    } else {
                        mean(mine, model.dims())
                    };
                    let _ = job.reply.send(Ok(v));
                }
            }
            Ok(_) => {
                for (job, _) in jobs {
                    let _ = job
                        .reply
                        .send(Err(EmbedError::Model("wrong number of vectors".into())));
                }
            }
            Err(e) => {
                for (job, _) in jobs {
                    let _ = job.reply.send(Err(e.clone()));
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
            Arc::new(|| {
                Ok(Box::new(HashEmbedder::new(64).with_chunk_words(4)) as Box<dyn Embedder>)
            }),
            2,
            8,
            queue,
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
    }

    #[test]
    fn load_errors_are_reported() {
        let r = EmbedService::start(
            Arc::new(|| Err(EmbedError::Load("nope".into()))),
            1,
            1,
            1,
            None,
        );
        assert!(matches!(r, Err(EmbedError::Load(_))));
    }
}
