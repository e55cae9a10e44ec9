//! The order guard: the same content words in an order that no single move
//! explains ask another thing ("Why did Alice sue Bob?" is not "Why did Bob
//! sue Alice?"; "founded in Spain, moved to France" is not "founded in
//! France, moved to Spain").
//!
//! Owns the comparison of the order of the content words the two texts
//! share, turn by turn. A paraphrase may move one phrase to or from an end
//! ("In Python, how do I …" for "How do I … in Python?") or one word past a
//! word or two ("a pytest unit test" for "a unit test in pytest"). Exchanging
//! two words or phrases that sit apart takes two moves, and moving a phrase
//! inside the text with both ends in place takes it to another role: that is
//! what changes who does what to whom. It counts breakpoints (neighbours in
//! one text that are not neighbours, in order, in the other, the two ends
//! included): one block move makes at most three. Numbers are words here (which word sits beside
//! which number); a word one typo or accent from a word of the other text,
//! or sharing its first six letters (a form of it), is that word; two words
//! joined by "and" or "or" in both texts may come in either order; a text
//! that asks about a symmetric relation ("the difference between A and B")
//! is not compared; documents are the long-text guard's. It must never fail
//! texts that share few words (a rewording is the threshold's to judge), nor
//! words that repeat in the same order.

use std::collections::{HashMap, HashSet};

use super::text::Text;
use crate::cache::lexicon::{one_edit, ORDER_SKIPS, QUESTION_WORDS};

/// At most this many content words of either text (or this share of them,
/// if more) may be missing from the other for the order to be compared:
/// beyond it the texts are a rewording, judged by the threshold.
const MAX_UNSHARED: usize = 2;
const MAX_UNSHARED_PERCENT: usize = 40;

/// One word moved inside a turn passes over at most this many words, itself
/// included (a compound reordered: "a pytest unit test").
const MAX_ONE_WORD_SPAN: usize = 3;

/// At least this many shared content words: fewer cannot be exchanged
/// apart from a neighbour swap.
const MIN_SHARED: usize = 3;

/// Whether the shared content words of `a` and `b` are in an order that one
/// block move cannot explain; and, formatted only when asked, what was
/// compared.
pub(super) fn check(a: &Text, b: &Text) -> (Option<String>, impl FnOnce() -> String) {
    (a.order_swap(b), || {
        "the shared words in the same order, or one phrase moved".into()
    })
}

/// A word as the order guard compares it: a plural or possessive folded.
fn form(w: &str) -> &str {
    let w = w.strip_suffix("'s").unwrap_or(w);
    match w.strip_suffix('s') {
        Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem,
        _ => w,
    }
}

/// Past this many content words a text is a document: the long-text guard
/// judges it.
const MAX_WORDS: usize = 64;

/// Words that ask about a symmetric relation. Not "between" ("between 1990
/// and 2000", "the road between A and B" name a direction as often as not),
/// nor "different" ("different from" is said of one thing).
const SYMMETRIC: [&str; 8] = [
    "vs",
    "versus",
    "difference",
    "differences",
    "differ",
    "differs",
    "compare",
    "comparison",
];

/// Words that join two words whose order does not matter ("horizontally
/// and vertically").
const COORDINATORS: [&str; 3] = ["and", "or", "&"];

/// Whether a token is a word of the order. Prepositions count ("the
/// capital of France" is not "France of the capital"), and so do numbers:
/// the numbers guard compares their values in order, this guard which words
/// sit beside them ("retired in 1987, died in 2004" is not "died in 1987,
/// retired in 2004"). Articles, possessives, pronouns and the auxiliaries a
/// question is built with are not, and neither are question words: their
/// place follows the sentence's form ("Which planet is the largest?" / "The
/// largest planet is which?"). A coordinator is a word only when it joins no
/// pair both texts share.
fn is_word(w: &str) -> bool {
    !ORDER_SKIPS.contains(&w) && !QUESTION_WORDS.iter().any(|g| g.contains(&w))
}

/// The shortest word (in characters) matched across the texts forgiving one
/// edit: a typo or an accent ("viseu" / "vişeu"), not another short word.
const MIN_FORGIVEN: usize = 5;

/// The shortest common beginning that makes two words forms of one word
/// ("entrevistaba" / "entrevistando").
const MIN_STEM: usize = 6;

/// Whether two words begin with the same [`MIN_STEM`] characters.
fn same_stem(x: &str, y: &str) -> bool {
    let (mut a, mut b) = (x.chars(), y.chars());
    (0..MIN_STEM).all(|_| matches!((a.next(), b.next()), (Some(p), Some(q)) if p == q))
}

/// `b` with each word that `a` lacks renamed to the word of `a`, missing
/// from `b`, that it is one edit from.
fn forgive_typos<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    let (in_a, in_b): (HashSet<&str>, HashSet<&str>) =
        (a.iter().copied().collect(), b.iter().copied().collect());
    let only_a: Vec<&str> = a
        .iter()
        .copied()
        .filter(|w| !in_b.contains(w) && w.chars().count() >= MIN_FORGIVEN)
        .collect();
    b.iter()
        .map(|&w| {
            if in_a.contains(w) || w.chars().count() < MIN_FORGIVEN {
                return w;
            }
            only_a
                .iter()
                .copied()
                .find(|x| one_edit(x, w) || same_stem(x, w))
                .unwrap_or(w)
        })
        .collect()
}

/// An unordered pair of words.
fn unordered<'a>(x: &'a str, y: &'a str) -> (&'a str, &'a str) {
    if x <= y {
        (x, y)
    } else {
        (y, x)
    }
}

impl Text {
    /// Whether the text asks about a symmetric relation ("the difference
    /// between A and B", "how does B differ from A", "compare A with B", "A
    /// vs B"), where the order of what is compared asks nothing.
    fn symmetric(&self) -> bool {
        self.tokens.iter().any(|w| SYMMETRIC.contains(&w.as_str()))
    }
}

/// The tokens the order reads: words and coordinators.
fn order_tokens(tokens: &[String]) -> Vec<&str> {
    tokens
        .iter()
        .map(String::as_str)
        .filter(|w| is_word(w) || COORDINATORS.contains(w))
        .collect()
}

/// The pairs of words joined by "and" or "or" ("a fruit or a
/// vegetable"), unordered.
fn coordinated(tokens: &[String]) -> HashSet<(&str, &str)> {
    order_tokens(tokens)
        .windows(3)
        .filter(|w| {
            COORDINATORS.contains(&w[1])
                && !COORDINATORS.contains(&w[0])
                && !COORDINATORS.contains(&w[2])
        })
        .map(|w| unordered(form(w[0]), form(w[2])))
        .collect()
}

/// The words in order, a list of numbers left out; two words joined by
/// "and" or "or" in both texts ("horizontally and vertically") put in
/// one order, and the coordinator left out.
fn content_words<'a>(tokens: &'a [String], both: &HashSet<(&'a str, &'a str)>) -> Vec<&'a str> {
    let t = order_tokens(tokens);
    let mut out: Vec<&str> = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if i + 2 < t.len() && COORDINATORS.contains(&t[i + 1]) {
            let pair = unordered(form(t[i]), form(t[i + 2]));
            if both.contains(&pair) {
                out.extend([pair.0, pair.1]);
                i += 3;
                continue;
            }
        }
        out.push(form(t[i]));
        i += 1;
    }
    // A list of numbers ("4, 8, 15 and 16") is the numbers guard's: it
    // may compare one as a set.
    let digits = |w: &str| w.chars().any(char::is_numeric);
    let numeric: Vec<bool> = (0..out.len())
        .map(|i| {
            digits(out[i])
                || COORDINATORS.contains(&out[i])
                    && i > 0
                    && digits(out[i - 1])
                    && out.get(i + 1).is_some_and(|w| digits(w))
        })
        .collect();
    let listed: Vec<bool> = (0..out.len())
        .map(|i| numeric[i] && (i > 0 && numeric[i - 1] || i + 1 < out.len() && numeric[i + 1]))
        .collect();
    out.into_iter()
        .zip(listed)
        .filter_map(|(w, l)| (!l).then_some(w))
        .collect()
}

impl Text {
    /// The shared words of each turn, exchanged, when one move cannot
    /// explain their order (turn by turn when the turns line up: a role
    /// word or a turn boundary is no word of the order).
    fn order_swap(&self, other: &Text) -> Option<String> {
        if self.symmetric() || other.symmetric() {
            return None;
        }
        if self.turns.len() != other.turns.len() {
            return swap_in(&self.tokens, &other.tokens);
        }
        let many = self.turns.len() > 1;
        self.turns
            .iter()
            .zip(&other.turns)
            .enumerate()
            .find_map(|(i, (ra, rb))| {
                let found = swap_in(&self.tokens[ra.clone()], &other.tokens[rb.clone()])?;
                Some(if many {
                    format!("turn {}: {found}", i + 1)
                } else {
                    found
                })
            })
    }
}

/// The shared words of `a` and `b`, exchanged, when one move cannot explain
/// their order.
fn swap_in(ta: &[String], tb: &[String]) -> Option<String> {
    let (ca, cb) = (coordinated(ta), coordinated(tb));
    let both: HashSet<(&str, &str)> = ca.intersection(&cb).copied().collect();
    let (a, b) = (content_words(ta, &both), content_words(tb, &both));
    let b = forgive_typos(&a, &b);
    if a.len() > MAX_WORDS || b.len() > MAX_WORDS {
        return None;
    }
    // NOTE: the k-th occurrence of a word in one text is its k-th in the
    // other; a word with no partner is left out of the order.
    let mut where_in_b: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, w) in b.iter().enumerate() {
        where_in_b.entry(w).or_default().push(i);
    }
    let mut used: HashMap<&str, usize> = HashMap::new();
    let mut pos = Vec::new();
    for w in &a {
        let k = used.entry(w).or_default();
        if let Some(&j) = where_in_b.get(w).and_then(|v| v.get(*k)) {
            pos.push(j);
            *k += 1;
        }
    }
    let shared = pos.len();
    let allowed = |n: usize| MAX_UNSHARED.max(n * MAX_UNSHARED_PERCENT / 100);
    if shared < MIN_SHARED
        || a.len() - shared > allowed(a.len())
        || b.len() - shared > allowed(b.len())
    {
        return None;
    }
    // The shared words' ranks in `b`, in `a`'s order.
    let mut sorted = pos.clone();
    sorted.sort_unstable();
    let rank: Vec<usize> = pos
        .iter()
        .filter_map(|p| sorted.binary_search(p).ok())
        .collect();
    let mut ends = Vec::with_capacity(rank.len() + 2);
    ends.push(0);
    ends.extend(rank.iter().map(|r| r + 1));
    ends.push(rank.len() + 1);
    let breakpoints = ends.windows(2).filter(|w| w[1] != w[0] + 1).count();
    // NOTE: one move passes when it takes a phrase to or from an end of
    // the turn ("In Python, how do I…"), or moves one word past a phrase
    // ("a unit test in pytest" / "a pytest unit test"); a phrase moved
    // inside, both ends in place, moves a role.
    let n = rank.len();
    let moved: Vec<usize> = (0..n).filter(|&i| rank[i] != i).collect();
    let inside = rank.first() == Some(&0) && rank.last() == Some(&(n - 1));
    let one_word = match (moved.first(), moved.last()) {
        (Some(&lo), Some(&hi)) => {
            // The moved span is two blocks exchanged: r words and the rest.
            let span = hi - lo + 1;
            let r = rank[lo].saturating_sub(lo);
            r.min(span.saturating_sub(r)) <= 1 && span <= MAX_ONE_WORD_SPAN
        }
        _ => true,
    };
    if breakpoints <= 3 && (!inside || one_word) {
        return None;
    }
    let shown = |v: Vec<&str>| v.join(" ");
    let in_b: Vec<&str> = {
        let mut v: Vec<(usize, &str)> = Vec::new();
        let mut used: HashMap<&str, usize> = HashMap::new();
        for w in &a {
            let k = used.entry(w).or_default();
            if let Some(&j) = where_in_b.get(w).and_then(|v| v.get(*k)) {
                v.push((j, w));
                *k += 1;
            }
        }
        v.sort_unstable();
        v.into_iter().map(|(_, w)| w).collect()
    };
    let in_a: Vec<&str> = {
        let mut used: HashMap<&str, usize> = HashMap::new();
        a.iter()
            .copied()
            .filter(|w| {
                let k = used.entry(w).or_default();
                let hit = where_in_b.get(w).is_some_and(|v| v.len() > *k);
                *k += usize::from(hit);
                hit
            })
            .collect()
    };
    Some(format!(
        "the same words in another order: \"{}\" vs \"{}\"",
        shown(in_a),
        shown(in_b)
    ))
}
