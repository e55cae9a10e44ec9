//! The long-text guard: a text past the embedding window, whose one
//! embedding is dominated by the document, must be the same as the other.
//!
//! Owns [`LongText`]: how two texts compare when either runs past the
//! window (equal after folding case and white space, the same paragraphs in
//! another order, or one short edit in one place, widened to the sentences
//! around it for the lookup to compare by meaning). It must never call two
//! texts past the window the same when they differ in more than case, white
//! space and the order of paragraphs: an edit is the lookup's to judge, by
//! meaning.

use super::text::{is_cjk, Text};

/// Whether `a` and `b` differ past the embedding window (`window` words),
/// and how; and, formatted only when asked, how they compared.
pub(super) fn check(
    a: &Text,
    b: &Text,
    window: usize,
) -> (Option<String>, impl FnOnce() -> String) {
    // NOTE: without an embedder here, one short edit fails too; the
    // cache's lookup compares its sentences by meaning (`long_text`).
    let verdict = long_text_of(a, b, window);
    let diff = match &verdict {
        LongText::Same(_) => None,
        LongText::Edit { .. } => Some(verdict.describe()),
        LongText::Differs(why) => Some(why.clone()),
    };
    (diff, move || verdict.describe())
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

impl Text {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
