//! Black-box tests of the proxy and the cache over real HTTP on loopback,
//! against a mock upstream that counts calls. A hit is proven by the upstream
//! call count, never by internal state.

mod common;

use std::{io::Write, sync::Arc, time::Duration};

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_repeat_is_a_hit_and_the_upstream_is_called_once() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;

    let first = Call::ask("How do I reverse a list in Python?")
        .send(&app)
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache(), "miss");
    // A caller's first request is forwarded whatever the cache holds: the
    // upstream has not yet accepted its key.
    assert_eq!(
        first.header("cache-status"),
        "modelcache; fwd=request; detail=unverified-key"
    );
    settle(&app).await;

    let second = Call::ask("How do I reverse a list in Python?")
        .send(&app)
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache(), "hit");
    assert_eq!(second.header("x-modelcache-similarity"), "1.0000");
    assert!(second.header("cache-status").starts_with("modelcache; hit"));
    assert!(!second.header("x-modelcache-entry").is_empty());
    assert_eq!(up.calls(), 1, "the hit must not reach the upstream");
    assert_eq!(content_of(&second), content_of(&first));
    let (a, b) = (first.json(), second.json());
    assert_ne!(a["id"], b["id"], "a hit gets a fresh id");
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["usage"], a["usage"]);

    let m = metrics(&app).await;
    assert_eq!(
        metric_sum(&m, "modelcache_requests_total", &["result=\"hit_exact\""]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "modelcache_requests_total", &["result=\"miss\""]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "modelcache_auth_total", &["outcome=\"unverified\""]),
        1.0,
        "the first request's key was not verified yet"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn different_model_temperature_or_system_prompt_misses() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let base = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"}]});
    assert_eq!(Call::chat(base.clone()).send(&app).await.cache(), "miss");
    settle(&app).await;
    assert_eq!(Call::chat(base.clone()).send(&app).await.cache(), "hit");
    assert_eq!(up.calls(), 1);

    let mut other_model = base.clone();
    other_model["model"] = json!("gpt-other");
    let mut hot = base.clone();
    hot["temperature"] = json!(1.3);
    let mut sys = base.clone();
    sys["messages"][0]["content"] = json!("You are verbose.");
    for (i, v) in [other_model, hot, sys].into_iter().enumerate() {
        let got = Call::chat(v).send(&app).await;
        assert_eq!(got.cache(), "miss", "variant {i} must miss");
        assert_eq!(up.calls(), 2 + i);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn streamed_and_non_streamed_answers_serve_each_other() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let mut s = ask("Explain HTTP caching");
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});

    // Streamed miss, then streamed hit.
    let miss = Call::chat(s.clone()).send(&app).await;
    assert_eq!(miss.cache(), "miss");
    assert!(miss.header("content-type").starts_with("text/event-stream"));
    settle(&app).await;
    let hit = Call::chat(s.clone()).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert!(hit.header("content-type").starts_with("text/event-stream"));
    assert_eq!(content_of(&hit), content_of(&miss));
    let body = hit.text();
    assert!(body.ends_with("data: [DONE]\n\n"));
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(events.len() >= 5, "content must come in several chunks");
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 18);
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));

    // The streamed entry served as JSON.
    let json_hit = Call::ask("Explain HTTP caching").send(&app).await;
    assert_eq!(json_hit.cache(), "hit");
    assert_eq!(
        json_hit.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
        content_of(&miss)
    );
    assert_eq!(up.calls(), 1);

    // Non-streamed miss, then streamed hit without usage.
    let j = Call::ask("What is a monad?").send(&app).await;
    assert_eq!(j.cache(), "miss");
    settle(&app).await;
    let mut sq = ask("What is a monad?");
    sq["stream"] = json!(true);
    let sh = Call::chat(sq).send(&app).await;
    assert_eq!(sh.cache(), "hit");
    assert_eq!(content_of(&sh), content_of(&j));
    assert!(
        !sh.text().contains("\"usage\""),
        "no usage chunk unless asked"
    );
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

/// A reasoning model's stream (DeepSeek's shape): reasoning deltas first,
/// then the answer.
fn reasoning_stream(reasoning: &str, content: &str) -> Vec<Bytes> {
    let chunk = |delta: Value, fr: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "deepseek-reasoner",
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": fr}]})
        ))
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": null, "reasoning_content": ""}),
        Value::Null,
    )];
    for w in reasoning.split_inclusive(' ') {
        out.push(chunk(
            json!({"content": null, "reasoning_content": w}),
            Value::Null,
        ));
    }
    for w in content.split_inclusive(' ') {
        out.push(chunk(
            json!({"content": w, "reasoning_content": null}),
            Value::Null,
        ));
    }
    out.push(chunk(json!({}), json!("stop")));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The non-empty text fields of a chat stream's deltas, in order.
fn delta_fields(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| {
            let d = v["choices"][0]["delta"].clone();
            ["reasoning_content", "reasoning", "content"]
                .into_iter()
                .filter_map(move |f| {
                    d[f].as_str()
                        .filter(|s| !s.is_empty())
                        .map(|s| (f.to_string(), s.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn reasoning_survives_a_streamed_miss_and_is_replayed_before_the_answer() {
    const THOUGHT: &str =
        "The user wants the boiling point at sea level, which is one hundred degrees.";
    const ANSWER: &str = "Water boils at 100 degrees Celsius at sea level.";
    let up = mock(Arc::new(|_: &Seen, _| {
        Reply::Chunks(
            vec![],
            reasoning_stream(THOUGHT, ANSWER),
            Duration::from_millis(1),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let mut s = json!({"model": "deepseek-reasoner", "stream": true,
        "messages": [{"role": "user", "content": "At what temperature does water boil?"}]});

    let miss = Call::chat(s.clone()).send(&app).await;
    assert_eq!(miss.cache(), "miss");
    settle(&app).await;
    let hit = Call::chat(s.clone()).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1, "the hit must not reach the upstream");

    let fields = delta_fields(&hit.text());
    let joined = |name: &str| -> String {
        fields
            .iter()
            .filter(|(f, _)| f == name)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert_eq!(joined("reasoning_content"), THOUGHT);
    assert_eq!(joined("content"), ANSWER);
    let first_answer = fields.iter().position(|(f, _)| f == "content").unwrap();
    assert!(
        fields[first_answer..].iter().all(|(f, _)| f == "content"),
        "all reasoning comes before the answer: {fields:?}"
    );
    assert!(first_answer > 1, "reasoning in pieces");

    // The same entry as JSON carries the reasoning in the message.
    s["stream"] = json!(false);
    let json_hit = Call::chat(s).send(&app).await;
    assert_eq!(json_hit.cache(), "hit");
    let msg = &json_hit.json()["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], THOUGHT);
    assert_eq!(msg["content"], ANSWER);
    assert_eq!(up.calls(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn entries_survive_a_restart() {
    let (up, dir, app) = Gateway::with_mock_llm().await;
    let first = Call::ask("Name three prime numbers").send(&app).await;
    let mut img = json!({"model": "gpt-test", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    Call::chat(img.clone()).send(&app).await;
    settle(&app).await;
    app.shutdown().await;
    assert_eq!(up.calls(), 2);
    assert!(dir.path().join("modelcache.db").exists());
    assert!(
        std::fs::read_dir(dir.path().join("index")).unwrap().count() >= 1,
        "the index is saved at shutdown"
    );

    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    let again = Call::ask("Name three prime numbers").send(&app).await;
    assert_eq!(again.cache(), "hit");
    assert_eq!(content_of(&again), content_of(&first));
    // The same words in another order: a semantic hit, from the reloaded index.
    let semantic = Call::ask("three prime numbers name").send(&app).await;
    assert_eq!(semantic.cache(), "hit");
    assert!(semantic.header("cache-status").contains("semantic"));
    // Exact-only entries (images) survive too.
    assert_eq!(Call::chat(img.clone()).send(&app).await.cache(), "hit");
    img["messages"][0]["content"][1]["image_url"]["url"] = json!("data:image/png;base64,BBBB");
    let other = Call::chat(img).send(&app).await;
    assert_eq!(other.cache(), "miss");
    assert_eq!(other.header("cache-status"), "modelcache; fwd=uri-miss");
    assert_eq!(up.calls(), 4, "two, a warm-up, and the other image");
    app.shutdown().await;

    // A deleted index file is rebuilt from SQLite.
    for f in std::fs::read_dir(dir.path().join("index")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    assert_eq!(
        Call::ask("three prime numbers name")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    // NOTE: the key stayed verified across the restart (the store keeps
    // it), so its warm-up question is a hit too: no upstream call at all.
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

/// Ten questions of one template, each with its own answer-worthy detail.
fn templated(noun: &str) -> Vec<String> {
    [
        "Python", "Rust", "Go", "Java", "Ruby", "Kotlin", "Swift", "Haskell", "Elixir", "Scala",
    ]
    .iter()
    .map(|lang| format!("How do I reverse a {noun} in {lang}?"))
    .collect()
}

/// A gateway on `dir` that asks `questions` (after the warm-up), then stops
/// and saves its index.
async fn fill(up: &Mock, dir: &std::path::Path, questions: &[String]) {
    let app = Gateway::new(settings(&up.url(), dir)).start().await;
    verify_key(&app, &[]).await;
    for q in questions {
        assert_eq!(Call::ask(q).send(&app).await.cache(), "miss");
    }
    settle(&app).await;
    app.shutdown().await;
}

/// The index snapshot of the default tenant under `dir`.
fn snapshot_of(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("index")
        .join(format!("{}.usearch", hex::encode("default")))
}

/// Each never-seen question is a miss answered by the upstream, and each
/// question of `own` in other words a hit with its own answer.
async fn only_own_answers(
    up: &Mock,
    app: &modelcache::app::RunningApp,
    never_seen: &[String],
    own: &[String],
) {
    for q in never_seen {
        let before = up.calls();
        let got = Call::ask(q).send(&app).await;
        assert_eq!(got.cache(), "miss", "{q:?} was never asked here");
        assert_eq!(up.calls(), before + 1);
        assert!(
            content_of(&got).ends_with(q.as_str()),
            "{}",
            content_of(&got)
        );
    }
    for q in own {
        let other = q.trim_end_matches('?').to_lowercase();
        let got = Call::ask(&other).send(&app).await;
        assert_eq!(got.cache(), "hit", "{other:?} is {q:?} in other words");
        assert!(got.header("cache-status").contains("semantic"));
        assert!(
            content_of(&got).ends_with(q.as_str()),
            "{}",
            content_of(&got)
        );
    }
}

#[tokio::test]
async fn a_snapshot_of_another_store_is_rebuilt_and_never_answers_for_it() {
    let up = mock(llm()).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Two gateways, the same entry ids, other questions.
    let (asked_a, asked_b) = (templated("list"), templated("string"));
    fill(&up, a.path(), &asked_a).await;
    fill(&up, b.path(), &asked_b).await;
    // A's snapshot, with its seal, copied over B's.
    for f in std::fs::read_dir(a.path().join("index")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, b.path().join("index").join(f.file_name().unwrap())).unwrap();
    }
    let foreign = std::fs::read(snapshot_of(a.path())).unwrap();
    let app = Gateway::new(settings(&up.url(), b.path())).start().await;
    assert_ne!(
        std::fs::read(snapshot_of(b.path())).unwrap(),
        foreign,
        "the foreign snapshot was refused and rebuilt from B's store"
    );
    verify_key(&app, &[]).await;
    only_own_answers(&up, &app, &asked_a, &asked_b[..3]).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_with_nan_bytes_in_its_vectors_is_rebuilt() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let asked = templated("list");
    fill(&up, dir.path(), &asked).await;
    // NaN over every vector: usearch writes rows and bytes per row as two
    // u32, then the rows.
    let path = snapshot_of(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let rows = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let cols = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(rows, asked.len() + 1, "the questions and the warm-up");
    bytes[8..8 + rows * cols].fill(0xFF);
    std::fs::write(&path, &bytes).unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    assert_ne!(std::fs::read(&path).unwrap(), bytes, "rebuilt and saved");
    verify_key(&app, &[]).await;
    only_own_answers(&up, &app, &templated("string"), &asked[..3]).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_200_kib_body_is_forwarded_byte_for_byte() {
    let (up, dir, app) = Gateway::with_mock_llm().await;
    let history = "lorem ipsum dolor sit amet ".repeat(200 * 1024 / 27 + 1);
    let body = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": history},
        {"role": "user", "content": "Summarise the above."}]})
    .to_string();
    assert!(body.len() > 200 * 1024);
    let got = Call::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.clone())
        .send(&app)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache(), "miss");
    assert_eq!(
        up.last().body,
        Bytes::from(body.clone()),
        "same bytes upstream"
    );
    settle(&app).await;
    let again = Call::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.clone())
        .send(&app)
        .await;
    assert_eq!(again.cache(), "hit");
    assert_eq!(up.calls(), 1);
    app.shutdown().await;

    // Past the body cap: forwarded untouched, not cached, never rejected.
    let mut s = settings(&up.url(), dir.path());
    s.server.max_body_bytes = 64 * 1024;
    let app = Gateway::new(s).start().await;
    for expected_calls in [2, 3] {
        let got = Call::new("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body.clone())
            .send(&app)
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.cache(), "bypass");
        assert_eq!(up.last().body, Bytes::from(body.clone()));
        assert_eq!(up.calls(), expected_calls);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_and_are_not_cached() {
    let up = mock(Arc::new(|_seen: &Seen, n: usize| {
        if n % 2 == 1 {
            Reply::Full(
                429,
                vec![
                    ("content-type", "application/json".into()),
                    ("retry-after", "7".into()),
                    ("x-ratelimit-remaining-requests", "0".into()),
                ],
                Bytes::from(r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#),
            )
        } else {
            Reply::Full(500, vec![("content-type", "application/json".into())], Bytes::from(r#"{"error":{"message":"boom","type":"server_error"}}"#))
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let q = ask("Will this be rate limited?");
    let a = Call::chat(q.clone()).send(&app).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), "7");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(a.json()["error"]["code"], "rate_limit_exceeded");
    settle(&app).await;
    let b = Call::chat(q.clone()).send(&app).await;
    assert_eq!(b.status, 500);
    assert_eq!(b.json()["error"]["message"], "boom");
    settle(&app).await;
    let c = Call::chat(q).send(&app).await;
    assert_eq!(c.status, 429, "errors are never served from the cache");
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_upstream_gives_502_and_a_slow_one_504_in_openai_shape() {
    // Bind and drop to get a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&format!("http://{dead}"), dir.path()))
        .start()
        .await;
    let got = Call::ask("anyone there?").send(&app).await;
    assert_eq!(got.status, 502);
    let e = got.json();
    assert_eq!(e["error"]["type"], "api_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream unreachable"));
    assert!(e["error"].get("param").is_some() && e["error"].get("code").is_some());
    let other = Call::get("/v1/models").send(&app).await;
    assert_eq!(other.status, 502);
    app.shutdown().await;

    let up = mock(Arc::new(|_s: &Seen, _n| {
        Reply::Delay(
            Duration::from_secs(3),
            Box::new(Reply::Full(200, vec![], Bytes::from("{}"))),
        )
    }))
    .await;
    let mut s = settings(&up.url(), dir.path());
    upstreams(&mut s, |u| u.header_timeout = Duration::from_millis(300));
    let app = Gateway::new(s).start().await;
    let got = Call::ask("slow?").send(&app).await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"]["code"], "modelcache_upstream_timeout");
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_caches_nothing() {
    let up = mock(slow_stream(Duration::from_millis(150))).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon"}]})
    .to_string();
    {
        let mut sock = tokio::net::TcpStream::connect(app.proxy_addr)
            .await
            .unwrap();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            body.len(),
            body
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Hang up after the first bytes.
    }
    // Let the upstream finish its stream (it would have, without the client).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settle(&app).await;
    let mut again: Value = serde_json::from_str(&body).unwrap();
    again["stream"] = json!(false);
    let got = Call::chat(again).send(&app).await;
    assert_eq!(
        got.cache(),
        "miss",
        "nothing from the cut stream may be served"
    );
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_write_back_queue_drops_writes_but_requests_succeed() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    s.cache.writeback_queue = 1;
    s.cache.writeback_batch = 1;
    let store = Arc::new(FaultyStore::held());
    let app = Gateway::new(s).store(store.clone()).start().await;
    for i in 0..4 {
        let got = Call::ask(&format!("question number {i}")).send(&app).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            content_of(&got),
            answer_for(&format!("question number {i}"), i + 1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = metrics(&app).await;
    let dropped = metric_sum(&m, "modelcache_writeback_dropped_total", &[]);
    assert!(
        dropped >= 2.0,
        "one write in the store, one queued, the rest dropped: {dropped}"
    );
    store.release();
    settle(&app).await;
    // The first write landed; a dropped one did not.
    assert_eq!(
        Call::ask("question number 0").send(&app).await.cache(),
        "hit"
    );
    assert_eq!(
        Call::ask("question number 3").send(&app).await.cache(),
        "miss"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn hits_are_counted_in_batches_not_one_row_write_per_hit() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::default());
    let app = Gateway::new(settings(&up.url(), dir.path()))
        .store(store.clone())
        .start()
        .await;
    let q = "How many legs does a spider have?";
    assert_eq!(Call::ask(q).send(&app).await.cache(), "miss");
    settle(&app).await;
    let mut entry = String::new();
    for _ in 0..40 {
        let got = Call::ask(q).send(&app).await;
        assert_eq!(got.cache(), "hit");
        entry = got.header("x-modelcache-entry");
    }
    assert_eq!(up.calls(), 1);
    // The admin API shows every hit (it waits for the batch)...
    let v = admin(&app, "GET", &format!("/admin/entries/{entry}"), Value::Null)
        .await
        .json();
    assert_eq!(v["hits"], 40, "{v}");
    // ...which reached the store in a few writes, not forty.
    let batches = store.hit_batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 40, "{batches:?}");
    assert!(batches.len() < 10, "{batches:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn entries_the_store_refuses_wait_in_a_bounded_queue_and_are_written_when_it_returns() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    s.cache.writeback_queue = 2;
    let store = Arc::new(FaultyStore::default());
    let app = Gateway::new(s).store(store.clone()).start().await;
    store.fail_writes(true);
    for i in 0..3 {
        let got = Call::ask(&format!("asked while the disk fails {i}"))
            .send(&app)
            .await;
        assert_eq!((got.status, got.cache()), (200, "miss".to_string()));
        settle(&app).await;
    }
    let m = metrics(&app).await;
    assert_eq!(metric_sum(&m, "modelcache_writeback_deferred", &[]), 2.0);
    assert_eq!(
        metric_sum(&m, "modelcache_writeback_total", &["outcome=\"dropped\""]),
        1.0,
        "the oldest of three went past the bound of two"
    );
    store.fail_writes(false);
    settle(&app).await;
    let calls = up.calls();
    for i in 1..3 {
        let got = Call::ask(&format!("asked while the disk fails {i}"))
            .send(&app)
            .await;
        assert_eq!(got.cache(), "hit", "deferred entry {i}");
    }
    assert_eq!(up.calls(), calls);
    assert_eq!(
        Call::ask("asked while the disk fails 0")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    let m = metrics(&app).await;
    assert_eq!(metric_sum(&m, "modelcache_writeback_deferred", &[]), 0.0);
    app.shutdown().await;
}

#[tokio::test]
async fn an_entry_the_store_cannot_hold_is_dropped_without_holding_back_the_rest() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::default());
    store
        .reject_poison
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let app = Gateway::new(settings(&up.url(), dir.path()))
        .store(store.clone())
        .start()
        .await;
    // Asked together, so that the writer may take them in one batch.
    let (x, y, z) = tokio::join!(
        Call::ask("first ordinary question").send(&app),
        Call::ask("a POISON question").send(&app),
        Call::ask("second ordinary question").send(&app),
    );
    assert_eq!((x.status, y.status, z.status), (200, 200, 200));
    settle(&app).await;
    for q in ["first ordinary question", "second ordinary question"] {
        assert_eq!(Call::ask(q).send(&app).await.cache(), "hit", "{q}");
    }
    assert_eq!(
        Call::ask("a POISON question").send(&app).await.cache(),
        "miss"
    );
    let m = metrics(&app).await;
    assert_eq!(metric_sum(&m, "modelcache_writeback_deferred", &[]), 0.0);
    assert!(metric_sum(&m, "modelcache_writeback_total", &["outcome=\"failed\""]) >= 1.0);
    // Later writes are not held back either.
    Call::ask("third ordinary question").send(&app).await;
    settle(&app).await;
    assert_eq!(
        Call::ask("third ordinary question")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_json_and_non_utf8_are_forwarded_untouched_and_not_cached() {
    let up = mock(Arc::new(|_s: &Seen, _n| {
        Reply::Full(
            400,
            vec![("content-type", "application/json".into())],
            Bytes::from(r#"{"error":{"message":"bad json"}}"#),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let broken = Bytes::from_static(b"{\"model\": \"gpt-test\", \"messages\": [");
    for n in 1..=2 {
        let got = Call::new("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(broken.clone())
            .send(&app)
            .await;
        assert_eq!(got.status, 400);
        assert_eq!(got.cache(), "bypass");
        assert_eq!(up.last().body, broken);
        assert_eq!(up.calls(), n);
    }
    let mut latin1 =
        b"{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"caf".to_vec();
    latin1.extend_from_slice(&[0xe9, 0xff]);
    latin1.extend_from_slice(b"\"}]}");
    let got = Call::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(latin1.clone())
        .send(&app)
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(up.last().body, Bytes::from(latin1));
    app.shutdown().await;
}

#[tokio::test]
async fn a_gzipped_upstream_answer_is_passed_on_and_cached() {
    let up = mock(Arc::new(|seen: &Seen, n| {
        let body = chat_json(&answer_for(&question(seen), n), "stop").to_string();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        Reply::Full(
            200,
            vec![
                ("content-type", "application/json".into()),
                ("content-encoding", "gzip".into()),
            ],
            Bytes::from(enc.finish().unwrap()),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let first = Call::ask("compressed?")
        .header("accept-encoding", "gzip")
        .send(&app)
        .await;
    assert_eq!(
        first.header("content-encoding"),
        "gzip",
        "passed on untouched"
    );
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&first.body[..]),
        &mut plain,
    )
    .unwrap();
    assert!(plain.contains("Answer #1 to: compressed?"));
    settle(&app).await;
    let hit = Call::ask("compressed?")
        .header("accept-encoding", "gzip")
        .send(&app)
        .await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(hit.header("content-encoding"), "");
    assert_eq!(content_of(&hit), "Answer #1 to: compressed?");
    assert_eq!(up.calls(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn other_routes_pass_through_with_path_query_and_headers() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let got = Call::get("/v1/models?limit=5&after=x")
        .headers(&[
            ("authorization", "Bearer sk-test"),
            ("openai-organization", "org-1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ])
        .send(&app)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache(), "bypass");
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path_and_query, "/v1/models?limit=5&after=x");
    assert_eq!(seen.headers["authorization"], "Bearer sk-test");
    assert_eq!(seen.headers["openai-organization"], "org-1");
    assert!(
        seen.headers.get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(seen.headers["host"], up.addr.to_string());
    let post = Call::new("POST", "/v1/embeddings")
        .header("content-type", "application/json")
        .body(r#"{"input":"x"}"#)
        .send(&app)
        .await;
    assert_eq!(post.cache(), "bypass");
    assert_eq!(up.last().body, Bytes::from(r#"{"input":"x"}"#));
    app.shutdown().await;
}

#[tokio::test]
async fn cache_control_and_request_headers() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    // The threshold header alone: the verifier would ask more of a one-word addition.
    policy(&mut s, |p| p.verifier.enabled = false);
    let app = Gateway::new(s).start().await;
    let q = ask("What is Rust?");
    // no-store: neither reads nor writes.
    assert_eq!(
        Call::chat(q.clone())
            .header("cache-control", "no-store")
            .send(&app)
            .await
            .cache(),
        "bypass"
    );
    settle(&app).await;
    assert_eq!(Call::chat(q.clone()).send(&app).await.cache(), "miss");
    settle(&app).await;
    assert_eq!(up.calls(), 2);
    // no-cache: skips the lookup, still writes (the newer answer replaces the old).
    let fresh = Call::chat(q.clone())
        .header("cache-control", "no-cache")
        .send(&app)
        .await;
    assert_eq!(fresh.cache(), "miss");
    assert_eq!(fresh.header("cache-status"), "modelcache; fwd=request");
    settle(&app).await;
    let hit = Call::chat(q.clone()).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(content_of(&hit), answer_for("What is Rust?", 3));
    // max-age: an entry older than that is not served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        Call::chat(q.clone())
            .header("cache-control", "max-age=0")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    settle(&app).await;
    assert_eq!(
        Call::chat(q.clone())
            .header("cache-control", "max-age=60")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    // A huge max-age is no limit: it saturates, it never wraps to a negative age.
    for huge in ["max-age=9300000000000000", "max-age=18446744073709551615"] {
        let got = Call::chat(q.clone())
            .headers(&[("cache-control", huge)])
            .send(&app)
            .await;
        assert_eq!(got.cache(), "hit", "{huge}");
    }
    assert_eq!(up.calls(), 4);
    // A stricter threshold turns a semantic hit into a miss; a looser one is ignored.
    let ten = "one two three four five six seven eight nine ten";
    Call::ask(ten).send(&app).await;
    settle(&app).await;
    let near = format!("{ten} eleven");
    let sem = Call::ask(&near).send(&app).await;
    assert_eq!(sem.cache(), "hit");
    assert!(sem.header("cache-status").contains("semantic"));
    let sim: f32 = sem.header("x-modelcache-similarity").parse().unwrap();
    assert!(sim > 0.9 && sim < 0.999, "{sim}");
    let far = format!("{ten} alpha beta gamma");
    assert_eq!(
        Call::ask(&far)
            .header("x-modelcache-threshold", "0.0")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(
        Call::ask(&near)
            .header("x-modelcache-threshold", "0.999")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    settle(&app).await;
    // x-modelcache-ttl: a zero TTL entry is never served.
    let calls = up.calls();
    Call::ask("short lived")
        .header("x-modelcache-ttl", "0")
        .send(&app)
        .await;
    settle(&app).await;
    assert_eq!(Call::ask("short lived").send(&app).await.cache(), "miss");
    assert_eq!(up.calls(), calls + 2);
    app.shutdown().await;
}

#[tokio::test]
async fn truncated_and_errored_answers_are_not_cached() {
    let up = mock(Arc::new(|seen: &Seen, n| {
        let q = question(seen);
        if q.starts_with("length") {
            Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(chat_json("cut", "length").to_string()),
            )
        } else if q.starts_with("error-event") {
            let mut c = sse_chunks("partial", "stop", false);
            c.insert(
                2,
                Bytes::from("data: {\"error\":{\"message\":\"overloaded\"}}\n\n"),
            );
            Reply::Chunks(vec![], c, Duration::from_millis(1))
        } else {
            let mut c = sse_chunks(&answer_for(&q, n), "stop", false);
            c.pop(); // no [DONE]
            Reply::Chunks(vec![], c, Duration::from_millis(1))
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    for (i, q) in ["length limited", "error-event here", "no done marker"]
        .iter()
        .enumerate()
    {
        let mut r = ask(q);
        if i > 0 {
            r["stream"] = json!(true);
        }
        assert_eq!(Call::chat(r.clone()).send(&app).await.status, 200);
        settle(&app).await;
        assert_eq!(Call::chat(r).send(&app).await.cache(), "miss", "{q}");
    }
    assert_eq!(up.calls(), 6);
    let m = metrics(&app).await;
    assert_eq!(
        metric_sum(&m, "modelcache_writeback_total", &["outcome=\"rejected\""]),
        6.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn legacy_completions_with_a_string_prompt_are_cached() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let body = json!({"model": "gpt-test-instruct", "prompt": "Say this is a test"}).to_string();
    let a = Call::new("POST", "/v1/completions")
        .header("content-type", "application/json")
        .body(body.clone())
        .send(&app)
        .await;
    assert_eq!(a.cache(), "miss");
    settle(&app).await;
    let b = Call::new("POST", "/v1/completions")
        .header("content-type", "application/json")
        .body(body)
        .send(&app)
        .await;
    assert_eq!(b.cache(), "hit");
    assert_eq!(
        b.json()["choices"][0]["text"],
        a.json()["choices"][0]["text"]
    );
    assert_eq!(b.json()["object"], "text_completion");
    let list = json!({"model": "gpt-test-instruct", "prompt": ["a", "b"]}).to_string();
    let c = Call::new("POST", "/v1/completions")
        .header("content-type", "application/json")
        .body(list)
        .send(&app)
        .await;
    assert_eq!(c.cache(), "bypass");
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn readiness_health_and_metrics_on_the_admin_listener() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    assert_eq!(Call::get("/healthz").send(app.admin_addr).await.status, 200);
    assert_eq!(Call::get("/readyz").send(app.admin_addr).await.status, 200);
    let m = metrics(&app).await;
    for name in [
        "modelcache_writeback_queue_depth",
        "modelcache_writeback_dropped_total",
        "modelcache_entries",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    // The admin routes are not reachable through the proxy port.
    let via_proxy = Call::get("/healthz").send(&app).await;
    assert_eq!(via_proxy.cache(), "bypass");
    assert_eq!(up.last().path_and_query, "/healthz");
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_upstream_stream_is_cut_and_not_cached() {
    // Every chunk comes 700 ms after the last: longer than the idle timeout.
    let up = mock(slow_stream(Duration::from_millis(700))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    upstreams(&mut s, |u| u.idle_timeout = Duration::from_millis(250));
    let app = Gateway::new(s).start().await;
    let mut req = ask("stall please");
    req["stream"] = json!(true);
    for n in 1..=2 {
        let r = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/v1/chat/completions", app.proxy_addr))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(req.to_string())))
            .unwrap();
        let resp = client().request(r).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-modelcache"],
            "miss",
            "a cut stream is never served"
        );
        let collected = http_body_util::BodyExt::collect(resp.into_body()).await;
        assert!(
            collected.is_err(),
            "the client sees the stream break, not a clean end"
        );
        settle(&app).await;
        assert_eq!(up.calls(), n);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for expected in ["miss", "hit"] {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/v1/chat/completions", app.proxy_addr))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                ask("over h2?").to_string(),
            )))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-modelcache"], expected);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            answer_for("over h2?", 1)
        );
        settle(&app).await;
    }
    assert_eq!(up.calls(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_upstream_with_a_path_prefix_gets_the_request_path_appended() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&format!("{}/openai/", up.url()), dir.path()))
        .start()
        .await;
    let got = Call::get("/v1/models?x=1").send(&app).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().path_and_query, "/openai/v1/models?x=1");
    let q = Call::ask("prefixed?").send(&app).await;
    assert_eq!(q.cache(), "miss");
    assert_eq!(up.last().path_and_query, "/openai/v1/chat/completions");
    app.shutdown().await;
}

#[tokio::test]
async fn long_texts_use_their_own_threshold() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    policy(&mut s, |p| {
        p.long_text_words = 5;
        p.threshold = 0.80;
        p.long_threshold = 0.99;
        // The thresholds alone: the verifier would ask more of a one-word addition.
        p.verifier.enabled = false;
    });
    let app = Gateway::new(s).start().await;
    // Short: 4 words cached, 5 asked (similarity about 0.89): hits under 0.80.
    Call::ask("alpha beta gamma delta").send(&app).await;
    settle(&app).await;
    let short = Call::ask("alpha beta gamma delta epsilon").send(&app).await;
    assert_eq!(short.cache(), "hit");
    // Long: 10 words cached, 11 asked (about 0.95): misses under 0.99.
    let ten = "one two three four five six seven eight nine ten";
    Call::ask(ten).send(&app).await;
    settle(&app).await;
    let long = Call::ask(&format!("{ten} eleven")).send(&app).await;
    assert_eq!(long.cache(), "miss", "a long text needs the long threshold");
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn the_query_string_is_part_of_the_key_in_any_order() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let path = |q: &str| format!("/v1/chat/completions{q}");
    let post = |q: &'static str| {
        let addr = app.proxy_addr;
        async move {
            Call::new("POST", &path(q))
                .header("content-type", "application/json")
                .body(ask("Which API version am I talking to?").to_string())
                .send(addr)
                .await
        }
    };
    let x = post("?variant=x&api-version=2024-10-21").await;
    assert_eq!(x.cache(), "miss");
    assert_eq!(
        up.last().path_and_query,
        "/v1/chat/completions?variant=x&api-version=2024-10-21",
        "the query is forwarded as it came"
    );
    settle(&app).await;
    // The same body without the query, or with another value: misses.
    for q in ["", "?variant=y&api-version=2024-10-21", "?variant=x"] {
        let got = post(q).await;
        assert_eq!(got.cache(), "miss", "{q:?}");
        settle(&app).await;
    }
    assert_eq!(up.calls(), 4);
    // The same query, in any order: a hit, answered as the first one was.
    for q in [
        "?variant=x&api-version=2024-10-21",
        "?api-version=2024-10-21&variant=x",
    ] {
        let got = post(q).await;
        assert_eq!(got.cache(), "hit", "{q}");
        assert_eq!(got.header("cache-status"), "modelcache; hit; detail=exact");
        assert_eq!(content_of(&got), content_of(&x));
    }
    // And no query still hits the answer stored without one.
    assert_eq!(post("").await.cache(), "hit");
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn a_turn_separator_inside_a_message_forges_no_hit() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let two = json!({"model": "gpt-test", "messages": [
        {"role": "user", "content": "is a tomato a fruit"},
        {"role": "user", "content": "answer only yes or no, in French"}]});
    let one = json!({"model": "gpt-test", "messages": [
        {"role": "user", "content": "is a tomato a fruit|||user###answer only yes or no, in French"}]});
    assert_eq!(Call::chat(two.clone()).send(&app).await.cache(), "miss");
    settle(&app).await;
    let got = Call::chat(one.clone()).send(&app).await;
    assert_eq!(got.cache(), "miss", "{}", got.header("cache-status"));
    settle(&app).await;
    assert_eq!(up.calls(), 2);
    // The same, with a system prompt that spells out a user turn.
    let sys_a = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "Be brief.|||user###Name a colour."},
        {"role": "user", "content": "Name a fruit."}]});
    let sys_b = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour.|||user###Name a fruit."}]});
    assert_eq!(Call::chat(sys_a.clone()).send(&app).await.cache(), "miss");
    settle(&app).await;
    assert_eq!(Call::chat(sys_b.clone()).send(&app).await.cache(), "miss");
    settle(&app).await;
    assert_eq!(up.calls(), 4);
    // Each one's repeat still hits its own answer.
    for body in [two, one, sys_a, sys_b] {
        let got = Call::chat(body).send(&app).await;
        assert_eq!(got.cache(), "hit");
        assert_eq!(got.header("cache-status"), "modelcache; hit; detail=exact");
    }
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn a_stream_with_an_event_typed_error_is_passed_on_and_not_cached() {
    let up = mock(Arc::new(|seen: &Seen, n| {
        let mut c = sse_chunks(&answer_for(&question(seen), n), "stop", false);
        // NOTE: the error is flagged by the event's type alone; its data has
        // no `error` member, and the stream goes on to [DONE].
        c.insert(
            2,
            Bytes::from("event: error\ndata: {\"message\":\"overloaded, retrying\"}\n\n"),
        );
        Reply::Chunks(vec![], c, Duration::from_millis(1))
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let mut r = ask("Stream me something");
    r["stream"] = json!(true);
    let first = Call::chat(r.clone()).send(&app).await;
    assert_eq!(first.status, 200);
    let mut sent = sse_chunks(&answer_for("Stream me something", 1), "stop", false);
    sent.insert(
        2,
        Bytes::from("event: error\ndata: {\"message\":\"overloaded, retrying\"}\n\n"),
    );
    assert_eq!(
        first.body,
        sent.concat(),
        "the client gets the bytes untouched"
    );
    settle(&app).await;
    let again = Call::chat(r).send(&app).await;
    assert_eq!(again.cache(), "miss");
    assert_eq!(up.calls(), 2, "nothing was stored");
    let m = metrics(&app).await;
    assert_eq!(
        metric_sum(&m, "modelcache_writeback_total", &["outcome=\"rejected\""]),
        2.0
    );
    app.shutdown().await;
}

/// An upstream on raw TCP that answers every request with a 200 whose
/// chunked framing is broken (a chunk-size line that is no number): on odd
/// calls in the same write as the head, on even ones 50 ms after it.
async fn broken_chunking_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                // Read the request: the head, then content-length bytes.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                let bad = b"zz\r\n{\"choices\":[]}\r\n0\r\n\r\n";
                if n % 2 == 1 {
                    let _ = sock.write_all(&[&head[..], &bad[..]].concat()).await;
                } else {
                    let _ = sock.write_all(head).await;
                    let _ = sock.flush().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = sock.write_all(bad).await;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test]
async fn broken_chunked_framing_gives_a_502_or_a_cut_200_and_is_never_cached() {
    use std::sync::atomic::Ordering;
    let (addr, calls) = broken_chunking_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&format!("http://{addr}"), dir.path()))
        .start()
        .await;
    let body = ask("Frame this, please").to_string();
    let (mut clean_502, mut cut_200) = (0, 0);
    for i in 0..20 {
        let mut sock = tokio::net::TcpStream::connect(app.proxy_addr)
            .await
            .unwrap();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut got))
            .await
            .expect("the gateway answers or closes")
            .ok();
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.starts_with("HTTP/1.1 502") {
            let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
            let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(v["error"]["type"], "api_error", "{text}");
            assert_eq!(v["error"]["code"], "modelcache_upstream_body", "{text}");
            assert!(v["error"]["param"].is_null() && v["error"]["message"].is_string());
            clean_502 += 1;
        } else if text.starts_with("HTTP/1.1 200") {
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "a 200 whose body broke is cut, never ended cleanly: {text:?}"
            );
            cut_200 += 1;
        } else {
            panic!("request {i}: no status line: {text:?}");
        }
    }
    assert_eq!(clean_502 + cut_200, 20);
    // NOTE: a broken chunk in the head's own write is found before the head
    // goes out (502); one that comes 50 ms later is not (a cut 200). Both
    // happen every run: ten tries each.
    assert!(
        clean_502 > 0 && cut_200 > 0,
        "{clean_502} 502s, {cut_200} cut 200s"
    );
    settle(&app).await;
    // NOTE: twenty times the same question, each one upstream: none was
    // served from the cache, so none was stored.
    assert_eq!(calls.load(Ordering::SeqCst), 20, "nothing was cached");
    app.shutdown().await;
}
