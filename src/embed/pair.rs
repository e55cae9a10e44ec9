//! The pair model: a cross-encoder that reads a stored question and a new
//! one in one input and scores whether one's answer serves the other.
//!
//! Owns its ONNX session pool and its tokenisation: `[CLS] a [SEP] b [SEP]`
//! with token types 0 and 1, through the embedding model's own
//! `tokenizer.json` (the pair model was trained from the same MiniLM, with
//! the same vocabulary), at most [`MAX_TOKENS`] tokens per pair, cut longest
//! side first. The model's one logit becomes a probability by the sigmoid.
//! It must never block the async runtime, and never hold more runs than it
//! has sessions: a run past the caller's time limit goes on to its end on
//! its own thread, still holding its session.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Semaphore;

use super::EmbedError;

/// The most tokens of one pair, both texts and the three special tokens
/// (what the model was trained on).
pub const MAX_TOKENS: usize = 128;

/// Why a pair got no score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// It took longer than the caller's limit.
    #[error("the pair model took longer than its limit")]
    Timeout,
    /// Every session was running.
    #[error("every pair-model session is busy")]
    Busy,
    /// The model or its input failed.
    #[error("pair model: {0}")]
    Model(String),
}

/// A loaded cross-encoder with a pool of sessions.
pub struct PairModel {
    tokenizer: tokenizers::Tokenizer,
    sessions: Vec<Mutex<ort::session::Session>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for PairModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairModel")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl PairModel {
    /// Loads the model at `model`, tokenising with `tokenizer_json`, with
    /// `sessions` sessions of `intra_threads` threads each, on the ONNX
    /// Runtime library at `ort_lib`.
    pub fn load(
        model: &Path,
        tokenizer_json: &Path,
        ort_lib: &Path,
        sessions: usize,
        intra_threads: usize,
    ) -> Result<PairModel, EmbedError> {
        let env = super::ort_environment(ort_lib)?;
        let bytes = std::fs::read(model)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", model.display())))?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", tokenizer_json.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_TOKENS,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Load(format!("tokenizer.json: {e}")))?;
        let load_err = |e: ort::Error| EmbedError::Load(format!("{}: {e}", model.display()));
        let mut pool = Vec::new();
        for _ in 0..sessions.max(1) {
            let session = ort::session::Session::builder(&env)
                .map_err(load_err)?
                .with_intra_threads(intra_threads.max(1))
                .map_err(|e| load_err(e.into()))?
                .commit_from_memory(&bytes)
                .map_err(load_err)?;
            pool.push(Mutex::new(session));
        }
        Ok(PairModel {
            tokenizer,
            permits: Arc::new(Semaphore::new(pool.len())),
            sessions: pool,
        })
    }

    /// Scores each pair `(stored, asked)` in 0..=1 within `limit`.
    pub async fn score(
        self: &Arc<Self>,
        pairs: Vec<(String, String)>,
        limit: Duration,
    ) -> Result<Vec<f32>, PairError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| PairError::Busy)?;
        let me = self.clone();
        let run = tokio::task::spawn_blocking(move || {
            let out = me.score_now(&pairs);
            drop(permit);
            out
        });
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => Err(PairError::Model(format!("worker: {e}"))),
            Err(_) => Err(PairError::Timeout),
        }
    }

    /// Scores now, on this thread (a blocking one).
    pub fn score_now(&self, pairs: &[(String, String)]) -> Result<Vec<f32>, PairError> {
        let model = |e: &dyn std::fmt::Display| PairError::Model(e.to_string());
        let inputs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| model(&e))?;
        let width = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let rows = encodings.len();
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        let mut types = vec![0i64; rows * width];
        for (r, e) in encodings.iter().enumerate() {
            let at = r * width;
            for (i, ((id, m), t)) in e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids())
                .enumerate()
            {
                ids[at + i] = i64::from(*id);
                mask[at + i] = i64::from(*m);
                types[at + i] = i64::from(*t);
            }
        }
        let shape = [rows, width];
        let tensor =
            |v: Vec<i64>| ort::value::Tensor::from_array((shape, v)).map_err(|e| model(&e));
        let inputs = ort::inputs![
            "input_ids" => tensor(ids)?,
            "attention_mask" => tensor(mask)?,
            "token_type_ids" => tensor(types)?,
        ];
        // NOTE: a free session, else wait for the first: the semaphore
        // admits no more runs than there are sessions.
        // A session whose run panicked is still a session.
        let free = self.sessions.iter().find_map(|s| match s.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        });
        let mut session = match (free, self.sessions.first()) {
            (Some(g), _) => g,
            (None, Some(s)) => s.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            (None, None) => return Err(PairError::Model("no session".into())),
        };
        let outputs = session.run(inputs).map_err(|e| model(&e))?;
        // NOTE: never index the outputs: a model without "logits" is an
        // error, not a panic that would poison its session.
        let (_, logits) = outputs
            .get("logits")
            .ok_or_else(|| PairError::Model("the model has no \"logits\" output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(|e| model(&e))?;
        if logits.len() != rows {
            return Err(PairError::Model(format!(
                "{} logits for {rows} pairs",
                logits.len()
            )));
        }
        Ok(logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect())
    }
}
