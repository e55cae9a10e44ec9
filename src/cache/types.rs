//! The words of the decision: what a lookup is asked with and what it finds.
//!
//! Owns the per-request lookup options (the tenant's thresholds, guards and
//! verifier, the request's own limits, the calibration applied) and a hit.
//! Plain data: it must never hold a rule (that is `judge`'s) or a reference
//! to the cache's state.

use std::{sync::Arc, time::Duration};

use crate::{config::Policy, store::Entry};

/// How a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// Same partition, same text.
    Exact,
    /// Same partition, similar text.
    Semantic,
}

/// A hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The entry served.
    pub entry: Arc<Entry>,
    /// Cosine similarity (1 for exact hits).
    pub similarity: f32,
    /// Exact or semantic.
    pub kind: HitKind,
}

/// The result of a lookup.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The hit, if any.
    pub hit: Option<Hit>,
    /// The request's embedding, reused by the write-back of a miss.
    pub embedding: Option<Vec<f32>>,
}

/// The similarity a semantic hit needs, from the tenant's policy.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// For texts of up to `long_text_words` words.
    pub short: f32,
    /// For longer texts.
    pub long: f32,
    /// Words above which a text is long.
    pub long_text_words: usize,
}

impl From<&Policy> for Thresholds {
    fn from(p: &Policy) -> Thresholds {
        Thresholds {
            short: p.threshold,
            long: p.long_threshold,
            long_text_words: p.long_text_words,
        }
    }
}

/// Per-request lookup options.
#[derive(Debug, Clone, Copy)]
pub struct LookupOptions {
    /// The tenant's thresholds.
    pub thresholds: Thresholds,
    /// Reject entries older than this (`Cache-Control: max-age`).
    pub max_age: Option<Duration>,
    /// A stricter threshold than the configured one.
    pub min_similarity: Option<f32>,
    /// The structural guards to run on semantic candidates.
    pub guards: crate::cache::guards::GuardSet,
    /// The verifier, which chooses each semantic candidate's threshold.
    pub verifier: crate::cache::verify::Verifier,
    /// How far the tenant's calibration has moved every threshold (already
    /// applied to the thresholds above; kept to say why).
    pub calibration: f32,
}

impl LookupOptions {
    /// Every threshold moved by `delta` (a calibration), each at most 1.
    pub fn shifted(&self, delta: f32) -> LookupOptions {
        let up = |t: f32| (t + delta).clamp(0.0, 1.0);
        let mut o = *self;
        o.thresholds.short = up(o.thresholds.short);
        o.thresholds.long = up(o.thresholds.long);
        o.verifier.same_words_threshold = up(o.verifier.same_words_threshold);
        o.verifier.small_edit_threshold = up(o.verifier.small_edit_threshold);
        let r = &mut o.verifier.reader;
        r.threshold = up(r.threshold);
        r.same_words_threshold = up(r.same_words_threshold);
        r.small_edit_threshold = up(r.small_edit_threshold);
        o.calibration += delta;
        o
    }

    /// The options a candidate judged by the reader is held to: the reader's
    /// thresholds in place of the embedding model's, tiered the same way
    /// (the long threshold never below the reader's).
    pub fn for_reader(&self) -> LookupOptions {
        let r = self.verifier.reader;
        let mut o = *self;
        o.thresholds.short = r.threshold;
        o.thresholds.long = o.thresholds.long.max(r.threshold);
        o.verifier.same_words_threshold = r.same_words_threshold;
        o.verifier.small_edit_threshold = r.small_edit_threshold;
        o
    }

    /// The options of a tenant's policy, with no per-request tightening.
    pub fn for_policy(p: &Policy) -> LookupOptions {
        LookupOptions {
            thresholds: p.into(),
            max_age: None,
            min_similarity: None,
            guards: p.guards,
            verifier: p.verifier,
            calibration: 0.0,
        }
    }
}
