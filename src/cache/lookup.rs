//! The lookup: gathering candidates (the exact layer, then the vector index)
//! and asking [`judge`](super::judge::judge) about each.
//!
//! Owns the order of a lookup and what it reads: the exact layer, then the
//! store by exact hash, then the request's embedding, the index's proposals,
//! and each proposal's stored embedding, from which the deciding similarity
//! is recomputed. A lookup stops at the first served candidate; a dry run
//! ([`Cache::explain`](super::Cache::explain)) gathers them all. It must never fail a request:
//! every error here is logged, counted, and turned into a miss.

use std::{sync::Arc, time::Instant};

use super::{
    judge::{self, Asking, Check, LongCheck, Offered, PairFailure, PairOutcome, Stage, Verdict},
    memory::{exact_key, Core, Known},
    types::{Hit, HitKind, LookupOptions},
};
use crate::{
    clock::now_ms,
    embed::pair::PairError,
    index::{IndexError, VectorIndex},
    keying::{meaning_turns, CacheKey},
    metrics::CacheStage,
    store::{Entry, Origin},
};

/// At most 120 characters of a sentence, for the dry run.
fn clip(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// What a lookup may use and serve beyond the request's own key: its scope
/// (a "probe" is always the asking text).
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// The text's embedding, if already computed.
    pub embedding: Option<Vec<f32>>,
    /// Serve only entries written this way.
    pub origin: Option<Origin>,
}

impl Scope {
    /// Serves only entries written through the ModelCache API (the second
    /// lookup of `api_entries_match`), reusing the first lookup's embedding.
    pub fn api_entries(embedding: Option<Vec<f32>>) -> Scope {
        Scope {
            embedding,
            origin: Some(Origin::Api),
        }
    }
}

/// The result of a dry run ([`Cache::explain`](super::Cache::explain)).
#[derive(Debug, Default)]
pub struct Explanation {
    /// The similarity a semantic hit needs for this request.
    pub threshold: f32,
    /// Whether the request takes part in semantic matching at all.
    pub semantic: bool,
    /// What the real lookup would serve.
    pub hit: Option<Hit>,
    /// Every candidate seen, exact first, then by similarity.
    pub candidates: Vec<Considered>,
    /// The request's embedding.
    pub embedding: Option<Vec<f32>>,
}

/// How far below the lowest threshold the index's similarity of a candidate
/// may be and the candidate still be judged (on its recomputed similarity):
/// room for the index's quantization (f16, i8).
const INDEX_SLACK: f32 = 0.02;

/// How many candidates a lookup gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gather {
    /// Stop at the first served candidate (a lookup).
    FirstServed,
    /// Every candidate, other partitions of the tenant included, with nothing
    /// recorded (a dry run).
    All,
}

/// A candidate of a dry run, with its verdict.
#[derive(Debug, Clone)]
pub struct Considered {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Cosine similarity (1 for the exact layer).
    pub similarity: f32,
    /// Found by exact hash or by the vector index.
    pub kind: HitKind,
    /// Whether it may be served, what it needed, and each check. In a dry
    /// run every candidate is judged alone: the lookup serves the first
    /// served one ([`Explanation::hit`]).
    pub verdict: Verdict,
}

/// The most changed turns one candidate's turns are embedded for.
const MAX_CHANGED_TURNS: usize = 8;

impl Core {
    /// Searches `idx`: in place for an index in memory; on a blocking
    /// thread for a shared one (Milvus), whose client bounds the call by
    /// `[index] search_timeout`, so that a slow Milvus costs a miss, never a
    /// stalled worker.
    async fn search(
        &self,
        idx: &Arc<dyn VectorIndex>,
        v: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        if !idx.shared() {
            return idx.search(v, tag, k);
        }
        let (idx, v) = (idx.clone(), v.to_vec());
        tokio::task::spawn_blocking(move || idx.search(&v, tag, k))
            .await
            .map_err(|e| IndexError::Native(format!("search task: {e}")))?
    }

    /// A semantic candidate with its stored embedding, from memory or in
    /// one store read.
    async fn entry_by_id(&self, id: i64) -> Option<Known> {
        if let Some(k) = self.by_id.get(&id) {
            return Some(k);
        }
        let generation = self.generation();
        let (e, v) = self.read_store(move |s| s.get_with_embedding(id)).await?;
        let k = Known {
            entry: Arc::new(e),
            embedding: v.map(Arc::from),
        };
        if self.generation() == generation {
            self.by_id.insert(id, k.clone());
        }
        Some(k)
    }

    async fn exact(&self, tenant: &str, key: &CacheKey) -> Option<Arc<Entry>> {
        let hash = key.exact_hash.clone();
        let k = exact_key(tenant, &hash);
        if let Some(e) = self.exact.get(&k) {
            return Some(e);
        }
        let t = tenant.to_string();
        let generation = self.generation();
        let e = Arc::new(self.read_store(move |s| s.get_exact(&t, &hash)).await?);
        // NOTE: a removal between the read and here must win.
        if self.generation() == generation {
            self.exact.insert(k, e.clone());
        }
        Some(e)
    }

    /// The long-text guard for a candidate: past the embedding window, the
    /// two texts must be the same, or differ by one short edit whose
    /// sentences, embedded on their own, are as alike as a short question
    /// must be (the tenant's short threshold, tiered by the verifier).
    async fn long_text(&self, stored: &str, probe: &str, opts: &LookupOptions) -> LongCheck {
        use super::guards::LongText;
        match super::guards::long_text(stored, probe, opts.guards.window_words) {
            LongText::Same(why) => LongCheck {
                passed: true,
                detail: why.to_string(),
            },
            LongText::Differs(why) => LongCheck {
                passed: false,
                detail: why,
            },
            LongText::Edit {
                stored: a,
                probe: b,
            } => {
                let needed = judge::needed_for_edit(&a, &b, opts);
                // NOTE: together, so that the embedder batches them.
                let sim =
                    match tokio::join!(self.embed(&a), self.embed(&b)) {
                        (Some(x), Some(y)) => crate::index::dot(&x, &y),
                        _ => return LongCheck {
                            passed: false,
                            detail:
                                "one edit in a long text, and its sentences could not be embedded"
                                    .into(),
                        },
                    };
                let passed = sim >= needed.value;
                LongCheck {
                    passed,
                    detail: format!(
                        "one edit in a long text; its sentences {sim:.4} {} {:.4} ({}): \"{}\" vs \"{}\"",
                        if passed { ">=" } else { "<" },
                        needed.value,
                        needed.tier.as_str(),
                        clip(&a),
                        clip(&b)
                    ),
                }
            }
        }
    }

    /// The reader's similarity of two key texts' turns compared by meaning,
    /// joined (NaN: no reader, or it failed: the candidate is a miss).
    async fn read_similarity(&self, stored: &str, asked: &str) -> f32 {
        let (a, b) = (
            meaning_turns(stored).join("\n"),
            meaning_turns(asked).join("\n"),
        );
        self.read_pair(&a, &b).await
    }

    /// Two texts' similarity by the reader (NaN: no reader, or it failed).
    async fn read_pair(&self, a: &str, b: &str) -> f32 {
        let Some(reader) = self.embedder.reader() else {
            return f32::NAN;
        };
        // NOTE: together, so that the reader batches them.
        match tokio::join!(reader.embed(a), reader.embed(b)) {
            (Ok(x), Ok(y)) => crate::index::dot(&x, &y).min(1.0),
            (x, y) => {
                let e = x.err().or(y.err());
                tracing::debug!(error = ?e, "the reader could not embed a candidate");
                f32::NAN
            }
        }
    }

    /// Each turn compared by meaning on its own: 1 when its text is the
    /// same, else the two embedded (NaN when one cannot be), by the reader
    /// when `read` (the embedding model cannot see what differs). Empty
    /// when the turns do not line up (the judge says so).
    async fn turn_similarities(&self, stored: &str, asked: &str, read: bool) -> Vec<f32> {
        let (a, b) = (meaning_turns(stored), meaning_turns(asked));
        if a.len() != b.len() {
            return Vec::new();
        }
        // NOTE: each changed turn costs two embeddings; past a bound the
        // candidate is a miss (NaN fails), so that one request of many
        // small changed turns cannot buy unbounded model time.
        let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let affordable = changed <= MAX_CHANGED_TURNS;
        let each = a.iter().zip(&b).map(|(x, y)| async move {
            if x == y {
                return 1.0;
            }
            if !affordable {
                return f32::NAN;
            }
            if read {
                return self.read_pair(x, y).await;
            }
            // NOTE: together, so that the embedder batches them.
            match tokio::join!(self.embed(x), self.embed(y)) {
                (Some(x), Some(y)) => crate::index::dot(&x, &y).min(1.0),
                _ => f32::NAN,
            }
        });
        futures_util::future::join_all(each).await
    }

    /// The pair model on each turn compared by meaning whose text differs:
    /// the lowest score. A failure is an outcome, never an error.
    async fn pair_outcome(&self, stored: &str, asked: &str, opts: &LookupOptions) -> PairOutcome {
        let Some(model) = self.embedder.pair() else {
            return PairOutcome::Failed(PairFailure::Error);
        };
        let pairs: Vec<(String, String)> = meaning_turns(stored)
            .into_iter()
            .zip(meaning_turns(asked))
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect();
        let t0 = Instant::now();
        let out = model.score(pairs, opts.verifier.pair_timeout).await;
        let outcome = match out {
            Ok(scores) => PairOutcome::Scored(scores.into_iter().fold(1.0, f32::min)),
            Err(PairError::Timeout) => PairOutcome::Failed(PairFailure::Timeout),
            Err(PairError::Busy) => PairOutcome::Failed(PairFailure::Busy),
            Err(PairError::Model(e)) => {
                tracing::warn!(error = %e, "the pair model failed");
                PairOutcome::Failed(PairFailure::Error)
            }
        };
        let name = match outcome {
            PairOutcome::Scored(_) => "scored",
            PairOutcome::Failed(PairFailure::Timeout) => "timeout",
            PairOutcome::Failed(PairFailure::Busy) => "busy",
            PairOutcome::Failed(PairFailure::Error) => "error",
        };
        self.metrics.pair_model(name, t0.elapsed());
        outcome
    }

    /// Judges one candidate, running each stage that needs a model when the
    /// verdict waits on it (every stage, when gathering all: the dry run
    /// shows them). The stages run for a candidate that passed all else.
    async fn consider(&self, asking: &Asking<'_>, offered: Offered<'_>, gather: Gather) -> Verdict {
        let (stored, asked) = (&offered.entry.text, &asking.key.text);
        let mut long = None;
        let mut turns: Option<Vec<f32>> = None;
        let mut pair = None;
        let mut read = None;
        // NOTE: one pass per stage at most, and one to judge with them all.
        for _ in 0..5 {
            let verdict = judge::judge(
                asking,
                &Offered {
                    long: long.as_ref(),
                    turns: turns.as_deref(),
                    pair,
                    read,
                    ..offered
                },
            );
            let next = match gather {
                Gather::All => verdict.pending,
                Gather::FirstServed => verdict.awaits,
            };
            match next {
                None => return verdict,
                Some(Stage::LongText) => {
                    long = Some(self.long_text(stored, asked, asking.opts).await);
                }
                Some(Stage::Read) => read = Some(self.read_similarity(stored, asked).await),
                Some(Stage::Turns) => {
                    turns = Some(self.turn_similarities(stored, asked, read.is_some()).await)
                }
                Some(Stage::Pair) => {
                    pair = Some(self.pair_outcome(stored, asked, asking.opts).await)
                }
            }
        }
        judge::judge(
            asking,
            &Offered {
                long: long.as_ref(),
                turns: turns.as_deref(),
                pair,
                read,
                ..offered
            },
        )
    }

    pub(super) async fn find(
        &self,
        tenant: &str,
        key: &CacheKey,
        opts: &LookupOptions,
        scope: Scope,
        gather: Gather,
    ) -> Explanation {
        let all = gather == Gather::All;
        let shifted;
        let opts = match self.calibration(tenant) {
            Some(c) if c.offset != 0.0 => {
                shifted = opts.shifted(c.offset);
                &shifted
            }
            _ => opts,
        };
        let asking = Asking {
            tenant,
            key,
            opts,
            origin: scope.origin,
            now: now_ms(),
            unseen: None,
            pair: self
                .embedder
                .pair()
                .filter(|_| opts.verifier.enabled && opts.verifier.pair_threshold > 0.0)
                .map(|_| opts.verifier.pair_threshold),
            reader: self.embedder.reader().is_some(),
        };
        let words = key.embed_text.split_whitespace().count();
        let mut out = Explanation {
            threshold: judge::needed(words, opts, None).value,
            semantic: key.semantic,
            ..Default::default()
        };
        if let Some(e) = self.exact(tenant, key).await {
            let offered = Offered {
                entry: &e,
                similarity: 1.0,
                kind: HitKind::Exact,
                reported_wrong: None,
                long: None,
                unseen: None,
                turns: None,
                pair: None,
                read: None,
            };
            let verdict = self.consider(&asking, offered, gather).await;
            if verdict.served {
                out.hit = Some(Hit {
                    entry: e.clone(),
                    similarity: 1.0,
                    kind: HitKind::Exact,
                });
            }
            if all {
                out.candidates.push(Considered {
                    entry: e,
                    similarity: 1.0,
                    kind: HitKind::Exact,
                    verdict,
                });
            } else if out.hit.is_some() {
                return out;
            }
        }
        if !key.semantic {
            return out;
        }
        out.embedding = match scope.embedding {
            Some(v) => Some(v),
            None => self.embed(&key.embed_text).await,
        };
        let (Some(v), Some(idx)) = (&out.embedding, self.index(tenant)) else {
            return out;
        };
        // NOTE: what the model cannot see of the request, once per lookup,
        // and only for a text that was embedded (so never for one past the
        // embedding limit, whose tokens would cost memory for nothing).
        let unseen = self.embedder.blind().map(|b| b.unseen(&key.text));
        let asking = Asking {
            unseen: unseen.as_deref(),
            ..asking
        };
        let t0 = Instant::now();
        let found = if all {
            // NOTE: the nearest entries of every partition of the tenant, so
            // that a near question stored under another model or other
            // parameters shows up, failing the partition check.
            let mut any = self.search(&idx, v, None, 10).await;
            let own = self.search(&idx, v, Some(key.partition_tag()), 8).await;
            if let (Ok(a), Ok(own)) = (&mut any, own) {
                for c in own {
                    if !a.iter().any(|(id, _)| *id == c.0) {
                        a.push(c);
                    }
                }
                a.sort_by(|x, y| y.1.total_cmp(&x.1));
            }
            any
        } else {
            self.search(&idx, v, Some(key.partition_tag()), 8).await
        };
        if !all {
            self.metrics.ann_seconds.observe(t0.elapsed().as_secs_f64());
        }
        let cands = match found {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "vector search failed");
                self.metrics.cache_error(CacheStage::Ann);
                return out;
            }
        };
        // The lowest similarity any candidate may need.
        let floor = judge::floor(words, opts);
        // The best recomputed similarity seen, for the histogram.
        let mut best: Option<f32> = None;
        // The checks the nearest candidate of the request's partition failed.
        let mut refused: Option<Vec<&'static str>> = None;
        for (i, (id, proposed)) in cands.into_iter().enumerate() {
            // NOTE: the nearest candidate is always read, so that the
            // histogram shows its true similarity, not the index's.
            if !all && (out.hit.is_some() || (i > 0 && proposed < floor - INDEX_SLACK)) {
                break;
            }
            if out.candidates.iter().any(|c| c.entry.id == id as i64) {
                continue;
            }
            let Some(Known {
                entry: e,
                embedding,
            }) = self.entry_by_id(id as i64).await
            else {
                continue;
            };
            // NOTE: the index only proposes. The similarity that decides is
            // recomputed from the embedding the store keeps: a snapshot of
            // another store, a vector gone stale, or NaN bytes in the index
            // can then cost a hit, never serve a wrong one. A candidate with
            // no usable stored embedding is not served semantically.
            let sim = match embedding.as_deref() {
                Some(stored) if stored.len() == v.len() => crate::index::dot(stored, v),
                _ => f32::NAN,
            };
            if !sim.is_finite() {
                tracing::debug!(
                    entry = e.id,
                    proposed,
                    "a candidate without a usable stored embedding is not served"
                );
                continue;
            }
            let sim = sim.min(1.0);
            best = Some(best.map_or(sim, |b| b.max(sim)));
            let stored_unseen = self
                .embedder
                .blind()
                .filter(|_| unseen.is_some())
                .map(|b| b.unseen(&e.text));
            let offered = Offered {
                entry: &e,
                similarity: sim,
                kind: HitKind::Semantic,
                reported_wrong: self.reported_wrong(e.id, v, sim),
                long: None,
                unseen: stored_unseen.as_deref(),
                turns: None,
                pair: None,
                read: None,
            };
            let verdict = self.consider(&asking, offered, gather).await;
            if refused.is_none() && e.tenant == tenant && e.partition == key.partition {
                refused = Some(
                    verdict
                        .checks
                        .iter()
                        .filter(|c| !c.passed())
                        .map(Check::name)
                        .collect(),
                );
            }
            if verdict.served && out.hit.is_none() {
                out.hit = Some(Hit {
                    entry: e.clone(),
                    similarity: sim,
                    kind: HitKind::Semantic,
                });
            }
            if all {
                out.candidates.push(Considered {
                    entry: e,
                    similarity: sim,
                    kind: HitKind::Semantic,
                    verdict,
                });
            }
        }
        if let (Some(checks), None, false) = (&refused, &out.hit, all) {
            for check in checks {
                self.metrics
                    .refused
                    .with_label_values(&[tenant, check])
                    .inc();
            }
        }
        if let (Some(best), false) = (best, all) {
            let result = if out.hit.is_some() { "hit" } else { "miss" };
            self.metrics
                .similarity
                .with_label_values(&[tenant, result])
                .observe(best.clamp(0.0, 1.0) as f64);
        }
        out
    }
}
