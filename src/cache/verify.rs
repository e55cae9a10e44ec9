//! The verifier: a second look at a semantic candidate, word by word, that
//! decides which similarity it needs.
//!
//! Owns the lexical comparison of a stored question and a probe: the content
//! words of each (without function words and fillers, word forms folded,
//! one-letter typos forgiven) that the other lacks. Measured on the dev set,
//! such a count separates what one cosine cannot:
//! - no content word differs: a rewording, a typo, a case change. On the
//!   dev set every must-miss pair of this kind over 0.75 was one the guards
//!   stop (a changed number, a swapped direction);
//! - one or two differ: the shape of an entity swap or an added restriction
//!   ("list" for "string", "extended warranty"). These need near-identity;
//! - more differ, on both sides: a paraphrase, judged by the tenant's
//!   threshold. More on one side only is an added (or dropped)
//!   restriction, judged like a small edit.
//!
//! It must never make a candidate from another partition or one that failed
//! a guard hit: it only chooses the threshold.

use std::collections::HashSet;

// NOTE: the verifier's thresholds are settings, so their type is config's.
pub use crate::config::Verifier;

use super::lexicon::{group_name, one_edit};

/// How a candidate differs from the probe, word by word.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WordDiff {
    /// Content words of the stored question the probe lacks.
    pub stored_only: Vec<String>,
    /// Content words of the probe the stored question lacks.
    pub probe_only: Vec<String>,
}

impl WordDiff {
    /// How many content words differ.
    pub fn count(&self) -> usize {
        self.stored_only.len() + self.probe_only.len()
    }

    /// Whether only one side has content words the other lacks. Runs of
    /// Chinese or Japanese characters do not count: without a dictionary
    /// they are not words, and a run only one side has is as often grammar
    /// ("忘れてしまった場合は" for "忘れました") as an added restriction.
    pub fn one_sided(&self) -> bool {
        let spaced = |v: &[String]| v.iter().any(|w| !w.chars().any(is_cjk));
        (self.stored_only.is_empty() != self.probe_only.is_empty())
            && (spaced(&self.stored_only) || spaced(&self.probe_only))
    }

    /// For people: `list / string`.
    pub fn describe(&self) -> String {
        let side = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(" ")
            }
        };
        format!("{} / {}", side(&self.stored_only), side(&self.probe_only))
    }
}

// NOTE: function words and fillers that reword a question without changing
// what it asks. Lower case; compared after the word forms are folded. The
// question words that name the kind of answer (who, when, where, why) are
// content: "Who created it?" and "When was it created?" share every other
// word.
const SKIP: &[&str] = &[
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "do",
    "does",
    "did",
    "i",
    "you",
    "he",
    "she",
    "it",
    "we",
    "they",
    "me",
    "my",
    "your",
    "our",
    "their",
    "its",
    "this",
    "that",
    "these",
    "those",
    "what",
    "which",
    "whom",
    "whose",
    "how",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "to",
    "of",
    "in",
    "on",
    "at",
    "for",
    "with",
    "by",
    "from",
    "as",
    "about",
    "into",
    "over",
    "than",
    "then",
    "so",
    "and",
    "or",
    "but",
    "if",
    "yes",
    "please",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "there",
    "here",
    "just",
    "quick",
    "question",
    "tell",
    "explain",
    "way",
    "also",
    "get",
    "got",
    "use",
    "using",
    "make",
    "made",
    "need",
    "want",
    "like",
    "know",
    "let",
    "s",
    "t",
    "ll",
    "re",
    "ve",
    "d",
    "m",
    "any",
    "some",
    "all",
    "much",
    "many",
    "very",
    "really",
    "kind",
    "help",
    "give",
    "possible",
    "exactly",
    "actually",
    "simply",
    "basically",
    "okay",
    "ok",
    "dear",
    "im",
    "whats",
    "hows",
    "lets",
    "thats",
    "theres",
    "it's",
    "what's",
    "i'm",
    "how's",
    "let's",
    "that's",
    "there's",
    "don't",
    "can't",
    "hiya",
    "cheers",
    "sorry",
    "bother",
    "pls",
    "plz",
    "kindly",
    "advance",
];

/// A word's stem for comparison: an English inflection (`-s`, `-es`,
/// `-ies`, `-ed`, `-ing`, `-ly`) taken off, and a final silent `e` with it,
/// so that `hole` and `holes`, `make` and `making`, `city` and `cities`
/// compare equal. Only a stem of three letters or more is taken.
fn fold(word: &str) -> String {
    let n = word.chars().count();
    if n > 4 && word.ends_with("ies") {
        return format!("{}y", &word[..word.len() - 3]);
    }
    let mut stem = word;
    for suffix in ["ing", "ed", "es", "s", "ly"] {
        if n > suffix.len() + 2 && word.ends_with(suffix) {
            stem = &word[..word.len() - suffix.len()];
            break;
        }
    }
    // NOTE: `-es` after anything but a sibilant is `-e` + `-s` (`holes`):
    // dropping a final `e` from every stem makes both spellings one.
    match stem.strip_suffix('e') {
        Some(s) if s.chars().count() >= 3 && !s.ends_with('e') => s.to_string(),
        _ => stem.to_string(),
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}')
}

/// The user turns of a ModelCache key text (`role###content|||…`), joined
/// as the key builder joins them for embedding: the words the verifier
/// compares, and what feedback embeds for a reported probe.
pub(crate) fn user_text(key_text: &str) -> String {
    let turns: Vec<&str> = key_text.split("|||").collect();
    let user: Vec<&str> = turns
        .iter()
        .filter_map(|t| t.strip_prefix("user###"))
        .collect();
    if user.is_empty() {
        key_text.to_string()
    } else {
        user.join("\n")
    }
}

fn words(key_text: &str) -> Vec<String> {
    let text = user_text(key_text).to_lowercase().replace('’', "'");
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        // NOTE: a mark written on a letter (a Devanagari virama) is part of
        // its word.
        let mark = unicode_normalization::char::is_combining_mark(c);
        if c.is_alphanumeric() && !is_cjk(c) || (c == '\'' || mark) && !cur.is_empty() {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if is_cjk(c) {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The form a word is compared in: a unit, language or programming
/// language by its group's name (`km` = `kilometers`), else the word with
/// its ending folded.
fn compared(word: &str) -> String {
    group_name(word).map_or_else(|| fold(word), str::to_string)
}

/// The content words of `these` that `other` lacks. Chinese and Japanese
/// are written without spaces, so each of their characters is a token: a
/// run of missing characters side by side is one word ("晴れ" for "雨" is
/// one word swapped, a small edit, not three).
fn missing_from(these: &[String], other: &[String]) -> Vec<String> {
    let folded: HashSet<String> = other.iter().map(|w| compared(w)).collect();
    let missing = |w: &String| {
        // NOTE: numbers are the numbers guard's; here they would only make
        // `1,250` and `1250` look like different words.
        if SKIP.contains(&w.as_str()) || w.chars().any(char::is_numeric) {
            return false;
        }
        let f = compared(w);
        // NOTE: a typo is judged on the words as written (`tire` and
        // `tyre`) and on their stems.
        let long = |w: &str| w.chars().count() >= 4;
        let typo_of_other = || {
            (long(&f) && folded.iter().any(|o| long(o) && one_edit(&f, o)))
                || (long(w) && other.iter().any(|o| long(o) && one_edit(w, o)))
        };
        !folded.contains(&f) && !typo_of_other()
    };
    let cjk = |w: &str| w.chars().next().is_some_and(is_cjk);
    let mut out: Vec<String> = Vec::new();
    let mut joins = false;
    for w in these {
        let m = missing(w);
        match out.last_mut() {
            Some(last) if m && joins && cjk(w) => last.push_str(w),
            _ if m => out.push(w.clone()),
            _ => {}
        }
        joins = m && cjk(w);
    }
    out
}

/// The content words that differ between a stored key text and a probe's.
pub fn diff(stored: &str, probe: &str) -> WordDiff {
    let (a, b) = (words(stored), words(probe));
    WordDiff {
        stored_only: missing_from(&a, &b),
        probe_only: missing_from(&b, &a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(a: &str, b: &str) -> usize {
        diff(&format!("user###{a}"), &format!("user###{b}")).count()
    }

    #[test]
    fn rewordings_typos_and_word_forms_are_no_difference() {
        assert_eq!(
            n(
                "How do I reverse a list in Python?",
                "how do i reverse a list in pyhton"
            ),
            0
        );
        assert_eq!(
            n(
                "How do I reverse a list in Python?",
                "Quick question: how can I reverse a list in Python?"
            ),
            0
        );
        assert_eq!(
            n(
                "What's the way to reverse a Python list?",
                "How do I reverse a list in Python?"
            ),
            0
        );
        assert_eq!(n("Sorting lists", "sort a list"), 0);
        // A plural, a past or a gerund of a word ending in a silent `e`.
        assert_eq!(
            n(
                "Explain what a black hole is.",
                "Explain what black holes are."
            ),
            0
        );
        assert_eq!(n("Which cities are largest?", "Which city is largest?"), 0);
        assert_eq!(n("Making bread", "bread, how to make it"), 0);
        assert_eq!(n("a based estimate", "base the estimate"), 0);
        assert_eq!(
            n(
                "How do I change a flat tire?",
                "How do I change a flat tyre?"
            ),
            0
        );
    }

    #[test]
    fn swaps_and_additions_are_small_edits() {
        let d = diff(
            "user###How do I reverse a list in Python?",
            "user###How do I reverse a string in Python?",
        );
        assert_eq!(d.describe(), "list / string");
        assert_eq!(
            n(
                "Does the warranty cover water damage?",
                "Does the extended warranty cover water damage?"
            ),
            1
        );
        // A word of Chinese or Japanese is a run of characters.
        let d = diff(
            "user###この文章を英語に翻訳してください：今日は雨です。",
            "user###この文章を英語に翻訳してください：今日は晴れです。",
        );
        assert_eq!((d.describe().as_str(), d.count()), ("雨 / 晴れ", 2));
        let d = diff(
            "user###如何上传文件到服务器？",
            "user###如何从服务器下载文件？",
        );
        assert_eq!(d.describe(), "上传 到 / 从 下载");
        let d = diff(
            "user###मैं सदस्यता कैसे रद्द करूं?",
            "user###मैं सदस्यता कैसे नवीनीकृत करूं?",
        );
        assert_eq!(d.describe(), "रद्द / नवीनीकृत");
        // The question word names the kind of answer.
        let d = diff("user###Who created it?", "user###When was it created?");
        assert_eq!(d.describe(), "who / when");
        // Words on one side only: an added restriction.
        let d = diff(
            "user###Can I cancel my order?",
            "user###Can I cancel my order after it has shipped?",
        );
        assert!(d.one_sided() && d.count() == 3, "{d:?}");
        assert!(!diff("user###What causes rain?", "user###Why does it rain?").one_sided());
        let d = diff(
            "user###パスワードを忘れました。どうすればいいですか？",
            "user###パスワードを忘れてしまった場合はどうすればよいですか？",
        );
        assert!(!d.one_sided(), "{d:?}");
        // NOTE: the thresholds these diffs need are judge's (judge::tests).
    }

    #[test]
    fn units_and_languages_compare_by_name_and_numbers_not_at_all() {
        assert_eq!(
            n(
                "Convert 100 kilometers to miles.",
                "convert 100 km to miles"
            ),
            0
        );
        assert_eq!(n("Write it in JavaScript", "write it in js"), 0);
        assert_eq!(
            n("10000円は何ドルですか？", "１００００円は何ドルですか？"),
            0
        );
        assert_eq!(
            n(
                "How do I apply for a loan?",
                "Hiya, how do I apply for a loan? Thanks in advance"
            ),
            0
        );
    }

    #[test]
    fn only_user_turns_are_compared() {
        let a = "system###You are terse.|||user###What is Rust?";
        let b = "system###You are verbose.|||user###What is Rust?";
        assert_eq!(diff(a, b).count(), 0);
    }

    #[test]
    fn edits() {
        assert!(one_edit("python", "pyhton"));
        assert!(one_edit("colour", "color"));
        assert!(!one_edit("list", "lost1"));
        assert!(!one_edit("austria", "australia"));
    }
}
