//! Anthropic's `/v1/messages` through the proxy, against mock upstreams that
//! answer Anthropic's JSON and event-stream shapes and count calls: misses
//! and hits both ways between streamed and not, what splits the partition,
//! thinking blocks kept, unfinished or broken answers never stored, the
//! Anthropic family routed to its own upstream, and `x-api-key` callers
//! matched, replaced and verified.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

fn ask_claude(q: &str) -> Value {
    json!({"model": "claude-test", "max_tokens": 256,
           "messages": [{"role": "user", "content": q}]})
}

fn streamed(body: &Value) -> Value {
    let mut b = body.clone();
    b["stream"] = json!(true);
    b
}

/// The message of an answer: the JSON, or the stream assembled.
fn message_of(got: &Got) -> Value {
    if got.header("content-type").starts_with("text/event-stream") {
        modelcache::proxy::anthropic::assemble(&got.text())
            .unwrap_or_else(|e| panic!("bad stream ({e}): {}", got.text()))
    } else {
        got.json()
    }
}

fn text_of(got: &Got) -> String {
    message_of(got)["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_miss_then_hits_streamed_or_not_each_way() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let q = ask_claude("What is the capital of France?");
    let miss = Call::messages(&q).send(&app).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.cache(), "miss");
    settle(&app).await;
    let hit = Call::messages(&q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1, "the hit must not reach the upstream");
    assert_eq!(text_of(&hit), text_of(&miss));
    let h = hit.json();
    assert_eq!(h["type"], "message");
    assert_ne!(h["id"], miss.json()["id"], "a fresh id");
    assert!(h["id"].as_str().unwrap().starts_with("msg_"));
    assert!(h.get("created").is_none(), "a message has no created");
    assert_eq!(h["usage"], miss.json()["usage"]);

    // The JSON entry replayed as Anthropic's stream, every event typed.
    let sh = Call::messages(&streamed(&q)).send(&app).await;
    assert_eq!(sh.cache(), "hit");
    assert!(sh.header("content-type").starts_with("text/event-stream"));
    let body = sh.text();
    for e in body.split("\n\n").filter(|e| !e.is_empty()) {
        assert!(e.starts_with("event: "), "an event without its type: {e}");
    }
    assert!(body.starts_with("event: message_start\n"));
    assert!(body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert_eq!(text_of(&sh), text_of(&miss));
    assert_eq!(message_of(&sh)["usage"]["output_tokens"], 9);
    assert_eq!(message_of(&sh)["stop_reason"], "end_turn");

    // A streamed miss, then a streamed and a JSON hit.
    let q2 = ask_claude("Why is the sky blue?");
    let smiss = Call::messages(&streamed(&q2)).send(&app).await;
    assert_eq!(smiss.cache(), "miss");
    settle(&app).await;
    let shit = Call::messages(&streamed(&q2)).send(&app).await;
    assert_eq!(shit.cache(), "hit");
    assert_eq!(text_of(&shit), text_of(&smiss));
    let jhit = Call::messages(&q2).send(&app).await;
    assert_eq!(jhit.cache(), "hit");
    assert_eq!(text_of(&jhit), text_of(&smiss));
    assert_eq!(jhit.json()["usage"]["input_tokens"], 21);
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn what_splits_the_partition_and_what_does_not() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let mut base = ask_claude("Name three primes.");
    base["system"] = json!([{"type": "text", "text": "You are terse.",
                             "cache_control": {"type": "ephemeral"}}]);
    assert_eq!(Call::messages(&base).send(&app).await.cache(), "miss");
    settle(&app).await;
    // Anthropic's prompt-cache markers are hints, not part of the key.
    let mut unmarked = base.clone();
    unmarked["system"][0]
        .as_object_mut()
        .unwrap()
        .remove("cache_control");
    assert_eq!(Call::messages(&unmarked).send(&app).await.cache(), "hit");
    assert_eq!(up.calls(), 1);

    let variant = |f: &str, v: Value| {
        let mut b = base.clone();
        b[f] = v;
        b
    };
    let cases = [
        (
            "another question",
            variant(
                "messages",
                json!([{"role": "user", "content": "Name three planets."}]),
            ),
        ),
        (
            "another system",
            variant("system", json!("You are verbose.")),
        ),
        ("max_tokens", variant("max_tokens", json!(1024))),
        ("temperature", variant("temperature", json!(0.0))),
        (
            "thinking",
            variant(
                "thinking",
                json!({"type": "enabled", "budget_tokens": 1024}),
            ),
        ),
        (
            "tools",
            variant(
                "tools",
                json!([{"name": "f", "input_schema": {"type": "object"}}]),
            ),
        ),
    ];
    for (i, (name, body)) in cases.iter().enumerate() {
        assert_eq!(
            Call::messages(body).send(&app).await.cache(),
            "miss",
            "{name}"
        );
        assert_eq!(up.calls(), 2 + i, "{name}");
    }
    // A beta header can change the answer.
    let beta = Call::messages(&base)
        .header("anthropic-beta", "output-128k-2025-02-19")
        .send(&app)
        .await;
    assert_eq!(beta.cache(), "miss");
    // Never a chat's answer for the same words.
    let chat = Call::chat(
        json!({"model": "claude-test", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three primes."}]}),
    )
    .send(&app)
    .await;
    assert_eq!(chat.cache(), "miss");
    app.shutdown().await;
}

#[tokio::test]
async fn thinking_blocks_survive_a_streamed_miss_and_a_streamed_hit() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let mut q = streamed(&ask_claude("Is 97 prime?"));
    q["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let miss = Call::messages(&q).send(&app).await;
    settle(&app).await;
    let hit = Call::messages(&q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1);
    let (a, b) = (message_of(&miss), message_of(&hit));
    assert_eq!(b["content"][0]["type"], "thinking");
    assert_eq!(
        b["content"][0], a["content"][0],
        "thinking and its signature"
    );
    assert_eq!(b["content"][0]["signature"], "EqQBCkYIBRgCIkDsig");
    assert_eq!(b["content"], a["content"]);
    // The thinking deltas come before the text's.
    let body = hit.text();
    let thinking = body.find("thinking_delta").unwrap();
    let text = body.find("text_delta").unwrap();
    assert!(thinking < text);
    assert!(body.find("signature_delta").unwrap() < text);
    app.shutdown().await;
}

/// An upstream whose Messages answers are unusable, one way per question.
fn unusable() -> Handler {
    Arc::new(|seen: &Seen, n: usize| {
        let v: Value = serde_json::from_slice(&seen.body).unwrap();
        let q = messages_question(&v);
        let text = answer_for(&q, n);
        let json_reply = |m: Value| {
            Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(m.to_string()),
            )
        };
        match q.as_str() {
            "cut short" => json_reply(messages_json(&text, None, "max_tokens")),
            "paused" => json_reply(messages_json(&text, None, "pause_turn")),
            "refused" => json_reply(messages_json(&text, None, "refusal")),
            "stream cut" => {
                let mut events = messages_sse(&messages_json(&text, None, "end_turn"));
                events.pop();
                Reply::Chunks(vec![], events, std::time::Duration::from_millis(1))
            }
            "stream error" => {
                let mut events = messages_sse(&messages_json(&text, None, "end_turn"));
                events.insert(
                    3,
                    Bytes::from("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
                );
                Reply::Chunks(vec![], events, std::time::Duration::from_millis(1))
            }
            _ => Reply::Full(
                529,
                vec![("content-type", "application/json".into())],
                Bytes::from(
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                ),
            ),
        }
    })
}

#[tokio::test]
async fn unfinished_refused_cut_or_errored_answers_are_never_stored() {
    let up = mock(unusable()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let mut calls = 0;
    for q in [
        "cut short",
        "paused",
        "refused",
        "stream cut",
        "stream error",
        "overloaded",
    ] {
        let body = if q.starts_with("stream") {
            streamed(&ask_claude(q))
        } else {
            ask_claude(q)
        };
        for _ in 0..2 {
            let got = Call::messages(&body).send(&app).await;
            assert_ne!(got.cache(), "hit", "{q}");
            calls += 1;
            assert_eq!(up.calls(), calls, "{q} must reach the upstream every time");
            settle(&app).await;
        }
    }
    // The upstream's own error comes back untouched.
    let got = Call::messages(&ask_claude("overloaded")).send(&app).await;
    assert_eq!(got.status, 529);
    assert_eq!(got.json()["error"]["type"], "overloaded_error");
    app.shutdown().await;
}

#[tokio::test]
async fn the_anthropic_family_has_its_own_upstream_and_x_api_key_callers_are_replaced_and_verified()
{
    let openai = mock(llm_tagged("openai: ")).await;
    let anthropic = mock(llm_tagged("anthropic: ")).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[upstream]\nurl = \"{}\"\nanthropic_url = \"{}\"\n\n\
         [[tenants]]\nname = \"claude\"\nauth = \"replace\"\nkeys_env = [\"GW_KEY\"]\n\
         upstream = {{ api_key_env = \"OPENAI_KEY\", anthropic_api_key_env = \"ANTHROPIC_KEY\" }}\n",
        openai.url(),
        anthropic.url()
    );
    let env = [
        ("GW_KEY", "mc-virtual-key"),
        ("OPENAI_KEY", "sk-openai-real"),
        ("ANTHROPIC_KEY", "sk-ant-real"),
    ];
    let app = Gateway::new(settings_from(&text, dir.path(), &env))
        .start()
        .await;
    let q = ask_claude("What is a monad?");

    // The first answer verifies the caller's key; the repeat is a hit.
    let first = Call::messages(&q)
        .header("x-api-key", "mc-virtual-key")
        .send(&app)
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.header("cache-status"),
        "modelcache; fwd=request; detail=unverified-key"
    );
    assert!(text_of(&first).starts_with("anthropic: "));
    let seen = anthropic.last();
    assert_eq!(seen.headers["x-api-key"], "sk-ant-real");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    settle(&app).await;
    let again = Call::messages(&q)
        .header("x-api-key", "mc-virtual-key")
        .send(&app)
        .await;
    assert_eq!(again.cache(), "hit");
    assert_eq!(anthropic.calls(), 1);

    // Chat goes to the other family's upstream, with that key.
    let chat = Call::ask("What is a monad?")
        .key("mc-virtual-key")
        .send(&app)
        .await;
    assert_eq!(chat.status, 200);
    assert_eq!(openai.calls(), 1);
    assert_eq!(
        openai.last().headers["authorization"],
        "Bearer sk-openai-real"
    );
    assert!(openai.last().headers.get("x-api-key").is_none());

    // Anything an Anthropic SDK sends goes to Anthropic, cached or not.
    let models = Call::get("/v1/models")
        .header("x-api-key", "mc-virtual-key")
        .header("anthropic-version", "2023-06-01")
        .send(&app)
        .await;
    assert_eq!(models.status, 200);
    assert_eq!(anthropic.calls(), 2);

    // An unknown key is refused in Anthropic's error shape.
    let unknown = Call::messages(&q)
        .header("x-api-key", "sk-ant-someone-else")
        .send(&app)
        .await;
    assert_eq!(unknown.status, 401);
    let e = unknown.json();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "authentication_error");
    assert_eq!((openai.calls(), anthropic.calls()), (1, 2));
    app.shutdown().await;
}

#[tokio::test]
async fn a_paraphrase_hits_through_the_real_model() {
    let (up, _dir, app) = Gateway::with_mock_llm_real_model().await;
    let miss = Call::messages(&ask_claude("How do I reverse a list in Python?"))
        .send(&app)
        .await;
    settle(&app).await;
    let para = Call::messages(&ask_claude("How can I reverse a list in Python?"))
        .send(&app)
        .await;
    assert_eq!(para.cache(), "hit", "{}", para.header("cache-status"));
    assert_eq!(text_of(&para), text_of(&miss));
    let other = Call::messages(&ask_claude("How do I sort a list in Python?"))
        .send(&app)
        .await;
    assert_eq!(other.cache(), "miss");
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}
