//! The negation guard: two texts must be negated alike, name the same
//! polarity words, and not take opposite sides of a pair.
//!
//! Owns what makes a text negated ("not", "can't", "without", "-free",
//! 不, ない …) and the comparison of the polarity groups ("enable" and
//! "disable", "ascending" and "descending") and of the pairs of opposites
//! ("within" and "after"), and of the question words ("how" and "why").
//! It must never fail a text that names one side of
//! a pair against one that names neither: silence is not the opposite.

use std::collections::HashSet;

use super::text::{show, Text};
use crate::cache::lexicon::Group;
use crate::cache::lexicon::OPPOSITES;
use crate::cache::lexicon::POLARITY;
use crate::cache::lexicon::QUESTION_VERBS;
use crate::cache::lexicon::QUESTION_WORDS;
use crate::cache::lexicon::QUESTION_WORDS_ALIKE;
use crate::cache::lexicon::{antonyms, Antonyms};

/// What differs in the negation, polarity or opposites of `a` and `b`, if
/// anything; and, formatted only when asked, what was compared.
pub(super) fn check(a: &Text, b: &Text) -> (Option<String>, impl FnOnce() -> String) {
    let (na, nb) = (a.negated(), b.negated());
    let (pa, pb) = (a.members(POLARITY), b.members(POLARITY));
    let diff = if na != nb {
        Some(format!(
            "negated: {} vs {}",
            if na { "yes" } else { "no" },
            if nb { "yes" } else { "no" }
        ))
    } else if pa != pb {
        Some(format!("polarity {} vs {}", show(&pa), show(&pb)))
    } else if let Some((x, y)) = a.opposite(b) {
        Some(format!("{x} vs {y}"))
    } else if let Some((x, y)) = a.antonym(b) {
        Some(format!("{x} vs {y}"))
    } else if let Some((x, y)) = a.other_question(b) {
        Some(format!("asks {x} vs {y}"))
    } else {
        None
    };
    (diff, || "same negation and polarity words".into())
}

/// Prefixes that negate the word they begin ("unsafe", "nonprofit"); "in-"
/// and "dis-" begin as many words that negate nothing ("inform",
/// "discover"), so their opposites come from the antonym list.
const NEGATING_PREFIXES: [&str; 2] = ["un", "non"];

/// Words that begin with a negating prefix and another word, but do not
/// negate it.
const NOT_PREFIXED: [&str; 1] = ["unless"];

impl Text {
    fn negated(&self) -> bool {
        const WORDS: [&str; 15] = [
            "not", "no", "non", "never", "without", "none", "nothing", "nobody", "neither", "nor",
            "cannot", "nunca", "sin", "ningún", "ninguna",
        ];
        const CJK: [&str; 7] = ["不", "没", "別", "别", "无法", "ない", "ません"];
        // NOTE: "gluten-free" is "without gluten".
        self.tokens
            .iter()
            .any(|t| WORDS.contains(&t.as_str()) || t.ends_with("n't"))
            || self.lower.contains("n't")
            || self.lower.contains("-free")
            || CJK.iter().any(|w| self.lower.contains(w))
    }

    /// Which question groups the text asks (an English question word
    /// followed by a verb or by "and" and another question word, or ending
    /// the text; "how come"; an accented Spanish one).
    fn asks(&self) -> Vec<bool> {
        let t = &self.tokens;
        let verb = |w: Option<&String>| {
            w.is_some_and(|w| QUESTION_VERBS.contains(&w.as_str()) || w.ends_with("n't"))
        };
        let asked = |q: &str| {
            if q.contains(' ') || !q.is_ascii() {
                return self.has_word(q);
            }
            let question = |w: Option<&String>| {
                w.is_some_and(|w| QUESTION_WORDS.iter().any(|g| g.contains(&w.as_str())))
            };
            let joined = |i: usize| {
                t.get(i).is_some_and(|w| w == "and" || w == "or") && question(t.get(i + 1))
            };
            // NOTE: "how's" is "how is"; "when and how did…" asks both; a
            // last word asks ("…, and why?").
            t.iter().enumerate().any(|(i, w)| {
                w == q && (verb(t.get(i + 1)) || joined(i + 1) || i + 1 == t.len())
                    || w.strip_suffix("'s") == Some(q)
            })
        };
        QUESTION_WORDS
            .iter()
            .map(|g| g.iter().any(|q| asked(q)))
            .collect()
    }

    /// A question word of each text that the other lacks ("how" and
    /// "why"), when each has one and they do not ask alike.
    fn other_question(&self, other: &Text) -> Option<(&'static str, &'static str)> {
        let (qa, qb) = (self.asks(), other.asks());
        let only = |x: &[bool], y: &[bool]| -> Vec<&'static str> {
            (0..x.len())
                .filter(|&i| x[i] && !y[i])
                .map(|i| QUESTION_WORDS[i][0])
                .collect()
        };
        let alike = |x: &str, y: &str| {
            QUESTION_WORDS_ALIKE
                .iter()
                .any(|&(p, q)| (p, q) == (x, y) || (q, p) == (x, y))
        };
        let (oa, ob) = (only(&qa, &qb), only(&qb, &qa));
        oa.iter()
            .flat_map(|&x| ob.iter().map(move |&y| (x, y)))
            .find(|&(x, y)| !alike(x, y))
    }

    /// A word of each text that the other lacks, the two of them opposites
    /// ("Is coffee good for you?" / "bad for you?", "when the sun sets" /
    /// "rises"), or one the other with a negating prefix ("safe" /
    /// "unsafe", "profit" / "nonprofit").
    fn antonym(&self, other: &Text) -> Option<(String, String)> {
        let table = antonyms();
        fn lemmas<'t>(table: &'static Antonyms, t: &'t Text) -> HashSet<&'t str> {
            t.tokens.iter().flat_map(|w| table.lemmas(w)).collect()
        }
        let (la, lb) = (lemmas(table, self), lemmas(table, other));
        let opposite = la.difference(&lb).find_map(|x| {
            table
                .of(x)
                .iter()
                .find(|y| lb.contains(**y) && !la.contains(**y))
                .map(|y| (x.to_string(), y.to_string()))
        });
        opposite.or_else(|| {
            let prefixed = |x: &HashSet<&str>, y: &HashSet<&str>| {
                x.difference(y).find_map(|w| {
                    let stem = NEGATING_PREFIXES
                        .iter()
                        .filter(|_| !NOT_PREFIXED.contains(w))
                        .find_map(|p| w.strip_prefix(p))
                        .filter(|s| s.chars().count() >= 4 && y.contains(s) && !x.contains(s))?;
                    Some((stem.to_string(), w.to_string()))
                })
            };
            prefixed(&la, &lb)
                .map(|(s, w)| (w, s))
                .or_else(|| prefixed(&lb, &la))
        })
    }

    /// A pair of opposites, one in each text and not the other.
    fn opposite(&self, other: &Text) -> Option<(&'static str, &'static str)> {
        OPPOSITES.iter().find_map(|(x, y)| {
            let has = |t: &Text, g: Group| g.iter().any(|w| t.has_word(w));
            let (ax, ay, bx, by) = (has(self, x), has(self, y), has(other, x), has(other, y));
            if ax && !ay && by && !bx {
                Some((x[0], y[0]))
            } else if ay && !ax && bx && !by {
                Some((y[0], x[0]))
            } else {
                None
            }
        })
    }
}
