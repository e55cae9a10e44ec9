//! Turning a finished upstream answer into a storable one.
//!
//! Owns decoding (gzip, deflate), Server-Sent Events parsing, the assembly of
//! streamed chunks into one `chat.completion` or `text_completion`, and the
//! checks that decide whether an answer is clean and complete. It must never
//! accept a partial answer: no `[DONE]`, an error event (an `error` member, or
//! an event of type `error`), a truncated body or a disallowed
//! `finish_reason` all mean "do not cache".

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::keying::Endpoint;

pub use super::wire::{data_events, decode, events, Event, Reject};

#[derive(Default)]
struct ToolAcc {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    /// `reasoning_content` (DeepSeek, vLLM) and `reasoning` (OpenRouter).
    reasoning: [Option<String>; 2],
    tools: BTreeMap<u64, ToolAcc>,
    finish_reason: Value,
    logprobs: Option<Vec<Value>>,
}

/// The message fields that carry a chat model's reasoning, in the order a
/// replay sends them (both before the content): `reasoning_content` from
/// DeepSeek and vLLM, `reasoning` from OpenRouter.
pub const REASONING: [&str; 2] = ["reasoning_content", "reasoning"];

fn append(slot: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        slot.get_or_insert_with(String::new).push_str(s);
    }
}

/// Assembles an SSE answer into the equivalent non-streamed answer.
pub fn assemble(endpoint: Endpoint, body: &str) -> Result<Value, Reject> {
    match endpoint {
        Endpoint::Embeddings => {
            return Err(Reject::Shape("an embeddings answer is never a stream"))
        }
        Endpoint::Messages => return super::anthropic::assemble(body),
        Endpoint::Responses => return super::responses::assemble(body),
        Endpoint::Chat | Endpoint::Completions => {}
    }
    let mut done = false;
    let mut top = Map::new();
    let mut choices: BTreeMap<u64, ChoiceAcc> = BTreeMap::new();
    for event in events(body) {
        // NOTE: an upstream may flag an error by the event's type alone, with
        // data that has no `error` member; the client gets it untouched, the
        // cache never does.
        if event.is_error() {
            return Err(Reject::ErrorEvent);
        }
        let Some(data) = event.data else { continue };
        if data.trim() == "[DONE]" {
            done = true;
            continue;
        }
        if done {
            return Err(Reject::Shape("data after [DONE]"));
        }
        let v: Value = serde_json::from_str(&data).map_err(|_| Reject::Shape("non-JSON event"))?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(Reject::ErrorEvent);
        }
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(x) = v.get(k) {
                if !x.is_null() {
                    top.insert(k.to_string(), x.clone());
                }
            }
        }
        if let Some(u) = v.get("usage") {
            if !u.is_null() {
                top.insert("usage".into(), u.clone());
            }
        }
        let Some(cs) = v.get("choices").and_then(Value::as_array) else {
            continue;
        };
        for c in cs {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = choices.entry(idx).or_default();
            if let Some(fr) = c.get("finish_reason") {
                if !fr.is_null() {
                    acc.finish_reason = fr.clone();
                }
            }
            if let Some(lp) = c
                .get("logprobs")
                .and_then(|l| l.get("content"))
                .and_then(Value::as_array)
            {
                acc.logprobs
                    .get_or_insert_with(Vec::new)
                    .extend(lp.iter().cloned());
            }
            match endpoint {
                // NOTE: the other endpoints returned above.
                Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Messages
                | Endpoint::Responses => append(&mut acc.content, c.get("text")),
                Endpoint::Chat => {
                    let Some(d) = c.get("delta") else { continue };
                    if let Some(r) = d.get("role").and_then(Value::as_str) {
                        acc.role = Some(r.to_string());
                    }
                    append(&mut acc.content, d.get("content"));
                    append(&mut acc.refusal, d.get("refusal"));
                    for (slot, field) in acc.reasoning.iter_mut().zip(REASONING) {
                        append(slot, d.get(field));
                    }
                    if let Some(tcs) = d.get("tool_calls").and_then(Value::as_array) {
                        for tc in tcs {
                            let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                            let t = acc.tools.entry(ti).or_default();
                            if let Some(id) = tc.get("id").filter(|x| !x.is_null()) {
                                t.id = Some(id.clone());
                            }
                            if let Some(k) = tc.get("type").filter(|x| !x.is_null()) {
                                t.kind = Some(k.clone());
                            }
                            if let Some(f) = tc.get("function") {
                                if let Some(n) = f.get("name").and_then(Value::as_str) {
                                    t.name.push_str(n);
                                }
                                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                                    t.arguments.push_str(a);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if !done {
        return Err(Reject::NoDone);
    }
    if choices.is_empty() {
        return Err(Reject::Shape("no choices"));
    }
    let out_choices: Vec<Value> = choices
        .into_iter()
        .map(|(idx, c)| {
            let logprobs = c.logprobs.map_or(Value::Null, |l| json!({ "content": l }));
            match endpoint {
                Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Messages
                | Endpoint::Responses => json!({
                    "text": c.content.unwrap_or_default(),
                    "index": idx,
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason,
                }),
                Endpoint::Chat => {
                    let mut msg = Map::new();
                    msg.insert(
                        "role".into(),
                        json!(c.role.unwrap_or_else(|| "assistant".into())),
                    );
                    msg.insert(
                        "content".into(),
                        c.content.map_or(Value::Null, Value::String),
                    );
                    msg.insert(
                        "refusal".into(),
                        c.refusal.map_or(Value::Null, Value::String),
                    );
                    for (text, field) in c.reasoning.into_iter().zip(REASONING) {
                        if let Some(t) = text {
                            msg.insert(field.into(), Value::String(t));
                        }
                    }
                    if !c.tools.is_empty() {
                        let tcs: Vec<Value> = c
                            .tools
                            .into_values()
                            .map(|t| {
                                json!({
                                    "id": t.id.unwrap_or(Value::Null),
                                    "type": t.kind.unwrap_or_else(|| json!("function")),
                                    "function": {"name": t.name, "arguments": t.arguments},
                                })
                            })
                            .collect();
                        msg.insert("tool_calls".into(), Value::Array(tcs));
                    }
                    json!({
                        "index": idx,
                        "message": Value::Object(msg),
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    })
                }
            }
        })
        .collect();
    top.insert(
        "object".into(),
        json!(match endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::Responses => "text_completion",
        }),
    );
    top.insert("choices".into(), Value::Array(out_choices));
    Ok(Value::Object(top))
}

/// Checks that a (non-streamed or assembled) answer is clean and complete.
pub fn validate(answer: &Value, allowed_finish: &[String]) -> Result<(), Reject> {
    let obj = answer.as_object().ok_or(Reject::Shape("not an object"))?;
    if obj.get("error").is_some_and(|e| !e.is_null()) {
        return Err(Reject::ErrorEvent);
    }
    let choices = obj
        .get("choices")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or(Reject::Shape("no choices"))?;
    for c in choices {
        let fr = c
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("none");
        if !allowed_finish.iter().any(|a| a == fr) {
            return Err(Reject::FinishReason(fr.to_string()));
        }
    }
    Ok(())
}

/// Decodes, assembles and validates a complete upstream body.
pub fn storable_answer(
    endpoint: Endpoint,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    cap: usize,
    allowed_finish: &[String],
) -> Result<Value, Reject> {
    let raw = decode(content_encoding, body, cap)?;
    let is_sse =
        content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
    let answer = if is_sse {
        let text = std::str::from_utf8(&raw).map_err(|_| Reject::Shape("non-UTF-8 stream"))?;
        assemble(endpoint, text)?
    } else {
        serde_json::from_slice(&raw).map_err(|_| Reject::Shape("not JSON"))?
    };
    match endpoint {
        Endpoint::Messages => super::anthropic::validate(&answer, allowed_finish)?,
        Endpoint::Responses => super::responses::validate(&answer, allowed_finish)?,
        _ => validate(&answer, allowed_finish)?,
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["stop".into(), "tool_calls".into()]
    }

    const STREAM: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn assembles_a_chat_stream() {
        let v = storable_answer(
            Endpoint::Chat,
            Some("text/event-stream"),
            None,
            STREAM.as_bytes(),
            1 << 20,
            &allowed(),
        )
        .unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["model"], "m");
    }

    #[test]
    fn rejects_partial_error_and_truncated_streams() {
        let cut = &STREAM[..STREAM.len() - "data: [DONE]\n\n".len()];
        assert_eq!(assemble(Endpoint::Chat, cut).unwrap_err(), Reject::NoDone);
        let err = "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            assemble(Endpoint::Chat, err).unwrap_err(),
            Reject::ErrorEvent
        );
        let len = STREAM.replace("\"stop\"", "\"length\"");
        assert_eq!(
            storable_answer(
                Endpoint::Chat,
                Some("text/event-stream"),
                None,
                len.as_bytes(),
                1 << 20,
                &allowed()
            )
            .unwrap_err(),
            Reject::FinishReason("length".into())
        );
    }

    #[test]
    fn assembles_tool_calls() {
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n";
        let v = assemble(Endpoint::Chat, s).unwrap();
        let tc = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tc["id"], "call_1");
        assert_eq!(tc["function"]["name"], "get_weather");
        assert_eq!(tc["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert!(v["choices"][0]["message"]["content"].is_null());
    }

    #[test]
    fn decodes_gzip_and_refuses_unknown_encodings() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"choices\":[{\"finish_reason\":\"stop\"}]}")
            .unwrap();
        let gz = enc.finish().unwrap();
        assert!(storable_answer(
            Endpoint::Chat,
            Some("application/json"),
            Some("gzip"),
            &gz,
            1 << 20,
            &allowed()
        )
        .is_ok());
        assert_eq!(
            decode(Some("gzip"), &gz[..gz.len() / 2], 1 << 20).unwrap_err(),
            Reject::Corrupt
        );
        assert!(matches!(
            decode(Some("br"), b"x", 10),
            Err(Reject::Encoding(_))
        ));
    }

    #[test]
    fn an_event_typed_error_rejects_the_stream_whatever_its_data() {
        let body = STREAM.replacen(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}",
            "event: error\ndata: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}",
            1,
        );
        assert_ne!(body, STREAM);
        assert_eq!(
            assemble(Endpoint::Chat, &body).unwrap_err(),
            Reject::ErrorEvent
        );
        // With data that is no JSON at all, or with no data.
        for extra in [
            "event: error\ndata: upstream overloaded\n\n",
            "event:error\r\n\r\n",
        ] {
            let body = format!("{extra}{STREAM}");
            assert_eq!(
                assemble(Endpoint::Chat, &body).unwrap_err(),
                Reject::ErrorEvent,
                "{extra:?}"
            );
        }
        // Other event types are read as before.
        let typed = format!("event: message\n{STREAM}");
        assert!(assemble(Endpoint::Chat, &typed).is_ok());
    }

    #[test]
    fn crlf_and_multiline_data() {
        let e = data_events("data: a\r\ndata: b\r\n\r\n: comment\n\ndata: c\n\n");
        assert_eq!(e, vec!["a\nb".to_string(), "c".to_string()]);
    }
}
