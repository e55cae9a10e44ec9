//! `[prices]`: USD per million tokens by model name or pattern, for the
//! savings metrics.
//!
//! Owns the raw table, the typed [`PriceTable`] and their `load()`. It must
//! never fetch prices: the built-in examples go stale, the file says the truth.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Errors;

/// One model's price, USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Prompt (input) tokens.
    pub prompt: f64,
    /// Completion (output) tokens.
    pub completion: f64,
}

/// Example list prices (USD per million tokens, standard tier) of common
/// OpenAI models. They go stale: set `[prices]` to your provider's.
pub(super) fn d_prices() -> BTreeMap<String, RawPrice> {
    [
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4.1", 2.00, 8.00),
        ("gpt-4.1-mini", 0.40, 1.60),
        ("gpt-4.1-nano", 0.10, 0.40),
        ("gpt-3.5-turbo", 0.50, 1.50),
        ("o3-mini", 1.10, 4.40),
    ]
    .into_iter()
    .map(|(m, prompt, completion)| (format!("{m}*"), RawPrice { prompt, completion }))
    .collect()
}

/// One row of the price table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    /// Model name, or pattern with `*`; also the metrics label.
    pub pattern: String,
    /// USD per million prompt tokens.
    pub prompt: f64,
    /// USD per million completion tokens.
    pub completion: f64,
}

/// Prices by model, most specific pattern first.
#[derive(Debug, Clone, Default)]
pub struct PriceTable(Vec<ModelPrice>);

impl PriceTable {
    /// A table from rows in any order.
    pub fn new(mut rows: Vec<ModelPrice>) -> PriceTable {
        // NOTE: exact names first, then longer patterns before shorter ones,
        // so that `gpt-4o-mini*` wins over `gpt-4o*`.
        rows.sort_by_key(|r| (r.pattern.contains('*'), std::cmp::Reverse(r.pattern.len())));
        PriceTable(rows)
    }

    /// The row that prices `model`, if any.
    pub fn price_for(&self, model: &str) -> Option<&ModelPrice> {
        self.0.iter().find(|r| super::glob_match(&r.pattern, model))
    }

    /// Every pattern (the possible metrics labels besides `other`).
    pub fn patterns(&self) -> Vec<String> {
        self.0.iter().map(|r| r.pattern.clone()).collect()
    }
}

/// `[prices]` into a [`PriceTable`].
pub(super) fn load(errs: &mut Errors, raw: &BTreeMap<String, RawPrice>) -> PriceTable {
    let mut prices = Vec::new();
    for (pattern, p) in raw {
        let key = format!("prices.\"{pattern}\"");
        if pattern.trim().is_empty() {
            errs.push(&key, "a model name or pattern must not be empty");
        }
        for (what, v) in [("prompt", p.prompt), ("completion", p.completion)] {
            if !(v.is_finite() && v >= 0.0) {
                errs.push(&format!("{key}.{what}"), "must be a price of 0 or more");
            }
        }
        prices.push(ModelPrice {
            pattern: pattern.clone(),
            prompt: p.prompt,
            completion: p.completion,
        });
    }
    PriceTable::new(prices)
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    #[test]
    fn prices_default_to_examples_and_prefer_the_most_specific_pattern() {
        let s = from_str("").unwrap();
        let p = s.prices.price_for("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(p.pattern, "gpt-4o-mini*");
        assert_eq!(s.prices.price_for("gpt-4o").unwrap().pattern, "gpt-4o*");
        assert!(s.prices.price_for("llama-3").is_none());
        let s = from_str(
            "[prices]\n\"my-model\" = { prompt = 1.0, completion = 2.0 }\n\"my-*\" = { prompt = 3.0, completion = 4.0 }\n",
        )
        .unwrap();
        assert_eq!(s.prices.patterns(), vec!["my-model", "my-*"]);
        assert_eq!(s.prices.price_for("my-model").unwrap().prompt, 1.0);
        assert_eq!(s.prices.price_for("my-other").unwrap().prompt, 3.0);
        assert!(
            s.prices.price_for("gpt-4o").is_none(),
            "a table replaces the examples"
        );
        let err = from_str("[prices]\nm = { prompt = -1.0, completion = 1.0 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prices.\"m\".prompt"), "{err}");
    }
}
