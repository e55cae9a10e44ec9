//! The official `openai` Python SDK as a real client: a miss and then a hit,
//! with and without `stream=True`. Needs `.venv` (made by `make test`) or
//! MODELCACHE_PYTHON pointing at a Python with `openai` installed.

mod common;

use std::{collections::HashMap, process::Command};

use common::*;
use serde_json::Value;

/// Runs a script from tests/python with `args`; one JSON object per line,
/// keyed by its "call".
async fn run_script(name: &str, args: Vec<String>) -> HashMap<String, Value> {
    let script = repo_root().join("tests/python").join(name);
    let py = python();
    let out =
        tokio::task::spawn_blocking(move || Command::new(&py).arg(script).args(args).output())
            .await
            .unwrap()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); run `make test`, which creates .venv",
                    python()
                )
            });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK client failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["call"].as_str().unwrap().to_string(), v))
        .collect()
}

#[tokio::test]
async fn the_openai_sdk_gets_a_miss_then_a_hit_streamed_or_not() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let base = format!("http://{}/v1", app.proxy_addr);
    let calls = run_script("sdk_client.py", vec![base]).await;
    assert_eq!(calls.len(), 7, "{calls:?}");

    assert_eq!(calls["json-miss"]["cache"], "miss");
    assert_eq!(calls["json-hit"]["cache"], "hit");
    assert_eq!(calls["json-hit"]["content"], calls["json-miss"]["content"]);
    assert_eq!(
        calls["json-hit"]["content"],
        answer_for("What is the speed of light?", 1)
    );
    assert_ne!(calls["json-hit"]["id"], calls["json-miss"]["id"]);

    assert_eq!(calls["stream-miss"]["cache"], "miss");
    assert_eq!(calls["stream-hit"]["cache"], "hit");
    assert_eq!(
        calls["stream-hit"]["content"],
        calls["stream-miss"]["content"]
    );
    assert_eq!(calls["stream-hit"]["finish_reason"], "stop");
    assert!(calls["stream-hit"]["chunks"].as_u64().unwrap() >= 4);
    assert!(calls["stream-hit"]["usage"].is_null());
    // Usage asked for, none stored: forwarded rather than invented.
    assert_eq!(calls["stream-usage-miss"]["cache"], "miss");
    assert_eq!(calls["stream-usage-miss"]["usage"], 18);
    let refreshed = calls["stream-usage-miss"]["content"].clone();
    assert_eq!(calls["stream-hit-usage"]["cache"], "hit");
    assert_eq!(calls["stream-hit-usage"]["content"], refreshed);
    assert_eq!(calls["stream-hit-usage"]["usage"], 18);
    assert_eq!(calls["stream-hit-of-json"]["cache"], "hit");
    assert_eq!(
        calls["stream-hit-of-json"]["content"],
        calls["json-miss"]["content"]
    );
    assert_eq!(calls["stream-hit-of-json"]["usage"], 18);
    assert_eq!(up.calls(), 3, "only the three misses reach the upstream");
    // The SDK's own key reached the upstream untouched.
    assert_eq!(
        up.last().headers["authorization"],
        "Bearer sk-test-not-real"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_openai_sdk_with_a_virtual_key_and_an_unknown_one() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[tenants]]\nname = \"sdk\"\nauth = \"replace\"\nkeys_env = [\"SDK_GW_KEY\"]\n\
         upstream = {{ url = \"{}\", api_key_env = \"SDK_UP_KEY\" }}\n",
        up.url()
    );
    let env = [
        ("SDK_GW_KEY", "mc-sdk-virtual"),
        ("SDK_UP_KEY", "sk-sdk-provider"),
    ];
    let app = Gateway::new(settings_from(&text, dir.path(), &env))
        .start()
        .await;
    let base = format!("http://{}/v1", app.proxy_addr);
    let calls = run_script(
        "sdk_tenants.py",
        vec![base, "mc-sdk-virtual".into(), "sk-not-a-tenant".into()],
    )
    .await;
    assert_eq!(calls["virtual-miss"]["cache"], "miss");
    assert_eq!(calls["virtual-hit"]["cache"], "hit");
    assert_eq!(
        calls["virtual-hit"]["content"],
        calls["virtual-miss"]["content"]
    );
    assert_eq!(calls["unknown"]["error"], "AuthenticationError");
    assert_eq!(calls["unknown"]["status"], 401);
    assert_eq!(calls["unknown"]["code"], "invalid_api_key");
    assert_eq!(up.calls(), 1);
    assert_eq!(up.last().headers["authorization"], "Bearer sk-sdk-provider");
    app.shutdown().await;
}

#[tokio::test]
async fn the_openai_sdk_gets_cached_embeddings_in_order_as_base64_or_floats() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let base = format!("http://{}/v1", app.proxy_addr);
    let calls = run_script("sdk_embeddings.py", vec![base]).await;
    let want = |inputs: &[&str]| -> Value {
        inputs
            .iter()
            .map(|i| {
                vector_for("", &Value::from(*i), 8)
                    .into_iter()
                    .map(f64::from)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .into()
    };
    assert_eq!(calls["miss"]["cache"], "miss");
    assert_eq!(
        calls["miss"]["vectors"],
        want(&["first chunk", "second chunk"])
    );
    assert_eq!(calls["mixed"]["cache"], "miss");
    assert_eq!(calls["mixed"]["cached_inputs"], "2/4");
    assert_eq!(calls["mixed"]["indexes"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(
        calls["mixed"]["vectors"],
        want(&["third chunk", "first chunk", "second chunk", "third chunk"])
    );
    assert_eq!(calls["mixed"]["prompt_tokens"], 2, "one new input billed");
    assert_eq!(calls["hit-float"]["cache"], "hit");
    assert_eq!(
        calls["hit-float"]["vectors"],
        want(&["second chunk", "third chunk", "first chunk"])
    );
    assert_eq!(calls["hit-float"]["prompt_tokens"], 0);
    assert_eq!(calls["hit-single"]["cache"], "hit");
    assert_eq!(calls["hit-single"]["vectors"], want(&["third chunk"]));
    assert_eq!(up.calls(), 2, "only the first batch and the one new input");
    let asked: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(asked["input"], serde_json::json!(["third chunk"]));
    assert_eq!(asked["encoding_format"], "base64", "the SDK's default");
    app.shutdown().await;
}

#[tokio::test]
async fn the_anthropic_sdk_gets_a_miss_then_hits_with_create_and_stream() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let base = format!("http://{}", app.proxy_addr);
    let calls = run_script("sdk_anthropic.py", vec![base]).await;
    assert_eq!(calls.len(), 6, "{calls:?}");
    let light = answer_for("What is the speed of light?", 1);
    assert_eq!(calls["json-miss"]["cache"], "miss");
    assert_eq!(calls["json-miss"]["text"], light);
    assert_eq!(calls["json-hit"]["cache"], "hit");
    assert_eq!(calls["json-hit"]["text"], light);
    assert_ne!(calls["json-hit"]["id"], calls["json-miss"]["id"]);
    assert_eq!(calls["json-hit"]["stop_reason"], "end_turn");
    // messages.stream() over a replayed stream: its text events and final message.
    let s = &calls["stream-hit-of-json"];
    assert_eq!(s["cache"], "hit");
    assert_eq!(s["streamed_text"], light);
    assert_eq!(s["text"], light);
    assert!(s["pieces"].as_u64().unwrap() >= 2, "text in pieces");
    assert_eq!(s["output_tokens"], 9);

    let sky = answer_for("Why is the sky blue?", 2);
    assert_eq!(calls["stream-miss"]["cache"], "miss");
    assert_eq!(calls["stream-miss"]["text"], sky);
    assert_eq!(calls["stream-hit"]["cache"], "hit");
    assert_eq!(calls["stream-hit"]["text"], sky);
    assert_eq!(
        calls["stream-hit"]["thinking"], calls["stream-miss"]["thinking"],
        "thinking and its signature survive"
    );
    assert_eq!(calls["stream-hit"]["thinking"][0][1], "EqQBCkYIBRgCIkDsig");
    assert_eq!(calls["json-hit-of-stream"]["cache"], "hit");
    assert_eq!(
        calls["json-hit-of-stream"]["thinking"],
        calls["stream-miss"]["thinking"]
    );
    assert_eq!(up.calls(), 2, "only the two misses reach the upstream");
    // The SDK's own key reached the upstream untouched (this SDK version
    // sends it as a bearer token; older ones as x-api-key).
    let h = up.last().headers;
    let key = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert!(
        key("authorization").as_deref() == Some("Bearer sk-ant-test-not-real")
            || key("x-api-key").as_deref() == Some("sk-ant-test-not-real"),
        "{h:?}"
    );
    assert!(h.contains_key("anthropic-version"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_openai_sdk_gets_responses_from_cache_streamed_or_not_and_chains_onto_them() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let base = format!("http://{}/v1", app.proxy_addr);
    let calls = run_script("sdk_responses.py", vec![base]).await;
    assert_eq!(calls.len(), 8, "{calls:?}");
    let paris = answer_for("What is the capital of France?", 1);
    assert_eq!(calls["miss"]["cache"], "miss");
    assert_eq!(calls["miss"]["text"], paris);
    assert_eq!(calls["hit"]["cache"], "hit");
    assert_eq!(calls["hit"]["text"], paris);
    assert!(calls["hit"]["id"].as_str().unwrap().starts_with("resp_mc"));
    // responses.create(stream=True) over a replayed lifecycle.
    let s = &calls["stream-hit"];
    assert_eq!(s["cache"], "hit");
    assert_eq!(s["deltas"], paris);
    assert_eq!(s["text"], paris);
    assert_eq!(s["first"], "response.created");
    assert_eq!(s["last"], "response.completed");
    // The responses.stream() helper accepts it and builds the final response.
    assert_eq!(calls["helper-hit"]["deltas"], paris);
    assert_eq!(calls["helper-hit"]["text"], paris);
    assert_eq!(calls["helper-hit"]["status"], "completed");
    let sky = answer_for("Why is the sky blue?", 2);
    assert_eq!(calls["stream-miss"]["cache"], "miss");
    assert_eq!(calls["stream-miss"]["text"], sky);
    assert_eq!(calls["helper-hit-of-stream"]["text"], sky);
    // Chained onto a minted id: answered by the upstream from the whole
    // conversation, and the minted response can be retrieved.
    assert!(calls["chained"]["first_id"]
        .as_str()
        .unwrap()
        .starts_with("resp_mc"));
    assert_eq!(
        calls["chained"]["text"],
        answer_for("And its population?", 3)
    );
    assert_eq!(calls["retrieved"]["id"], calls["chained"]["first_id"]);
    assert_eq!(calls["retrieved"]["text"], paris);
    assert_eq!(up.calls(), 3, "two misses and the chained request");
    let seen: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert!(seen.get("previous_response_id").is_none());
    assert_eq!(seen["input"].as_array().unwrap().len(), 3);
    app.shutdown().await;
}
