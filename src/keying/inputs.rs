//! The inputs of an embeddings request. Each input is its own exact key, so
//! that a batch can be served partly from the cache and partly upstream; an
//! input is never matched by meaning.

use serde_json::Value;

use super::{canonical, exact_hash, push_exact, CacheKey, Endpoint, Uncacheable};

/// One input: a text or an array of token ids, as the request wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Input(Value);

impl Input {
    /// The input as it goes back into a request body.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Its kind (`text` or `tokens`) and its text: the string itself, or the
    /// token array as canonical JSON. A text can never pass for tokens.
    pub fn tagged(&self) -> (&'static str, String) {
        match &self.0 {
            Value::String(s) => ("text", s.clone()),
            other => ("tokens", canonical(other)),
        }
    }
}

fn is_token(v: &Value) -> bool {
    v.as_u64().is_some() || v.as_i64().is_some()
}

fn is_token_array(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(is_token))
}

/// The inputs of `input`, in order: a string, an array of token ids (one
/// input), or a non-empty array of strings or of token arrays.
pub fn of(input: Option<&Value>) -> Result<Vec<Input>, Uncacheable> {
    match input {
        Some(Value::String(s)) => Ok(vec![Input(Value::String(s.clone()))]),
        Some(v @ Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(is_token) {
                Ok(vec![Input(v.clone())])
            } else if items.iter().all(Value::is_string) || items.iter().all(is_token_array) {
                Ok(items.iter().cloned().map(Input).collect())
            } else {
                Err(Uncacheable::BadInput)
            }
        }
        _ => Err(Uncacheable::BadInput),
    }
}

/// The key of one input of the request keyed `whole`: the same partition
/// (model, `dimensions`, every other field but `input` and
/// `encoding_format`), the input as its only turn, exact only.
pub fn key(whole: &CacheKey, input: &Input) -> CacheKey {
    debug_assert_eq!(whole.endpoint, Endpoint::Embeddings);
    let (tag, text) = input.tagged();
    let mut turns = String::new();
    push_exact(&mut turns, 0, tag, &text);
    CacheKey {
        exact_hash: exact_hash(&whole.partition, &turns),
        text: format!("{tag}###{text}"),
        embed_text: String::new(),
        semantic: false,
        stream: false,
        include_usage: false,
        ..whole.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keying::key_for;
    use serde_json::json;

    fn keys(body: Value) -> Vec<String> {
        let whole = key_for(Endpoint::Embeddings, &body).unwrap();
        of(body.get("input"))
            .unwrap()
            .iter()
            .map(|i| key(&whole, i).exact_hash)
            .collect()
    }

    #[test]
    fn every_input_shape_and_what_is_refused() {
        let one = |v: Value| of(Some(&v)).map(|i| i.len());
        assert_eq!(one(json!("hello")), Ok(1));
        assert_eq!(one(json!(["a", "b", "a"])), Ok(3));
        assert_eq!(one(json!([1, 2, 3])), Ok(1), "one token array");
        assert_eq!(one(json!([[1, 2], [3]])), Ok(2));
        for bad in [
            json!([]),
            json!(["a", 1]),
            json!([[1], []]),
            json!([["a"]]),
            json!(3),
            json!({"text": "a"}),
        ] {
            assert_eq!(one(bad.clone()), Err(Uncacheable::BadInput), "{bad}");
        }
        assert_eq!(of(None), Err(Uncacheable::BadInput));
    }

    #[test]
    fn an_input_keys_alike_wherever_it_sits_and_whatever_the_encoding() {
        let a = keys(json!({"model": "e", "input": ["x", "y"]}));
        let b = keys(json!({"model": "e", "input": ["y", "x"], "encoding_format": "base64"}));
        let c = keys(json!({"model": "e", "input": "x", "user": "u1"}));
        assert_eq!(a[0], b[1]);
        assert_eq!(a[1], b[0]);
        assert_eq!(a[0], c[0]);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn model_dimensions_and_unknown_fields_split_and_text_never_passes_for_tokens() {
        let base = keys(json!({"model": "e", "input": "7"}))[0].clone();
        for other in [
            json!({"model": "f", "input": "7"}),
            json!({"model": "e", "input": "7", "dimensions": 256}),
            json!({"model": "e", "input": "7", "something_new": true}),
            json!({"model": "e", "input": [7]}),
            json!({"model": "e", "input": "7 "}),
        ] {
            assert_ne!(keys(other.clone())[0], base, "{other}");
        }
    }
}
