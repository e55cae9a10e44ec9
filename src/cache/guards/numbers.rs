//! The numbers guard: the numbers, units and currencies, arithmetic
//! operators and named dates (weekdays, months, seasons) of two texts must
//! be the same.
//!
//! Owns the reading of numbers as written (`1,250`, `１２５０`, `1万`,
//! `一百` are one value each; `3.10` is not `3.1`), when a list's order
//! counts, which units and currencies a text names, and which operators it
//! writes as symbols or words. It must never fail two texts that write the
//! same numbers in other forms, nor read punctuation (a hyphen, "and/or") as
//! arithmetic.

use std::collections::{BTreeMap, BTreeSet};

use super::text::{is_cjk, show, Text};
use crate::cache::lexicon::CALENDAR;
use crate::cache::lexicon::ORDER_FREE;
use crate::cache::lexicon::UNITS;

/// What differs in the numbers, operators, units or named dates of `a` and
/// `b`, if anything; and, formatted only when asked, the numbers both hold.
pub(super) fn check(a: &Text, b: &Text) -> (Option<String>, impl FnOnce() -> String) {
    let (na, nb) = (a.numbers(&[]), b.numbers(&[]));
    // A number spelled out ("six", "cinco") stands for the digits the other
    // text writes and this one lacks; unpaired, it is a word like any other
    // ("which one", "un libro").
    let (na, nb) = if na == nb {
        (na, nb)
    } else {
        let (wa, wb) = (a.spelled(&missing(&nb, &na)), b.spelled(&missing(&na, &nb)));
        if wa.is_empty() && wb.is_empty() {
            (na, nb)
        } else {
            (a.numbers(&wa), b.numbers(&wb))
        }
    };
    let (ua, ub) = (a.units(), b.units());
    let (ca, cb) = (a.members(CALENDAR), b.members(CALENDAR));
    let (oa, ob) = (a.operators(), b.operators());
    let diff = if na != nb {
        Some(format!("numbers {} vs {}", na.join(", "), nb.join(", ")))
    } else if oa != ob {
        Some(format!("operators {oa:?} vs {ob:?}"))
    } else if ua != ub {
        Some(format!("units {} vs {}", show(&ua), show(&ub)))
    } else if ca != cb && !ca.is_empty() && !cb.is_empty() {
        // NOTE: a date named against none is a rewording or a scope for the
        // similarity to judge ("in the fall" / "in autumn": "fall" is too
        // often a verb to be listed).
        Some(format!("dates {} vs {}", show(&ca), show(&cb)))
    } else if na.is_empty() {
        None
    } else {
        unit_swap(&a.measured(), &b.measured())
    };
    let agreed = move || {
        format!(
            "numbers {}",
            if na.is_empty() {
                "none".into()
            } else {
                na.join(", ")
            }
        )
    };
    (diff, agreed)
}

/// A number both texts measure in another unit ("72°F to Celsius" / "72°C
/// to Fahrenheit": the same units, the same number, the other way round).
/// A number written bare on either side says nothing.
fn unit_swap(
    a: &BTreeMap<String, BTreeSet<&'static str>>,
    b: &BTreeMap<String, BTreeSet<&'static str>>,
) -> Option<String> {
    a.iter().find_map(|(value, ua)| {
        let ub = b.get(value)?;
        (ua != ub).then(|| {
            let show = |u: &BTreeSet<&str>| u.iter().copied().collect::<Vec<_>>().join(", ");
            format!("{value} in {} vs {value} in {}", show(ua), show(ub))
        })
    })
}

/// The unit group a word names, written as it is (`km`, `°f`) or with a
/// plural ending (`kilometers`, `inches`).
fn unit_of(word: &str) -> Option<&'static str> {
    let forms = [Some(word), word.strip_suffix("es"), word.strip_suffix('s')];
    UNITS.iter().find_map(|g| {
        forms
            .iter()
            .flatten()
            .any(|f| !f.is_empty() && g.contains(f))
            .then_some(g[0])
    })
}

impl Text {
    /// The unit written right after each number ("72°F", "100 km", "72
    /// degrees Fahrenheit"), by value: what the number measures. Latin
    /// units only; a number with no unit after it is left out.
    fn measured(&self) -> BTreeMap<String, BTreeSet<&'static str>> {
        let chars: Vec<char> = self.lower.chars().collect();
        let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
        for (_, end, value) in self.number_spans(&chars) {
            let rest: String = chars[end..].iter().take(40).collect();
            let mut words = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '°'))
                .filter(|w| !w.is_empty());
            let rest_starts_word = chars
                .get(end)
                .is_some_and(|c| *c == ' ' || *c == '°' || c.is_alphabetic());
            if !rest_starts_word {
                continue;
            }
            let mut word = words.next();
            let degrees = matches!(word, Some("degrees" | "degree" | "°"));
            if degrees {
                word = words.next();
            }
            // NOTE: "72° F", "72 degrees C": the letter after a degree.
            let unit = word.and_then(|w| {
                unit_of(w).or_else(|| degrees.then(|| unit_of(&format!("°{w}"))).flatten())
            });
            if let Some(u) = unit {
                out.entry(value).or_default().insert(u);
            }
        }
        out
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

    /// Every number, normalised and in order: `1,250` and `１２５０` are
    /// `1250`, `1万` is `10000`, `一百` is `100`. When the text asks for
    /// something a list's order cannot change (an average, a sum, the
    /// largest), a list of three or more ("4, 8, 15 and 16") is compared as
    /// a set of values; a sequence ("the next number in 2, 4, 8") keeps its
    /// order. A `1` before a unit is the article ("1 day" is "a day") and is
    /// left out.
    fn numbers(&self, spelled: &[(usize, usize, String)]) -> Vec<String> {
        let chars: Vec<char> = self.lower.chars().collect();
        let mut found = self.number_spans(&chars);
        if !spelled.is_empty() {
            found.extend(spelled.iter().cloned());
            found.sort_by_key(|f| f.0);
        }
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

    /// The numbers spelled out as words whose values are in `wanted` (a
    /// multiset, each value taken once), with their char ranges: the words
    /// the other text writes as digits.
    fn spelled(&self, wanted: &[String]) -> Vec<(usize, usize, String)> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut left: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let chars: Vec<char> = self.lower.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            if !chars[i].is_alphabetic() || is_cjk(chars[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() && !is_cjk(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let Some(v) = spelled_value(&word) else {
                continue;
            };
            let v = v.to_string();
            if let Some(k) = left.iter().position(|w| *w == v) {
                left.swap_remove(k);
                out.push((start, i, v));
            }
        }
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

/// The values of `from` that `minus` does not hold, as many times as
/// `from` holds them more.
fn missing(from: &[String], minus: &[String]) -> Vec<String> {
    let mut left: Vec<&String> = minus.iter().collect();
    from.iter()
        .filter(|v| match left.iter().position(|w| w == v) {
            Some(k) => {
                left.swap_remove(k);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// The value of a number word of English, Spanish, French or German, up
/// to twenty and the tens.
fn spelled_value(word: &str) -> Option<u32> {
    const WORDS: &[(&[&str], u32)] = &[
        (&["zero", "cero", "zéro", "null"], 0),
        (&["one", "uno", "una", "un", "une", "eins"], 1),
        (&["two", "dos", "deux", "zwei"], 2),
        (&["three", "tres", "trois", "drei"], 3),
        (&["four", "cuatro", "quatre", "vier"], 4),
        (&["five", "cinco", "cinq", "fünf"], 5),
        (&["six", "seis", "sechs"], 6),
        (&["seven", "siete", "sept", "sieben"], 7),
        (&["eight", "ocho", "huit", "acht"], 8),
        (&["nine", "nueve", "neuf", "neun"], 9),
        (&["ten", "diez", "dix", "zehn"], 10),
        (&["eleven", "once", "onze", "elf"], 11),
        (&["twelve", "doce", "douze", "zwölf"], 12),
        (&["thirteen"], 13),
        (&["fourteen"], 14),
        (&["fifteen"], 15),
        (&["sixteen"], 16),
        (&["seventeen"], 17),
        (&["eighteen"], 18),
        (&["nineteen"], 19),
        (&["twenty", "veinte", "vingt", "zwanzig"], 20),
        (&["thirty", "treinta", "trente", "dreißig"], 30),
        (&["forty", "cuarenta", "quarante", "vierzig"], 40),
        (&["fifty", "cincuenta", "cinquante", "fünfzig"], 50),
        (&["sixty", "sesenta", "soixante", "sechzig"], 60),
        (&["seventy", "setenta", "siebzig"], 70),
        (&["eighty", "ochenta", "achtzig"], 80),
        (&["ninety", "noventa", "neunzig"], 90),
        (&["hundred", "cien", "cent", "hundert"], 100),
        (&["thousand", "mil", "mille", "tausend"], 1000),
    ];
    WORDS
        .iter()
        .find(|(ws, _)| ws.contains(&word))
        .map(|(_, v)| *v)
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
