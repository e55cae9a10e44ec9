//! The language guard: two texts must be written in the same natural
//! language and name the same ones.
//!
//! Owns the guess of the language a text is written in (by script, then by
//! a small stop-word vote among Latin-script languages) and the comparison
//! of the languages each names ("translate into Japanese"). It must stay a
//! count of characters and stop words: no dictionary, no model, and a Latin
//! text with no stop word it knows is English.

use super::text::{show, Text};
use crate::cache::lexicon::LANGUAGES;

/// What differs in the language `a` and `b` are written in or name, if
/// anything; and, formatted only when asked, the language of both.
pub(super) fn check(a: &Text, b: &Text) -> (Option<String>, impl FnOnce() -> String) {
    let (la, lb) = (a.language(), b.language());
    let (na, nb) = (a.members_fuzzy(LANGUAGES), b.members_fuzzy(LANGUAGES));
    // NOTE: a vote two Latin-script languages tie is no guess: it differs
    // from no Latin-script language ("Combien mesure la tour Eiffel ?"
    // holds one French and one Spanish stop word, "la").
    let unsure = |x: &str, y: &str| x == TIED && LATIN.contains(&y);
    let diff = if la != lb && !unsure(la, lb) && !unsure(lb, la) {
        Some(format!("written in {la} vs {lb}"))
    } else if na != nb {
        Some(format!("names {} vs {}", show(&na), show(&nb)))
    } else {
        None
    };
    (diff, move || format!("written in {la}"))
}

/// The guess for a Latin-script text whose stop-word vote two languages tie.
const TIED: &str = "a Latin-script language";

/// The languages the stop-word vote guesses.
const LATIN: [&str; 6] = ["en", "es", "fr", "de", "pt", TIED];

impl Text {
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
                    "une", "pour", "je", "du", "des", "au", "aux", "ce", "cette", "combien",
                    "pourquoi", "où", "dans", "avec", "vous", "sont",
                ],
            ),
            (
                "de",
                &[
                    "der", "die", "das", "ist", "wie", "was", "und", "ich", "ein", "eine", "mein",
                    "nicht", "den", "dem", "mit", "von", "für", "auf", "man", "warum", "wann",
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
        let mut tied = false;
        for (lang, words) in VOTES {
            let n = self
                .tokens
                .iter()
                .filter(|t| words.contains(&t.as_str()))
                .count();
            if n > best.1 {
                best = (lang, n);
                tied = false;
            } else if n == best.1 && n > 0 {
                tied = true;
            }
        }
        if tied {
            TIED
        } else {
            best.0
        }
    }
}
