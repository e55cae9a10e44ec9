//! Anthropic's Messages API, keyed like a chat: `system` (a string or text
//! blocks) and every answer-shaping field exactly, user text by meaning,
//! assistant turns exactly, non-text blocks (images, documents, tool
//! results) exactly. Anthropic's `cache_control` markers are hints for its
//! own prompt cache: they never change an answer, so they are no part of a
//! key.

use serde_json::{Map, Value};

use super::Uncacheable;

/// Removes `cache_control` from a block (and from the blocks a tool result
/// carries), leaving everything else as it is.
fn without_hints(block: &Value) -> Value {
    match block {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                match k.as_str() {
                    "cache_control" => {}
                    // A tool result's own content blocks.
                    "content" if v.is_array() => {
                        out.insert(k.clone(), blocks(v));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn blocks(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(without_hints).collect()),
        other => other.clone(),
    }
}

/// The chat-shaped body a Messages request is keyed as: `system` becomes
/// the first turn, content blocks become content parts (a text block is a
/// text part), and `cache_control` is dropped from the system blocks, the
/// message blocks and the tools. Every other field stays, so that it splits
/// the cache.
pub fn as_chat(body: &Value) -> Result<Value, Uncacheable> {
    let obj = body.as_object().ok_or(Uncacheable::NotAnObject)?;
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or(Uncacheable::BadMessages)?;
    let mut turns = Vec::with_capacity(msgs.len() + 1);
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(s @ Value::String(_)) => {
            turns.push(serde_json::json!({"role": "system", "content": s}));
        }
        Some(s @ Value::Array(_)) => {
            turns.push(serde_json::json!({"role": "system", "content": blocks(s)}));
        }
        Some(_) => return Err(Uncacheable::BadMessages),
    }
    for m in msgs {
        let m = m.as_object().ok_or(Uncacheable::BadMessages)?;
        let mut turn = Map::new();
        for (k, v) in m {
            let v = if k == "content" { blocks(v) } else { v.clone() };
            turn.insert(k.clone(), v);
        }
        turns.push(Value::Object(turn));
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "system" => {}
            "messages" => {
                out.insert(k.clone(), Value::Array(std::mem::take(&mut turns)));
            }
            "tools" => {
                out.insert(k.clone(), blocks(v));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keying::{key_for, key_with, Endpoint, KeyOptions};
    use serde_json::json;

    fn key(body: Value) -> crate::keying::CacheKey {
        key_for(Endpoint::Messages, &body).unwrap()
    }

    fn base() -> Value {
        json!({"model": "claude-x", "max_tokens": 512,
               "system": "You are terse.",
               "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    }

    #[test]
    fn user_text_by_meaning_the_rest_exactly() {
        let k = key(base());
        assert!(k.semantic);
        assert_eq!(k.embed_text, "What is the capital of France?");
        let mut other_q = base();
        other_q["messages"][0]["content"] = json!("What's France's capital?");
        assert_eq!(
            key(other_q).partition,
            k.partition,
            "a paraphrase shares the partition"
        );
        for (name, change) in [
            ("system", json!({"system": "You are verbose."})),
            ("max_tokens", json!({"max_tokens": 100})),
            ("temperature", json!({"temperature": 0.0})),
            (
                "thinking",
                json!({"thinking": {"type": "enabled", "budget_tokens": 2048}}),
            ),
            ("stop_sequences", json!({"stop_sequences": ["\n"]})),
            (
                "tools",
                json!({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
            ),
            ("something new", json!({"top_k": 5})),
        ] {
            let mut b = base();
            for (f, v) in change.as_object().unwrap() {
                b[f] = v.clone();
            }
            assert_ne!(key(b).partition, k.partition, "{name}");
        }
        // Never the chat partition of the same words.
        let chat = key_for(
            Endpoint::Chat,
            &json!({"model": "claude-x", "max_tokens": 512, "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}]}),
        )
        .unwrap();
        assert_ne!(chat.partition, k.partition);
    }

    #[test]
    fn cache_control_is_no_part_of_the_key_and_blocks_are_not_strings() {
        let k = key(base());
        let mut marked = base();
        marked["system"] = json!([{"type": "text", "text": "You are terse.",
                                   "cache_control": {"type": "ephemeral"}}]);
        let blocks_key = key(marked.clone());
        let mut plain_blocks = base();
        plain_blocks["system"] = json!([{"type": "text", "text": "You are terse."}]);
        assert_eq!(blocks_key.partition, key(plain_blocks).partition);
        assert_ne!(
            blocks_key.partition, k.partition,
            "blocks are tagged apart from a string"
        );
        marked["messages"][0]["content"] = json!([{"type": "text",
            "text": "What is the capital of France?", "cache_control": {"type": "ephemeral"}}]);
        let mut unmarked = marked.clone();
        unmarked["messages"][0]["content"][0]
            .as_object_mut()
            .unwrap()
            .remove("cache_control");
        assert_eq!(key(marked).exact_hash, key(unmarked).exact_hash);
    }

    #[test]
    fn images_tool_results_and_assistant_turns_are_exact() {
        let mut img = base();
        img["messages"][0]["content"] = json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "text", "text": "What is in this picture?"}]);
        assert!(!key(img).semantic);
        let mut tool = base();
        tool["messages"] = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}]);
        assert!(!key(tool).semantic);
        // A changed assistant turn is another partition.
        let two = |a: &str| {
            let mut b = base();
            b["messages"] = json!([
                {"role": "user", "content": "Pick a number."},
                {"role": "assistant", "content": a},
                {"role": "user", "content": "Double it."}]);
            key_with(Endpoint::Messages, &b, &KeyOptions::default()).unwrap()
        };
        assert_ne!(two("4").partition, two("5").partition);
    }

    #[test]
    fn the_api_version_and_beta_headers_split() {
        let plain = key(base()).partition;
        let with = |version: Option<&str>, beta: Option<&str>| {
            let o = KeyOptions {
                anthropic_version: version,
                anthropic_beta: beta,
                ..KeyOptions::default()
            };
            key_with(Endpoint::Messages, &base(), &o).unwrap().partition
        };
        assert_eq!(with(None, None), plain);
        assert_ne!(with(Some("2023-06-01"), None), plain);
        assert_ne!(
            with(Some("2023-06-01"), Some("output-128k-2025-02-19")),
            with(Some("2023-06-01"), None)
        );
    }
}
