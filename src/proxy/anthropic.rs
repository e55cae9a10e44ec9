//! Anthropic's Messages API on the wire: a streamed answer assembled into
//! the message it amounts to, the checks that decide whether a message may
//! be stored, and a stored message replayed as Anthropic's own event stream.
//!
//! The stream is `event: <type>` plus `data: {"type": <type>, …}`:
//! `message_start`, then per content block `content_block_start`, its
//! deltas and `content_block_stop`, then `message_delta` (stop reason and
//! usage) and `message_stop`; `ping` may come anywhere and an `error` event
//! may arrive inside an HTTP 200. A replay always carries the `event:` line:
//! the official SDKs skip events without one. It must never store a message
//! that did not reach `message_stop`, nor one whose stop reason says it is
//! unfinished (`max_tokens`, `pause_turn`) or refused.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::wire::{events, pieces, Reject};

/// The chat `finish_reason` a Messages `stop_reason` amounts to, which the
/// tenant's `cacheable_finish_reasons` is written in; None for a stop
/// reason that is never stored (`pause_turn`: the turn is not over).
pub fn finish_reason(stop_reason: &str) -> Option<&'static str> {
    match stop_reason {
        "end_turn" | "stop_sequence" => Some("stop"),
        "tool_use" => Some("tool_calls"),
        "max_tokens" | "model_context_window_exceeded" => Some("length"),
        "refusal" => Some("content_filter"),
        _ => None,
    }
}

/// Checks that a (non-streamed or assembled) message is complete and of a
/// stop reason the tenant stores.
pub fn validate(answer: &Value, allowed_finish: &[String]) -> Result<(), Reject> {
    let obj = answer.as_object().ok_or(Reject::Shape("not an object"))?;
    if obj.get("type").and_then(Value::as_str) == Some("error")
        || obj.get("error").is_some_and(|e| !e.is_null())
    {
        return Err(Reject::ErrorEvent);
    }
    if obj.get("type").and_then(Value::as_str) != Some("message") {
        return Err(Reject::Shape("not a message"));
    }
    if !obj.get("content").is_some_and(Value::is_array) {
        return Err(Reject::Shape("no content blocks"));
    }
    let stop = obj
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("none");
    match finish_reason(stop) {
        Some(f) if allowed_finish.iter().any(|a| a == f) => Ok(()),
        _ => Err(Reject::FinishReason(stop.to_string())),
    }
}

/// One content block being assembled.
struct Block {
    block: Map<String, Value>,
    /// A tool call's input, as the `input_json_delta` pieces spell it.
    json: String,
}

/// Assembles a Messages stream into the message it amounts to.
pub fn assemble(body: &str) -> Result<Value, Reject> {
    let mut message: Option<Map<String, Value>> = None;
    let mut blocks: std::collections::BTreeMap<u64, Block> = Default::default();
    let mut done = false;
    for event in events(body) {
        if event.is_error() {
            return Err(Reject::ErrorEvent);
        }
        let Some(data) = event.data else { continue };
        let v: Value = serde_json::from_str(&data).map_err(|_| Reject::Shape("non-JSON event"))?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if done && kind != "ping" {
            return Err(Reject::Shape("an event after message_stop"));
        }
        let index = v.get("index").and_then(Value::as_u64);
        match kind {
            "error" => return Err(Reject::ErrorEvent),
            "message_start" => {
                let m = v
                    .get("message")
                    .and_then(Value::as_object)
                    .ok_or(Reject::Shape("message_start without a message"))?;
                message = Some(m.clone());
            }
            "content_block_start" => {
                let b = v
                    .get("content_block")
                    .and_then(Value::as_object)
                    .ok_or(Reject::Shape("a block start without a block"))?;
                let i = index.ok_or(Reject::Shape("a block without an index"))?;
                blocks.insert(
                    i,
                    Block {
                        block: b.clone(),
                        json: String::new(),
                    },
                );
            }
            "content_block_delta" => {
                let i = index.ok_or(Reject::Shape("a delta without an index"))?;
                let b = blocks
                    .get_mut(&i)
                    .ok_or(Reject::Shape("a delta before its block"))?;
                let d = v
                    .get("delta")
                    .ok_or(Reject::Shape("a delta without delta"))?;
                let text = |f: &str| d.get(f).and_then(Value::as_str).unwrap_or("").to_string();
                let append = |block: &mut Map<String, Value>, field: &str, more: String| {
                    let cur = block.get(field).and_then(Value::as_str).unwrap_or("");
                    let joined = format!("{cur}{more}");
                    block.insert(field.into(), Value::String(joined));
                };
                match d.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => append(&mut b.block, "text", text("text")),
                    "thinking_delta" => append(&mut b.block, "thinking", text("thinking")),
                    "signature_delta" => append(&mut b.block, "signature", text("signature")),
                    "input_json_delta" => b.json.push_str(&text("partial_json")),
                    "citations_delta" => {
                        let c = d.get("citation").cloned().unwrap_or(Value::Null);
                        match b.block.get_mut("citations") {
                            Some(Value::Array(a)) => a.push(c),
                            _ => {
                                b.block.insert("citations".into(), json!([c]));
                            }
                        }
                    }
                    _ => return Err(Reject::Shape("a delta of an unknown type")),
                }
            }
            "content_block_stop" => {
                let i = index.ok_or(Reject::Shape("a block stop without an index"))?;
                let b = blocks
                    .get_mut(&i)
                    .ok_or(Reject::Shape("a block stop before its block"))?;
                if !b.json.is_empty() {
                    let input: Value = serde_json::from_str(&b.json)
                        .map_err(|_| Reject::Shape("a tool input that is not JSON"))?;
                    b.block.insert("input".into(), input);
                }
            }
            "message_delta" => {
                let m = message
                    .as_mut()
                    .ok_or(Reject::Shape("message_delta before message_start"))?;
                if let Some(d) = v.get("delta").and_then(Value::as_object) {
                    for (k, x) in d {
                        m.insert(k.clone(), x.clone());
                    }
                }
                if let Some(u) = v.get("usage").and_then(Value::as_object) {
                    let usage = m.entry("usage").or_insert_with(|| json!({}));
                    if let Some(usage) = usage.as_object_mut() {
                        for (k, x) in u {
                            if !x.is_null() {
                                usage.insert(k.clone(), x.clone());
                            }
                        }
                    }
                }
            }
            "message_stop" => done = true,
            _ => {}
        }
    }
    if !done {
        return Err(Reject::NoDone);
    }
    let mut m = message.ok_or(Reject::Shape("no message_start"))?;
    m.insert(
        "content".into(),
        Value::Array(
            blocks
                .into_values()
                .map(|b| Value::Object(b.block))
                .collect(),
        ),
    );
    Ok(Value::Object(m))
}

const PIECE: usize = 16;

fn event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// The events that replay a stored message. None when a block is of a kind
/// this replay cannot reproduce exactly (a server tool's result, …): the
/// request is then forwarded, and its fresh answer replaces the entry.
pub fn sse_events(answer: &str) -> Option<Vec<Bytes>> {
    let v: Value = serde_json::from_str(answer).ok()?;
    let content = v.get("content")?.as_array()?;
    let usage = v.get("usage").cloned().unwrap_or_else(|| json!({}));
    let output = usage.get("output_tokens").cloned().unwrap_or(json!(0));
    let mut start_usage = usage.clone();
    if let Some(u) = start_usage.as_object_mut() {
        // NOTE: as the API does, the start counts the first output token
        // only; message_delta carries the total.
        let first = output.as_u64().map_or(0, |n| n.min(1));
        u.insert("output_tokens".into(), json!(first));
    }
    let mut start = Map::new();
    start.insert(
        "id".into(),
        json!(crate::clock::completion_id(
            crate::keying::Endpoint::Messages
        )),
    );
    start.insert("type".into(), json!("message"));
    start.insert(
        "role".into(),
        v.get("role").cloned().unwrap_or(json!("assistant")),
    );
    start.insert(
        "model".into(),
        v.get("model").cloned().unwrap_or(Value::Null),
    );
    start.insert("content".into(), json!([]));
    start.insert("stop_reason".into(), Value::Null);
    start.insert("stop_sequence".into(), Value::Null);
    start.insert("usage".into(), start_usage);
    let mut out = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for (i, b) in content.iter().enumerate() {
        let b = b.as_object()?;
        let kind = b.get("type")?.as_str()?;
        let known = |fields: &[&str]| b.keys().all(|k| fields.contains(&k.as_str()));
        let delta = |d: Value| {
            event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        let text_of = |f: &str| b.get(f).and_then(Value::as_str).map(str::to_string);
        match kind {
            "text"
                if known(&["type", "text", "citations"])
                    && b.get("citations").is_none_or(Value::is_null) =>
            {
                out.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i,
                            "content_block": {"type": "text", "text": ""}}),
                ));
                for p in pieces(&text_of("text")?, PIECE) {
                    out.push(delta(json!({"type": "text_delta", "text": p})));
                }
            }
            "thinking" if known(&["type", "thinking", "signature"]) => {
                out.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i,
                            "content_block": {"type": "thinking", "thinking": ""}}),
                ));
                for p in pieces(&text_of("thinking")?, PIECE) {
                    out.push(delta(json!({"type": "thinking_delta", "thinking": p})));
                }
                if let Some(sig) = text_of("signature") {
                    out.push(delta(json!({"type": "signature_delta", "signature": sig})));
                }
            }
            "redacted_thinking" if known(&["type", "data"]) => {
                out.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i, "content_block": b}),
                ));
            }
            "tool_use" if known(&["type", "id", "name", "input"]) => {
                out.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i, "content_block":
                            {"type": "tool_use", "id": b.get("id")?, "name": b.get("name")?, "input": {}}}),
                ));
                let input = b.get("input").map(|x| x.to_string()).unwrap_or_default();
                for p in pieces(&input, PIECE) {
                    out.push(delta(
                        json!({"type": "input_json_delta", "partial_json": p}),
                    ));
                }
            }
            _ => return None,
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": v.get("stop_reason").cloned().unwrap_or(Value::Null),
                          "stop_sequence": v.get("stop_sequence").cloned().unwrap_or(Value::Null)},
                "usage": {"output_tokens": output}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Value {
        json!({"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [
                   {"type": "thinking", "thinking": "The user wants a city; Paris is the capital.", "signature": "sig-abc"},
                   {"type": "redacted_thinking", "data": "opaque"},
                   {"type": "text", "text": "The capital of France is Paris, on the Seine."},
                   {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris", "facts": [1, 2, 3]}}],
               "stop_reason": "tool_use", "stop_sequence": null,
               "usage": {"input_tokens": 12, "output_tokens": 34, "cache_read_input_tokens": 0}})
    }

    fn body(events: &[Bytes]) -> String {
        events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn a_replay_assembles_back_to_the_message_with_a_fresh_id() {
        let m = message();
        let events = sse_events(&m.to_string()).unwrap();
        let text = body(&events);
        // Every event names its type on an `event:` line.
        for e in text.split("\n\n").filter(|e| !e.is_empty()) {
            assert!(e.starts_with("event: "), "{e}");
        }
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let back = assemble(&text).unwrap();
        assert_eq!(back["content"], m["content"]);
        assert_eq!(back["stop_reason"], "tool_use");
        assert_eq!(back["usage"], m["usage"]);
        assert_ne!(back["id"], "msg_up");
        assert!(back["id"].as_str().unwrap().starts_with("msg_"));
        assert!(validate(&back, &["stop".into(), "tool_calls".into()]).is_ok());
    }

    #[test]
    fn only_finished_turns_of_an_allowed_stop_reason_are_stored() {
        let allowed = vec!["stop".to_string()];
        let with = |stop: &str| {
            let mut m = message();
            m["stop_reason"] = json!(stop);
            validate(&m, &allowed)
        };
        assert!(with("end_turn").is_ok());
        assert!(with("stop_sequence").is_ok());
        for stop in [
            "tool_use",
            "max_tokens",
            "refusal",
            "pause_turn",
            "something_new",
        ] {
            assert_eq!(with(stop), Err(Reject::FinishReason(stop.into())), "{stop}");
        }
        let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(validate(&err, &allowed), Err(Reject::ErrorEvent));
    }

    #[test]
    fn cut_or_errored_streams_are_refused_and_pings_ignored() {
        let text = body(&sse_events(&message().to_string()).unwrap());
        let cut = text.replace(
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            "",
        );
        assert_eq!(assemble(&cut).unwrap_err(), Reject::NoDone);
        let errored = text.replacen(
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            1,
        );
        assert_ne!(errored, text);
        assert_eq!(assemble(&errored).unwrap_err(), Reject::ErrorEvent);
        let pinged = text.replace(
            "event: content_block_stop",
            "event: ping\ndata: {\"type\":\"ping\"}\n\nevent: content_block_stop",
        );
        assert_eq!(assemble(&pinged).unwrap()["content"], message()["content"]);
    }

    #[test]
    fn a_block_it_cannot_reproduce_is_not_replayed() {
        let mut m = message();
        m["content"] =
            json!([{"type": "web_search_tool_result", "tool_use_id": "x", "content": []}]);
        assert!(sse_events(&m.to_string()).is_none());
        m["content"] =
            json!([{"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]);
        assert!(sse_events(&m.to_string()).is_none());
    }
}
