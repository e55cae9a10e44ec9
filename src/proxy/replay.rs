//! Serving a hit: the stored answer as JSON, or replayed as a live SSE stream.
//!
//! Owns the shape of what a hit looks like on the wire, which must match what
//! the upstream would have sent: fresh `id` and `created`, and for streams a
//! role chunk, content in pieces, tool calls and refusals, the finish chunk, an
//! optional usage chunk, then `[DONE]`. It must never change the answer's
//! content.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::sse::REASONING;
use crate::keying::Endpoint;

/// The stored answer with a fresh `id` and `created`.
pub fn json_body(endpoint: Endpoint, answer: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_str(answer).ok()?;
    let o = v.as_object_mut()?;
    o.insert("id".into(), json!(crate::clock::completion_id(endpoint)));
    // NOTE: a Messages answer has no `created`.
    if endpoint != Endpoint::Messages {
        o.insert("created".into(), json!(crate::clock::now_secs()));
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

pub use super::wire::pieces;

const PIECE: usize = 16;

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE events that replay `answer`, ending with `data: [DONE]`. None if
/// the answer cannot be replayed faithfully: usage is asked for and the
/// stored answer has none (it came from a stream that did not ask for it).
pub fn sse_events(endpoint: Endpoint, answer: &str, include_usage: bool) -> Option<Vec<Bytes>> {
    if endpoint == Endpoint::Messages {
        return super::anthropic::sse_events(answer);
    }
    let v: Value = serde_json::from_str(answer).ok()?;
    if include_usage && v.get("usage").is_none_or(Value::is_null) {
        return None;
    }
    let id = crate::clock::completion_id(endpoint);
    let created = crate::clock::now_secs();
    let model = v.get("model").cloned().unwrap_or(Value::Null);
    let fingerprint = v.get("system_fingerprint").cloned();
    let choices = v.get("choices")?.as_array()?;
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
        // NOTE: embeddings are never streamed; messages returned above, and
        // responses are replayed by `responses` under the id they are served.
        Endpoint::Embeddings | Endpoint::Messages | Endpoint::Responses => return None,
    };
    let chunk = |choice: Value| {
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(created));
        m.insert("model".into(), model.clone());
        if let Some(f) = &fingerprint {
            m.insert("system_fingerprint".into(), f.clone());
        }
        m.insert("choices".into(), json!([choice]));
        if include_usage {
            m.insert("usage".into(), Value::Null);
        }
        event(&Value::Object(m))
    };
    let mut out = Vec::new();
    for (n, c) in choices.iter().enumerate() {
        let index = c.get("index").cloned().unwrap_or(json!(n));
        let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
        match endpoint {
            Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::Responses => {
                let text = c.get("text").and_then(Value::as_str).unwrap_or("");
                for p in pieces(text, PIECE) {
                    out.push(chunk(
                        json!({"text": p, "index": index, "logprobs": null, "finish_reason": null}),
                    ));
                }
                out.push(chunk(
                    json!({"text": "", "index": index, "logprobs": null, "finish_reason": finish}),
                ));
            }
            Endpoint::Chat => {
                let msg = c.get("message").cloned().unwrap_or(json!({}));
                let content = msg.get("content").and_then(Value::as_str);
                let role = msg.get("role").cloned().unwrap_or(json!("assistant"));
                let delta = |d: Value| json!({"index": index, "delta": d, "logprobs": null, "finish_reason": null});
                let mut first =
                    json!({"role": role, "content": content.map_or(Value::Null, |_| json!(""))});
                if msg.get("refusal").is_some_and(Value::is_string) {
                    first["refusal"] = Value::Null;
                }
                out.push(chunk(delta(first)));
                // NOTE: reasoning streams before the answer, as the upstream sent it.
                for field in REASONING {
                    if let Some(r) = msg.get(field).and_then(Value::as_str) {
                        for p in pieces(r, PIECE) {
                            out.push(chunk(delta(json!({ field: p }))));
                        }
                    }
                }
                for p in pieces(content.unwrap_or(""), PIECE) {
                    out.push(chunk(delta(json!({"content": p}))));
                }
                if let Some(r) = msg.get("refusal").and_then(Value::as_str) {
                    for p in pieces(r, PIECE) {
                        out.push(chunk(delta(json!({"refusal": p}))));
                    }
                }
                if let Some(tcs) = msg.get("tool_calls").and_then(Value::as_array) {
                    for (k, tc) in tcs.iter().enumerate() {
                        let f = tc.get("function").cloned().unwrap_or(json!({}));
                        out.push(chunk(delta(json!({"tool_calls": [{
                            "index": k,
                            "id": tc.get("id").cloned().unwrap_or(Value::Null),
                            "type": tc.get("type").cloned().unwrap_or(json!("function")),
                            "function": {"name": f.get("name").cloned().unwrap_or(json!("")), "arguments": ""},
                        }]}))));
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
                        for p in pieces(args, PIECE) {
                            out.push(chunk(delta(
                                json!({"tool_calls": [{"index": k, "function": {"arguments": p}}]}),
                            )));
                        }
                    }
                }
                out.push(chunk(
                    json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}),
                ));
            }
        }
    }
    if include_usage {
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(created));
        m.insert("model".into(), model);
        if let Some(f) = &fingerprint {
            m.insert("system_fingerprint".into(), f.clone());
        }
        m.insert("choices".into(), json!([]));
        m.insert(
            "usage".into(),
            v.get("usage").cloned().unwrap_or(Value::Null),
        );
        out.push(event(&Value::Object(m)));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::sse::assemble;

    #[test]
    fn pieces_rejoin_to_the_text() {
        let t = "The quick brown fox jumps over the lazy dog, twice. 日本語も大丈夫";
        assert_eq!(pieces(t, 8).concat(), t);
        assert!(pieces(t, 8).len() > 3);
    }

    #[test]
    fn a_replayed_stream_assembles_back_to_the_answer() {
        let answer = json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Use reversed() or list.reverse() to reverse a list in place.", "refusal": null,
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\": [1, 2, 3, 4, 5, 6, 7, 8]}"}}]},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        })
        .to_string();
        let events = sse_events(Endpoint::Chat, &answer, true).unwrap();
        let body: String = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(body.ends_with("data: [DONE]\n\n"));
        let back = assemble(Endpoint::Chat, &body).unwrap();
        let orig: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            back["choices"][0]["message"]["content"],
            orig["choices"][0]["message"]["content"]
        );
        assert_eq!(
            back["choices"][0]["message"]["tool_calls"],
            orig["choices"][0]["message"]["tool_calls"]
        );
        assert_eq!(back["usage"], orig["usage"]);
        assert_ne!(back["id"], "x");
    }

    #[test]
    fn reasoning_is_replayed_before_the_content_and_assembles_back() {
        let answer = json!({
            "model": "deepseek-reasoner",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42, because six sevens make forty-two.",
                "reasoning_content": "Six times seven is forty-two, so the answer follows.",
                "reasoning": "OpenRouter carries its reasoning under another name."},
                "finish_reason": "stop"}]
        })
        .to_string();
        let events = sse_events(Endpoint::Chat, &answer, false).unwrap();
        let body: String = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let back = assemble(Endpoint::Chat, &body).unwrap();
        let orig: Value = serde_json::from_str(&answer).unwrap();
        for f in ["content", "reasoning_content", "reasoning"] {
            assert_eq!(
                back["choices"][0]["message"][f], orig["choices"][0]["message"][f],
                "{f}"
            );
        }
        // Every reasoning delta comes before the first content delta.
        let kinds: Vec<&str> = body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                let d = v["choices"][0]["delta"].clone();
                ["reasoning_content", "reasoning", "content"]
                    .into_iter()
                    .find(|f| d[*f].as_str().is_some_and(|s| !s.is_empty()))
            })
            .collect();
        let first_content = kinds.iter().position(|k| *k == "content").unwrap();
        assert!(kinds.len() > first_content + 1, "content in pieces");
        assert!(kinds[..first_content].contains(&"reasoning_content"));
        assert!(kinds[first_content..].iter().all(|k| *k == "content"));
    }

    #[test]
    fn usage_is_never_invented() {
        let answer = json!({"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}).to_string();
        assert!(sse_events(Endpoint::Chat, &answer, true).is_none());
        assert!(sse_events(Endpoint::Chat, &answer, false).is_some());
    }

    #[test]
    fn completions_replay() {
        let answer = json!({"object":"text_completion","model":"m","choices":[{"text":"hello there world","index":0,"finish_reason":"stop"}]}).to_string();
        let events = sse_events(Endpoint::Completions, &answer, false).unwrap();
        let body: String = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let back = assemble(Endpoint::Completions, &body).unwrap();
        assert_eq!(back["choices"][0]["text"], "hello there world");
        let j: Value =
            serde_json::from_slice(&json_body(Endpoint::Completions, &answer).unwrap()).unwrap();
        assert!(j["id"].as_str().unwrap().starts_with("cmpl-"));
    }
}
