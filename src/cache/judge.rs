//! The candidate-level decision: whether one stored entry may answer a
//! request, what similarity it needed, and every check with its value.
//!
//! Owns the one function that decides what similarity a candidate needs and
//! why ([`needed`]: the tenant's threshold for short or long texts, its
//! calibration, the verifier's tier, the request's stricter threshold), and
//! the one function that turns a candidate into a [`Verdict`] ([`judge`]).
//! Both are pure: same inputs, same verdict; the texts of people are made
//! only by [`Check::describe`]. It must never make a candidate from another
//! tenant or partition, a stale one, or one a guard stopped, be served.

use std::time::Duration;

use super::{
    guards::{self, GuardResult},
    types::{HitKind, LookupOptions},
    verify::{self, WordDiff},
};
use crate::{
    keying::CacheKey,
    store::{Entry, Origin},
};

/// The verifier's tier of a candidate: how its content words differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The verifier did not run (off, or an exact candidate).
    Threshold,
    /// No content word differs.
    SameWords,
    /// One or two content words differ.
    SmallEdit,
    /// Content words on one side only: a restriction added or dropped
    /// ("... after it has shipped"), however many words it takes.
    Added,
    /// More differ.
    Rewording,
}

impl Tier {
    /// For people.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Threshold => "threshold",
            Tier::SameWords => "same content words",
            Tier::SmallEdit => "a small edit: one or two content words differ",
            Tier::Added => "an addition: content words on one side only",
            Tier::Rewording => "a rewording",
        }
    }
}

/// The similarity a candidate needs, and each rule that made it so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Needed {
    /// The similarity needed.
    pub value: f32,
    /// The tenant's threshold for the text's length, calibration included.
    pub base: f32,
    /// Whether `base` is the long-text threshold.
    pub long: bool,
    /// How far the tenant's calibration moved every threshold.
    pub calibration: f32,
    /// The verifier's tier.
    pub tier: Tier,
    /// Whether the request's own threshold (`x-modelcache-threshold`) set it.
    pub capped: bool,
}

/// Whether a text of `words` words is judged by the long threshold.
fn is_long(words: usize, opts: &LookupOptions) -> bool {
    words > opts.thresholds.long_text_words
}

/// The similarity a candidate needs: the tenant's threshold for a text of
/// `words` words, moved by the verifier's tier of `diff` (None: no tier, as
/// for an exact candidate), never below the request's own threshold.
/// `opts` carry the tenant's calibration already (see
/// [`LookupOptions::shifted`]).
pub fn needed(words: usize, opts: &LookupOptions, diff: Option<&WordDiff>) -> Needed {
    let long = is_long(words, opts);
    let base = if long {
        opts.thresholds.long
    } else {
        opts.thresholds.short
    };
    let at_least = |t: f32| opts.min_similarity.map_or(t, |m| t.max(m));
    let v = &opts.verifier;
    let (tiered, tier) = match diff {
        Some(d) if v.enabled => match d.count() {
            // NOTE: a rewording of the same content words may be served
            // below the tenant's threshold: the dev set's must-miss pairs
            // of this shape are the guards' to stop.
            0 => (at_least(base).min(v.same_words_threshold), Tier::SameWords),
            n if n <= v.small_edit_words => {
                (at_least(base).max(v.small_edit_threshold), Tier::SmallEdit)
            }
            // NOTE: a rewording swaps words on both sides; words only one
            // side has restrict what it asks, as near-identity as a swap.
            _ if d.one_sided() => (at_least(base).max(v.small_edit_threshold), Tier::Added),
            _ => (at_least(base), Tier::Rewording),
        },
        _ => (at_least(base), Tier::Threshold),
    };
    let value = at_least(tiered);
    Needed {
        value,
        base,
        long,
        calibration: opts.calibration,
        tier,
        capped: opts.min_similarity.is_some_and(|m| m >= tiered),
    }
}

/// The lowest similarity any semantic candidate of a text of `words` words
/// may need: below it (less the index's slack) no candidate can be served.
pub fn floor(words: usize, opts: &LookupOptions) -> f32 {
    let same = WordDiff::default();
    needed(words, opts, Some(&same))
        .value
        .min(needed(words, opts, None).value)
}

/// How an entry's partition compares with the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// Same tenant, model, parameters and exactly matched turns.
    Same,
    /// Another tenant's entry (never shown to people: a dry run searches one
    /// tenant).
    OtherTenant,
    /// Stored for another model.
    OtherModel(String),
    /// Stored with other answer-shaping parameters.
    OtherParams(String),
    /// The exactly matched turns differ (system prompt, assistant or tool
    /// turns, namespace, query).
    OtherTurns,
}

/// The long-text guard's outcome on one candidate (it embeds the one
/// sentence that differs, so the lookup runs it, not [`judge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LongCheck {
    /// Whether it passed.
    pub passed: bool,
    /// What was compared.
    pub detail: String,
}

/// A stage of a judgement that runs a model (it embeds, or scores a pair),
/// so the lookup runs it and judges again with its outcome. In this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The reader: embeds both texts with the model that reads what the
    /// embedding model cannot see.
    Read,
    /// The long-text guard: embeds the one sentence that differs.
    LongText,
    /// Turn by turn: embeds each turn compared by meaning that differs.
    Turns,
    /// The pair model (a cross-encoder) on each such turn.
    Pair,
}

/// Why the pair model gave no score: the candidate is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFailure {
    /// It took longer than the tenant's limit.
    Timeout,
    /// Every worker was busy.
    Busy,
    /// The model failed (its message is logged).
    Error,
}

/// The pair model's outcome on one candidate: the lowest score of the turns
/// that differ (1 when none does), or why there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairOutcome {
    /// The lowest score, in 0..=1.
    Scored(f32),
    /// No score.
    Failed(PairFailure),
}

/// One check of a candidate, with its typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The partition.
    Partition(Partition),
    /// Not expired: milliseconds until it expires (negative: since).
    Fresh {
        /// Until expiry.
        expires_in_ms: i64,
    },
    /// Young enough for `Cache-Control: max-age`.
    MaxAge {
        /// The entry's age.
        age_ms: i64,
        /// The request's limit.
        max: Duration,
    },
    /// A structural guard.
    Guard(GuardResult),
    /// The long-text guard.
    LongText(LongCheck),
    /// The spans the embedding model cannot see (its unknown token), which
    /// must be equal, or read by the reader: the similarity cannot tell
    /// them apart.
    Unseen {
        /// The stored question's unseen spans.
        stored: Vec<String>,
        /// The request's.
        asked: Vec<String>,
        /// The reader's similarity of the two texts, when it was asked
        /// (NaN: it could not read them).
        read: Option<f32>,
    },
    /// A probe reported wrong for this entry is closer than the entry's own
    /// similarity.
    Feedback {
        /// The reported probe's similarity.
        similarity: f32,
    },
    /// The entry's origin, when the lookup serves only one.
    Origin {
        /// How the entry was written.
        stored: Origin,
        /// What the lookup serves.
        wanted: Origin,
    },
    /// The turns compared by meaning do not line up one to one.
    TurnCount {
        /// The stored question's.
        stored: usize,
        /// The request's.
        asked: usize,
    },
    /// One turn compared by meaning, on its own: a long history must not
    /// hide a changed question.
    Turn {
        /// Which, from 0.
        index: usize,
        /// Of how many.
        of: usize,
        /// Its similarity (NaN: it could not be embedded).
        similarity: f32,
        /// What it needed, as a text of its length.
        needed: Needed,
        /// The verifier's word diff of the turn, when it ran.
        diff: Option<WordDiff>,
    },
    /// The pair model's score against its threshold.
    Pair {
        /// The outcome.
        outcome: PairOutcome,
        /// The score needed.
        needed: f32,
    },
    /// The similarity against what the candidate needed.
    Similarity {
        /// The candidate's similarity: the reader's when `read`.
        similarity: f32,
        /// Whether the reader measured it (the embedding model cannot see
        /// what differs), against the reader's thresholds.
        read: bool,
        /// What it needed.
        needed: Needed,
        /// The verifier's word diff, when it ran.
        diff: Option<WordDiff>,
    },
}

impl Check {
    /// A short stable name.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Partition(_) => "partition",
            Check::Fresh { .. } => "fresh",
            Check::MaxAge { .. } => "max_age",
            Check::Guard(g) => g.name,
            Check::LongText(_) => "long_text",
            Check::Unseen { read: Some(r), .. } if r.is_nan() => "reader_failed",
            Check::Unseen { .. } => "unseen_text",
            Check::Feedback { .. } => "feedback",
            Check::Origin { .. } => "origin",
            Check::TurnCount { .. } => "turn_count",
            Check::Turn { .. } => "turn",
            Check::Pair { outcome, .. } => match outcome {
                PairOutcome::Scored(_) => "pair_model",
                PairOutcome::Failed(PairFailure::Timeout) => "pair_model_timeout",
                PairOutcome::Failed(PairFailure::Busy) => "pair_model_busy",
                PairOutcome::Failed(PairFailure::Error) => "pair_model_error",
            },
            Check::Similarity { .. } => "similarity",
        }
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        match self {
            Check::Partition(p) => *p == Partition::Same,
            Check::Fresh { expires_in_ms } => *expires_in_ms > 0,
            Check::MaxAge { age_ms, max } => {
                // NOTE: saturating: a max-age past i64 milliseconds (about
                // 9.2e15 s) must not wrap to a negative age limit.
                *age_ms <= i64::try_from(max.as_millis()).unwrap_or(i64::MAX)
            }
            Check::Guard(g) => g.passed,
            Check::LongText(l) => l.passed,
            Check::Unseen {
                stored,
                asked,
                read,
            } => stored == asked || read.is_some_and(f32::is_finite),
            Check::Feedback { .. } => false,
            Check::Origin { stored, wanted } => stored == wanted,
            Check::TurnCount { .. } => false,
            Check::Turn {
                similarity, needed, ..
            } => *similarity >= needed.value,
            Check::Pair { outcome, needed } => match outcome {
                PairOutcome::Scored(s) => *s >= *needed,
                PairOutcome::Failed(_) => false,
            },
            Check::Similarity {
                similarity, needed, ..
            } => *similarity >= needed.value,
        }
    }

    /// Its number, where it has one: a similarity (the candidate's, a
    /// turn's) or the pair model's score.
    pub fn value(&self) -> Option<f32> {
        match self {
            Check::Similarity { similarity, .. } | Check::Turn { similarity, .. } => {
                Some(*similarity).filter(|s| s.is_finite())
            }
            Check::Pair {
                outcome: PairOutcome::Scored(s),
                ..
            } => Some(*s),
            _ => None,
        }
    }

    /// Why, for people.
    pub fn describe(&self) -> String {
        match self {
            Check::Partition(p) => match p {
                Partition::Same => "same model, parameters and exactly matched turns".into(),
                Partition::OtherTenant => "stored for another tenant".into(),
                Partition::OtherModel(m) => format!("stored for model {m}"),
                Partition::OtherParams(p) => format!("stored with other parameters: {p}"),
                Partition::OtherTurns => "the exactly matched turns differ (system prompt, assistant or tool turns, namespace)".into(),
            },
            Check::Fresh { expires_in_ms } if *expires_in_ms > 0 => {
                format!("expires in {} s", expires_in_ms / 1000)
            }
            Check::Fresh { expires_in_ms } => format!("expired {} s ago", -expires_in_ms / 1000),
            Check::MaxAge { age_ms, max } => {
                format!("{} s old, max-age {} s", age_ms / 1000, max.as_secs())
            }
            Check::Guard(g) => g.detail.clone(),
            Check::LongText(l) => l.detail.clone(),
            Check::Unseen { stored, asked, .. } if stored == asked => match stored.len() {
                0 => "the model sees every word of both".into(),
                n => format!("{n} spans the model cannot see, the same in both"),
            },
            Check::Unseen {
                stored,
                asked,
                read: Some(r),
            } if r.is_finite() => format!(
                "the model cannot see \"{}\" vs \"{}\": judged by the reader's similarity instead",
                clip_spans(stored),
                clip_spans(asked)
            ),
            Check::Unseen {
                stored,
                asked,
                read: Some(_),
            } => format!(
                "the model cannot see \"{}\" vs \"{}\", and the reader could not read them: not served",
                clip_spans(stored),
                clip_spans(asked)
            ),
            Check::Unseen { stored, asked, .. } => format!(
                "the model cannot see \"{}\" vs \"{}\": its similarity cannot tell them apart",
                clip_spans(stored),
                clip_spans(asked)
            ),
            Check::Feedback { similarity } => format!(
                "reported wrong for a question {similarity:.4} alike, closer than the entry's own"
            ),
            Check::Origin { stored, wanted } => {
                format!("written by {}, needs {}", stored.as_str(), wanted.as_str())
            }
            Check::TurnCount { stored, asked } => format!(
                "{stored} turns compared by meaning stored, {asked} asked: they do not line up"
            ),
            Check::Turn {
                index,
                of,
                similarity,
                needed,
                diff,
            } => {
                let words = match diff {
                    None => String::new(),
                    Some(d) if d.count() == 0 => format!(" ({})", needed.tier.as_str()),
                    Some(d) => format!(" ({}: {})", needed.tier.as_str(), d.describe()),
                };
                if similarity.is_nan() {
                    format!("turn {} of {of} could not be embedded", index + 1)
                } else {
                    format!(
                        "turn {} of {of} on its own: {similarity:.4} {} threshold {:.4}{words}",
                        index + 1,
                        if self.passed() { ">=" } else { "<" },
                        needed.value
                    )
                }
            }
            Check::Pair { outcome, needed } => match outcome {
                PairOutcome::Scored(s) => format!(
                    "the pair model scores {s:.4} {} {needed:.4}",
                    if self.passed() { ">=" } else { "<" }
                ),
                PairOutcome::Failed(PairFailure::Timeout) => {
                    "the pair model timed out: not served".into()
                }
                PairOutcome::Failed(PairFailure::Busy) => {
                    "the pair model was busy: not served".into()
                }
                PairOutcome::Failed(PairFailure::Error) => {
                    "the pair model failed: not served".into()
                }
            },
            Check::Similarity {
                similarity,
                read,
                needed,
                diff,
            } => {
                let words = match diff {
                    None => String::new(),
                    Some(d) if d.count() == 0 => format!(" ({})", needed.tier.as_str()),
                    Some(d) => format!(" ({}: {})", needed.tier.as_str(), d.describe()),
                };
                format!(
                    "{}{similarity:.4} {} threshold {:.4}{words}",
                    if *read { "the reader's " } else { "" },
                    if self.passed() { ">=" } else { "<" },
                    needed.value
                )
            }
        }
    }
}

/// The request side of a judgement.
#[derive(Debug, Clone, Copy)]
pub struct Asking<'a> {
    /// The tenant asking.
    pub tenant: &'a str,
    /// The request's key.
    pub key: &'a CacheKey,
    /// The lookup's options, the tenant's calibration included.
    pub opts: &'a LookupOptions,
    /// Serve only entries written this way.
    pub origin: Option<Origin>,
    /// Unix milliseconds now.
    pub now: i64,
    /// The spans of the request's text the model cannot see (None: the
    /// model reads every text).
    pub unseen: Option<&'a [String]>,
    /// The score the pair model must give, when one is loaded and the
    /// tenant uses it.
    pub pair: Option<f32>,
    /// Whether a reader is loaded: a model that reads the spans the
    /// embedding model cannot see, asked about candidates where they differ.
    pub reader: bool,
}

/// The candidate side of a judgement.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// The stored entry.
    pub entry: &'a Entry,
    /// Its similarity to the request (1 for the exact layer), recomputed from
    /// the stored embedding.
    pub similarity: f32,
    /// Found by exact hash or by the vector index.
    pub kind: HitKind,
    /// The similarity of a probe reported wrong for this entry, if one is
    /// closer than this request.
    pub reported_wrong: Option<f32>,
    /// The long-text guard's outcome, once run.
    pub long: Option<&'a LongCheck>,
    /// The spans of the stored question the model cannot see (given when
    /// the request's are).
    pub unseen: Option<&'a [String]>,
    /// Each turn's similarity on its own (NaN: not embedded), once the
    /// lookup has run [`Stage::Turns`].
    pub turns: Option<&'a [f32]>,
    /// The pair model's outcome, once the lookup has run [`Stage::Pair`].
    pub pair: Option<PairOutcome>,
    /// The reader's similarity of the two texts (NaN: it failed), once the
    /// lookup has run [`Stage::Read`].
    pub read: Option<f32>,
}

/// The decision on one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether it may be served.
    pub served: bool,
    /// The similarity it needed.
    pub needed: Needed,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Every check so far passed, and this stage must still run: run it,
    /// then judge again with its outcome.
    pub awaits: Option<Stage>,
    /// The first stage not run yet, whatever the checks so far (a dry run
    /// runs them all).
    pub pending: Option<Stage>,
}

fn partition(e: &Entry, tenant: &str, key: &CacheKey) -> Partition {
    if e.tenant != tenant {
        Partition::OtherTenant
    } else if e.partition == key.partition {
        Partition::Same
    } else if e.model != key.model {
        Partition::OtherModel(e.model.clone())
    } else if e.params != key.params {
        Partition::OtherParams(e.params.clone())
    } else {
        Partition::OtherTurns
    }
}

/// Whether the long-text guard must run on `entry` for this request: a
/// semantic candidate of the request's own partition, the guard on.
pub fn needs_long_text(asking: &Asking<'_>, entry: &Entry, kind: HitKind) -> bool {
    kind == HitKind::Semantic
        && asking.opts.guards.long_text
        && entry.tenant == asking.tenant
        && entry.partition == asking.key.partition
}

/// Judges one candidate.
pub fn judge(asking: &Asking<'_>, offered: &Offered<'_>) -> Verdict {
    let e = offered.entry;
    let key = asking.key;
    let opts = asking.opts;
    let part = partition(e, asking.tenant, key);
    let same = part == Partition::Same;
    let semantic = offered.kind == HitKind::Semantic;
    let mut checks = vec![
        Check::Partition(part),
        Check::Fresh {
            expires_in_ms: e.expires_at.saturating_sub(asking.now),
        },
    ];
    if let Some(max) = opts.max_age {
        checks.push(Check::MaxAge {
            age_ms: asking.now.saturating_sub(e.created_at),
            max,
        });
    }
    // NOTE: an exact hit has the same text; guards compare texts that differ.
    // The long-text guard needs embeddings: the lookup runs it.
    if semantic && same {
        let set = guards::GuardSet {
            long_text: false,
            ..opts.guards
        };
        let (_, results) = guards::check(&e.text, &key.text, &set, true);
        checks.extend(results.into_iter().map(Check::Guard));
    }
    // NOTE: a similarity over text the model cannot see says nothing about
    // it: such spans must be the same (safe by default), or the reader,
    // which sees them, judges the candidate in the model's place.
    let (unseen, by_reader) = match (semantic && same, asking.unseen, offered.unseen) {
        (true, Some(asked), Some(stored)) => (
            Some((stored, asked)),
            asking.reader && stored != asked && reader_reads(stored, asked),
        ),
        _ => (None, false),
    };
    let read = offered.read.filter(|_| by_reader);
    if let (Some((stored, asked)), false) = (unseen, by_reader && read.is_none()) {
        checks.push(Check::Unseen {
            stored: stored.to_vec(),
            asked: asked.to_vec(),
            read,
        });
    }
    let reader_opts;
    let opts = if by_reader {
        reader_opts = opts.for_reader();
        &reader_opts
    } else {
        opts
    };
    let long_needed = needs_long_text(asking, e, offered.kind);
    if let (true, Some(l)) = (long_needed, offered.long) {
        checks.push(Check::LongText(l.clone()));
    }
    if let Some(similarity) = offered.reported_wrong {
        checks.push(Check::Feedback { similarity });
    }
    if let Some(wanted) = asking.origin {
        checks.push(Check::Origin {
            stored: e.origin,
            wanted,
        });
    }
    // NOTE: the verifier chooses the threshold of a semantic candidate by
    // how many content words differ.
    let diff =
        (semantic && same && opts.verifier.enabled).then(|| verify::diff(&e.text, &key.text));
    let words = key.embed_text.split_whitespace().count();
    let needed = needed(words, opts, diff.as_ref());
    // NOTE: judged by the reader, the embedding model's similarity is not
    // asked (it cannot see what differs); until the reader has run, or when
    // it failed (the unseen check fails), there is no similarity to judge.
    match (by_reader, read) {
        (false, _) => checks.push(Check::Similarity {
            similarity: offered.similarity,
            read: false,
            needed,
            diff,
        }),
        (true, Some(r)) if r.is_finite() => checks.push(Check::Similarity {
            similarity: r,
            read: true,
            needed,
            diff,
        }),
        (true, _) => {}
    }
    // NOTE: the joined turns passed above (ModelCache's way); each turn must
    // also pass on its own, so that a long history cannot hide a changed
    // last question.
    let turns_needed = semantic && same && needs_turns(key);
    if let (true, Some(sims)) = (turns_needed, offered.turns) {
        checks.extend(turn_checks(&e.text, &key.text, sims, opts));
    }
    let pair_needed = semantic && same && asking.pair.is_some();
    if let (Some(needed), Some(outcome)) = (asking.pair.filter(|_| pair_needed), offered.pair) {
        checks.push(Check::Pair { outcome, needed });
    }
    let all = checks.iter().all(Check::passed);
    let pending = [
        (Stage::Read, by_reader && read.is_none()),
        (Stage::LongText, long_needed && offered.long.is_none()),
        (Stage::Turns, turns_needed && offered.turns.is_none()),
        (Stage::Pair, pair_needed && offered.pair.is_none()),
    ]
    .into_iter()
    .find_map(|(stage, waits)| waits.then_some(stage));
    Verdict {
        served: all && pending.is_none(),
        needed,
        checks,
        awaits: pending.filter(|_| all),
        pending,
    }
}

/// Whether a request is judged turn by turn: it has more than one turn
/// compared by meaning.
pub fn needs_turns(key: &CacheKey) -> bool {
    crate::keying::meaning_turns(&key.text).len() > 1
}

/// The checks of each turn compared by meaning, given their similarities
/// in order: each needs what a text of its length needs, tiered by its own
/// word diff.
fn turn_checks(stored: &str, asked: &str, sims: &[f32], opts: &LookupOptions) -> Vec<Check> {
    let a = crate::keying::meaning_turns(stored);
    let b = crate::keying::meaning_turns(asked);
    if a.len() != b.len() || sims.len() != b.len() {
        return vec![Check::TurnCount {
            stored: a.len(),
            asked: b.len(),
        }];
    }
    a.iter()
        .zip(&b)
        .zip(sims)
        .enumerate()
        .map(|(index, ((x, y), &similarity))| {
            let diff = opts.verifier.enabled.then(|| verify::diff(x, y));
            Check::Turn {
                index,
                of: b.len(),
                similarity,
                needed: needed(y.split_whitespace().count(), opts, diff.as_ref()),
                diff,
            }
        })
        .collect()
}

/// Whether the reader can be trusted with the spans that differ: each is
/// made of letters of the Basic Multilingual Plane (Chinese, Japanese,
/// Korean, Thai, Arabic... which a multilingual model's vocabulary covers),
/// and the marks written on them (a Devanagari vowel sign or virama).
/// An emoji, a symbol or a rare character may be unknown to the reader too,
/// and then its similarity would say as little as the embedding model's.
fn reader_reads(stored: &[String], asked: &[String]) -> bool {
    let mut left: Vec<&String> = asked.iter().collect();
    let mut differing = Vec::new();
    for s in stored {
        match left.iter().position(|a| *a == s) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => differing.push(s),
        }
    }
    differing.into_iter().chain(left).all(|span| {
        span.chars()
            .all(|c| c.is_whitespace() || (letter_or_mark(c) && u32::from(c) <= 0xFFFF))
    })
}

fn letter_or_mark(c: char) -> bool {
    c.is_alphabetic() || unicode_normalization::char::is_combining_mark(c)
}

/// Unseen spans for people: the first few, each cut short.
fn clip_spans(spans: &[String]) -> String {
    let shown: Vec<String> = spans
        .iter()
        .take(8)
        .map(|s| s.chars().take(24).collect())
        .collect();
    let more = if spans.len() > 8 { " …" } else { "" };
    format!("{}{more}", shown.join(" "))
}

/// The similarity the sentences of a long text's one edit need: a short
/// text's, tiered by the verifier.
pub fn needed_for_edit(stored: &str, probe: &str, opts: &LookupOptions) -> Needed {
    let diff = opts.verifier.enabled.then(|| verify::diff(stored, probe));
    // NOTE: the sentences are short texts: the short threshold.
    needed(0, opts, diff.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cache::{guards::GuardSet, types::Thresholds, verify::Verifier, writeback::row},
        keying::{key_for, Endpoint},
    };
    use serde_json::json;

    fn opts() -> LookupOptions {
        LookupOptions {
            thresholds: Thresholds {
                short: 0.90,
                long: 0.85,
                long_text_words: 5,
            },
            max_age: None,
            min_similarity: None,
            // NOTE: the long-text guard is the lookup's to run; its own test.
            guards: GuardSet {
                long_text: false,
                ..GuardSet::default()
            },
            verifier: Verifier::default(),
            calibration: 0.0,
        }
    }

    /// `n` differing words, on both sides from two on (a rewording's shape).
    fn diff(n: usize) -> WordDiff {
        let w = |r: std::ops::Range<usize>| r.map(|i| format!("w{i}")).collect();
        WordDiff {
            stored_only: w(0..n.div_ceil(2)),
            probe_only: w(n.div_ceil(2)..n),
        }
    }

    #[test]
    fn what_a_candidate_needs_and_why() {
        let o = opts();
        let capped = LookupOptions {
            min_similarity: Some(0.97),
            ..o
        };
        let off = LookupOptions {
            verifier: Verifier {
                enabled: false,
                ..o.verifier
            },
            ..o
        };
        let calibrated = o.shifted(0.02);
        // (case, words, options, differing content words, needed, tier, long, capped)
        type Case<'a> = (
            &'a str,
            usize,
            &'a LookupOptions,
            Option<usize>,
            f32,
            Tier,
            bool,
            bool,
        );
        let cases: [Case<'_>; 12] = [
            (
                "exact: the short threshold",
                3,
                &o,
                None,
                0.90,
                Tier::Threshold,
                false,
                false,
            ),
            (
                "exact: the long threshold",
                9,
                &o,
                None,
                0.85,
                Tier::Threshold,
                true,
                false,
            ),
            (
                "same words go down",
                3,
                &o,
                Some(0),
                0.80,
                Tier::SameWords,
                false,
                false,
            ),
            (
                "a small edit goes up",
                3,
                &o,
                Some(1),
                0.94,
                Tier::SmallEdit,
                false,
                false,
            ),
            (
                "two words are small",
                3,
                &o,
                Some(2),
                0.94,
                Tier::SmallEdit,
                false,
                false,
            ),
            (
                "a rewording keeps it",
                3,
                &o,
                Some(3),
                0.90,
                Tier::Rewording,
                false,
                false,
            ),
            (
                "long, rewording",
                9,
                &o,
                Some(3),
                0.85,
                Tier::Rewording,
                true,
                false,
            ),
            (
                "the request's cap wins",
                3,
                &capped,
                Some(0),
                0.97,
                Tier::SameWords,
                false,
                true,
            ),
            (
                "the cap over a small edit",
                3,
                &capped,
                Some(1),
                0.97,
                Tier::SmallEdit,
                false,
                true,
            ),
            (
                "verifier off",
                3,
                &off,
                Some(0),
                0.90,
                Tier::Threshold,
                false,
                false,
            ),
            (
                "calibration moves the tier",
                3,
                &calibrated,
                Some(0),
                0.82,
                Tier::SameWords,
                false,
                false,
            ),
            (
                "calibration moves the base",
                9,
                &calibrated,
                Some(5),
                0.87,
                Tier::Rewording,
                true,
                false,
            ),
        ];
        for (name, words, opts, n, value, tier, long, cap) in cases {
            let d = n.map(diff);
            let got = needed(words, opts, d.as_ref());
            assert!((got.value - value).abs() < 1e-6, "{name}: {got:?}");
            assert_eq!(
                (got.tier, got.long, got.capped),
                (tier, long, cap),
                "{name}"
            );
        }
        // Three words on one side only: a restriction added, not a
        // rewording ("Can I cancel my order after it has shipped?").
        let added = WordDiff {
            stored_only: Vec::new(),
            probe_only: vec!["after".into(), "has".into(), "shipped".into()],
        };
        let got = needed(3, &o, Some(&added));
        assert_eq!((got.value, got.tier), (0.94, Tier::Added));
        assert!((needed(3, &calibrated, None).calibration - 0.02).abs() < 1e-6);
        // The lowest any candidate may need: the same-words tier.
        assert_eq!(floor(3, &o), 0.80);
        assert_eq!(floor(3, &off), 0.90);
        assert_eq!(floor(3, &capped), 0.97);
        // Moved from verify's tests: a tenant threshold of 0.9.
        let at = |t: f32, d: &WordDiff, v: Verifier| {
            let o = LookupOptions {
                thresholds: Thresholds {
                    short: t,
                    ..o.thresholds
                },
                verifier: v,
                ..o
            };
            needed(1, &o, Some(d)).value
        };
        let v = Verifier::default();
        assert_eq!(at(0.9, &diff(1), v), 0.94);
        assert_eq!(at(0.9, &WordDiff::default(), v), 0.80);
        let off_v = Verifier {
            enabled: false,
            ..v
        };
        assert_eq!(at(0.9, &diff(1), off_v), 0.9);
    }

    fn key(q: &str) -> CacheKey {
        key_for(
            Endpoint::Chat,
            &json!({"model": "m", "messages": [{"role": "user", "content": q}]}),
        )
        .expect("a chat body keys")
    }

    fn entry(tenant: &str, stored: &CacheKey, now: i64) -> Entry {
        row(
            tenant,
            stored,
            "{}".into(),
            None,
            now - 10_000,
            Duration::from_secs(60),
            Origin::Proxy,
        )
        .to_entry(7, 0)
    }

    fn failed(v: &Verdict) -> Vec<&'static str> {
        v.checks
            .iter()
            .filter(|c| !c.passed())
            .map(Check::name)
            .collect()
    }

    #[test]
    fn each_check_can_refuse_a_candidate_and_says_which() {
        let now = 1_000_000_000;
        let o = opts();
        let young = LookupOptions {
            max_age: Some(Duration::from_secs(5)),
            ..o
        };
        let asked = key("How do I reverse a list in Python?");
        let same = entry("t", &asked, now);
        let reworded = entry("t", &key("how to reverse a Python list"), now);
        let numbers = entry("t", &key("How do I reverse 3 lists in Python?"), now);
        let other_model = {
            let mut e = same.clone();
            e.partition = "other".into();
            e.model = "m2".into();
            e
        };
        let expired = Entry {
            expires_at: now - 1,
            ..same.clone()
        };
        let api = Entry {
            origin: Origin::Api,
            ..same.clone()
        };
        let other_tenant = Entry {
            tenant: "u".into(),
            ..same.clone()
        };
        // (case, entry, kind, similarity, options, origin, reported wrong, served, failed checks)
        type Case<'a> = (
            &'a str,
            &'a Entry,
            HitKind,
            f32,
            &'a LookupOptions,
            Option<Origin>,
            Option<f32>,
            bool,
            &'a [&'a str],
        );
        let cases: [Case<'_>; 12] = [
            (
                "an exact hit",
                &same,
                HitKind::Exact,
                1.0,
                &o,
                None,
                None,
                true,
                &[],
            ),
            (
                "a close rewording",
                &reworded,
                HitKind::Semantic,
                0.93,
                &o,
                None,
                None,
                true,
                &[],
            ),
            (
                "too far",
                &reworded,
                HitKind::Semantic,
                0.5,
                &o,
                None,
                None,
                false,
                &["similarity"],
            ),
            (
                "a number differs",
                &numbers,
                HitKind::Semantic,
                0.99,
                &o,
                None,
                None,
                false,
                &["numbers"],
            ),
            (
                "another model",
                &other_model,
                HitKind::Semantic,
                0.99,
                &o,
                None,
                None,
                false,
                &["partition"],
            ),
            (
                "another tenant",
                &other_tenant,
                HitKind::Exact,
                1.0,
                &o,
                None,
                None,
                false,
                &["partition"],
            ),
            (
                "expired",
                &expired,
                HitKind::Exact,
                1.0,
                &o,
                None,
                None,
                false,
                &["fresh"],
            ),
            (
                "older than max-age",
                &same,
                HitKind::Exact,
                1.0,
                &young,
                None,
                None,
                false,
                &["max_age"],
            ),
            (
                "API entries only",
                &same,
                HitKind::Exact,
                1.0,
                &o,
                Some(Origin::Api),
                None,
                false,
                &["origin"],
            ),
            (
                "an API entry",
                &api,
                HitKind::Exact,
                1.0,
                &o,
                Some(Origin::Api),
                None,
                true,
                &[],
            ),
            (
                "reported wrong nearby",
                &reworded,
                HitKind::Semantic,
                0.93,
                &o,
                None,
                Some(0.95),
                false,
                &["feedback"],
            ),
            (
                "two reasons",
                &expired,
                HitKind::Semantic,
                0.2,
                &o,
                None,
                None,
                false,
                &["fresh", "similarity"],
            ),
        ];
        for (name, e, kind, similarity, opts, origin, wrong, served, fails) in cases {
            let asking = Asking {
                tenant: "t",
                key: &asked,
                opts,
                origin,
                now,
                unseen: None,
                pair: None,
                reader: false,
            };
            let offered = Offered {
                entry: e,
                similarity,
                kind,
                reported_wrong: wrong,
                long: None,
                unseen: None,
                turns: None,
                pair: None,
                read: None,
            };
            let v = judge(&asking, &offered);
            assert_eq!(v.served, served, "{name}: {v:?}");
            assert_eq!(failed(&v), fails, "{name}");
            assert!(
                v.awaits.is_none(),
                "{name}: short single questions need no model stage"
            );
            // Pure: the same inputs, the same verdict.
            assert_eq!(judge(&asking, &offered), v, "{name}");
            // Every check can be said to people.
            assert!(v.checks.iter().all(|c| !c.describe().is_empty()), "{name}");
        }
    }

    #[test]
    fn a_semantic_candidate_of_a_long_text_waits_for_the_long_text_guard() {
        let now = 1_000_000_000;
        let o = LookupOptions {
            guards: GuardSet {
                long_text: true,
                window_words: 4,
                ..GuardSet::default()
            },
            ..opts()
        };
        let asked = key("Summarise this report about the quarterly sales figures please");
        let stored = entry("t", &asked, now);
        let asking = Asking {
            tenant: "t",
            key: &asked,
            opts: &o,
            origin: None,
            now,
            unseen: None,
            pair: None,
            reader: false,
        };
        let offered = Offered {
            entry: &stored,
            similarity: 0.99,
            kind: HitKind::Semantic,
            reported_wrong: None,
            long: None,
            unseen: None,
            turns: None,
            pair: None,
            read: None,
        };
        assert!(needs_long_text(&asking, &stored, HitKind::Semantic));
        assert!(!needs_long_text(&asking, &stored, HitKind::Exact));
        let waiting = judge(&asking, &offered);
        assert!(
            waiting.awaits == Some(Stage::LongText) && !waiting.served,
            "{waiting:?}"
        );
        for passed in [true, false] {
            let long = LongCheck {
                passed,
                detail: "compared".into(),
            };
            let v = judge(
                &asking,
                &Offered {
                    long: Some(&long),
                    ..offered
                },
            );
            assert_eq!((v.served, v.awaits), (passed, None));
            assert_eq!(failed(&v), if passed { vec![] } else { vec!["long_text"] });
        }
        // A candidate that fails anything else does not wait for it.
        let far = judge(
            &asking,
            &Offered {
                similarity: 0.1,
                ..offered
            },
        );
        assert!(far.awaits.is_none() && !far.served);
        assert_eq!(
            far.pending,
            Some(Stage::LongText),
            "a dry run still runs it"
        );
    }

    #[test]
    fn text_the_model_cannot_see_must_be_the_same() {
        let now = 1_000_000_000;
        let o = opts();
        let asked = key("如何上传文件到服务器？");
        let stored = entry("t", &asked, now);
        let (mine, other) = (vec!["传".to_string()], vec!["载".to_string()]);
        // (case, the request's unseen spans, the entry's, served, failed checks)
        type Case<'a> = (
            &'a str,
            Option<&'a [String]>,
            Option<&'a [String]>,
            bool,
            &'a [&'a str],
        );
        let cases: [Case<'_>; 4] = [
            (
                "other unseen spans",
                Some(&mine),
                Some(&other),
                false,
                &["unseen_text"],
            ),
            ("the same unseen spans", Some(&mine), Some(&mine), true, &[]),
            ("none on either side", Some(&[]), Some(&[]), true, &[]),
            ("a model that reads it all", None, None, true, &[]),
        ];
        for (name, a, b, served, fails) in cases {
            let asking = Asking {
                tenant: "t",
                key: &asked,
                opts: &o,
                origin: None,
                now,
                unseen: a,
                pair: None,
                reader: false,
            };
            let v = judge(
                &asking,
                &Offered {
                    entry: &stored,
                    similarity: 0.999,
                    kind: HitKind::Semantic,
                    reported_wrong: None,
                    long: None,
                    unseen: b,
                    turns: None,
                    pair: None,
                    read: None,
                },
            );
            assert_eq!(v.served, served, "{name}: {v:?}");
            assert_eq!(failed(&v), fails, "{name}");
            let unseen = v.checks.iter().find(|c| c.name() == "unseen_text");
            assert_eq!(unseen.is_some(), a.is_some(), "{name}");
            assert!(unseen.is_none_or(|c| !c.describe().is_empty()));
        }
    }

    #[test]
    fn the_reader_judges_text_the_model_cannot_see() {
        let now = 1_000_000_000;
        let o = opts();
        let asked = key("怎么修改我的密码？");
        let stored = entry("t", &key("我的密码怎么修改？"), now);
        let (mine, other) = (vec!["改".to_string()], vec!["码".to_string()]);
        let asking = Asking {
            tenant: "t",
            key: &asked,
            opts: &o,
            origin: None,
            now,
            unseen: Some(&mine),
            pair: None,
            reader: true,
        };
        let offered = Offered {
            entry: &stored,
            similarity: 0.999,
            kind: HitKind::Semantic,
            reported_wrong: None,
            long: None,
            unseen: Some(&other),
            turns: None,
            pair: None,
            read: None,
        };
        // Before the reader: nothing to judge the similarity by, so it waits
        // (and the embedding model's 0.999 is never asked).
        let waiting = judge(&asking, &offered);
        assert_eq!((waiting.served, waiting.awaits), (false, Some(Stage::Read)));
        assert!(waiting.checks.iter().all(|c| c.name() != "similarity"));
        // The reader's similarity decides, against the reader's thresholds
        // (the same content words in another order: 0.93 by default).
        let r = o.verifier.reader;
        let cases: [(&str, f32, bool, &[&str]); 4] = [
            ("the reader finds them alike", 0.999, true, &[]),
            ("just over its threshold", r.same_words_threshold, true, &[]),
            ("the reader finds them apart", 0.90, false, &["similarity"]),
            ("the reader failed", f32::NAN, false, &["reader_failed"]),
        ];
        for (name, read, served, fails) in cases {
            let v = judge(
                &asking,
                &Offered {
                    read: Some(read),
                    ..offered
                },
            );
            assert_eq!(v.served, served, "{name}: {v:?}");
            assert_eq!(failed(&v), fails, "{name}");
            assert_eq!(v.awaits, None, "{name}");
            let sim = v.checks.iter().find(|c| c.name() == "similarity");
            assert!(
                sim.is_none_or(|c| c.describe().starts_with("the reader's")),
                "{name}"
            );
            assert!(v.checks.iter().all(|c| !c.describe().is_empty()), "{name}");
        }
        // A candidate that fails a guard never waits for the reader.
        let (five, eight) = (
            key("如何上传5个文件？"),
            entry("t", &key("如何上传8个文件？"), now),
        );
        let v = judge(
            &Asking {
                key: &five,
                ..asking
            },
            &Offered {
                entry: &eight,
                ..offered
            },
        );
        assert_eq!((v.served, v.awaits), (false, None));
        assert_eq!(failed(&v), ["numbers"]);
        // NOTE: the same spans need no reader; without one, they must be equal.
        let same = judge(
            &asking,
            &Offered {
                unseen: Some(&mine),
                ..offered
            },
        );
        assert_eq!(same.awaits, None);
        let alone = judge(
            &Asking {
                reader: false,
                ..asking
            },
            &offered,
        );
        assert_eq!(failed(&alone), ["unseen_text"]);
        // Spans the reader may not know either (an emoji, a symbol) are not
        // its to judge: they must be the same.
        let (melting, crying) = (vec!["🫠".to_string()], vec!["😭".to_string()]);
        let emoji = judge(
            &Asking {
                unseen: Some(&melting),
                ..asking
            },
            &Offered {
                unseen: Some(&crying),
                ..offered
            },
        );
        assert_eq!((emoji.awaits, failed(&emoji)), (None, vec!["unseen_text"]));
        // Only the spans that differ count: a shared emoji beside differing
        // Chinese characters still goes to the reader.
        let (a, b) = (
            vec!["🫠".to_string(), "改".to_string()],
            vec!["码".to_string(), "🫠".to_string()],
        );
        let shared = judge(
            &Asking {
                unseen: Some(&a),
                ..asking
            },
            &Offered {
                unseen: Some(&b),
                ..offered
            },
        );
        assert_eq!(shared.awaits, Some(Stage::Read));
        // Words the model only spells go to the reader too, with the marks
        // written on their letters (a Devanagari virama).
        let (cancel, renew) = (
            vec!["रद्द".to_string(), "करूं".to_string()],
            vec!["नवीनीकृत".to_string(), "करूं".to_string()],
        );
        let hindi = judge(
            &Asking {
                unseen: Some(&cancel),
                ..asking
            },
            &Offered {
                unseen: Some(&renew),
                ..offered
            },
        );
        assert_eq!(hindi.awaits, Some(Stage::Read));
    }

    fn chat(turns: &[&str]) -> CacheKey {
        let messages: Vec<_> = turns
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                let user = json!({"role": "user", "content": t});
                let answer = json!({"role": "assistant", "content": format!("answer {i}")});
                if i + 1 < turns.len() {
                    vec![user, answer]
                } else {
                    vec![user]
                }
            })
            .collect();
        key_for(Endpoint::Chat, &json!({"model": "m", "messages": messages}))
            .expect("a chat body keys")
    }

    #[test]
    fn each_turn_must_pass_on_its_own() {
        let now = 1_000_000_000;
        let o = opts();
        let asked = chat(&["Load the file sales.csv", "Plot it as a pie chart"]);
        let stored = entry(
            "t",
            &chat(&["Load the file sales.csv", "Plot it as a bar chart"]),
            now,
        );
        let single = entry("t", &key("Plot it as a bar chart"), now);
        let asking = Asking {
            tenant: "t",
            key: &asked,
            opts: &o,
            origin: None,
            now,
            unseen: None,
            pair: None,
            reader: false,
        };
        assert!(needs_turns(&asked) && !needs_turns(&key("one question")));
        let offered = Offered {
            entry: &stored,
            similarity: 0.99,
            kind: HitKind::Semantic,
            reported_wrong: None,
            long: None,
            unseen: None,
            turns: None,
            pair: None,
            read: None,
        };
        let waiting = judge(&asking, &offered);
        assert_eq!(
            (waiting.served, waiting.awaits),
            (false, Some(Stage::Turns))
        );
        // (case, each turn's similarity, served, failed checks)
        let cases: [(&str, &[f32], bool, &[&str]); 5] = [
            ("the last turn changed", &[1.0, 0.93], false, &["turn"]),
            ("both near enough", &[1.0, 0.97], true, &[]),
            ("an earlier turn changed", &[0.5, 1.0], false, &["turn"]),
            (
                "a turn that could not be embedded",
                &[1.0, f32::NAN],
                false,
                &["turn"],
            ),
            ("turns that do not line up", &[], false, &["turn_count"]),
        ];
        for (name, sims, served, fails) in cases {
            let v = judge(
                &asking,
                &Offered {
                    turns: Some(sims),
                    ..offered
                },
            );
            assert_eq!(v.served, served, "{name}: {v:?}");
            assert_eq!(failed(&v), fails, "{name}");
            assert!(v.awaits.is_none(), "{name}");
            assert!(v.checks.iter().all(|c| !c.describe().is_empty()), "{name}");
        }
        // The changed last turn is one word: a small edit, judged alone.
        let v = judge(
            &asking,
            &Offered {
                turns: Some(&[1.0, 0.93]),
                ..offered
            },
        );
        let last = v.checks.iter().rev().find(|c| c.name() == "turn");
        assert!(
            matches!(last, Some(Check::Turn { index: 1, of: 2, needed, .. }) if needed.tier == Tier::SmallEdit),
            "{last:?}"
        );
        // A single question is judged as one text, with no turn stage.
        let one = judge(
            &Asking {
                key: &key("Plot it as a pie chart"),
                ..asking
            },
            &Offered {
                entry: &single,
                ..offered
            },
        );
        assert!(one.awaits.is_none() && one.checks.iter().all(|c| c.name() != "turn"));
    }

    #[test]
    fn the_pair_model_runs_last_and_no_score_is_a_miss() {
        let now = 1_000_000_000;
        let o = opts();
        let asked = key("How do I reverse a list in Python?");
        let stored = entry("t", &key("how to reverse a Python list"), now);
        let asking = Asking {
            tenant: "t",
            key: &asked,
            opts: &o,
            origin: None,
            now,
            unseen: None,
            pair: Some(0.5),
            reader: false,
        };
        let offered = Offered {
            entry: &stored,
            similarity: 0.95,
            kind: HitKind::Semantic,
            reported_wrong: None,
            long: None,
            unseen: None,
            turns: None,
            pair: None,
            read: None,
        };
        let waiting = judge(&asking, &offered);
        assert_eq!((waiting.served, waiting.awaits), (false, Some(Stage::Pair)));
        let low = judge(
            &asking,
            &Offered {
                similarity: 0.2,
                ..offered
            },
        );
        assert_eq!(
            (low.awaits, low.pending),
            (None, Some(Stage::Pair)),
            "a candidate that failed does not wait for the model; a dry run still asks it"
        );
        // (case, outcome, served, failed checks)
        let cases = [
            ("a high score", PairOutcome::Scored(0.9), true, "-"),
            ("a low score", PairOutcome::Scored(0.1), false, "pair_model"),
            (
                "a timeout",
                PairOutcome::Failed(PairFailure::Timeout),
                false,
                "pair_model_timeout",
            ),
            (
                "busy",
                PairOutcome::Failed(PairFailure::Busy),
                false,
                "pair_model_busy",
            ),
            (
                "an error",
                PairOutcome::Failed(PairFailure::Error),
                false,
                "pair_model_error",
            ),
        ];
        for (name, outcome, served, fails) in cases {
            let v = judge(
                &asking,
                &Offered {
                    pair: Some(outcome),
                    ..offered
                },
            );
            assert_eq!(v.served, served, "{name}: {v:?}");
            assert_eq!(failed(&v).first().copied().unwrap_or("-"), fails, "{name}");
            assert!(v.checks.iter().all(|c| !c.describe().is_empty()), "{name}");
        }
        // Without a pair model, nothing waits for one; an exact hit never does.
        let none = judge(
            &Asking {
                pair: None,
                ..asking
            },
            &offered,
        );
        assert!(none.served && none.awaits.is_none());
        let exact = judge(
            &asking,
            &Offered {
                kind: HitKind::Exact,
                similarity: 1.0,
                ..offered
            },
        );
        assert!(exact.awaits.is_none());
    }
}
