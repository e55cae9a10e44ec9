//! The mock upstream: a hyper server on 127.0.0.1:0 that counts calls,
//! records what it received and answers through a [`Handler`], with the
//! handlers most tests use ([`llm`], [`llm_tagged`], [`slow_stream`]) and
//! the bodies they answer with.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use modelcache::http::body::{BoxError, ProxyBody};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A request as the mock upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the mock answers.
pub enum Reply {
    /// Status, headers, body in one piece.
    Full(u16, Vec<(&'static str, String)>, Bytes),
    /// Status 200, SSE, body in chunks with a pause between them.
    Chunks(Vec<(&'static str, String)>, Vec<Bytes>, Duration),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
}

pub type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub struct Mock {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request seen")
    }
}

fn boxed_full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

async fn render(reply: Reply) -> Response<ProxyBody> {
    let mut reply = reply;
    while let Reply::Delay(d, inner) = reply {
        tokio::time::sleep(d).await;
        reply = *inner;
    }
    match reply {
        Reply::Full(status, headers, body) => {
            let mut r = Response::new(boxed_full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Chunks(headers, chunks, pause) => {
            let s = stream::unfold(
                (chunks.into_iter(), pause, true),
                |(mut it, pause, first)| async move {
                    let next = it.next()?;
                    if !first {
                        tokio::time::sleep(pause).await;
                    }
                    Some((Ok::<_, BoxError>(Frame::data(next)), (it, pause, false)))
                },
            );
            let mut r = Response::new(StreamBody::new(s).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Delay(..) => unreachable!(),
    }
}

/// Starts a mock upstream with `handler`.
pub async fn mock(handler: Handler) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (calls.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Answers go out at once (benches time through this mock).
            let _ = stream.set_nodelay(true);
            let (c, s, h) = (c.clone(), s.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, s, h) = (c.clone(), s.clone(), h.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            path_and_query: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers,
                            body,
                        };
                        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                        s.lock().unwrap().push(seen.clone());
                        Ok::<_, Infallible>(render(h(&seen, n)).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock { addr, calls, seen }
}

/// The last user message of a chat request (or the prompt).
pub fn question(seen: &Seen) -> String {
    let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        return p.to_string();
    }
    v.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn chat_json(content: &str, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000, "model": "gpt-test",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                     "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

pub fn sse_chunks(content: &str, finish: &str, include_usage: bool) -> Vec<Bytes> {
    let head = |delta: Value, fr: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-upstream","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",
                   "system_fingerprint":"fp_test",
                   "choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":fr}]})
        ))
    };
    let mut out = vec![head(json!({"role":"assistant","content":""}), Value::Null)];
    for w in content.split_inclusive(' ') {
        out.push(head(json!({"content": w}), Value::Null));
    }
    out.push(head(json!({}), json!(finish)));
    if include_usage {
        out.push(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-upstream","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",
                   "choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}})
        )));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The answer the default mock gives to the `n`th call for `q`.
pub fn answer_for(q: &str, n: usize) -> String {
    format!("Answer #{n} to: {q}")
}

/// The vector the mock upstream gives `input` (a string, or a token array as
/// JSON) with `dims` components, behind an upstream tagged `tag`: derived from
/// a hash, every component exact in float32.
pub fn vector_for(tag: &str, input: &Value, dims: usize) -> Vec<f32> {
    use sha2::{Digest, Sha256};
    let text = match input {
        Value::String(s) => format!("text:{s}"),
        other => format!("tokens:{other}"),
    };
    let mut out = Vec::with_capacity(dims);
    let mut round = 0u32;
    while out.len() < dims {
        let h = Sha256::digest(format!("{tag}|{round}|{text}"));
        out.extend(h.iter().map(|b| (*b as f32 - 127.5) / 128.0));
        round += 1;
    }
    out.truncate(dims);
    out
}

/// The inputs of an embeddings request, one per vector asked for.
pub fn embedding_inputs(body: &Value) -> Vec<Value> {
    match &body["input"] {
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) => a.clone(),
        other => vec![other.clone()],
    }
}

/// An OpenAI embeddings answer to `body`: one vector per input, in the
/// encoding asked for, with usage of 2 tokens per input.
pub fn embeddings_json(tag: &str, body: &Value) -> Value {
    use base64::Engine;
    let dims = body["dimensions"].as_u64().unwrap_or(8) as usize;
    let b64 = body["encoding_format"] == "base64";
    let inputs = embedding_inputs(body);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let v = vector_for(tag, input, dims);
            let e = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>())
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let n = inputs.len() * 2;
    json!({"object": "list", "data": data, "model": body["model"],
           "usage": {"prompt_tokens": n, "total_tokens": n}})
}

/// The last user text of a Messages request (a string, or its text blocks).
pub fn messages_question(body: &Value) -> String {
    let Some(m) = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// An Anthropic message answering with `text`, led by a thinking block
/// when `thinking` is given, stopped for `stop`.
pub fn messages_json(text: &str, thinking: Option<&str>, stop: &str) -> Value {
    let mut content = Vec::new();
    if let Some(t) = thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": "EqQBCkYIBRgCIkDsig"}));
    }
    content.push(json!({"type": "text", "text": text}));
    json!({"id": "msg_01upstream", "type": "message", "role": "assistant", "model": "claude-test",
           "content": content, "stop_reason": stop, "stop_sequence": null,
           "usage": {"input_tokens": 21, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0, "output_tokens": 9}})
}

/// The message `m` as Anthropic streams it: `message_start`, a ping, each
/// block word by word, `message_delta`, `message_stop`.
pub fn messages_sse(m: &Value) -> Vec<Bytes> {
    let ev = |kind: &str, data: Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut start = m.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut out = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for (i, b) in m["content"].as_array().unwrap().iter().enumerate() {
        let (field, delta_kind) = if b["type"] == "thinking" {
            ("thinking", "thinking_delta")
        } else {
            ("text", "text_delta")
        };
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": {"type": b["type"], field: ""}}),
        ));
        for w in b[field].as_str().unwrap().split_inclusive(' ') {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": {"type": delta_kind, field: w}}),
            ));
        }
        if let Some(sig) = b["signature"].as_str() {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": sig}}),
            ));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": m["stop_reason"], "stop_sequence": null},
               "usage": {"output_tokens": m["usage"]["output_tokens"]}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

/// The reply to a Messages request: `answer_for(question, n)` behind `tag`,
/// streamed or not as asked, with a thinking block when thinking is on.
pub fn messages_reply(tag: &str, seen: &Seen, n: usize) -> Reply {
    let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let text = format!("{tag}{}", answer_for(&messages_question(&v), n));
    let thinking = v["thinking"]["type"] == "enabled";
    let m = messages_json(
        &text,
        thinking.then_some("Let me think this through, step by step."),
        "end_turn",
    );
    if v["stream"] == json!(true) {
        Reply::Chunks(vec![], messages_sse(&m), Duration::from_millis(1))
    } else {
        Reply::Full(
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(m.to_string()),
        )
    }
}

/// The last user text of a Responses request (its string input, or the
/// text of its last user item).
pub fn responses_question(body: &Value) -> String {
    match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| match &i["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A completed Responses answer with `text`, led by a reasoning item (with
/// encrypted content) when `reasoning` is given.
pub fn responses_json(id: &str, text: &str, reasoning: Option<&str>) -> Value {
    let mut output = Vec::new();
    if let Some(r) = reasoning {
        output.push(json!({"type": "reasoning", "id": format!("rs_{id}"),
            "summary": [{"type": "summary_text", "text": r}], "encrypted_content": "gAAAAABenc-opaque"}));
    }
    output.push(json!({"type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}));
    json!({"id": id, "object": "response", "created_at": 1700000000, "status": "completed",
           "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
           "model": "gpt-test", "output": output, "parallel_tool_calls": true, "previous_response_id": null,
           "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
           "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
           "truncation": "disabled", "metadata": {},
           "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 20}})
}

/// The response `r` as OpenAI streams it: the lifecycle with sequence
/// numbers, word-sized text deltas carrying `obfuscation` padding.
pub fn responses_sse(r: &Value) -> Vec<Bytes> {
    let mut seq = 0;
    let mut out = Vec::new();
    let mut ev = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        out.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    };
    let mut start = r.clone();
    start["status"] = json!("in_progress");
    start["output"] = json!([]);
    start["usage"] = Value::Null;
    ev("response.created", json!({"response": start}));
    ev("response.in_progress", json!({"response": start}));
    for (i, item) in r["output"].as_array().unwrap().iter().enumerate() {
        let mut added = item.clone();
        if item["type"] == "message" {
            added["content"] = json!([]);
            added["status"] = json!("in_progress");
            ev(
                "response.output_item.added",
                json!({"output_index": i, "item": added}),
            );
            let part = &item["content"][0];
            ev(
                "response.content_part.added",
                json!({"item_id": item["id"], "output_index": i, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            for w in part["text"].as_str().unwrap().split_inclusive(' ') {
                ev(
                    "response.output_text.delta",
                    json!({"item_id": item["id"], "output_index": i, "content_index": 0,
                    "delta": w, "logprobs": [], "obfuscation": "pAdDiNg"}),
                );
            }
            ev(
                "response.output_text.done",
                json!({"item_id": item["id"], "output_index": i, "content_index": 0,
                "text": part["text"], "logprobs": []}),
            );
            ev(
                "response.content_part.done",
                json!({"item_id": item["id"], "output_index": i, "content_index": 0, "part": part}),
            );
        } else {
            added["summary"] = json!([]);
            ev(
                "response.output_item.added",
                json!({"output_index": i, "item": added}),
            );
        }
        ev(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        );
    }
    ev("response.completed", json!({"response": r}));
    out
}

/// The reply to a Responses request: `answer_for(question, n)` behind `tag`,
/// streamed or not as asked, with a reasoning item when `reasoning` is set.
pub fn responses_reply(tag: &str, seen: &Seen, n: usize) -> Reply {
    let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let text = format!("{tag}{}", answer_for(&responses_question(&v), n));
    let reasoning = v
        .get("reasoning")
        .is_some()
        .then_some("Considering the question carefully.");
    let r = responses_json(&format!("resp_up{n}"), &text, reasoning);
    if v["stream"] == json!(true) {
        Reply::Chunks(vec![], responses_sse(&r), Duration::from_millis(1))
    } else {
        Reply::Full(
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(r.to_string()),
        )
    }
}

/// A mock that answers chat requests (JSON or SSE, as asked) with
/// `answer_for(question, call number)`, Responses and Messages requests
/// likewise in their own shapes, embeddings requests with [`embeddings_json`], and
/// anything else with `{"ok":true}`.
pub fn llm() -> Handler {
    llm_tagged("")
}

/// Like [`llm`], with `tag` in front of every answer, so that answers from
/// two upstreams can be told apart.
pub fn llm_tagged(tag: &'static str) -> Handler {
    Arc::new(move |seen: &Seen, n: usize| {
        let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        if seen.path_and_query.starts_with("/v1/responses") {
            return responses_reply(tag, seen, n);
        }
        if seen.path_and_query.starts_with("/v1/messages") {
            return messages_reply(tag, seen, n);
        }
        if seen.path_and_query.starts_with("/v1/embeddings") {
            return Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(embeddings_json(tag, &v).to_string()),
            );
        }
        if !seen.path_and_query.starts_with("/v1/chat/completions")
            && !seen.path_and_query.starts_with("/v1/completions")
        {
            return Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from("{\"ok\":true}"),
            );
        }
        let content = format!("{tag}{}", answer_for(&question(seen), n));
        if seen.path_and_query.starts_with("/v1/completions") {
            let body = json!({"id":"cmpl-up","object":"text_completion","created":1,"model":"gpt-test",
                "choices":[{"text": content, "index": 0, "logprobs": null, "finish_reason": "stop"}]});
            return Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(body.to_string()),
            );
        }
        if v["stream"] == json!(true) {
            let usage = v["stream_options"]["include_usage"] == json!(true);
            Reply::Chunks(
                vec![],
                sse_chunks(&content, "stop", usage),
                Duration::from_millis(1),
            )
        } else {
            Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(chat_json(&content, "stop").to_string()),
            )
        }
    })
}

/// A mock that streams `answer_for(question, n)` as SSE with `pause` between chunks.
pub fn slow_stream(pause: Duration) -> Handler {
    Arc::new(move |seen: &Seen, n: usize| {
        Reply::Chunks(
            vec![],
            sse_chunks(&answer_for(&question(seen), n), "stop", false),
            pause,
        )
    })
}
