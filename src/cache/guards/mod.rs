//! Structural guards: cheap, exact comparisons of a stored question and a
//! probe that an embedding cannot be trusted with.
//!
//! Owns five checks, each switchable per tenant: numbers and units, negation
//! and polarity words, programming languages and platforms, the natural
//! language, and the text beyond the embedding window. A guard fails only on
//! evidence that the two texts ask different things; it never makes a
//! candidate hit. It must stay allocation-light and free of I/O: it runs on
//! every semantic candidate that passes the threshold.

use std::collections::BTreeSet;

// NOTE: which guards run is a setting, so its type is config's.
pub use crate::config::GuardSet;

use super::lexicon::{
    one_edit, Group, CODE, FUNCTION_WORDS, LANGUAGES, OPPOSITES, ORDER_FREE, POLARITY, SUFFIXES,
    UNITS,
};

/// The outcome of one guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardResult {
    /// `numbers`, `negation`, `code`, `language` or `long_text`.
    pub name: &'static str,
    /// Whether the texts agree.
    pub passed: bool,
    /// What differed, or what was compared.
    pub detail: String,
}

/// Runs the enabled guards on a stored text and a probe. Returns whether all
/// passed, and each result when `detail` is set (else only failures are
/// counted, without formatting).
pub fn check(stored: &str, probe: &str, set: &GuardSet, detail: bool) -> (bool, Vec<GuardResult>) {
    let a = Text::new(stored);
    let b = Text::new(probe);
    let mut ok = true;
    let mut out = Vec::new();
    let mut push = |name: &'static str, x: Option<String>, what: &dyn Fn() -> String| {
        let passed = x.is_none();
        ok &= passed;
        if detail {
            out.push(GuardResult {
                name,
                passed,
                detail: x.unwrap_or_else(what),
            });
        }
    };
    if set.numbers {
        let (na, nb) = (a.numbers(), b.numbers());
        let (ua, ub) = (a.units(), b.units());
        let (oa, ob) = (a.operators(), b.operators());
        let diff = if na != nb {
            Some(format!("numbers {} vs {}", na.join(", "), nb.join(", ")))
        } else if oa != ob {
            Some(format!("operators {oa:?} vs {ob:?}"))
        } else if ua != ub {
            Some(format!("units {} vs {}", show(&ua), show(&ub)))
        } else {
            None
        };
        push("numbers", diff, &|| {
            format!(
                "numbers {}",
                if na.is_empty() {
                    "none".into()
                } else {
                    na.join(", ")
                }
            )
        });
    }
    if set.negation {
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
        } else if let Some((x, y)) = a.opposite(&b) {
            Some(format!("{x} vs {y}"))
        } else {
            None
        };
        push("negation", diff, &|| {
            "same negation and polarity words".into()
        });
    }
    if set.negation {
        // Direction: the same words in another order around "to", "from",
        // "into", "than", "vs": "string to integer" is not "integer to string".
        push("direction", a.direction_swap(&b), &|| {
            "no words swapped around to, from, into or than".into()
        });
    }
    if set.code {
        let (ca, cb) = (a.members_fuzzy(CODE), b.members_fuzzy(CODE));
        let diff = if ca != cb {
            Some(format!("{} vs {}", show(&ca), show(&cb)))
        } else {
            code_blocks_differ(stored, probe)
        };
        push("code", diff, &|| {
            format!("languages and platforms {}", show(&ca))
        });
    }
    if set.language {
        let (la, lb) = (a.language(), b.language());
        let (na, nb) = (a.members_fuzzy(LANGUAGES), b.members_fuzzy(LANGUAGES));
        let diff = if la != lb {
            Some(format!("written in {la} vs {lb}"))
        } else if na != nb {
            Some(format!("names {} vs {}", show(&na), show(&nb)))
        } else {
            None
        };
        push("language", diff, &|| format!("written in {la}"));
    }
    if set.long_text {
        // NOTE: without an embedder here, one short edit fails too; the
        // cache's lookup compares its sentences by meaning (`long_text`).
        let verdict = long_text_of(&a, &b, set.window_words);
        let diff = match &verdict {
            LongText::Same(_) => None,
            LongText::Edit { .. } => Some(verdict.describe()),
            LongText::Differs(why) => Some(why.clone()),
        };
        push("long_text", diff, &|| verdict.describe());
    }
    (ok, out)
}

/// How two texts compare when either runs past the embedding window, where
/// one embedding of the whole is dominated by the document and cannot see a
/// changed question or instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongText {
    /// Both fit the window; or they are equal after folding case and white
    /// space; or they hold the same paragraphs in another order (an
    /// instruction moved from before a document to after it).
    Same(&'static str),
    /// One short edit, in one place: the sentences around it, from each
    /// text. They must be compared by meaning, on their own.
    Edit {
        /// The sentences around the edit, from the stored text.
        stored: String,
        /// The sentences around the edit, from the probe.
        probe: String,
    },
    /// More than one short edit: why.
    Differs(String),
}

impl LongText {
    /// For people.
    pub fn describe(&self) -> String {
        match self {
            LongText::Same(why) => (*why).to_string(),
            LongText::Edit { stored, probe } => {
                format!("one edit in a long text: \"{stored}\" vs \"{probe}\"")
            }
            LongText::Differs(why) => why.clone(),
        }
    }
}

/// The most words an edit of a long text may span, on either side, to be
/// compared sentence by sentence rather than refused.
const EDIT_WORDS: usize = 48;
/// The most words of context a sentence adds on each side of an edit.
const CONTEXT_WORDS: usize = 40;

/// The long-text check of `stored` against `probe` (`window` words fit the
/// embedding).
pub fn long_text(stored: &str, probe: &str, window: usize) -> LongText {
    long_text_of(&Text::new(stored), &Text::new(probe), window)
}

fn long_text_of(a: &Text, b: &Text, window: usize) -> LongText {
    let (wa, wb) = (a.words(), b.words());
    if weight(&wa) <= window && weight(&wb) <= window {
        return LongText::Same("fits the embedding window");
    }
    let same = |x: &[(&str, bool)], y: &[(&str, bool)]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.0 == q.0)
    };
    if same(&wa, &wb) {
        return LongText::Same("equal after folding case and white space");
    }
    let (pa, pb) = (a.paragraphs(), b.paragraphs());
    if pa.len() > 1 && pa == pb {
        return LongText::Same("the same paragraphs in another order");
    }
    // One edit: what is left between the common beginning and the common end.
    let prefix = wa.iter().zip(&wb).take_while(|(p, q)| p.0 == q.0).count();
    let room = wa.len().min(wb.len()) - prefix;
    let suffix = wa
        .iter()
        .rev()
        .zip(wb.iter().rev())
        .take(room)
        .take_while(|(p, q)| p.0 == q.0)
        .count();
    let (ea, eb) = (wa.len() - suffix, wb.len() - suffix);
    if ea - prefix > EDIT_WORDS || eb - prefix > EDIT_WORDS {
        return LongText::Differs(format!(
            "more than {EDIT_WORDS} words differ in a text past the embedding window"
        ));
    }
    // Widen the edit to whole sentences, the same start for both.
    let mut start = prefix;
    while start > 0 && prefix - start < CONTEXT_WORDS && !wa[start - 1].1 {
        start -= 1;
    }
    // And to the end of the sentence: the same words of the common end on
    // both sides.
    let ends = |w: &[(&str, bool)], at: usize| at > start && w[at - 1].1;
    let mut k = 0;
    while k < suffix && k < CONTEXT_WORDS && !(ends(&wa, ea + k) && ends(&wb, eb + k)) {
        k += 1;
    }
    let sentence = |w: &[(&str, bool)], end: usize| -> String {
        w[start..end + k]
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (sa, sb) = (sentence(&wa, ea), sentence(&wb, eb));
    if sa.is_empty() || sb.is_empty() {
        return LongText::Differs("a text past the embedding window gained or lost a part".into());
    }
    LongText::Edit {
        stored: sa,
        probe: sb,
    }
}

/// Words as the embedding counts them: a CJK character is about one token.
fn weight(words: &[(&str, bool)]) -> usize {
    words
        .iter()
        .map(|(w, _)| w.chars().filter(|c| is_cjk(*c)).count().max(1))
        .sum()
}

fn show(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A text prepared for the guards: lower-cased, full-width forms folded,
/// split into tokens.
struct Text {
    lower: String,
    tokens: Vec<String>,
    set: std::collections::HashSet<String>,
}

fn fold(c: char) -> char {
    // Full-width ASCII (！ to ～) to ASCII, the ideographic space to a space.
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}')
}

impl Text {
    fn new(s: &str) -> Text {
        // The ModelCache key text joins turns as `role###content|||…`.
        let plain = s.replace("|||", " \n ").replace("###", ": ");
        let lower: String = plain
            .chars()
            .map(fold)
            .flat_map(char::to_lowercase)
            .collect();
        let mut tokens = Vec::new();
        let mut cur = String::new();
        for c in lower.chars() {
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
        // Every word a token may be a form of: `enabling` is a form of
        // `enable` and `enabl`, `encryption` of `encrypt`; so that a lookup
        // of a group's word is one hash lookup.
        let mut set = std::collections::HashSet::new();
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
        Text { lower, tokens, set }
    }

    fn has_word(&self, w: &str) -> bool {
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
    fn members(&self, groups: &[Group]) -> BTreeSet<String> {
        groups
            .iter()
            .filter(|g| g.iter().any(|w| self.has_word(w)))
            .map(|g| g[0].to_string())
            .collect()
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

    /// The units and currencies the text names. An age ("35 years old") is
    /// not a unit: "I'm 35" says the same.
    fn units(&self) -> BTreeSet<String> {
        let mut units = self.members(UNITS);
        let ages = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == "year" || *t == "years")
            .all(|(i, _)| self.tokens.get(i + 1).is_some_and(|n| n == "old"));
        let other_years = ["年", "yearly", "annual"]
            .iter()
            .any(|w| self.lower.contains(w));
        if ages && !other_years {
            units.remove("year");
        }
        units
    }

    /// Like [`Text::members`], forgiving a one-letter typo in names of six
    /// letters or more ("pyhton").
    fn members_fuzzy(&self, groups: &[Group]) -> BTreeSet<String> {
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

    /// Arithmetic operators, in order: `+ - * / ^`, written as symbols or
    /// words ("divided by", "to the power of"); a `-` only between spaces or
    /// digits, not in a hyphenated word. `=` is left out: "= ?" adds nothing.
    fn operators(&self) -> String {
        const WORDS: [(&str, char); 9] = [
            ("to the power of", '^'),
            ("divided by", '/'),
            ("multiplied by", '*'),
            ("times", '*'),
            ("plus", '+'),
            ("minus", '-'),
            ("除以", '/'),
            ("乘以", '*'),
            ("的平方", '^'),
        ];
        let mut text = self.lower.clone();
        for (w, op) in WORDS {
            text = text.replace(w, &format!(" {op} "));
        }
        // "Divide 1,250 by 25" is "1,250 divided by 25": the verb names the
        // operator when a number follows it.
        for (w, op) in [("divide ", '/'), ("multiply ", '*')] {
            let mut from = 0;
            while let Some(i) = text[from..].find(w) {
                let start = from + i;
                let end = start + w.len();
                let word_start = text[..start]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric());
                from = if word_start && text[end..].starts_with(|c: char| c.is_ascii_digit()) {
                    let by = format!(" {op} ");
                    text.replace_range(start..end, &by);
                    start + by.len()
                } else {
                    end
                };
            }
        }
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        for (i, c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1).copied();
            let spaced = |c: Option<char>| c.is_none_or(|c| c == ' ' || c.is_ascii_digit());
            match c {
                '×' | '÷' => out.push(if *c == '×' { '*' } else { '/' }),
                '^' => out.push('^'),
                '+' | '*' | '/' if operands(&chars, i) => out.push(*c),
                '-' if spaced(prev) && spaced(next) && operands(&chars, i) => out.push('-'),
                _ => {}
            }
        }
        out
    }

    /// When both texts hold the same words in another order, whether a
    /// directional word (to, from, into, than, vs) now joins other words.
    fn direction_swap(&self, other: &Text) -> Option<String> {
        const MARKERS: [&str; 7] = ["to", "from", "into", "than", "vs", "versus", "over"];
        let content = |t: &Text| -> Vec<String> {
            t.tokens
                .iter()
                .filter(|w| !FUNCTION_WORDS.contains(&w.as_str()) || MARKERS.contains(&w.as_str()))
                .cloned()
                .collect()
        };
        let (a, b) = (content(self), content(other));
        if a == b {
            return None;
        }
        let (mut sa, mut sb) = (a.clone(), b.clone());
        sa.sort();
        sb.sort();
        if sa != sb {
            return None;
        }
        let pairs = |v: &[String]| -> Vec<(String, String, String)> {
            v.iter()
                .enumerate()
                .filter(|(_, w)| MARKERS.contains(&w.as_str()))
                .filter_map(|(i, m)| {
                    let before = v[..i]
                        .iter()
                        .rev()
                        .find(|w| !MARKERS.contains(&w.as_str()))?;
                    let after = v[i + 1..].iter().find(|w| !MARKERS.contains(&w.as_str()))?;
                    Some((before.clone(), m.clone(), after.clone()))
                })
                .collect()
        };
        let (pa, pb) = (pairs(&a), pairs(&b));
        (pa != pb).then(|| {
            let show = |p: &[(String, String, String)]| {
                p.iter()
                    .map(|(x, m, y)| format!("{x} {m} {y}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            format!("\"{}\" vs \"{}\"", show(&pa), show(&pb))
        })
    }

    /// Every number, normalised and in order: `1,250` and `１２５０` are
    /// `1250`, `1万` is `10000`, `一百` is `100`. When the text asks for
    /// something a list's order cannot change (an average, a sum, the
    /// largest), a list of three or more ("4, 8, 15 and 16") is compared as
    /// a set of values; a sequence ("the next number in 2, 4, 8") keeps its
    /// order. A `1` before a unit is the article ("1 day" is "a day") and is
    /// left out.
    fn numbers(&self) -> Vec<String> {
        let chars: Vec<char> = self.lower.chars().collect();
        let found = self.number_spans(&chars);
        let mut out: Vec<String> = Vec::new();
        let mut run: Vec<String> = Vec::new();
        let mut run_open = false;
        let unordered = ORDER_FREE.iter().any(|w| self.has_word(w));
        let flush = |run: &mut Vec<String>, out: &mut Vec<String>| {
            if unordered && run.len() >= 3 {
                run.sort();
            }
            out.append(run);
        };
        for (k, (start, end, v)) in found.iter().enumerate() {
            let joined = k > 0 && {
                let between: String = chars[found[k - 1].1..*start].iter().collect();
                let between = between.trim();
                matches!(
                    between,
                    "," | "and" | ", and" | "、" | "，" | "y" | "和" | "と"
                )
            };
            if !joined {
                flush(&mut run, &mut out);
                let opener = chars[..*start]
                    .iter()
                    .rev()
                    .find(|c| **c != ' ')
                    .is_some_and(|c| matches!(c, '(' | '['));
                run_open = !opener;
            }
            let after: String = chars[*end..]
                .iter()
                .skip_while(|c| **c == ' ')
                .take_while(|c| c.is_alphabetic())
                .collect();
            if v == "1" && !joined && UNITS.iter().any(|g| g.contains(&after.as_str())) {
                continue;
            }
            if run_open {
                run.push(v.clone());
            } else {
                out.push(v.clone());
            }
        }
        flush(&mut run, &mut out);
        out
    }

    /// Each number of the text: its char range and normalised value.
    fn number_spans(&self, chars: &[char]) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_ascii_digit() || cjk_digit(c).is_some() {
                let start = i;
                let mut s = String::new();
                while i < chars.len() {
                    let c = chars[i];
                    let separator = (c == ',' || c == '.')
                        && !s.is_empty()
                        && chars.get(i + 1).is_some_and(char::is_ascii_digit);
                    let part = c.is_ascii_digit()
                        || separator
                        || cjk_digit(c).is_some()
                        || cjk_unit(c).is_some();
                    if !part {
                        break;
                    }
                    s.push(c);
                    i += 1;
                }
                if let Some(v) = parse_number(&s) {
                    out.push((start, i, v));
                }
                if i == start {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        out
    }

    fn language(&self) -> &'static str {
        let (mut kana, mut han, mut hangul, mut cyrillic, mut latin) = (0, 0, 0, 0, 0);
        for c in self.lower.chars() {
            match c {
                '\u{3040}'..='\u{30FF}' => kana += 1,
                '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' => han += 1,
                '\u{AC00}'..='\u{D7AF}' => hangul += 1,
                '\u{0400}'..='\u{04FF}' => cyrillic += 1,
                c if c.is_alphabetic() => latin += 1,
                _ => {}
            }
        }
        let cjk = kana + han + hangul;
        if kana > 0 && kana + han >= latin / 4 {
            return "ja";
        }
        if hangul > 0 && hangul >= latin / 4 {
            return "ko";
        }
        if han > 0 && cjk >= latin / 4 {
            return "zh";
        }
        if cyrillic > latin {
            return "ru";
        }
        // A small stop-word vote among Latin-script languages.
        const VOTES: [(&str, &[&str]); 5] = [
            (
                "en",
                &[
                    "the", "is", "what", "how", "do", "i", "a", "of", "to", "in", "and", "my",
                    "you", "can", "does", "are",
                ],
            ),
            (
                "es",
                &[
                    "el", "la", "los", "las", "es", "qué", "cómo", "de", "en", "y", "mi", "un",
                    "una", "por", "para", "puedo", "del", "al", "con", "que", "se", "lo", "cuál",
                    "cuántos", "cuántas", "cuánto", "cuánta", "hay", "está", "son",
                ],
            ),
            (
                "fr",
                &[
                    "le", "la", "les", "est", "quel", "quelle", "comment", "de", "et", "mon", "un",
                    "une", "pour", "je",
                ],
            ),
            (
                "de",
                &[
                    "der", "die", "das", "ist", "wie", "was", "und", "ich", "ein", "eine", "mein",
                    "nicht",
                ],
            ),
            (
                "pt",
                &[
                    "o", "os", "é", "como", "qual", "de", "e", "meu", "um", "uma", "para", "não",
                ],
            ),
        ];
        let mut best = ("en", 0usize);
        for (lang, words) in VOTES {
            let n = self
                .tokens
                .iter()
                .filter(|t| words.contains(&t.as_str()))
                .count();
            if n > best.1 {
                best = (lang, n);
            }
        }
        best.0
    }

    /// The white-space separated words, each with whether it ends a
    /// sentence (a full stop, question or exclamation mark, colon or
    /// semicolon at its end, or a line break after it).
    fn words(&self) -> Vec<(&str, bool)> {
        let mut out: Vec<(&str, bool)> = Vec::new();
        let mut start = None;
        for (i, c) in self.lower.char_indices() {
            if c.is_whitespace() {
                if let Some(s) = start.take() {
                    let w = &self.lower[s..i];
                    let ends = w.ends_with(['.', '?', '!', ':', ';', '。', '？', '！']);
                    out.push((w, ends));
                }
                if c == '\n' {
                    if let Some(last) = out.last_mut() {
                        last.1 = true;
                    }
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            out.push((&self.lower[s..], true));
        }
        out
    }

    /// The paragraphs (split at blank lines and between turns), white space
    /// folded, sorted.
    fn paragraphs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut cur: Vec<&str> = Vec::new();
        for line in self.lower.lines() {
            // A turn's first line starts with its role ("user: ").
            let line = ["user: ", "system: ", "assistant: "]
                .iter()
                .find_map(|r| line.trim_start().strip_prefix(r))
                .unwrap_or(line);
            if line.trim().is_empty() {
                if !cur.is_empty() {
                    out.push(cur.join(" "));
                    cur.clear();
                }
            } else {
                cur.extend(line.split_whitespace());
            }
        }
        if !cur.is_empty() {
            out.push(cur.join(" "));
        }
        out.sort();
        out
    }
}

/// Fenced code (```) is compared token by token, not by meaning: `var` for
/// `let` changes what a program does. White space is ignored, and so is a
/// one-letter typo in a word of six letters or more (a comment's
/// "inventroy").
fn code_blocks_differ(a: &str, b: &str) -> Option<String> {
    fn blocks(s: &str) -> Vec<Vec<String>> {
        s.split("```")
            .skip(1)
            .step_by(2)
            .map(|block| {
                let mut out = Vec::new();
                let mut word = String::new();
                for c in block.chars() {
                    if c.is_alphanumeric() || c == '_' {
                        word.push(c);
                        continue;
                    }
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    if !c.is_whitespace() {
                        out.push(c.to_string());
                    }
                }
                if !word.is_empty() {
                    out.push(word);
                }
                out
            })
            .collect()
    }
    let (x, y) = (blocks(a), blocks(b));
    let same = |p: &Vec<String>, q: &Vec<String>| {
        p.len() == q.len() && p.iter().zip(q).all(|(u, v)| u == v || typo(u, v))
    };
    if x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| same(p, q)) {
        return None;
    }
    let first = x
        .iter()
        .zip(&y)
        .flat_map(|(p, q)| p.iter().zip(q))
        .find(|(u, v)| u != v)
        .map(|(u, v)| format!(": {u} vs {v}"))
        .unwrap_or_default();
    Some(format!("the code blocks differ{first}"))
}

/// Whether two words of six letters or more are one typo apart.
fn typo(a: &str, b: &str) -> bool {
    a.chars().count() >= 6 && b.chars().count() >= 6 && one_edit(a, b)
}

/// Whether the symbol at `i` stands between operands, not between words: in
/// "22.04 - how" or "and/or" it is punctuation. A side whose nearest word is
/// three or more letters without a digit is not an operand.
fn operands(chars: &[char], i: usize) -> bool {
    let word = |it: &mut dyn Iterator<Item = &char>| -> bool {
        let w: Vec<char> = it
            .skip_while(|c| **c == ' ')
            .take_while(|c| c.is_alphanumeric())
            .copied()
            .collect();
        !(w.len() >= 3 && w.iter().all(|c| c.is_alphabetic()))
    };
    word(&mut chars[..i].iter().rev()) && word(&mut chars[i + 1..].iter())
}

fn cjk_digit(c: char) -> Option<u64> {
    Some(match c {
        '零' | '〇' => 0,
        '一' => 1,
        '二' | '两' => 2,
        '三' => 3,
        '四' => 4,
        '五' => 5,
        '六' => 6,
        '七' => 7,
        '八' => 8,
        '九' => 9,
        _ => return None,
    })
}

fn cjk_unit(c: char) -> Option<u64> {
    Some(match c {
        '十' => 10,
        '百' => 100,
        '千' => 1_000,
        '万' | '萬' => 10_000,
        '亿' | '億' => 100_000_000,
        _ => return None,
    })
}

/// A number as written (ASCII digits with `,` and `.`, CJK numerals, or a
/// mix such as `1万`), in one canonical spelling.
fn parse_number(s: &str) -> Option<String> {
    if s.chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
    {
        // `1,250` has a thousands separator; `1,5` is a decimal comma.
        let mut groups = s.split(',');
        let head_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()));
        let rest: Vec<&str> = groups.collect();
        let thousands = head_ok
            && !rest.is_empty()
            && rest.iter().enumerate().all(|(i, g)| {
                let digits = g.split('.').next().unwrap_or("");
                digits.len() == 3 && (i + 1 == rest.len() || !g.contains('.'))
            });
        let plain = if thousands {
            s.replace(',', "")
        } else {
            s.replace(',', ".")
        };
        // NOTE: decimals are kept as written: Python 3.10 is not 3.1.
        if plain.contains('.') {
            return Some(plain);
        }
        let trimmed = plain.trim_start_matches('0');
        return Some(if trimmed.is_empty() { "0" } else { trimmed }.to_string());
    }
    // CJK: sections below 万 built from digits and 十百千, then 万 and 亿
    // multiply what came before. ASCII digits may stand for a digit run.
    let mut total: f64 = 0.0;
    let mut section: f64 = 0.0;
    let mut digit: Option<f64> = None;
    let mut ascii = String::new();
    let flush_ascii = |ascii: &mut String, digit: &mut Option<f64>| {
        if !ascii.is_empty() {
            *digit = ascii.replace(',', "").parse::<f64>().ok();
            ascii.clear();
        }
    };
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' || c == ',' {
            ascii.push(c);
            continue;
        }
        flush_ascii(&mut ascii, &mut digit);
        if let Some(d) = cjk_digit(c) {
            digit = Some(d as f64);
        } else if let Some(u) = cjk_unit(c) {
            if u >= 10_000 {
                section += digit.take().unwrap_or(0.0);
                total += section.max(1.0) * u as f64;
                section = 0.0;
            } else {
                section += digit.take().unwrap_or(1.0) * u as f64;
            }
        }
    }
    flush_ascii(&mut ascii, &mut digit);
    section += digit.unwrap_or(0.0);
    Some(format_number(total + section))
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(a: &str, b: &str) -> Vec<&'static str> {
        let (_, r) = check(a, b, &GuardSet::default(), true);
        r.into_iter()
            .filter(|g| !g.passed)
            .map(|g| g.name)
            .collect()
    }

    #[test]
    fn numbers_are_normalised_before_they_are_compared() {
        assert!(fails(
            "user###What is 1,250 divided by 25?",
            "user###1250 / 25 = ?"
        )
        .is_empty());
        assert!(fails(
            "user###10000円は何ドルですか？",
            "user###１００００円は何ドルですか？"
        )
        .is_empty());
        assert!(fails(
            "user###10000円は何ドルですか？",
            "user###1万円はドルでいくらですか？"
        )
        .is_empty());
        assert!(fails(
            "user###100美元等于多少人民币？",
            "user###一百美元能换多少人民币？"
        )
        .is_empty());
        assert!(fails("user###Call me at 007", "user###call me at 7").is_empty());
        assert_eq!(
            fails("user###New in Python 3.10", "user###New in Python 3.1"),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###What is 1,250 divided by 25?",
                "user###What is 1,250 divided by 50?"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails("user###What is 15% of 80?", "user###What is 15% of 90?"),
            ["numbers"]
        );
    }

    #[test]
    fn order_of_numbers_operators_and_direction() {
        assert_eq!(
            fails(
                "user###What is 2 to the power of 10?",
                "user###What is 10 to the power of 2?"
            ),
            ["numbers", "direction"]
        );
        assert!(fails(
            "user###What is 2 to the power of 10?",
            "user###Compute 2^10."
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###Simplify the fraction 18/24.",
                "user###Simplify the fraction 24/18."
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###Solve for x: 2x + 3 = 11",
                "user###Solve for x: 2x - 3 = 11"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###How do I convert a string to an integer in Java?",
                "user###How do I convert an integer to a string in Java?"
            ),
            ["direction"]
        );
        assert_eq!(
            fails(
                "user###Convert 100 kilometers to miles.",
                "user###Convert 100 miles to kilometers."
            ),
            ["direction"]
        );
        // Coordination is not direction; hyphenated words are not minus signs.
        assert!(fails(
            "user###Center a div horizontally and vertically",
            "user###Center a div vertically and horizontally"
        )
        .is_empty());
        assert!(fails(
            "user###Set up two-factor authentication",
            "user###set up two-factor authentication please"
        )
        .is_empty());
    }

    #[test]
    fn punctuation_lists_articles_and_verbs_are_not_arithmetic() {
        // A dash or slash between words is punctuation, not an operator.
        assert!(fails(
            "user###How do I install Node.js 18 on Ubuntu 22.04?",
            "user###Install Node.js 18 on Ubuntu 22.04 - how?"
        )
        .is_empty());
        assert!(fails("user###Cats and/or dogs?", "user###Cats or dogs?").is_empty());
        // Between numbers it is still one.
        assert_eq!(
            fails("user###What is 9 - 4?", "user###What is 9 + 4?"),
            ["numbers"]
        );
        // "Divide a by b" is "a divided by b"; the order still counts.
        assert!(fails(
            "user###What is 1,250 divided by 25?",
            "user###Divide 1,250 by 25."
        )
        .is_empty());
        assert_eq!(
            fails("user###Divide 1,250 by 25.", "user###Multiply 1,250 by 25."),
            ["numbers"]
        );
        // Multi-byte text after a rewritten verb is read safely.
        assert!(fails(
            "user###divide 8¥¥¥ by 2, divide 9 by 3",
            "user###divide 8¥¥¥ by 2, divide 9 by 3"
        )
        .is_empty());
        // A list of three or more is compared as a set of values.
        assert!(fails(
            "user###What's the average of 4, 8, 15, 16, 23, 42?",
            "user###What's the average of 42, 23, 16, 15, 8 and 4?"
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###What's the average of 4, 8, 15, 16, 23, 42?",
                "user###What's the average of 4, 8, 15, 16, 23, 43?"
            ),
            ["numbers"]
        );
        // A sequence keeps its order; so do two numbers, or a bracketed tuple.
        assert_eq!(
            fails(
                "user###What is the next number in 2, 4, 8, 16?",
                "user###What is the next number in 16, 8, 4, 2?"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###Reverse the list 1, 2, 3, 4",
                "user###Reverse the list 4, 3, 2, 1"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###Sum of the distances between (1, 2, 3) and the origin",
                "user###Sum of the distances between (3, 2, 1) and the origin"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails("user###From 3 to 10", "user###From 10 to 3"),
            ["numbers", "direction"]
        );
        // "1 day" is "a day"; "2 days" is not.
        assert!(fails(
            "user###How many seconds are in a day?",
            "user###How many seconds in 1 day?"
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###How many seconds are in a day?",
                "user###How many seconds in 2 days?"
            ),
            ["numbers"]
        );
    }

    #[test]
    fn no_text_makes_a_guard_panic() {
        // Pieces that exercise every rewrite and slice: verbs rewritten
        // before multi-byte text, operators, lists, fences, CJK numerals,
        // full-width digits, sentence ends, turn separators.
        let pieces = [
            "divide ",
            "multiply ",
            "8",
            "1,250",
            "¥",
            "é",
            "一百",
            "１２",
            "万",
            " - ",
            "/",
            "+",
            "*",
            "^",
            ", ",
            " and ",
            "(",
            "[",
            "```",
            "\n\n",
            "|||",
            "user###",
            "years old",
            "1 day",
            "-free",
            "after ",
            "within ",
            "in Go",
            "Mac",
            "。",
            "？",
            " ",
            "x",
            "word",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1000 {
            let mut text = |n: usize| -> String {
                (0..n)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect()
            };
            let (a, b) = (text(40), text(400));
            let _ = check(&a, &b, &GuardSet::default(), true);
            let _ = long_text(&a, &b, 20);
            let _ = long_text(&b, &b.replace('8', "9"), 20);
            let _ = crate::cache::verify::diff(&a, &b);
        }
    }

    #[test]
    fn ages_and_frequencies_are_not_new_units() {
        assert!(fails(
            "user###I'm 35 and I weigh 70 kg.",
            "user###I am 35 years old and weigh 70 kg."
        )
        .is_empty());
        assert!(fails(
            "user###How much water should I drink per day?",
            "user###How much water do I need daily?"
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###How much water should I drink per day?",
                "user###How much water should I drink per week?"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails("user###A 35 year loan", "user###A 35 month loan"),
            ["numbers"]
        );
    }

    #[test]
    fn units_and_currencies_are_compared() {
        assert_eq!(
            fails(
                "user###What is the boiling point of water at sea level in Celsius?",
                "user###What is the boiling point of water at sea level in Fahrenheit?"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###How many seconds are in a day?",
                "user###How many seconds are in a week?"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###100美元等于多少人民币？",
                "user###100欧元等于多少人民币？"
            ),
            ["numbers"]
        );
        assert_eq!(
            fails(
                "user###10000円は何ドルですか？",
                "user###10000円は何ユーロですか？"
            ),
            ["numbers"]
        );
    }

    #[test]
    fn negation_and_polarity() {
        assert_eq!(
            fails(
                "user###How do I enable two-factor authentication?",
                "user###How do I disable two-factor authentication?"
            ),
            ["negation"]
        );
        assert_eq!(
            fails(
                "user###Sort the list in ascending order",
                "user###Sort the list in descending order"
            ),
            ["negation"]
        );
        assert_eq!(
            fails(
                "user###Is the API rate limited?",
                "user###Is the API not rate limited?"
            ),
            ["negation"]
        );
        assert_eq!(
            fails("user###Can I pay by card?", "user###Can't I pay by card?"),
            ["negation"]
        );
        assert_eq!(
            fails("user###如何开启两步验证？", "user###如何关闭两步验证？"),
            ["negation"]
        );
        assert!(fails(
            "user###How do I enable dark mode?",
            "user###How can I enable the dark mode?"
        )
        .is_empty());
    }

    #[test]
    fn opposites_and_free_of() {
        assert_eq!(
            fails(
                "user###Can I cancel within the cooling-off period?",
                "user###Can I cancel after the cooling-off period?"
            ),
            ["negation"]
        );
        // "after" against a text that says neither is not an opposite.
        assert!(fails(
            "user###I was charged after I cancelled my free trial.",
            "user###I cancelled my free trial but still got charged."
        )
        .is_empty());
        assert!(fails(
            "user###How can I make them gluten-free?",
            "user###How do I make these cookies without gluten?"
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###How can I make them gluten-free?",
                "user###How do I make these cookies with gluten?"
            ),
            ["negation"]
        );
        assert_eq!(
            fails(
                "user###Escribe una función que sume dos números.",
                "user###Escribe una función que reste dos números."
            ),
            ["negation"]
        );
    }

    #[test]
    fn go_and_mac_by_their_short_names() {
        assert!(fails(
            "user###Now do the same in Go.",
            "user###Now the same thing in Golang."
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###Now do the same in Go.",
                "user###Now do the same in Rust."
            ),
            ["code"]
        );
        // "go" the verb is not the language.
        assert!(fails("user###Where should I go?", "user###Where should I travel?").is_empty());
        assert!(fails(
            "user###macOS. What do you recommend?",
            "user###Mac, please."
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###macOS. What do you recommend?",
                "user###Windows, please."
            ),
            ["code"]
        );
    }

    #[test]
    fn spanish_with_few_stop_words_is_spanish() {
        assert!(fails(
            "user###¿A qué temperatura hierve el agua a nivel del mar en grados Celsius?",
            "user###¿A cuántos grados Celsius hierve el agua al nivel del mar?"
        )
        .is_empty());
    }

    #[test]
    fn code_blocks_are_compared_token_by_token() {
        let a = "user###Find the bug:\n```js\nfor (var i = 0; i < 5; i++) { f(i); }\n```";
        let b = "user###Find the bug:\n```js\nfor (let i = 0; i < 5; i++) { f(i); }\n```";
        assert_eq!(fails(a, b), ["code"]);
        // White space and a typo in a long word are forgiven.
        let c = "user###Find the bug:\n```js\nfor (var i=0; i<5; i++) {\n  f(i);\n}\n```";
        assert!(fails(a, c).is_empty());
        let d = "user###```py\n# check the inventory\nx = 1\n```";
        let e = "user###```py\n# check the inventroy\nx = 1\n```";
        assert!(fails(d, e).is_empty());
        let f = "user###```py\n# check the inventory\nx = 1\n```\n```py\ny = z\n```";
        assert_eq!(fails(d, f), ["code"]);
    }

    #[test]
    fn programming_languages_and_platforms() {
        assert_eq!(
            fails(
                "user###How do I reverse a list in Python?",
                "user###How do I reverse a list in JavaScript?"
            ),
            ["code"]
        );
        assert_eq!(
            fails(
                "user###Count the lines in all .py files",
                "user###Count the lines in all .js files"
            ),
            ["code"]
        );
        assert_eq!(
            fails(
                "user###Install Node.js 18 on Ubuntu 22.04",
                "user###Install Node.js 18 on macOS"
            ),
            ["numbers", "code"]
        );
        assert!(fails(
            "user###How do I reverse a list in Python?",
            "user###What's the way to reverse a Python list?"
        )
        .is_empty());
        // A typo in a language's name is still that language.
        assert!(fails(
            "user###How do I reverse a list in Python?",
            "user###how do i reverse a list in pyhton"
        )
        .is_empty());
        // Java is not JavaScript.
        assert_eq!(
            fails(
                "user###Read a file in Java",
                "user###Read a file in JavaScript"
            ),
            ["code"]
        );
    }

    #[test]
    fn the_natural_language_must_match() {
        assert_eq!(
            fails(
                "user###日本の首都はどこですか？",
                "user###What is the capital of Japan?"
            ),
            ["language"]
        );
        assert_eq!(
            fails(
                "user###把这句话翻译成英文：我今天很开心。",
                "user###把这句话翻译成日文：我今天很开心。"
            ),
            ["language"]
        );
        assert_eq!(
            fails(
                "user###¿Cuál es la capital de Francia?",
                "user###What is the capital of France?"
            ),
            ["language"]
        );
        assert!(fails(
            "user###日本の首都はどこですか？",
            "user###日本の首都は何ですか"
        )
        .is_empty());
    }

    #[test]
    fn a_long_text_is_the_same_or_one_edit_in_a_sentence() {
        let body: String = (0..40)
            .map(|i| format!("Sentence number w{i} of the document says little. "))
            .collect();
        let w = 170;
        assert_eq!(
            long_text("user###Short question?", "user###Another one?", w),
            LongText::Same("fits the embedding window")
        );
        let a = format!("user###Summarize this.\n\n{body}");
        assert_eq!(
            long_text(&a, &a.to_uppercase().replace("  ", " "), w),
            LongText::Same("equal after folding case and white space")
        );
        let moved = format!("user###{body}\n\nSummarize this.");
        assert_eq!(
            long_text(&a, &moved, w),
            LongText::Same("the same paragraphs in another order")
        );
        // One edit: the sentences around it, widened to whole sentences.
        let edited = a.replace("number w30 of", "number w30 in");
        assert_eq!(
            long_text(&a, &edited, w),
            LongText::Edit {
                stored: "sentence number w30 of the document says little.".into(),
                probe: "sentence number w30 in the document says little.".into(),
            }
        );
        let task = format!("user###List the topics.\n\n{body}");
        assert_eq!(
            long_text(&a, &task, w),
            LongText::Edit {
                stored: "summarize this.".into(),
                probe: "list the topics.".into(),
            }
        );
        // A sentence added: it is compared with the one after it.
        let added = a.replace(
            "Sentence number w20 ",
            "An extra sentence here. Sentence number w20 ",
        );
        assert_eq!(
            long_text(&a, &added, w),
            LongText::Edit {
                stored: "sentence number w20 of the document says little.".into(),
                probe: "an extra sentence here. sentence number w20 of the document says little."
                    .into(),
            }
        );
        // Two edits far apart are more than one short edit.
        let twice = a
            .replace("number w2 of", "number w2 in")
            .replace("number w38 of", "number w38 in");
        assert!(matches!(long_text(&a, &twice, w), LongText::Differs(_)));
    }

    #[test]
    fn text_past_the_window_must_be_equal() {
        // Words without digits, so that only the long-text guard can see the edit.
        let word = |i: usize| {
            format!(
                "w{}{} ",
                (b'a' + (i / 26) as u8) as char,
                (b'a' + (i % 26) as u8) as char
            )
        };
        let doc: String = (0..300).map(word).collect();
        let edited = doc.replace(&word(250), "changed ");
        let set = GuardSet::default();
        assert!(check(&doc, &doc.to_uppercase(), &set, false).0);
        assert!(!check(&doc, &edited, &set, false).0);
        assert_eq!(fails(&doc, &edited), ["long_text"]);
        // An edit inside the window fails here too: the embedding of a long
        // text is the document's. The lookup compares its sentence.
        let early = doc.replace(&word(10), "changed ");
        assert_eq!(fails(&doc, &early), ["long_text"]);
        // Switched off, nothing fails.
        assert!(check(&doc, &edited, &GuardSet::none(), true).0);
    }
}
