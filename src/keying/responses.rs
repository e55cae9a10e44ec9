//! OpenAI's Responses API, keyed like a chat: `instructions` is the system
//! turn, matched exactly; the user's input text is judged by meaning;
//! assistant output fed back, images, files, function calls, their outputs
//! and reasoning items are matched exactly. A request that depends on state
//! the upstream holds (`previous_response_id`, `conversation`) or that runs
//! in the background is never keyed.

use serde_json::{json, Map, Value};

use sha2::{Digest, Sha256};

use super::{exact_hash, CacheKey, Endpoint, Uncacheable};

/// The key under which a response the gateway minted an id for is kept
/// (in its tenant's store): a partition of its own that no request's key
/// can have (a request's is a hash of its endpoint, model and fields), the
/// id as its only turn, exact only.
pub fn minted_key(id: &str) -> CacheKey {
    let partition = hex::encode(Sha256::digest(b"modelcache minted responses v1"));
    CacheKey {
        endpoint: Endpoint::Responses,
        model: String::new(),
        exact_hash: exact_hash(&partition, id),
        partition,
        text: format!("minted###{id}"),
        embed_text: String::new(),
        semantic: false,
        stream: false,
        include_usage: false,
        params: "{}".into(),
    }
}

/// The request fields that make an answer depend on the upstream's state.
pub const STATEFUL: [&str; 2] = ["previous_response_id", "conversation"];

/// An input content part as a chat content part: `input_text` is text;
/// anything else (images, files, audio) stays as it is, so it is exact.
fn part(p: &Value) -> Value {
    match (p.get("type").and_then(Value::as_str), p.get("text")) {
        (Some("input_text"), Some(Value::String(t)))
            if p.as_object().is_some_and(|o| o.len() == 2) =>
        {
            json!({"type": "text", "text": t})
        }
        _ => p.clone(),
    }
}

/// One input item as a chat turn.
fn turn(item: &Value) -> Result<Value, Uncacheable> {
    let o = item.as_object().ok_or(Uncacheable::BadMessages)?;
    let kind = o.get("type").and_then(Value::as_str).unwrap_or("message");
    let role = o.get("role").and_then(Value::as_str);
    match (kind, role) {
        ("message", Some(r @ ("user" | "system" | "developer"))) => {
            let content = match o.get("content") {
                Some(Value::Array(parts)) => Value::Array(parts.iter().map(part).collect()),
                Some(c @ Value::String(_)) => c.clone(),
                _ => return Err(Uncacheable::BadMessages),
            };
            let mut t = Map::new();
            t.insert("role".into(), json!(r));
            t.insert("content".into(), content);
            // Anything else on the item (an id, a status) is matched exactly.
            for (k, v) in o {
                if !matches!(k.as_str(), "role" | "content" | "type") {
                    t.insert(k.clone(), v.clone());
                }
            }
            Ok(Value::Object(t))
        }
        // NOTE: assistant output fed back is an assistant turn, matched
        // exactly, as in a chat.
        ("message", Some("assistant")) => {
            let mut t = o.clone();
            t.remove("type");
            Ok(Value::Object(t))
        }
        // NOTE: function calls and their outputs,
        // reasoning items: one exact turn each, under a role no chat has.
        _ => Ok(json!({"role": format!("item:{kind}"), "item": item})),
    }
}

/// The chat-shaped body a Responses request is keyed as.
pub fn as_chat(body: &Value) -> Result<Value, Uncacheable> {
    let obj = body.as_object().ok_or(Uncacheable::NotAnObject)?;
    if STATEFUL
        .iter()
        .any(|f| obj.get(*f).is_some_and(|v| !v.is_null()))
        || obj.get("background").and_then(Value::as_bool) == Some(true)
    {
        return Err(Uncacheable::Stateful);
    }
    let mut turns = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(i @ Value::String(_)) => turns.push(json!({"role": "system", "content": i})),
        Some(_) => return Err(Uncacheable::BadMessages),
    }
    match obj.get("input") {
        Some(Value::String(s)) => turns.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for item in items {
                turns.push(turn(item)?);
            }
        }
        _ => return Err(Uncacheable::BadMessages),
    }
    let mut out = Map::new();
    for (k, v) in obj {
        if !matches!(k.as_str(), "instructions" | "input") {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert("messages".into(), Value::Array(turns));
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keying::{key_for, Endpoint};

    fn key(body: Value) -> Result<crate::keying::CacheKey, Uncacheable> {
        key_for(Endpoint::Responses, &body)
    }

    #[test]
    fn input_text_by_meaning_instructions_and_fields_exactly() {
        let base = json!({"model": "gpt-x", "instructions": "Be terse.", "input": "What is Rust?"});
        let k = key(base.clone()).unwrap();
        assert!(k.semantic);
        assert_eq!(k.embed_text, "What is Rust?");
        // The same question as a list of items, text as input_text parts.
        let items = json!({"model": "gpt-x", "instructions": "Be terse.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is Rust?"}]}]});
        let ki = key(items).unwrap();
        assert!(ki.semantic);
        assert_eq!(ki.embed_text, "What is Rust?");
        for (name, f, v) in [
            ("instructions", "instructions", json!("Be verbose.")),
            (
                "text.format",
                "text",
                json!({"format": {"type": "json_object"}}),
            ),
            ("reasoning", "reasoning", json!({"effort": "high"})),
            ("max_output_tokens", "max_output_tokens", json!(64)),
            ("include", "include", json!(["reasoning.encrypted_content"])),
            ("unknown", "something_new", json!(1)),
        ] {
            let mut b = base.clone();
            b[f] = v;
            assert_ne!(key(b).unwrap().partition, k.partition, "{name}");
        }
        let mut same = base.clone();
        same["store"] = json!(false);
        same["metadata"] = json!({"trace": "x"});
        assert_eq!(key(same).unwrap().partition, k.partition);
        let chat = key_for(Endpoint::Chat, &json!({"model": "gpt-x", "messages": [
            {"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is Rust?"}]}))
        .unwrap();
        assert_ne!(chat.partition, k.partition);
    }

    #[test]
    fn state_and_background_are_never_keyed() {
        for (f, v) in [
            ("previous_response_id", json!("resp_1")),
            ("conversation", json!("conv_1")),
            ("conversation", json!({"id": "conv_1"})),
            ("background", json!(true)),
        ] {
            let mut b = json!({"model": "m", "input": "hi"});
            b[f] = v;
            assert_eq!(key(b).unwrap_err(), Uncacheable::Stateful, "{f}");
        }
        let mut b = json!({"model": "m", "input": "hi"});
        b["previous_response_id"] = Value::Null;
        assert!(key(b).is_ok());
    }

    #[test]
    fn images_and_tool_items_are_exact() {
        let img = json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]});
        assert!(!key(img).unwrap().semantic);
        let tool = json!({"model": "m", "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "18C"}]});
        let k = key(tool.clone()).unwrap();
        assert!(!k.semantic);
        let mut other = tool;
        other["input"][2]["output"] = json!("19C");
        assert_ne!(key(other).unwrap().partition, k.partition);
        assert_eq!(
            key(json!({"model": "m", "input": []})).unwrap_err(),
            Uncacheable::BadMessages
        );
    }
}
