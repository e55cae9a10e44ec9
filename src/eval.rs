//! `modelcache eval`: the gateway's own lookup over labelled cache/probe
//! pairs, scored the way `shared/eval/README.md` lays out.
//!
//! Owns reading pairs, running each one in isolation through the real
//! [`Cache`] (the same keying, embedding, index, checks and thresholds that
//! serve requests, under one tenant's policy), and the figures: precision,
//! recall, F1 and false-positive rate per category, recall at a bounded
//! false-positive rate, and a threshold sweep. It must never tune anything
//! itself: it measures a configuration, and recommends.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    cache::{
        judge::{self, Check, PairOutcome},
        plan::{plan, Facts, Plan},
        writeback::RemoveTarget,
        Cache, LookupOptions, Scope,
    },
    clock::now_ms,
    config::{Policy, Settings},
    embed::{EmbedService, EmbedderFactory},
    keying::Endpoint,
    store::{memory::MemoryStore, Origin},
};

/// One labelled pair.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    /// Pair id.
    pub id: String,
    /// Category (coding, multilingual, …).
    #[serde(default)]
    pub category: String,
    /// Finer kind of change.
    #[serde(default)]
    pub subtype: String,
    /// Whether the probe may be served the cached answer.
    pub same_answer: bool,
    /// The request whose answer is cached.
    pub cached: Vec<Value>,
    /// The request looked up.
    pub probe: Vec<Value>,
    /// Language tag.
    #[serde(default)]
    pub lang: String,
    /// Optional model; defaults to one shared by both requests.
    #[serde(default)]
    pub model: Option<String>,
}

/// One prediction, in the format `score.py` reads.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    /// Pair id.
    pub id: String,
    /// Whether the lookup served the cached entry.
    pub hit: bool,
    /// The entry's similarity, less the threshold the verifier chose for it,
    /// plus the tenant's threshold, when every check but the similarity
    /// passed (so a score of at least the threshold is a hit); 0 when a check
    /// that no threshold can override failed.
    pub score: f32,
    /// The checks that failed, by name.
    pub failed: Vec<String>,
    /// Why each failed (`name: detail`), in the order of `failed`.
    pub why: Vec<String>,
    /// The raw cosine similarity of the stored entry (0 if not found).
    pub similarity: f32,
    /// Content words that differ (the verifier's count).
    pub differing_words: usize,
    /// Those words, stored side / probe side (`list / string`).
    pub differing: String,
    /// The tenant's threshold for this probe (short or long text).
    pub base: f32,
    /// The plain reference: one cosine of the joined system and user texts.
    pub plain_cosine: f32,
    /// Each turn's similarity on its own, when the turns were judged one by
    /// one (a chat of several user turns).
    pub turns: Vec<f32>,
    /// The pair model's score, when it ran.
    pub pair_score: Option<f32>,
    /// The reader's similarity, when it judged text the embedding model
    /// cannot see (NaN, written null: it failed).
    pub read_similarity: Option<f32>,
}

/// Reads pairs from a JSON-lines file.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// A progress bar on stderr.
pub struct ProgressBar {
    total: usize,
    started: Instant,
    shown: bool,
}

impl ProgressBar {
    /// A bar for `total` steps; drawn only when stderr is a terminal or
    /// `always` is set.
    pub fn new(total: usize, always: bool) -> ProgressBar {
        ProgressBar {
            total,
            started: Instant::now(),
            shown: always || std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    /// Draws step `done`.
    pub fn set(&self, done: usize) {
        if !self.shown {
            return;
        }
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            std::io::stderr(),
            "\r[{}{}] {done}/{} pairs, {rate:.0}/s ",
            "=".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        if done == self.total {
            let _ = writeln!(std::io::stderr());
        }
    }
}

const MODEL: &str = "eval-model";

/// The request a pair's chat turns amount to on `route`: a chat, an
/// Anthropic Messages request (system turns as `system`), or a Responses
/// request (system turns as `instructions`, the rest as input items).
fn body(route: Endpoint, model: &str, messages: &[Value]) -> Value {
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect();
    let rest: Vec<Value> = messages
        .iter()
        .filter(|m| m["role"] != "system")
        .cloned()
        .collect();
    let mut b = match route {
        Endpoint::Messages => json!({"model": model, "max_tokens": 1024, "messages": rest}),
        Endpoint::Responses => json!({"model": model, "input": rest}),
        _ => return json!({"model": model, "messages": messages}),
    };
    if !system.is_empty() {
        let field = if route == Endpoint::Messages {
            "system"
        } else {
            "instructions"
        };
        b[field] = json!(system.join("\n\n"));
    }
    b
}

/// Opens a cache over an in-memory store with the settings' embedder (or
/// `embedder`), for evaluation. Blocking: call off the runtime.
pub fn open_cache(settings: &Settings, embedder: Option<EmbedderFactory>) -> Result<Cache, String> {
    let (pair, reader) = match embedder {
        Some(_) => (None, None),
        None => (
            crate::embed::configured_pair(&settings.embedding).map_err(|e| e.to_string())?,
            crate::embed::configured_reader(&settings.embedding).map_err(|e| e.to_string())?,
        ),
    };
    let factory = embedder.unwrap_or_else(|| crate::embed::configured(&settings.embedding));
    let e = &settings.embedding;
    let service = EmbedService::start(factory, crate::embed::EmbedLimits::of(e), None)
        .map_err(|e| e.to_string())?
        .with_pair(pair)
        .with_reader(reader);
    open_cache_on(settings, service)
}

/// Opens an in-memory cache over running embedding workers.
pub fn open_cache_on(settings: &Settings, service: EmbedService) -> Result<Cache, String> {
    Cache::open(
        settings.cache.clone(),
        Arc::new(MemoryStore::default()),
        service,
        Arc::new(crate::metrics::Metrics::new().map_err(|e| e.to_string())?),
        crate::cache::IndexPlace::Memory {
            dir: None,
            quantization: settings.storage.index_quantization,
        },
        &[],
    )
    .map_err(|e| e.to_string())
}

/// The key the proxy would build for a chat `body` of a tenant with
/// `policy`: its plan's key (a pair the plan skips is an error).
fn planned_key(
    route: Endpoint,
    policy: &Policy,
    body: &Value,
) -> Result<crate::keying::CacheKey, String> {
    let facts = Facts {
        endpoint: Some(route),
        ..Facts::chat(body)
    };
    match plan(Some(policy), true, &facts) {
        Plan::Lookup(l) => Ok(l.key),
        Plan::Skip(reason) => Err(reason.describe()),
    }
}

/// The similarity a request keyed `key` needs before any verifier tier.
fn base_threshold(key: &crate::keying::CacheKey, opts: &LookupOptions) -> f32 {
    judge::needed(key.embed_text.split_whitespace().count(), opts, None).value
}

/// Runs every pair through `cache` under `policy`, one at a time, each in an
/// empty cache: store `cached`, look up `probe`, remove the entry.
pub async fn run(
    cache: &Cache,
    tenant: &str,
    policy: &Policy,
    pairs: &[Pair],
    progress: impl FnMut(usize),
) -> Result<Vec<Prediction>, String> {
    run_on(Endpoint::Chat, cache, tenant, policy, pairs, progress).await
}

/// [`run`], with each pair sent as a request of `route` (chat, Messages or
/// Responses), keyed as the proxy keys that API.
pub async fn run_on(
    route: Endpoint,
    cache: &Cache,
    tenant: &str,
    policy: &Policy,
    pairs: &[Pair],
    mut progress: impl FnMut(usize),
) -> Result<Vec<Prediction>, String> {
    let opts = LookupOptions::for_policy(policy);
    let mut out = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        let model = pair.model.as_deref().unwrap_or(MODEL);
        let cached = planned_key(route, policy, &body(route, model, &pair.cached))
            .map_err(|e| format!("pair {}: cached: {e}", pair.id))?;
        let probe = planned_key(route, policy, &body(route, model, &pair.probe))
            .map_err(|e| format!("pair {}: probe: {e}", pair.id))?;
        // The reference of shared/eval/README.md: one cosine over the joined
        // system and user text, no partition, no guard.
        let plain = {
            let joined = |m: &[Value]| -> String {
                m.iter()
                    .filter(|t| matches!(t["role"].as_str(), Some("system" | "user")))
                    .filter_map(|t| t["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let v = cache
                .embed_many(&[joined(&pair.cached), joined(&pair.probe)], 2)
                .await
                .map_err(|e| e.to_string())?;
            crate::index::dot(&v[0], &v[1])
        };
        let embedding = if cached.semantic {
            Some(
                cache
                    .embed_many(std::slice::from_ref(&cached.embed_text), 1)
                    .await
                    .map_err(|e| e.to_string())?
                    .remove(0),
            )
        } else {
            None
        };
        let now = now_ms();
        let answer = json!({"object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached answer"}, "finish_reason": "stop"}]})
        .to_string();
        let ids = cache
            .insert_now(vec![crate::cache::row(
                tenant,
                &cached,
                answer,
                embedding,
                now,
                Duration::from_secs(3600),
                Origin::Proxy,
            )])
            .await
            .map_err(|e| e.to_string())?;
        let found = cache.explain(tenant, &probe, &opts, Scope::default()).await;
        let mine = found.candidates.iter().find(|c| c.entry.id == ids[0]);
        let similarity = mine.map_or(0.0, |c| c.similarity);
        let word_diff = crate::cache::verify::diff(&cached.text, &probe.text);
        let differing_words = word_diff.count();
        let why: Vec<String> = mine.map_or_else(Vec::new, |c| {
            c.verdict
                .checks
                .iter()
                .filter(|k| !k.passed())
                .map(|k| format!("{}: {}", k.name(), k.describe()))
                .collect()
        });
        let (score, failed) = match mine {
            Some(c) => {
                let failed: Vec<String> = c
                    .verdict
                    .checks
                    .iter()
                    .filter(|k| !k.passed())
                    .map(|k| k.name().to_string())
                    .collect();
                let gated = failed.iter().any(|f| f != "similarity" && f != "turn");
                // NOTE: the score is the smallest margin of a similarity (the
                // joined turns', each turn's) over what it needed, moved to
                // the tenant's threshold, so that a sweep moves every verifier
                // tier together.
                let base = base_threshold(&probe, &opts);
                let margin = c
                    .verdict
                    .checks
                    .iter()
                    .filter_map(|k| match k {
                        Check::Similarity {
                            similarity, needed, ..
                        }
                        | Check::Turn {
                            similarity, needed, ..
                        } => Some(similarity - needed.value),
                        _ => None,
                    })
                    .fold(f32::INFINITY, f32::min);
                let score = if margin.is_finite() {
                    (margin + base).clamp(0.0001, 1.5)
                } else {
                    0.0
                };
                (if gated { 0.0 } else { score }, failed)
            }
            None => (0.0, vec!["not_found".to_string()]),
        };
        let hit = found.hit.as_ref().is_some_and(|h| h.entry.id == ids[0]);
        out.push(Prediction {
            id: pair.id.clone(),
            hit,
            score,
            failed,
            why,
            similarity,
            differing_words,
            differing: word_diff.describe(),
            base: base_threshold(&probe, &opts),
            plain_cosine: plain,
            turns: mine.map_or_else(Vec::new, |c| {
                c.verdict
                    .checks
                    .iter()
                    .filter_map(|k| match k {
                        Check::Turn { similarity, .. } => Some(*similarity),
                        _ => None,
                    })
                    .collect()
            }),
            pair_score: mine.and_then(|c| {
                c.verdict.checks.iter().find_map(|k| match k {
                    Check::Pair {
                        outcome: PairOutcome::Scored(s),
                        ..
                    } => Some(*s),
                    _ => None,
                })
            }),
            read_similarity: mine.and_then(|c| {
                c.verdict.checks.iter().find_map(|k| match k {
                    Check::Unseen { read, .. } => *read,
                    _ => None,
                })
            }),
        });
        cache
            .remove(tenant, RemoveTarget::Ids(ids))
            .await
            .map_err(|e| e.to_string())?;
        progress(i + 1);
    }
    Ok(out)
}

/// Confusion counts and the figures from them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Served, and should be.
    pub tp: usize,
    /// Served, and must not be: a wrong answer.
    pub fp: usize,
    /// Not served, and should be.
    pub fn_: usize,
    /// Not served, and must not be.
    pub tn: usize,
}

impl Counts {
    fn add(&mut self, hit: bool, same: bool) {
        match (hit, same) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Of the hits, the share that were right to serve.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Of the pairs that should hit, the share that did.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Of the pairs that must miss, the share served anyway.
    pub fn fpr(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }

    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        Some(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        })
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// A pair's margin over the threshold its candidate needed (None when a
/// check no threshold overrides failed): it hits after a move `d` of every
/// threshold when the margin is at least `d`.
fn margin(p: &Prediction) -> Option<f32> {
    (p.score > 0.0).then_some(p.score - p.base)
}

/// The fold (of `k`) a pair belongs to: by a hash of its id, so the same
/// pair lands in the same fold whatever the file's order.
fn fold_of(id: &str, k: usize) -> usize {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_le_bytes(b) % k.max(1) as u64) as usize
}

/// Held-out figures: each fold scored with the calibration fitted on the
/// other `k - 1` folds (every threshold moved to keep the wrong-answer rate
/// at or below `max_wrong_rate` there), pooled per category; and each
/// fold's move. Nothing is scored by a move fitted on it.
pub fn folds(
    pairs: &[Pair],
    preds: &[Prediction],
    k: usize,
    max_wrong_rate: f64,
) -> (BTreeMap<String, Counts>, Vec<f32>) {
    let k = k.max(2);
    let fold: Vec<usize> = pairs.iter().map(|p| fold_of(&p.id, k)).collect();
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    let mut offsets = Vec::with_capacity(k);
    for f in 0..k {
        let (mut tp, mut tr) = (Vec::new(), Vec::new());
        for ((pair, p), g) in pairs.iter().zip(preds).zip(&fold) {
            if *g != f {
                tp.push(pair.clone());
                tr.push(p.clone());
            }
        }
        let offset = calibrate(&tp, &tr, max_wrong_rate).offset;
        offsets.push(offset);
        for ((pair, p), g) in pairs.iter().zip(preds).zip(&fold) {
            if *g == f {
                let hit = margin(p).is_some_and(|m| m >= offset);
                for cat in [pair.category.clone(), "all".to_string()] {
                    out.entry(cat).or_default().add(hit, pair.same_answer);
                }
            }
        }
    }
    (out, offsets)
}

/// [`folds`] as a table.
pub fn folds_report(pairs: &[Pair], preds: &[Prediction], k: usize, max_wrong_rate: f64) -> String {
    let (counts, offsets) = folds(pairs, preds, k, max_wrong_rate);
    let mut s = format!(
        "held out, {k} folds (every threshold moved on the other folds to at most {:.1}% wrong answers expected):\n",
        max_wrong_rate * 100.0
    );
    s += &format!(
        "{:<20} {:>5} {:>9} {:>7} {:>7}\n",
        "category", "pairs", "precision", "recall", "FPR"
    );
    for (cat, c) in &counts {
        s += &format!(
            "{:<20} {:>5} {:>9} {:>7} {:>7}\n",
            cat,
            c.tp + c.fp + c.tn + c.fn_,
            pct(c.precision()),
            pct(c.recall()),
            pct(c.fpr())
        );
    }
    let moves: Vec<String> = offsets.iter().map(|o| format!("{o:+.3}")).collect();
    s += &format!("moves per fold: {}\n", moves.join(" "));
    s
}

/// The smallest move of every threshold that keeps the wrong-answer rate
/// expected on requests the pairs do not hold at or below `max_wrong_rate`
/// (the most recall that allows). A pair hits after a move `d` when its
/// score's margin over its threshold is at least `d`.
///
/// The rate is estimated as `(wrong + 1) / (must-miss + 2)` (Laplace's rule
/// of succession), not as `wrong / must-miss`: the move that is smallest on
/// the pairs is the one fitted closest to them, and measured on pairs it was
/// not fitted on (`modelcache eval --folds`) the plain ratio overshot the
/// rate it was asked for. Pairs too few to show the rate (fewer than
/// `1 / max_wrong_rate - 2` must-miss pairs, or a rate of 0) never lower a
/// threshold: it is only raised, past every wrong answer among them.
pub fn calibrate(
    pairs: &[Pair],
    preds: &[Prediction],
    max_wrong_rate: f64,
) -> crate::cache::Calibration {
    let at = |d: f32| {
        let mut c = Counts::default();
        for (pair, p) in pairs.iter().zip(preds) {
            c.add(margin(p).is_some_and(|m| m >= d), pair.same_answer);
        }
        c
    };
    // NOTE: moves below -0.3 would trust the embedding far past anything
    // measured; above the largest margin nothing hits.
    // Each margin, and just past it: the smallest move that leaves out a
    // wrong pair keeps every right pair above it.
    let mut moves: Vec<f32> = preds
        .iter()
        .filter_map(margin)
        .filter(|m| *m >= -0.3)
        .flat_map(|m| [m, m + 0.001])
        .collect();
    // NOTE: 0, the thresholds as configured, is where too few pairs stop.
    moves.extend([-0.3, 0.0]);
    moves.sort_by(f32::total_cmp);
    moves.dedup();
    let top = moves.last().copied().unwrap_or(0.0) + 0.001;
    let expected = |c: &Counts| (c.fp + 1) as f64 / (c.fp + c.tn + 2) as f64;
    let offset = moves
        .iter()
        .copied()
        .find(|d| expected(&at(*d)) <= max_wrong_rate)
        .or_else(|| moves.iter().copied().find(|d| *d >= 0.0 && at(*d).fp == 0))
        .unwrap_or(top)
        .min(1.0);
    let c = at(offset);
    crate::cache::Calibration {
        offset,
        max_wrong_rate,
        wrong_rate: c.fpr().unwrap_or(0.0),
        recall: c.recall().unwrap_or(0.0),
        pairs: pairs.len(),
    }
}

/// Calibrates `policy` on the pairs in `path`, in a cache of its own (an
/// in-memory store over the serving embedder's workers): nothing touches the
/// serving cache's entries.
/// Blocking parts run off the runtime.
pub async fn calibrate_policy(
    settings: &Settings,
    policy: &Policy,
    path: &Path,
    max_wrong_rate: f64,
    embedder: EmbedService,
) -> Result<crate::cache::Calibration, String> {
    let pairs = read_pairs(path)?;
    let s = settings.clone();
    let cache = tokio::task::spawn_blocking(move || open_cache_on(&s, embedder))
        .await
        .map_err(|e| e.to_string())??;
    let preds = run(&cache, "_calibration", policy, &pairs, |_| {}).await?;
    cache.flush(std::time::Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || cache.close())
        .await
        .map_err(|e| e.to_string())?;
    Ok(calibrate(&pairs, &preds, max_wrong_rate))
}

/// Counts per category and overall (key `all`).
pub fn by_category(pairs: &[Pair], preds: &[Prediction]) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for (pair, p) in pairs.iter().zip(preds) {
        out.entry(pair.category.clone())
            .or_default()
            .add(p.hit, pair.same_answer);
        out.entry("all".into())
            .or_default()
            .add(p.hit, pair.same_answer);
    }
    out
}

/// Counts when a hit means `score >= t`.
pub fn at_threshold(pairs: &[Pair], preds: &[Prediction], t: f32) -> Counts {
    let mut c = Counts::default();
    for (pair, p) in pairs.iter().zip(preds) {
        c.add(p.score > 0.0 && p.score >= t, pair.same_answer);
    }
    c
}

/// The best recall reachable by a score threshold with a false-positive
/// rate of at most `max_fpr`, and that threshold.
pub fn recall_at_fpr(pairs: &[Pair], preds: &[Prediction], max_fpr: f64) -> Option<(f64, f32)> {
    let mut ts: Vec<f32> = preds.iter().map(|p| p.score).filter(|s| *s > 0.0).collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts.dedup();
    ts.into_iter()
        .filter_map(|t| {
            let c = at_threshold(pairs, preds, t);
            (c.fpr()? <= max_fpr).then(|| (c.recall().unwrap_or(0.0), t))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("   -  ".into(), |v| format!("{:5.1}%", v * 100.0))
}

/// The per-category table.
pub fn report(pairs: &[Pair], preds: &[Prediction]) -> String {
    let mut s = String::new();
    s.push_str(
        "this configuration (the gateway's lookup: partition, guards, verifier, thresholds):\n",
    );
    s.push_str(&format!(
        "{:<20} {:>5} {:>9} {:>7} {:>7} {:>7}\n",
        "category", "pairs", "precision", "recall", "F1", "FPR"
    ));
    let cats = by_category(pairs, preds);
    let mut rows: Vec<(&String, &Counts)> = cats.iter().filter(|(k, _)| *k != "all").collect();
    if let Some(all) = cats.get_key_value("all") {
        rows.push(all);
    }
    for (name, c) in rows {
        s.push_str(&format!(
            "{:<20} {:>5} {:>9} {:>7} {:>7} {:>7}\n",
            name,
            c.tp + c.fp + c.fn_ + c.tn,
            pct(c.precision()),
            pct(c.recall()),
            c.f1().map_or("   -".into(), |f| format!("{f:.3}")),
            pct(c.fpr())
        ));
    }
    let plain_line = |s: &mut String| {
        // The reference, from the same embeddings: a cosine threshold alone.
        let plain: Vec<Prediction> = preds
            .iter()
            .map(|p| Prediction {
                score: p.plain_cosine.max(0.0001),
                ..p.clone()
            })
            .collect();
        let at = |t: f32| at_threshold(pairs, &plain, t);
        let best = (70..=99)
            .map(|i| i as f32 / 100.0)
            .max_by(|a, b| {
                at(*a)
                    .f1()
                    .unwrap_or(0.0)
                    .total_cmp(&at(*b).f1().unwrap_or(0.0))
            })
            .unwrap_or(0.9);
        s.push_str("plain cosine over the joined system and user text (the reference):\n");
        for (label, t) in [("best F1", best), ("at 0.90", 0.90), ("at 0.98", 0.98)] {
            let c = at(t);
            s.push_str(&format!(
                "  {label:<8} threshold {t:.2}: precision {}, recall {}, F1 {}, FPR {}\n",
                pct(c.precision()).trim(),
                pct(c.recall()).trim(),
                c.f1().map_or("-".into(), |f| format!("{f:.3}")),
                pct(c.fpr()).trim()
            ));
        }
        for max in [0.05, 0.01] {
            let r = recall_at_fpr(pairs, &plain, max).map_or("none reachable".into(), |(r, t)| {
                format!("{:.1}% (threshold {t:.3})", r * 100.0)
            });
            s.push_str(&format!("  recall at FPR <= {:.0}%: {r}\n", max * 100.0));
        }
    };
    for max in [0.05, 0.01] {
        match recall_at_fpr(pairs, preds, max) {
            Some((r, t)) => s.push_str(&format!(
                "recall at FPR <= {:.0}%: {:.1}% (score threshold {t:.3})\n",
                max * 100.0,
                r * 100.0
            )),
            None => s.push_str(&format!(
                "recall at FPR <= {:.0}%: none reachable\n",
                max * 100.0
            )),
        }
    }
    plain_line(&mut s);
    s
}

/// A threshold table from 0.70 to 0.99, and the threshold recommended for a
/// false-positive rate of at most `target_fpr` (the lowest one that meets it:
/// the most recall).
pub fn sweep(pairs: &[Pair], preds: &[Prediction], target_fpr: f64) -> String {
    let mut s = format!(
        "{:>9} {:>9} {:>7} {:>7} {:>7}\n",
        "threshold", "precision", "recall", "F1", "FPR"
    );
    let mut best: Option<f32> = None;
    for step in 70..=99 {
        let t = step as f32 / 100.0;
        let c = at_threshold(pairs, preds, t);
        if best.is_none() && c.fpr().is_some_and(|f| f <= target_fpr) {
            best = Some(t);
        }
        s.push_str(&format!(
            "{t:>9.2} {:>9} {:>7} {:>7} {:>7}\n",
            pct(c.precision()),
            pct(c.recall()),
            c.f1().map_or("   -".into(), |f| format!("{f:.3}")),
            pct(c.fpr())
        ));
    }
    match best {
        Some(t) => {
            let c = at_threshold(pairs, preds, t);
            s.push_str(&format!(
                "recommended: threshold = {t:.2} (FPR {} <= {:.1}%, recall {})\n",
                pct(c.fpr()).trim(),
                target_fpr * 100.0,
                pct(c.recall()).trim()
            ));
        }
        None => s.push_str(&format!(
            "no threshold up to 0.99 keeps the FPR at or below {:.1}%\n",
            target_fpr * 100.0
        )),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, cat: &str, same: bool) -> Pair {
        Pair {
            id: id.into(),
            category: cat.into(),
            subtype: String::new(),
            same_answer: same,
            cached: vec![],
            probe: vec![],
            lang: "en".into(),
            model: None,
        }
    }

    fn pred(id: &str, hit: bool, score: f32) -> Prediction {
        Prediction {
            id: id.into(),
            hit,
            score,
            failed: vec![],
            why: vec![],
            similarity: score,
            differing_words: 0,
            differing: String::new(),
            base: 0.9,
            plain_cosine: score,
            turns: vec![],
            pair_score: None,
            read_similarity: None,
        }
    }

    #[test]
    fn a_pair_sent_on_another_api_keys_to_the_same_text() {
        let policy = crate::config::load(None, Vec::new(), &crate::config::Overrides::default())
            .expect("the embedded defaults load")
            .cache
            .policy;
        let turns = vec![
            json!({"role": "system", "content": "Be terse."}),
            json!({"role": "user", "content": "What is Rust?"}),
            json!({"role": "assistant", "content": "A language."}),
            json!({"role": "user", "content": "Who made it?"}),
        ];
        let chat =
            planned_key(Endpoint::Chat, &policy, &body(Endpoint::Chat, "m", &turns)).unwrap();
        let messages_body = body(Endpoint::Messages, "m", &turns);
        assert_eq!(messages_body["system"], "Be terse.");
        assert_eq!(messages_body["messages"].as_array().unwrap().len(), 3);
        let responses_body = body(Endpoint::Responses, "m", &turns);
        assert_eq!(responses_body["instructions"], "Be terse.");
        for (route, b) in [
            (Endpoint::Messages, messages_body),
            (Endpoint::Responses, responses_body),
        ] {
            let k = planned_key(route, &policy, &b).unwrap();
            assert_eq!(k.endpoint, route);
            assert_eq!(k.embed_text, chat.embed_text, "{route:?}");
            assert_eq!(k.semantic, chat.semantic);
            assert_ne!(k.partition, chat.partition, "never a chat's partition");
        }
    }

    #[test]
    fn figures_per_category_and_recall_at_a_bounded_fpr() {
        let pairs = vec![
            pair("a", "x", true),
            pair("b", "x", true),
            pair("c", "x", false),
            pair("d", "y", false),
            pair("e", "y", true),
        ];
        let preds = vec![
            pred("a", true, 0.99),
            pred("b", false, 0.85),
            pred("c", true, 0.95),
            pred("d", false, 0.0),
            pred("e", true, 0.97),
        ];
        let cats = by_category(&pairs, &preds);
        let x = cats["x"];
        assert_eq!((x.tp, x.fp, x.fn_, x.tn), (1, 1, 1, 0));
        assert_eq!(x.precision(), Some(0.5));
        assert_eq!(cats["all"].fpr(), Some(0.5));
        // Above 0.95 nothing wrong is served: recall 2 of 3.
        let (r, t) = recall_at_fpr(&pairs, &preds, 0.0).unwrap();
        assert!((r - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(t, 0.97);
        // A zero score never hits, whatever the threshold.
        assert_eq!(at_threshold(&pairs, &preds, 0.0).fp, 1);
        // Calibration: base 0.9 for every pair; margins 0.09, -0.05, 0.05,
        // none (gated), 0.07. No wrong answer: the move must pass 0.05.
        let c = calibrate(&pairs, &preds, 0.0);
        assert!((c.offset - 0.051).abs() < 1e-5, "{c:?}");
        assert_eq!(c.wrong_rate, 0.0);
        assert!((c.recall - 2.0 / 3.0).abs() < 1e-9);
        let loose = calibrate(&pairs, &preds, 0.5);
        assert!(loose.offset < 0.0, "{loose:?}");
        let table = sweep(&pairs, &preds, 0.0);
        assert!(table.contains("recommended: threshold = 0.96"), "{table}");
        assert!(report(&pairs, &preds).contains("recall at FPR <= 5%"));
    }

    #[test]
    fn calibration_counts_the_wrong_answer_the_pairs_have_not_shown() {
        // 200 must-miss pairs 0.1 under their threshold, two wrong outliers
        // over it (margins 0.02 and 0.03), 100 right pairs 0..0.05 over it.
        let (mut pairs, mut preds) = (Vec::new(), Vec::new());
        let mut add = |id: String, same: bool, margin: f32| {
            pairs.push(pair(&id, "c", same));
            preds.push(pred(&id, margin >= 0.0, 0.9 + margin));
        };
        for i in 0..200 {
            add(format!("w{i}"), false, -0.1);
        }
        add("o1".into(), false, 0.02);
        add("o2".into(), false, 0.03);
        for i in 0..100 {
            add(format!("r{i}"), true, i as f32 * 0.0005);
        }
        // 1%: both outliers served is 2 of 202 on the pairs, but (2 + 1) /
        // (202 + 2) = 1.5% expected: only one may be, so the move passes
        // the lower outlier.
        let c = calibrate(&pairs, &preds, 0.01);
        assert!(c.offset > 0.019 && c.offset < 0.0215, "{c:?}");
        assert!((c.wrong_rate - 1.0 / 202.0).abs() < 1e-9, "{c:?}");
        // 2%: (2 + 1) / 204 holds, and the move comes down to the
        // must-miss pairs.
        let c = calibrate(&pairs, &preds, 0.02);
        assert!(c.offset < -0.09 && c.offset > -0.1, "{c:?}");
        // Ten must-miss pairs cannot show 2%: the thresholds are not
        // lowered, however far under them the wrong pairs sit...
        let few_pairs: Vec<Pair> = pairs[..10].iter().chain(&pairs[202..]).cloned().collect();
        let few_preds: Vec<Prediction> = preds[..10].iter().chain(&preds[202..]).cloned().collect();
        assert_eq!(calibrate(&few_pairs, &few_preds, 0.02).offset, 0.0);
        // ... and only raised past the wrong ones they hold.
        let with_wrong: Vec<Pair> = pairs[..10].iter().chain(&pairs[200..]).cloned().collect();
        let with_wrong_preds: Vec<Prediction> =
            preds[..10].iter().chain(&preds[200..]).cloned().collect();
        let c = calibrate(&with_wrong, &with_wrong_preds, 0.02);
        assert!(c.offset > 0.029 && c.offset < 0.0315, "{c:?}");
        assert_eq!(c.wrong_rate, 0.0);
    }

    #[test]
    fn held_out_folds_never_score_a_pair_with_a_move_fitted_on_it() {
        // Many right pairs with margins 0.05..0.09 and many wrong ones with
        // margins below zero; one wrong outlier with the largest margin of all.
        let mut pairs = Vec::new();
        let mut preds = Vec::new();
        for i in 0..40 {
            let id = format!("r{i}");
            pairs.push(pair(&id, "c", true));
            preds.push(Prediction {
                score: 0.95 + (i % 5) as f32 * 0.01,
                base: 0.90,
                ..pred(&id, true, 0.0)
            });
            let id = format!("w{i}");
            pairs.push(pair(&id, "c", false));
            preds.push(Prediction {
                score: 0.85,
                base: 0.90,
                ..pred(&id, false, 0.0)
            });
        }
        pairs.push(pair("outlier", "c", false));
        preds.push(Prediction {
            score: 0.97,
            base: 0.90,
            ..pred("outlier", true, 0.0)
        });
        // Fitted on every pair, no wrong answer is left: the move clears
        // the outlier, whose margin it knows.
        let fitted = calibrate(&pairs, &preds, 0.0);
        assert_eq!(fitted.wrong_rate, 0.0);
        let (counts, offsets) = folds(&pairs, &preds, 4, 0.0);
        assert_eq!(offsets.len(), 4);
        let all = &counts["all"];
        // Every pair is scored exactly once, held out.
        assert_eq!(all.tp + all.fp + all.tn + all.fn_, pairs.len());
        // The outlier's own fold was calibrated without it, so it is served:
        // the held-out figure shows the wrong answer the fitted one hides.
        assert_eq!(all.fp, 1);
        assert!(all.tp >= 1);
        // Deterministic by id, whatever the order.
        let (mut rp, mut rr) = (pairs.clone(), preds.clone());
        rp.reverse();
        rr.reverse();
        let (again, _) = folds(&rp, &rr, 4, 0.0);
        assert_eq!((again["all"].tp, again["all"].fp), (all.tp, all.fp));
        assert!(folds_report(&pairs, &preds, 4, 0.0).contains("held out, 4 folds"));
    }
}
