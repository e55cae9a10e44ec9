//! The text every guard reads: a stored question or a probe, lower-cased,
//! full-width forms folded, split into tokens.
//!
//! Owns the tokenisation the guards share ([`Text::new`]) and the lookups
//! more than one guard asks of it: whether a word or one of its forms occurs,
//! which groups of a word list it names (exactly, or forgiving a typo), and
//! how such a set reads in a detail. A guard adds the methods only it needs
//! in its own file. It must never import a guard, nor decide that two texts
//! differ: that is each guard's to say.

use std::collections::{BTreeSet, HashSet};

use crate::cache::lexicon::one_edit;
use crate::cache::lexicon::Group;
use crate::cache::lexicon::SUFFIXES;
use crate::embed::blind::fold_width as fold;

/// A text prepared for the guards: lower-cased, full-width forms folded,
/// split into tokens.
pub(super) struct Text {
    /// The whole text, lower-cased and folded, turns joined.
    pub(super) lower: String,
    /// The words (letters, digits and apostrophes) and CJK characters, in
    /// order.
    pub(super) tokens: Vec<String>,
    /// The tokens of each turn's content, the role left out.
    pub(super) turns: Vec<std::ops::Range<usize>>,
    /// Every token, and every word a token may be a form of.
    set: HashSet<String>,
}

/// Whether `c` is a kana, Han or Hangul character: one token, one word.
pub(super) fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}')
}

/// Appends the tokens of `s` (lower-cased and folded): words of letters,
/// digits and apostrophes, and each CJK character.
fn tokenize(s: &str, tokens: &mut Vec<String>) {
    let mut cur = String::new();
    for c in s.chars().map(fold).flat_map(char::to_lowercase) {
        if c.is_alphanumeric() && !is_cjk(c) || (c == '\'' || c == '’') && !cur.is_empty() {
            cur.push(if c == '’' { '\'' } else { c });
        } else {
            if !cur.is_empty() {
                tokens.push(std::mem::take(&mut cur));
            }
            if is_cjk(c) {
                tokens.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
}

impl Text {
    pub(super) fn new(s: &str) -> Text {
        // The ModelCache key text joins turns as `role###content|||…`.
        let plain = s.replace("|||", " \n ").replace("###", ": ");
        let lower: String = plain
            .chars()
            .map(fold)
            .flat_map(char::to_lowercase)
            .collect();
        let mut tokens = Vec::new();
        let mut turns = Vec::new();
        for part in s.split("|||") {
            // NOTE: the role is a token as before, but not the turn's.
            let content = match part.split_once("###") {
                Some((role, rest)) if !role.contains(char::is_whitespace) => {
                    tokenize(role, &mut tokens);
                    rest
                }
                _ => part,
            };
            let start = tokens.len();
            tokenize(content, &mut tokens);
            turns.push(start..tokens.len());
        }
        // Every word a token may be a form of: `enabling` is a form of
        // `enable` and `enabl`, `encryption` of `encrypt`; so that a lookup
        // of a group's word is one hash lookup.
        let mut set = HashSet::new();
        for t in &tokens {
            set.insert(t.clone());
            for s in SUFFIXES.iter().filter(|s| !s.is_empty()) {
                if let Some(base) = t.strip_suffix(s) {
                    if !base.is_empty() {
                        set.insert(base.to_string());
                        set.insert(format!("{base}e"));
                    }
                }
            }
        }
        Text {
            lower,
            tokens,
            turns,
            set,
        }
    }

    pub(super) fn has_word(&self, w: &str) -> bool {
        if w.chars().any(is_cjk) || !w.chars().all(|c| c.is_alphanumeric() || c == ' ') {
            // CJK words and symbols (°c, c++, .py, $) match as substrings,
            // bounded by non-alphanumerics for the Latin ones.
            return self.substring(w);
        }
        if w.contains(' ') {
            return self.substring(w);
        }
        // `enable` also matches `enabling`, `encrypt` `encryption`.
        self.set.contains(w)
    }

    fn substring(&self, w: &str) -> bool {
        let cjk = w.chars().any(is_cjk);
        let mut from = 0;
        while let Some(i) = self.lower[from..].find(w) {
            let start = from + i;
            let end = start + w.len();
            if cjk {
                return true;
            }
            let before = self.lower[..start].chars().next_back();
            let after = self.lower[end..].chars().next();
            let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
            let first_alnum = w.chars().next().is_some_and(char::is_alphanumeric);
            let last_alnum = w.chars().next_back().is_some_and(char::is_alphanumeric);
            if (!first_alnum || edge(before)) && (!last_alnum || edge(after)) {
                return true;
            }
            from = start + w.chars().next().map_or(1, char::len_utf8);
        }
        false
    }

    /// The names of the groups the text mentions.
    pub(super) fn members(&self, groups: &[Group]) -> BTreeSet<String> {
        groups
            .iter()
            .filter(|g| g.iter().any(|w| self.has_word(w)))
            .map(|g| g[0].to_string())
            .collect()
    }

    /// Like [`Text::members`], forgiving a one-letter typo in names of six
    /// letters or more ("pyhton").
    pub(super) fn members_fuzzy(&self, groups: &[Group]) -> BTreeSet<String> {
        groups
            .iter()
            .filter(|g| {
                g.iter().any(|w| {
                    self.has_word(w)
                        || w.chars().all(|c| c.is_ascii_alphabetic())
                            && self.tokens.iter().any(|t| typo(t, w))
                })
            })
            .map(|g| g[0].to_string())
            .collect()
    }
}

/// Whether two words of six letters or more are one typo apart.
pub(super) fn typo(a: &str, b: &str) -> bool {
    a.chars().count() >= 6 && b.chars().count() >= 6 && one_edit(a, b)
}

/// A set of group names as a detail shows it: joined, or `none`.
pub(super) fn show(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
