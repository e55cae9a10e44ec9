//! Structural guards: cheap, exact comparisons of a stored question and a
//! probe that an embedding cannot be trusted with.
//!
//! Owns seven checks, each in its own file: numbers and units (`numbers`),
//! negation and polarity words (`negation`) and, switched with it, the word
//! order around "to", "from", "than" (`direction`), programming languages,
//! platforms and code (`code`), the natural language (`language`), the order
//! of the words both texts share (`order`), and the text beyond the
//! embedding window (`long_text`). A tenant switches each
//! on or off ([`GuardSet`]). Each guard takes the two texts tokenised once
//! (`text`) and says what differed; this file runs the enabled ones, in
//! that order. The word lists they share are [`lexicon`](super::lexicon)'s.
//! A guard fails only on evidence that the two texts ask different things;
//! it never makes a candidate hit. It must stay allocation-light and free
//! of I/O: it runs on every semantic candidate that passes the threshold.

mod code;
mod direction;
mod language;
mod long_text;
mod negation;
mod numbers;
mod order;
mod text;

// NOTE: which guards run is a setting, so its type is config's.
pub use crate::config::GuardSet;
pub use long_text::{long_text, LongText};

use text::Text;

/// The outcome of one guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardResult {
    /// `numbers`, `negation`, `direction`, `code`, `language`, `order` or
    /// `long_text`.
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
    let mut r = Results {
        ok: true,
        detail,
        out: Vec::new(),
    };
    if set.numbers {
        r.push("numbers", numbers::check(&a, &b));
    }
    if set.negation {
        r.push("negation", negation::check(&a, &b));
        r.push("direction", direction::check(&a, &b));
    }
    if set.code {
        r.push("code", code::check(&a, &b, stored, probe));
    }
    if set.language {
        r.push("language", language::check(&a, &b));
    }
    if set.order {
        r.push("order", order::check(&a, &b));
    }
    if set.long_text {
        r.push("long_text", long_text::check(&a, &b, set.window_words));
    }
    (r.ok, r.out)
}

/// The results of [`check`] so far.
struct Results {
    ok: bool,
    detail: bool,
    out: Vec<GuardResult>,
}

impl Results {
    /// One guard's answer: what differed (`None` when the texts agree), and
    /// what was compared, formatted only when `detail` is set and it passed.
    fn push(&mut self, name: &'static str, (x, what): (Option<String>, impl FnOnce() -> String)) {
        let passed = x.is_none();
        self.ok &= passed;
        if self.detail {
            self.out.push(GuardResult {
                name,
                passed,
                detail: x.unwrap_or_else(what),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // NOTE: these tests go through `check`, so they live here: in a guard's
    // file they would make it import this one, which imports it.
    fn fails(a: &str, b: &str) -> Vec<&'static str> {
        let (_, r) = check(a, b, &GuardSet::default(), true);
        r.into_iter()
            .filter(|g| !g.passed)
            .map(|g| g.name)
            .collect()
    }

    #[test]
    fn words_exchanged_apart_fail_and_one_moved_phrase_passes() {
        let swapped = [
            (
                "Why did Alice sue Bob after the merger?",
                "Why did Bob sue Alice after the merger?",
            ),
            (
                "The team was founded in Spain and moved to France in its second year.",
                "The team was founded in France and moved to Spain in its second year.",
            ),
            (
                "His father married Catherine Fagan, who later became governor of Arkansas.",
                "His father married Arkansas, who later became governor of Catherine Fagan.",
            ),
            // The same numbers in order, the words beside them exchanged.
            (
                "She retired in 1987 and died in 2004.",
                "She died in 1987 and retired in 2004.",
            ),
            (
                "The team had 29 female and 48 male athletes.",
                "The team had 29 male and 48 female athletes.",
            ),
            // A word moved inside the text, past more than two words, moves
            // a role.
            (
                "Visitors to the museum near the beautiful old bridge buy tickets online.",
                "Visitors to the old museum near the beautiful bridge buy tickets online.",
            ),
            // Prepositions are words of the order.
            (
                "What is the capital of the country next to France?",
                "What is the country of the capital next to France?",
            ),
            // Nor another form of a word.
            (
                "Marta entrevistaba al director del museo en Madrid.",
                "El director del museo entrevistando a Marta en Madrid.",
            ),
            // An accent or a typo does not hide an exchange.
            (
                "The Luhei River is a tributary of the Viseu River.",
                "The Vişeu River is a tributary of the Luhei River.",
            ),
        ];
        for (a, b) in swapped {
            let got = fails(&format!("user###{a}"), &format!("user###{b}"));
            assert!(got.contains(&"order"), "{b}: {got:?}");
        }
        let moved = [
            (
                "How do I remove duplicates from a list in Python?",
                "In Python, how do I remove duplicates from a list?",
            ),
            (
                "How do I center a div horizontally and vertically with flexbox?",
                "With flexbox, how do I center a div vertically and horizontally?",
            ),
            (
                "What's the way to reverse a Python list?",
                "How do I reverse a list in Python?",
            ),
            // Articles do not hide two words joined by "or".
            (
                "Is a tomato a fruit or a vegetable?",
                "Is the tomato a vegetable or a fruit?",
            ),
            // The order of what a symmetric question compares asks nothing.
            (
                "What's the difference between let and const in JavaScript?",
                "In JavaScript, how does const differ from let?",
            ),
            // A list of numbers is the numbers guard's (here, a set).
            (
                "What is the average of 4, 8, 15, 16, 23 and 42?",
                "What is the average of 42, 23, 16, 15, 8 and 4?",
            ),
            // One word moved past a phrase: a compound reordered.
            (
                "Write a unit test in pytest for add(a, b) that returns a + b.",
                "Write a pytest unit test for add(a, b), which returns a + b.",
            ),
            // Few shared words: a rewording, judged by the threshold.
            (
                "Which city is the capital of Australia?",
                "Australia's seat of government is which town?",
            ),
        ];
        for (a, b) in moved {
            let got = fails(&format!("user###{a}"), &format!("user###{b}"));
            assert!(!got.contains(&"order"), "{b}: {got:?}");
        }
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
    fn a_number_spelled_out_is_the_digits_the_other_text_writes() {
        for (a, b) in [
            (
                "What is the probability of rolling a 6 on a die?",
                "What's the chance of rolling a six on a die?",
            ),
            (
                "Give me 3 tips for better sleep.",
                "Give me three tips for better sleep.",
            ),
            ("Nombra 5 ríos de Europa.", "Nombra cinco ríos de Europa."),
            (
                "Show the top 5 months, then the worst 2.",
                "Show the top five months, then the worst two.",
            ),
        ] {
            assert!(
                fails(&format!("user###{a}"), &format!("user###{b}")).is_empty(),
                "{a} / {b}"
            );
        }
        for (a, b) in [
            (
                "Give me 3 tips for better sleep.",
                "Give me four tips for better sleep.",
            ),
            // The order still counts: the word stands where it is written.
            ("Convert 5 miles to 8 km.", "Convert eight miles to 5 km."),
            // A word that stands for no digit of the other text reads as a word.
            ("Which one is bigger, 7 or 9?", "Which is bigger, 7 or 10?"),
        ] {
            assert_eq!(
                fails(&format!("user###{a}"), &format!("user###{b}")),
                ["numbers"],
                "{a} / {b}"
            );
        }
        assert!(fails(
            "user###Which one is bigger, 7 or 9?",
            "user###Which is bigger, 7 or 9?"
        )
        .is_empty());
    }

    #[test]
    fn a_changed_weekday_month_or_season_is_a_changed_date() {
        for (a, b) in [
            (
                "Can I book a table for Saturday night?",
                "Can I book a table for Friday night?",
            ),
            (
                "What happened on March 15, 44 BC?",
                "What happened on April 15, 44 BC?",
            ),
            (
                "Best places in Europe in winter?",
                "Best places in Europe in summer?",
            ),
            ("¿Abre la tienda el lunes?", "¿Abre la tienda el domingo?"),
            ("商店星期一开门吗？", "商店星期天开门吗？"),
        ] {
            assert_eq!(
                fails(&format!("user###{a}"), &format!("user###{b}")),
                ["numbers"],
                "{a} / {b}"
            );
        }
        for (a, b) in [
            (
                "Is the museum free on Tuesdays?",
                "Is the museum free on a Tuesday?",
            ),
            (
                "What did she say on 18 October 1954?",
                "What did she say on October 18, 1954?",
            ),
            ("May I book a table?", "Can I book a table?"),
            (
                "Why do leaves change color in the fall?",
                "Why do leaves change colour in autumn?",
            ),
        ] {
            assert!(
                fails(&format!("user###{a}"), &format!("user###{b}")).is_empty(),
                "{a} / {b}"
            );
        }
    }

    #[test]
    fn a_number_measured_in_another_unit_fails() {
        // The same number and the same two units, the other way round.
        assert!(fails(
            "user###Convert 72°F to Celsius.",
            "user###Convert 72°C to Fahrenheit."
        )
        .contains(&"numbers"));
        assert!(fails(
            "user###How far is 5 km in miles?",
            "user###How far is 5 miles in km?"
        )
        .contains(&"numbers"));
        // The unit written another way, or not after the number at all.
        for (a, b) in [
            (
                "Convert 72°F to Celsius.",
                "What is 72 degrees Fahrenheit in Celsius?",
            ),
            (
                "Convert 100 kilometers to miles.",
                "How many miles is 100 km?",
            ),
            ("Convert 100 km to miles.", "Convert 100 to miles from km."),
        ] {
            let got = fails(&format!("user###{a}"), &format!("user###{b}"));
            assert!(!got.contains(&"numbers"), "{a} / {b}: {got:?}");
        }
    }

    #[test]
    fn order_of_numbers_operators_and_direction() {
        assert_eq!(
            fails(
                "user###What is 2 to the power of 10?",
                "user###What is 10 to the power of 2?"
            ),
            ["numbers", "direction", "order"]
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
            // NOTE: words exchanged around "to" are also an exchange.
            ["direction", "order"]
        );
        assert_eq!(
            fails(
                "user###Convert 100 kilometers to miles.",
                "user###Convert 100 miles to kilometers."
            ),
            // NOTE: and 100 is measured in another unit.
            ["numbers", "direction", "order"]
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
            ["numbers", "negation"]
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
            ["numbers", "direction", "order"]
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
    fn a_question_that_asks_another_thing_fails() {
        for (a, b) in [
            (
                "How did the universe begin?",
                "When did the universe begin?",
            ),
            (
                "Why did God create the universe?",
                "How did God create the universe?",
            ),
            (
                "Where do the Amish live?",
                "Why do the Amish live like they do?",
            ),
            (
                "¿Cómo funciona la fotosíntesis?",
                "¿Por qué funciona la fotosíntesis?",
            ),
        ] {
            let got = fails(&format!("user###{a}"), &format!("user###{b}"));
            assert_eq!(got, ["negation"], "{b}");
        }
        // "How come" is "why"; "what" asks anything; one text with a
        // question word against one without is not two things asked.
        for (a, b) in [
            ("How come the sky is blue?", "Why is the sky blue?"),
            (
                "What's the way to merge two dicts in Python?",
                "How do I merge two dicts in Python?",
            ),
            (
                "How do I find the folder where my files are saved?",
                "Where are my files saved?",
            ),
            // A question word with no verb after it asks nothing.
            (
                "How does magnesium oxide react with water?",
                "What happens when magnesium oxide reacts with water?",
            ),
            // Asking more is not asking another thing.
            (
                "When and how did you start the business?",
                "When did you start the business?",
            ),
            // "How can I…" and "Where can I…" ask alike.
            (
                "How can I download my invoices?",
                "Where can I download my invoices?",
            ),
        ] {
            let got = fails(&format!("user###{a}"), &format!("user###{b}"));
            assert!(!got.contains(&"negation"), "{b}: {got:?}");
        }
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
    fn a_word_swapped_for_its_opposite_fails() {
        for (a, b) in [
            (
                "Is coffee bad for your heart?",
                "Is coffee good for your heart?",
            ),
            (
                "What time does the sun set in London in June?",
                "What time does the sun rise in London in June?",
            ),
            (
                "Why did the shares close lower?",
                "Why did the shares close higher?",
            ),
            (
                "Is it safe to eat raw eggs?",
                "Is it unsafe to eat raw eggs?",
            ),
            (
                "Is this a profit organisation?",
                "Is this a nonprofit organisation?",
            ),
            (
                "Is it possible to merge two repos?",
                "Is it impossible to merge two repos?",
            ),
        ] {
            assert_eq!(
                fails(&format!("user###{a}"), &format!("user###{b}")),
                ["negation"],
                "{a} / {b}"
            );
        }
        // A word against a text that says neither, or both, is no opposite.
        for (a, b) in [
            (
                "Is coffee good for your heart?",
                "Is coffee healthy for the heart?",
            ),
            (
                "Which is better for the heart, good fats or bad fats?",
                "For the heart, which is better: bad fats or good fats?",
            ),
            ("Unless I pay, can I use it?", "Can I use it less?"),
        ] {
            assert!(
                !fails(&format!("user###{a}"), &format!("user###{b}")).contains(&"negation"),
                "{a} / {b}"
            );
        }
    }

    #[test]
    fn the_depth_asked_of_an_answer_is_a_pair_of_opposites() {
        for (a, b) in [
            (
                "Explain photosynthesis briefly.",
                "Explain photosynthesis in detail.",
            ),
            (
                "Give me a concise overview of the French Revolution.",
                "Give me a detailed overview of the French Revolution.",
            ),
            ("请简要介绍一下量子计算。", "请详细介绍一下量子计算。"),
            (
                "Explica brevemente la fotosíntesis.",
                "Explica en detalle la fotosíntesis.",
            ),
        ] {
            assert_eq!(
                fails(&format!("user###{a}"), &format!("user###{b}")),
                ["negation"],
                "{a} / {b}"
            );
        }
        // Silence is not the opposite: "explain it" is either.
        assert!(fails(
            "user###Explain photosynthesis.",
            "user###Explain photosynthesis briefly."
        )
        .is_empty());
        assert!(fails(
            "user###Walk me through setting up SSH keys step by step.",
            "user###Walk me through setting up SSH keys in detail."
        )
        .is_empty());
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
        assert!(!fails(
            "user###Quelle est la hauteur de la tour Eiffel ?",
            "user###Combien mesure la tour Eiffel ?"
        )
        .contains(&"language"));
        // A text whose stop words two languages share is no guess (Italian:
        // "un" votes Spanish and French alike).
        assert!(fails(
            "user###Quanto costa un biglietto per Roma?",
            "user###Quanto costa il biglietto per Roma?"
        )
        .is_empty());
        assert_eq!(
            fails(
                "user###Combien mesure la tour Eiffel ?",
                "user###How tall is the Eiffel Tower?"
            ),
            ["language"]
        );
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
