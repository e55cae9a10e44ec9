//! The direction guard: the same words in another order around "to",
//! "from", "into", "than" or "vs" ask another thing ("string to integer" is
//! not "integer to string").
//!
//! Owns the comparison of which words each directional word joins, when
//! both texts hold the same content words. It must never fail texts whose
//! words differ (the other guards and the verifier judge those), nor a
//! reordering without a directional word ("horizontally and vertically").

use super::text::Text;
use crate::cache::lexicon::FUNCTION_WORDS;

/// Which words a directional word joins in `a` and in `b`, when they
/// differ; and, formatted only when asked, what was compared.
pub(super) fn check(a: &Text, b: &Text) -> (Option<String>, impl FnOnce() -> String) {
    (a.direction_swap(b), || {
        "no words swapped around to, from, into or than".into()
    })
}

impl Text {
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
}
