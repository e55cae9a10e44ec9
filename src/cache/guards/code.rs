//! The code guard: two texts must name the same programming languages and
//! platforms, and hold the same fenced code.
//!
//! Owns the comparison of the languages and platforms each text names (a
//! one-letter typo in a long name forgiven: "pyhton") and of fenced code
//! blocks, token by token. It must never compare code by meaning: `var` for
//! `let` changes what a program does.

use super::text::{show, typo, Text};
use crate::cache::lexicon::CODE;

/// What differs in the languages, platforms or code blocks of `a` and `b`
/// (`stored` and `probe` as written, for their code), if anything; and,
/// formatted only when asked, the languages and platforms both name.
pub(super) fn check(
    a: &Text,
    b: &Text,
    stored: &str,
    probe: &str,
) -> (Option<String>, impl FnOnce() -> String) {
    let (ca, cb) = (a.members_fuzzy(CODE), b.members_fuzzy(CODE));
    let diff = if ca != cb {
        Some(format!("{} vs {}", show(&ca), show(&cb)))
    } else {
        code_blocks_differ(stored, probe)
    };
    (diff, move || {
        format!("languages and platforms {}", show(&ca))
    })
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
