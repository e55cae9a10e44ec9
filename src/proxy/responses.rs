//! OpenAI's Responses API on the wire: a streamed answer read from its
//! `response.completed` event, the checks that decide whether a response
//! may be stored, a stored response served with a fresh id (as JSON, or as
//! the full event lifecycle), and the responses the gateway minted, so that
//! a client can chain onto them.
//!
//! A stream is `event: <type>` plus `data: {"type", "sequence_number", …}`,
//! with no `[DONE]`. Only a stream that reached `response.completed` with
//! status `completed` is stored, and it is stored as that event's response
//! (never assembled from deltas, whose `obfuscation` padding must not reach
//! the cache). A replay numbers its events from 0, keeps one response id
//! and each item's id throughout, and adds every item before its content.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::wire::{events, pieces, Reject};

/// Reads a Responses stream: the response of its `response.completed`
/// event, its output rebuilt from the `response.output_item.done` events if
/// the completed event left it out.
pub fn assemble(body: &str) -> Result<Value, Reject> {
    let mut done_items: std::collections::BTreeMap<u64, Value> = Default::default();
    let mut completed: Option<Value> = None;
    for event in events(body) {
        if event.is_error() {
            return Err(Reject::ErrorEvent);
        }
        let Some(data) = event.data else { continue };
        if data.trim() == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&data).map_err(|_| Reject::Shape("non-JSON event"))?;
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "error" | "response.failed" | "response.incomplete" => return Err(Reject::ErrorEvent),
            "response.output_item.done" => {
                let i = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
                done_items.insert(i, v.get("item").cloned().unwrap_or(Value::Null));
            }
            "response.completed" => {
                completed = Some(
                    v.get("response")
                        .cloned()
                        .ok_or(Reject::Shape("response.completed without a response"))?,
                );
            }
            _ => {}
        }
    }
    let mut r = completed.ok_or(Reject::NoDone)?;
    let o = r.as_object_mut().ok_or(Reject::Shape("not an object"))?;
    if !o.get("output").is_some_and(Value::is_array) {
        o.insert(
            "output".into(),
            Value::Array(done_items.into_values().collect()),
        );
    }
    Ok(r)
}

/// The chat `finish_reason` a completed response amounts to: `tool_calls`
/// when it calls a tool, else `stop`.
fn finish_reason(output: &[Value]) -> &'static str {
    let calls = output.iter().any(|i| {
        i.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("_call"))
    });
    if calls {
        "tool_calls"
    } else {
        "stop"
    }
}

/// Checks that a response is complete (a 200 may still be `incomplete`)
/// and of a kind the tenant stores.
pub fn validate(answer: &Value, allowed_finish: &[String]) -> Result<(), Reject> {
    let obj = answer.as_object().ok_or(Reject::Shape("not an object"))?;
    if obj.get("error").is_some_and(|e| !e.is_null()) {
        return Err(Reject::ErrorEvent);
    }
    if obj.get("object").and_then(Value::as_str) != Some("response") {
        return Err(Reject::Shape("not a response"));
    }
    let status = obj.get("status").and_then(Value::as_str).unwrap_or("none");
    if status != "completed" {
        return Err(Reject::FinishReason(status.to_string()));
    }
    let output = obj
        .get("output")
        .and_then(Value::as_array)
        .ok_or(Reject::Shape("no output"))?;
    let f = finish_reason(output);
    if !allowed_finish.iter().any(|a| a == f) {
        return Err(Reject::FinishReason(f.to_string()));
    }
    Ok(())
}

/// A stored response as served under `id`: the new id, created now.
pub fn served(answer: &str, id: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_str(answer).ok()?;
    let o = v.as_object_mut()?;
    o.insert("id".into(), json!(id));
    o.insert("created_at".into(), json!(crate::clock::now_secs()));
    Some(v)
}

const PIECE: usize = 16;

/// An event's data about one part of one item: the item's id, its output
/// index, the part's index under `part.0`, then `extra`'s fields.
fn located(id: &Value, output: usize, part: (&str, usize), extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("item_id".into(), id.clone());
    m.insert("output_index".into(), json!(output));
    m.insert(part.0.into(), json!(part.1));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Value::Object(m)
}

/// The event lifecycle that replays `response` (as [`served`] made it).
/// None when an item or a part is of a kind this replay cannot reproduce
/// exactly: the request is then forwarded.
pub fn sse_events(response: &Value) -> Option<Vec<Bytes>> {
    let output = response.get("output")?.as_array()?;
    let mut seq = 0u64;
    let mut out = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        out.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    };
    let mut started = response.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    for (i, item) in output.iter().enumerate() {
        let o = item.as_object()?;
        let id = o.get("id").cloned().unwrap_or(Value::Null);
        match o.get("type")?.as_str()? {
            "message" => {
                let mut added = o.clone();
                added.insert("status".into(), json!("in_progress"));
                added.insert("content".into(), json!([]));
                push(
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                for (j, part) in o.get("content")?.as_array()?.iter().enumerate() {
                    let p = part.as_object()?;
                    if p.get("type")?.as_str()? != "output_text" {
                        return None;
                    }
                    let text = p.get("text")?.as_str()?;
                    let logprobs = p.get("logprobs").cloned().unwrap_or(json!([]));
                    let mut empty = p.clone();
                    empty.insert("text".into(), json!(""));
                    empty.insert("annotations".into(), json!([]));
                    let at = |extra: Value| located(&id, i, ("content_index", j), extra);
                    push("response.content_part.added", at(json!({"part": empty})));
                    for d in pieces(text, PIECE) {
                        push(
                            "response.output_text.delta",
                            at(json!({"delta": d, "logprobs": []})),
                        );
                    }
                    push(
                        "response.output_text.done",
                        at(json!({"text": text, "logprobs": logprobs})),
                    );
                    push("response.content_part.done", at(json!({"part": part})));
                }
            }
            "reasoning" => {
                let mut added = o.clone();
                added.insert("summary".into(), json!([]));
                push(
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                let summary = o
                    .get("summary")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (j, part) in summary.iter().enumerate() {
                    let text = part.get("text")?.as_str()?;
                    let at = |extra: Value| located(&id, i, ("summary_index", j), extra);
                    push(
                        "response.reasoning_summary_part.added",
                        at(json!({"part": {"type": "summary_text", "text": ""}})),
                    );
                    for d in pieces(text, PIECE) {
                        push(
                            "response.reasoning_summary_text.delta",
                            at(json!({"delta": d})),
                        );
                    }
                    push(
                        "response.reasoning_summary_text.done",
                        at(json!({"text": text})),
                    );
                    push(
                        "response.reasoning_summary_part.done",
                        at(json!({"part": part})),
                    );
                }
            }
            "function_call" => {
                let mut added = o.clone();
                added.insert("status".into(), json!("in_progress"));
                added.insert("arguments".into(), json!(""));
                push(
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                let args = o.get("arguments")?.as_str()?;
                for d in pieces(args, PIECE) {
                    push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": i, "delta": d}),
                    );
                }
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": args}),
                );
            }
            _ => return None,
        }
        push(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        );
    }
    push("response.completed", json!({"response": response}));
    Some(out)
}

/// A response the gateway served under an id it minted: what it answered,
/// for whom, and the input it answered, so that a request chained onto it
/// can be written out in full.
#[derive(Debug)]
pub struct Served {
    /// The tenant it was served to; no other tenant may see it.
    pub tenant: String,
    /// The response, as served.
    pub response: Value,
    /// The request's input, as items.
    pub input: Vec<Value>,
}

impl Served {
    /// As it is kept in the store: the response and the input.
    pub fn stored(&self) -> String {
        json!({"response": self.response, "input": self.input}).to_string()
    }

    /// Back from the store, for `tenant`.
    pub fn from_stored(tenant: &str, answer: &str) -> Option<Served> {
        let v: Value = serde_json::from_str(answer).ok()?;
        Some(Served {
            tenant: tenant.to_string(),
            response: v.get("response").filter(|r| r.is_object())?.clone(),
            input: v.get("input")?.as_array()?.clone(),
        })
    }
}

/// The request's `input` as a list of items.
pub fn input_items(body: &Value) -> Vec<Value> {
    match body.get("input") {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// The ids minted for hits, in memory, bounded by bytes, forgotten after a
/// day without use: the fast layer in front of the store, which keeps them
/// as long as the tenant's entries live (and shares them with replicas).
pub struct Minted {
    cache: moka::sync::Cache<String, Arc<Served>>,
}

/// The prefix of every id the gateway mints for a response.
pub const MINTED_PREFIX: &str = "resp_mc";

impl Minted {
    /// A store of at most `bytes` of responses.
    pub fn new(bytes: u64) -> Minted {
        Minted {
            cache: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|k: &String, v: &Arc<Served>| {
                    let n = k.len()
                        + v.response.to_string().len()
                        + Value::Array(v.input.clone()).to_string().len();
                    u32::try_from(n).unwrap_or(u32::MAX)
                })
                .time_to_idle(std::time::Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// Remembers what was served under `id`.
    pub fn remember(&self, id: &str, served: Served) {
        self.cache.insert(id.to_string(), Arc::new(served));
    }

    /// What `tenant` was served under `id`, if this gateway still holds it.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Served>> {
        self.cache.get(id).filter(|s| s.tenant == tenant)
    }

    /// Forgets `id` (for `tenant` only).
    pub fn forget(&self, tenant: &str, id: &str) -> bool {
        if self.get(tenant, id).is_some() {
            self.cache.invalidate(id);
            true
        } else {
            false
        }
    }
}

/// A request chained onto a minted response, written out in full: no
/// `previous_response_id`, and as input the served request's input, the
/// served output, then its own input.
pub fn chained(body: &Value, served: &Served) -> Option<Value> {
    let mut b = body.as_object()?.clone();
    b.remove("previous_response_id");
    let mut input = served.input.clone();
    if let Some(items) = served.response.get("output").and_then(Value::as_array) {
        input.extend(items.iter().cloned());
    }
    input.extend(input_items(body));
    b.insert("input".into(), Value::Array(input));
    Some(Value::Object(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> Value {
        json!({"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
               "model": "gpt-x", "error": null, "incomplete_details": null,
               "output": [
                   {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Thinking about capitals of Europe."}],
                    "encrypted_content": "gAAAAB-opaque"},
                   {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "The capital of France is Paris, on the Seine.", "annotations": [], "logprobs": []}]},
                   {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup",
                    "arguments": "{\"city\": \"Paris\", \"facts\": [1, 2, 3]}", "status": "completed"}],
               "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}})
    }

    #[test]
    fn a_replay_is_a_consistent_lifecycle_that_reads_back_to_the_response() {
        let r = served(&response().to_string(), "resp_mcX").unwrap();
        let events = sse_events(&r).unwrap();
        let body: String = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let mut seqs = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        for e in body.split("\n\n").filter(|e| !e.is_empty()) {
            let (head, data) = e.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(head, format!("event: {}", v["type"].as_str().unwrap()));
            seqs.push(v["sequence_number"].as_u64().unwrap());
            if let Some(resp) = v.get("response") {
                ids.insert(resp["id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec!["resp_mcX".to_string()]
        );
        assert!(body.starts_with("event: response.created\n"));
        let back = assemble(&body).unwrap();
        assert_eq!(back, r);
        assert!(validate(&back, &["stop".into(), "tool_calls".into()]).is_ok());
        assert_eq!(
            validate(&back, &["stop".into()]),
            Err(Reject::FinishReason("tool_calls".into()))
        );
        // The encrypted reasoning comes back as it was.
        assert_eq!(back["output"][0]["encrypted_content"], "gAAAAB-opaque");
    }

    #[test]
    fn only_a_completed_response_is_stored() {
        let allowed = vec!["stop".to_string(), "tool_calls".to_string()];
        let mut r = response();
        r["status"] = json!("incomplete");
        assert!(validate(&r, &allowed).is_err());
        let events = sse_events(&response()).unwrap();
        let body: String = events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let cut = &body[..body.find("event: response.completed").unwrap()];
        assert_eq!(assemble(cut).unwrap_err(), Reject::NoDone);
        let failed = body.replace("response.completed", "response.failed");
        assert_eq!(assemble(&failed).unwrap_err(), Reject::ErrorEvent);
        // An obfuscated delta never reaches what is stored.
        let padded = body.replacen("\"delta\":\"", "\"obfuscation\":\"xyz\",\"delta\":\"", 1);
        assert_ne!(padded, body);
        assert!(!assemble(&padded)
            .unwrap()
            .to_string()
            .contains("obfuscation"));
    }

    #[test]
    fn a_chained_request_is_written_out_and_minted_ids_are_per_tenant() {
        let m = Minted::new(1 << 20);
        let r = served(&response().to_string(), "resp_mcX").unwrap();
        let body = json!({"model": "gpt-x", "input": "What is its population?", "previous_response_id": "resp_mcX"});
        m.remember(
            "resp_mcX",
            Served {
                tenant: "a".into(),
                response: r,
                input: input_items(&json!({"input": "What is the capital of France?"})),
            },
        );
        assert!(
            m.get("b", "resp_mcX").is_none(),
            "another tenant never sees it"
        );
        let s = m.get("a", "resp_mcX").unwrap();
        let c = chained(&body, &s).unwrap();
        assert!(c.get("previous_response_id").is_none());
        let input = c["input"].as_array().unwrap();
        assert_eq!(input.len(), 5);
        assert_eq!(input[0]["content"], "What is the capital of France?");
        assert_eq!(input[2]["type"], "message");
        assert_eq!(input[4]["content"], "What is its population?");
        assert!(!m.forget("b", "resp_mcX"));
        assert!(m.forget("a", "resp_mcX"));
        assert!(m.get("a", "resp_mcX").is_none());
    }
}
